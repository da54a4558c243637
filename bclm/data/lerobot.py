"""A trajectory store as a LeRobotDataset v3.0 folder, and back.

Layout written, as lerobot's own writer lays it out (`lerobot.datasets`: utils, dataset_metadata,
compute_stats), so `LeRobotDataset(repo_id, root=OUT)` loads it:

    OUT/meta/info.json                             codebase_version "v3.0", counts, fps, features
    OUT/meta/stats.json                            per numeric feature: min max mean std count q01..q99
    OUT/meta/tasks.parquet                         task string (index "task") -> task_index
    OUT/meta/episodes/chunk-000/file-000.parquet   one row per episode: length, frame range, files,
                                                   stats/<feature>/<stat>, and bclm/<column> constants
    OUT/meta/bclm_dataset.json                     the store's own metadata (spaces); LeRobot ignores it
    OUT/data/chunk-CCC/file-FFF.parquet            frames in episode order, `datasets` features in the schema

Every bclm column has a place (see `STEP_FEATURES` and `EPISODE_CONSTANTS`), and `meta/bclm_dataset.json`
restores the spaces, so importing an exported folder gives back the store bit for bit. A folder without
that file is a foreign LeRobot dataset: its numeric state and action features become Box spaces and its
camera features are skipped, since bclm tokenizes state, not pixels.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import gymnasium as gym
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from bclm.data.store import META_FILE, PROVENANCE, TrajectoryStore, _column, staged_dir
from bclm.errors import BCLMError
from bclm.tokenizers import flatten_leaves

log = logging.getLogger(__name__)

CODEBASE_VERSION = "v3.0"
CODEBASE_MAJOR = 3
DEFAULT_FPS = 30                # bclm steps carry no clock; LeRobot only uses fps to turn frames into time
CHUNKS_SIZE = 1000              # files per chunk directory (lerobot's DEFAULT_CHUNK_SIZE)
DATA_FILES_SIZE_IN_MB = 100
VIDEO_FILES_SIZE_IN_MB = 500
DATA_PATH = "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
EPISODES_PATH = "meta/episodes/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
INFO_PATH = "meta/info.json"
STATS_PATH = "meta/stats.json"
TASKS_PATH = "meta/tasks.parquet"
BCLM_META_PATH = f"meta/{META_FILE}"
MAX_ARRAY_DIMS = 5              # lerobot maps 2-5 dims to Array2D..Array5D
QUANTILES = {"q01": 0.01, "q10": 0.10, "q50": 0.50, "q90": 0.90, "q99": 0.99}

DEFAULT_FEATURES: dict[str, dict[str, Any]] = {
    "timestamp": {"dtype": "float32", "shape": [1], "names": None},
    "frame_index": {"dtype": "int64", "shape": [1], "names": None},
    "episode_index": {"dtype": "int64", "shape": [1], "names": None},
    "index": {"dtype": "int64", "shape": [1], "names": None},
    "task_index": {"dtype": "int64", "shape": [1], "names": None},
}
# Per-step bclm columns and the LeRobot features that hold them ("next.done" is derived from two of them).
STEP_FEATURES = {"reward": "next.reward", "terminated": "next.terminated", "truncated": "next.truncated",
                 "expert_used": "bclm.expert_used", "labeled": "bclm.labeled"}
EXTRA_FEATURES = {"next.reward": "float32", "next.done": "bool", "next.terminated": "bool",
                  "next.truncated": "bool", "bclm.expert_used": "bool", "bclm.labeled": "bool"}
# Columns constant over an episode: stored once per episode in meta/episodes as bclm/<column>.
EPISODE_CONSTANTS = ("round", "source", "beta", "policy_revision")
SHARD_COLUMN = "bclm/shard"

_ARRAY_TYPES = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D, 5: datasets.Array5D}


# --- shared: names, features, stats ------------------------------------------------------------------

def feature_name(column: str) -> str:
    """The LeRobot feature of a bclm leaf column; a lone observation is the state vector LeRobot policies read.
    "image" is written "img": lerobot takes every feature whose name holds "image" for a camera frame, and its
    `aggregate_stats` (0.6.1) refused the (49, 3) statistics of BabyAI's symbolic grid leaf `image`."""
    return ("observation.state" if column == "observation" else column).replace("image", "img")


