"""`bclm sweep`: learning curves over budgets and seeds, on a user's own env, resumable cell by cell."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pytest

import bclm.sweep as sweep_module
import bclm.trainer.dagger as dagger_module
from bclm import config as cfg
from bclm.data.store import META_FILE, TrajectoryStore
from bclm.errors import BCLMError
from bclm.eval.compare import mean_ci
from bclm.sweep import SweepRecipe, at_budget, run_sweep
from bclm.trainer.data import first_episodes

ENV, EXPERT = "tests.custom_env:CustomTarget-v0", "tests.custom_env:expert"


def _recipe(out):
    # Every expert episode of the custom env is 50 steps: budgets of 1, 2 and 3 demonstrations' labels.
    return cfg.build_config(SweepRecipe, None, [
        "--output-dir", str(out), "--dagger.env", ENV, "--dagger.expert", EXPERT, "--dagger.initial_episodes", "1",
        "--dagger.episodes_per_round", "1", "--dagger.num_envs", "1", "--sweep.budgets", "50,100,150",
        "--sweep.seeds", "2", "--sweep.jobs", "1", "--sweep.max_rounds", "3", "--model.size", "tiny",
        "--train.max_steps", "20", "--train.batch_size", "16", "--train.lr", "3e-3", "--loop.progress", "false",
        "--eval.episodes", "4", "--eval.num_envs", "4"])


def test_sweep_runs_bc_and_dagger_over_budgets_and_seeds_and_resumes(tmp_path, monkeypatch):
    report = run_sweep(_recipe(tmp_path))
    summary = report["summary"]
    assert set(summary) == {"bc", "dagger"}
    bc = {row["budget"]: row for row in summary["bc"]}
    assert sorted(bc) == [50, 100, 150]
    for budget, row in bc.items():        # labels counted as trained-on expert steps, within the budget
        assert row["success_rate"]["n"] == 2 and row["expert_labels"]["values"] == [budget, budget]
    for row in summary["dagger"]:
        assert all(v <= row["budget"] for v in row["expert_labels"]["values"])
    saved = json.loads((tmp_path / "sweep.json").read_text())
    assert saved["summary"] == json.loads(json.dumps(summary))
    for name in ("sweep.md", "success_vs_labels.png", "mistakes_vs_t.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert "| bc | 100 |" in (tmp_path / "sweep.md").read_text()

    # Killed after some cells: a finished cell is never trained again.
    (tmp_path / "sweep.json").unlink()
    shutil.rmtree(tmp_path / "bc" / "labels-100" / "seed-1")
    trained = []
    real_train = sweep_module.train
    monkeypatch.setattr(sweep_module, "train", lambda r: trained.append(r.output_dir) or real_train(r))
    monkeypatch.setattr(dagger_module, "train", lambda r: pytest.fail(f"DAgger round retrained: {r.output_dir}"))
    again = run_sweep(_recipe(tmp_path))
    assert trained == [str(tmp_path / "bc" / "labels-100" / "seed-1")]
    assert again["summary"]["dagger"] == summary["dagger"]


def test_a_budget_takes_the_point_with_the_most_labels_within_it():
    points = [{"expert_labels": 50}, {"expert_labels": 90}, {"expert_labels": 140}]
    assert at_budget(points, 100)["expert_labels"] == 90
    assert at_budget(points, 40) is None


def test_a_disjoint_seed_set_runs_other_cells_on_other_envs():
    """`sweep.first_seed` (the demo's --first-seed) gives seeds no earlier sweep used, data and envs included."""
    first, second = (cfg.build_config(SweepRecipe, None, ["--sweep.seeds", "5", "--sweep.first_seed", str(f)])
                     for f in (0, 5))
    seeds = [{c.seed for c in sweep_module.cells(r.sweep)} for r in (first, second)]
    assert seeds == [set(range(5)), set(range(5, 10))]
    envs = [{sweep_module.first_env_seed(r, s) for s in chosen} for r, chosen in zip((first, second), seeds)]
    assert not envs[0] & envs[1]
    with pytest.raises(BCLMError, match="first_seed"):
        cfg.build_config(SweepRecipe, None, ["--sweep.first_seed", "-1"])


def test_seeds_whose_episodes_all_failed_early_still_average_their_mistakes():
    """With no time limit an evaluation's curve is as long as its longest episode; a seed whose episodes all
    failed at step 3 keeps its rate of a mistake per step to the others' horizon."""
    cell = {"method": "bc", "seed": 0, "budget": 50}
    points = [[{"expert_labels": 50, "mistakes_vs_t": curve}] for curve in ([0, 1, 2, 2, 2, 2], [1, 2, 3])]
    results = [{"cell": {**cell, "seed": i}, "points": p} for i, p in enumerate(points)]
    config = cfg.build_config(SweepRecipe, None, ["--sweep.budgets", "50", "--sweep.methods", "bc"]).sweep
    row = sweep_module.summarize(results, config)["bc"][0]
    assert row["mistakes_vs_t"] == [0.5, 1.5, 2.5, 3.0, 3.5, 4.0]


def test_confidence_interval_over_seeds():
    ci = mean_ci([0.9, 1.0, 0.8])
    assert ci["mean"] == pytest.approx(0.9) and ci["ci95"] == pytest.approx(4.303 * 0.1 / 3 ** 0.5, rel=1e-4)
    assert mean_ci([0.5])["ci95"] == 0.0


def test_gated_dagger_in_a_sweep_labels_its_budget_of_each_round(tmp_path):
    recipe = _recipe(tmp_path)
    recipe.sweep.methods, recipe.sweep.seeds, recipe.sweep.budgets = ["gated"], 1, [50, 100]
    recipe.dagger.gate_budget = 0.5
    report = run_sweep(recipe)
    points = report["cells"][0]["points"]
    assert report["cells"][0]["cell"]["method"] == "gated" and (tmp_path / "gated" / "seed-0").is_dir()
    assert [p["expert_labels"] for p in points][:1] == [50]        # round 0: one demonstration
    for before, after in itertools.pairwise(points):               # then ~half of each 50-step round
        assert abs(after["expert_labels"] - before["expert_labels"] - 25) <= 3
        assert after["queries"] == after["expert_labels"] - before["expert_labels"]
    assert points[-1]["expert_labels"] >= 100


@pytest.mark.parametrize(("method", "noise", "want"), [
    ("dagger", "eps:0.1", ("", "", "")), ("hg-dagger", "", ("expert-gated", "", "")),
    ("gated", "eps:fit", ("", "query", "")), ("takeover", "", ("", "takeover", "")),
    ("dart-fit", "", ("", "", "fit")), ("dart-fit", "gauss:fit", ("", "", "gauss:fit")),
    ("dart-fit", "eps:0.2", ("", "", "eps:fit"))])
def test_each_method_runs_its_own_rounds(tmp_path, monkeypatch, method, noise, want):
    """Who labels each method's rounds; the noise is only the DART methods' (dart-fit keeps its kind)."""
    seen = []
    monkeypatch.setattr(sweep_module, "run_dagger", lambda r: seen.append(r.dagger) or {
        "rounds": [{"expert_labels": 10 ** 6}]})
    recipe = _recipe(tmp_path)
    recipe.dagger.noise = noise
    sweep_module.run_dagger_cell(recipe, tmp_path, sweep_module.Cell(method, 0, None))
    assert (seen[0].intervener, seen[0].gate, seen[0].noise) == want


def test_each_seed_collects_its_own_envs_apart_from_the_evaluations(tmp_path, monkeypatch):
    # Before, seed S's episode i was env 1000 * S + i: the seeds shared most of their layouts, and from
    # 10,000 - 1000 * S episodes on they trained on the evaluation's (eval.seed 10,000 + i).
    recipe = _recipe(tmp_path)
    span = 200_000                                  # episodes per seed, beyond any sweep on one machine
    ranges = [range(sweep_module.first_env_seed(recipe, s), sweep_module.first_env_seed(recipe, s) + span)
              for s in range(50)]
    evaluation = range(recipe.eval.seed, recipe.eval.seed + 100_000)
    for a, b in itertools.combinations([*ranges, evaluation], 2):
        assert a.stop <= b.start or b.stop <= a.start, (a, b)
    seeds = []
    real = sweep_module.write_expert_shard
    monkeypatch.setattr(sweep_module, "write_expert_shard", lambda *a, **k: seeds.append(k["seed"]) or real(*a, **k))
    episodes = sweep_module.expert_episodes(recipe, tmp_path, 1)
    # 4 episodes of 50 labels pass 150, in blocks of 1, 1 and 2 episodes starting at episodes 0, 1 and 2
    assert seeds == [ranges[1].start + i for i in range(3)]
    assert episodes == [("ep-00000", 50), ("ep-00001", 50), ("ep-00002", 50), ("ep-00002", 50)]


def test_a_budget_ending_inside_a_block_trains_on_exactly_its_episodes(tmp_path, monkeypatch):
    assert [sweep_module.block_size(i) for i in (0, 1, 2, 4, 8, 64, 100, 5000)] == [1, 1, 2, 4, 8, 64, 64, 64]
    episodes = [("ep-00000", 50), ("ep-00001", 40), ("ep-00002", 30), ("ep-00002", 20), ("ep-00004", 60)]
    assert sweep_module.within_budget(episodes, 125) == (["ep-00000", "ep-00001", "ep-00002"], 3, 120)
    assert sweep_module.within_budget(episodes, 10) == (["ep-00000"], 1, 50)        # at least one episode

    class Trained(Exception):
        pass

    def train(recipe):
        raise Trained(recipe.data)
    monkeypatch.setattr(sweep_module, "train", train)
    with pytest.raises(Trained) as got:               # 150 labels: ep-00002's first episode of two
        sweep_module.run_bc_cell(_recipe(tmp_path), tmp_path, sweep_module.Cell("bc", 0, 150))
    data = got.value.args[0]
    assert data.shards == ["ep-00000", "ep-00001", "ep-00002"] and data.max_episodes == 3
    store = TrajectoryStore(sweep_module.expert_store(tmp_path, 0))
    steps = first_episodes(store.arrays(data.shards), data.max_episodes, store.path)
    assert len(np.unique(steps.columns["episode"])) == 3 and len(steps) == 150
    with pytest.raises(BCLMError, match=r"data.max_episodes 5: dataset .*expert-seed-0 holds only 4 episodes"):
        first_episodes(store.arrays(data.shards), 5, store.path)


def test_a_sweep_refuses_to_extend_data_collected_under_other_seeds(tmp_path):
    recipe = _recipe(tmp_path)
    sweep_module.expert_episodes(recipe, tmp_path, 0)
    meta = tmp_path / "data" / "expert-seed-0" / META_FILE
    old = json.loads(meta.read_text())
    del old["sweep_first_env_seed"]                  # as an older bclm wrote it
    meta.write_text(json.dumps(old))
    with pytest.raises(BCLMError, match=r"expert-seed-0: collected with env seeds from an older scheme, expected"):
        sweep_module.expert_episodes(recipe, tmp_path, 0)


def test_a_sweep_collects_each_method_and_seed_once_before_any_cell(tmp_path, monkeypatch):
    collected = []
    monkeypatch.setattr(sweep_module, "expert_episodes", lambda r, out, seed, method="bc": collected.append(
        (method, seed)) or [("ep-00000", 50)])
    monkeypatch.setattr(sweep_module, "run_cell", lambda *a: pytest.fail("a cell ran before the data was in"))
    recipe = cfg.build_config(SweepRecipe, None, [
        "--output-dir", str(tmp_path), "--dagger.env", ENV, "--dagger.expert", EXPERT, "--sweep.methods", "bc,dart",
        "--dagger.noise", "eps:0.1", "--sweep.seeds", "2", "--sweep.jobs", "1"])
    with pytest.raises(pytest.fail.Exception):
        run_sweep(recipe)
    assert sorted(collected) == [("bc", 0), ("bc", 1), ("dart", 0), ("dart", 1)]
