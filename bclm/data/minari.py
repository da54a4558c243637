"""Import a local Minari dataset (Farama's offline-RL format, HDF5 or Arrow) into a trajectory store.

Only local files are read: a dataset directory (the one holding `data/`, or `data/` itself), or a dataset id
found under `MINARI_DATASETS_PATH` (`~/.minari/datasets`); nothing is downloaded (`minari download ID` does
that, where there is a network). Minari stores each episode with one more observation than actions (the
last one reached); it has no action and is dropped, as in the imitation import.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from bclm.data.store import EpisodeRecord, TrajectoryStore, staged_dir
from bclm.errors import BCLMError
from bclm.tokenizers import flatten_leaves, leaf_arrays

SHARD = "round-000"


def import_minari(source: str | Path, output_dir: str | Path, *, env_id: str = "") -> TrajectoryStore:
    """A new store at `output_dir` with every episode of the Minari dataset `source`; `env_id` names the env
    when the dataset does not record one."""
    dataset = open_dataset(source)
    env = env_id or (dataset.spec.env_spec.id if dataset.spec.env_spec is not None else "")
    if not env:
        raise BCLMError(f"Minari dataset {source}: it records no env (spec.env_spec); give --env ENV_ID")
    obs_space, act_space = dataset.observation_space, dataset.action_space
    episodes = [_episode(ep, obs_space, act_space, env, source) for ep in dataset.iterate_episodes()]
    if not episodes:
        raise BCLMError(f"Minari dataset {source} holds no episodes")
    with staged_dir(output_dir) as tmp:
        TrajectoryStore.create(tmp, obs_space, act_space, env_id=env, task=env,
                               origin={"minari": str(source)}).write_shard(SHARD, episodes, source="minari")
    return TrajectoryStore(output_dir)


def open_dataset(source: str | Path) -> Any:
    """The `MinariDataset` of a local directory or of a dataset id already on this machine."""
    try:
        import minari
        from minari.dataset.minari_dataset import MinariDataset
    except ImportError:
        raise BCLMError("bclm import-minari needs minari: pip install -e '.[minari]'") from None
    path = Path(source)
    if path.is_dir():
        data = path / "data" if (path / "data" / "metadata.json").is_file() else path
        if not (data / "metadata.json").is_file():
            raise BCLMError(f"{path}: no Minari metadata.json (in it or in {path / 'data'}): not a Minari dataset")
        return MinariDataset(data)
    try:
        return minari.load_dataset(str(source), download=False)
    except (FileNotFoundError, ValueError) as e:
        raise BCLMError(f"Minari dataset {source!r} is neither a directory nor a dataset id on this machine "
                        f"({e}); bclm reads local files only: `minari download {source}` first") from None


def _episode(ep: Any, obs_space: gym.Space, act_space: gym.Space, env: str, source: str | Path) -> EpisodeRecord:
    actions = _leaves(act_space, ep.actions)
    steps = len(next(iter(actions.values())))
    observations = {k: v[:steps] for k, v in _leaves(obs_space, ep.observations).items()}
    if any(len(v) != steps for v in observations.values()):
        raise BCLMError(f"Minari dataset {source}, episode {ep.id}: {steps} actions but fewer observations")
    return EpisodeRecord(
        observation=observations, action=actions, expert_action=None,
        reward=np.asarray(ep.rewards, np.float32), terminated=bool(ep.terminations[-1]),
        truncated=bool(ep.truncations[-1]) and not bool(ep.terminations[-1]), task=env, success=False)


def _leaves(space: gym.Space, batch: Any) -> dict[str, np.ndarray]:
    """{leaf path: array} in each leaf's own dtype (Minari may widen, e.g. ints to int64)."""
    dtypes = {path: leaf.dtype for path, leaf in flatten_leaves(space)}
    return {path: v if dtypes[path] is None else v.astype(dtypes[path])
            for path, v in leaf_arrays(space, batch).items()}
