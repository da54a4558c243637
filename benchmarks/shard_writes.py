"""Writing one-episode shards into a store that already holds many: the cost of one more write.

`bclm sweep` collects expert episodes one per shard (so that every budget takes a prefix of them), which
for BabyAI's 5-step episodes means thousands of shards. Each write numbers its episodes after the store's
largest id. Timed here, after the store holds `--shards` shards: a write through the store object that
wrote them (what the sweep does: it knows the ids it wrote) against a write through a new store
object (every shard read again: what every write cost before 2026-12-05, and what a new process pays once).

    python benchmarks/shard_writes.py                 # 1,000 shards
    python benchmarks/shard_writes.py --quick         # seconds, to check the script runs
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np

from bclm.data.store import EpisodeRecord, TrajectoryStore

OBS = gym.spaces.Box(-1, 1, (8,), np.float32)
ACT = gym.spaces.Discrete(4)


def episode(rng: np.random.Generator, length: int = 5) -> EpisodeRecord:
    return EpisodeRecord(observation={"": rng.uniform(-1, 1, (length, 8)).astype(np.float32)},
                         action={"": rng.integers(0, 4, length)}, expert_action=None,
                         reward=np.zeros(length, np.float32), terminated=True, truncated=False, task="toy",
                         success=True)


def seconds_per_write(path: Path, first: int, writes: int, fresh: bool, store: TrajectoryStore) -> float:
    rng = np.random.default_rng(first)
    start = time.perf_counter()
    for i in range(first, first + writes):
        (TrajectoryStore(path) if fresh else store).write_shard(f"ep-{i:05d}", [episode(rng)])
    return (time.perf_counter() - start) / writes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shards", type=int, default=1000, help="Shards in the store before the timed writes.")
    p.add_argument("--writes", type=int, default=10, help="Timed writes per way.")
    p.add_argument("--quick", action="store_true", help="50 shards, 3 writes: only to check the script runs.")
    args = p.parse_args()
    shards, writes = (50, 3) if args.quick else (args.shards, args.writes)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "store"
        store = TrajectoryStore.create(path, OBS, ACT, env_id="Toy-v0", task="toy")
        rng = np.random.default_rng(0)
        for i in range(shards):
            store.write_shard(f"ep-{i:05d}", [episode(rng)])
        same = seconds_per_write(path, shards, writes, False, store)
        fresh = seconds_per_write(path, shards + writes, writes, True, store)
        assert store.next_episode_id() == shards + 2 * writes
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {shards} one-episode shards, "
          f"{writes} timed writes each way\n")
    print("| write through | ms per write | ratio |\n|---|---:|---:|")
    print(f"| a new store object (every shard read) | {1000 * fresh:.1f} | 1.00 |")
    print(f"| the store that wrote the shards (the sweep) | {1000 * same:.1f} | {fresh / same:.1f}x faster |")


if __name__ == "__main__":
    main()
