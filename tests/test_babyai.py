"""BabyAI with the bot as a stateful expert: demonstrations, evaluation and a DAgger round end to end."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("minigrid")

from bclm import config as cfg
from bclm.collect import collect
from bclm.data.store import TrajectoryStore
from bclm.envs import get_task, load_expert
from bclm.trainer.dagger import DaggerRecipe, run_dagger

TASK = "BabyAI-GoToRedBall-v0"


def test_bot_demonstrations_succeed_and_keep_the_mission_text(tmp_path):
    summary = collect(get_task(TASK), None, 6, tmp_path / "data", num_envs=3)
    assert summary["success_rate"] == 1.0
    steps = TrajectoryStore(tmp_path / "data").arrays()
    assert steps.observation["image"].shape[1:] == (49, 3)
    assert set(steps.observation["mission"]) <= {"go to the red ball", "go to a red ball"}


def test_bot_is_stateful_and_recreated_when_it_gives_up():
    bot_class = load_expert("babyai_bot")
    assert isinstance(bot_class, type) and bot_class.stateful

    import gymnasium as gym

    env = gym.make("bclm/BabyAI-GoToRedBall-v0")
    obs, _ = env.reset(seed=3)
    bot = bot_class()
    bot.reset(env)
    first = bot(obs)
    bot.bot.replan = None                  # a bot that breaks on its next call
    bot.observe(first)
    assert 0 <= bot(obs) < 7 and bot.recreated == 1


def test_dagger_round_with_the_bot_in_lockstep(tmp_path):
    recipe = cfg.build_config(DaggerRecipe, None, [
        "--output-dir", str(tmp_path / "run"), "--dagger.env", TASK, "--dagger.rounds", "1",
        "--dagger.initial_episodes", "4", "--dagger.episodes_per_round", "2", "--dagger.num_envs", "2",
        "--dagger.beta", "constant", "--dagger.beta_value", "0.5", "--model.size", "tiny",
        "--tokenizer.group", "3", "--data.context_length", "140", "--train.max_steps", "3", "--loop.progress", "false",
        "--eval.episodes", "2", "--eval.num_envs", "2"])
    report = run_dagger(recipe)
    row = report["rounds"][1]
    steps = TrajectoryStore(tmp_path / "run" / "data").arrays(["round-001"])
    used = steps.columns["expert_used"]
    assert 0 < used.mean() < 1                                    # the β coin picked both sides
    np.testing.assert_array_equal(steps.action[used], steps.expert_action[used])
    assert row["expert_labels"] > report["rounds"][0]["expert_labels"]
    assert "mistake_rate" in row
    from bclm.policy import Policy

    assert Policy.from_pretrained(tmp_path / "run" / "round-001").tokenizer.obs_len == 49 + 1 + 16  # a token a cell
