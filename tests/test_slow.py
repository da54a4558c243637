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
def test_the_demo_shows_dagger_ahead_of_bc_beyond_noise(tmp_path):
    """The main job's claim: at the top budget DAgger beats BC on the same seeds, the paired 95% interval above
    zero, with fewer mistakes per episode."""
    from bclm.demo import run_demo

    report = run_demo(tmp_path)
    top = max(report["budgets"])
    rows = {method: {row["budget"]: row for row in report["summary"][method]} for method in ("bc", "dart", "dagger")}
    assert all(rows[m][top]["success_rate"]["n"] == 5 for m in rows)
    paired = {(c["method"], c["budget"]): c for c in report["comparisons"]}[("dagger", top)]
    assert paired["success_rate"]["mean"] - paired["success_rate"]["ci95"] > 0, paired
    assert rows["dagger"][top]["mistakes_per_episode"]["mean"] < rows["bc"][top]["mistakes_per_episode"]["mean"]
    assert (tmp_path / "success_vs_labels.png").is_file() and (tmp_path / "paired_difference.png").is_file()
