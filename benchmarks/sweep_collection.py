"""A sweep's expert episodes per second: in blocks of 1, 1, 2, 4, ... 64 episodes per shard (`bclm sweep`
since 2026-12-06) against one episode per shard (before), on BabyAI GoToLocal with its bot.

Both collect the same number of episodes, as many as the sweep needs to pass `--labels`, and write them into
a new store; the two ways alternate for `--rounds` rounds, so a busy machine slows both alike.

    python benchmarks/sweep_collection.py                 # 2,000 labels (~375 episodes), 2 rounds
    python benchmarks/sweep_collection.py --quick         # seconds, to check the script runs
"""

from __future__ import annotations

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

from bclm import config as cfg
from bclm.envs import get_task
from bclm.rollout.shards import expert_ref_of, open_store, write_expert_shard
from bclm.sweep import SweepRecipe, expert_episodes, first_env_seed

ENV = "BabyAI-GoToLocal-v0"


def in_blocks(recipe: SweepRecipe, out: Path) -> int:
    return len(expert_episodes(recipe, out, 0))


def one_per_shard(recipe: SweepRecipe, out: Path, episodes: int) -> int:
    task = get_task(ENV)
    ref = expert_ref_of(task, None)
    store = open_store(task, out / "store")
    for i in range(episodes):
        write_expert_shard(store, task, ref, 1, seed=first_env_seed(recipe, 0) + i, num_envs=1, shard=f"ep-{i:05d}")
        len(store.load([f"ep-{i:05d}"]))            # the old sweep read each episode's labels back
    return episodes


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--labels", type=int, default=2000, help="Labels to pass (the sweep's largest budget).")
    p.add_argument("--rounds", type=int, default=2, help="Timed rounds per way, alternating.")
    p.add_argument("--quick", action="store_true", help="50 labels, 1 round: only to check the script runs.")
    args = p.parse_args()
    labels, rounds = (50, 1) if args.quick else (args.labels, args.rounds)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores; {ENV}, {labels:,} labels, {rounds} rounds; "
          f"load average {os.getloadavg()[0]:.1f}\n")
    seconds = {"blocks": 0.0, "one": 0.0}
    episodes = 0
    for _ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            recipe = cfg.build_config(SweepRecipe, None, ["--dagger.env", ENV, "--sweep.budgets", str(labels)])
            start = time.perf_counter()
            episodes = in_blocks(recipe, Path(tmp) / "blocks")
            seconds["blocks"] += time.perf_counter() - start
            start = time.perf_counter()
            one_per_shard(recipe, Path(tmp) / "one", episodes)
            seconds["one"] += time.perf_counter() - start
    rate = {k: rounds * episodes / v for k, v in seconds.items()}
    print("| expert episodes written | episodes/s | ratio |\n|---|---:|---:|")
    print(f"| one per shard (before 2026-12-06) | {rate['one']:.1f} | 1.00 |")
    print(f"| in blocks of up to 64 per shard (`bclm sweep`) | {rate['blocks']:.1f} | "
          f"{rate['blocks'] / rate['one']:.2f}x |")
    print(f"\n{episodes} episodes per way and round; load average (1 min) at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
