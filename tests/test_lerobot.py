"""LeRobotDataset v3.0 export/import and the imitation .npz import."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import datasets
import gymnasium as gym
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from bclm.data.imitation import import_imitation_npz
from bclm.data.lerobot import export_lerobot, import_lerobot, plan_data_files
from bclm.data.store import META_FILE, EpisodeRecord, TrajectoryStore
from bclm.errors import BCLMError
from bclm.tokenizers import BCTokenizer, TokenizerConfig

OBS = gym.spaces.Dict({
    "pos": gym.spaces.Box(-1, 1, (2, 3), np.float32),
    "image": gym.spaces.Box(0, 255, (3, 3, 3), np.uint8),
    "direction": gym.spaces.Discrete(4),
    "mission": gym.spaces.Text(24),
})
ACT = gym.spaces.MultiDiscrete([3, 5])
MISSIONS = ("go to the red ball", "pick up the key")
DEFAULT_FEATURES = {"timestamp": "float32", "frame_index": "int64", "episode_index": "int64", "index": "int64",
                    "task_index": "int64"}
QUANTILE_STATS = {"min", "max", "mean", "std", "count", "q01", "q10", "q50", "q90", "q99"}


def _episode(length: int, seed: int, *, beta: float = 1.0, truncated: bool = False) -> EpisodeRecord:
    rng = np.random.default_rng(seed)
    mission = MISSIONS[seed % 2]
    act = np.stack([rng.integers(0, 3, length), rng.integers(0, 5, length)], 1)
    expert = act.copy()
    expert[::2, 0] = (expert[::2, 0] + 1) % 3            # the learner disagrees with its label on some steps
    return EpisodeRecord(
        observation={"pos": rng.uniform(-1, 1, (length, 2, 3)).astype(np.float32),
                     "image": rng.integers(0, 256, (length, 3, 3, 3)).astype(np.uint8),
                     "direction": rng.integers(0, 4, length),
                     "mission": np.array([mission] * length, dtype=object)},
        action={"": act}, expert_action={"": expert}, reward=rng.normal(size=length).astype(np.float32),
        terminated=not truncated, truncated=truncated, task=mission, success=not truncated,
        expert_used=rng.random(length) < 0.5, labeled=np.arange(length) != 1, beta=beta)


@pytest.fixture
def synthetic_store(tmp_path: Path) -> TrajectoryStore:
    """Two shards with different round / source / beta / policy revision, two task strings."""
    store = TrajectoryStore.create(tmp_path / "store", OBS, ACT, env_id="Toy-v0", task="toy")
    store.write_shard("round-000", [_episode(5, 0), _episode(3, 1)])
    store.write_shard("round-001", [_episode(4, 2, beta=0.5, truncated=True)], round_index=1, source="dagger",
                      policy_revision="rev-1")
    return store


def assert_stores_equal(a: TrajectoryStore, b: TrajectoryStore) -> None:
    """Same metadata, shard names, features and every value of every column, dtype included."""
    assert json.loads((a.path / META_FILE).read_text()) == json.loads((b.path / META_FILE).read_text())
    assert a.shard_names() == b.shard_names()
    for name in a.shard_names():
        da, db = a.load([name]), b.load([name])
        assert da.features == db.features
        ca, cb = da[:], db[:]
        assert list(ca) == list(cb)
        for column in ca:
            x, y = np.asarray(ca[column]), np.asarray(cb[column])
            assert x.dtype == y.dtype and x.shape == y.shape, column
            assert x.tobytes() == y.tobytes(), column          # bit for bit, floats included


def spec_hf_features(features: dict) -> datasets.Features:
    """The v3 spec oracle: lerobot's get_hf_features_from_features, restated."""
    out = {}
    for key, ft in features.items():
        shape = tuple(ft["shape"])
        if ft["dtype"] in ("video", "image"):
            continue
        if shape == (1,):
            out[key] = datasets.Value(dtype=ft["dtype"])
        elif len(shape) == 1:
            out[key] = datasets.Sequence(length=shape[0], feature=datasets.Value(dtype=ft["dtype"]))
        else:
            out[key] = {2: datasets.Array2D, 3: datasets.Array3D, 4: datasets.Array4D,
                        5: datasets.Array5D}[len(shape)](shape=shape, dtype=ft["dtype"])
    return datasets.Features(out)


