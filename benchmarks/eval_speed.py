"""Evaluation speed on Meta-World: envs stepped in the main process, one worker process per env, or spread
over one worker process per core (`eval.env_workers`, several envs each), against stepping the envs alone
(the ceiling).

A Meta-World step (MuJoCo physics plus the reward's geometry) costs about as much as the policy's share of
a batched step, so with `eval.async_envs` the envs step in parallel, on spare cores, while the report stays
the same (asserted here, and by tests/test_metaworld.py). gymnasium's AsyncVectorEnv gives each env a
process; `eval.env_workers` spreads them over fewer (`bclm.envs.workers`), one round trip per worker.

The modes run `bclm.eval.evaluate` with the same policy ("small" Llama with random weights: speed does
not depend on what it learned) on the same seeds, with episodes cut at `--horizon` steps so that all
do the same work; modes alternate (A B C A B C ...) and each one's median over rounds is reported. "env
only" steps the same envs with random actions and no policy, in-process and spread over the workers.

    python benchmarks/eval_speed.py            # reach/push/pick-place, 20 envs, 100-step episodes
    python benchmarks/eval_speed.py --tasks reach-v3,push-v3,...   # MT10: the ten names, comma-separated
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

from bclm.envs import get_task, make_env, make_vector_env
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

    def run(async_envs: bool, workers: int) -> tuple[float, list]:
        cfg = EvalConfig(episodes=episodes, num_envs=args.num_envs, async_envs=async_envs, env_workers=workers)
        start = time.perf_counter()
        reports = [evaluate(policy, task, cfg) for policy, task in zip(policies, tasks)]
        return env_steps / (time.perf_counter() - start), reports

    cores = os.cpu_count() or 1
    modes = {"in-process (SyncVectorEnv)": (False, 0), "a process per env (AsyncVectorEnv)": (True, 0),
             f"one process per core ({cores}), envs spread": (True, cores)}
    rates: dict[str, list[float]] = {m: [] for m in modes}
    reports = {}
    for r in range(args.rounds):
        for mode, (flag, workers) in modes.items():
            rate, reports[mode] = run(flag, workers)
            rates[mode].append(rate)
        print(f"  round {r + 1}: " + ", ".join(f"{m} {v[-1]:,.0f} env-steps/s" for m, v in rates.items()),
              flush=True)
    alone = {f"env only, {m}": env_only(tasks, args.num_envs, args.horizon, flag, workers)
             for m, (flag, workers) in modes.items() if not (flag and workers == 0)}
    same = all(rep == reports["in-process (SyncVectorEnv)"] for rep in reports.values())
    base = statistics.median(rates["in-process (SyncVectorEnv)"])
    print()
    print("| envs | median env-steps/s | vs in-process |")
    print("|---|---:|---:|")
    for mode, v in rates.items():
        print(f"| {mode} | {statistics.median(v):,.0f} | {statistics.median(v) / base:.2f}x |")
    for mode, rate in alone.items():
        print(f"| {mode} | {rate:,.0f} | {rate / base:.2f}x |")
    print(f"\nreports identical: {same}")
    if not same:
        raise SystemExit("the modes gave different reports")


def env_only(tasks: list, num_envs: int, horizon: int, asynchronous: bool, workers: int) -> float:
    """env-steps/s of the tasks' vector envs stepped with random actions, no policy: what evaluation tends to."""
    steps, seconds = 0, 0.0
    for task in tasks:
        env = make_vector_env(task, num_envs, asynchronous, workers)
        env.action_space.seed(0)
        start = time.perf_counter()          # from the reset: building the envs is not stepping them
        env.reset(seed=list(range(num_envs)))
        for _ in range(horizon):
            env.step(env.action_space.sample())
        seconds += time.perf_counter() - start
        steps += num_envs * horizon
        env.close()
    return steps / seconds

if __name__ == "__main__":
    main()
