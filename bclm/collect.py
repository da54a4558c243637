"""Expert demonstrations into a trajectory store (shard `round-000`)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bclm import distributed
from bclm.data.store import META_FILE, TrajectoryStore
from bclm.envs import TaskSpec, load_expert, make_env
from bclm.errors import BCLMError
from bclm.eval.metrics import summarize
from bclm.eval.rollout import ExpertActor, RolloutResult, merge_results, run_episodes


def expert_ref_of(task: TaskSpec, expert_ref: str | None) -> str:
    ref = expert_ref or task.expert
    if not ref:
        raise BCLMError(f"task {task.name!r} has no builtin expert: pass --expert module:callable")
    load_expert(ref)                      # fail before any work if it cannot be imported
    return ref


def create_store(task: TaskSpec, output: str | Path) -> TrajectoryStore:
    """A new, empty store for the task's spaces (refuses a directory that already holds something)."""
    env = make_env(task)
    try:
        return TrajectoryStore.create(output, env.observation_space, env.action_space, env_id=task.env_id,
                                      task=task.name)
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
                       num_envs: int, shard: str = "round-000", progress: bool = False) -> dict[str, Any]:
    """Roll out the expert for `episodes` seeded episodes and store every step as `shard`."""
    actor = ExpertActor(load_expert(expert_ref), store.observation_space, store.action_space, name=expert_ref)
    share = run_episodes(task, actor, episodes, num_envs=num_envs, seed=seed, progress=progress,
                         env_ids=distributed.env_share(num_envs))
    result = write_gathered(store, shard, share, round_index=0, source="expert")
    return {"steps": sum(ep.length for ep in result.episodes), **summarize(result.episodes)}


def write_gathered(store: TrajectoryStore, shard: str, share: RolloutResult, **write_args: Any) -> RolloutResult:
    """Every process's share of a rollout, merged as one process would have collected it, written once
    as `shard` (by rank 0; the others wait for it). In one process: just the write."""
    result = merge_results(distributed.all_gather(share))
    if distributed.is_main():
        store.write_shard(shard, result.episodes, **write_args)
    distributed.barrier()
    return result


def collect(task: TaskSpec, expert_ref: str | None, episodes: int, output: str | Path, *, seed: int = 0,
            num_envs: int = 8, progress: bool = False) -> dict[str, Any]:
    """Expert demonstrations into a new dataset; returns a summary."""
    ref = expert_ref_of(task, expert_ref)
    store = create_store(task, output)
    summary = write_expert_shard(store, task, ref, episodes, seed=seed, num_envs=num_envs, progress=progress)
    return {"dataset": str(store.path), "env": task.name, "expert": ref, "seed": seed, **summary}