def _exported_name(column: str, features: dict[str, Any]) -> str:
    """The feature an export holds for `column`: today's name, or the one exports before "img" used."""
    name = feature_name(column)
    return name if name in features else ("observation.state" if column == "observation" else column)


def leaf_feature(leaf: gym.Space) -> dict[str, Any]:
    """info.json entry of one leaf: numeric arrays keep their shape (never lerobot's lossy "image"/"video")."""
    if isinstance(leaf, gym.spaces.Text):
        return {"dtype": "string", "shape": [1], "names": None}
    shape = tuple(leaf.shape or ())
    dims = list(shape) if 1 <= len(shape) <= MAX_ARRAY_DIMS else [int(np.prod(shape, dtype=np.int64))]
    return {"dtype": np.dtype(leaf.dtype).name, "shape": dims, "names": None}


def hf_features(features: dict[str, dict[str, Any]]) -> datasets.Features:
    """The `datasets` types LeRobot reads the data parquet with (its get_hf_features_from_features), for the
    numeric and string features bclm writes."""
    out: dict[str, Any] = {}
    for name, ft in features.items():
        shape, dtype = tuple(ft["shape"]), ft["dtype"]
        if shape == (1,):
            out[name] = datasets.Value(dtype)
        elif len(shape) == 1:
            out[name] = datasets.List(datasets.Value(dtype), length=shape[0])
        else:
            out[name] = _ARRAY_TYPES[len(shape)](shape=shape, dtype=dtype)
    return datasets.Features(out)


def feature_stats(values: np.ndarray) -> dict[str, np.ndarray]:
    """lerobot's per-feature statistics over the frame axis; a scalar feature gets shape (1,) like its
    keepdims. Quantiles are exact here (lerobot estimates them from histograms)."""
    x = values.reshape(-1, 1) if values.ndim == 1 else values
    wide = x.astype(np.float64)
    stats = {"min": x.min(axis=0), "max": x.max(axis=0), "mean": wide.mean(axis=0), "std": wide.std(axis=0),
             "count": np.array([len(x)])}
    quantiles = np.quantile(wide, list(QUANTILES.values()), axis=0)
    stats.update(zip(QUANTILES, quantiles))
    return stats


def _leaves(observation_space: gym.Space, action_space: gym.Space) -> list[tuple[str, gym.Space]]:
    """(bclm column, leaf space) of every observation, action and expert_action leaf, in store order."""
    return [(_column(prefix, path), leaf)
            for prefix, space in (("observation", observation_space), ("action", action_space),
                                  ("expert_action", action_space))
            for path, leaf in flatten_leaves(space)]


def _write_json(data: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=4, ensure_ascii=False))


# --- export ------------------------------------------------------------------------------------------

@dataclass
class _Episode:
    """One episode of the export: its frame range in the store and the shard it came from."""

    start: int
    stop: int
    shard: str

    @property
    def length(self) -> int:
        return self.stop - self.start


def export_lerobot(store_path: str | Path, output_dir: str | Path, *, fps: int = DEFAULT_FPS,
                   robot_type: str | None = None, chunks_size: int = CHUNKS_SIZE,
                   data_files_size_in_mb: float = DATA_FILES_SIZE_IN_MB) -> Path:
    """Write the store at `store_path` as a LeRobotDataset v3.0 folder at `output_dir` (new or empty).
    The folder is built beside `output_dir` and renamed into place, so a failed export leaves nothing."""
    if not isinstance(fps, int) or fps <= 0:
        raise BCLMError(f"fps {fps!r} is not valid: expected a positive integer (LeRobot's info.json fps)")
    store = TrajectoryStore(store_path)
    names = store.shard_names()
    if not names:
        raise BCLMError(f"{store.path} holds no complete shard to export")
    data = store.load(names)[:]
    episodes = _store_episodes(store, names, data["episode"])
    leaves = _leaves(store.observation_space, store.action_space)
    features = _features(leaves)
    tasks = list(dict.fromkeys(data["task"].tolist()))       # first-appearance order, as lerobot assigns
    frames = _frame_columns(data, leaves, episodes, tasks, fps)
    with staged_dir(output_dir) as out:
        files = _write_data(out, frames, features, episodes, chunks_size, data_files_size_in_mb)
        _write_tasks(out, tasks)
        _write_episodes(out, data, frames, features, episodes, files, tasks)
        _write_json(_dataset_stats(frames, features), out / STATS_PATH)
        _write_json(_info(features, episodes, tasks, fps, robot_type, chunks_size, data_files_size_in_mb),
                    out / INFO_PATH)
        shutil.copyfile(store.path / META_FILE, out / BCLM_META_PATH)
    return Path(output_dir)


