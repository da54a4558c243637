"""Tests for bclm.tokenizers: round trips, error bounds, persistence and the on-disk format."""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.vector.utils import concatenate, create_empty_array
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bclm.errors import BCLMError
from bclm.tokenizers import (
    TOKENIZER_FILE,
    BCTokenizer,
    TokenizerConfig,
    assemble,
    flatten_leaves,
    leaf_arrays,
    space_from_dict,
    space_to_dict,
)
from bclm.tokenizers.codecs import BoxCodec

GOLDEN = Path(__file__).parent / "golden" / "tokenizer_v4.json"
GOLDEN_V3 = Path(__file__).parent / "golden" / "tokenizer_v3.json"
GOLDEN_V2 = Path(__file__).parent / "golden" / "tokenizer_v2.json"
GOLDEN_V1 = Path(__file__).parent / "golden" / "tokenizer_v1.json"
SETTINGS = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


# --- strategies ---------------------------------------------------------------------------------

@st.composite
def float_boxes(draw):
    shape = tuple(draw(st.lists(st.integers(1, 3), max_size=2)))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    scale = draw(st.sampled_from([1e-3, 1.0, 100.0]))
    low = (rng.uniform(-1, 1, shape) * scale).astype(np.float32)
    width = rng.uniform(0, 2, shape) * scale
    if draw(st.booleans()) and shape:
        width.ravel()[0] = 0.0  # a degenerate dimension must decode to its bound
    high = (low + width).astype(np.float32)
    return gym.spaces.Box(low, np.maximum(low, high), shape, np.float32)


