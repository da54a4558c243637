"""Budgeted DAgger: ask the expert only where the learner is unsure, with the threshold set to meet a label
budget (ThriftyDAgger), or let the expert drive from there until the learner is sure again (SafeDAgger,
LazyDAgger). The learner's uncertainty is read from its own action-token distribution."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from bclm.errors import BCLMError

MODES = ("query", "takeover")
METRICS = ("entropy", "margin")


@dataclass
class Gate:
    """Decides per step and env whether the expert labels (query) or takes control (takeover).

    The expert is asked where the uncertainty is at or above the (1 - f) quantile of those seen so far in the
    round (the most recent `memory` of them). f is the budget b plus the labels the round is behind (minus
    those it is ahead), spread over the next `catch_up` steps (fewer early in a round): the label fraction
    stays on budget whatever the scale of the uncertainty, and when the learner is unsure for long stretches
    its asks move later, not beyond it.

    In takeover mode the expert keeps control until the uncertainty falls below a lower quantile, at
    `release` times the entry level: hysteresis, so control does not flap from step to step. Each entry then
    buys several steps of control, so entries are made rarer by the ratio of steps asked to entries seen so
    far; far ahead of the budget (f = 0) the expert hands back at once."""

    mode: str
    budget: float
    metric: str = "entropy"
    release: float = 0.5
    catch_up: int = 50
    memory: int = 4096        # uncertainties kept for the quantile (the most recent)
    seen: list[np.ndarray] = field(default_factory=list)
    steps: int = 0
    asked: int = 0
    entered: int = 0
    in_control: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise BCLMError(f"dagger.gate {self.mode!r}: expected one of {', '.join(MODES)} (or '' for none)")
        if self.metric not in METRICS:
            raise BCLMError(f"dagger.gate_metric {self.metric!r}: expected one of {', '.join(METRICS)}")
        if not 0 < self.budget <= 1:
            raise BCLMError(f"dagger.gate_budget {self.budget}: expected a fraction of the round's steps in (0, 1]")
        if not 0 <= self.release <= 1:
            raise BCLMError(f"dagger.gate_release {self.release}: expected a fraction in [0, 1]")

    def uncertainty(self, entropy: np.ndarray, margin: np.ndarray) -> np.ndarray:
        """Higher is less sure: the summed entropy of the action tokens, or 1 - their smallest top-2 margin."""
        return entropy if self.metric == "entropy" else 1.0 - margin

    def decide(self, unsure: np.ndarray, new_episode: np.ndarray) -> np.ndarray:
        """(B,) bool: the envs whose expert labels (or drives) this step."""
        if self.in_control is None:
            self.in_control = np.zeros(len(unsure), bool)
        self.in_control &= ~np.asarray(new_episode, bool)
        self.seen.append(np.asarray(unsure, np.float64))
        while sum(len(x) for x in self.seen) - len(self.seen[0]) >= self.memory:
            self.seen.pop(0)          # the quantile follows the learner's recent steps, at a bounded cost
        seen = np.concatenate(self.seen)
        behind = self.budget * self.steps - self.asked
        # The window grows with the round (a tenth of its steps so far), so a short round is held to its
        # budget within about 10% too.
        window = min(self.catch_up, max(1.0, self.steps / (10 * len(unsure))))
        f = float(np.clip(self.budget + behind / (window * len(unsure)), 0.0, 1.0))
        steps_per_entry = self.asked / self.entered if self.entered else 1.0
        level = 1.0 - f / steps_per_entry
        enter = unsure >= np.quantile(seen, level) if f > 0 else np.zeros(len(unsure), bool)
        ask = enter
        if self.mode == "takeover":
            stay = self.in_control & (unsure >= np.quantile(seen, level * self.release)) & (f > 0)
            ask = enter | stay
            self.in_control = ask.copy()
        self.steps += len(unsure)
        self.asked += int(ask.sum())
        self.entered += int(enter.sum())
        return ask
