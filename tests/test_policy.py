"""Policy decoding: the batched KV cache must give exactly the actions of recomputing the full context."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import tiny_policy
from gymnasium.vector.utils import batch_space

from bclm.errors import BCLMError
from bclm.policy import Policy
from bclm.state import feeding

SPACES = {
    "box-discrete": (gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Discrete(4)),
    "box-box": (gym.spaces.Box(-2, 2, (4,), np.float32), gym.spaces.Box(-1, 1, (3,), np.float32)),
    "dict-multidiscrete": (
        gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,), np.float32), "mode": gym.spaces.Discrete(3)}),
        gym.spaces.MultiDiscrete([3, 5])),
}


def _obs_stream(space: gym.Space, batch: int, steps: int, seed: int):
    bspace = batch_space(space, batch)
    bspace.seed(seed)
    return [bspace.sample() for _ in range(steps)]


def _actions_equal(a, b) -> bool:
    """Discrete actions exactly; regressed (float) ones to float32 rounding, the cache's order of sums."""
    if isinstance(a, dict):
        return all(_actions_equal(a[k], b[k]) for k in a)
    a, b = np.asarray(a), np.asarray(b)
    if np.issubdtype(a.dtype, np.floating):
        return a.shape == b.shape and np.allclose(a, b, rtol=0, atol=1e-5)
    return np.array_equal(a, b)


@pytest.mark.parametrize("name", list(SPACES))
def test_kv_cache_matches_full_recompute(name):
    obs_space, act_space = SPACES[name]
    # A short context forces the sliding window (and cache rebuilds) many times over 40 steps.
    policy = tiny_policy(obs_space, act_space, context_length=48)
    batch, steps = 5, 40
    rng = np.random.default_rng(0)
    cached = policy.new_session(batch, use_cache=True)
    recompute = policy.new_session(batch, use_cache=False)
    for t, obs in enumerate(_obs_stream(obs_space, batch, steps, seed=1)):
        new_episode = rng.random(batch) < 0.08 if t else np.ones(batch, bool)
        a = cached.act(obs, new_episode)
        b = recompute.act(obs, new_episode)
        assert _actions_equal(a, b), f"step {t}: cached {a} != recomputed {b}"
    assert cached.trims >= 2 and recompute.trims == cached.trims, "the test should exercise the sliding context"


@pytest.mark.parametrize("name", list(SPACES))
def test_random_model_actions_always_in_space(name):
    obs_space, act_space = SPACES[name]
    policy = tiny_policy(obs_space, act_space, context_length=64, seed=3)
    for greedy in (True, False):
        session = policy.new_session(6, greedy=greedy, seed=0)
        for obs in _obs_stream(obs_space, 6, 15, seed=4):
            actions = session.act(obs)
            for item in gym.vector.utils.iterate(batch_space(act_space, 6), actions):
                assert act_space.contains(item), f"{item} not in {act_space}"


def test_policy_save_load_roundtrip(tmp_path, box_discrete_policy):
    policy = box_discrete_policy
    policy.save_pretrained(tmp_path / "p")
    loaded = Policy.from_pretrained(tmp_path / "p")
    obs = _obs_stream(policy.tokenizer.observation_space, 4, 6, seed=5)
    s1, s2 = policy.new_session(4), loaded.new_session(4)
    for o in obs:
        assert np.array_equal(s1.act(o), s2.act(o))
    assert loaded.tokenizer.to_dict() == policy.tokenizer.to_dict()


def test_policy_dir_without_tokenizer_is_a_clear_error(tmp_path, box_discrete_policy):
    box_discrete_policy.save_pretrained(tmp_path / "p")
    (tmp_path / "p" / "bclm_tokenizer.json").unlink()
    with pytest.raises(BCLMError, match=r"bclm_tokenizer\.json not found"):
        Policy.from_pretrained(tmp_path / "p")


