"""Learning curves over seeds: mean and 95% confidence interval per method and label budget, a plot with the
interval as a band, and a Markdown table."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from bclm.eval.plots import plt, save_figure  # pyplot with the Agg backend (files only)

# Two-sided 97.5% quantiles of Student's t for 1..30 degrees of freedom (then the normal's 1.96): a table,
# so that a confidence interval does not pull in scipy.
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160, 2.145, 2.131,
         2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def mean_ci(values: list[float]) -> dict[str, float]:
    """Mean and half-width of its 95% t-interval over independent seeds (0 for a single value)."""
    x = np.asarray(values, dtype=np.float64)
    n = len(x)
    half = 0.0 if n < 2 else (_T975[n - 2] if n - 1 <= len(_T975) else 1.96) * x.std(ddof=1) / math.sqrt(n)
    return {"mean": float(x.mean()), "ci95": float(half), "n": n}


def plot_curves(summary: dict[str, list[dict[str, Any]]], path: str | Path, title: str, key: str = "success_rate",
                ylabel: str = "success rate") -> Path:
    """One line per method: `key` (mean over seeds) against expert labels, the 95% interval as a band."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method, points in summary.items():
        pts = [p for p in points if key in p]
        if not pts:
            continue
        x = [p["expert_labels"]["mean"] for p in pts]
        mean = np.array([p[key]["mean"] for p in pts])
        half = np.array([p[key]["ci95"] for p in pts])
        n = min(p[key]["n"] for p in pts)
        ax.plot(x, mean, marker="o", linewidth=2, label=f"{method} ({n} seeds)")
        low, high = mean - half, mean + half
        if key == "success_rate":                 # a rate's interval stops at 0 and 1
            low, high = low.clip(0, 1), high.clip(0, 1)
        ax.fill_between(x, low, high, alpha=0.2)
    ax.set_xscale("log")
    budgets = sorted({p["budget"] for points in summary.values() for p in points})
    ax.set_xticks(budgets, [f"{b:,}" for b in budgets])
    ax.minorticks_off()
    ax.set_xlabel("expert labels")
    ax.set_ylabel(f"{ylabel} (mean, 95% CI over seeds)")
    return save_figure(fig, ax, title, path)


def markdown_table(summary: dict[str, list[dict[str, Any]]]) -> str:
    rows = ["| method | label budget | expert labels (mean) | success (mean ± 95% CI) | mean return | mistakes "
            "per episode | seeds |", "|---|---:|---:|---:|---:|---:|---:|"]
    for method, points in summary.items():
        for p in points:
            s, r = p["success_rate"], p["mean_return"]
            mistakes = f"{p['mistakes_per_episode']['mean']:.1f}" if "mistakes_per_episode" in p else "-"
            rows.append(f"| {method} | {p['budget']:,} | {p['expert_labels']['mean']:,.0f} | "
                        f"{100 * s['mean']:.0f}% ± {100 * s['ci95']:.0f} | {r['mean']:.1f} ± {r['ci95']:.1f} | "
                        f"{mistakes} | {s['n']} |")
    return "\n".join(rows) + "\n"
