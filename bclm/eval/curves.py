"""Learning curves over seeds: mean and 95% confidence interval per method and label budget, a plot with the
interval as a band, and a Markdown table."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bclm.eval.plots import plt, save_figure  # pyplot with the Agg backend (files only)


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


def markdown_table(summary: dict[str, list[dict[str, Any]]], comparisons: list[dict[str, Any]] = ()) -> str:
    """Each method and budget (the exponent k is that of mistakes ∝ t^k), then each paired comparison."""
    rows = ["| method | label budget | expert labels (mean) | success (mean ± 95% CI) | success IQM | mean return | "
            "mistakes per episode | k | seeds |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for method, points in summary.items():
        for p in points:
            s, r = p["success_rate"], p["mean_return"]
            mistakes = f"{p['mistakes_per_episode']['mean']:.1f}" if "mistakes_per_episode" in p else "-"
            k = f"{p['horizon_exponent']:.2f}" if p.get("horizon_exponent") is not None else "-"
            rows.append(f"| {method} | {p['budget']:,} | {p['expert_labels']['mean']:,.0f} | "
                        f"{100 * s['mean']:.0f}% ± {100 * s['ci95']:.0f} | {100 * s['iqm']:.0f}% | "
                        f"{r['mean']:.1f} ± {r['ci95']:.1f} | {mistakes} | {k} | {s['n']} |")
    paired = [c for c in comparisons if c.get("success_rate")]
    if paired:
        rows += ["", "| comparison | label budget | success difference (paired, 95% t-interval) | bootstrap 95% | "
                 "P(improvement) | per seed | seeds |", "|---|---:|---:|---:|---:|---|---:|"]
        for c in paired:
            d = c["success_rate"]
            lo, hi = d["bootstrap95"]
            per_seed = ", ".join(f"{100 * x:+.0f}" for x in d["differences"])
            rows.append(f"| {c['method']} − {c['baseline']} | {c['budget']:,} | {100 * d['mean']:+.0f} ± "
                        f"{100 * d['ci95']:.0f} points | [{100 * lo:+.0f}, {100 * hi:+.0f}] | "
                        f"{d['probability_of_improvement']:.2f} | {per_seed} | {d['n']} |")
    return "\n".join(rows) + "\n"


def plot_differences(comparisons: list[dict[str, Any]], path: str | Path, title: str) -> Path:
    """One line per compared method: its paired success difference to the baseline against the budget, the
    95% t-interval as a band, and zero marked: a band above zero is a difference on the same seeds."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for method in dict.fromkeys(c["method"] for c in comparisons):
        rows = [c for c in comparisons if c["method"] == method and c.get("success_rate")]
        if not rows:
            continue
        x = [c["budget"] for c in rows]
        mean = 100 * np.array([c["success_rate"]["mean"] for c in rows])
        half = 100 * np.array([c["success_rate"]["ci95"] for c in rows])
        ax.plot(x, mean, marker="o", linewidth=2,
                label=f"{method} − {rows[0]['baseline']} ({rows[0]['success_rate']['n']} seeds)")
        ax.fill_between(x, mean - half, mean + half, alpha=0.2)
    ax.axhline(0, color="black", linewidth=1)
    ax.set_xscale("log")
    ax.minorticks_off()
    budgets = sorted({c["budget"] for c in comparisons})
    ax.set_xticks(budgets, [f"{b:,}" for b in budgets])
    ax.set_xlabel("expert-label budget")
    ax.set_ylabel("success difference, points (paired, 95% CI)")
    return save_figure(fig, ax, title, path)