def _store_episodes(store: TrajectoryStore, names: Sequence[str], episode: np.ndarray) -> list[_Episode]:
    """Episodes as runs of one episode id inside one shard (a run never crosses a shard boundary)."""
    bounds = np.cumsum([0, *(len(store.load([name])) for name in names)])
    out = []
    for name, lo, hi in zip(names, bounds[:-1], bounds[1:]):
        if hi == lo:
            raise BCLMError(f"shard {store.path / name} has no rows: LeRobot has no place for an empty shard")
        ids = episode[lo:hi]
        starts = lo + np.flatnonzero(np.r_[True, ids[1:] != ids[:-1]])
        out.extend(_Episode(int(a), int(b), name) for a, b in zip(starts, [*starts[1:], hi]))
    return out


def _features(leaves: list[tuple[str, gym.Space]]) -> dict[str, dict[str, Any]]:
    features = {feature_name(column): leaf_feature(leaf) for column, leaf in leaves}
    bad = [name for name in features if "/" in name]
    if bad:
        raise BCLMError(f"space keys {bad} contain '/', which LeRobot feature names may not hold")
    features.update({name: {"dtype": dtype, "shape": [1], "names": None} for name, dtype in EXTRA_FEATURES.items()})
    features.update(copy.deepcopy(DEFAULT_FEATURES))
    return features


def _to_lerobot(values: np.ndarray, leaf: gym.Space) -> np.ndarray | list[str]:
    if isinstance(leaf, gym.spaces.Text):
        return values.tolist()
    shape = leaf_feature(leaf)["shape"]
    return values.reshape(len(values)) if shape == [1] else values.reshape(len(values), *shape)


def _frame_columns(data: dict[str, np.ndarray], leaves: list[tuple[str, gym.Space]], episodes: list[_Episode],
                   tasks: list[str], fps: int) -> dict[str, Any]:
    """Every LeRobot feature column over all frames, in info.json feature order."""
    columns: dict[str, Any] = {feature_name(column): _to_lerobot(data[column], leaf) for column, leaf in leaves}
    columns.update({feature: data[column] for column, feature in STEP_FEATURES.items()})
    columns["next.done"] = data["terminated"] | data["truncated"]
    frame_index = data["step"].astype(np.int64)
    task_of = {task: i for i, task in enumerate(tasks)}
    columns.update({
        "timestamp": (frame_index / fps).astype(np.float32),
        "frame_index": frame_index,
        "episode_index": np.repeat(np.arange(len(episodes), dtype=np.int64), [ep.length for ep in episodes]),
        "index": np.arange(len(frame_index), dtype=np.int64),
        "task_index": np.array([task_of[t] for t in data["task"].tolist()], dtype=np.int64),
    })
    return columns


def _next_file(chunk: int, file: int, chunks_size: int) -> tuple[int, int]:
    return (chunk + 1, 0) if file == chunks_size - 1 else (chunk, file + 1)


def plan_data_files(lengths: Sequence[int], frame_mb: float, limit_mb: float,
                    chunks_size: int) -> list[tuple[int, int]]:
    """(chunk_index, file_index) of each episode: whole episodes fill a file until the next one would reach
    `limit_mb` (lerobot's rule), and every `chunks_size` files start a new chunk."""
    chunk, file, used, out = 0, 0, 0.0, []
    for length in lengths:
        size = length * frame_mb
        if used > 0 and used + size >= limit_mb:
            chunk, file = _next_file(chunk, file, chunks_size)
            used = 0.0
        out.append((chunk, file))
        used += size
    return out


def _write_data(out: Path, frames: dict[str, Any], features: dict[str, dict[str, Any]], episodes: list[_Episode],
                chunks_size: int, limit_mb: float) -> list[tuple[int, int]]:
    ds = datasets.Dataset.from_dict(frames, features=hf_features(features))
    frame_mb = ds.data.nbytes / max(len(ds), 1) / 2**20
    files = plan_data_files([ep.length for ep in episodes], frame_mb, limit_mb, chunks_size)
    offset = 0
    for (chunk, file), n in _runs(files, [ep.length for ep in episodes]):
        path = out / DATA_PATH.format(chunk_index=chunk, file_index=file)
        path.parent.mkdir(parents=True, exist_ok=True)
        ds.select(range(offset, offset + n)).to_parquet(str(path))
        offset += n
    return files