# --- export and import round trips -------------------------------------------------------------------

def test_synthetic_store_round_trips_exactly_across_files_and_chunks(synthetic_store, tmp_path):
    # A tiny file limit puts each episode in its own file; two files per chunk make a second chunk.
    out = export_lerobot(synthetic_store.path, tmp_path / "lerobot", fps=10, chunks_size=2,
                         data_files_size_in_mb=1e-9)
    files = sorted(str(p.relative_to(out)) for p in (out / "data").glob("*/*.parquet"))
    assert files == ["data/chunk-000/file-000.parquet", "data/chunk-000/file-001.parquet",
                     "data/chunk-001/file-000.parquet"]
    episodes = pd.read_parquet(out / "meta/episodes/chunk-000/file-000.parquet")
    assert episodes["data/chunk_index"].tolist() == [0, 0, 1]
    assert episodes["data/file_index"].tolist() == [0, 1, 0]
    imported = import_lerobot(out, tmp_path / "back")
    assert_stores_equal(synthetic_store, imported)


def test_an_export_written_before_img_still_imports_exactly(synthetic_store, tmp_path):
    """Exports before the "img" spelling named the leaf "observation.image": they import as before."""
    out = export_lerobot(synthetic_store.path, tmp_path / "lerobot", fps=10)
    for name in ("meta/info.json", "meta/stats.json"):
        body = json.loads((out / name).read_text())
        table = body["features"] if name.endswith("info.json") else body
        table["observation.image"] = table.pop("observation.img")
        (out / name).write_text(json.dumps(body))
    for path in (out / "data").rglob("*.parquet"):
        table = pq.read_table(path)
        pq.write_table(table.rename_columns(["observation.image" if c == "observation.img" else c
                                             for c in table.column_names]), path)
    assert_stores_equal(synthetic_store, import_lerobot(out, tmp_path / "back"))


def test_cartpole_store_round_trips_exactly(tmp_path):
    from bclm.collect import collect
    from bclm.envs import get_task

    collect(get_task("CartPole-v1"), None, 3, tmp_path / "cartpole", num_envs=3)
    out = export_lerobot(tmp_path / "cartpole", tmp_path / "lerobot", robot_type="cartpole")
    info = json.loads((out / "meta/info.json").read_text())
    assert info["features"]["observation.state"] == {"dtype": "float32", "shape": [4], "names": None}
    assert info["features"]["action"]["shape"] == [1] and info["robot_type"] == "cartpole"
    assert_stores_equal(TrajectoryStore(tmp_path / "cartpole"), import_lerobot(out, tmp_path / "back"))


