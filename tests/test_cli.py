"""The CLI end to end, as a user runs it: a user's own env and expert by import path, and bad input."""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
ENV = "tests.custom_env:CustomTarget-v0"
EXPERT = "tests.custom_env:expert"
# CustomTarget is Markovian: a 3-step context avoids the copycat shortcut (repeat the last action) that
# a long history offers a model trained this briefly.
TINY = ["--model.size", "tiny", "--data.context_length", "14", "--train.batch_size", "32",
        "--train.lr", "3e-3", "--train.warmup_steps", "20", "--loop.progress", "false",
        "--eval.episodes", "8"]


def bclm_process(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """`python -m bclm ...` as a user types it (with `env` added to this process's environment)."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **(env or {})}
    return subprocess.run([sys.executable, "-m", "bclm", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)


def bclm(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The same command in this process: a subprocess spends ~6 s of each test importing torch."""
    from transformers.utils import logging

    from bclm.cli import main

    logging.disable_progress_bar()      # what HF_HUB_DISABLE_PROGRESS_BARS=1 does for a fresh process
    out, err, before = io.StringIO(), io.StringIO(), os.getcwd()
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                code = main(list(args))
            except SystemExit as e:     # argparse's own errors
                code = e.code
    finally:
        os.chdir(before)
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


@pytest.fixture(scope="module")
def custom_run(tmp_path_factory) -> Path:
    """Collect, train and evaluate the custom env once; the tests below read what it wrote."""
    work = tmp_path_factory.mktemp("cli")
    r = bclm("collect", "--env", ENV, "--expert", EXPERT, "--episodes", "40", "--output", "data", cwd=work)
    assert r.returncode == 0, r.stderr
    r = bclm("train", "--dataset", "data", "--output-dir", "policy", "--train.max_steps", "200", *TINY, cwd=work)
    assert r.returncode == 0, r.stderr
    r = bclm("eval", "--policy", "policy", "--env", ENV, "--expert", EXPERT, "--episodes", "16",
             "--output", "report.json", cwd=work)
    assert r.returncode == 0, r.stderr
    (work / "eval_stdout.txt").write_text(r.stdout)
    return work


def test_eval_prints_a_table_with_success_mistakes_and_env_steps_per_second(custom_run):
    header, _, row = (custom_run / "eval_stdout.txt").read_text().splitlines()[-3:]
    assert header.split() == ["task", "env", "episodes", "success_rate", "mean_return", "mean_length",
                              "mistake_rate", "env_steps_per_s"]
    report = json.loads((custom_run / "report.json").read_text())
    cells = row.split()
    assert cells[2] == "16" and float(cells[3]) == round(report["success_rate"], 3)
    assert float(cells[-1].replace(",", "")) > 0 and "env_steps_per_s" not in report   # the report stays reproducible


def test_custom_env_and_expert_train_and_evaluate_by_import_path(custom_run):
    summary = json.loads((custom_run / "data" / "bclm_dataset.json").read_text())
    assert summary["env_id"] == ENV
    report = json.loads((custom_run / "report.json").read_text())
    for key in ("success_rate", "mean_return", "mean_length", "episodes", "mistake_rate"):
        assert key in report
    assert report["episodes"] == 16
    # The expert needs at most 20 moves per episode; a policy that learned nothing scores ~0.
    assert report["success_rate"] >= 0.75, report
    assert report["mistake_rate"] < 0.3, report
    metrics = [json.loads(line) for line in (custom_run / "policy" / "metrics.jsonl").read_text().splitlines()]
    losses = [m["loss"] for m in metrics if "loss" in m]
    assert losses[-1] < 0.5 * losses[0], losses


def test_trained_policy_dir_has_weights_tokenizer_and_recipe(custom_run):
    names = {p.name for p in (custom_run / "policy").iterdir()}
    assert {"config.json", "model.safetensors", "bclm_tokenizer.json", "bclm_policy.json", "recipe.yaml",
            "eval_report.json"} <= names


def _error(r: subprocess.CompletedProcess) -> str:
    assert r.returncode != 0
    lines = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr       # one line, no traceback
    return lines[0]


def test_unknown_recipe_key_is_named(custom_run, tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("train:\n  max_step: 10\n")
    msg = _error(bclm("train", str(recipe), "--dataset", str(custom_run / "data"), "--output-dir", "out",
                      cwd=tmp_path))
    assert "max_step" in msg and "bad.yaml" in msg
    assert not (tmp_path / "out").exists()


def test_unknown_override_is_named(custom_run, tmp_path):
    msg = _error(bclm_process("train", "--dataset", str(custom_run / "data"), "--output-dir", "out",
                      "--model.sise", "tiny", cwd=tmp_path))
    assert "sise" in msg


def test_missing_dataset_is_named(tmp_path):
    msg = _error(bclm("train", "--dataset", "nowhere", "--output-dir", "out", cwd=tmp_path))
    assert "nowhere" in msg


def test_existing_policy_is_not_overwritten(custom_run):
    before = (custom_run / "policy" / "model.safetensors").read_bytes()
    msg = _error(bclm("train", "--dataset", "data", "--output-dir", "policy", *TINY, cwd=custom_run))
    assert "already holds a finished policy" in msg
    assert (custom_run / "policy" / "model.safetensors").read_bytes() == before


def test_an_output_dir_that_is_a_file_is_one_line_with_exit_2_and_kept(custom_run, tmp_path):
    (tmp_path / "a_file").write_text("mine")
    r = bclm("train", "--dataset", str(custom_run / "data"), "--output-dir", "a_file", cwd=tmp_path)
    assert r.returncode == 2 and "a_file is a file" in _error(r)
    assert (tmp_path / "a_file").read_text() == "mine"


def test_eval_output_that_is_a_directory_is_refused_before_evaluating(custom_run, tmp_path):
    msg = _error(bclm("eval", "--policy", str(custom_run / "policy"), "--env", ENV, "--episodes", "1",
                      "--output", str(tmp_path), cwd=tmp_path))
    assert "is a directory" in msg and str(tmp_path) in msg


def test_collect_refuses_existing_dataset(custom_run):
    before = sorted(p.name for p in (custom_run / "data").iterdir())
    msg = _error(bclm("collect", "--env", ENV, "--expert", EXPERT, "--episodes", "2", "--output", "data",
                      cwd=custom_run))
    assert "already exists" in msg
    assert sorted(p.name for p in (custom_run / "data").iterdir()) == before


def test_policy_without_tokenizer_is_named(custom_run, tmp_path):
    import shutil

    broken = tmp_path / "policy"
    shutil.copytree(custom_run / "policy", broken)
    (broken / "bclm_tokenizer.json").unlink()
    msg = _error(bclm("eval", "--policy", str(broken), "--episodes", "1", cwd=tmp_path))
    assert "bclm_tokenizer.json" in msg


def test_eval_on_env_with_other_spaces_is_named(custom_run):
    msg = _error(bclm("eval", "--policy", "policy", "--env", "CartPole-v1", "--episodes", "1", cwd=custom_run))
    assert "CartPole-v1" in msg


def test_expert_with_action_outside_space_is_named(tmp_path):
    msg = _error(bclm("collect", "--env", ENV, "--expert", "tests.test_cli:bad_expert", "--episodes", "2",
                      "--output", "data", cwd=tmp_path))
    assert "bad_expert" in msg and "outside the action space" in msg


def test_unimportable_expert_is_named(tmp_path):
    msg = _error(bclm("collect", "--env", ENV, "--expert", "no_such_module:fn", "--episodes", "2",
                      "--output", "data", cwd=tmp_path))
    assert "no_such_module" in msg


def test_nan_in_dataset_observations_is_named(custom_run, tmp_path):
    import shutil

    import datasets

    data = tmp_path / "data"
    shutil.copytree(custom_run / "data", data)
    shard = data / "round-000"
    ds = datasets.load_from_disk(str(shard))
    obs = np.array(ds["observation"], dtype=np.float32)
    obs[3, 1] = np.nan
    ds = ds.remove_columns("observation").add_column("observation", obs.tolist(),
                                                      feature=ds.features["observation"])
    ds.save_to_disk(str(tmp_path / "patched"))       # a dataset cannot overwrite the files it maps
    shutil.rmtree(shard)
    shutil.move(tmp_path / "patched", shard)
    msg = _error(bclm("train", "--dataset", str(data), "--output-dir", "out", *TINY, cwd=tmp_path))
    assert "observation" in msg and str(data) in msg


def bad_expert(obs):
    return 7   # CustomTarget has Discrete(3)


def test_lerobot_round_trip_and_push_dry_run_from_the_command_line(custom_run):
    from bclm.data.store import TrajectoryStore

    r = bclm("export-lerobot", "--dataset", "data", "--output", "lerobot", "--fps", "20", cwd=custom_run)
    assert r.returncode == 0, r.stderr
    info = json.loads((custom_run / "lerobot" / "meta" / "info.json").read_text())
    assert info["codebase_version"] == "v3.0" and info["fps"] == 20 and info["total_episodes"] == 40
    r = bclm("import-lerobot", "--input", "lerobot", "--output", "back", cwd=custom_run)
    assert r.returncode == 0, r.stderr
    original, back = TrajectoryStore(custom_run / "data"), TrajectoryStore(custom_run / "back")
    assert back.meta == original.meta and back.shard_names() == original.shard_names()
    want, got = original.load()[:], back.load()[:]
    for key in want:
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert "is not empty" in _error(bclm("import-lerobot", "--input", "lerobot", "--output", "back", cwd=custom_run))
    r = bclm("push", "--policy", "policy", "--repo-id", "someone/custom", "--private", "--dry-run", cwd=custom_run)
    assert r.returncode == 0, r.stderr
    assert "to https://huggingface.co/someone/custom (revision main, private)" in r.stdout
    assert "model.safetensors" in r.stdout and "checkpoints" not in r.stdout


def test_a_full_disk_is_named_in_one_line(tmp_path, monkeypatch, capsys):
    import errno

    from bclm.cli import main
    from bclm.data.store import TrajectoryStore

    def full(self, name, ds):
        raise OSError(errno.ENOSPC, "No space left on device", str(self.path / name))
    monkeypatch.setattr(TrajectoryStore, "write_dataset", full)
    code = main(["collect", "--env", ENV, "--expert", EXPERT, "--episodes", "2", "--output", str(tmp_path / "d")])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
    assert code == 2 and len(err) == 1, err
    assert "the disk is full" in err[0] and str(tmp_path / "d" / "round-000") in err[0]


def test_info_describes_a_dataset_and_a_policy(custom_run):
    r = bclm("info", "data", cwd=custom_run)
    assert r.returncode == 0, r.stderr
    from bclm.data.store import TrajectoryStore

    steps = len(TrajectoryStore(custom_run / "data").load())
    assert f"dataset data: env {ENV}" in r.stdout
    assert f"round-000 (expert): 40 episodes, {steps:,} steps, {steps:,} expert labels" in r.stdout
    r = bclm("info", "policy", cwd=custom_run)
    assert r.returncode == 0, r.stderr
    report = json.loads((custom_run / "policy" / "eval_report.json").read_text())
    for part in ("policy policy: llama", "context 14 tokens, history full", "a step is",
                 f"tokenizer ({ENV}): observations max error",
                 f"evaluation: success {report['success_rate']:.1%} over {report['episodes']} episodes"):
        assert part in r.stdout, (part, r.stdout)
    assert _error(bclm("info", ".", cwd=custom_run)).endswith("neither a bclm dataset (no bclm_dataset.json) "
                                                               "nor a bclm policy (no bclm_policy.json)")


def test_training_envs_that_are_the_evaluations_are_refused(tmp_path, capsys):
    from bclm.cli import main

    def one_line_error(*args):
        code = main(list(args))
        err = [line for line in capsys.readouterr().err.splitlines() if line.strip() and "%|" not in line]
        assert code == 2 and len(err) == 1, err
        return err[0]
    err = one_line_error("dagger", "--dagger.env", ENV, "--dagger.expert", EXPERT, "--dagger.rounds", "2",
                         "--dagger.episodes_per_round", "4", "--eval.seed", "200003", "--output-dir",
                         str(tmp_path / "dagger"))
    assert "dagger round 2: its env seeds 200000..200003 overlap the evaluation's (200003..200022" in err
    recipe = tmp_path / "mixture.yaml"
    recipe.write_text(f"tasks:\n  - env: '{ENV}'\n    episodes: 20\n")
    err = one_line_error("train", str(recipe), "--eval.seed", "19", "--output-dir", str(tmp_path / "train"))
    assert "20 episodes: its env seeds 0..19 overlap the evaluation's (19..38" in err
    err = one_line_error("train", str(recipe), "--eval.select_seed", "5", "--output-dir", str(tmp_path / "train"))
    assert "20 episodes: its env seeds 0..19 overlap the selection episodes' (5..24" in err
    assert not (tmp_path / "train" / "data").exists() or not any((tmp_path / "train" / "data").rglob("round-*"))
