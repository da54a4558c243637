"""Episodes as a rollout records them: per-env step buffers, finished into `EpisodeRecord`s, and the result
of a rollout (episodes, mistakes, env steps), merged across processes in single-process order."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np
from tqdm.auto import tqdm

from bclm.data.store import EpisodeRecord
from bclm.envs import TaskSpec, episode_success
from bclm.tokenizers import leaf_arrays


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
        self.mistakes: list[bool] = []
        self.info_success = False


class EpisodeTracker:
    """The episodes of one rollout as they happen: each env's current episode, the quota of episodes it still
    has to finish, and the finished ones. Steps of an env whose quota is spent are not counted or kept."""

    def __init__(self, task: TaskSpec, env_ids: list[int], quota: np.ndarray, *, record: bool,
                 with_mistakes: bool, progress: bool):
        self.task, self.env_ids, self.quota = task, env_ids, quota
        self.record, self.with_mistakes = record, with_mistakes
        self.buffers = [_EpisodeBuffer() for _ in env_ids]
        self.done: list[tuple[int, EpisodeRecord, np.ndarray | None]] = []
        self.env_steps = 0
        self.bar = tqdm(total=int(quota.sum()), desc=f"rollout {task.name}", disable=not progress, leave=False)

    def running(self) -> bool:
        return bool(self.quota.sum() > 0)

    def before_step(self, spaces: tuple[gym.Space, gym.Space], obs: Any, actions: Any, expert_actions: Any,
                    wrong: np.ndarray | None, labeled: np.ndarray, used: np.ndarray) -> None:
        """What each env saw and did at this step, and the expert's verdict on it (`wrong`, if judged)."""
        if wrong is not None:
            for buf, w in zip(self.buffers, wrong):
                buf.mistakes.append(bool(w))
        if self.record:
            _append_step(self.buffers, *spaces, obs, actions, expert_actions)
            for buf, u, lab in zip(self.buffers, used, labeled):
                buf.expert_used.append(bool(u))
                buf.labeled.append(bool(lab))

    def after_step(self, reward: np.ndarray, terminated: np.ndarray, truncated: np.ndarray,
                   info: dict[str, Any]) -> np.ndarray:
        """Rewards in; the episodes that ended are finished (within their env's quota). Returns which ended."""
        self.env_steps += int((self.quota > 0).sum())
        for i, buf in enumerate(self.buffers):
            buf.rewards.append(float(reward[i]))
            buf.info_success |= _info_success(info, i)
        done = np.logical_or(terminated, truncated)
        for i in np.flatnonzero(done):
            if self.quota[i] > 0:
                buf = self.buffers[i]
                ep = _finish(self.task, buf, bool(terminated[i]), bool(truncated[i]), self.record)
                self.done.append((self.env_ids[i], ep, np.array(buf.mistakes, bool) if self.with_mistakes else None))
                self.quota[i] -= 1
                self.bar.update(1)
            self.buffers[i] = _EpisodeBuffer()
        return done

    def result(self) -> RolloutResult:
        """The finished episodes by env, then by completion: the order does not depend on env timing."""
        self.bar.close()
        done = sorted(self.done, key=lambda t: t[0])
        return RolloutResult(episodes=[e for _, e, _ in done], mistakes=[m for _, _, m in done if m is not None],
                             env_steps=self.env_steps, env_of=[i for i, _, _ in done])


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