def _runs(files: list[tuple[int, int]], lengths: list[int]) -> list[tuple[tuple[int, int], int]]:
    """(file, frames in it), in order, from each episode's file."""
    totals: dict[tuple[int, int], int] = {}
    for file, n in zip(files, lengths):
        totals[file] = totals.get(file, 0) + n
    return list(totals.items())


def _write_tasks(out: Path, tasks: list[str]) -> None:
    frame = pd.DataFrame({"task_index": np.arange(len(tasks), dtype=np.int64)}, index=pd.Index(tasks, name="task"))
    path = out / TASKS_PATH
    path.parent.mkdir(parents=True, exist_ok=True)
    frame.to_parquet(path)


def _numeric(features: dict[str, dict[str, Any]]) -> list[str]:
    # Exports never hold image/video features (leaf_feature keeps arrays numeric), so only strings are left out.
    return [name for name, ft in features.items() if ft["dtype"] != "string"]


def _dataset_stats(frames: dict[str, Any], features: dict[str, dict[str, Any]]) -> dict[str, dict[str, list]]:
    return {name: _serialized(feature_stats(np.asarray(frames[name]))) for name in _numeric(features)}


def _serialized(stats: dict[str, np.ndarray]) -> dict[str, list]:
    return {key: value.tolist() for key, value in stats.items()}


def _constant(values: np.ndarray, episode: _Episode, column: str) -> Any:
    part = values[episode.start:episode.stop]
    if not (part == part[0]).all():
        raise BCLMError(f"shard {episode.shard}: column {column!r} changes within episode (rows {episode.start}-"
                        f"{episode.stop - 1}); LeRobot export keeps it once per episode")
    return part[0].item()


def _write_episodes(out: Path, data: dict[str, np.ndarray], frames: dict[str, Any],
                    features: dict[str, dict[str, Any]], episodes: list[_Episode], files: list[tuple[int, int]],
                    tasks: list[str]) -> None:
    """meta/episodes: lerobot's per-episode columns, then the bclm columns that are constant per episode."""
    table: dict[str, Any] = {
        "episode_index": list(range(len(episodes))),
        "tasks": [list(dict.fromkeys(tasks[i] for i in frames["task_index"][ep.start:ep.stop])) for ep in episodes],
        "length": [ep.length for ep in episodes],
        "data/chunk_index": [chunk for chunk, _ in files],
        "data/file_index": [file for _, file in files],
        "dataset_from_index": [ep.start for ep in episodes],
        "dataset_to_index": [ep.stop for ep in episodes],
    }
    per_episode = [{name: feature_stats(np.asarray(frames[name][ep.start:ep.stop])) for name in _numeric(features)}
                   for ep in episodes]
    for name in _numeric(features):
        for stat in per_episode[0][name]:
            table[f"stats/{name}/{stat}"] = [stats[name][stat].tolist() for stats in per_episode]
    table["meta/episodes/chunk_index"] = [0] * len(episodes)
    table["meta/episodes/file_index"] = [0] * len(episodes)
    table[SHARD_COLUMN] = [ep.shard for ep in episodes]
    table["bclm/episode"] = pa.array([int(data["episode"][ep.start]) for ep in episodes],
                                     type=PROVENANCE["episode"].pa_type)
    for column in EPISODE_CONSTANTS:
        table[f"bclm/{column}"] = pa.array([_constant(data[column], ep, column) for ep in episodes],
                                           type=PROVENANCE[column].pa_type)
    path = out / EPISODES_PATH.format(chunk_index=0, file_index=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(table), path)


def _info(features: dict[str, dict[str, Any]], episodes: list[_Episode], tasks: list[str], fps: int,
          robot_type: str | None, chunks_size: int, data_files_size_in_mb: float) -> dict[str, Any]:
    return {
        "codebase_version": CODEBASE_VERSION,
        "robot_type": robot_type,
        "total_episodes": len(episodes),
        "total_frames": sum(ep.length for ep in episodes),
        "total_tasks": len(tasks),
        "chunks_size": chunks_size,
        "data_files_size_in_mb": data_files_size_in_mb,
        "video_files_size_in_mb": VIDEO_FILES_SIZE_IN_MB,
        "fps": fps,
        "splits": {"train": f"0:{len(episodes)}"},
        "data_path": DATA_PATH,
        "video_path": None,
        "features": features,
    }


