"""Trajectory store and training sequences."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

from bclm.data.collate import PadCollator
from bclm.data.sequences import IGNORE_INDEX, WindowDataset, tokenize_episodes, window_index
from bclm.data.store import EpisodeRecord, TrajectoryStore
from bclm.errors import BCLMError
from bclm.tokenizers import BCTokenizer, TokenizerConfig, leaf_arrays

OBS = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,), np.float32), "grid": gym.spaces.MultiDiscrete([3, 4])})
ACT = gym.spaces.Box(-1, 1, (2,), np.float32)


def _episode(length: int, seed: int) -> EpisodeRecord:
    rng = np.random.default_rng(seed)
    obs = {"pos": rng.uniform(-1, 1, (length, 2)).astype(np.float32),
           "grid": np.stack([rng.integers(0, 3, length), rng.integers(0, 4, length)], 1)}
    act = {"": rng.uniform(-1, 1, (length, 2)).astype(np.float32)}
    return EpisodeRecord(observation=leaf_arrays(OBS, obs), action=act, expert_action=None,
                         reward=rng.normal(size=length).astype(np.float32), terminated=True, truncated=False,
                         task="toy", success=True)


def test_store_round_trips_steps_and_provenance(tmp_path):
    store = TrajectoryStore.create(tmp_path / "d", OBS, ACT, env_id="Toy-v0", task="toy")
    eps = [_episode(5, 0), _episode(3, 1)]
    store.write_shard("round-000", eps)
    store.write_shard("round-001", [_episode(4, 2)], round_index=1, source="dagger", policy_revision="abc")
    reopened = TrajectoryStore(tmp_path / "d")
    assert reopened.shard_names() == ["round-000", "round-001"]
    steps = reopened.arrays()
    assert len(steps) == 12
    np.testing.assert_array_equal(steps.observation["pos"][:5], eps[0].observation["pos"])
    np.testing.assert_array_equal(steps.observation["grid"][5:8], eps[1].observation["grid"])
    np.testing.assert_array_equal(steps.action[:5], eps[0].action[""])
    # Episode ids continue across shards; provenance columns are filled.
    assert sorted(set(steps.columns["episode"].tolist())) == [0, 1, 2]
    assert steps.columns["round"].tolist() == [0] * 8 + [1] * 4
    assert steps.columns["terminated"].tolist()[:5] == [False] * 4 + [True]
    assert reopened.observation_space == OBS and reopened.action_space == ACT


def test_episode_ids_count_on_reading_each_shard_once(tmp_path, monkeypatch):
    """A sweep writes one episode per shard, thousands of them: each write must not reload every shard."""
    store = TrajectoryStore.create(tmp_path / "d", OBS, ACT, env_id="Toy-v0", task="toy")
    other = TrajectoryStore(tmp_path / "d")                  # another writer's view of the same directory
    loads = []
    real_load = TrajectoryStore.load
    monkeypatch.setattr(TrajectoryStore, "load", lambda self, shards=None: loads.append(shards) or
                        real_load(self, shards))
    for i in range(6):
        store.write_shard(f"ep-{i:05d}", [_episode(2, i)])
    other.write_shard("ep-00006", [_episode(2, 6), _episode(3, 7)])
    assert all(shards is not None and len(shards) == 1 for shards in loads)     # never the whole store
    assert len(loads) == 6              # only the other writer reads: a store knows the ids it wrote
    assert store.next_episode_id() == 8                     # sees the other writer's shard (ids 6 and 7)
    assert sorted(set(real_load(store)["episode"][:].tolist())) == list(range(8))


def test_store_never_overwrites(tmp_path):
    store = TrajectoryStore.create(tmp_path / "d", OBS, ACT, env_id="Toy-v0", task="toy")
    store.write_shard("round-000", [_episode(3, 0)])
    with pytest.raises(BCLMError, match="already exists"):
        store.write_shard("round-000", [_episode(3, 1)])
    with pytest.raises(BCLMError, match="not empty"):
        TrajectoryStore.create(tmp_path / "d", OBS, ACT, env_id="Toy-v0", task="toy")
    assert len(TrajectoryStore(tmp_path / "d").arrays()) == 3


def test_interrupted_shard_write_is_ignored(tmp_path):
    store = TrajectoryStore.create(tmp_path / "d", OBS, ACT, env_id="Toy-v0", task="toy")
    store.write_shard("round-000", [_episode(3, 0)])
    (tmp_path / "d" / ".tmp-round-001-deadbeef").mkdir()          # what a crash mid-write leaves
    (tmp_path / "d" / "round-002").mkdir()                         # a shard without its metadata
    assert store.shard_names() == ["round-000"]


def test_newer_format_and_missing_meta_are_clear_errors(tmp_path):
    with pytest.raises(BCLMError, match=r"bclm_dataset\.json not found"):
        TrajectoryStore(tmp_path)
    store = TrajectoryStore.create(tmp_path / "d", OBS, ACT, env_id="Toy-v0", task="toy")
    meta = json.loads((store.path / "bclm_dataset.json").read_text())
    meta["format_version"] = 99
    (store.path / "bclm_dataset.json").write_text(json.dumps(meta))
    with pytest.raises(BCLMError, match="format_version 99"):
        TrajectoryStore(store.path)


def test_window_index_covers_every_step():
    idx = window_index(np.array([10, 3]), per_window=4, stride=2)
    covered = {(e, s + k) for e, s, n in idx for k in range(n)}
    assert covered == {(0, t) for t in range(10)} | {(1, t) for t in range(3)}
    assert all(n == 4 for e, s, n in idx if e == 0)


def test_windows_put_prompt_first_and_loss_on_actions_only(tmp_path):
    store = TrajectoryStore.create(tmp_path / "d", OBS, ACT, env_id="Toy-v0", task="toy")
    store.write_shard("round-000", [_episode(9, 0), _episode(4, 1)])
    steps = store.arrays()
    tok = BCTokenizer(OBS, ACT, TokenizerConfig(), tasks=["toy"]).fit(steps.observation, steps.action)
    tokens = tokenize_episodes(tok, steps.observation, steps.action, steps.columns["episode"],
                               steps.columns["step"], steps.columns["task"])
    ds = WindowDataset(tokens, tok, context_length=2 + 3 * tok.step_len)
    item = ds[0]
    ids, labels = item["input_ids"].numpy(), item["labels"].numpy()
    assert ids[0] == tok.bos_id and ids[1] == tok.task_token("toy")
    body = ids[2:].reshape(3, tok.step_len)
    assert (body[:, tok.obs_len] == tok.act_id).all()
    lab = labels[2:].reshape(3, tok.step_len)
    assert (lab[:, : tok.obs_len + 1] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(lab[:, tok.obs_len + 1:], body[:, tok.obs_len + 1:])
    np.testing.assert_array_equal(body[:, tok.obs_len + 1:],
                                  tok.encode_action(steps.action[:3]))
    batch = PadCollator(tok.pad_id)([ds[0], ds[len(ds) - 1]])
    assert batch["input_ids"].shape == batch["labels"].shape == batch["attention_mask"].shape


def test_relabeled_steps_keep_executed_history_and_teach_only_consistent_tokens():
    """Inputs hold the executed action; targets are the expert's tokens up to the first disagreement."""
    from bclm.data.sequences import action_labels

    tok = BCTokenizer(OBS, gym.spaces.MultiDiscrete([4, 4, 4]), TokenizerConfig())
    executed = np.array([[1, 2, 3], [1, 0, 3], [0, 2, 3]])
    expert = np.array([[1, 2, 3], [1, 2, 3], [1, 2, 3]])
    labels = action_labels(tok, executed, expert)
    np.testing.assert_array_equal(labels[0], [1, 2, 3])                         # agreed: all taught
    np.testing.assert_array_equal(labels[1], [1, 2, IGNORE_INDEX])              # token 2 follows a wrong 1
    np.testing.assert_array_equal(labels[2], [1, IGNORE_INDEX, IGNORE_INDEX])   # first token always taught