def test_export_layout_follows_the_v3_spec(synthetic_store, tmp_path):
    out = export_lerobot(synthetic_store.path, tmp_path / "lerobot", fps=15)
    info = json.loads((out / "meta/info.json").read_text())
    assert set(info) == {"codebase_version", "robot_type", "total_episodes", "total_frames", "total_tasks",
                         "chunks_size", "data_files_size_in_mb", "video_files_size_in_mb", "fps", "splits",
                         "data_path", "video_path", "features"}
    assert info["codebase_version"] == "v3.0" and info["robot_type"] is None and info["fps"] == 15
    assert (info["total_episodes"], info["total_frames"], info["total_tasks"]) == (3, 12, 2)
    assert (info["chunks_size"], info["data_files_size_in_mb"], info["video_files_size_in_mb"]) == (1000, 100, 500)
    assert info["splits"] == {"train": "0:3"} and info["video_path"] is None
    assert info["data_path"] == "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet"
    features = info["features"]
    for name, dtype in DEFAULT_FEATURES.items():
        assert features[name] == {"dtype": dtype, "shape": [1], "names": None}
    assert features["observation.pos"]["shape"] == [2, 3] and features["observation.pos"]["dtype"] == "float32"
    # "img": lerobot takes any feature named "image" for a camera frame (and refuses its statistics)
    assert features["observation.img"] == {"dtype": "uint8", "shape": [3, 3, 3], "names": None}
    assert not any("image" in name for name in features)
    assert features["observation.direction"]["shape"] == [1]
    assert features["observation.mission"]["dtype"] == "string"
    assert features["action"] == {"dtype": "int64", "shape": [2], "names": None}
    for name in ("next.reward", "next.done", "next.terminated", "next.truncated", "bclm.expert_used",
                 "bclm.labeled", "expert_action"):
        assert name in features

    tasks = pd.read_parquet(out / "meta/tasks.parquet")
    assert tasks.index.name == "task" and list(tasks.columns) == ["task_index"]
    assert tasks["task_index"].dtype == np.int64 and tasks.index.tolist() == list(MISSIONS)

    data = datasets.Dataset.from_parquet(str(out / "data/chunk-000/file-000.parquet"))
    assert data.features == spec_hf_features(features)
    assert data["index"] == list(range(12)) and data["episode_index"] == [0] * 5 + [1] * 3 + [2] * 4
    assert data["frame_index"][:6] == [0, 1, 2, 3, 4, 0]
    assert np.allclose(data["timestamp"][:3], [0, 1 / 15, 2 / 15])
    assert data["next.done"] == [i in (4, 7, 11) for i in range(12)]
    assert data["task_index"] == [0] * 5 + [1] * 3 + [0] * 4

    episodes = pd.read_parquet(out / "meta/episodes/chunk-000/file-000.parquet")
    for column in ("episode_index", "tasks", "length", "data/chunk_index", "data/file_index",
                   "dataset_from_index", "dataset_to_index", "meta/episodes/chunk_index",
                   "meta/episodes/file_index", "stats/observation.pos/mean", "bclm/shard", "bclm/round"):
        assert column in episodes.columns, column
    assert episodes["length"].tolist() == [5, 3, 4]
    assert episodes["dataset_from_index"].tolist() == [0, 5, 8]
    assert episodes["dataset_to_index"].tolist() == [5, 8, 12]
    assert [list(t) for t in episodes["tasks"]] == [[MISSIONS[0]], [MISSIONS[1]], [MISSIONS[0]]]
    assert episodes["bclm/shard"].tolist() == ["round-000", "round-000", "round-001"]
    assert episodes["bclm/source"].tolist() == ["expert", "expert", "dagger"]
    assert episodes["bclm/beta"].tolist() == [1.0, 1.0, 0.5]
    assert not any(c.startswith("stats/observation.mission") for c in episodes.columns)

    stats = json.loads((out / "meta/stats.json").read_text())
    assert "observation.mission" not in stats
    for name, ft in features.items():
        if ft["dtype"] != "string":
            assert set(stats[name]) == QUANTILE_STATS, name
            assert np.shape(stats[name]["mean"]) == tuple(ft["shape"]), name
            assert stats[name]["count"] == [12]
    assert (out / "meta" / META_FILE).is_file()


def test_plan_data_files_starts_new_files_and_chunks():
    # 1 MB per frame, a 10 MB limit: episodes of 4, 4 share a file; the next 4 would reach the limit.
    assert plan_data_files([4, 4, 4, 20, 1], 1.0, 10, chunks_size=2) == [(0, 0), (0, 0), (0, 1), (1, 0), (1, 1)]


# --- foreign datasets --------------------------------------------------------------------------------

