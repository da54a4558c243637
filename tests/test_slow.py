"""The README's headline results (minutes of CPU each): `python -m pytest -m slow`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def bclm(*args: str, cwd: Path) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    r = subprocess.run([sys.executable, "-m", "bclm", *args], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=1800)
    assert r.returncode == 0, r.stderr[-2000:]


@pytest.mark.slow
def test_recipe_free_cartpole_bc_from_two_demonstrations(tmp_path):
    """No recipe, default tokenizer: 2 expert demonstrations (1,000 labels) give >= 95% over 3 seeds."""
    rates = []
    for seed in range(3):
        bclm("collect", "--env", "CartPole-v1", "--episodes", "2", "--seed", str(1000 * seed), "--output", f"d{seed}",
             cwd=tmp_path)
        bclm("train", "--dataset", f"d{seed}", "--output-dir", f"p{seed}", "--loop.seed", str(seed),
             "--eval.episodes", "50", cwd=tmp_path)
        rates.append(json.loads((tmp_path / f"p{seed}" / "eval_report.json").read_text())["success_rate"])
    assert sum(rates) / 3 >= 0.95, rates


@pytest.mark.slow
def test_lunarlander_bc_from_100_demonstrations(tmp_path):
    bclm("collect", "--env", "LunarLander-v3", "--episodes", "100", "--output", "data", cwd=tmp_path)
    bclm("train", "--dataset", "data", "--output-dir", "policy", "--eval.episodes", "50", cwd=tmp_path)
    report = json.loads((tmp_path / "policy" / "eval_report.json").read_text())
    assert report["mean_return"] >= 200, report


@pytest.mark.slow
def test_demo_runs_the_sweep_over_three_seeds(tmp_path):
    from bclm.demo import run_demo

    report = run_demo(tmp_path)
    last = {}
    for method in ("bc", "dagger"):
        rows = {row["budget"]: row for row in report["summary"][method]}
        assert rows[4000]["success_rate"]["n"] == 3
        last[method] = rows[4000]
    # What the demo is for: at equal labels, the learner's own states cut its mistakes.
    assert last["dagger"]["mistakes_per_episode"]["mean"] < last["bc"]["mistakes_per_episode"]["mean"]
    assert (tmp_path / "success_vs_labels.png").is_file()