# --- import: reading and checking a v3 folder ---------------------------------------------------------

@dataclass
class _Source:
    """A LeRobot v3 folder read and checked: info.json, episodes in frame order, the frames, the tasks."""

    root: Path
    info: dict[str, Any]
    episodes: dict[str, list[Any]]
    frames: dict[str, np.ndarray]
    tasks: dict[int, str]

    @property
    def lengths(self) -> list[int]:
        return [int(n) for n in self.episodes["length"]]

    def rows(self, episodes: Sequence[int]) -> np.ndarray:
        """Frame rows of the given episodes (positions in `episodes`), in order."""
        starts, stops = self.episodes["dataset_from_index"], self.episodes["dataset_to_index"]
        return np.concatenate([np.arange(starts[i], stops[i]) for i in episodes]).astype(np.int64)

    def task_names(self, rows: np.ndarray) -> list[str]:
        return [self.tasks[i] for i in self.frames["task_index"][rows].tolist()]


def import_lerobot(input_dir: str | Path, output_dir: str | Path) -> TrajectoryStore:
    """A new store at `output_dir` from the LeRobotDataset v3 folder `input_dir`: exact for a folder
    `export_lerobot` wrote (it holds meta/bclm_dataset.json), state and action only for any other."""
    root = Path(input_dir)
    info = _read_info(root)
    bclm_meta = root / BCLM_META_PATH
    if bclm_meta.is_file():
        # meta/ holds the store's own metadata file, so the store's reader checks format, version and spaces.
        original = TrajectoryStore(bclm_meta.parent)
        sources = {column: _exported_name(column, info["features"])
                   for column, _ in _leaves(original.observation_space, original.action_space)}
        wanted = [*sources.values(), *STEP_FEATURES.values(), "frame_index"]
        return _import_bclm(_read_source(root, info, wanted), original, sources, Path(output_dir))
    observation, action = _foreign_features(root, info["features"])
    optional = [name for name in ("next.reward", "next.done") if name in info["features"]]
    source = _read_source(root, info, [*observation, *action, *optional])
    observation_space, observation_sources = _space_tree(source, observation, "observation", "observation.state")
    action_space, action_sources = _space_tree(source, action, "action", "action")
    # A demonstration's executed action is its expert label.
    expert_sources = {"expert_action" + column[len("action"):]: name for column, name in action_sources.items()}
    sources = {**observation_sources, **action_sources, **expert_sources}
    return _import_foreign(source, observation_space, action_space, sources, Path(output_dir))


def _read_info(root: Path) -> dict[str, Any]:
    path = root / INFO_PATH
    if not path.is_file():
        raise BCLMError(f"{path} not found: {root} is not a LeRobot dataset (expected meta/info.json)")
    try:
        info = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BCLMError(f"{path} is not valid JSON: {e}") from None
    _check_version(path, info.get("codebase_version"))
    for key in ("total_frames", "total_episodes", "features"):
        if key not in info:
            raise BCLMError(f"{path}: field {key!r} is missing (every LeRobot v3 info.json has it)")
    return info


def _check_version(path: Path, version: Any) -> None:
    match = re.fullmatch(r"v(\d+)\.(\d+)", str(version))
    if match is None:
        raise BCLMError(f"{path}: codebase_version {version!r} is not a LeRobot version (expected 'v3.0')")
    major = int(match[1])
    if major > CODEBASE_MAJOR:
        raise BCLMError(f"{path}: codebase_version {version} is newer than this bclm reads ({CODEBASE_VERSION}); "
                        "upgrade bclm")
    if major < CODEBASE_MAJOR:
        raise BCLMError(f"{path}: codebase_version {version} is an older LeRobot layout; bclm reads "
                        f"{CODEBASE_VERSION}: convert it first with lerobot's "
                        "`python -m lerobot.datasets.v30.convert_dataset_v21_to_v30 --repo-id=...`")