def write_v3(root: Path, *, lengths=(3, 2), version: str = "v3.0", drop: str | None = None,
             total_frames: int | None = None, environment_state: bool = False) -> Path:
    """A minimal hand-written LeRobot v3 dataset: state [4], action [2], a camera stored as video (and, if
    asked, an integer environment state [2] with stats.json bounds wider than its data)."""
    rng = np.random.default_rng(0)
    n = sum(lengths)
    features = {
        "observation.state": {"dtype": "float32", "shape": [4], "names": None},
        "action": {"dtype": "float32", "shape": [2], "names": None},
        "observation.images.top": {"dtype": "video", "shape": [8, 8, 3], "names": ["height", "width", "channels"]},
        "next.reward": {"dtype": "float32", "shape": [1], "names": None},
        "next.done": {"dtype": "bool", "shape": [1], "names": None},
        **{k: {"dtype": v, "shape": [1], "names": None} for k, v in DEFAULT_FEATURES.items()},
    }
    episode_index = np.repeat(np.arange(len(lengths)), lengths)
    frame_index = np.concatenate([np.arange(k) for k in lengths])
    last = np.cumsum(lengths) - 1
    columns = {
        "observation.state": rng.normal(size=(n, 4)).astype(np.float32),
        "action": rng.normal(size=(n, 2)).astype(np.float32),
        "next.reward": np.arange(n, dtype=np.float32),
        "next.done": np.isin(np.arange(n), last[:1]),            # episode 0 terminates, episode 1 is cut off
        "timestamp": (frame_index / 10).astype(np.float32), "frame_index": frame_index,
        "episode_index": episode_index, "index": np.arange(n), "task_index": episode_index % 2,
    }
    if environment_state:
        features["observation.environment_state"] = {"dtype": "int64", "shape": [2], "names": None}
        columns["observation.environment_state"] = np.stack([np.arange(n), -np.arange(n)], 1)
        (root / "meta").mkdir(parents=True)
        (root / "meta/stats.json").write_text(json.dumps({"observation.environment_state": {
            "min": [-1, -9], "max": [9, 0], "mean": [0, 0], "std": [1, 1], "count": [n]}}))
    if drop:
        del columns[drop]
    (root / "data/chunk-000").mkdir(parents=True)
    datasets.Dataset.from_dict(columns, features=spec_hf_features(
        {k: v for k, v in features.items() if k in columns})).to_parquet(str(root / "data/chunk-000/file-000.parquet"))
    info = {"codebase_version": version, "robot_type": None, "total_episodes": len(lengths),
            "total_frames": n if total_frames is None else total_frames, "total_tasks": 2, "chunks_size": 1000,
            "data_files_size_in_mb": 100, "video_files_size_in_mb": 500, "fps": 10,
            "splits": {"train": f"0:{len(lengths)}"},
            "data_path": "data/chunk-{chunk_index:03d}/file-{file_index:03d}.parquet",
            "video_path": "videos/{video_key}/chunk-{chunk_index:03d}/file-{file_index:03d}.mp4", "features": features}
    (root / "meta/episodes/chunk-000").mkdir(parents=True, exist_ok=True)
    (root / "meta/info.json").write_text(json.dumps(info))
    pd.DataFrame({"task_index": [0, 1]}, index=pd.Index(["push the block", "stack"], name="task")).to_parquet(
        root / "meta/tasks.parquet")
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]])
    pq.write_table(pa.table({"episode_index": list(range(len(lengths))), "tasks": [["push the block"], ["stack"]],
                             "length": list(lengths), "dataset_from_index": starts.tolist(),
                             "dataset_to_index": (starts + lengths).tolist()}),
                   root / "meta/episodes/chunk-000/file-000.parquet")
    return root


