"""The expert as an actor: a per-observation callable applied to each env of the batch, its actions checked,
and the base of actors that act on the expert's answer (its labels served without a second call)."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import concatenate, create_empty_array, iterate

from bclm.errors import BCLMError
from bclm.tokenizers import leaf_arrays


class Actor(Protocol):
    def act(self, observations: Any, new_episode: np.ndarray) -> Any: ...


class ExpertActor:
    """Applies a per-observation expert to each env of the batch and checks every action it returns.

    With `on_fault="raise"` (collecting demonstrations) an expert that raises or returns an action outside
    the space stops the run with an error naming it. With `"count"` (labeling a learner's states, where
    experts meet states they were never written for) the fault is counted, the state is left unlabeled
    (`last_labeled[i]` is False, the returned action is a placeholder) and the run goes on.
    """

    def __init__(self, expert: Callable[[Any], Any], observation_space: gym.Space, action_space: gym.Space,
                 name: str = "expert", on_fault: str = "raise"):
        self.expert = expert
        self.observation_space = observation_space
        self.action_space = action_space
        self.name = name
        self.on_fault = on_fault
        self.faults = 0
        self.last_fault = ""
        self.last_labeled: np.ndarray | None = None
        self._placeholder = None
        if hasattr(expert, "bind"):          # experts that need the spaces (the terminal labeler)
            expert.bind(observation_space, action_space)
        # A stateful expert is a class: one instance per env, reset with that env at each episode start and
        # told every executed action (lockstep), e.g. the BabyAI bot.
        self.stateful = isinstance(expert, type) and getattr(expert, "stateful", False)
        self.instances: list[Any] = []
        self.envs: list[gym.Env] | None = None

    def attach(self, vector_env: gym.vector.VectorEnv) -> None:
        self.envs = getattr(vector_env, "envs", None)

    def observe(self, executed: Any) -> None:
        if self.stateful:
            items = iterate(gym.vector.utils.batch_space(self.action_space, len(self.instances)), executed)
            for inst, action in zip(self.instances, items):
                inst.observe(action)

    def act(self, observations: Any, new_episode: np.ndarray | None = None, rows: np.ndarray | None = None) -> Any:
        """Labels for the batch, or only for `rows` (a bool mask; the others get a placeholder and count as
        unlabeled). A stateful expert is asked on every row all the same: it must follow each step."""
        batch = _batch_len(self.observation_space, observations)
        batch_space = gym.vector.utils.batch_space(self.observation_space, batch)
        wanted = np.ones(batch, bool) if rows is None else np.asarray(rows, bool)
        items, labeled = [], []
        if self.stateful:
            self._reset_instances(batch, new_episode)
        for i, obs in enumerate(iterate(batch_space, observations)):
            if wanted[i] or self.stateful:
                action, ok = self._label(obs, self.instances[i] if self.stateful else self.expert)
            else:
                action, ok = self._placeholder_action(), False
            items.append(action)
            labeled.append(ok and wanted[i])
        self.last_labeled = np.array(labeled, dtype=bool)
        out = create_empty_array(self.action_space, len(items))
        return concatenate(self.action_space, items, out)

    def _reset_instances(self, batch: int, new_episode: np.ndarray | None) -> None:
        if self.envs is None:
            raise BCLMError(f"expert {self.name!r} is stateful (it reads each env's state): it needs a synchronous "
                            "vector env; leave eval.async_envs / dagger.async_envs off")
        if not self.instances:
            self.instances = [self.expert() for _ in range(batch)]
            new_episode = np.ones(batch, bool)
        for i in np.flatnonzero(new_episode if new_episode is not None else np.zeros(batch, bool)):
            self.instances[i].reset(self.envs[i])

    def _label(self, obs: Any, expert: Callable[[Any], Any] | None = None) -> tuple[Any, bool]:
        try:
            action = _as_space_value(self.action_space, (expert or self.expert)(obs))
            if not self.action_space.contains(action):
                raise BCLMError(f"expert {self.name!r} returned {action!r}, outside the action space "
                                f"{self.action_space}")
            return action, True
        except Exception as e:   # any expert bug on some state: an error or a counted fault, as configured
            if self.on_fault == "raise":
                raise e if isinstance(e, BCLMError) else BCLMError(
                    f"expert {self.name!r} raised {type(e).__name__}: {e}") from e
            self.faults += 1
            self.last_fault = f"{type(e).__name__}: {e}"
            return self._placeholder_action(), False

    def _placeholder_action(self) -> Any:
        if self._placeholder is None:     # the same one every run, so that resumed data equals a fresh run's
            space = copy.deepcopy(self.action_space)
            space.seed(0)
            self._placeholder = space.sample()
        return self._placeholder


def _as_space_value(space: gym.Space, action: Any) -> Any:
    """Experts may return Python ints/floats/lists; give them the space's dtype so `contains` is fair."""
    if isinstance(space, gym.spaces.Discrete):
        return np.int64(action) if np.ndim(action) == 0 and float(action).is_integer() else action
    if isinstance(space, gym.spaces.Box | gym.spaces.MultiDiscrete | gym.spaces.MultiBinary):
        arr = np.asarray(action)
        if arr.shape == space.shape and np.can_cast(arr.dtype, space.dtype, "same_kind"):
            return arr.astype(space.dtype)
        return arr
    return action


def _batch_len(space: gym.Space, batch: Any) -> int:
    return len(next(iter(leaf_arrays(space, batch).values())))


class LastLabels:
    """The labels an acting actor (a β-mixture, an intervention, a noisy expert) gave at its last step,
    served to `run_episodes` as its expert, so the expert is not called twice."""

    def __init__(self, actor: Any):
        self.actor = actor

    @property
    def last_labeled(self) -> np.ndarray | None:
        return self.actor.last_labeled

    def act(self, observations: Any, new_episode: np.ndarray | None = None) -> Any:
        return self.actor.last_expert


class ExpertLabeledActor:
    """Base of actors that query `self.expert` (an ExpertActor) at every step and act on its answer (a
    β-mixture, a noisy expert): its labels are served to `run_episodes` without a second call, and a stateful
    expert is kept in lockstep with the envs and the executed actions."""

    expert: ExpertActor

    def labels(self) -> LastLabels:
        return LastLabels(self)

    def attach(self, vector_env: Any) -> None:
        self.expert.attach(vector_env)

    def observe(self, executed: Any) -> None:
        self.expert.observe(executed)
