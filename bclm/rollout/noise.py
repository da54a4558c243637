"""Noise injection during demonstrations (DART, Laskey et al. 2017): the expert's action is perturbed
before it is executed, and its clean action is the label. The demonstrations then visit states a little off
the expert's own path, with the expert's recovery from each, without an interactive expert.

Noise models (`--noise KIND:LEVEL`):
- `eps:P` — with probability P per step and env, a uniformly random action is executed instead (any action
  space): ε-random for discrete actions, which is also the β-mixture with a random policy (β = P);
- `gauss:S` — Gaussian noise of standard deviation S × half the Box's range on every continuous action
  dimension, clipped to the bounds (Box actions, or the Box leaves of a Dict).

gymnasium's wrappers perturb what the env executes but do not keep the clean action as a label, hence
this actor.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate

from bclm.errors import BCLMError
from bclm.rollout.expert import ExpertActor, ExpertLabeledActor
from bclm.rollout.metrics import action_mismatch
from bclm.tokenizers import assemble, flatten_leaves, leaf_arrays

KINDS = ("eps", "gauss")


@dataclass(frozen=True)
class Noise:
    kind: str = ""          # "" = none (or, with `fit`, chosen by the action space)
    level: float = 0.0
    fit: bool = False       # the level is fitted to the learner's error (DAgger rounds, `FittedNoiseActor`)

    @classmethod
    def parse(cls, text: str, name: str = "--noise") -> Noise:
        """'' (none), 'eps:P' with 0 <= P <= 1, 'gauss:S' with S >= 0, or 'eps:fit', 'gauss:fit', 'fit'
        (the level fitted to a learner's error); `name` is the flag or field."""
        if not text:
            return cls()
        kind, _, level = text.partition(":")
        if text == "fit" or (kind in KINDS and level == "fit"):
            return cls("" if text == "fit" else kind, 0.0, fit=True)
        try:
            value = float(level)
        except ValueError:
            value = float("nan")
        if kind not in KINDS or not np.isfinite(value) or value < 0 or (kind == "eps" and value > 1):
            raise BCLMError(f"{name} {text!r}: expected eps:P (0 <= P <= 1, a random action with probability P), "
                            "gauss:S (S >= 0, Gaussian noise of S times half the action range), or eps:fit, "
                            "gauss:fit or fit (the level fitted to the learner's error)")
        return cls(kind, value)

    def __bool__(self) -> bool:
        return self.fit or (bool(self.kind) and self.level > 0)

    def __str__(self) -> str:
        if self.fit:
            return f"{self.kind}:fit" if self.kind else "fit"
        return f"{self.kind}:{self.level:g}" if self else ""

    def for_space(self, action_space: gym.Space) -> Noise:
        """A fitted noise of no kind takes Gaussian noise for continuous actions, else ε-random."""
        if self.kind:
            return self
        return dataclasses.replace(self, kind="gauss" if _boxes(action_space) else "eps")

    def check(self, action_space: gym.Space) -> None:
        boxes = _boxes(action_space).values()
        if self.kind == "gauss" and not boxes:
            raise BCLMError(f"noise {self}: Gaussian noise needs continuous (Box) actions, and this task's "
                            f"actions are {action_space}: use eps:P")
        if self.kind == "gauss" and not all(np.isfinite(b.low).all() and np.isfinite(b.high).all() for b in boxes):
            raise BCLMError(f"noise {self}: Gaussian noise is scaled by the action bounds, and {action_space} "
                            "has infinite ones: use eps:P")


NO_NOISE = Noise()


def _boxes(space: gym.Space) -> dict[str, gym.spaces.Box]:
    return {path: leaf for path, leaf in flatten_leaves(space) if isinstance(leaf, gym.spaces.Box)}


class NoisyExpertActor(ExpertLabeledActor):
    """Executes the expert's action perturbed by `noise`; serves the clean action as the step's label.
    `last_expert_used` is False on the steps whose executed action was perturbed (provenance)."""

    def __init__(self, expert: ExpertActor, noise: Noise, seed: int, env_ids: list[int]):
        noise.check(expert.action_space)
        self.expert, self.noise = expert, noise
        self.action_space = expert.action_space
        # A generator per env, seeded by the env's index: the same draws whichever process steps that env.
        self.rngs = [np.random.default_rng([seed, i]) for i in env_ids]
        self.spaces = [copy.deepcopy(self.action_space) for _ in env_ids]
        for space, i in zip(self.spaces, env_ids):
            space.seed(seed * 1_000_003 + i)
        self.last_expert: Any = None
        self.last_labeled: np.ndarray | None = None
        self.last_expert_used: np.ndarray | None = None

    def act(self, observations: Any, new_episode: np.ndarray) -> Any:
        clean = self.expert.act(observations, new_episode)
        self.last_expert, self.last_labeled = clean, self.expert.last_labeled
        if self.noise.kind == "eps":
            executed, perturbed = self._random(clean)
        else:
            executed, perturbed = self._gauss(clean)
        self.last_expert_used = ~perturbed
        return executed

    def _random(self, clean: Any) -> tuple[Any, np.ndarray]:
        perturbed = np.array([rng.random() < self.noise.level for rng in self.rngs])
        batch = len(self.rngs)
        items = [space.sample() if p else a for space, p, a in
                 zip(self.spaces, perturbed, iterate(batch_space(self.action_space, batch), clean))]
        return concatenate(self.action_space, items, create_empty_array(self.action_space, batch)), perturbed

    def _gauss(self, clean: Any) -> tuple[Any, np.ndarray]:
        if self.noise.level == 0:
            return clean, np.zeros(len(self.rngs), dtype=bool)
        leaves = leaf_arrays(self.action_space, clean)
        for path, box in _boxes(self.action_space).items():
            noise = np.stack([rng.normal(size=box.shape) for rng in self.rngs]) * self.noise.level
            leaves[path] = np.clip(leaves[path] + noise * (box.high - box.low) / 2, box.low,
                                   box.high).astype(box.dtype)
        return assemble(self.action_space, leaves), np.ones(len(self.rngs), dtype=bool)


class FittedNoiseActor(NoisyExpertActor):
    """DART's fitted level: the learner follows the noisy expert in lockstep (its session is told every
    executed action) and its error against the expert's clean labels on these states, averaged over the
    round so far, is the noise level of the next step. DART sets the noise to the learner's error on the
    supervisor's distribution, so the demonstrations show the deviations the learner will make.

    The error is the learner's disagreement rate for `eps`, and for `gauss` the root-mean-square difference
    in units of half the action range over every Box dimension."""

    def __init__(self, expert: ExpertActor, noise: Noise, seed: int, env_ids: list[int], session: Any):
        super().__init__(expert, dataclasses.replace(noise.for_space(expert.action_space), level=0.0), seed,
                         env_ids)
        self.session = session
        self.error_sum, self.count = 0.0, 0

    @property
    def level(self) -> float:
        return self.noise.level

    def act(self, observations: Any, new_episode: np.ndarray) -> Any:
        learner = self.session.act(observations, new_episode)
        executed = super().act(observations, new_episode)
        labeled = self.last_labeled if self.last_labeled is not None else np.ones(len(self.rngs), bool)
        self.error_sum += float(self._errors(learner, self.last_expert)[labeled].sum())
        self.count += int(labeled.sum())
        if self.count:
            mean = self.error_sum / self.count
            level = mean if self.noise.kind == "eps" else float(np.sqrt(mean))
            self.noise = dataclasses.replace(self.noise, level=min(level, 1.0))
        self.session.record_executed(executed)
        return executed

    def _errors(self, learner: Any, clean: Any) -> np.ndarray:
        """Per env: 1.0 where the learner's action differs (eps), or its mean squared error in half ranges."""
        if self.noise.kind == "eps":
            return action_mismatch(self.action_space, learner, clean, tolerance=0.0).astype(float)
        ours, theirs = leaf_arrays(self.action_space, learner), leaf_arrays(self.action_space, clean)
        squares = [(((ours[p] - theirs[p]) / ((b.high - b.low) / 2)) ** 2).reshape(len(self.rngs), -1)
                   for p, b in _boxes(self.action_space).items()]
        return np.concatenate(squares, axis=1).mean(axis=1)
