"""Mistakes-vs-horizon plots: the seed lecture's O(εH²) vs O(εH) made visible."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")          # files only; no display needed
import matplotlib.pyplot as plt


def plot_mistakes(curves: list[dict[str, Any]], path: str | Path, title: str = "") -> Path:
    """One line per agent: mean cumulative mistakes up to step t. Each curve dict holds `name`,
    `mistakes_vs_t` and `expert_labels` (shown in the legend, since equal labels is the fair comparison)."""
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    for curve in curves:
        ys = curve["mistakes_vs_t"]
        label = f"{curve['name']} ({curve['expert_labels']:,} expert labels)"
        ax.plot(range(1, len(ys) + 1), ys, label=label, linewidth=2)
    ax.set_xlabel("time step t")
    ax.set_ylabel("mistakes up to t (mean over episodes;\na failed episode errs every remaining step)")
    return save_figure(fig, ax, title or "Mistakes vs horizon", path)


def save_figure(fig: plt.Figure, ax: plt.Axes, title: str, path: str | Path) -> Path:
    """Title, grid and legend on `ax`, then `fig` written to `path` and closed."""
    ax.set_title(title)
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path)
    plt.close(fig)
    return path
