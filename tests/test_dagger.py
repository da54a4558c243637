"""DAgger rounds: β schedules, provenance on disk, resume after a crash, history-consistent labels."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bclm import config as cfg
from bclm.data.store import TrajectoryStore
from bclm.errors import BCLMError
from bclm.trainer import dagger
from bclm.trainer.dagger import DaggerConfig, DaggerRecipe, beta_schedule, run_dagger

ENV = "tests.custom_env:CustomTarget-v0"


def _recipe(out, rounds: int, *extra: str) -> DaggerRecipe:
    return cfg.build_config(DaggerRecipe, None, [
        "--output-dir", str(out), "--dagger.env", ENV, "--dagger.expert", "tests.custom_env:expert",
        "--dagger.rounds", str(rounds), "--dagger.initial_episodes", "4", "--dagger.episodes_per_round", "3",
        "--dagger.num_envs", "3", "--model.size", "tiny", "--data.context_length", "14",
        "--train.max_steps", "15", "--train.lr", "3e-3", "--train.warmup_steps", "3", "--train.batch_size", "16",
        "--loop.progress", "false", "--loop.log_every", "5", "--eval.episodes", "2", "--eval.num_envs", "2",
        *extra])


def test_beta_schedules():
    assert [beta_schedule(DaggerConfig(rounds=4, beta="linear"))(i) for i in range(5)] == [1, 0.75, 0.5, 0.25, 0]
    assert [beta_schedule(DaggerConfig(beta="geometric", beta_value=0.5))(i) for i in range(3)] == [1, 0.5, 0.25]
    assert beta_schedule(DaggerConfig(beta="constant", beta_value=0.3))(2) == 0.3
    with pytest.raises(BCLMError, match=r"dagger\.beta"):
        DaggerConfig(beta="cosine")


def test_rounds_on_disk_with_provenance_and_resume_after_a_crash(tmp_path, monkeypatch):
    out = tmp_path / "run"
    report = run_dagger(_recipe(out, 1))
    assert [r["round"] for r in report["rounds"]] == [0, 1]
    assert report["rounds"][1]["expert_labels"] > report["rounds"][0]["expert_labels"]
    store = TrajectoryStore(out / "data")
    steps = store.arrays()
    r1 = steps.columns["round"] == 1
    assert set(steps.columns["source"][r1]) == {"dagger"}
    assert set(steps.columns["policy_revision"][r1]) == {"round-000"}
    assert np.allclose(steps.columns["beta"][r1], 0.0)           # linear over 1 round: β₁ = 0
    assert not steps.columns["expert_used"][r1].any()            # β = 0: the learner acted every step
    before = {name: (out / "data" / name / "dataset_info.json").read_text() for name in store.shard_names()}
    shard0 = sorted(p.name for p in (out / "data" / "round-000").iterdir())

    # Round 2 crashes in training, after its data was written; the same command then resumes at round 2.
    real_train = dagger.train

    def crashing_train(recipe):
        if recipe.output_dir.endswith("round-002"):
            raise RuntimeError("killed")
        return real_train(recipe)
    monkeypatch.setattr(dagger, "train", crashing_train)
    with pytest.raises(RuntimeError, match="killed"):
        run_dagger(_recipe(out, 2))
    monkeypatch.setattr(dagger, "train", real_train)
    report = run_dagger(_recipe(out, 2))
    assert [r["round"] for r in report["rounds"]] == [0, 1, 2]
    store = TrajectoryStore(out / "data")
    assert store.shard_names() == ["round-000", "round-001", "round-002"]
    for name, info in before.items():                               # earlier rounds untouched
        assert (out / "data" / name / "dataset_info.json").read_text() == info
    assert sorted(p.name for p in (out / "data" / "round-000").iterdir()) == shard0
    steps = store.arrays()
    pairs = set(zip(steps.columns["episode"].tolist(), steps.columns["step"].tolist()))
    assert len(pairs) == len(steps)                                 # no duplicated steps
    assert len(set(steps.columns["episode"])) == 4 + 3 + 3          # no duplicated episodes
    rows = json.loads((out / "dagger_report.json").read_text())["rounds"]
    assert all("mistake_rate" in r and "success_rate" in r for r in rows)


def test_a_round_killed_in_its_final_save_resumes_and_overwrite_trains_again(tmp_path):
    from bclm.hub.cards import CARD_FILE
    from bclm.policy import POLICY_FILE
    from bclm.trainer.rundir import DONE_MARKER

    out = tmp_path / "run"
    rows = run_dagger(_recipe(out, 1))["rounds"]
    # Killed in round 1's final save, after transformers wrote config.json; and in a shard write of round 2.
    for name in (DONE_MARKER, "model.safetensors", POLICY_FILE, "eval_report.json", CARD_FILE):
        (out / "round-001" / name).unlink()
    (out / "data" / ".tmp-round-002-0badf00d").mkdir()
    again = run_dagger(_recipe(out, 2))["rounds"]
    assert [r["round"] for r in again] == [0, 1, 2]
    for key in ("success_rate", "mean_return", "expert_labels", "mistake_rate"):
        assert [r[key] for r in again[:2]] == [r[key] for r in rows], key        # round 1 trained again alike
    assert not list((out / "data").glob(".tmp-*"))
    # --overwrite trains every round again on the data it has (no new collection).
    weights = (out / "round-000" / "model.safetensors").stat().st_mtime_ns
    shards = TrajectoryStore(out / "data").shard_names()
    run_dagger(_recipe(out, 2, "--overwrite", "true"))
    assert (out / "round-000" / "model.safetensors").stat().st_mtime_ns != weights
    assert TrajectoryStore(out / "data").shard_names() == shards
    # Reports never go backwards: a damaged shard or a lost round result is named, and nothing rewritten.
    report = (out / "dagger_report.json").read_bytes()
    (out / "round-001" / "eval_report.json").unlink()
    with pytest.raises(BCLMError, match=r"round-001/eval_report\.json is missing"):
        run_dagger(_recipe(out, 2))
    arrow = next((out / "data" / "round-001").glob("*.arrow"))
    arrow.write_bytes(arrow.read_bytes()[:100])
    with pytest.raises(BCLMError, match="round-001 is damaged"):
        run_dagger(_recipe(out, 2))
    assert (out / "dagger_report.json").read_bytes() == report


def test_dagger_cli_with_custom_env(tmp_path):
    from tests.test_cli import bclm

    r = bclm("dagger", "--env", ENV, "--expert", "tests.custom_env:expert", "--rounds", "1",
             "--episodes-per-round", "2", "--initial-episodes", "3", "--output-dir", "run", "--model.size", "tiny",
             "--data.context_length", "14", "--train.max_steps", "5", "--loop.progress", "false",
             "--eval.episodes", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "expert_labels" in r.stdout
    assert (tmp_path / "run" / "round-001" / "model.safetensors").is_file()


def test_bc_baseline_at_equal_labels_and_mistakes_plot(tmp_path):
    report = run_dagger(_recipe(tmp_path / "run", 1, "--dagger.bc_baseline", "true"))
    dagger_labels = report["rounds"][-1]["expert_labels"]
    baseline = report["bc_baseline"]
    assert dagger_labels <= baseline["expert_labels"] < dagger_labels + 3 * 50   # whole episodes of 50 steps
    assert "mistakes_vs_t" in baseline and "success_rate" in baseline
    png = tmp_path / "run" / "mistakes.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def flaky_expert(obs):
    """The custom env's expert, but it raises on most states and answers garbage on the leftmost ones."""
    from tests.custom_env import expert

    if obs[0] > -0.5:
        raise RuntimeError("cannot handle this state")
    if obs[0] < -0.65:
        return 9
    return expert(obs)