def _read_source(root: Path, info: dict[str, Any], wanted: Sequence[str]) -> _Source:
    names = list(dict.fromkeys([*wanted, "episode_index", "task_index"]))
    unlisted = [name for name in names if name not in info["features"]]
    if unlisted:
        raise BCLMError(f"{root / INFO_PATH}: features {unlisted} are missing from 'features' (expected for "
                        f"{'a bclm export' if (root / BCLM_META_PATH).is_file() else 'any LeRobot v3 dataset'})")
    source = _Source(root, info, _read_episodes(root), _read_frames(root, info, names), _read_tasks(root))
    _check_counts(source)
    return source


def _read_episodes(root: Path) -> dict[str, list[Any]]:
    """meta/episodes without the per-episode stats, sorted by first frame."""
    paths = sorted((root / "meta" / "episodes").glob("*/*.parquet"))
    if not paths:
        raise BCLMError(f"{root / 'meta' / 'episodes'}: no chunk-*/file-*.parquet (LeRobot v3 episode metadata)")
    tables = []
    for path in paths:
        columns = [c for c in pq.read_schema(path).names if not c.startswith("stats/")]
        for required in ("episode_index", "length", "dataset_from_index", "dataset_to_index"):
            if required not in columns:
                raise BCLMError(f"{path}: column {required!r} is missing (every LeRobot v3 episode row has it)")
        tables.append(pq.read_table(path, columns=columns))
    table = pa.concat_tables(tables, promote_options="default")
    order = np.argsort(np.asarray(table["dataset_from_index"]), kind="stable")
    return table.take(order).to_pydict()


def _read_frames(root: Path, info: dict[str, Any], names: Sequence[str]) -> dict[str, np.ndarray]:
    """The named features of every data file, concatenated in file order (lerobot's global frame index)."""
    paths = sorted((root / "data").glob("*/*.parquet"))
    if not paths:
        raise BCLMError(f"{root / 'data'}: no chunk-*/file-*.parquet data files")
    listed = [name for name, ft in info["features"].items() if ft.get("dtype") != "video"]
    tables = []
    for path in paths:
        present = set(pq.read_schema(path).names)
        missing = [name for name in listed if name not in present]
        if missing:
            raise BCLMError(f"{path}: features {missing} listed in {root / INFO_PATH} are missing from the data")
        tables.append(pq.read_table(path, columns=list(names)).replace_schema_metadata(None))
    return datasets.Dataset(pa.concat_tables(tables)).with_format("numpy")[:]


def _read_tasks(root: Path) -> dict[int, str]:
    path = root / TASKS_PATH
    if not path.is_file():
        raise BCLMError(f"{path} not found (LeRobot v3 keeps the task strings there)")
    frame = pd.read_parquet(path)
    if "task_index" not in frame.columns:
        raise BCLMError(f"{path}: column 'task_index' is missing")
    names = frame["task"] if "task" in frame.columns else frame.index
    return {int(i): str(task) for i, task in zip(frame["task_index"], names)}


def _check_counts(source: _Source) -> None:
    """info.json's totals and each episode's frame range agree with the data, and the episodes tile it."""
    info_path, n = source.root / INFO_PATH, len(source.frames["episode_index"])
    if int(source.info["total_frames"]) != n:
        raise BCLMError(f"{info_path}: total_frames is {source.info['total_frames']} but the data files hold "
                        f"{n} frames")
    if int(source.info["total_episodes"]) != len(source.lengths):
        raise BCLMError(f"{info_path}: total_episodes is {source.info['total_episodes']} but meta/episodes lists "
                        f"{len(source.lengths)}")
    expected_start = 0
    for i, length in enumerate(source.lengths):
        episode = source.episodes["episode_index"][i]
        start, stop = source.episodes["dataset_from_index"][i], source.episodes["dataset_to_index"][i]
        where = f"{source.root / 'meta' / 'episodes'}: episode {episode}"
        if start != expected_start or stop - start != length or stop > n:
            raise BCLMError(f"{where}: length {length}, frames [{start}, {stop}) do not match the data "
                            f"(expected frames from {expected_start}, {n} frames in all)")
        if not (source.frames["episode_index"][start:stop] == episode).all():
            raise BCLMError(f"{where}: data frames [{start}, {stop}) carry another episode_index")
        expected_start = stop
    if expected_start != n:
        raise BCLMError(f"{source.root / 'meta' / 'episodes'}: episodes cover {expected_start} of {n} frames")
    unknown = set(source.frames["task_index"].tolist()) - set(source.tasks)
    if unknown:
        raise BCLMError(f"{source.root / TASKS_PATH}: task_index {sorted(unknown)} used by the data is not listed")