@st.composite
def int_boxes(draw):
    shape = tuple(draw(st.lists(st.integers(1, 3), min_size=1, max_size=2)))
    dtype = draw(st.sampled_from([np.int8, np.int32, np.int64]))
    limit = 60 if dtype is np.int8 else 1000
    low = draw(st.integers(-limit, limit // 2))
    high = draw(st.integers(low, limit))
    return gym.spaces.Box(low, high, shape, dtype)


def discretes():
    return st.builds(lambda n, s: gym.spaces.Discrete(n, start=s), st.integers(1, 50), st.integers(-5, 5))


def multi_discretes():
    return st.builds(lambda nvec, s: gym.spaces.MultiDiscrete(nvec, start=[s] * len(nvec)),
                     st.lists(st.integers(1, 9), min_size=1, max_size=5), st.integers(-3, 3))


def multi_binaries():
    return st.one_of(st.integers(1, 6), st.tuples(st.integers(1, 3), st.integers(1, 3))).map(
        lambda n: gym.spaces.MultiBinary(list(n) if isinstance(n, tuple) else n))


def leaf_spaces():
    return st.one_of(float_boxes(), int_boxes(), discretes(), multi_discretes(), multi_binaries())


def spaces():
    return st.recursive(
        leaf_spaces(),
        lambda children: st.one_of(
            st.lists(children, min_size=1, max_size=3).map(gym.spaces.Tuple),
            st.dictionaries(st.sampled_from(["a", "b", "pos", "z_key"]), children, min_size=1,
                            max_size=3).map(gym.spaces.Dict),
        ),
        max_leaves=4,
    )


def sample_batch(space: gym.Space, n: int, seed: int):
    """A batch as a gymnasium vector env returns it."""
    space.seed(seed)
    return concatenate(space, [space.sample() for _ in range(n)], create_empty_array(space, n))


# --- helpers ------------------------------------------------------------------------------------

def _x_edges(codec: BoxCodec, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Bin edges in x-space, computed independently of the codec's own inverse."""
    width = codec.high - codec.low

    def edge(t):
        if codec.mode == "mulaw":
            c = 2.0 * t - 1.0
            t = (np.sign(c) * ((1.0 + codec.mu) ** np.abs(c) - 1.0) / codec.mu + 1.0) / 2.0
        return codec.low + t * width

    return edge(ids / codec.bins), edge((ids + 1) / codec.bins)


def assert_box_error_within_half_bin(codec: BoxCodec, x: np.ndarray) -> None:
    flat = x.reshape(len(x), -1).astype(np.float64)
    ids = codec.encode(x)
    decoded = codec.decode(ids).reshape(len(x), -1).astype(np.float64)
    lo, hi = _x_edges(codec, ids.astype(np.float64))
    half = np.where(codec.exact, 0.0, (hi - lo) / 2)
    # Integer dtypes round the midpoint to an integer; float32 output rounds it to float32.
    slack = 1e-5 * np.maximum(np.abs(flat), 1.0) + (0.5 if np.issubdtype(codec.dtype, np.integer) else 0)
    err = np.abs(decoded - flat)
    assert (err <= half * (1 + 1e-5) + slack).all(), (codec.to_dict(), flat, decoded)


def check_leaves_round_trip(tok: BCTokenizer, space: gym.Space, codecs, batch, decoded) -> None:
    original = leaf_arrays(space, batch)
    back = leaf_arrays(space, decoded)
    for codec in codecs:
        x, y = original[codec.path], back[codec.path]
        assert y.shape == x.shape and y.dtype == x.dtype, codec.path
        if isinstance(codec, BoxCodec):
            assert_box_error_within_half_bin(codec, x)
        else:
            np.testing.assert_array_equal(y, x)


def _space_tokenizer(obs_space, act_space, mode, bins, **kw) -> BCTokenizer:
    config = TokenizerConfig(obs_bins=bins, action_bins=bins, mode=mode, obs_bounds="space",
                             action_bounds="space", value_vocab=max(bins, 64), **kw)
    return BCTokenizer(obs_space, act_space, config)


# --- property tests -----------------------------------------------------------------------------

@SETTINGS
@given(spaces())
def test_space_dict_round_trip(space):
    d = space_to_dict(space)
    again = space_from_dict(json.loads(json.dumps(d)))
    assert space_to_dict(again) == d
    assert again == space
    assert [p for p, _ in flatten_leaves(again)] == [p for p, _ in flatten_leaves(space)]


@SETTINGS
@given(obs_space=spaces(), act_space=spaces(), mode=st.sampled_from(["uniform", "mulaw"]),
       bins=st.sampled_from([16, 256]), seed=st.integers(0, 1000))
def test_round_trip_error_ranges_and_persistence(obs_space, act_space, mode, bins, seed):
    tok = _space_tokenizer(obs_space, act_space, mode, bins)
    obs = sample_batch(obs_space, 7, seed)
    act = sample_batch(act_space, 7, seed + 1)
    tok.check_observation(obs)
    tok.check_action(act)

    check_leaves_round_trip(tok, obs_space, tok.obs_codecs, obs,
                            tok.decode_observation(tok.encode_observation(obs)))
    act_ids = tok.encode_action(act)
    check_leaves_round_trip(tok, act_space, tok.action_codecs, act, tok.decode_action(act_ids))
    ranges = tok.action_token_ranges()
    assert ranges.shape == (tok.action_len, 2)
    assert ((act_ids >= ranges[:, 0]) & (act_ids < ranges[:, 1])).all()
    assert ranges[:, 0].min() >= tok.value_offset and ranges[:, 1].max() <= tok.task_offset
    tok.check_action(tok.decode_action(act_ids))  # decoded actions always lie in the space

    steps = tok.encode_steps(obs, act)
    assert steps.shape == (7, tok.step_len)
    assert (steps[:, tok.obs_len] == tok.act_id).all()
    assert steps.max() < tok.vocab_size

    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        again = BCTokenizer.from_pretrained(d)
    assert again == tok
    np.testing.assert_array_equal(again.encode_steps(obs, act), steps)


@SETTINGS
@given(space=spaces(), seed=st.integers(0, 1000))
def test_leaf_arrays_assemble_inverse(space, seed):
    batch = sample_batch(space, 3, seed)
    leaves = leaf_arrays(space, batch)
    assert all(len(v) == 3 for v in leaves.values())
    again = leaf_arrays(space, assemble(space, leaves))
    for path in leaves:
        np.testing.assert_array_equal(again[path], leaves[path])


# --- specific behaviour -------------------------------------------------------------------------

def test_flatten_leaves_paths():
    space = gym.spaces.Dict({"a": gym.spaces.Discrete(2),
                             "b": gym.spaces.Tuple([gym.spaces.Discrete(3),
                                                    gym.spaces.Dict({"c": gym.spaces.MultiBinary(2)})])})
    assert [p for p, _ in flatten_leaves(space)] == ["a", "b.0", "b.1.c"]
    assert [p for p, _ in flatten_leaves(gym.spaces.Discrete(4))] == [""]


def test_infinite_box_bounds_survive_json():
    space = gym.spaces.Box(np.array([-np.inf, 0.1]), np.array([np.inf, 1e30]), dtype=np.float64)
    text = json.dumps(space_to_dict(space), allow_nan=False)
    again = space_from_dict(json.loads(text))
    np.testing.assert_array_equal(again.low, space.low)
    np.testing.assert_array_equal(again.high, space.high)


def test_fit_uses_percentiles_and_reports_clipping():
    obs_space = gym.spaces.Box(-np.inf, np.inf, (2,), np.float32)
    act_space = gym.spaces.Discrete(3)
    tok = BCTokenizer(obs_space, act_space, TokenizerConfig(percentiles=(5.0, 95.0), margin=0.0, mode="uniform"))
    x = np.stack([np.arange(101), 10 * np.arange(101)], axis=1).astype(np.float32)
    actions = np.arange(101) % 3
    tok.fit(x, actions)
    codec = tok.obs_codecs[0]
    np.testing.assert_allclose(codec.low, [5.0, 50.0])
    np.testing.assert_allclose(codec.high, [95.0, 950.0])
    decoded = tok.decode_observation(tok.encode_observation(x))
    assert decoded.min(axis=0).tolist() >= [5.0, 50.0] and decoded.max(axis=0).tolist() <= [95.0, 950.0]
    report = tok.quantization_report(x, actions)
    widened = BCTokenizer(obs_space, act_space, TokenizerConfig(percentiles=(5.0, 95.0), margin=0.25,
                                                                            mode="uniform")).fit(x, actions)
    np.testing.assert_allclose(widened.obs_codecs[0].low, [5.0 - 22.5, 50.0 - 225.0])    # a quarter of the range
    np.testing.assert_allclose(widened.obs_codecs[0].high, [95.0 + 22.5, 950.0 + 225.0])
    assert report["observation"][""]["clip_fraction"] == pytest.approx([10 / 101, 10 / 101])
    assert report["action"][""]["max_abs_error"] == [0.0]
    # The clipped extreme 0 of dimension 1 decodes to the centre of the lowest bin.
    assert report["max_abs_error"] == pytest.approx(50.0 + 900.0 / 256 / 2)
    json.dumps(report, allow_nan=False)


def _clip_share(tok: BCTokenizer, x: np.ndarray, actions: np.ndarray | None) -> float:
    actions = np.zeros(len(x), np.int64) if actions is None else actions
    return max(max(leaf["clip_fraction"]) for leaf in tok.quantization_report(x, actions)["observation"].values())


@pytest.mark.parametrize("mode", ["mulaw", "uniform", "quantile"])
def test_cover_widens_the_bounds_to_states_beyond_the_first_fit_and_keeps_every_value_s_position(mode):
    """A DAgger round's states lie off the demonstrations: the warm tokenizer must cover them (clipping at most
    0.5%) without moving what the model reads of the states it learned on."""
    rng = np.random.default_rng(0)
    tok = BCTokenizer(gym.spaces.Box(-np.inf, np.inf, (3,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32),
                      TokenizerConfig(mode=mode))
    first = rng.normal(size=(500, 3)).astype(np.float32)
    actions = rng.uniform(-1, 1, (500, 2)).astype(np.float32)
    tok.fit(first, actions)
    positions, low0 = tok.observation_values(first), tok.obs_codecs[0].low.copy()
    later = (rng.normal(size=(500, 3)) * [1, 40, 1] + [0, 0, 60]).astype(np.float32)   # dims 1 and 2 drift far
    both, both_actions = np.concatenate([first, later]), np.concatenate([actions, actions])
    assert _clip_share(tok, both, both_actions) > 0.3
    assert tok.cover(both, both_actions)
    assert _clip_share(tok, both, both_actions) <= 0.005
    np.testing.assert_array_equal(tok.observation_values(first), positions)
    assert tok.obs_codecs[0].low[0] == low0[0]                                  # dim 0 clipped nothing: kept
    assert not tok.cover(both, both_actions)                                    # covered already
    again = BCTokenizer.from_dict(json.loads(json.dumps(tok.to_dict())))
    assert again == tok
    np.testing.assert_array_equal(again.encode_observation(later), tok.encode_observation(later))
    np.testing.assert_array_equal(again.observation_values(later), tok.observation_values(later))


def test_cover_fits_a_dimension_that_was_constant_in_the_first_data():
    """A dimension the demonstrations never moved (a car always on the centreline) read as one value: the rounds
    that move it get bins of their own for it."""
    tok = BCTokenizer(gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), gym.spaces.Discrete(2))
    first = np.stack([np.linspace(-1, 1, 200), np.zeros(200)], axis=1).astype(np.float32)
    tok.fit(first, np.zeros(200, np.int64))
    later = np.random.default_rng(0).normal(size=(200, 2)).astype(np.float32) * [0.5, 1]
    assert len(np.unique(tok.encode_observation(later)[:, 1])) == 1          # one bin: the value is lost
    assert tok.cover(later, np.zeros(200, np.int64))
    assert len(np.unique(tok.encode_observation(later)[:, 1])) > 100 and _clip_share(tok, later, None) == 0


def test_auto_bounds_use_space_when_finite():
    act_space = gym.spaces.Box(-2.0, 2.0, (3,), np.float32)
    tok = BCTokenizer(gym.spaces.Discrete(2), act_space, TokenizerConfig(mode="uniform"))  # action_bounds "auto"
    act = np.array([[-2.0, 0.0, 2.0]], dtype=np.float32)
    np.testing.assert_allclose(tok.decode_action(tok.encode_action(act)), act, atol=4 / 256)


def test_int_box_within_bins_is_exact_even_with_data_bounds():
    obs_space = gym.spaces.Box(0, 255, (7, 7, 3), np.uint8)
    tok = BCTokenizer(obs_space, gym.spaces.Discrete(3))  # obs_bounds "data", but no fit needed
    x = sample_batch(obs_space, 4, 0)
    np.testing.assert_array_equal(tok.decode_observation(tok.encode_observation(x)), x)


def test_multidiscrete_grouping_shortens_and_is_exact():
    space = gym.spaces.MultiDiscrete(np.tile([11, 6, 3], (7, 7, 1)))
    plain = BCTokenizer(space, gym.spaces.Discrete(7))
    grouped = BCTokenizer(space, gym.spaces.Discrete(7), TokenizerConfig(group=3))
    assert plain.obs_len == 147 and grouped.obs_len == 49
    x = sample_batch(space, 16, 3)
    np.testing.assert_array_equal(grouped.decode_observation(grouped.encode_observation(x)), x)
    assert grouped.encode_observation(x).max() < grouped.value_offset + 11 * 6 * 3


def test_group_too_large_for_value_vocab():
    space = gym.spaces.MultiDiscrete([100, 100])
    with pytest.raises(BCLMError, match="value_vocab"):
        BCTokenizer(space, gym.spaces.Discrete(2), TokenizerConfig(group=2))


def test_multibinary_grouping():
    space = gym.spaces.MultiBinary(10)
    tok = BCTokenizer(space, space, TokenizerConfig(group=4))
    assert tok.obs_len == 3
    x = sample_batch(space, 8, 1)
    np.testing.assert_array_equal(tok.decode_action(tok.encode_action(x)), x)
    assert tok.action_token_ranges()[:, 1].tolist() == [tok.value_offset + 16] * 2 + [tok.value_offset + 4]


MISSIONS = ["go to the red ball", "pick up the blue key", "open the yellow door",
            "put the green box next to the purple ball"]


def test_text_bpe_round_trip():
    obs_space = gym.spaces.Dict({"mission": gym.spaces.Text(64), "dir": gym.spaces.Discrete(4)})
    tok = BCTokenizer(obs_space, gym.spaces.Discrete(7), TokenizerConfig(text_max_tokens=12))
    obs = {"mission": tuple(MISSIONS), "dir": np.arange(4)}
    tok.fit(obs, np.arange(4))
    ids = tok.encode_observation(obs)
    assert ids.shape == (4, 13)
    # The mission comes first although "dir" sorts before it: later tokens can attend to the instruction.
    assert [c.path for c in tok.obs_codecs] == ["mission", "dir"]
    assert (ids[:, :12] >= tok.text_offset).all() and (ids[:, :12] < tok.task_offset).all()
    assert list(tok.decode_observation(ids)["mission"]) == MISSIONS
    with tempfile.TemporaryDirectory() as d:
        tok.save_pretrained(d)
        again = BCTokenizer.from_pretrained(d)
    np.testing.assert_array_equal(again.encode_observation(obs), ids)
    # A tokenizer saved with another leaf order (before text came first) keeps the order it was saved with.
    d = tok.to_dict()
    d["codecs"]["observation"].reverse()
    old_order = BCTokenizer.from_dict(d)
    np.testing.assert_array_equal(old_order.encode_observation(obs), np.concatenate([ids[:, 12:], ids[:, :12]], 1))


def test_text_truncates_to_max_tokens():
    tok = BCTokenizer(gym.spaces.Text(64), gym.spaces.Discrete(2), TokenizerConfig(text_max_tokens=2))
    tok.fit(list(MISSIONS), np.zeros(4, dtype=np.int64))
    assert tok.encode_observation(list(MISSIONS)).shape == (4, 2)


def test_text_with_hf_tokenizer():
    from transformers import PreTrainedTokenizerFast

    from bclm.tokenizers.codecs import train_bpe

    base = PreTrainedTokenizerFast(tokenizer_object=train_bpe(MISSIONS, 300), pad_token="<pad>")
    tok = BCTokenizer(gym.spaces.Text(64), gym.spaces.Discrete(3), text_tokenizer=base)
    assert tok.base_vocab_size == len(base) and tok.text_offset == 0
    assert tok.pad_id == len(base) and tok.vocab_size == len(base) + 8 + 1024 + 1      # no continuous dimension
    ids = tok.encode_observation(MISSIONS)
    assert ids.max() < len(base)
    assert list(tok.decode_observation(ids)) == MISSIONS
    d = tok.to_dict()
    assert d["text_tokenizer"] == base.name_or_path and "bpe" not in d["codecs"]["observation"][0]
    again = BCTokenizer.from_dict(d, text_tokenizer=base)
    np.testing.assert_array_equal(again.encode_observation(MISSIONS), ids)
    with pytest.raises(BCLMError, match="text_tokenizer="):
        BCTokenizer.from_dict(d).encode_observation(MISSIONS)


def test_tasks_append_without_moving_ids():
    tok = BCTokenizer(gym.spaces.Discrete(3), gym.spaces.Discrete(3), tasks=["a"])
    before = tok.task_token("a"), tok.value_offset, tok.act_id
    tok.add_task("b")
    assert (tok.task_token("a"), tok.value_offset, tok.act_id) == before
    assert tok.task_token("b") == tok.vocab_size - 1
    assert tok.prefix("b").tolist() == [tok.bos_id, tok.vocab_size - 1] and tok.prefix_len == 2
    with pytest.raises(BCLMError, match=r"unknown task 'c'.*\['a', 'b'\]"):
        tok.task_token("c")


def test_base_vocab_shifts_everything():
    tok = BCTokenizer(gym.spaces.Discrete(3), gym.spaces.Discrete(3), base_vocab_size=1000)
    assert tok.pad_id == 1000 and tok.value_offset == 1008
    assert tok.encode_action(np.array([2])).tolist() == [[1010]]


def test_assert_compatible():
    obs, act = gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3)
    tok = BCTokenizer(obs, act, TokenizerConfig(obs_bounds="space"))
    tok.assert_compatible(gym.spaces.Box(-1, 1, (2,)), gym.spaces.Discrete(3), "env")
    with pytest.raises(BCLMError, match=r"env: action space Discrete\(4\) differs"):
        tok.assert_compatible(obs, gym.spaces.Discrete(4), "env")


# --- bad input ----------------------------------------------------------------------------------

def _dict_tokenizer() -> BCTokenizer:
    obs = gym.spaces.Dict({"pos": gym.spaces.Box(-1, 1, (2,)), "k": gym.spaces.Discrete(3)})
    return BCTokenizer(obs, gym.spaces.Box(-1, 1, (2,)), TokenizerConfig(obs_bounds="space"))


def test_nan_observation_names_leaf():
    tok = _dict_tokenizer()
    obs = {"pos": np.array([[0.0, np.nan]], dtype=np.float32), "k": np.array([1])}
    with pytest.raises(BCLMError, match=r"rollout: observation leaf 'pos' contains NaN"):
        tok.check_observation(obs, where="rollout")
    with pytest.raises(BCLMError, match="leaf 'pos'"):
        tok.encode_observation(obs)


def test_wrong_shape_and_missing_key():
    tok = _dict_tokenizer()
    with pytest.raises(BCLMError, match=r"leaf 'pos' has shape \(1, 3\)"):
        tok.check_observation({"pos": np.zeros((1, 3)), "k": np.array([1])})
    with pytest.raises(BCLMError, match="no entry 'k'"):
        tok.check_observation({"pos": np.zeros((1, 2))})


def test_action_outside_space():
    tok = _dict_tokenizer()
    with pytest.raises(BCLMError, match=r"action: root leaf value 1\.5.*outside the space Box"):
        tok.check_action(np.array([[0.0, 1.5]], dtype=np.float32))
    tok2 = BCTokenizer(gym.spaces.Discrete(2), gym.spaces.Discrete(3, start=1))
    with pytest.raises(BCLMError, match=r"value 0 .*Discrete\(3, start=1\)"):
        tok2.check_action(np.array([1, 0]))


def test_unfitted_data_bounds():
    tok = BCTokenizer(gym.spaces.Box(-np.inf, np.inf, (2,)), gym.spaces.Discrete(2))
    with pytest.raises(BCLMError, match="must be fitted"):
        tok.encode_observation(np.zeros((1, 2), dtype=np.float32))


def test_quantile_bins_follow_the_data(tmp_path):
    """Equal-mass bins: finer than mu-law where the data dwells, a value held often (a clipped torque) decodes
    exactly, encoding stays monotone, and the fitted knots survive a save."""
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0.5, 0.2, (600, 2)), np.full((400, 2), 2.0)]).clip(-2, 2).astype(np.float32)
    rng.shuffle(x)
    train, held = x[:500], x[500:]
    space = gym.spaces.Box(-2, 2, (2,), np.float32)
    errors = {}
    for mode in ("mulaw", "quantile"):
        tok = BCTokenizer(space, gym.spaces.Discrete(2), TokenizerConfig(mode=mode, obs_bounds="space"))
        tok.fit(train, np.zeros(len(train), dtype=np.int64))
        errors[mode] = np.abs(tok.decode_observation(tok.encode_observation(held)) - held).mean()
    assert errors["quantile"] < 0.5 * errors["mulaw"], errors
    line = np.linspace(-2, 2, 999, dtype=np.float32)[:, None].repeat(2, axis=1)
    for bins in (256, 16, 2):
        config = TokenizerConfig(mode="quantile", obs_bins=bins, obs_bounds="space")
        coarse = BCTokenizer(space, gym.spaces.Discrete(2), config)
        coarse.fit(train, np.zeros(len(train), dtype=np.int64))
        mass = np.full((1, 2), 2.0, np.float32)
        np.testing.assert_array_equal(coarse.decode_observation(coarse.encode_observation(mass)), mass)
        assert (np.diff(coarse.encode_observation(line)[:, 0]) >= 0).all()
        every_bin = coarse.obs_codecs[0].decode(np.arange(bins)[:, None].repeat(2, axis=1))
        np.testing.assert_array_equal(coarse.obs_codecs[0].encode(every_bin)[:, 0], np.arange(bins))
    tok.save_pretrained(tmp_path)
    again = BCTokenizer.from_pretrained(tmp_path)
    np.testing.assert_array_equal(again.encode_observation(held), tok.encode_observation(held))
    unfitted = BCTokenizer(space, gym.spaces.Discrete(2), TokenizerConfig(mode="quantile", obs_bounds="space"))
    with pytest.raises(BCLMError, match="quantile bins"):
        unfitted.encode_observation(held)


