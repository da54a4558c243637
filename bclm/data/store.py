"""Trajectory store: one Hugging Face `datasets` shard per source/round, on disk, memory-mapped.

Layout of a store directory:

    DIR/bclm_dataset.json     spaces, env id, format version: the dataset alone says how to tokenize it
    DIR/round-000/            a `Dataset.save_to_disk` shard (Arrow), one row per environment step
    DIR/round-001/ ...

A shard is written to a temporary directory and renamed into place, so a crash mid-write leaves the
earlier shards intact and no half-written shard is ever read.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import datasets
import gymnasium as gym
import numpy as np
import pyarrow as pa

from bclm import atomic, dirlock, failpoints
from bclm.errors import BCLMError
from bclm.tokenizers import assemble, flatten_leaves, space_from_dict, space_to_dict

META_FILE = "bclm_dataset.json"
SHARD_HASHES = "bclm_shard_hashes.json"   # in each shard: sha256 of its files, written with it
FORMAT = "bclm-dataset"
FORMAT_VERSION = 1

datasets.disable_progress_bars()


def _column(prefix: str, path: str) -> str:
    return prefix if path == "" else f"{prefix}.{path}"


def _leaf_feature(space: gym.Space) -> datasets.features.FeatureType:
    if isinstance(space, gym.spaces.Text):
        return datasets.Value("string")
    dtype = np.dtype(space.dtype).name
    shape = space.shape or ()
    if len(shape) == 0:
        return datasets.Value(dtype)
    # Leaves are stored flattened: one fixed-length list per step, reshaped on read with the space.
    return datasets.List(datasets.Value(dtype), length=int(np.prod(shape)))


def space_features(prefix: str, space: gym.Space) -> dict[str, Any]:
    return {_column(prefix, path): _leaf_feature(leaf) for path, leaf in flatten_leaves(space)}


PROVENANCE = {
    "episode": datasets.Value("int64"),
    "step": datasets.Value("int32"),
    "reward": datasets.Value("float32"),
    "terminated": datasets.Value("bool"),
    "truncated": datasets.Value("bool"),
    "task": datasets.Value("string"),
    "round": datasets.Value("int32"),
    "source": datasets.Value("string"),
    "expert_used": datasets.Value("bool"),
    "labeled": datasets.Value("bool"),
    "beta": datasets.Value("float32"),
    "policy_revision": datasets.Value("string"),
}


def store_features(observation_space: gym.Space, action_space: gym.Space) -> datasets.Features:
    """`action` is the executed action, `expert_action` the expert's label for the same state."""
    return datasets.Features({
        **space_features("observation", observation_space),
        **space_features("action", action_space),
        **space_features("expert_action", action_space),
        **PROVENANCE,
    })


@dataclass
class EpisodeRecord:
    """One finished episode, as leaf arrays with a leading time axis."""

    observation: dict[str, np.ndarray]
    action: dict[str, np.ndarray]
    expert_action: dict[str, np.ndarray] | None
    reward: np.ndarray
    terminated: bool
    truncated: bool
    task: str
    success: bool
    expert_used: np.ndarray | None = None
    labeled: np.ndarray | None = None          # False where the expert gave no label (a counted fault)
    beta: float = 1.0
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def length(self) -> int:
        return len(self.reward)

    @property
    def episode_return(self) -> float:
        return float(np.sum(self.reward, dtype=np.float64))