def test_expert_faults_are_counted_not_fatal_and_leave_states_unlabeled(tmp_path):
    out = tmp_path / "run"
    # Round 0 is demonstrations: there a faulty expert is an error that names it, and nothing is kept.
    with pytest.raises(BCLMError, match="flaky_expert"):
        run_dagger(_recipe(out, 1, "--dagger.expert", "tests.test_dagger:flaky_expert"))
    report = run_dagger(_recipe(out, 1, "--dagger.initial_episodes", "4"))          # good round 0
    # Round 1 with the flaky expert: faults are counted and the run completes.
    import shutil

    shutil.rmtree(out / "round-001")
    shutil.rmtree(out / "data" / "round-001")
    report = run_dagger(_recipe(out, 1, "--dagger.expert", "tests.test_dagger:flaky_expert"))
    row = report["rounds"][1]
    assert row["label_faults"] > 0
    steps = TrajectoryStore(out / "data").arrays(["round-001"])
    unlabeled = ~steps.columns["labeled"]
    assert unlabeled.sum() == row["label_faults"]
    assert not steps.columns["expert_used"][unlabeled].any()      # the learner acted where the expert failed
    assert row["expert_labels"] == report["rounds"][0]["expert_labels"] + int((~unlabeled).sum())


def test_hg_dagger_labels_only_interventions_in_truncated_rollouts(tmp_path):
    out = tmp_path / "run"
    report = run_dagger(_recipe(out, 1, "--dagger.intervener", "expert-gated", "--dagger.rollout_max_steps", "7"))
    row = report["rounds"][1]
    steps = TrajectoryStore(out / "data").arrays(["round-001"])
    labeled = steps.columns["labeled"]
    assert set(steps.columns["source"]) == {"hg-dagger"}
    assert row["interventions"] == int(labeled.sum()) > 0
    assert row["expert_labels"] == report["rounds"][0]["expert_labels"] + row["interventions"]
    assert row["beta"] is None and np.isnan(steps.columns["beta"]).all()     # HG-DAgger tosses no β coin
    # Episodes of this env last 50 steps; the round's rollouts stop at 7, marked truncated.
    lengths = np.bincount(steps.columns["episode"] - steps.columns["episode"].min())
    assert set(lengths[lengths > 0]) == {7}
    assert steps.columns["truncated"].sum() == 3
    # Where the intervener took over, the executed action is its (the expert's) action.
    np.testing.assert_array_equal(steps.action[labeled], steps.expert_action[labeled])
    assert (steps.columns["expert_used"] == labeled).all()