def test_infinite_bounds_with_space_source():
    with pytest.raises(BCLMError, match=r"leaf 'x' has infinite Box bounds"):
        BCTokenizer(gym.spaces.Dict({"x": gym.spaces.Box(-np.inf, np.inf, (2,))}), gym.spaces.Discrete(2),
                    TokenizerConfig(obs_bounds="space"))


def test_missing_tokenizer_file(tmp_path):
    with pytest.raises(BCLMError, match=f"{TOKENIZER_FILE} not found.*not a bclm policy/tokenizer"):
        BCTokenizer.from_pretrained(tmp_path)


def test_newer_format_version(tmp_path):
    tok = _dict_tokenizer()
    path = tok.save_pretrained(tmp_path)
    d = json.loads(path.read_text())
    d["format_version"] = 99
    path.write_text(json.dumps(d))
    with pytest.raises(BCLMError, match="format_version 99"):
        BCTokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize(("field", "value"), [("obs_bins", 2048), ("mode", "log"), ("obs_bounds", "x"),
                                              ("percentiles", (99.0, 1.0)), ("group", 0)])
def test_config_validation_names_field(field, value):
    with pytest.raises(BCLMError, match=field):
        TokenizerConfig(**{field: value})


def test_unsupported_space():
    with pytest.raises(BCLMError, match="Graph"):
        space_to_dict(gym.spaces.Graph(gym.spaces.Discrete(2), None))


