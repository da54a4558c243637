"""Scripted rollouts over gymnasium vector envs: one loop serves expert collection and policy evaluation."""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import gymnasium as gym
import numpy as np
from gymnasium.vector.utils import concatenate, create_empty_array, iterate
from tqdm.auto import tqdm

from bclm.data.store import EpisodeRecord
from bclm.envs import TaskSpec, episode_success, make_vector_env
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


@dataclass
class RolloutResult:
    episodes: list[EpisodeRecord]
    mistakes: list[np.ndarray] = field(default_factory=list)   # per episode, (T,) bool; empty without expert
    env_steps: int = 0
    env_of: list[int] = field(default_factory=list)            # per episode, the env (seed offset) it ran in


def merge_results(parts: Sequence[RolloutResult]) -> RolloutResult:
    """Rollouts of disjoint envs (one part per process) as one, in the order one process would give:
    by env, then by completion within it (each part already holds its envs' episodes in that order, and
    the sort is stable)."""
    order = sorted(((env, p, i) for p, part in enumerate(parts) for i, env in enumerate(part.env_of)),
                   key=lambda t: t[0])
    with_mistakes = all(len(part.mistakes) == len(part.episodes) for part in parts)
    return RolloutResult(episodes=[parts[p].episodes[i] for _, p, i in order],
                         mistakes=[parts[p].mistakes[i] for _, p, i in order] if with_mistakes else [],
                         env_steps=sum(part.env_steps for part in parts), env_of=[e for e, _, _ in order])


class _EpisodeBuffer:
    def __init__(self) -> None:
        self.obs: list[dict[str, np.ndarray]] = []
        self.act: list[dict[str, np.ndarray]] = []
        self.expert: list[dict[str, np.ndarray]] = []
        self.rewards: list[float] = []
        self.expert_used: list[bool] = []
        self.labeled: list[bool] = []
        self.info_success = False


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


