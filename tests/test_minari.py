"""Minari: a dataset recorded by Minari's own DataCollector imports exactly and trains; nothing is downloaded."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
from test_cli import bclm

from bclm.envs import get_task, load_expert

minari = pytest.importorskip("minari")


@pytest.fixture(scope="module")
def minari_root(tmp_path_factory):
    """CartPole demonstrations by bclm's LQR expert, recorded by Minari in both of its storage formats."""
    root = tmp_path_factory.mktemp("minari")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MINARI_DATASETS_PATH", str(root))
        expert = load_expert(get_task("CartPole-v1").expert)
        for data_format in ("hdf5", "arrow"):
            env = minari.DataCollector(gym.make("CartPole-v1", max_episode_steps=120), data_format=data_format)
            for seed in range(4):
                obs, _ = env.reset(seed=seed)
                done = False
                while not done:
                    obs, _, terminated, truncated, _ = env.step(expert(obs))
                    done = terminated or truncated
            env.create_dataset(f"cartpole/lqr-{data_format}-v0", algorithm_name="lqr", author="bclm tests")
    return root


@pytest.mark.parametrize("data_format", ["hdf5", "arrow"])
def test_a_minari_dataset_imports_step_for_step(minari_root, tmp_path, monkeypatch, data_format):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    source = minari.load_dataset(f"cartpole/lqr-{data_format}-v0")
    r = bclm("import-minari", str(minari_root / "cartpole" / f"lqr-{data_format}-v0"), "--output", "data",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    from bclm.data.store import TrajectoryStore

    store = TrajectoryStore(tmp_path / "data")
    assert store.meta["env_id"] == "CartPole-v1" and store.shard_names() == ["round-000"]
    steps = store.arrays()
    episodes = list(source.iterate_episodes())
    assert len(steps.action) == sum(len(ep.actions) for ep in episodes) == 480      # 4 episodes held to 120 steps
    assert np.array_equal(steps.observation, np.concatenate([ep.observations[:-1] for ep in episodes]))
    assert np.array_equal(steps.action, np.concatenate([ep.actions for ep in episodes]))


def test_an_imported_minari_dataset_trains_a_policy(minari_root, tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(minari_root))
    r = bclm("import-minari", "cartpole/lqr-arrow-v0", "--output", "data", cwd=tmp_path)    # by id, local
    assert r.returncode == 0, r.stderr
    r = bclm("train", "--dataset", "data", "--output-dir", "policy", "--model.size", "tiny", "--train.max_steps",
             "30", "--loop.progress", "false", "--eval.episodes", "2", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "policy" / "eval_report.json").read_text())
    assert report["env"] == "CartPole-v1" and report["episodes"] == 2


def test_a_dataset_that_is_not_here_is_named_and_nothing_is_downloaded(tmp_path, monkeypatch):
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "empty"))
    r = bclm("import-minari", "D4RL/door/human-v2", "--output", "data", cwd=tmp_path)
    assert r.returncode == 2
    assert "'D4RL/door/human-v2' is neither a directory nor a dataset id on this machine" in r.stderr
    assert "minari download D4RL/door/human-v2" in r.stderr
    assert not (tmp_path / "data").exists()