def test_windows_train_on_expert_labels_over_executed_history(tmp_path):
    act_space = gym.spaces.Discrete(3)
    obs_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    store = TrajectoryStore.create(tmp_path / "d", obs_space, act_space, env_id="Toy-v0", task="toy")
    n = 6
    ep = EpisodeRecord(observation={"": np.zeros((n, 2), np.float32)}, action={"": np.array([0, 1, 2, 0, 1, 2])},
                       expert_action={"": np.array([2, 2, 2, 2, 2, 2])}, reward=np.zeros(n, np.float32),
                       terminated=True, truncated=False, task="toy", success=False)
    store.write_shard("round-001", [ep], round_index=1, source="dagger")
    steps = store.arrays()
    tok = BCTokenizer(obs_space, act_space, TokenizerConfig(), tasks=["toy"]).fit(steps.observation, steps.action)
    tokens = tokenize_episodes(tok, steps.observation, steps.action, steps.columns["episode"],
                               steps.columns["step"], steps.columns["task"], expert_action=steps.expert_action)
    item = WindowDataset(tokens, tok, context_length=2 + n * tok.step_len)[0]
    body = item["input_ids"][2:].reshape(n, tok.step_len)
    lab = item["labels"][2:].reshape(n, tok.step_len)
    np.testing.assert_array_equal(tok.decode_action(body[:, -1:].numpy()), [0, 1, 2, 0, 1, 2])   # executed
    np.testing.assert_array_equal(tok.decode_action(lab[:, -1:].numpy()), [2] * n)               # expert


