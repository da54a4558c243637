"""Rollout videos: `bclm eval --video N` writes playable files of the first episodes, and training's final
evaluation puts them in the policy directory, where the model card shows them."""

from __future__ import annotations

import json

import imageio.v3 as iio
import pytest
from test_cli import bclm

from bclm import config as cfg
from bclm.collect import collect
from bclm.envs import get_task
from bclm.hub.cards import policy_card
from bclm.trainer.bc import train
from bclm.trainer.config import TrainRecipe


@pytest.fixture(scope="module")
def cartpole_policy(tmp_path_factory):
    """A CartPole policy trained for a few steps, its final evaluation recorded (one episode)."""
    work = tmp_path_factory.mktemp("video")
    collect(get_task("CartPole-v1"), None, 2, work / "data", seed=0)
    train(cfg.build_config(TrainRecipe, None, [
        "--dataset", str(work / "data"), "--output-dir", str(work / "policy"), "--model.size", "tiny",
        "--train.max_steps", "10", "--train.batch_size", "16", "--loop.progress", "false",
        "--eval.episodes", "2", "--eval.num_envs", "2", "--eval.video", "1"]))
    return work / "policy"


def test_eval_video_writes_a_playable_mp4_of_each_recorded_episode(cartpole_policy, tmp_path):
    r = bclm("eval", "--policy", str(cartpole_policy), "--episodes", "2", "--num-envs", "1", "--video", "2",
             "--output", "out/report.json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["videos"] == ["videos/CartPole-v1-episode-0.mp4", "videos/CartPole-v1-episode-1.mp4"]
    frames = [iio.imread(tmp_path / "out" / v).shape for v in report["videos"]]
    assert all(f[1:] == (400, 600, 3) for f in frames)        # CartPole's frames, not resized
    # A frame per step: the first observation's, then one after each step but the last (whose frame already
    # shows the next episode, after the autoreset).
    assert sum(f[0] for f in frames) == round(2 * report["mean_length"])


def test_eval_video_needs_a_report_directory(cartpole_policy, tmp_path):
    r = bclm("eval", "--policy", str(cartpole_policy), "--episodes", "1", "--video", "1", cwd=tmp_path)
    assert r.returncode == 2 and "--video 1 needs --output" in r.stderr
    assert not (tmp_path / "videos").exists()


def test_training_records_its_final_evaluation_and_the_card_shows_it(cartpole_policy):
    report = json.loads((cartpole_policy / "eval_report.json").read_text())
    assert report["videos"] == ["videos/CartPole-v1-episode-0.mp4"]
    assert iio.imread(cartpole_policy / report["videos"][0]).shape[0] >= 8
    card = (cartpole_policy / "README.md").read_text()
    assert '<video src="videos/CartPole-v1-episode-0.mp4"' in card
    assert card == str(policy_card(cartpole_policy))          # the saved card is the current one


def test_without_imageio_ffmpeg_the_video_is_a_gif(tmp_path, monkeypatch):
    import importlib.util

    import numpy as np

    from bclm.rollout import video

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None if name == "imageio_ffmpeg" else real(name))
    frames = [np.full((40, 60, 3), 20 * k, np.uint8) for k in range(6)]
    path = video.write_video(frames, tmp_path / "clip", fps=10)
    assert path.name == "clip.gif" and iio.imread(path).shape == (6, 40, 60, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif"]          # no temporary left behind


def test_meta_world_without_an_offscreen_backend_says_which_to_set(tmp_path, monkeypatch):
    """Meta-World renders with MuJoCo; without a display or MUJOCO_GL, one line names the backends to set
    (trying GLFW there can abort the process)."""
    from conftest import tiny_policy

    from bclm.envs import make_env
    from bclm.errors import BCLMError
    from bclm.eval.evaluate import EvalConfig, evaluate

    monkeypatch.delenv("MUJOCO_GL", raising=False)
    monkeypatch.delenv("DISPLAY", raising=False)
    task = get_task("MetaWorld-reach-v3")
    env = make_env(task)
    policy = tiny_policy(env.observation_space, env.action_space)
    env.close()
    with pytest.raises(BCLMError, match=r"MetaWorld-reach-v3: MuJoCo needs an offscreen backend .*MUJOCO_GL=egl"):
        evaluate(policy, task, EvalConfig(episodes=1, num_envs=1, video=1), video_dir=tmp_path / "videos")
    assert not (tmp_path / "videos").exists()


def test_push_uploads_the_videos_its_card_shows(cartpole_policy):
    r = bclm("push", "--policy", str(cartpole_policy), "--repo-id", "someone/policy", "--dry-run",
             cwd=cartpole_policy)
    assert r.returncode == 0 and "videos/CartPole-v1-episode-0.mp4" in r.stdout, r.stderr