def _stack_leaves(prefix: str, space: gym.Space, leaves: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    out = {}
    for path, leaf in flatten_leaves(space):
        arr = np.concatenate([ep[path] for ep in leaves])
        if not isinstance(leaf, gym.spaces.Text) and arr.ndim > 1:
            arr = arr.reshape(len(arr), -1)
        out[_column(prefix, path)] = arr if not isinstance(leaf, gym.spaces.Text) else arr.tolist()
    return out


def _check_finite_observations(columns: dict[str, Any], store: Path) -> None:
    """Refuse NaN or infinite observations when they are collected, naming where the env produced them, rather
    than storing them for training to refuse later."""
    for name, values in columns.items():
        if not name.startswith("observation") or isinstance(values, list) or \
                not np.issubdtype(values.dtype, np.floating):
            continue
        bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
        if bad.any():
            row = int(np.argmax(bad))
            raise BCLMError(f"{store}: the env returned a NaN or infinite {name} (episode "
                            f"{int(columns['episode'][row])}, step {int(columns['step'][row])}); nothing of "
                            "this shard was written")


class TrajectoryStore:
    """A directory of trajectory shards that share one observation and action space."""

    # The metadata every store has; any other key is its origin (e.g. the Hub repo it was pulled from).
    OWN_KEYS = ("format", "format_version", "env_id", "task", "observation_space", "action_space")

    def __init__(self, path: str | Path):
        self.path = Path(path)
        meta_path = self.path / META_FILE
        if not meta_path.is_file():
            raise BCLMError(f"{meta_path} not found: {self.path} is not a bclm dataset (run `bclm collect` first)")
        try:
            self.meta = json.loads(meta_path.read_text())
        except json.JSONDecodeError as e:
            raise BCLMError(f"{meta_path} is not valid JSON: {e}") from None
        if self.meta.get("format") != FORMAT:
            raise BCLMError(f"{meta_path}: format {self.meta.get('format')!r} is not {FORMAT!r}")
        version = self.meta.get("format_version")
        if not isinstance(version, int) or version > FORMAT_VERSION:
            raise BCLMError(
                f"{meta_path}: format_version {version!r} is newer than this bclm reads ({FORMAT_VERSION}); "
                "upgrade bclm")
        self.observation_space = space_from_dict(self.meta["observation_space"])
        self.action_space = space_from_dict(self.meta["action_space"])
        self.features = store_features(self.observation_space, self.action_space)
        self._last_ids: dict[str, int] = {}       # shard -> its largest episode id (see next_episode_id)

    @classmethod
    def create(cls, path: str | Path, observation_space: gym.Space, action_space: gym.Space,
               env_id: str, task: str, origin: dict[str, str] | None = None) -> TrajectoryStore:
        """Create a new store; refuse a directory that already holds something, never overwrite. `origin`
        (e.g. the Hub repo and revision it was pulled from) is kept in its metadata."""
        path = Path(path)
        if path.exists() and any(path.iterdir()):
            raise BCLMError(f"{path} already exists and is not empty: choose a new --output directory")
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "env_id": env_id,
            "task": task,
            "observation_space": space_to_dict(observation_space),
            "action_space": space_to_dict(action_space),
            **(origin or {}),
        }
        atomic.write_text(path / META_FILE, json.dumps(meta, indent=2, sort_keys=True))
        return cls(path)

    def shard_names(self) -> list[str]:
        """Complete shards in order (temporary directories of an interrupted write are ignored)."""
        return sorted(p.name for p in self.path.iterdir()
                      if p.is_dir() and not p.name.startswith(".") and (p / "dataset_info.json").is_file())

    def next_episode_id(self) -> int:
        # A shard's ids never change once written, so each is read once per store object: loading every shard
        # at every write made collecting one episode per shard quadratic (a sweep's 20,000 BabyAI labels,
        # ~4,000 one-episode shards, took 3.6 s per episode by the 350th).
        names = self.shard_names()
        for name in names:
            if name not in self._last_ids:
                self._last_ids[name] = int(np.max(self.load([name])["episode"][:], initial=-1))
        return max((self._last_ids[name] for name in names), default=-1) + 1

    def write_shard(self, name: str, episodes: Sequence[EpisodeRecord], *, round_index: int = 0,
                    source: str = "expert", policy_revision: str = "") -> Path:
        """Append the episodes as shard `name`; an existing shard of that name is an error."""
        if not episodes:
            raise BCLMError(f"shard {name}: no episodes to write")
        first = self.next_episode_id()
        path = self.write_columns(name, self._columns(episodes, first, round_index, source, policy_revision))
        self._last_ids[name] = first + len(episodes) - 1      # ids it assigned: no need to read them back
        return path

    def write_columns(self, name: str, columns: dict[str, Any]) -> Path:
        """Write ready-made columns (one per store feature, episode ids included) as shard `name`, atomically:
        how an importer restores a shard exactly, rather than renumbering its episodes."""
        if set(columns) != set(self.features):
            raise BCLMError(f"shard {name}: columns {sorted(columns)} do not match the store's "
                            f"{sorted(self.features)}")
        # In the features' order, so a shard's column order never depends on how the caller built the dict.
        return self.write_dataset(name, datasets.Dataset.from_dict({c: columns[c] for c in self.features},
                                                                   features=self.features))

    def write_dataset(self, name: str, ds: datasets.Dataset) -> Path:
        """Write a dataset with exactly the store's features as shard `name`, atomically."""
        final = self.path / name
        if final.exists():
            raise BCLMError(f"shard {final} already exists; shards are never overwritten")
        if ds.features != self.features:
            raise BCLMError(f"shard {name}: columns {list(ds.features)} do not match the store's spaces "
                            f"({list(self.features)})")
        for stale in self.path.glob(f".tmp-{name}-*"):     # an earlier write of this shard, killed midway
            shutil.rmtree(stale, ignore_errors=True)
        tmp = self.path / f".tmp-{name}-{uuid.uuid4().hex[:8]}"
        try:
            with atomic.disk_errors_named(final):
                ds.save_to_disk(str(tmp))
                atomic.write_json(tmp / SHARD_HASHES, {"sha256": _digests(tmp)})
            failpoints.point("shard")
            os.replace(tmp, final)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return final

    def _columns(self, episodes: Sequence[EpisodeRecord], first_id: int, round_index: int, source: str,
                 policy_revision: str) -> dict[str, Any]:
        lengths = [ep.length for ep in episodes]
        n = sum(lengths)
        expert = [ep.expert_action if ep.expert_action is not None else ep.action for ep in episodes]
        columns = {
            **_stack_leaves("observation", self.observation_space, [ep.observation for ep in episodes]),
            **_stack_leaves("action", self.action_space, [ep.action for ep in episodes]),
            **_stack_leaves("expert_action", self.action_space, expert),
            "episode": np.repeat(np.arange(first_id, first_id + len(episodes)), lengths),
            "step": np.concatenate([np.arange(k, dtype=np.int32) for k in lengths]),
            "reward": np.concatenate([ep.reward for ep in episodes]).astype(np.float32),
            "terminated": np.concatenate([_last_flag(ep.length, ep.terminated) for ep in episodes]),
            "truncated": np.concatenate([_last_flag(ep.length, ep.truncated) for ep in episodes]),
            "task": [ep.task for ep in episodes for _ in range(ep.length)],
            "round": np.full(n, round_index, dtype=np.int32),
            "source": [source] * n,
            "expert_used": np.concatenate([
                ep.expert_used if ep.expert_used is not None else np.ones(ep.length, bool) for ep in episodes]),
            "labeled": np.concatenate([
                ep.labeled if ep.labeled is not None else np.ones(ep.length, bool) for ep in episodes]),
            "beta": np.concatenate([np.full(ep.length, ep.beta, np.float32) for ep in episodes]),
            "policy_revision": [policy_revision] * n,
        }
        _check_finite_observations(columns, self.path)
        return columns

    def load(self, shards: Sequence[str] | None = None) -> datasets.Dataset:
        """All (or the named) shards as one memory-mapped dataset in numpy format."""
        names = list(shards) if shards is not None else self.shard_names()
        if not names:
            raise BCLMError(f"{self.path} holds no complete shard")
        parts = []
        for name in names:
            shard_path = self.path / name
            if not (shard_path / "dataset_info.json").is_file():
                raise BCLMError(f"shard {shard_path} not found or incomplete")
            try:
                ds = datasets.load_from_disk(str(shard_path))
            except (OSError, ValueError) as e:        # pyarrow's ArrowInvalid is a ValueError
                reason = (str(e).splitlines() or [type(e).__name__])[0]
                raise BCLMError(f"shard {shard_path} is damaged ({reason}): restore it, or delete it to collect "
                                "it again") from None
            if ds.features != self.features:
                raise BCLMError(
                    f"shard {shard_path}: its columns do not match the spaces in {self.path / META_FILE}")
            parts.append(ds)
        ds = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        return ds.with_format("numpy")

    def verify(self, shards: Sequence[str] | None = None) -> None:
        """Every file of the (named) shards still has the hash written when the shard was committed: a flipped
        byte is named before it is trained on. Shards written before bclm kept hashes are not checked."""
        for name in list(shards) if shards is not None else self.shard_names():
            shard = self.path / name
            written = atomic.read_json(shard / SHARD_HASHES)
            if not isinstance(written, dict):
                continue
            now = _digests(shard)
            for file, digest in written["sha256"].items():
                if now.get(file) != digest:
                    raise BCLMError(f"shard {shard} is damaged: {file} is {'missing' if file not in now else 'changed'}"
                                    " since it was written: restore it, or delete the shard to collect it again")

    def arrays(self, shards: Sequence[str] | None = None) -> StepArrays:
        try:
            return StepArrays.from_dataset(self.load(shards), self.observation_space, self.action_space)
        except pa.ArrowException as e:
            # A shard written before shards kept hashes, damaged where only reading its rows finds out.
            names = list(shards) if shards is not None else self.shard_names()
            bad = [n for n in names if not _readable(self.load([n]))] if len(names) > 1 else names
            raise BCLMError(f"shard {self.path / (bad or names)[0]} is damaged (Arrow cannot read its rows: "
                            f"{type(e).__name__}): restore it, or delete it to collect it again") from None


