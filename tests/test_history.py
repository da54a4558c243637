"""History layouts without the copycat shortcut: past observations only, or past actions dropped at random
during training. The rollout session must feed exactly what training windows hold, cached or recomputed."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import tiny_policy
from test_policy import SPACES, _actions_equal, _obs_stream

from bclm import config as cfg
from bclm.data.sequences import IGNORE_INDEX, DataConfig, WindowDataset, tokenize_episodes
from bclm.errors import BCLMError
from bclm.policy import Policy
from bclm.tokenizers import assemble, leaf_arrays
from bclm.trainer.bc import train
from bclm.trainer.config import TrainRecipe


def _observations_policy(name: str, context_length: int) -> Policy:
    obs_space, act_space = SPACES[name]
    plain = tiny_policy(obs_space, act_space, context_length=context_length, seed=2)
    return Policy(plain.model, plain.tokenizers, context_length, metadata={"history": "observations"})


@pytest.mark.parametrize("name", list(SPACES))
def test_kv_cache_matches_recompute_with_past_observations_only(name):
    policy = _observations_policy(name, context_length=40)
    batch, rng = 4, np.random.default_rng(0)
    cached, recompute = policy.new_session(batch), policy.new_session(batch, use_cache=False)
    for t, obs in enumerate(_obs_stream(SPACES[name][0], batch, 30, seed=1)):
        new_episode = rng.random(batch) < 0.08 if t else np.ones(batch, bool)
        a, b = cached.act(obs, new_episode), recompute.act(obs, new_episode)
        assert _actions_equal(a, b), f"step {t}: cached {a} != recomputed {b}"
        np.testing.assert_array_equal(cached.valid_len, [len(cached._context(i, np.zeros(0, np.int64), np.zeros(0))[0])
                                                         for i in range(batch)])
    assert cached.trims >= 2, "the test should exercise the sliding context"


@pytest.mark.parametrize("name", ["box-discrete", "dict-multidiscrete"])
def test_training_windows_hold_exactly_what_the_session_feeds(name, monkeypatch):
    obs_space, act_space = SPACES[name]
    policy = _observations_policy(name, context_length=32)
    tok = policy.tokenizer
    session = policy.new_session(1, use_cache=False)
    fed = []
    real = session._recompute
    monkeypatch.setattr(session, "_recompute", lambda head, values, partial: (
        fed.append(session._context(0, head[0], values[0])) if not len(partial[0]) else None)
        or real(head, values, partial))
    observations, actions = _obs_stream(obs_space, 1, 25, seed=3), []
    for obs in observations:
        actions.append(session.act(obs))
    n = len(observations)
    obs_leaves, act_leaves = ({k: np.concatenate([leaf_arrays(space, b)[k] for b in batches])
                               for k in leaf_arrays(space, batches[0])}
                              for space, batches in ((obs_space, observations), (act_space, actions)))
    tokens = tokenize_episodes(tok, assemble(obs_space, obs_leaves), assemble(act_space, act_leaves),
                               np.zeros(n, np.int64), np.arange(n),
                               np.full(n, policy.task, dtype=object))
    windows = WindowDataset(tokens, tok, 32, history="observations")
    assert len(windows) == n                                  # one window per labeled step
    trimmed = 0
    for t in range(n):
        item = windows[t]
        inputs, labels = item["input_ids"].numpy(), item["labels"].numpy()
        context = inputs[:-tok.action_len]                    # what the model sees before the action
        values = item["values"].numpy()[:-tok.action_len]     # and the exact values beside those ids
        assert (labels[:-tok.action_len] == IGNORE_INDEX).all() and (labels[-tok.action_len:] >= 0).all()
        ids, fed_values = fed[t]
        if len(ids) == len(context):
            np.testing.assert_array_equal(ids, context)
            np.testing.assert_allclose(fed_values, values, rtol=0, atol=1e-6)
        else:     # after the session trimmed its context: the same prompt and the window's latest observations
            trimmed += 1
            np.testing.assert_array_equal(ids[:2], context[:2])
            np.testing.assert_array_equal(ids[2:], context[len(context) - len(ids) + 2:])
            np.testing.assert_allclose(fed_values[2:], values[len(context) - len(ids) + 2:], rtol=0, atol=1e-6)
    assert trimmed and len(fed[0][0]) == 2 + tok.obs_len + 1    # the first step: prompt, observation, ACT


def _random_episodes(name: str, episodes: int, length: int):
    """(tokens, tokenizer) of random episodes of a tiny policy's spaces."""
    obs_space, act_space = SPACES[name]
    policy = tiny_policy(obs_space, act_space)
    n = episodes * length
    obs = _obs_stream(obs_space, n, 1, seed=0)[0]
    act_space.seed(0)
    acts = np.stack([act_space.sample() for _ in range(n)])
    episode, step = np.repeat(np.arange(episodes), length), np.tile(np.arange(length), episodes)
    tokens = tokenize_episodes(policy.tokenizer, obs, acts, episode, step, np.full(n, policy.task, dtype=object))
    return tokens, policy.tokenizer


def _dataset(action_dropout: float, seed: int = 0) -> tuple[WindowDataset, object]:
    tokens, tok = _random_episodes("dict-multidiscrete", 4, 50)
    return WindowDataset(tokens, tok, 2 + 6 * tok.step_len, action_dropout=action_dropout, seed=seed), tok