# --- golden file --------------------------------------------------------------------------------

def golden_batch() -> tuple[dict, np.ndarray]:
    # 101 rows put the (1, 99) percentiles exactly on data points, so no interpolation rounding.
    rng = np.random.default_rng(1234)
    pos = (rng.standard_normal((101, 3)) * [1.0, 10.0, 0.1]).astype(np.float32)
    obs_batch = {"pos": pos, "dir": np.arange(101) % 4 + 1, "cell": np.zeros((101, 4), dtype=np.int64)}
    return obs_batch, np.linspace(-1, 1, 202, dtype=np.float32).reshape(101, 2)


def golden_tokenizer(numbers: bool = True, slots: bool = True, head: str = "regression") -> BCTokenizer:
    obs = gym.spaces.Dict({"pos": gym.spaces.Box(-np.inf, np.inf, (3,), np.float32),
                           "dir": gym.spaces.Discrete(4, start=1),
                           "cell": gym.spaces.MultiDiscrete([11, 6, 3, 2])})
    act = gym.spaces.Box(-1.0, 1.0, (2,), np.float32)
    # Format 1 had no margin: its golden file is the old defaults' fit.
    config = TokenizerConfig(obs_bins=64, action_bins=32, mode="mulaw", group=2, value_vocab=512, numbers=numbers,
                             margin=3.0 if numbers else 0.0, number_slots=slots, action_head=head)
    tok = BCTokenizer(obs, act, config, tasks=["reach", "push"])
    return tok.fit(golden_batch()[0], np.zeros((101, 2), dtype=np.float32))


