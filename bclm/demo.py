"""The default job: BC, DART and DAgger at equal expert labels on a car kept on a curvy road (`LaneKeep-v0`),
over 5 seeds, on CPU in minutes.

A `bclm sweep` with small budgets. Per seed: BC on 1 and 2 expert demonstrations (300 and 600 labels); DART
on as many demonstrations with the expert's steering perturbed; DAgger from 1 demonstration, adding labeled
rollouts of its own policy. The expert starts on the centreline and never leaves it, so its demonstrations
show nothing of how to come back: a cloned policy's small errors carry it off the road. DART's perturbed
demonstrations and DAgger's labels on the learner's own states show the way back. The table gives each
method's mean success with a 95% confidence interval, and each method minus BC on the same seeds.
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

DEMO_TASK = "LaneKeep-v0"
SEEDS = 5


def demo_recipe(output_dir: Path, seeds: int = SEEDS, first_seed: int = 0, env: str = DEMO_TASK) -> SweepRecipe:
    """The recipe-free defaults (one-step context, the state token, the regression head), with a tiny model
    for speed."""
    return SweepRecipe(
        output_dir=str(output_dir),
        model=ModelConfig(size="tiny"),
        train=OptimConfig(batch_size=64, lr=2e-3, epochs=15),
        loop=LoopConfig(log_every=100, progress=False),
        eval=EvalConfig(episodes=20, num_envs=20),
        # β = 0 after round 0: the learner drives, so the labels go to the states it reaches. Rollouts are cut
        # at 150 steps, so that two rounds fit in the second budget. DART perturbs the expert's steering by a
        # tenth of its range.
        dagger=DaggerConfig(env=env, initial_episodes=1, episodes_per_round=1, num_envs=1, beta="constant",
                            beta_value=0.0, rollout_max_steps=150, noise="gauss:0.1"),
        # Two cells at a time, a thread each: a tiny model does not keep two threads busy.
        sweep=SweepConfig(methods=["bc", "dart", "dagger"], budgets=[300, 600], seeds=seeds, first_seed=first_seed,
                          max_rounds=4, jobs=2),
    )


def run_demo(workdir: Path, seeds: int = SEEDS, first_seed: int = 0, env: str = DEMO_TASK) -> dict[str, Any]:
    recipe = demo_recipe(workdir, seeds, first_seed, env)
    t0 = time.perf_counter()
    print(f"BC vs DART vs DAgger on {env}, seeds {first_seed}..{first_seed + seeds - 1}, expert-label "
          f"budgets {recipe.sweep.budgets} → {workdir}")
    report = run_sweep(recipe)
    print()
    print((workdir / "sweep.md").read_text())
    print(f"wall time {time.perf_counter() - t0:.0f} s; report {workdir / 'sweep.json'}; plots "
          f"{workdir / 'success_vs_labels.png'}, {workdir / 'paired_difference.png'}, {workdir / 'mistakes_vs_t.png'}")
    return report