def run_episodes(task: TaskSpec, actor: Actor, episodes: int, *, num_envs: int = 8, seed: int = 0,
                 expert: ExpertActor | None = None,
                 differ: Callable[[Any, Any], np.ndarray] | None = None,
                 record: bool = True, progress: bool = False, asynchronous: bool = False,
                 env_ids: Sequence[int] | None = None) -> RolloutResult:
    """Run exactly `episodes` episodes (env i runs its share; seeds seed+i) and collect them.

    With an `expert`, its action is queried on every visited state; `differ(policy_actions,
    expert_actions)` marks the mistakes (the seed lecture's cost c(s, a)). `asynchronous` steps the envs
    in worker processes (results are identical; stateful experts such as the BabyAI bot refuse it).
    `env_ids` runs only those of the `num_envs` envs (seeds and episode quotas as in the full run): the
    share of one process of several; `merge_results` puts the shares back together.
    """
    if episodes < 1:
        raise BCLMError(f"episodes must be at least 1, got {episodes}")
    total = max(1, min(num_envs, episodes))
    ids = list(range(total)) if env_ids is None else [i for i in env_ids if i < total]
    if not ids:                                  # more processes than envs: this one has nothing to run
        return RolloutResult(episodes=[])
    quota = np.full(total, episodes // total)
    quota[: episodes % total] += 1
    quota = quota[ids]
    num_envs = len(ids)
    env = make_vector_env(task, num_envs, asynchronous)
    obs_space, act_space = env.single_observation_space, env.single_action_space
    for party in (actor, expert):
        if hasattr(party, "attach"):
            party.attach(env)
    try:
        obs, _ = env.reset(seed=[seed + i for i in ids])
        buffers = [_EpisodeBuffer() for _ in range(num_envs)]
        done_eps: list[tuple[int, EpisodeRecord, np.ndarray | None]] = []
        mistakes_buf: list[list[bool]] = [[] for _ in range(num_envs)]
        new_episode = np.ones(num_envs, dtype=bool)
        steps = 0
        bar = tqdm(total=episodes, desc=f"rollout {task.name}", disable=not progress, leave=False)
        while quota.sum() > 0:
            actions = actor.act(obs, new_episode)
            expert_actions = expert.act(obs, new_episode) if expert is not None else None
            labeled = getattr(expert, "last_labeled", None)
            if expert_actions is not None and differ is not None:
                wrong = differ(actions, expert_actions)
                if labeled is not None:
                    wrong = wrong & labeled          # no verdict where the expert gave no label
                for i in range(num_envs):
                    mistakes_buf[i].append(bool(wrong[i]))
            if record:
                _append_step(buffers, obs_space, act_space, obs, actions, expert_actions)
                # A β-mixture says per env whether the expert's action was executed; an expert always is.
                used = getattr(actor, "last_expert_used", None)
                for i, buf in enumerate(buffers):
                    buf.expert_used.append(bool(used[i]) if used is not None else isinstance(actor, ExpertActor))
                    buf.labeled.append(bool(labeled[i]) if labeled is not None else True)
            obs, reward, terminated, truncated, info = env.step(actions)
            for party in (actor, expert):
                if hasattr(party, "observe"):
                    party.observe(actions)
            steps += int((quota > 0).sum())
            for i in range(num_envs):
                buffers[i].rewards.append(float(reward[i]))
                buffers[i].info_success |= _info_success(info, i)
            done = np.logical_or(terminated, truncated)
            for i in np.flatnonzero(done):
                if quota[i] > 0:
                    ep = _finish(task, buffers[i], bool(terminated[i]), bool(truncated[i]), record)
                    done_eps.append((ids[i], ep, np.array(mistakes_buf[i], bool) if expert is not None else None))
                    quota[i] -= 1
                    bar.update(1)
                buffers[i] = _EpisodeBuffer()
                mistakes_buf[i] = []
            new_episode = done
        bar.close()
    finally:
        env.close()
    # Order episodes by env then by completion so results do not depend on env timing.
    done_eps.sort(key=lambda t: t[0])
    return RolloutResult(
        episodes=[e for _, e, _ in done_eps],
        mistakes=[m for _, _, m in done_eps if m is not None],
        env_steps=steps,
        env_of=[i for i, _, _ in done_eps],
    )


def _append_step(buffers: list[_EpisodeBuffer], obs_space: gym.Space, act_space: gym.Space, obs: Any,
                 actions: Any, expert_actions: Any) -> None:
    obs_leaves = leaf_arrays(obs_space, obs)
    act_leaves = leaf_arrays(act_space, actions)
    exp_leaves = leaf_arrays(act_space, expert_actions) if expert_actions is not None else None
    for i, buf in enumerate(buffers):
        buf.obs.append({k: v[i:i + 1] for k, v in obs_leaves.items()})
        buf.act.append({k: v[i:i + 1] for k, v in act_leaves.items()})
        if exp_leaves is not None:
            buf.expert.append({k: v[i:i + 1] for k, v in exp_leaves.items()})


def _info_success(info: dict[str, Any], i: int) -> bool:
    """`info["success"]` of env i's last step: in `final_info` when the episode just ended (SAME_STEP)."""
    for source in (info.get("final_info", {}), info):
        present = "success" in source and source.get("_success", np.ones(i + 1, bool))[i]
        if present and bool(source["success"][i]):
            return True
    return False


def _stack(steps: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([s[k] for s in steps]) for k in steps[0]} if steps else {}


def _finish(task: TaskSpec, buf: _EpisodeBuffer, terminated: bool, truncated: bool,
            record: bool) -> EpisodeRecord:
    rewards = np.asarray(buf.rewards, dtype=np.float32)
    success = episode_success(task, float(rewards.sum(dtype=np.float64)), terminated, buf.info_success)
    return EpisodeRecord(
        observation=_stack(buf.obs) if record else {},
        action=_stack(buf.act) if record else {},
        expert_action=_stack(buf.expert) if record and buf.expert else None,
        reward=rewards, terminated=terminated, truncated=truncated, task=task.name, success=success,
        expert_used=np.asarray(buf.expert_used, bool) if record else None,
        labeled=np.asarray(buf.labeled, bool) if record else None,
    )