def _canonical(d: dict) -> dict:
    return json.loads(json.dumps(d, sort_keys=True, allow_nan=False))


def test_golden_format():
    actual = _canonical(golden_tokenizer().to_dict())
    expected = json.loads(GOLDEN.read_text())
    assert actual == expected, (
        "the tokenizer file format drifted from tests/golden/tokenizer_v1.json. Saved policies depend on "
        "it: if the change is deliberate, bump FORMAT_VERSION when old files no longer load identically, "
        "then regenerate with `python tests/test_tokenizers.py --write-golden`")
    assert BCTokenizer.from_dict(expected).to_dict() == expected


def test_format_1_files_still_load_and_encode_as_before():
    """A policy saved before the number range (format 1) keeps its layout: bins in the value range."""
    v1 = json.loads(GOLDEN_V1.read_text())
    loaded = BCTokenizer.from_dict(v1)
    assert loaded.to_dict() == v1 and loaded.number_vocab == 0
    assert loaded == golden_tokenizer(numbers=False)
    obs, act = golden_batch()
    steps = loaded.encode_steps(obs, act)
    assert steps.max() < loaded.value_offset + 512                 # everything in the value range, as in v1
    v2 = golden_tokenizer(slots=False)
    assert v2.vocab_size == loaded.vocab_size + 64                # + one number per bin of the finest binning
    np.testing.assert_array_equal(v2.decode_action(v2.encode_action(act)), loaded.decode_action(steps[:, -2:]))


