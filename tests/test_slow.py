"""The README's recipes reach their targets (minutes of CPU each): `python -m pytest -m slow`."""

from __future__ import annotations

from pathlib import Path

import pytest

from bclm import config as cfg
from bclm.collect import collect
from bclm.envs import get_task
from bclm.trainer import TrainRecipe, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.parametrize("env,episodes,recipe,metric,target", [
    ("CartPole-v1", 50, "cartpole.yaml", "success_rate", 0.95),
    ("LunarLander-v3", 600, "lunarlander.yaml", "mean_return", 200.0),
])
def test_recipe_reaches_target(tmp_path, env, episodes, recipe, metric, target):
    import json

    collect(get_task(env), None, episodes, tmp_path / "data", seed=0)
    train(cfg.build_config(TrainRecipe, ROOT / "recipes" / recipe, [
        "--dataset", str(tmp_path / "data"), "--output-dir", str(tmp_path / "policy"), "--loop.progress", "false"]))
    report = json.loads((tmp_path / "policy" / "eval_report.json").read_text())
    assert report[metric] >= target, report


@pytest.mark.slow
def test_demo_dagger_beats_bc_at_equal_labels(tmp_path):
    from bclm.demo import run_demo

    report = run_demo(tmp_path)
    dagger, bc = report["rounds"][-1], report["bc_baseline"]
    assert dagger["expert_labels"] <= bc["expert_labels"]
    assert dagger["mean_return"] > 2 * bc["mean_return"], (dagger, bc)