# --- import: building the store ---------------------------------------------------------------------

def _leaf_columns(source: _Source, rows: np.ndarray, observation_space: gym.Space, action_space: gym.Space,
                  sources: dict[str, str]) -> dict[str, Any]:
    """Store leaf columns from their LeRobot features: scalars 1-D, arrays flattened per step, text as str."""
    columns: dict[str, Any] = {}
    for column, leaf in _leaves(observation_space, action_space):
        values = source.frames[sources[column]][rows]
        if isinstance(leaf, gym.spaces.Text):
            columns[column] = [str(v) for v in values.tolist()]
        else:
            values = np.asarray(values, dtype=leaf.dtype)
            columns[column] = values.reshape(len(rows), -1) if leaf.shape else values.reshape(len(rows))
    return columns


def _episode_values(source: _Source, episodes: Sequence[int], key: str) -> list[Any]:
    if key not in source.episodes:
        raise BCLMError(f"{source.root / 'meta' / 'episodes'}: column {key!r} is missing (bclm writes it with "
                        f"{BCLM_META_PATH})")
    return [source.episodes[key][i] for i in episodes]


def _repeat(values: list[Any], lengths: list[int], column: str) -> np.ndarray | list[str]:
    dtype = PROVENANCE[column].dtype
    if dtype == "string":
        return [v for v, n in zip(values, lengths) for _ in range(n)]
    return np.repeat(np.asarray(values, dtype=dtype), lengths)


def _import_bclm(source: _Source, original: TrajectoryStore, sources: dict[str, str], output: Path) -> TrajectoryStore:
    shard_of = _episode_values(source, range(len(source.lengths)), SHARD_COLUMN)
    shards = {name: [i for i, s in enumerate(shard_of) if s == name] for name in dict.fromkeys(shard_of)}
    origin = {k: v for k, v in original.meta.items() if k not in TrajectoryStore.OWN_KEYS}
    with staged_dir(output) as tmp:
        store = TrajectoryStore.create(tmp, original.observation_space, original.action_space,
                                       env_id=original.meta["env_id"], task=original.meta["task"], origin=origin)
        for name, episodes in shards.items():
            _write_bclm_shard(store, source, name, episodes, sources)
    return TrajectoryStore(output)


def _write_bclm_shard(store: TrajectoryStore, source: _Source, name: str, episodes: list[int],
                      sources: dict[str, str]) -> None:
    rows = source.rows(episodes)
    lengths = [source.lengths[i] for i in episodes]
    columns = _leaf_columns(source, rows, store.observation_space, store.action_space, sources)
    columns.update({column: np.asarray(source.frames[feature][rows], dtype=PROVENANCE[column].dtype)
                    for column, feature in STEP_FEATURES.items()})
    columns["step"] = source.frames["frame_index"][rows].astype(PROVENANCE["step"].dtype)
    columns["task"] = source.task_names(rows)
    for column in ("episode", *EPISODE_CONSTANTS):
        columns[column] = _repeat(_episode_values(source, episodes, f"bclm/{column}"), lengths, column)
    store.write_columns(name, columns)


def _group(name: str) -> str | None:
    if name.startswith("observation."):
        return "observation"
    return "action" if name == "action" or name.startswith("action.") else None


def _state_dtype(ft: dict[str, Any]) -> np.dtype | None:
    """The numpy dtype of a numeric (or bool) feature; None for cameras, text and anything else."""
    try:
        dtype = np.dtype(ft.get("dtype"))
    except TypeError:
        return None
    return dtype if dtype.kind in "biuf" else None


def _foreign_features(root: Path, features: dict[str, dict[str, Any]]) -> tuple[list[str], list[str]]:
    """The observation and action features bclm imports; the others of those groups are logged as skipped."""
    grouped = {"observation": [], "action": []}
    skipped = []
    for name, ft in features.items():
        group = _group(name)
        if group is not None:
            (grouped[group] if _state_dtype(ft) is not None else skipped).append(name)
    if skipped:
        log.warning("%s: skipping %s (camera or text features; bclm imports state and action only)",
                    root, ", ".join(skipped))
    for group, names in grouped.items():
        if not names:
            example = "observation.state" if group == "observation" else "action"
            raise BCLMError(f"{root / INFO_PATH}: no numeric {group} feature (e.g. {example}) to import")
    return grouped["observation"], grouped["action"]


