"""Meta-World tasks with metaworld's scripted policies as experts: names, spaces, seeding, demonstrations."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip("metaworld")

from bclm.collect import collect
from bclm.data.store import TrajectoryStore
from bclm.envs import BUILTIN_TASKS, get_task, load_expert, make_env
from bclm.envs.metaworld import MT10, MT50, make_metaworld
from bclm.errors import BCLMError
from bclm.tokenizers import BCTokenizer, TokenizerConfig


def test_names_are_metaworlds_benchmarks_and_every_env_has_a_task_and_policy():
    import metaworld.env_dict
    from metaworld.policies import ENV_POLICY_MAP

    assert tuple(metaworld.env_dict.MT10_V3) == MT10 and tuple(metaworld.env_dict.MT50_V3) == MT50
    assert set(MT50) <= set(ENV_POLICY_MAP)
    specs = {name: spec for name, spec in BUILTIN_TASKS.items() if name.startswith("MetaWorld-")}
    assert sorted(specs) == sorted(f"MetaWorld-{n}" for n in MT50)
    spec = specs["MetaWorld-reach-v3"]
    assert (spec.env_id, spec.expert, spec.success) == ("bclm.envs.metaworld:bclm/MetaWorld-reach-v3",
                                                        "metaworld/reach-v3", "info")


def test_importing_bclm_leaves_metaworld_unimported_and_seeds_agree_across_processes():
    code = ("import sys, bclm, bclm.envs, bclm.collect; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('metaworld', 'mujoco'))); "
            "env = bclm.envs.make_env(bclm.envs.get_task('MetaWorld-push-v3')); "
            "print(env.reset(seed=3)[0].tobytes().hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    modules, obs_hex = out.split()
    assert modules == "[]"
    # Async vector envs build their envs in subprocesses: the goal set and the seeded draw must match there.
    obs, _ = make_env(get_task("MetaWorld-push-v3")).reset(seed=3)
    assert obs.tobytes().hex() == obs_hex


def test_spaces_are_goal_observable_state_and_unit_box_actions():
    env = make_env(get_task("MetaWorld-pick-place-v3"))
    obs, _ = env.reset(seed=0)
    space = env.observation_space
    assert isinstance(space, gym.spaces.Box) and space.shape == (39,) and space.dtype == np.float64
    # The goal (last three values) is observed and bounded by the env's goal space, not pinned to zero.
    goal_space = env.unwrapped.goal_space
    np.testing.assert_array_equal(space.low[-3:], goal_space.low)
    assert np.any(obs[-3:] != 0.0) and space.contains(obs)
    act = env.action_space
    assert isinstance(act, gym.spaces.Box) and act.shape == (4,) and act.dtype == np.float32
    assert np.all(act.low == -1.0) and np.all(act.high == 1.0)
    assert env.spec.max_episode_steps == 500
    env.close()


def test_a_seed_fixes_the_goal_variation_and_the_stream_after_it():
    a, b = (gym.make("bclm/MetaWorld-reach-v3") for _ in range(2))
    firsts = {}
    for seed in range(6):
        obs_a, _ = a.reset(seed=seed)
        obs_b, _ = b.reset(seed=seed)
        np.testing.assert_array_equal(obs_a, obs_b)
        firsts[seed] = obs_a
        # Unseeded resets (vector-env autoresets) continue the seeded stream identically.
        np.testing.assert_array_equal(a.reset()[0], b.reset()[0])
    goals = {tuple(obs[-3:]) for obs in firsts.values()}
    assert len(goals) >= 5                       # 6 draws out of metaworld's 50 variations
    a.close()
    b.close()


def test_terminate_on_success_can_be_turned_off():
    for terminate in (True, False):
        env = gym.make("bclm/MetaWorld-reach-v3", terminate_on_success=terminate)
        expert = load_expert("metaworld/reach-v3")
        obs, _ = env.reset(seed=0)
        first_success = None
        for t in range(1, 121):
            obs, _, terminated, truncated, info = env.step(expert(obs))
            if info["success"] and first_success is None:
                first_success = t
            if terminated or truncated:
                break
        assert first_success is not None
        assert (terminated, t) == ((True, first_success) if terminate else (False, 120))
        env.close()


@pytest.mark.parametrize("name", ["MetaWorld-reach-v3", "MetaWorld-pick-place-v3"])
def test_scripted_demonstrations_succeed_and_end_at_success(tmp_path, name):
    summary = collect(get_task(name), None, 4, tmp_path / "data", num_envs=2)
    assert summary["success_rate"] == 1.0 and summary["mean_length"] < 100
    steps = TrajectoryStore(tmp_path / "data").arrays()
    terminated, truncated = steps.columns["terminated"], steps.columns["truncated"]
    assert terminated.sum() == 4 and not truncated.any()
    assert steps.observation.shape == (len(steps), 39)
    assert steps.action.dtype == np.float32 and np.all(np.abs(steps.action) <= 1.0)
    # The object bounds are infinite: the default tokenizer bins observations on data percentiles instead.
    store = TrajectoryStore(tmp_path / "data")
    tok = BCTokenizer(store.observation_space, store.action_space, TokenizerConfig()).fit(steps.observation,
                                                                                          steps.action)
    ids = tok.encode_observation(steps.observation)
    assert ids.shape == (len(steps), 39) and len(np.unique(ids)) > 39      # values spread over several bins


def test_unknown_env_names_are_errors_that_say_what_is_expected():
    with pytest.raises(BCLMError, match=r"expert 'metaworld/reach-v9'.*reach-v3"):
        load_expert("metaworld/reach-v9")
    with pytest.raises(BCLMError, match=r"Meta-World env 'nope-v3'.*window-close-v3"):
        make_metaworld("nope-v3")


def test_evaluation_in_worker_processes_gives_the_same_report():
    """eval.async_envs steps Meta-World in subprocesses (the slow part of its evaluation); only speed changes."""
    from bclm.eval.evaluate import EvalConfig, evaluate
    from tests.conftest import tiny_policy

    task = get_task("MetaWorld-reach-v3")
    env = make_env(task)
    policy = tiny_policy(env.observation_space, env.action_space, context_length=46)
    env.close()
    short = dataclasses.replace(task, env_kwargs={**task.env_kwargs, "max_episode_steps": 30})
    reports = [evaluate(policy, short, EvalConfig(episodes=3, num_envs=2, async_envs=flag)) for flag in (False, True)]
    assert reports[0] == reports[1]
    assert reports[0]["episodes"] == 3 and reports[0]["mean_length"] <= 30