def test_terminal_labeler_reads_actions_and_asks_again_on_bad_input():
    import io

    import gymnasium as gym

    from bclm.envs.human import TerminalIntervener, TerminalLabeler
    from bclm.rollout import ExpertActor

    out = io.StringIO()
    labeler = TerminalLabeler(io.StringIO("x\n7\n2\n0\n"), out)
    actor = ExpertActor(labeler, gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3), "human")
    actions = actor.act(np.array([[0.1, 0.2], [0.3, -0.4]], np.float32))
    assert actions.tolist() == [2, 0]
    assert "observation" in out.getvalue() and "'x' is not an action" in out.getvalue()
    with pytest.raises(BCLMError, match="input ended"):
        actor.act(np.zeros((1, 2), np.float32))
    intervener = TerminalIntervener(io.StringIO("\n1\n"), io.StringIO())
    intervener.bind(None, gym.spaces.Discrete(3))
    assert intervener(np.zeros(2), 2) is None and intervener(np.zeros(2), 2) == 1


def test_collect_with_a_human_through_the_cli(tmp_path):
    import os
    import subprocess
    import sys

    from tests.test_cli import ROOT

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "bclm", "collect", "--env", ENV, "--expert", "human", "--episodes",
                        "1", "--num-envs", "1", "--output", "data"], input="1\n" * 50, cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    steps = TrajectoryStore(tmp_path / "data").arrays()
    assert len(steps) == 50 and (steps.action == 1).all()


def test_reports_never_shrink_and_beta_and_labels_are_read_from_the_shards(tmp_path):
    out = tmp_path / "run"

    def agrees_with_the_shards(rows: list[dict]) -> None:
        steps = TrajectoryStore(out / "data").arrays()
        for row in rows:
            mine = steps.columns["round"] == row["round"]
            assert row["beta"] == pytest.approx(float(steps.columns["beta"][mine][0]), abs=1e-6)
            upto = steps.columns["round"] <= row["round"]
            assert row["expert_labels"] == int(steps.columns["labeled"][upto].sum())

    run_dagger(_recipe(out, 3, "--dagger.beta", "linear"))         # β 1, 0.667, 0.333, 0
    report = (out / "dagger_report.json").read_bytes()
    with pytest.raises(BCLMError, match=r"holds DAgger rounds up to 3, more than --dagger\.rounds 1"):
        run_dagger(_recipe(out, 1, "--dagger.beta", "linear"))
    assert (out / "dagger_report.json").read_bytes() == report
    rows = run_dagger(_recipe(out, 4, "--dagger.beta", "linear"))["rounds"]  # a new schedule for round 4 only
    assert [r["round"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["beta"] for r in rows[:4]] == pytest.approx([1, 2 / 3, 1 / 3, 0], abs=1e-6)
    agrees_with_the_shards(rows)


def test_a_round_s_tokenizer_covers_the_states_beyond_round_zero_s_range(tmp_path):
    """LaneKeep's expert never leaves the centreline, so round 0 sees offset and heading at exactly 0; the
    learner's round-1 states leave it, and round 1's tokenizer must give them bins instead of clipping them."""
    from bclm.policy import Policy

    out = tmp_path / "run"
    recipe = cfg.build_config(DaggerRecipe, None, [
        "--output-dir", str(out), "--dagger.env", "LaneKeep-v0", "--dagger.rounds", "1",
        "--dagger.initial_episodes", "1", "--dagger.episodes_per_round", "2", "--dagger.num_envs", "2",
        "--dagger.beta", "constant", "--dagger.beta_value", "0", "--model.size", "tiny", "--train.max_steps", "10",
        "--train.batch_size", "16", "--loop.progress", "false", "--eval.episodes", "2", "--eval.num_envs", "2"])
    rows = run_dagger(recipe)["rounds"]
    offsets = [{c.path: c for c in Policy.from_pretrained(out / f"round-00{k}").tokenizer.obs_codecs}["offset"]
               for k in (0, 1)]
    assert offsets[0].high[0] == offsets[0].low[0] == 0.0                                      # one value
    assert offsets[1].low[0] < -0.1 and offsets[1].high[0] > 0.1
    assert [r["obs_clipped"] for r in rows] == [0.0, 0.0]
