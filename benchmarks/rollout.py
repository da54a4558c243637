"""Rollout throughput of a bclm policy: env-steps/s of batched KV-cached decoding vs the alternatives.

Three ways to serve the same policy to the same vector env are timed over the same number of steps:

1. ``kv-batched``: one `ActSession` of all envs with its shared KV cache (bclm's way);
2. ``recompute``: one session of all envs, `use_cache=False`, so every step re-reads the full context;
3. ``one-at-a-time``: one KV-cached session of batch 1 per env, queried one after another (the way
   per-request servers such as JAT's or OpenVLA's act on a single observation per forward).

Counting: a mode's env-steps/s is ``steps * num_envs / wall time`` of the whole rollout loop (policy
`act` + `env.step`, after a warm-up). The runs are long enough for every env's context to fill up
(`steps_per_context` steps) and slide several times, since the cost of a step depends on how full the
context is: timing only the first steps would flatter `recompute`. ``env share`` is the part of that
wall time spent in `env.step`; an ``env only`` row (random actions, no model) gives the ceiling.

The model is randomly initialised: speed does not depend on the weights, and no checkpoint is needed.

    python benchmarks/rollout.py            # LunarLander-v3, 16 envs, 64-step context, size small
    python benchmarks/rollout.py --quick    # a few seconds, to check the script runs
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import dataclass
from typing import Any

# OpenMP worker threads that wait for work by sleeping instead of spinning; set before torch is loaded.
# With torch's default of one thread per core, spinning threads on a machine shared with other jobs wait
# at every op for a peer that is not scheduled: on a loaded 2-core box we measured a small model's forward
# at 270 ms spinning vs 2.8 ms sleeping (1.9 ms with one thread). Export OMP_WAIT_POLICY=ACTIVE to measure
# with the spinning default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector.utils import concatenate, create_empty_array, iterate

from bclm.envs import get_task, make_vector_env
from bclm.models import ModelConfig, build_model
from bclm.policy import Policy
from bclm.state import attach_state
from bclm.tokenizers import BCTokenizer, TokenizerConfig

MODES = ("kv-batched", "recompute", "one-at-a-time")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--env", default="LunarLander-v3", help="bclm task (LunarLander-v3: 8-d obs, step_len 10)")
    p.add_argument("--num-envs", type=int, default=16)
    p.add_argument("--context-steps", type=int, default=64, help="timesteps that fit in the context")
    p.add_argument("--size", default="small", help="bclm model size (tiny, small, base, ...)")
    # 160 steps = the context fills at 64, then slides at 96, 128 and 160 (bclm keeps half of it).
    p.add_argument("--steps", type=int, default=160, help="timed env steps per mode (every env steps)")
    p.add_argument("--warmup", type=int, default=8, help="untimed steps per mode first")
    p.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    # torch's default (one thread per core) is right on an idle machine; on a shared one, OpenMP threads
    # waiting for each other at every op can cost far more than the second core brings: try 1.
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where the policy runs")
    p.add_argument("--quick", action="store_true", help="tiny settings, only to check that the script runs")
    args = p.parse_args()
    if args.quick:
        args.num_envs, args.context_steps, args.size, args.steps, args.warmup = 4, 8, "tiny", 20, 2
    return args


def build_policy(task_name: str, num_envs: int, context_steps: int, size: str, seed: int) -> Policy:
    """A random-init policy whose tokenizer is fitted on observations of a short random rollout."""
    venv = make_vector_env(get_task(task_name), num_envs)
    venv.action_space.seed(seed)
    obs, _ = venv.reset(seed=seed)
    seen_obs, seen_act = [], []
    for _ in range(32):
        act = venv.action_space.sample()
        seen_obs.append(obs)
        seen_act.append(act)
        obs, *_ = venv.step(act)
    venv.close()
    obs_space, act_space = venv.single_observation_space, venv.single_action_space
    tok = BCTokenizer(obs_space, act_space, TokenizerConfig())
    tok.fit(_cat(obs_space, [o for b in seen_obs for o in iterate(venv.observation_space, b)]),
            _cat(act_space, [a for b in seen_act for a in iterate(venv.action_space, b)]))
    context_length = tok.prefix_len + context_steps * tok.step_len
    torch.manual_seed(seed)
    model = build_model(ModelConfig(size=size), tok.vocab_size, context_length, tok.bos_id, tok.eos_id,
                        tok.pad_id).eval()
    attach_state(model, {task: tok for task in tok.tasks})      # as a trained policy loads: its state token
    return Policy(model, tok, context_length)


def _cat(space: gym.Space, items: list[Any]) -> Any:
    """Batch single-env values (obs or actions, any space) into one batched value."""
    return concatenate(space, items, create_empty_array(space, len(items)))


class OneAtATime:
    """Batch-1 KV-cached sessions, one per env, each asked in turn (no batching across envs)."""

    def __init__(self, policy: Policy, obs_space: gym.Space, act_space: gym.Space,
                 batched_obs_space: gym.Space, num_envs: int):
        self.sessions = [policy.new_session(1, use_cache=True) for _ in range(num_envs)]
        self.obs_space, self.act_space, self.batched_obs_space = obs_space, act_space, batched_obs_space

    def act(self, obs: Any, new_episode: np.ndarray) -> Any:
        one_act_space = gym.vector.utils.batch_space(self.act_space, 1)
        actions = []
        for i, single in enumerate(iterate(self.batched_obs_space, obs)):
            a = self.sessions[i].act(_cat(self.obs_space, [single]), new_episode[i:i + 1])
            actions.append(next(iter(iterate(one_act_space, a))))
        return _cat(self.act_space, actions)


@dataclass
class Timing:
    seconds: float
    env_seconds: float
    env_steps: int
    actions: list[np.ndarray]   # per step, the actions taken (to check the modes agree)


def run(venv: gym.vector.VectorEnv, actor: Any, steps: int, seed: int) -> Timing:
    """`steps` vector-env steps driven by `actor`; the same env seeds for every mode."""
    obs, _ = venv.reset(seed=seed)
    venv.action_space.seed(seed)
    new_episode = np.ones(venv.num_envs, dtype=bool)
    env_seconds, taken = 0.0, []
    start = time.perf_counter()
    for _ in range(steps):
        actions = venv.action_space.sample() if actor is None else actor.act(obs, new_episode)
        t = time.perf_counter()
        obs, _, terminated, truncated, _ = venv.step(actions)
        env_seconds += time.perf_counter() - t
        # SAME_STEP autoreset: obs[i] of a finished env is already its next episode's first obs.
        new_episode = terminated | truncated
        taken.append(np.asarray(actions).copy())
    return Timing(time.perf_counter() - start, env_seconds, steps * venv.num_envs, taken)


def make_actor(mode: str, policy: Policy, venv: gym.vector.VectorEnv) -> Any:
    if mode == "kv-batched":
        return policy.new_session(venv.num_envs, use_cache=True)
    if mode == "recompute":
        return policy.new_session(venv.num_envs, use_cache=False)
    return OneAtATime(policy, venv.single_observation_space, venv.single_action_space,
                      venv.observation_space, venv.num_envs)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    policy = build_policy(args.env, args.num_envs, args.context_steps, args.size, args.seed)
    policy.model.to(args.device)
    venv = make_vector_env(get_task(args.env), args.num_envs)
    tok = policy.tokenizer
    print(f"env {args.env}, {args.num_envs} envs, model {args.size} "
          f"({sum(p.numel() for p in policy.model.parameters()) / 1e6:.2f}M params), context "
          f"{policy.context_length} tokens = {tok.prefix_len} + {policy.steps_per_context} steps x "
          f"{tok.step_len}, {args.steps} timed steps per mode, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")

    results: dict[str, Timing] = {}
    results["env only"] = run(venv, None, args.steps, args.seed)
    for mode in args.modes:
        # Warm-up on a throwaway actor: first calls pay for allocator growth and lazy inits.
        run(venv, make_actor(mode, policy, venv), args.warmup, args.seed + 1)
        results[mode] = run(venv, make_actor(mode, policy, venv), args.steps, args.seed)
        r = results[mode]
        print(f"  {mode}: {r.env_steps / r.seconds:.0f} env-steps/s ({r.seconds:.1f} s)", flush=True)
    venv.close()

    rate = {m: r.env_steps / r.seconds for m, r in results.items()}
    ref = rate.get("kv-batched")
    ref_actions = results["kv-batched"].actions if "kv-batched" in results else None
    print()
    print("| mode | env-steps/s | vs kv-batched | env share | actions = kv-batched |")
    print("|---|---:|---:|---:|---:|")
    for mode, r in results.items():
        vs = f"{rate[mode] / ref:.2f}x" if ref else "-"
        # A random-init model has near-tied logits, so float noise between the paths can flip an argmax;
        # after that the trajectories differ. A low value right from the start would point at a bug.
        same = "-" if ref_actions is None or mode == "env only" else \
            f"{np.mean([np.array_equal(a, b) for a, b in zip(r.actions, ref_actions)]):.0%} of steps"
        print(f"| {mode} | {rate[mode]:,.0f} | {vs} | {r.env_seconds / r.seconds:.0%} | {same} |")
    print()
    if ref and "recompute" in rate:
        print(f"kv-batched / recompute = {ref / rate['recompute']:.1f}x (target >= 10x)")
    if ref and "one-at-a-time" in rate:
        print(f"kv-batched / one-at-a-time = {ref / rate['one-at-a-time']:.1f}x (target >= 5x)")
    # Other processes on the machine skew everything (see --threads): say whether any came and went.
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
