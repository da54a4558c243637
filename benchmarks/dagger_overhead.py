"""Where a DAgger run's wall time goes: training steps, evaluation rollouts, env stepping, expert calls,
policy inference, and the rest (bclm's own bookkeeping: loading and tokenizing the aggregate, windowing,
building models, writing shards, saving policies).

The rest is the overhead bclm adds around the work that any DAgger implementation must do; the target
is ≤ 10% of the round. Each bucket is timed by wrapping the one function that does that work, in the same
run, so the shares add up to the measured wall time.

    python benchmarks/dagger_overhead.py            # CartPole-v1, 2 rounds after round 0
    python benchmarks/dagger_overhead.py --quick
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from collections import defaultdict
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see benchmarks/rollout.py

import gymnasium as gym

from bclm import config as cfg
from bclm.policy import ActSession
from bclm.rollout import ExpertActor
from bclm.trainer import bc, dagger

TIMES: dict[str, float] = defaultdict(float)
_inside: list[str] = []


def timed(bucket: str, fn):
    """Time `fn` into `bucket`, unless called from inside another timed call (counted there already)."""
    def wrapper(*args, **kwargs):
        if _inside:
            return fn(*args, **kwargs)
        _inside.append(bucket)
        t0 = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            TIMES[bucket] += time.perf_counter() - t0
            _inside.pop()
    return wrapper


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="CartPole-v1")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--episodes-per-round", type=int, default=8)
    p.add_argument("--train-steps", type=int, default=200)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.rounds, args.episodes_per_round, args.train_steps = 1, 2, 10
    # The optimizer steps and the learner-alone evaluation inside `train` are work of their own; the rest
    # of `train` (loading and tokenizing the aggregate, building the model, saving) is bookkeeping.
    bc.train_step = timed("training steps", bc.train_step)
    bc.evaluate = timed("evaluation rollouts (learner alone)", bc.evaluate)
    ExpertActor.act = timed("expert calls", ExpertActor.act)
    ActSession.act = timed("policy inference", ActSession.act)
    for cls in (gym.vector.SyncVectorEnv, gym.vector.AsyncVectorEnv):
        cls.step = timed("env stepping", cls.step)
    with tempfile.TemporaryDirectory() as tmp:
        recipe = cfg.build_config(dagger.DaggerRecipe, Path(__file__).parents[1] / "recipes" / "cartpole.yaml", [
            "--output-dir", str(Path(tmp) / "run"), "--dagger.env", args.env,
            "--dagger.rounds", str(args.rounds), "--dagger.initial_episodes", str(args.episodes_per_round),
            "--dagger.episodes_per_round", str(args.episodes_per_round), "--train.max_steps",
            str(args.train_steps), "--loop.progress", "false", "--eval.episodes", "10"])
        t0 = time.perf_counter()
        dagger.run_dagger(recipe)
        total = time.perf_counter() - t0
    print(f"{args.env}: round 0 + {args.rounds} DAgger rounds, {args.episodes_per_round} episodes per round, "
          f"{args.train_steps} training steps per round; wall time {total:.1f} s\n")
    print("| bucket | seconds | share |")
    print("|---|---:|---:|")
    accounted = 0.0
    for bucket in ("training steps", "evaluation rollouts (learner alone)", "env stepping", "expert calls",
                   "policy inference"):
        accounted += TIMES[bucket]
        print(f"| {bucket} | {TIMES[bucket]:.1f} | {TIMES[bucket] / total:.1%} |")
    print(f"| bclm bookkeeping (the rest) | {total - accounted:.1f} | {(total - accounted) / total:.1%} |")
    print(f"\noverhead share = {(total - accounted) / total:.1%} (target <= 10%)")


if __name__ == "__main__":
    main()
