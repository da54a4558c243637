"""Scripted rollouts over gymnasium vector envs: one loop serves expert collection, policy evaluation and
DAgger rounds. Who acts (an actor from `bclm.rollout.actors`, the expert, a noisy expert) is the caller's."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from bclm.envs import TaskSpec, make_vector_env
from bclm.errors import BCLMError
from bclm.rollout.episodes import EpisodeTracker, RolloutResult
from bclm.rollout.expert import Actor, ExpertActor
from bclm.rollout.video import RENDER_MODE, EpisodeFilm


def run_episodes(task: TaskSpec, actor: Actor, episodes: int, *, num_envs: int = 8, seed: int = 0,
                 expert: ExpertActor | None = None,
                 differ: Callable[[Any, Any], np.ndarray] | None = None,
                 record: bool = True, progress: bool = False, asynchronous: bool = False, env_workers: int = 0,
                 env_ids: Sequence[int] | None = None, film: EpisodeFilm | None = None) -> RolloutResult:
    """Run exactly `episodes` episodes (env i runs its share; seeds seed+i) and collect them.

    With an `expert`, its action is queried on every visited state; `differ(policy_actions,
    expert_actions)` marks the mistakes (the seed lecture's cost c(s, a)). `asynchronous` steps the envs
    in `env_workers` processes (0 = one per env; results are identical; stateful experts such as the BabyAI
    bot refuse it).
    `env_ids` runs only those of the `num_envs` envs (seeds and episode quotas as in the full run): the
    share of one process of several; `merge_results` puts the shares back together. `film` records env 0's
    first episodes as frames (the envs are made with rgb_array rendering).
    """
    ids, quota = env_quotas(episodes, num_envs, env_ids)
    if not ids:                                  # more processes than envs: this one has nothing to run
        return RolloutResult(episodes=[])
    if film is not None:
        task = dataclasses.replace(task, env_kwargs={**task.env_kwargs, "render_mode": RENDER_MODE})
    env = make_vector_env(task, len(ids), asynchronous, env_workers)
    spaces = (env.single_observation_space, env.single_action_space)
    parties = [p for p in (actor, expert) if p is not None]
    for party in parties:
        if hasattr(party, "attach"):
            party.attach(env)
    tracker = EpisodeTracker(task, ids, quota, record=record, with_mistakes=expert is not None, progress=progress)
    try:
        obs, _ = env.reset(seed=[seed + i for i in ids])
        if film is not None:
            film.attach(env, int(quota[0]))
            film.capture(False)
        new_episode = np.ones(len(ids), dtype=bool)
        while tracker.running():
            actions = actor.act(obs, new_episode)
            expert_actions = expert.act(obs, new_episode) if expert is not None else None
            tracker.before_step(spaces, obs, actions, expert_actions,
                                *_step_flags(actor, expert, actions, expert_actions, differ, len(ids)))
            obs, reward, terminated, truncated, info = env.step(actions)
            for party in parties:
                if hasattr(party, "observe"):
                    party.observe(actions)
            new_episode = tracker.after_step(reward, terminated, truncated, info)
            if film is not None:
                film.capture(bool(new_episode[0]))
    finally:
        env.close()
    return tracker.result()


def env_quotas(episodes: int, num_envs: int, env_ids: Sequence[int] | None) -> tuple[list[int], np.ndarray]:
    """The envs this process steps (all, or its share `env_ids`) and how many episodes each must finish:
    `episodes` spread over min(num_envs, episodes) envs, the first ones taking the remainder."""
    if episodes < 1:
        raise BCLMError(f"episodes must be at least 1, got {episodes}")
    total = max(1, min(num_envs, episodes))
    ids = list(range(total)) if env_ids is None else [i for i in env_ids if i < total]
    quota = np.full(total, episodes // total)
    quota[: episodes % total] += 1
    return ids, quota[ids]


def _step_flags(actor: Actor, expert: ExpertActor | None, actions: Any, expert_actions: Any,
                differ: Callable[[Any, Any], np.ndarray] | None,
                n: int) -> tuple[np.ndarray | None, np.ndarray, np.ndarray]:
    """Per env: a mistake (None when not judged), whether the expert labeled the state, and whether the
    executed action was the expert's (a β-mixture says per env; an expert always is, a learner never)."""
    labeled = getattr(expert, "last_labeled", None)
    wrong = None
    if expert_actions is not None and differ is not None:
        wrong = differ(actions, expert_actions)
        if labeled is not None:
            wrong = wrong & labeled          # no verdict where the expert gave no label
    used = getattr(actor, "last_expert_used", None)
    return (wrong, np.ones(n, bool) if labeled is None else np.asarray(labeled, bool),
            np.full(n, isinstance(actor, ExpertActor)) if used is None else np.asarray(used, bool))
