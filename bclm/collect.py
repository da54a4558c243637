"""Expert demonstrations into a trajectory store: shard `round-000`, then `round-000-0001`, ... of `CHUNK`
episodes each, so that an interrupt loses at most one chunk and the same command continues the count."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from bclm import atomic, dirlock
from bclm.data.store import META_FILE, TrajectoryStore
from bclm.envs import TaskSpec, make_env
from bclm.errors import BCLMError
from bclm.rollout import NO_NOISE, Noise, summarize
from bclm.rollout.shards import create_store, expert_ref_of, write_expert_shard

CHUNK = 100                 # episodes per shard of `bclm collect`: what an interrupt can lose at most
CHUNK_SEEDS = 1_000_003     # chunk c seeds its envs from seed + c * CHUNK_SEEDS


def chunk_name(c: int) -> str:
    return "round-000" if c == 0 else f"round-000-{c:04d}"


def collect_store(task: TaskSpec, output: str | Path, request: dict[str, Any]) -> TrajectoryStore:
    """The store of an interrupted run of the same request (to continue), else a new one. A store left with
    no shard by a failed run holds nothing of value and is made again."""
    path = Path(output)
    meta = atomic.read_json(path / META_FILE) if path.is_dir() else None
    if isinstance(meta, dict):
        if meta.get("collect") == request:
            return TrajectoryStore(path)
        if {p.name for p in path.iterdir()} == {META_FILE}:
            (path / META_FILE).unlink()
    return create_store(task, output, origin={"collect": request})


def collect(task: TaskSpec, expert_ref: str | None, episodes: int, output: str | Path, *, seed: int = 0,
            num_envs: int = 8, progress: bool = False, noise: Noise = NO_NOISE) -> dict[str, Any]:
    """Expert demonstrations into a new dataset, committed in chunks: rerun after an interrupt, the same call
    continues where it stopped, with the data an uninterrupted run would have. Returns a summary of the
    episodes collected by this call (`episodes`) and the dataset's total (`episodes_in_dataset`)."""
    if episodes < 1:
        raise BCLMError(f"--episodes {episodes}: expected at least 1")
    if noise.fit:
        raise BCLMError(f"--noise {noise}: a fitted level needs a learner's error; give a level (eps:P, gauss:S), "
                        "or use `bclm dagger --dagger.noise fit`")
    ref = expert_ref_of(task, expert_ref)
    noisy = {"noise": str(noise)} if noise else {}        # provenance (and old requests stay equal)
    request = {"env": task.name, "expert": ref, "episodes": episodes, "seed": seed, "num_envs": num_envs, **noisy}
    if noise:                  # before anything is written
        env = make_env(task)
        noise.check(env.action_space)
        env.close()
    with dirlock.exclusive(output, "--output"):
        return _collect(task, collect_store(task, output, request), request, progress, noise)


def _collect(task: TaskSpec, store: TrajectoryStore, request: dict[str, Any], progress: bool,
             noise: Noise) -> dict[str, Any]:
    """The request's chunks that `store` lacks, written one shard each; the summary of what was written."""
    ref, episodes, seed, num_envs = (request[k] for k in ("expert", "episodes", "seed", "num_envs"))
    noisy = {"noise": str(noise)} if noise else {}
    chunks = [chunk_name(c) for c in range(math.ceil(episodes / CHUNK))]
    done, now = set(store.shard_names()), []
    # One bar: over the chunks (with an ETA) when there are several, else the rollout's own over episodes.
    bar = tqdm(total=episodes, desc=f"collect {task.name}", unit="episode", disable=not progress or len(chunks) == 1)
    for c, name in enumerate(chunks):
        size = min(CHUNK, episodes - c * CHUNK)
        if name not in done:
            now += write_expert_shard(store, task, ref, size, seed=seed + c * CHUNK_SEEDS, num_envs=num_envs,
                                      shard=name, progress=progress and len(chunks) == 1, noise=noise).episodes
        bar.update(size)
    bar.close()
    summary = {"steps": sum(ep.length for ep in now), **summarize(now)} if now else {"episodes": 0}
    return {"dataset": str(store.path), "env": task.name, "expert": ref, "seed": seed, **noisy,
            "episodes_in_dataset": store.next_episode_id(), **summary}
