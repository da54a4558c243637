"""Expert demonstrations into a new trajectory store (shard `round-000`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bclm.data.store import TrajectoryStore
from bclm.envs import TaskSpec, load_expert, make_env
from bclm.errors import BCLMError
from bclm.eval.metrics import summarize
from bclm.eval.rollout import ExpertActor, run_episodes


def collect(task: TaskSpec, expert_ref: str | None, episodes: int, output: str | Path, *, seed: int = 0,
            num_envs: int = 8, progress: bool = False) -> dict[str, Any]:
    """Roll out the expert for `episodes` seeded episodes and store every step; returns a summary."""
    expert_ref = expert_ref or task.expert
    if not expert_ref:
        raise BCLMError(f"task {task.name!r} has no builtin expert: pass --expert module:callable")
    expert = load_expert(expert_ref)
    env = make_env(task)
    obs_space, act_space = env.observation_space, env.action_space
    env.close()
    store = TrajectoryStore.create(output, obs_space, act_space, env_id=task.env_id, task=task.name)
    actor = ExpertActor(expert, obs_space, act_space, name=expert_ref)
    result = run_episodes(task, actor, episodes, num_envs=num_envs, seed=seed, progress=progress)
    store.write_shard("round-000", result.episodes, round_index=0, source="expert")
    return {"dataset": str(store.path), "env": task.name, "expert": expert_ref, "seed": seed,
            "steps": sum(ep.length for ep in result.episodes), **summarize(result.episodes)}
