"""Demonstrations multiplied by a symmetry of the task: copies of every episode in a world the expert
treats alike (BabyAI: colours renamed), with the same labels, so the learner sees more worlds per label."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from bclm.data.store import StepArrays

Symmetry = Callable[[Any, np.ndarray, np.random.Generator], Any]


def augmented(steps: StepArrays, symmetry: Symmetry, copies: int, seed: int) -> StepArrays:
    """`steps` followed by `copies` transformed copies of them, each copy's episodes numbered after the last
    (so windows never cross from one copy into the next); actions and provenance are the originals'."""
    episode = steps.columns["episode"]
    span = int(episode.max()) + 1
    rng = np.random.default_rng(seed)
    observations = [steps.observation] + [symmetry(steps.observation, episode, rng) for _ in range(copies)]
    columns = {k: np.concatenate([v] * (copies + 1)) for k, v in steps.columns.items()}
    columns["episode"] = np.concatenate([episode + k * span for k in range(copies + 1)])
    return StepArrays(observation=concat_tree(observations), action=concat_tree([steps.action] * (copies + 1)),
                      expert_action=concat_tree([steps.expert_action] * (copies + 1)), columns=columns)


def concat_tree(batches: list[Any]) -> Any:
    """Batches structured like a space (dicts, tuples, arrays), joined along their first axis."""
    first = batches[0]
    if isinstance(first, dict):
        return {k: concat_tree([b[k] for b in batches]) for k in first}
    if isinstance(first, tuple):
        return tuple(concat_tree(list(parts)) for parts in zip(*batches))
    return np.concatenate(batches)