def test_nan_observations_are_refused_when_collected(tmp_path):
    obs_space = gym.spaces.Box(-1, 1, (2,), np.float32)
    store = TrajectoryStore.create(tmp_path / "d", obs_space, gym.spaces.Discrete(3), env_id="Toy-v0", task="toy")
    obs = np.zeros((4, 2), np.float32)
    obs[2, 1] = np.nan
    ep = EpisodeRecord(observation={"": obs}, action={"": np.zeros(4, np.int64)}, expert_action=None,
                       reward=np.zeros(4, np.float32), terminated=True, truncated=False, task="toy", success=False)
    with pytest.raises(BCLMError, match=r"NaN or infinite observation \(episode 0, step 2\)"):
        store.write_shard("round-000", [ep])
    assert store.shard_names() == []


def test_mistake_curve_charges_every_step_after_a_failure():
    from bclm.rollout.metrics import cumulative_mistakes

    crashed = np.array([0, 1, 1], bool)         # fell at t=3
    survived = np.array([0, 1, 0, 0, 0], bool)
    assert cumulative_mistakes([crashed, survived], failed=[True, False], horizon=5) == [0.0, 1.0, 1.5, 2.0, 2.5]


def test_windows_without_a_labeled_step_are_left_out():
    """Unasked states of gated and HG-DAgger rounds are history only: a window of nothing else teaches nothing."""
    obs_space, act_space = gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(3)
    tok = BCTokenizer(obs_space, act_space, TokenizerConfig(), tasks=["toy"])
    obs, act = np.random.default_rng(0).uniform(-1, 1, (8, 2)).astype(np.float32), np.arange(8) % 3
    tok.fit(obs, act)
    labeled = np.array([False, False, False, True, False, False, False, True])
    tokens = tokenize_episodes(tok, obs, act, np.zeros(8, np.int64), np.arange(8), np.full(8, "toy", dtype=object),
                               labeled=labeled)
    one_step = WindowDataset(tokens, tok, context_length=2 + tok.step_len)
    assert [tuple(r) for r in one_step.index] == [(0, 3, 1), (0, 7, 1)]
    two_steps = WindowDataset(tokens, tok, context_length=2 + 2 * tok.step_len, stride_fraction=0.5)
    assert [tuple(r) for r in two_steps.index] == [(0, 2, 2), (0, 3, 2), (0, 6, 2)]
