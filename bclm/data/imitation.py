"""Import the legacy .npz trajectories of HumanCompatibleAI/imitation (`imitation.data.types.save`, before
it moved to Hugging Face datasets) into a trajectory store.

The file concatenates N trajectories:

    obs       (sum(len_i) + N, *obs_shape)   each trajectory has one more observation than actions: the
                                             final one, which has no action and is dropped here
    acts      (sum(len_i), *act_shape)
    infos     (sum(len_i),) object           info dicts; pickled, so never loaded here
    terminal  (N,) bool                      True: the episode terminated; False: it was cut off (truncated)
    indices   (N - 1,)                       cumulative lengths: where trajectories 1..N-1 start in `acts`
    rews      (sum(len_i),) float            optional
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import gymnasium as gym
import numpy as np

from bclm.data.store import EpisodeRecord, TrajectoryStore, staged_dir
from bclm.envs import get_task, make_env
from bclm.errors import BCLMError
from bclm.tokenizers import flatten_leaves

REQUIRED_KEYS = ("obs", "acts", "terminal", "indices")
SHARD = "round-000"


def import_imitation_npz(path: str | Path, output_dir: str | Path, *, env_id: str,
                         observation_space: gym.Space | None = None,
                         action_space: gym.Space | None = None) -> TrajectoryStore:
    """A new store at `output_dir` with the trajectories of `path`, one episode each. Spaces not given are
    taken from the env (`bclm.envs.get_task(env_id)`)."""
    path = Path(path)
    arrays = _load(path)
    lengths = _trajectory_lengths(path, arrays)
    observation_space, action_space, env, task = _spaces(env_id, observation_space, action_space)
    for key, space in (("obs", observation_space), ("acts", action_space)):
        _check_shape(path, key, arrays[key], space)
    episodes = _episodes(arrays, lengths, observation_space, action_space, task)
    with staged_dir(output_dir) as tmp:
        TrajectoryStore.create(tmp, observation_space, action_space, env_id=env, task=task).write_shard(
            SHARD, episodes, source="imitation")
    return TrajectoryStore(output_dir)


def _load(path: Path) -> dict[str, np.ndarray]:
    """The numeric arrays of the file; `infos` (pickled dicts) is skipped, since loading it could run code."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [key for key in REQUIRED_KEYS if key not in npz.files]
            if missing:
                raise BCLMError(f"{path}: keys {missing} are missing (an imitation trajectories .npz has "
                                f"{', '.join(REQUIRED_KEYS)}, infos and optionally rews; found {npz.files})")
            return {key: npz[key] for key in (*REQUIRED_KEYS, "rews") if key in npz.files}
    except (OSError, zipfile.BadZipFile, EOFError) as e:
        raise BCLMError(f"{path}: not a readable .npz file ({e})") from None
    except ValueError as e:          # object arrays: dict observations, which the legacy npz never held
        raise BCLMError(f"{path}: {e}; bclm reads numeric obs/acts arrays only") from None


def _trajectory_lengths(path: Path, arrays: dict[str, np.ndarray]) -> np.ndarray:
    """Length of each trajectory, after checking every key agrees with the others."""
    n_acts, n = len(arrays["acts"]), len(arrays["terminal"])
    indices = arrays["indices"].astype(np.int64).ravel()
    if n == 0:
        raise BCLMError(f"{path}: 'terminal' is empty: no trajectories")
    if len(indices) != n - 1:
        raise BCLMError(f"{path}: 'indices' has {len(indices)} entries, expected {n - 1} (one fewer than "
                        f"'terminal', one per trajectory)")
    lengths = np.diff(np.concatenate([[0], indices, [n_acts]]))
    if (lengths <= 0).any():
        raise BCLMError(f"{path}: 'indices' {indices.tolist()} do not split {n_acts} actions into {n} non-empty "
                        "trajectories")
    if len(arrays["obs"]) != n_acts + n:
        raise BCLMError(f"{path}: 'obs' has {len(arrays['obs'])} rows, expected {n_acts + n} (one per action "
                        "plus each trajectory's final observation)")
    if "rews" in arrays and arrays["rews"].shape != (n_acts,):
        raise BCLMError(f"{path}: 'rews' has shape {arrays['rews'].shape}, expected ({n_acts},): one per action")
    return lengths


def _spaces(env_id: str, observation_space: gym.Space | None,
            action_space: gym.Space | None) -> tuple[gym.Space, gym.Space, str, str]:
    """(observation space, action space, env id, task name); the env is made only for a missing space."""
    if observation_space is not None and action_space is not None:
        return observation_space, action_space, env_id, env_id
    task = get_task(env_id)
    env = make_env(task)
    try:
        return (observation_space or env.observation_space, action_space or env.action_space, task.env_id,
                task.name)
    finally:
        env.close()


def _check_shape(path: Path, key: str, values: np.ndarray, space: gym.Space) -> None:
    leaves = flatten_leaves(space)
    if len(leaves) != 1 or isinstance(leaves[0][1], gym.spaces.Text):
        raise BCLMError(f"{path}: '{key}' is one array, so its space must be a single numeric space, not {space}")
    shape = tuple(leaves[0][1].shape or ())
    if values.shape[1:] != shape:
        raise BCLMError(f"{path}: '{key}' rows have shape {values.shape[1:]}, but the space {space} expects {shape}")


def _episodes(arrays: dict[str, np.ndarray], lengths: np.ndarray, observation_space: gym.Space,
              action_space: gym.Space, task: str) -> list[EpisodeRecord]:
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    rewards = arrays.get("rews", np.zeros(int(lengths.sum())))
    out = []
    for i, (start, length) in enumerate(zip(starts, lengths)):
        # Trajectory i's observations begin i rows later than its actions: each earlier one had a final obs.
        obs = arrays["obs"][start + i:start + i + length]
        terminal = bool(arrays["terminal"][i])
        out.append(EpisodeRecord(
            observation=_leaf(observation_space, obs), action=_leaf(action_space, arrays["acts"][start:start + length]),
            expert_action=None, reward=rewards[start:start + length].astype(np.float32), terminated=terminal,
            truncated=not terminal, task=task, success=False))      # success is not stored in a shard
    return out


def _leaf(space: gym.Space, values: np.ndarray) -> dict[str, np.ndarray]:
    """The one leaf of a non-composite space (checked by `_check_shape`), in the space's dtype."""
    path, leaf = flatten_leaves(space)[0]
    return {path: values.astype(leaf.dtype)}
