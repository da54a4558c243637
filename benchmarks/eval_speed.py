"""Evaluation speed on Meta-World: envs stepped in the main process vs in worker processes.

A Meta-World step (MuJoCo physics plus the reward's geometry) costs about as much as the policy's share of
a batched step, so with `eval.async_envs` (gymnasium's AsyncVectorEnv) the envs step in parallel, on
spare cores, while the report stays the same (asserted here, and by tests/test_metaworld.py).

Both modes run `bclm.eval.evaluate` with the same policy ("small" Llama with random weights: speed does
not depend on what it learned) on the same seeds, with episodes cut at `--horizon` steps so that both
do the same work; modes alternate (A B A B ...) and each one's median over rounds is reported.

    python benchmarks/eval_speed.py            # reach/push/pick-place, 20 envs, 100-step episodes
    python benchmarks/eval_speed.py --quick    # seconds, to check the script runs
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see train_throughput.py

import numpy as np
import torch

from bclm.envs import get_task, make_env
from bclm.eval.evaluate import EvalConfig, evaluate
from bclm.models import ModelConfig, build_model
from bclm.policy import Policy
from bclm.tokenizers import BCTokenizer, TokenizerConfig


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tasks", default="reach-v3,push-v3,pick-place-v3", help="Meta-World envs (comma-separated)")
    p.add_argument("--size", default="small")
    p.add_argument("--num-envs", type=int, default=20)
    p.add_argument("--horizon", type=int, default=100, help="steps per episode (a time limit)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.tasks, args.num_envs, args.horizon, args.rounds, args.size = "reach-v3", 2, 10, 1, "tiny"
    return args


def random_policy(env_name: str, size: str) -> Policy:
    """A policy for Meta-World's spaces with random weights and a tokenizer fitted on random states."""
    env = make_env(get_task(env_name))
    rng = np.random.default_rng(0)
    obs = np.stack([env.reset(seed=i)[0] for i in range(8)]) + rng.normal(0, 0.05, (8, 39)).astype(np.float32)
    act = rng.uniform(-1, 1, (8, 4)).astype(np.float32)
    tok = BCTokenizer(env.observation_space, env.action_space, TokenizerConfig()).fit(obs, act)
    env.close()
    torch.manual_seed(0)
    model = build_model(ModelConfig(size=size), tok.vocab_size, 46, tok.bos_id, tok.eos_id, tok.pad_id)
    model.to("cuda" if torch.cuda.is_available() else "cpu").eval()
    return Policy(model, tok, context_length=46)


def main() -> None:
    args = parse_args()
    names = [f"MetaWorld-{t}" for t in args.tasks.split(",")]
    policies = [random_policy(n, args.size) for n in names]       # goal bounds differ between envs
    tasks = [dataclasses.replace(get_task(n), env_kwargs={**get_task(n).env_kwargs,
                                                          "max_episode_steps": args.horizon}) for n in names]
    episodes = args.num_envs                      # one episode per env: every env runs the full horizon
    env_steps = len(tasks) * episodes * args.horizon
    print(f"{len(tasks)} task(s), {args.num_envs} envs, {args.horizon}-step episodes ({env_steps} env steps per "
          f"mode), model {args.size} ({policies[0].model.num_parameters() / 1e6:.2f}M), policy on "
          f"{policies[0].device}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}")

    def run(async_envs: bool) -> tuple[float, list]:
        cfg = EvalConfig(episodes=episodes, num_envs=args.num_envs, async_envs=async_envs)
        start = time.perf_counter()
        reports = [evaluate(policy, task, cfg) for policy, task in zip(policies, tasks)]
        return env_steps / (time.perf_counter() - start), reports

    modes = {"in-process (SyncVectorEnv)": False, "worker processes (async_envs)": True}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    reports = {}
    for r in range(args.rounds):
        for mode, flag in modes.items():
            rate, reports[mode] = run(flag)
            rates[mode].append(rate)
        print(f"  round {r + 1}: " + ", ".join(f"{m} {v[-1]:,.0f} env-steps/s" for m, v in rates.items()),
              flush=True)
    same = reports["in-process (SyncVectorEnv)"] == reports["worker processes (async_envs)"]
    base = statistics.median(rates["in-process (SyncVectorEnv)"])
    print()
    print("| envs | median env-steps/s | vs in-process |")
    print("|---|---:|---:|")
    for mode, v in rates.items():
        print(f"| {mode} | {statistics.median(v):,.0f} | {statistics.median(v) / base:.2f}x |")
    print(f"\nreports identical: {same}")
    if not same:
        raise SystemExit("the two modes gave different reports")


if __name__ == "__main__":
    main()