def test_history_dropout_masks_past_actions_at_its_rate_and_keeps_only_consistent_labels():
    ds, tok = _dataset(0.3)
    plain, _ = _dataset(0.0)
    first, masked, steps = tok.obs_len + 1, 0, 0
    for i in range(len(ds)):
        got = ds[i]["input_ids"].numpy()[2:].reshape(-1, tok.step_len)
        labels = ds[i]["labels"].numpy()[2:].reshape(-1, tok.step_len)
        want = plain[i]["input_ids"].numpy()[2:].reshape(-1, tok.step_len)
        dropped = (got[:, first:] == tok.pad_id).all(axis=1)
        assert not dropped[-1]                                            # the last action is no history
        np.testing.assert_array_equal(got[~dropped], want[~dropped])      # nothing else changes
        np.testing.assert_array_equal(got[:, :first], want[:, :first])
        assert (labels[dropped, first] >= 0).all()                        # its first token is still taught,
        assert (labels[dropped, first + 1:] == IGNORE_INDEX).all()        # the next ones followed a mask
        masked, steps = masked + dropped.sum(), steps + len(dropped) - 1
    assert 0.25 < masked / steps < 0.35
    again, _ = _dataset(0.3)
    assert all(np.array_equal(ds[i]["input_ids"], again[i]["input_ids"]) for i in range(len(ds)))   # seeded
    ds.set_epoch(1)
    assert not all(np.array_equal(ds[i]["input_ids"], again[i]["input_ids"]) for i in range(len(ds)))


@pytest.mark.parametrize(("changes", "named"), [({"history": "actions-only"}, "data.history"),
                                               ({"action_dropout": 1.0}, "data.action_dropout"),
                                               ({"history": "observations", "action_dropout": 0.2},
                                                "data.action_dropout")])
def test_bad_history_settings_are_named(changes, named):
    with pytest.raises(BCLMError, match=named):
        DataConfig(**changes)


def test_a_policy_trained_on_past_observations_saves_its_layout_and_acts_with_it(tmp_path):
    from bclm.collect import collect
    from bclm.envs import get_task

    env, expert = "tests.custom_env:CustomTarget-v0", "tests.custom_env:expert"
    collect(get_task(env), expert, 6, tmp_path / "data", seed=0)
    recipe = cfg.build_config(TrainRecipe, None, [
        "--dataset", str(tmp_path / "data"), "--output-dir", str(tmp_path / "policy"), "--model.size", "tiny",
        "--data.context_length", "20", "--data.history", "observations", "--train.max_steps", "10",
        "--loop.progress", "false", "--eval.episodes", "2", "--eval.num_envs", "2"])
    train(recipe)
    meta = json.loads((tmp_path / "policy" / "bclm_policy.json").read_text())
    assert meta["history"] == "observations"
    policy = Policy.from_pretrained(tmp_path / "policy")
    tok = policy.tokenizer
    assert policy.steps_per_context == 1 + (20 - 2 - tok.step_len) // tok.obs_len
    session = policy.new_session(2)
    for _ in range(3):
        session.act(np.zeros((2, 2), np.float32))
    assert all(len(h) == 3 and all(len(s) == tok.obs_len for s in h) for h in session.history)


def test_jitter_moves_only_observation_numbers_with_past_observations_only():
    from bclm.data.sequences import jitter_bins

    tokens, tok = _random_episodes("box-box", 1, 60)
    context = 2 + tok.step_len + 3 * tok.obs_len
    plain = WindowDataset(tokens, tok, context, history="observations")
    moved = WindowDataset(tokens, tok, context, history="observations", seed=1,
                          jitter=jitter_bins(tok, tokens.steps, 0.05))
    is_obs = np.concatenate([[False, False], np.tile(np.ones(tok.obs_len, bool), 3),
                             np.ones(tok.obs_len, bool), np.zeros(1 + tok.action_len, bool)])
    a, b = plain[40]["input_ids"].numpy(), moved[40]["input_ids"].numpy()
    assert len(a) == len(b) == context and (a != b).any()
    np.testing.assert_array_equal(a[~is_obs], b[~is_obs])           # prompt, ACT and action untouched


@pytest.mark.parametrize("history", ["full", "observations"])
def test_observation_targets_are_exactly_the_observation_tokens_fed(history):
    """With observation prediction every observation token of a window (jittered as fed) is a target of the
    auxiliary loss, and nothing else is; the action targets are those of a window without it."""
    from bclm.data.sequences import jitter_bins

    tokens, tok = _random_episodes("box-box", 1, 60)
    steps = 4
    context = 2 + (steps * tok.step_len if history == "full" else (steps - 1) * tok.obs_len + tok.step_len)
    kwargs = {"history": history, "seed": 1, "jitter": jitter_bins(tok, tokens.steps, 0.05)}
    plain = WindowDataset(tokens, tok, context, **kwargs)
    predicting = WindowDataset(tokens, tok, context, predict_observations=True, **kwargs)
    step_is_obs = np.arange(tok.step_len) < tok.obs_len
    past = np.ones((steps - 1) * tok.obs_len, bool) if history == "observations" else np.tile(step_is_obs, steps - 1)
    is_obs = np.concatenate([[False, False], past, step_is_obs])
    item, reference = predicting[10], plain[10]
    assert "obs_labels" not in reference and len(item["input_ids"]) == context
    ids, targets = item["input_ids"].numpy(), item["obs_labels"].numpy()
    np.testing.assert_array_equal(ids, reference["input_ids"].numpy())
    np.testing.assert_array_equal(targets[is_obs], ids[is_obs])
    assert (targets[~is_obs] == IGNORE_INDEX).all()
    np.testing.assert_array_equal(item["labels"].numpy(), reference["labels"].numpy())
