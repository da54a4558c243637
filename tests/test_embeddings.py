"""Number embeddings: smooth in the bin, exported as a plain checkpoint; older policies load unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import tiny_policy, trained_like
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from bclm.data.sequences import WindowDataset, jitter_bins, tokenize_episodes
from bclm.embeddings import StructuredEmbedding, attach_for, cosine_basis, shared_radix, word_rows
from bclm.errors import BCLMError
from bclm.policy import Policy
from bclm.tokenizers import BCTokenizer, TokenizerConfig
from bclm.trainer.config import OptimConfig
from bclm.trainer.step import sized_to_data

GOLDEN_POLICY = Path(__file__).parent / "golden" / "policy_v1"
SPACES = (gym.spaces.Box(-2, 2, (4,), np.float32), gym.spaces.Box(-1, 1, (2,), np.float32))


def test_number_embedding_is_smooth_in_the_bin():
    emb = StructuredEmbedding(torch.randn(300, 32) * 0.02, start=20, size=256, features=16)
    torch.nn.init.normal_(emb.number_proj, std=0.02)
    rows = emb(torch.arange(20, 276))
    near = (rows[1:] - rows[:-1]).norm(dim=1).mean()
    far = (rows[128:] - rows[:128]).norm(dim=1).mean()
    assert near < far / 10, (near, far)
    assert torch.equal(emb(torch.tensor([3])), emb.weight[3:4])           # other ids keep their own rows


def test_structured_embedding_exports_a_plain_checkpoint_with_the_same_logits(tmp_path):
    # Without a state projector, which the plain LM lacks (tests/test_continuous.py exports one).
    policy = trained_like(tiny_policy(*SPACES, context_length=40, state=False))
    assert isinstance(policy.model.get_input_embeddings(), StructuredEmbedding)
    policy.save_pretrained(tmp_path)
    assert not any("number" in k for k in load_file(tmp_path / "model.safetensors"))
    assert "auto_map" not in json.loads((tmp_path / "config.json").read_text())
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False).eval()   # no bclm code
    assert type(plain.get_input_embeddings()) is torch.nn.Embedding
    tok = policy.tokenizer
    obs = SPACES[0].sample()[None].repeat(3, 0) + np.linspace(-1, 1, 3, dtype=np.float32)[:, None]
    ids = torch.as_tensor(np.concatenate([np.tile(tok.prefix("default"), (3, 1)), tok.encode_observation(obs),
                                          np.full((3, 1), tok.act_id)], axis=1))
    assert ((ids >= tok.number_offset) & (ids < tok.number_offset + tok.number_vocab)).any()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, policy.model(input_ids=ids).logits,
                                   rtol=0, atol=1e-5)
    # The live model keeps its structure after saving.
    assert isinstance(policy.model.get_input_embeddings(), StructuredEmbedding)


def test_a_warm_start_keeps_the_number_rows_it_was_given(tmp_path):
    policy = trained_like(tiny_policy(*SPACES, context_length=40))
    policy.save_pretrained(tmp_path)
    loaded = Policy.from_pretrained(tmp_path)
    tok = loaded.tokenizer
    emb = attach_for(loaded.model, tok, 16, fresh=False)
    before = policy.model.get_input_embeddings().materialized()
    torch.testing.assert_close(emb.materialized(), before, rtol=0, atol=1e-6)


def test_a_format_1_policy_loads_and_acts_as_it_did():
    """tests/golden/policy_v1 was saved by bclm before number tokens (tied embeddings, bins as symbols)."""
    expected = json.loads((GOLDEN_POLICY / "expected_actions.json").read_text())
    policy = Policy.from_pretrained(GOLDEN_POLICY)
    assert policy.tokenizer.number_vocab == 0
    assert type(policy.model.get_input_embeddings()) is torch.nn.Embedding
    ids = torch.as_tensor(expected["input_ids"])
    np.testing.assert_array_equal(ids.numpy()[:, 2:-1], policy.tokenizer.encode_observation(
        np.asarray(expected["observations"][0], np.float32)))
    with torch.no_grad():
        logits = policy.model(input_ids=ids).logits[:, -1, policy.tokenizer.value_offset:][:, :2]
    torch.testing.assert_close(logits, torch.tensor(expected["action_logits"]), rtol=0, atol=1e-5)
    session = policy.new_session(4)
    actions = [session.act(np.asarray(o, np.float32)).tolist() for o in expected["observations"]]
    assert actions == expected["actions"]


def test_cosine_basis_is_orthonormal():
    basis = cosine_basis(64, 64)
    torch.testing.assert_close(basis.T @ basis, torch.eye(64), rtol=0, atol=1e-5)


def test_jitter_moves_only_observation_numbers_and_stays_inside_their_bins():
    tok = tiny_policy(*SPACES, context_length=40).tokenizer
    rng = np.random.default_rng(0)
    obs, act = rng.uniform(-2, 2, (60, 4)).astype(np.float32), np.zeros((60, 2), np.float32)
    bins = jitter_bins(tok, tok.encode_steps(obs, act), 4 / 64)
    assert bins.tolist() == [4, 4, 4, 4, 0, 0, 0]                # observation numbers only: not ACT, not actions
    tokens = tokenize_episodes(tok, obs, act, np.repeat([0, 1], 30), np.tile(np.arange(30), 2),
                               np.full(60, "default", dtype=object))
    plain = WindowDataset(tokens, tok, context_length=2 + 3 * tok.step_len)
    jittered = WindowDataset(tokens, tok, context_length=2 + 3 * tok.step_len, jitter=bins, seed=7)
    a, b = plain[5], jittered[5]
    moved = b["input_ids"] != a["input_ids"]
    mask = torch.as_tensor(np.concatenate([[0, 0], np.tile(bins, 3)]) > 0)
    assert moved.any() and not (moved & ~mask).any()
    assert ((b["input_ids"] - a["input_ids"]).abs() <= 4).all()
    slot_start = torch.as_tensor(np.concatenate([[0, 0], np.tile(tok.number_slot_starts(), 3)]))[mask]
    assert ((b["input_ids"][mask] >= slot_start) & (b["input_ids"][mask] < slot_start + 64)).all()  # own slot
    assert torch.equal(b["labels"], a["labels"])                              # targets stay clean
    # A function of (seed, epoch, window): the same in every process and after a resume, new each epoch.
    assert torch.equal(jittered[5]["input_ids"], b["input_ids"])
    jittered.set_epoch(1)
    assert not torch.equal(jittered[5]["input_ids"], b["input_ids"])


def test_jitter_never_moves_a_grid_value_onto_its_neighbour():
    """Observations on a grid (step 0.5 here: about 5 bins apart) move by at most 2 bins, not the 8 asked."""
    tok = BCTokenizer(*SPACES, TokenizerConfig(obs_bins=64, action_bins=32, mode="uniform", margin=0.25))
    grid = np.round(np.random.default_rng(0).uniform(-2, 2, (500, 4)) * 2) / 2
    steps = tok.fit(grid, np.zeros((500, 2), np.float32)).encode_steps(grid.astype(np.float32),
                                                                     np.zeros((500, 2), np.float32))
    gaps = np.diff(np.unique(steps[:, 0]))
    assert np.median(gaps) >= 4
    assert (jitter_bins(tok, steps, 8 / 64)[:4] < np.median(gaps) / 2).all()


@pytest.mark.parametrize(("epochs", "windows", "continuous", "expected"), [
    (50, 1000, False, 1563), (50, 100_000, False, 2000), (0, 10, False, 2000), (50, 500, True, 782),
    (-1, 500, False, 782), (-1, 500, True, 1563), (-1, 100_000, True, 2000)])
def test_training_length_follows_the_data(epochs, windows, continuous, expected):
    """Passes over the windows, capped; auto (-1) gives continuous actions twice the passes of discrete ones."""
    optim = sized_to_data(OptimConfig(epochs=epochs, max_steps=2000, batch_size=32), windows, continuous=continuous)
    assert optim.max_steps == expected and optim.warmup_steps <= max(expected // 10, 100 if not epochs else 0)


def test_with_a_slot_per_dimension_each_bin_embeds_at_its_value_along_its_dimension_s_own_direction():
    import gymnasium as gym

    from bclm.tokenizers import BCTokenizer, TokenizerConfig

    tok = BCTokenizer(gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), gym.spaces.Box(-1, 1, (1,), np.float32),
                      TokenizerConfig(obs_bins=64, action_bins=32, value_vocab=128))
    rng = np.random.default_rng(0)
    obs = np.stack([rng.uniform(-1, 1, 500), rng.uniform(0, 10, 500)], 1).astype(np.float32)
    tok.fit(obs, rng.uniform(-1, 1, (500, 1)).astype(np.float32))
    positions = tok.number_positions()                                  # (3 slots, 64 ids)
    codec = tok.obs_codecs[0]
    values = codec.decode(np.tile(np.arange(64)[:, None], (1, 2)))      # each bin's value, per dimension
    lo, hi = np.percentile(obs, [1, 99], axis=0)
    np.testing.assert_allclose(positions[:2].T, (values - (lo + hi) / 2) / ((hi - lo) / 2), rtol=1e-4, atol=1e-4)
    assert positions[:2].min() < -5 and positions[:2].max() > 5         # the margin: far past the data, linearly
    emb = StructuredEmbedding(torch.zeros(tok.vocab_size, 8), tok.number_offset, tok.number_vocab, features=2,
                          slots=tok.number_slots, positions=torch.as_tensor(positions))
    torch.nn.init.normal_(emb.number_proj)
    rows = emb.numbers().view(3, 64, 8)
    for s in range(2):                       # a line per dimension: the row moves with the value, nothing else
        step = (rows[s] - rows[s, 32]) / torch.as_tensor(positions[s] - positions[s, 32]).float()[:, None]
        keep = torch.as_tensor(positions[s] != positions[s, 32])
        torch.testing.assert_close(step[keep], emb.number_proj[s, 1].expand(int(keep.sum()), 8), atol=1e-4,
                                   rtol=1e-3)
    assert not torch.allclose(emb.number_proj[0, 1], emb.number_proj[1, 1])   # directions of their own


CELLS = gym.spaces.Dict({"image": gym.spaces.MultiDiscrete(np.tile([4, 3, 2], (5, 1))),
                         "speed": gym.spaces.Box(-1, 1, (2,), np.float32)})


# Six cells on a 2 x 3 grid, for slots (tokenizer.symbol_grid): 6 slots x 24 cell values = 144 value ids.
GRID_CELLS = gym.spaces.Dict({"image": gym.spaces.MultiDiscrete(np.tile([4, 3, 2], (6, 1))),
                              "speed": gym.spaces.Box(-1, 1, (2,), np.float32)})


def _cells_policy(symbol_factors: bool = True, grid: tuple[int, ...] = ()) -> Policy:
    from bclm.models import ModelConfig, build_model

    space = GRID_CELLS if grid else CELLS
    space.seed(0)
    obs = gym.vector.utils.concatenate(space, [space.sample() for _ in range(32)],
                                       gym.vector.utils.create_empty_array(space, 32))
    config = TokenizerConfig(obs_bins=32, action_bins=32, value_vocab=144 if grid else 64, group=3,
                             symbol_grid=grid)
    tok = BCTokenizer(space, gym.spaces.Discrete(3), config)
    tok.fit(obs, np.zeros(32, dtype=np.int64))
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="tiny", attn_implementation="eager"), tok.vocab_size, 40, tok.bos_id,
                        tok.eos_id, tok.pad_id).eval()
    attach_for(model, tok, 2, fresh=True, radix=shared_radix([tok]) if symbol_factors else None)
    return Policy(model, tok, 40)


def _cell_id(tok: BCTokenizer, kind: int, colour: int, state: int = 0) -> int:
    return tok.value_offset + kind * 6 + colour * 2 + state


def test_packed_cells_share_the_rows_of_their_elements():
    policy = _cells_policy()
    tok = policy.tokenizer
    assert shared_radix([tok]) == (4, 3, 2)
    emb = policy.model.get_input_embeddings()
    row = {(k, c): emb(torch.tensor([_cell_id(tok, k, c)]))[0] for k in range(4) for c in range(3)}
    # Fresh free rows are zero, so a colour is one vector in every object: red ball - red key = blue ball - blue key.
    torch.testing.assert_close(row[0, 1] - row[1, 1], row[0, 2] - row[1, 2])
    assert not torch.allclose(row[0, 1], row[1, 1])
    ids = torch.as_tensor(tok.encode_observation({"image": np.array([[[2, 1, 0]] * 5]),
                                                  "speed": np.zeros((1, 2), np.float32)}))
    assert _cell_id(tok, 2, 1) in ids.tolist()[0]                   # the codec packs cells as the factors read them


@pytest.mark.parametrize("grid", [(), (2, 3)], ids=["shared ids", "slots"])
def test_factored_cells_and_numbers_export_a_plain_checkpoint_with_the_same_logits(tmp_path, grid):
    from bclm.embeddings import plain_state_dict

    policy = trained_like(_cells_policy(grid=grid))
    emb = policy.model.get_input_embeddings()
    table = plain_state_dict(policy.model.state_dict(), emb)["model.embed_tokens.weight"]
    torch.testing.assert_close(table, emb.materialized())          # the ZeRO-3 path writes the same rows
    policy.save_pretrained(tmp_path)
    assert not any("factor" in k or "number" in k for k in load_file(tmp_path / "model.safetensors"))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False).eval()
    tok = policy.tokenizer
    space = GRID_CELLS if grid else CELLS
    space.seed(1)
    obs = gym.vector.utils.concatenate(space, [space.sample() for _ in range(3)],
                                       gym.vector.utils.create_empty_array(space, 3))
    ids = torch.as_tensor(np.concatenate([np.tile(tok.prefix("default"), (3, 1)), tok.encode_observation(obs),
                                          np.full((3, 1), tok.act_id)], axis=1))
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, policy.model(input_ids=ids).logits,
                                   rtol=0, atol=1e-5)


def test_slotted_cells_say_where_they_are_and_share_a_row_per_grid_coordinate():
    policy = _cells_policy(grid=(2, 3))
    tok = policy.tokenizer
    image = np.array([[[2, 1, 0]] * 6])
    ids = tok.encode_observation({"image": image, "speed": np.zeros((1, 2), np.float32)})[0, :6]
    # Slot s holds the 24 cell values from s * 24: the same cell gets a different id in each place.
    np.testing.assert_array_equal(ids, [_cell_id(tok, 2, 1) + 24 * s for s in range(6)])
    np.testing.assert_array_equal(tok.decode_observation(tok.encode_observation(
        {"image": image, "speed": np.zeros((1, 2), np.float32)}))["image"], image)
    emb = policy.model.get_input_embeddings()

    def row(slot: int, kind: int, colour: int) -> torch.Tensor:
        return emb(torch.tensor([_cell_id(tok, kind, colour) + 24 * slot]))[0]

    # Fresh free rows are zero: moving one column right adds the same vector in either row of the grid and
    # for any cell, and moving a cell keeps what its elements add.
    torch.testing.assert_close(row(1, 0, 1) - row(0, 0, 1), row(4, 3, 2) - row(3, 3, 2))
    torch.testing.assert_close(row(5, 2, 1) - row(5, 1, 1), row(0, 2, 1) - row(0, 1, 1))
    assert not torch.allclose(row(1, 0, 1) - row(0, 0, 1), row(2, 0, 1) - row(1, 0, 1))
    assert not torch.allclose(row(3, 0, 1), row(0, 0, 1))


@pytest.mark.parametrize("grid, group, vocab, match", [
    ((2, 2), 3, 144, r"tokenizer.symbol_grid \[2, 2\] holds 4 slots but leaf 'image' packs into 6 tokens"),
    ((2, 3), 3, 64, r"needs 6 slots x 24 ids = 144 value ids, more than value_vocab=64: raise "
                    r"tokenizer.value_vocab to at least 144"),
    ((2, 2), 4, 1024, r"tokenizer.group=4 does not divide the 18 elements of leaf 'image'"),
])
def test_a_slot_grid_that_does_not_fit_is_refused_by_name(grid, group, vocab, match):
    with pytest.raises(BCLMError, match=match):
        BCTokenizer(GRID_CELLS, gym.spaces.Discrete(3), TokenizerConfig(value_vocab=vocab, group=group,
                                                                         obs_bins=32, action_bins=32,
                                                                         symbol_grid=grid))
    with pytest.raises(BCLMError, match=r"tokenizer config symbol_grid=\[7, 0\]: expected a list of integers"):
        TokenizerConfig(symbol_grid=(7, 0))


def test_a_slotted_tokenizer_round_trips_and_an_unslotted_file_has_no_grid():
    config = TokenizerConfig(obs_bins=32, action_bins=32, value_vocab=144, group=3, symbol_grid=(2, 3))
    tok = BCTokenizer(GRID_CELLS, gym.spaces.Discrete(3), config)
    assert BCTokenizer.from_dict(json.loads(json.dumps(tok.to_dict()))) == tok
    assert tok.to_dict()["codecs"]["observation"][0]["grid"] == [2, 3]
    plain = BCTokenizer(GRID_CELLS, gym.spaces.Discrete(3), TokenizerConfig(group=3)).to_dict()
    assert "symbol_grid" not in plain["config"] and "grid" not in json.dumps(plain["codecs"])


def test_a_warm_start_with_factors_keeps_the_embedding_it_was_given():
    from bclm.embeddings import untie

    policy = trained_like(_cells_policy(symbol_factors=False))
    model = policy.model
    before = model.get_input_embeddings().materialized()
    plain = torch.nn.Embedding.from_pretrained(before.clone(), freeze=False)
    untie(model)
    model.set_input_embeddings(plain)
    attach_for(model, policy.tokenizer, 2, fresh=False, radix=(4, 3, 2))
    ids = torch.arange(before.shape[0])
    torch.testing.assert_close(model.get_input_embeddings()(ids), before, rtol=0, atol=1e-5)


def test_two_packed_layouts_are_refused_by_name():
    tokenizers = []
    for nvec in ([4, 3, 2], [5, 3, 2]):
        space = gym.spaces.MultiDiscrete(np.tile(nvec, (2, 1)))
        config = TokenizerConfig(obs_bins=64, action_bins=64, value_vocab=64, group=3)
        tokenizers.append(BCTokenizer(space, gym.spaces.Discrete(2), config))
    with pytest.raises(BCLMError, match=r"model.symbol_factors: packed tokens have 2 element layouts"):
        shared_radix(tokenizers)
    gridded = [BCTokenizer(GRID_CELLS, gym.spaces.Discrete(2), TokenizerConfig(
        obs_bins=32, action_bins=32, value_vocab=144, group=3, symbol_grid=grid)) for grid in ((2, 3), (3, 2))]
    with pytest.raises(BCLMError, match=r"packed tokens lie on 2 slot grids \(\[2, 3\], \[3, 2\]\); expected one "
                                        r"tokenizer.symbol_grid"):
        shared_radix(gridded)
    assert shared_radix([BCTokenizer(gym.spaces.Discrete(4), gym.spaces.Discrete(2), TokenizerConfig())]) is None


MISSION_CELLS = gym.spaces.Dict({"image": gym.spaces.MultiDiscrete(np.tile([4, 3, 2], (5, 1))),
                                 "mission": gym.spaces.Text(40, charset="abcdefghijklmnopqrstuvwxyz ")})
WORDS = {"red": [1, 1], "blue": [1, 2], "ball": [0, 2], "key": [0, 3]}


def _missions(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    missions = [f"go to {rng.choice(['the', 'a'])} {rng.choice(['red', 'blue'])} {rng.choice(['ball', 'key'])}"
                for _ in range(n)]
    return {"image": rng.integers(0, [4, 3, 2], (n, 5, 3)), "mission": np.array(missions, dtype=object)}


def _mission_policy() -> Policy:
    from bclm.models import ModelConfig, build_model

    config = TokenizerConfig(obs_bins=32, action_bins=32, value_vocab=64, group=3, text_max_tokens=5)
    tok = BCTokenizer(MISSION_CELLS, gym.spaces.Discrete(3), config)
    tok.fit(_missions(64, 0), np.zeros(64, dtype=np.int64))
    torch.manual_seed(0)
    model = build_model(ModelConfig(size="tiny", attn_implementation="eager"), tok.vocab_size, 40, tok.bos_id,
                        tok.eos_id, tok.pad_id).eval()
    attach_for(model, tok, 2, fresh=True, radix=(4, 3, 2), words=word_rows([tok], (4, 3, 2), WORDS))
    return Policy(model, tok, 40)


def test_mission_words_share_the_rows_of_the_cells_that_show_them():
    policy = _mission_policy()
    tok, emb = policy.tokenizer, policy.model.get_input_embeddings()
    red, blue = tok.word_ids("red"), tok.word_ids("blue")
    assert red and blue and not red & blue
    ids = tok.encode_observation(_missions(1, 1) | {"mission": np.array(["go to the red ball"], dtype=object)})
    assert red & set(ids[0].tolist())                          # the mission's "red" is one of the tied ids
    word = {w: emb(torch.tensor(sorted(tok.word_ids(w))))[0] for w in WORDS}
    torch.testing.assert_close(word["red"], emb.symbol_factors[4 + 1])       # fresh: the word is its element
    # the word difference equals the cell difference: red ball - blue ball = "red" - "blue"
    cell = emb(torch.tensor([_cell_id(tok, 2, 1), _cell_id(tok, 2, 2)]))
    torch.testing.assert_close(cell[0] - cell[1], word["red"] - word["blue"])
    assert emb(torch.tensor(sorted(tok.word_ids("go")))).abs().sum() > 0      # untied words keep their rows


def test_tied_words_export_a_plain_checkpoint_with_the_same_logits(tmp_path):
    from bclm.embeddings import plain_state_dict

    policy = trained_like(_mission_policy())
    emb = policy.model.get_input_embeddings()
    table = plain_state_dict(policy.model.state_dict(), emb)["model.embed_tokens.weight"]
    torch.testing.assert_close(table, emb.materialized())
    policy.save_pretrained(tmp_path)
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False).eval()
    tok = policy.tokenizer
    ids = torch.as_tensor(np.concatenate([np.tile(tok.prefix("default"), (4, 1)),
                                          tok.encode_observation(_missions(4, 2)), np.full((4, 1), tok.act_id)],
                                         axis=1))
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, policy.model(input_ids=ids).logits,
                                   rtol=0, atol=1e-5)


def test_word_factors_refuse_what_they_cannot_tie_by_name():
    tok = _mission_policy().tokenizer
    with pytest.raises(BCLMError, match=r"model.word_factors.purple: no text token of the data spells 'purple'"):
        word_rows([tok], (4, 3, 2), {"purple": [1, 0]})
    with pytest.raises(BCLMError, match=r"model.word_factors.red: \[element, value\] = \[1, 3\] is outside"):
        word_rows([tok], (4, 3, 2), {"red": [1, 3]})
    with pytest.raises(BCLMError, match=r"model.word_factors: no packed observation tokens"):
        word_rows([tok], None, WORDS)
    assert word_rows([tok], None, {}) is None
    from bclm.models import ModelConfig

    with pytest.raises(BCLMError, match=r"model.word_factors needs model.symbol_factors true"):
        ModelConfig(word_factors=WORDS)
    with pytest.raises(BCLMError, match=r"model.word_factors.red: expected \[element, value\]"):
        ModelConfig(symbol_factors=True, word_factors={"red": "1, 0"})


@pytest.mark.parametrize("head", ["regression", "bins"])
def test_rows_follow_their_values_when_a_warm_start_widens_the_bins(head):
    """After `cover`, the id of a value inside the old bounds embeds it with the row its old id had, a value
    past them with the old edge row (where the old bounds clipped it); output rows move for chosen action bins
    only, and no other row moves."""
    from bclm.embeddings import reindex_numbers
    from bclm.models import ModelConfig, build_model

    rng = np.random.default_rng(0)
    space = (gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), gym.spaces.Box(-np.inf, np.inf, (1,), np.float32))
    tok = BCTokenizer(*space, TokenizerConfig(obs_bins=64, action_bins=32, value_vocab=128, action_head=head,
                                                  action_bounds="data"))
    first, actions = rng.normal(size=(300, 2)).astype(np.float32), rng.normal(size=(300, 1)).astype(np.float32)
    tok.fit(first, actions)
    model = build_model(ModelConfig(size="tiny"), tok.vocab_size, 32, tok.bos_id, tok.eos_id, tok.pad_id)
    table, out = (m.weight.detach().clone() for m in (model.get_input_embeddings(), model.get_output_embeddings()))
    old = BCTokenizer.from_dict(tok.to_dict())
    wide = np.concatenate([first, first * 30]), np.concatenate([actions, actions * 30])
    assert tok.cover(*wide)
    moved = reindex_numbers(model, {"default": old}, {"default": tok})
    new_table, new_out = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    values = tok.decode_observation(tok.encode_observation(wide[0]))        # at the centres of the new bins
    new_ids, old_ids = tok.encode_observation(values), old.encode_observation(values)
    torch.testing.assert_close(new_table[torch.as_tensor(new_ids)], table[torch.as_tensor(old_ids)], rtol=0, atol=0)
    past = values[:, 0] > old.obs_codecs[0].high[0]
    assert past.any() and (old_ids[past, 0] == old_ids[past, 0].max()).all()        # the old edge bin
    numbers = slice(tok.number_offset, tok.number_offset + tok.number_vocab)
    assert moved == 64 * 2 + 32 and torch.equal(new_table[:numbers.start], table[:numbers.start])
    act_ids = torch.as_tensor(tok.encode_action(wide[1]).ravel())
    if head == "bins":
        assert torch.equal(new_out[act_ids], out[torch.as_tensor(old.encode_action(tok.decode_action(
            tok.encode_action(wide[1]))).ravel())])
    else:                                  # the regressed value is the logit of the slot's first id: kept
        assert torch.equal(new_out, out)