@dataclass
class StepArrays:
    """All steps of a store in memory, as batches structured like the spaces (what tokenizers take)."""

    observation: Any
    action: Any
    expert_action: Any
    columns: dict[str, np.ndarray]

    @classmethod
    def from_dataset(cls, ds: datasets.Dataset, observation_space: gym.Space,
                     action_space: gym.Space) -> StepArrays:
        data = ds[:]
        return cls(
            observation=_assemble_column(data, "observation", observation_space),
            action=_assemble_column(data, "action", action_space),
            expert_action=_assemble_column(data, "expert_action", action_space),
            columns={k: np.asarray(v) for k, v in data.items() if k in PROVENANCE},
        )

    def __len__(self) -> int:
        return len(self.columns["episode"])


def _assemble_column(data: dict[str, Any], prefix: str, space: gym.Space) -> Any:
    leaves = {}
    for path, leaf in flatten_leaves(space):
        arr = np.asarray(data[_column(prefix, path)])
        if not isinstance(leaf, gym.spaces.Text):
            arr = arr.reshape((len(arr), *(leaf.shape or ())))
        else:
            arr = arr.astype(object)
        leaves[path] = arr
    return assemble(space, leaves)


def _last_flag(length: int, flag: bool) -> np.ndarray:
    out = np.zeros(length, dtype=bool)
    out[-1] = flag
    return out


def _readable(ds: datasets.Dataset) -> bool:
    try:
        ds[:]
    except pa.ArrowException:
        return False
    return True


def _digests(shard: Path) -> dict[str, str]:
    """sha256 of each file a shard holds, its hash manifest aside."""
    digests = {}
    for path in sorted(shard.iterdir()):
        if path.is_file() and path.name != SHARD_HASHES:
            with open(path, "rb") as f:
                digests[path.name] = hashlib.file_digest(f, "sha256").hexdigest()
    return digests


@contextmanager
def staged_dir(output: str | Path) -> Iterator[Path]:
    """A new directory `output`, built in a temporary sibling and renamed into place when the block succeeds:
    a failure part-way leaves nothing that looks complete, and the retry is not refused as "not empty"."""
    output = Path(output)
    with dirlock.exclusive(output, "--output"):
        if output.exists() and any(output.iterdir()):
            raise BCLMError(f"{output} already exists and is not empty: choose a new --output directory")
        tmp = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            yield tmp
            if output.exists():
                output.rmdir()
            os.replace(tmp, output)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)



