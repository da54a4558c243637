"""Rollouts written to a trajectory store: the expert's demonstrations (clean or with DART noise) as a shard,
and any rollout split over processes gathered and written once, by rank 0."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bclm import distributed
from bclm.data.store import META_FILE, TrajectoryStore
from bclm.envs import TaskSpec, load_expert, make_env
from bclm.errors import BCLMError
from bclm.rollout.episodes import RolloutResult, merge_results
from bclm.rollout.expert import ExpertActor
from bclm.rollout.loop import run_episodes
from bclm.rollout.noise import NO_NOISE, Noise, NoisyExpertActor


def expert_ref_of(task: TaskSpec, expert_ref: str | None) -> str:
    ref = expert_ref or task.expert
    if not ref:
        raise BCLMError(f"task {task.name!r} has no builtin expert: pass --expert module:callable")
    load_expert(ref)                      # fail before any work if it cannot be imported
    return ref


def create_store(task: TaskSpec, output: str | Path, origin: dict[str, Any] | None = None) -> TrajectoryStore:
    """A new, empty store for the task's spaces (refuses a directory that already holds something)."""
    env = make_env(task)
    try:
        return TrajectoryStore.create(output, env.observation_space, env.action_space, env_id=task.env_id,
                                      task=task.name, origin=origin)
    finally:
        env.close()


def open_store(task: TaskSpec, output: str | Path) -> TrajectoryStore:
    """The store at `output`, created empty for the task's spaces when it does not exist yet (by rank 0
    when there are several processes)."""
    if distributed.is_main() and not (Path(output) / META_FILE).is_file():
        create_store(task, output)
    distributed.barrier()
    return TrajectoryStore(output)


def write_expert_shard(store: TrajectoryStore, task: TaskSpec, expert_ref: str, episodes: int, *, seed: int,
                       num_envs: int, shard: str = "round-000", progress: bool = False,
                       noise: Noise = NO_NOISE) -> RolloutResult:
    """Roll out the expert for `episodes` seeded episodes and store every step as `shard`; with `noise`, the
    executed actions are perturbed and the expert's clean actions are the labels (DART)."""
    expert = ExpertActor(load_expert(expert_ref), store.observation_space, store.action_space, name=expert_ref)
    env_ids = distributed.env_share(num_envs)
    actor = NoisyExpertActor(expert, noise, seed, env_ids or list(range(max(1, min(num_envs, episodes))))) \
        if noise else expert
    share = run_episodes(task, actor, episodes, num_envs=num_envs, seed=seed, progress=progress,
                         expert=actor.labels() if noise else None, env_ids=env_ids)
    return write_gathered(store, shard, share, round_index=0, source=f"dart {noise}" if noise else "expert")


def write_gathered(store: TrajectoryStore, shard: str, share: RolloutResult, **write_args: Any) -> RolloutResult:
    """Every process's share of a rollout, merged as one process would have collected it, written once
    as `shard` (by rank 0; the others wait for it). In one process: just the write."""
    result = merge_results(distributed.all_gather(share))
    if distributed.is_main():
        store.write_shard(shard, result.episodes, **write_args)
    distributed.barrier()
    return result
