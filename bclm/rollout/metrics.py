"""Episode metrics: success, return, length and mistakes (steps where the policy and the expert disagree)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from bclm.data.store import EpisodeRecord
from bclm.tokenizers import flatten_leaves, leaf_arrays


def action_mismatch(space: gym.Space, a: Any, b: Any, tolerance: float = 0.1) -> np.ndarray:
    """(B,) True where two action batches differ: discrete parts exactly, continuous parts by more than
    `tolerance` × the dimension's range (or absolutely, where the range is infinite)."""
    la, lb = leaf_arrays(space, a), leaf_arrays(space, b)
    out = None
    for path, leaf in flatten_leaves(space):
        x, y = np.asarray(la[path]), np.asarray(lb[path])
        batch = len(x)
        if isinstance(leaf, gym.spaces.Box) and np.issubdtype(leaf.dtype, np.floating):
            span = np.where(np.isfinite(leaf.high - leaf.low), leaf.high - leaf.low, 1.0)
            diff = np.abs(x.astype(np.float64) - y) > tolerance * span
        else:
            diff = x != y
        diff = diff.reshape(batch, -1).any(axis=1)
        out = diff if out is None else out | diff
    return out


def cumulative_mistakes(mistakes: list[np.ndarray], failed: list[bool] | None = None,
                        horizon: int | None = None) -> list[float]:
    """Mean over episodes of the number of mistakes made up to step t, for t = 1..horizon.

    An episode that ended in failure (terminated without success) keeps making one mistake per step until
    the horizon: it has fallen off, the seed lecture's cost of 1 for every remaining step. Without this,
    a policy that crashes early would look as if it made few mistakes. Other episodes keep their count.
    """
    if not mistakes:
        return []
    horizon = max(horizon or 0, max(len(m) for m in mistakes))
    failed = failed or [False] * len(mistakes)
    curves = np.zeros((len(mistakes), horizon))
    for e, (m, fell) in enumerate(zip(mistakes, failed)):
        c = np.cumsum(m)
        curves[e, : len(c)] = c
        last = c[-1] if len(c) else 0
        curves[e, len(c):] = last + np.arange(1, horizon - len(c) + 1) if fell else last
    return curves.mean(axis=0).round(4).tolist()


def summarize(episodes: list[EpisodeRecord], mistakes: list[np.ndarray] | None = None,
              horizon: int | None = None) -> dict[str, Any]:
    returns = np.array([ep.episode_return for ep in episodes])
    lengths = np.array([ep.length for ep in episodes])
    report: dict[str, Any] = {
        "episodes": len(episodes),
        "success_rate": float(np.mean([ep.success for ep in episodes])),
        "mean_return": float(returns.mean()),
        "std_return": float(returns.std()),
        "mean_length": float(lengths.mean()),
    }
    if mistakes:
        total = sum(int(m.sum()) for m in mistakes)
        report["mistake_rate"] = total / max(1, int(lengths.sum()))
        report["mistakes_per_episode"] = total / len(mistakes)
        failed = [ep.terminated and not ep.success for ep in episodes]
        report["mistakes_vs_t"] = cumulative_mistakes(mistakes, failed, horizon)
        report["horizon"] = len(report["mistakes_vs_t"])
        report["mistakes_at_horizon"] = report["mistakes_vs_t"][-1]
    return report
