"""The default job: BC against DAgger on CartPole balanced for 2,000 steps, success against expert labels
over 3 seeds, on CPU in minutes.

A `bclm sweep` with a small budget: per seed, BC on 1 and 2 expert demonstrations (2,000 and 4,000 labels),
and a DAgger run that starts from 1 demonstration and adds labeled rollouts of its own policy. The table
and the plot give each method's mean success with a 95% confidence interval over the seeds. Over 500 steps
(CartPole-v1) BC from one demonstration already balances almost always; over 2,000 its small drifts
compound into failures, which is what DAgger is for.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bclm.eval.evaluate import EvalConfig
from bclm.models import ModelConfig
from bclm.sweep import SweepConfig, SweepRecipe, run_sweep
from bclm.trainer.config import LoopConfig, OptimConfig
from bclm.trainer.dagger import DaggerConfig

DEMO_TASK = "CartPole-v1-H2000"


def demo_recipe(output_dir: Path, seeds: int = 3) -> SweepRecipe:
    """The recipe-free defaults (one-step context, number tokens, epochs), with a tiny model for speed."""
    return SweepRecipe(
        output_dir=str(output_dir),
        model=ModelConfig(size="tiny"),
        train=OptimConfig(batch_size=64, lr=2e-3, epochs=15),
        loop=LoopConfig(log_every=100, progress=False),
        eval=EvalConfig(episodes=20, num_envs=20),
        # β = 0 after round 0: the learner drives, so the labels go to the states it reaches; its rollouts
        # are cut at 1,000 steps, so two rounds bring it to the second budget.
        dagger=DaggerConfig(env=DEMO_TASK, initial_episodes=1, episodes_per_round=1, num_envs=1, beta="constant",
                            beta_value=0.0, rollout_max_steps=1000),
        # Two cells at a time, a thread each: a tiny model does not keep two threads busy.
        sweep=SweepConfig(methods=["bc", "dagger"], budgets=[2000, 4000], seeds=seeds, max_rounds=2, jobs=2),
    )


def run_demo(workdir: Path, seeds: int = 3) -> dict[str, Any]:
    recipe = demo_recipe(workdir, seeds)
    t0 = time.perf_counter()
    print(f"BC vs DAgger on {DEMO_TASK}, {seeds} seeds, expert-label budgets {recipe.sweep.budgets} → {workdir}")
    report = run_sweep(recipe)
    print()
    print((workdir / "sweep.md").read_text())
    print(f"wall time {time.perf_counter() - t0:.0f} s; report {workdir / 'sweep.json'}; plots "
          f"{workdir / 'success_vs_labels.png'}, {workdir / 'mistakes_vs_t.png'}")
    return report
