"""BabyAI with the bot as a stateful expert: demonstrations, evaluation and a DAgger round end to end."""

from __future__ import annotations

import numpy as np
import pytest

pytest.importorskip("minigrid")

from bclm import config as cfg
from bclm.collect import collect
from bclm.data.store import TrajectoryStore
from bclm.envs import get_task, load_expert
from bclm.errors import BCLMError
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


def _recipe(out, *extra: str) -> DaggerRecipe:
    return cfg.build_config(DaggerRecipe, None, [
        "--output-dir", str(out), "--dagger.env", TASK, "--dagger.rounds", "1",
        "--dagger.initial_episodes", "4", "--dagger.episodes_per_round", "2", "--dagger.num_envs", "2",
        "--model.size", "tiny", "--tokenizer.group", "3", "--data.context_length", "140", "--train.max_steps", "3",
        "--loop.progress", "false", "--eval.episodes", "2", "--eval.num_envs", "2", *extra])


def test_dagger_round_with_the_bot_in_lockstep(tmp_path):
    report = run_dagger(_recipe(tmp_path / "run", "--dagger.beta", "constant", "--dagger.beta_value", "0.5",
                                "--model.symbol_factors", "true"))
    row = report["rounds"][1]
    steps = TrajectoryStore(tmp_path / "run" / "data").arrays(["round-001"])
    used = steps.columns["expert_used"]
    assert 0 < used.mean() < 1                                    # the β coin picked both sides
    np.testing.assert_array_equal(steps.action[used], steps.expert_action[used])
    assert row["expert_labels"] > report["rounds"][0]["expert_labels"]
    assert "mistake_rate" in row
    from bclm.policy import Policy

    assert Policy.from_pretrained(tmp_path / "run" / "round-001").tokenizer.obs_len == 49 + 1 + 16  # a token a cell
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "run" / "round-001" / "model.safetensors")   # factored cells, saved plain
    assert not any("symbol_factors" in k for k in saved) and "lm_head.weight" in saved


def test_hg_dagger_with_the_stateful_bot_as_gate(tmp_path):
    # 3 training steps leave the learner wrong often: the bot (one per env, in lockstep) takes over there.
    report = run_dagger(_recipe(tmp_path / "run", "--dagger.intervener", "expert-gated"))
    row = report["rounds"][1]
    steps = TrajectoryStore(tmp_path / "run" / "data").arrays(["round-001"])
    labeled = steps.columns["labeled"]
    assert row["interventions"] == int(labeled.sum()) > 0 and row["beta"] is None
    assert np.isnan(steps.columns["beta"]).all()                 # no β coin in HG-DAgger
    np.testing.assert_array_equal(steps.columns["expert_used"], labeled)
    np.testing.assert_array_equal(steps.action[labeled], steps.expert_action[labeled])


def test_the_stateful_bot_refuses_envs_in_worker_processes(tmp_path):
    with pytest.raises(BCLMError, match=r"stateful.*synchronous.*async_envs"):
        run_dagger(_recipe(tmp_path / "run", "--dagger.async_envs", "true"))