def test_foreign_dataset_imports_state_and_action(tmp_path, caplog):
    root = write_v3(tmp_path / "so100_push")
    with caplog.at_level(logging.WARNING, logger="bclm.data.lerobot"):
        store = import_lerobot(root, tmp_path / "imported")
    assert "observation.images.top" in caplog.text
    assert store.observation_space == gym.spaces.Box(-np.inf, np.inf, (4,), np.float32)
    assert store.action_space == gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    assert store.meta["env_id"] == "lerobot:so100_push" and store.meta["task"] == "lerobot:so100_push"
    assert store.shard_names() == ["round-000"]
    steps = store.arrays()
    source = datasets.Dataset.from_parquet(str(root / "data/chunk-000/file-000.parquet")).with_format("numpy")[:]
    np.testing.assert_array_equal(steps.observation, source["observation.state"])
    np.testing.assert_array_equal(steps.action, source["action"])
    np.testing.assert_array_equal(steps.expert_action, source["action"])
    cols = steps.columns
    assert cols["episode"].tolist() == [0, 0, 0, 1, 1] and cols["step"].tolist() == [0, 1, 2, 0, 1]
    assert cols["reward"].tolist() == [0, 1, 2, 3, 4]
    assert cols["terminated"].tolist() == [False, False, True, False, False]
    assert cols["truncated"].tolist() == [False, False, False, False, True]
    assert cols["task"].tolist() == ["push the block"] * 3 + ["stack"] * 2
    assert set(cols["source"].tolist()) == {"lerobot"}
    # The unbounded Boxes tokenize: bclm's tokenizer fits their bounds from the data.
    tokenizer = BCTokenizer(store.observation_space, store.action_space, TokenizerConfig(obs_bins=16, action_bins=16))
    tokenizer.fit(steps.observation, steps.action)


def test_several_foreign_state_features_become_a_dict(tmp_path):
    store = import_lerobot(write_v3(tmp_path / "ds", environment_state=True), tmp_path / "imported")
    space = store.observation_space
    assert set(space.spaces) == {"state", "environment_state"}
    # Integer bounds: stats.json's min/max where wider than the data, the data's where stats is narrower.
    np.testing.assert_array_equal(space["environment_state"].low, [-1, -9])
    np.testing.assert_array_equal(space["environment_state"].high, [9, 0])
    assert store.arrays().observation["environment_state"][:, 0].tolist() == [0, 1, 2, 3, 4]


def test_lerobot_reads_the_export(synthetic_store, tmp_path):
    """With lerobot installed: its own reader loads an export (several files and chunks), with time windows."""
    lerobot_dataset = pytest.importorskip("lerobot.datasets.lerobot_dataset")
    out = export_lerobot(synthetic_store.path, tmp_path / "lerobot", fps=10, chunks_size=2,
                         data_files_size_in_mb=1e-9)
    ds = lerobot_dataset.LeRobotDataset("local/toy", root=out, delta_timestamps={"action": [0.0, 0.1]})
    assert (len(ds), ds.num_episodes) == (12, 3)
    item = ds[11]
    assert item["task"] == MISSIONS[0] and tuple(item["observation.img"].shape) == (3, 3, 3)
    assert item["action_is_pad"].tolist() == [False, True]


# --- errors ------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("version", "match"), [("v4.0", "newer than this bclm reads.*upgrade bclm"),
                                                ("v2.1", "convert_dataset_v21_to_v30")])
def test_unsupported_codebase_version_is_named(tmp_path, version, match):
    root = write_v3(tmp_path / "ds", version=version)
    with pytest.raises(BCLMError, match=f"info.json: codebase_version {version}.*{match}"):
        import_lerobot(root, tmp_path / "out")