def _read_stats(root: Path) -> dict[str, dict[str, Any]]:
    path = root / STATS_PATH
    return json.loads(path.read_text()) if path.is_file() else {}


def _feature_space(ft: dict[str, Any], values: np.ndarray, stats: dict[str, Any]) -> gym.Space:
    """Floats: unbounded Box (bclm's tokenizer fits bounds from the data). Ints: Box bounded by the data and
    stats.json's min/max. Bools: MultiBinary."""
    shape, dtype = tuple(int(s) for s in ft["shape"]), _state_dtype(ft)
    if dtype == np.bool_:
        return gym.spaces.MultiBinary(list(shape))
    if dtype.kind == "f":
        return gym.spaces.Box(-np.inf, np.inf, shape, dtype)
    data = np.asarray(values).reshape(len(values), *shape)
    low, high = data.min(axis=0), data.max(axis=0)
    if np.shape(stats.get("min")) == shape == np.shape(stats.get("max")):
        low, high = np.minimum(low, np.asarray(stats["min"])), np.maximum(high, np.asarray(stats["max"]))
    return gym.spaces.Box(low.astype(dtype), high.astype(dtype), shape, dtype)


def _space_tree(source: _Source, names: list[str], prefix: str, single: str) -> tuple[gym.Space, dict[str, str]]:
    """One feature named `single` is the whole space; several become a Dict keyed by the name after
    `prefix.`. Returns the space and {bclm column: LeRobot feature}."""
    stats = _read_stats(source.root)
    features = source.info["features"]
    spaces = {name: _feature_space(features[name], source.frames[name], stats.get(name, {})) for name in names}
    if names == [single]:
        return spaces[single], {prefix: single}
    keys = {name: name.removeprefix(f"{prefix}.") for name in names}
    space = gym.spaces.Dict({keys[name]: spaces[name] for name in names})
    return space, {f"{prefix}.{keys[name]}": name for name in names}


def _end_flags(source: _Source) -> tuple[np.ndarray, np.ndarray]:
    """terminated / truncated per frame: only an episode's last frame ends it, terminated when LeRobot's
    next.done says so there (LeRobot has no separate truncation flag), truncated otherwise."""
    n, last = len(source.frames["episode_index"]), np.cumsum(source.lengths) - 1
    done = np.zeros(len(last), bool)
    if "next.done" in source.frames:
        done = source.frames["next.done"].reshape(n, -1)[last, 0].astype(bool)
    terminated, truncated = np.zeros(n, bool), np.zeros(n, bool)
    terminated[last], truncated[last] = done, ~done
    return terminated, truncated


def _import_foreign(source: _Source, observation_space: gym.Space, action_space: gym.Space,
                    sources: dict[str, str], output: Path) -> TrajectoryStore:
    lengths, n = source.lengths, len(source.frames["episode_index"])
    rows = np.arange(n)
    terminated, truncated = _end_flags(source)
    reward = source.frames.get("next.reward", np.zeros(n)).reshape(n, -1)[:, 0]
    columns = _leaf_columns(source, rows, observation_space, action_space, sources)
    columns.update({
        "episode": np.repeat(np.arange(len(lengths), dtype=np.int64), lengths),
        "step": np.concatenate([np.arange(k, dtype=np.int32) for k in lengths]),
        "reward": reward.astype(np.float32), "terminated": terminated, "truncated": truncated,
        "task": source.task_names(rows),
        "round": np.zeros(n, np.int32), "source": ["lerobot"] * n,
        "expert_used": np.ones(n, bool), "labeled": np.ones(n, bool),
        "beta": np.ones(n, np.float32), "policy_revision": [""] * n,
    })
    tasks = list(dict.fromkeys(columns["task"]))
    env_id = source.info.get("robot_type") or f"lerobot:{source.root.resolve().name}"
    with staged_dir(output) as tmp:
        TrajectoryStore.create(tmp, observation_space, action_space, env_id=env_id,
                               task=tasks[0] if len(tasks) == 1 else env_id).write_columns("round-000", columns)
    return TrajectoryStore(output)
