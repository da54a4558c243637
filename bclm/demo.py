"""The default job: expert demos → behavior cloning → evaluation, on CartPole-v1, on CPU in a few minutes."""

from __future__ import annotations

import json
import time
from pathlib import Path

from bclm.collect import collect
from bclm.data.sequences import DataConfig
from bclm.envs import get_task, load_expert, make_env
from bclm.eval.evaluate import EvalConfig, format_table, write_report
from bclm.eval.metrics import summarize
from bclm.eval.rollout import ExpertActor, run_episodes
from bclm.models import ModelConfig
from bclm.trainer.bc import train
from bclm.trainer.config import LoopConfig, OptimConfig, TrainRecipe

DEMO_TASK = "CartPole-v1"
DEMO_EPISODES = 50


def demo_recipe(dataset: Path, output_dir: Path, steps: int = 800) -> TrainRecipe:
    """The same settings as recipes/cartpole.yaml (a test keeps the two equal)."""
    return TrainRecipe(
        dataset=str(dataset), output_dir=str(output_dir),
        model=ModelConfig(size="small"),
        data=DataConfig(context_length=20),
        train=OptimConfig(max_steps=steps, batch_size=64, lr=1e-3, warmup_steps=50),
        loop=LoopConfig(log_every=50),
        eval=EvalConfig(episodes=50, num_envs=10),
    )


def run_demo(workdir: Path, steps: int = 800) -> dict:
    run_dir = workdir / time.strftime("%Y%m%d-%H%M%S")
    task = get_task(DEMO_TASK)
    t0 = time.perf_counter()
    print(f"[1/3] collecting {DEMO_EPISODES} expert episodes of {task.name} → {run_dir / 'data'}")
    collected = collect(task, None, DEMO_EPISODES, run_dir / "data", seed=0, progress=True)
    print(f"[2/3] behavior cloning for {steps} steps → {run_dir / 'policy'}")
    recipe = demo_recipe(run_dir / "data", run_dir / "policy", steps)
    train(recipe)                      # ends with the policy's evaluation on recipe.eval's seeds
    report = json.loads((run_dir / "policy" / "eval_report.json").read_text())
    print("[3/3] evaluating the expert on the same seeds")
    expert = ExpertActor(load_expert(task.expert), *_spaces(task), name=task.expert)
    expert_report = summarize(run_episodes(task, expert, recipe.eval.episodes, num_envs=recipe.eval.num_envs,
                                           seed=recipe.eval.seed, record=False).episodes)
    rows = [{"agent": f"expert ({task.expert})", "demos": "-", **expert_report},
            {"agent": "bclm BC policy", "demos": collected["episodes"], **report}]
    summary = {"bc": report, "expert": expert_report, "demos": collected["episodes"],
               "wall_time_s": time.perf_counter() - t0}
    write_report(summary, run_dir / "demo_report.json")
    print()
    print(format_table(rows, ["agent", "demos", "episodes", "success_rate", "mean_return", "mean_length",
                              "mistake_rate"]))
    print(f"\nwall time {time.perf_counter() - t0:.0f} s; report {run_dir / 'demo_report.json'}")
    return summary


def _spaces(task):
    env = make_env(task)
    try:
        return env.observation_space, env.action_space
    finally:
        env.close()