def test_missing_info_feature_and_count_errors(tmp_path):
    with pytest.raises(BCLMError, match=r"meta/info\.json not found"):
        import_lerobot(tmp_path, tmp_path / "out")
    root = write_v3(tmp_path / "missing", drop="action")
    with pytest.raises(BCLMError, match=r"file-000.parquet: features \['action'\] listed in .*info.json are missing"):
        import_lerobot(root, tmp_path / "out")
    root = write_v3(tmp_path / "frames", total_frames=7)
    with pytest.raises(BCLMError, match="total_frames is 7 but the data files hold 5 frames"):
        import_lerobot(root, tmp_path / "out")
    root = write_v3(tmp_path / "lengths")
    episodes = root / "meta/episodes/chunk-000/file-000.parquet"
    pq.write_table(pq.read_table(episodes).set_column(2, "length", pa.array([4, 1])), episodes)
    with pytest.raises(BCLMError, match=r"episode 0: length 4, frames \[0, 3\) do not match the data"):
        import_lerobot(root, tmp_path / "out")


def test_newer_bclm_format_and_non_empty_outputs_are_refused(synthetic_store, tmp_path):
    out = export_lerobot(synthetic_store.path, tmp_path / "lerobot")
    with pytest.raises(BCLMError, match="not empty"):
        export_lerobot(synthetic_store.path, out)
    with pytest.raises(BCLMError, match="not empty"):
        import_lerobot(out, synthetic_store.path)
    meta = json.loads((out / "meta" / META_FILE).read_text())
    (out / "meta" / META_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(BCLMError, match=f"meta/{META_FILE}: format_version 99 is newer.*upgrade bclm"):
        import_lerobot(out, tmp_path / "back")


# --- imitation .npz ----------------------------------------------------------------------------------

def write_imitation_npz(path: Path, **overrides) -> Path:
    """Two CartPole trajectories of 3 and 2 steps as imitation's `types.save` wrote them."""
    rng = np.random.default_rng(1)
    arrays = {
        "obs": rng.normal(size=(3 + 1 + 2 + 1, 4)).astype(np.float32),   # each trajectory's final obs included
        "acts": np.array([0, 1, 1, 0, 1]),
        "infos": np.array([{}] * 5, dtype=object),
        "terminal": np.array([True, False]),
        "indices": np.array([3]),
        "rews": np.ones(5, dtype=np.float32),
        **overrides,
    }
    np.savez_compressed(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def test_imitation_npz_drops_final_observations(tmp_path):
    path = write_imitation_npz(tmp_path / "demos.npz")
    store = import_imitation_npz(path, tmp_path / "store", env_id="CartPole-v1")
    assert store.meta["env_id"] == "CartPole-v1" and store.meta["task"] == "CartPole-v1"
    steps = store.arrays()
    obs = np.load(path)["obs"]
    np.testing.assert_array_equal(steps.observation, np.concatenate([obs[0:3], obs[4:6]]))
    assert steps.action.tolist() == [0, 1, 1, 0, 1]
    assert steps.columns["episode"].tolist() == [0, 0, 0, 1, 1]
    assert steps.columns["terminated"].tolist() == [False, False, True, False, False]
    assert steps.columns["truncated"].tolist() == [False, False, False, False, True]
    assert steps.columns["reward"].tolist() == [1.0] * 5


def test_imitation_npz_errors_name_the_key(tmp_path):
    spaces = {"observation_space": gym.spaces.Box(-np.inf, np.inf, (4,), np.float32),
              "action_space": gym.spaces.Discrete(2)}
    cases = [({"indices": None}, r"keys \['indices'\] are missing"),
             ({"indices": np.array([2, 4])}, "'indices' has 2 entries, expected 1"),
             ({"obs": np.zeros((6, 4), np.float32)}, "'obs' has 6 rows, expected 7"),
             ({"rews": np.ones(4, np.float32)}, r"'rews' has shape \(4,\), expected \(5,\)"),
             ({"obs": np.zeros((7, 3), np.float32)}, r"'obs' rows have shape \(3,\)")]
    for i, (overrides, match) in enumerate(cases):
        path = write_imitation_npz(tmp_path / f"bad{i}.npz", **overrides)
        with pytest.raises(BCLMError, match=match):
            import_imitation_npz(path, tmp_path / f"out{i}", env_id="Toy-v0", **spaces)