def test_a_truncated_or_foreign_config_is_one_clear_error(tmp_path, box_discrete_policy):
    import json

    box_discrete_policy.save_pretrained(tmp_path / "p")
    config = tmp_path / "p" / "config.json"
    text = config.read_text()
    config.write_text(text[: len(text) // 2])                         # a copy cut short
    with pytest.raises(BCLMError, match=r"config\.json cannot be read"):
        Policy.from_pretrained(tmp_path / "p")
    body = json.loads(text)
    body["intermediate_size"] *= 2                                  # a config.json from another model
    config.write_text(json.dumps(body))
    with pytest.raises(BCLMError, match=r"has shape \[.*\], but .*config\.json builds"):
        Policy.from_pretrained(tmp_path / "p")


def test_nan_observation_is_rejected(box_discrete_policy):
    obs = np.zeros((2, 3), np.float32)
    obs[1, 2] = np.nan
    with pytest.raises(BCLMError, match=r"NaN|nan|finite"):
        box_discrete_policy.new_session(2).act(obs)


@pytest.mark.parametrize("name", ["box-box", "dict-multidiscrete"])
def test_executed_actions_replace_chosen_ones_in_the_context(name):
    """Under a β-mixture the expert's action is executed: the cache must then match recomputing a context
    that holds the executed actions (multi-token actions need their cached row re-fed)."""
    obs_space, act_space = SPACES[name]
    policy = tiny_policy(obs_space, act_space, context_length=64, seed=6)
    cached, recompute = policy.new_session(4), policy.new_session(4, use_cache=False)
    bspace = batch_space(act_space, 4)
    bspace.seed(7)
    for t, obs in enumerate(_obs_stream(obs_space, 4, 12, seed=8)):
        a, b = cached.act(obs), recompute.act(obs)
        assert _actions_equal(a, b), f"step {t}"
        if t % 3 == 1:
            other = bspace.sample()
            cached.record_executed(other)
            recompute.record_executed(other)
            assert _actions_equal(policy.tokenizer.decode_action(
                np.stack([h[-1][-policy.tokenizer.action_len:] for h in cached.history])),
                policy.tokenizer.decode_action(policy.tokenizer.encode_action(other)))


@pytest.mark.parametrize("name", list(SPACES))
def test_uncertainty_is_the_action_tokens_entropy_and_margin_alike_cached_or_recomputed(name):
    obs_space, act_space = SPACES[name]
    policy = tiny_policy(obs_space, act_space, context_length=48, seed=5)
    tok = policy.tokenizer
    sessions = [policy.new_session(3, use_cache=c) for c in (True, False)]
    plain = policy.new_session(3)
    for s in sessions:
        s.track_uncertainty = True
    most = sum(np.log(hi - lo) for lo, hi in tok.action_token_ranges())
    for obs in _obs_stream(obs_space, 3, 6, seed=2):
        acts = [s.act(obs) for s in sessions]
        assert _actions_equal(acts[0], plain.act(obs)) and _actions_equal(acts[0], acts[1])   # acting unchanged
        np.testing.assert_allclose(sessions[0].last_entropy, sessions[1].last_entropy, atol=1e-4)
        np.testing.assert_allclose(sessions[0].last_margin, sessions[1].last_margin, atol=1e-4)
        assert (sessions[0].last_entropy >= 0).all() and (sessions[0].last_entropy <= most + 1e-4).all()
        assert ((sessions[0].last_margin >= 0) & (sessions[0].last_margin <= 1)).all()
    # The first step's first action token by hand: softmax over that token's range only.
    first = _obs_stream(obs_space, 3, 1, seed=7)[0]
    fresh = policy.new_session(3)
    fresh.track_uncertainty = True
    fresh.act(first)
    if tok.regressed_actions().all():          # a regressed action has no distribution to measure
        assert (fresh.last_entropy == 0).all() and (fresh.last_margin == 1).all()
        return
    ids = np.concatenate([tok.prefix(policy.task), tok.encode_observation(first)[0], [tok.act_id]])
    lo, hi = tok.action_token_ranges()[0]
    values = np.concatenate([np.zeros(2), tok.observation_values(first)[0], [0.0]])
    with torch.no_grad(), feeding(policy.model, torch.as_tensor(values, dtype=torch.float32)[None]):
        logits = policy.model(input_ids=torch.as_tensor(ids)[None]).logits[0, -1, lo:hi].double()
    p = torch.softmax(logits, -1)
    top2 = p.topk(2).values
    if tok.action_len == 1:
        assert fresh.last_entropy[0] == pytest.approx(float(-(p * p.log()).sum()), abs=1e-4)
        assert fresh.last_margin[0] == pytest.approx(float(top2[0] - top2[1]), abs=1e-4)
    else:
        assert fresh.last_entropy[0] >= float(-(p * p.log()).sum()) - 1e-4
        assert fresh.last_margin[0] <= float(top2[0] - top2[1]) + 1e-4
