"""The default job: BC versus DAgger at (about) equal expert labels, on CartPole-v1, on CPU in minutes.

One expert demonstration is too little for behavior cloning: the cloned policy drifts off the expert's
states and falls. DAgger starts from the same demonstration, then lets the expert label the states its
own policy visits; with fewer labels than a BC policy trained on two demonstrations it balances far longer.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from bclm.data.sequences import DataConfig
from bclm.eval.evaluate import EvalConfig, format_table
from bclm.models import ModelConfig
from bclm.trainer.config import LoopConfig, OptimConfig
from bclm.trainer.dagger import DaggerConfig, DaggerRecipe, run_dagger

DEMO_TASK = "CartPole-v1"


def demo_recipe(output_dir: Path, steps: int = 300) -> DaggerRecipe:
    """recipes/cartpole.yaml's model and data settings (a test keeps them equal), a smaller budget."""
    return DaggerRecipe(
        output_dir=str(output_dir),
        model=ModelConfig(size="small"),
        data=DataConfig(context_length=20),
        train=OptimConfig(max_steps=steps, batch_size=64, lr=1e-3, warmup_steps=50),
        loop=LoopConfig(log_every=50, progress=False),
        eval=EvalConfig(episodes=20, num_envs=10),
        dagger=DaggerConfig(env=DEMO_TASK, rounds=3, initial_episodes=1, episodes_per_round=1, num_envs=1,
                            bc_baseline=True),
    )


def run_demo(workdir: Path, steps: int = 300) -> dict[str, Any]:
    run_dir = workdir / time.strftime("%Y%m%d-%H%M%S")
    recipe = demo_recipe(run_dir, steps)
    t0 = time.perf_counter()
    print(f"BC vs DAgger on {DEMO_TASK}: 1 expert demonstration, then {recipe.dagger.rounds} DAgger rounds of "
          f"{recipe.dagger.episodes_per_round} labeled rollout each, {steps} training steps per round → {run_dir}")
    report = run_dagger(recipe)
    rows = [{"agent": "BC (1 demo)", **report["rounds"][0]},
            {"agent": f"DAgger ({recipe.dagger.rounds} rounds)", **report["rounds"][-1]},
            {"agent": "BC (demos for as many labels)", **report["bc_baseline"]}]
    print()
    print(format_table(rows, ["agent", "expert_labels", "episodes", "success_rate", "mean_return",
                              "mistakes_at_horizon"]))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; report {run_dir / 'dagger_report.json'}; "
          f"mistakes vs horizon: {run_dir / 'mistakes.png'}")
    return report
