"""Label efficiency: bclm's BC against a plain PyTorch MLP on the raw observations, at equal expert labels.

For every task, `bclm sweep` cells (method bc, the recipe-free defaults) run over label budgets and seeds;
on exactly the same expert episodes of each cell, an MLP (2 hidden layers of 64, standardised raw
observations, cross-entropy for discrete actions, MSE for continuous ones, 800 batches of 64: the size
of the `imitation` library's BC) is trained and evaluated on the same evaluation seeds with the same
success rule; for continuous actions, so is the linear law alone (ridge least squares to the tanh
pre-image of the action, no training), the part of the expert a linear read-out can hold. Printed: success
per budget (mean ± 95% CI over seeds), labels-to-threshold for bclm and the MLP
(the smallest budget whose mean success reaches `--threshold` × the expert's own success on those
seeds), and their ratio bclm / MLP (<= 1.0: bclm needs no more labels than the MLP).

    .venv/bin/python benchmarks/label_efficiency.py --tasks CartPole-v1 --seeds 3
    .venv/bin/python benchmarks/label_efficiency.py --quick        # seconds, to check the script works
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gymnasium as gym
import numpy as np
import torch

from bclm import config as cfg
from bclm.data.store import TrajectoryStore
from bclm.envs import get_task, load_expert
from bclm.eval.compare import mean_ci
from bclm.rollout import ExpertActor, run_episodes
from bclm.rollout.metrics import summarize
from bclm.sweep import SweepRecipe, expert_episodes, expert_store, run_sweep, within_budget
from bclm.tokenizers import leaf_arrays
from bclm.trainer.data import first_episodes

# Budgets in expert labels, about 1, 2, 4, 8 (and more) demonstrations of each task's expert.
BUDGETS = {
    "CartPole-v1": [500, 1000, 2000, 4000],
    "Acrobot-v1": [100, 200, 400, 800, 1600],
    "MountainCar-v0": [150, 300, 600, 1200, 2400],
    "LunarLander-v3": [1000, 2500, 5000, 10000, 25000],
    "Pendulum-v1": [200, 400, 800, 1600, 3200],
    "LunarLanderContinuous-v3": [1000, 2500, 5000, 10000, 25000],
    "MetaWorld-reach-v3": [150, 300, 600, 1200, 2400],
    "benchmarks.point_reach:PointReach-v0": [250, 500, 1000, 2000],
}


class MLPActor:
    """The reference learner: raw observations in, an action out (argmax, or tanh scaled to the Box)."""

    def __init__(self, net: torch.nn.Module, mean: np.ndarray, std: np.ndarray, obs_space: gym.Space,
                 space: gym.Space):
        self.net, self.mean, self.std, self.obs_space, self.space = net.eval(), mean, std, obs_space, space

    @torch.no_grad()
    def act(self, observations, new_episode=None):
        x = torch.as_tensor((flat_observations(self.obs_space, observations) - self.mean) / self.std)
        out = self.net(x)
        if isinstance(self.space, gym.spaces.Discrete):
            return out.argmax(-1).numpy() + self.space.start
        low, high = self.space.low, self.space.high
        return (low + (torch.tanh(out).numpy() + 1) / 2 * (high - low)).astype(self.space.dtype)


def flat_observations(space: gym.Space, observations) -> np.ndarray:
    """(B, n) float32: a batch of observations (a Dict's leaves side by side) as one vector each."""
    leaves = leaf_arrays(space, observations).values()
    return np.concatenate([np.asarray(v, np.float32).reshape(len(v), -1) for v in leaves], axis=1)


def train_mlp(obs, actions: np.ndarray, obs_space: gym.Space, space: gym.Space, seed: int,
              batches: int = 800) -> MLPActor:
    torch.manual_seed(seed)
    x = flat_observations(obs_space, obs)
    mean, std = x.mean(0), x.std(0) + 1e-6
    discrete = isinstance(space, gym.spaces.Discrete)
    out_dim = int(space.n) if discrete else int(np.prod(space.shape))
    net = torch.nn.Sequential(torch.nn.Linear(x.shape[1], 64), torch.nn.Tanh(), torch.nn.Linear(64, 64),
                              torch.nn.Tanh(), torch.nn.Linear(64, out_dim))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    xt = torch.as_tensor((x - mean) / std)
    if discrete:
        yt = torch.as_tensor(actions.astype(np.int64) - space.start)
    else:   # regress in the tanh's pre-image coordinates: targets scaled to [-1, 1]
        yt = torch.as_tensor(2 * (actions.reshape(len(actions), -1) - space.low) / (space.high - space.low) - 1)
    g = torch.Generator().manual_seed(seed)
    for _ in range(batches):
        idx = torch.randint(0, len(xt), (64,), generator=g)
        pred = net(xt[idx])
        loss = torch.nn.functional.cross_entropy(pred, yt[idx]) if discrete else \
            torch.nn.functional.mse_loss(torch.tanh(pred), yt[idx].float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return MLPActor(net, mean, std, obs_space, space)


class LinearActor:
    """The least-squares linear law: standardised observations to the tanh pre-image of the scaled action."""

    def __init__(self, weights: np.ndarray, mean: np.ndarray, std: np.ndarray, obs_space: gym.Space,
                 space: gym.Space):
        self.weights, self.mean, self.std, self.obs_space, self.space = weights, mean, std, obs_space, space

    def act(self, observations, new_episode=None):
        x = (flat_observations(self.obs_space, observations) - self.mean) / self.std
        out = np.tanh(np.c_[x, np.ones(len(x))] @ self.weights)
        low, high = self.space.low, self.space.high
        return (low + (out + 1) / 2 * (high - low)).reshape(len(x), *self.space.shape).astype(self.space.dtype)


def fit_linear(obs, actions: np.ndarray, obs_space: gym.Space, space: gym.Space, ridge: float = 1e-3) -> LinearActor:
    """Ridge least squares of arctanh(action scaled to [-1, 1]) on the standardised observation. A target at the
    bound is read as 0.95 of it: a saturated command says only that the law is past the bound."""
    x = flat_observations(obs_space, obs)
    mean, std = x.mean(0), x.std(0) + 1e-6
    x1 = np.c_[(x - mean) / std, np.ones(len(x))].astype(np.float64)
    y = 2 * (actions.reshape(len(actions), -1) - space.low) / (space.high - space.low) - 1
    gram = x1.T @ x1
    gram += ridge * np.trace(gram) / len(gram) * np.eye(len(gram))
    return LinearActor(np.linalg.solve(gram, x1.T @ np.arctanh(np.clip(y, -0.95, 0.95))), mean, std, obs_space, space)


def evaluate_actor(task_name: str, actor, episodes: int, seed: int = 10_000) -> float:
    result = run_episodes(get_task(task_name), actor, episodes, num_envs=min(episodes, 10), seed=seed, record=False)
    return summarize(result.episodes)["success_rate"]


def labels_to_threshold(rows: list[dict], target: float) -> int | None:
    hits = [r["budget"] for r in rows if r["success"]["mean"] >= target]
    return min(hits) if hits else None


def run_task(task_name: str, args: argparse.Namespace) -> dict:
    out = Path(args.out) / task_name
    budgets = args.budgets or BUDGETS.get(task_name, [500, 1000, 2000])[: args.max_budgets]
    expert_ref = args.expert or get_task(task_name).expert
    overrides = ["--output-dir", str(out), "--dagger.env", task_name, "--sweep.methods", "bc",
                 *(["--dagger.expert", args.expert] if args.expert else []),
                 "--sweep.budgets", ",".join(map(str, budgets)), "--sweep.seeds", str(args.seeds),
                 "--sweep.jobs", "1", "--loop.progress", "false", "--eval.episodes", str(args.episodes),
                 *args.bclm]
    recipe = cfg.build_config(SweepRecipe, None, overrides)
    t0 = time.perf_counter()
    bclm_rows = run_sweep(recipe)["summary"]["bc"]
    bclm_s = time.perf_counter() - t0
    expert = ExpertActor(load_expert(expert_ref), *_spaces(out), name=expert_ref)
    expert_success = evaluate_actor(task_name, expert, args.episodes)
    obs_space, space = _spaces(out)
    linear = isinstance(space, gym.spaces.Box)         # the linear law is a reference for continuous actions
    mlp_rows, linear_rows, t0 = [], [], time.perf_counter()
    for budget in budgets:
        values, linear_values = [], []
        for seed in range(args.seeds):
            shards, count, _ = within_budget(expert_episodes(recipe, out, seed), budget)
            store = TrajectoryStore(expert_store(out, seed))
            steps = first_episodes(store.arrays(shards), count, store.path)     # the episodes bclm trained on
            actions = np.asarray(steps.action)
            values.append(evaluate_actor(task_name, train_mlp(steps.observation, actions, obs_space, space, seed),
                                         args.episodes))
            if linear:
                linear_values.append(evaluate_actor(task_name, fit_linear(steps.observation, actions, obs_space,
                                                                          space), args.episodes))
        mlp_rows.append({"budget": budget, "success": mean_ci(values)})
        linear_rows.append({"budget": budget, "success": mean_ci(linear_values)} if linear else None)
    mlp_s = time.perf_counter() - t0
    bclm_rows = [{"budget": r["budget"], "success": r["success_rate"]} for r in bclm_rows]
    target = args.threshold * expert_success
    return {"task": task_name, "expert": expert_success, "target": target, "bclm": bclm_rows, "mlp": mlp_rows,
            "linear": linear_rows, "bclm_labels": labels_to_threshold(bclm_rows, target),
            "mlp_labels": labels_to_threshold(mlp_rows, target), "bclm_s": bclm_s, "mlp_s": mlp_s}


def _spaces(out: Path) -> tuple[gym.Space, gym.Space]:
    store = TrajectoryStore(expert_store(out, 0))
    return store.observation_space, store.action_space


def _pct(ci: dict) -> str:
    return f"{100 * ci['mean']:.0f}% ± {100 * ci['ci95']:.0f}"


def print_results(results: list[dict], args: argparse.Namespace) -> None:
    print(f"\nmachine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch "
          f"{torch.__version__}; {args.seeds} seeds, {args.episodes} evaluation episodes (seeds 10000+i)\n")
    print("| task | labels | bclm success | MLP success | linear law alone |\n|---|---:|---:|---:|---:|")
    for r in results:
        for b, m, lin in zip(r["bclm"], r["mlp"], r["linear"]):
            print(f"| {r['task']} | {b['budget']:,} | {_pct(b['success'])} | {_pct(m['success'])} | "
                  f"{_pct(lin['success']) if lin else '-'} |")
    print(f"\n| task | expert success | threshold ({args.threshold:.0%} of expert) | bclm labels-to-threshold | "
          "MLP labels-to-threshold | ratio bclm / MLP | bclm time | MLP time |\n" + "|---" + "|---:" * 7 + "|")
    for r in results:
        b, m = r["bclm_labels"], r["mlp_labels"]
        ratio = f"{b / m:.2f}" if b and m else ("> max budget" if not b else "bclm only")
        print(f"| {r['task']} | {r['expert']:.0%} | {r['target']:.0%} | {b or 'not reached'} | {m or 'not reached'} | "
              f"{ratio} | {r['bclm_s']:.0f} s | {r['mlp_s']:.0f} s |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tasks", nargs="+", default=["CartPole-v1"], help=f"Tasks; budgets known for {list(BUDGETS)}.")
    p.add_argument("--expert", default="", help="Expert of every task given (default: each task's own), e.g. "
                   "benchmarks.point_reach:expert for benchmarks.point_reach:PointReach-v0.")
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--episodes", type=int, default=20, help="Evaluation episodes per cell.")
    p.add_argument("--threshold", type=float, default=0.9, help="Fraction of the expert's success to reach.")
    p.add_argument("--max-budgets", type=int, default=10, help="Use only the first N budgets of each task.")
    p.add_argument("--budgets", type=int, nargs="+", default=[],
                   help="These label budgets instead of the task's list (labels-to-threshold is then among them).")
    p.add_argument("--out", default="runs/label_efficiency", help="Sweep directory (cells resume from it).")
    p.add_argument("--bclm", nargs=argparse.REMAINDER, default=[], help="Overrides for bclm's cells (--a.b v ...).")
    p.add_argument("--quick", action="store_true", help="Tiny settings, only to check that the script works.")
    args = p.parse_args()
    if args.quick:
        args.seeds, args.episodes, args.max_budgets = 1, 2, 1
        args.bclm = ["--model.size", "tiny", "--train.max_steps", "5", *args.bclm]
        args.out = str(Path(args.out) / "quick")
    print_results([run_task(t, args) for t in args.tasks], args)


if __name__ == "__main__":
    main()