def test_format_3_files_still_load_with_action_bins():
    v3 = json.loads(GOLDEN_V3.read_text())
    loaded = BCTokenizer.from_dict(v3)
    assert loaded.to_dict() == v3 and not loaded.regression and not loaded.regressed_actions().any()
    assert loaded == golden_tokenizer(head="bins")
    assert (loaded.regression_ids() == -1).all()


def test_format_2_files_still_load_with_one_shared_number_slot():
    v2 = json.loads(GOLDEN_V2.read_text())
    loaded = BCTokenizer.from_dict(v2)
    assert loaded.to_dict() == v2 and loaded.number_slots == 1 and loaded.number_vocab == 64
    assert loaded == golden_tokenizer(slots=False)
    obs, act = golden_batch()
    numbers = loaded.encode_steps(obs, act)[:, [3, 4, 5, 7, 8]]
    assert ((numbers >= loaded.number_offset) & (numbers < loaded.number_offset + 64)).all()


def test_continuous_bins_are_numbers_and_symbols_stay_values():
    tok = golden_tokenizer()
    obs, act = golden_batch()
    steps = tok.encode_steps(obs, act)
    numbers = (steps >= tok.number_offset) & (steps < tok.number_offset + tok.number_vocab)
    # pos (3 binned dims) and the 2 action dims are numbers; dir and the packed cells are symbols.
    assert numbers.all(axis=0).tolist() == [False, False, False, True, True, True, False, True, True]
    assert tok.number_mask().tolist() == [False, False, False, True, True, True, False, False, False]
    # One slot of 64 ids per continuous dimension, in step order: pos 0..2, then the two action dimensions.
    assert tok.number_slots == 5 and tok.number_vocab == 5 * 64
    slot = (steps[:, numbers.all(axis=0)] - tok.number_offset) // 64
    assert (slot == [0, 1, 2, 3, 4]).all()
    assert tok.number_slot_starts()[3:6].tolist() == [tok.number_offset + 64 * k for k in range(3)]
    lo, hi = tok.action_token_ranges().T
    assert lo.tolist() == [tok.number_offset + 192, tok.number_offset + 256] and (hi - lo == 32).all()


if __name__ == "__main__":
    if sys.argv[1:] != ["--write-golden"]:
        sys.exit("usage: python tests/test_tokenizers.py --write-golden")
    GOLDEN.parent.mkdir(parents=True, exist_ok=True)
    GOLDEN.write_text(json.dumps(_canonical(golden_tokenizer().to_dict()), indent=2, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
