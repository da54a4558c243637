"""Continuous control: the regression head (values read at the ACT token) and the state token (the step's
continuous observation projected into one vector there), and how both are saved, loaded and trained."""

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

from bclm import config as cfg
from bclm.collect import collect
from bclm.data.sequences import IGNORE_INDEX, action_labels, tokenize_episodes
from bclm.envs import get_task
from bclm.hub.policies import stage_policy
from bclm.info import describe_policy
from bclm.policy import Policy
from bclm.state import STATE_FILE, feeding, fit_read_out, serving, state_of
from bclm.tokenizers import BCTokenizer, TokenizerConfig
from bclm.trainer.bc import train
from bclm.trainer.config import TrainRecipe
from bclm.trainer.regression import RegressionTargets

OBS = gym.spaces.Dict({"goal": gym.spaces.Box(-1, 1, (2,), np.float32), "mode": gym.spaces.Discrete(3),
                       "pos": gym.spaces.Box(-2, 2, (2,), np.float32)})
ACT = gym.spaces.Box(-1, 1, (2,), np.float32)
REACH = "benchmarks.point_reach:PointReach-v0"


def _stream(space: gym.Space, batch: int, steps: int, seed: int):
    bspace = gym.vector.utils.batch_space(space, batch)
    bspace.seed(seed)
    return [bspace.sample() for _ in range(steps)]


# --- the tokenizer's side ---------------------------------------------------------------------------

def test_regressed_values_decode_exactly_and_stay_in_the_space():
    tok = tiny_policy(OBS, ACT).tokenizer
    assert tok.regression and tok.regressed_actions().tolist() == [True, True]
    actions = np.array([[0.1234567, -0.7654321], [1.0, -1.0]], np.float32)
    values = tok.action_codecs[0].normalize(actions)
    ids = tok.regressed_ids(values)
    np.testing.assert_allclose(tok.decode_action(ids, values), actions, atol=1e-6)     # no bin rounding
    np.testing.assert_array_equal(ids, tok.encode_action(actions))                       # the context sees bins
    far = tok.decode_action(ids, values * 5)
    assert ACT.contains(far[0]) and ACT.contains(far[1])


def test_a_tokenizer_with_bins_or_discrete_actions_regresses_nothing():
    bins = BCTokenizer(OBS, ACT, TokenizerConfig(action_head="bins"))
    discrete = BCTokenizer(OBS, gym.spaces.Discrete(3))
    for tok in (bins, discrete):
        assert not tok.regression and (tok.regression_ids() == -1).all()
    assert discrete.to_dict()["format_version"] == 3        # files of discrete tasks are unchanged


def test_relabeled_steps_keep_every_regressed_target():
    tok = tiny_policy(OBS, ACT).tokenizer
    executed = np.array([[1, 2]]) + tok.number_offset
    expert = np.array([[5, 6]]) + tok.number_offset
    assert (action_labels(tok, executed, expert) == expert).all()
    bins = BCTokenizer(OBS, ACT, TokenizerConfig(action_head="bins"))      # dimension 1 follows dimension 0
    assert action_labels(bins, executed, expert).tolist() == [[expert[0, 0], IGNORE_INDEX]]


# --- the loss ---------------------------------------------------------------------------------------

def test_regression_loss_reads_each_value_at_its_own_windows_act_token():
    act_id, offset = 3, 10
    positions = torch.linspace(-1, 1, 8).repeat(2, 1)                     # 2 slots of 8 bins
    # Two packed windows: [bos, task, obs, ACT, a0, a1] twice; targets are the next tokens.
    ids = torch.tensor([[1, 7, 5, act_id, 12, 19, 1, 7, 5, act_id, 11, 20]])
    keep = torch.tensor([3, 4, 9, 10])                                     # ACT and first action token of each
    targets = ids[:, 1:][:, keep]
    logits = torch.randn(1, len(keep), 30)
    loss, regressed, hits = RegressionTargets(act_id, offset, positions).token_loss(logits, targets, keep, ids)
    assert regressed.all()
    flat = positions.flatten()
    want = [(logits[0, 0, offset] - flat[2]) ** 2, (logits[0, 0, offset + 8] - flat[9]) ** 2,
            (logits[0, 2, offset] - flat[1]) ** 2, (logits[0, 2, offset + 8] - flat[10]) ** 2]
    torch.testing.assert_close(loss[0], torch.stack(want))
    logits[0, 0, offset], logits[0, 0, offset + 8] = flat[2] + 0.01, flat[9] - 0.01
    _, _, hits = RegressionTargets(act_id, offset, positions).token_loss(logits, targets, keep, ids)
    assert hits[0, :2].all()
    plain = torch.tensor([[4, 4, 4, 4]])                                   # a value token: not regressed
    assert not RegressionTargets(act_id, offset, positions).token_loss(logits, plain, keep, ids)[1].any()


def test_the_residual_penalty_weighs_only_what_the_transformer_adds_to_the_linear_law():
    from bclm.data.collate import PadCollator
    from bclm.data.sequences import WindowDataset
    from bclm.trainer.regression import regression_targets
    from bclm.trainer.step import action_loss

    policy = trained_like(tiny_policy(OBS, ACT, context_length=40))
    tok, model = policy.tokenizer, policy.model
    obs = _stream(OBS, 8, 1, seed=1)[0]
    actions = np.tanh(obs["goal"] - obs["pos"]).astype(np.float32)
    tokens = tokenize_episodes(tok, obs, actions, np.zeros(8, int), np.arange(8), np.full(8, "default"))
    windows = WindowDataset(tokens, tok, 40)
    batch = PadCollator(tok.pad_id)([windows[i] for i in range(len(windows))])

    def penalty(weight: float) -> tuple[torch.Tensor, torch.Tensor]:
        model.zero_grad()
        total, stats = action_loss(model, batch, regression=regression_targets({"default": tok}, weight))
        total.backward()
        return (total - stats["loss"]).detach(), state_of(model).read_out.grad.clone()

    none, read_out_grad = penalty(0.0)
    some, _ = penalty(0.1)
    more, more_grad = penalty(0.2)
    assert none == 0 and some > 0
    torch.testing.assert_close(more, 2 * some)                 # linear in its weight; the logged loss excludes it
    torch.testing.assert_close(more_grad, read_out_grad)      # the linear law itself is not pulled towards 0
    # Without a read-out (no state token) the LM's output is the whole value: nothing to penalise.
    plain = tiny_policy(OBS, ACT, context_length=40)
    embedding = plain.model.get_input_embeddings()
    embedding.state = None
    total, stats = action_loss(plain.model, batch, regression=regression_targets({"default": tok}, 0.1))
    torch.testing.assert_close(total, stats["loss"])


# --- the state token --------------------------------------------------------------------------------

def test_the_state_token_is_a_linear_map_of_the_steps_observation_numbers():
    policy = trained_like(tiny_policy(OBS, ACT, context_length=40))
    tok, state = policy.tokenizer, state_of(policy.model)
    obs = _stream(OBS, 2, 1, seed=0)[0]
    step = np.concatenate([tok.encode_observation(obs), np.full((2, 1), tok.act_id)], axis=1)
    ids = torch.as_tensor(np.concatenate([np.tile(tok.prefix("default"), (2, 1)), step], axis=1))
    out = state(ids)
    assert (out[:, :-1] == 0).all()                                        # only the ACT token
    positions = torch.as_tensor(tok.number_positions("observation"), dtype=torch.float32)
    local = ids - tok.number_offset
    want = torch.zeros(2, out.shape[-1])
    for b, t in zip(*torch.nonzero((local >= 0) & (local < tok.number_vocab), as_tuple=True)):
        slot, k = divmod(int(local[b, t]), tok.number_width)
        want[b] += positions[slot, k] * state.weight[slot]
    torch.testing.assert_close(out[:, -1], want)
    # A cached decoding step holds no task token: `serving` gives the step's length, and the state is the same.
    with serving(policy.model, tok, "default"):
        torch.testing.assert_close(state(torch.as_tensor(step))[:, -1], want)
    # The numbers of another step (the history before this one) do not enter this step's state.
    longer = torch.cat([ids[:, :2], torch.as_tensor(step), ids[:, 2:]], dim=1)
    torch.testing.assert_close(state(longer)[:, -1], want)


def test_a_regressed_value_is_the_lm_output_plus_a_read_out_linear_in_the_observation():
    policy = trained_like(tiny_policy(OBS, ACT, context_length=40))
    tok, state = policy.tokenizer, state_of(policy.model)
    obs = _stream(OBS, 3, 1, seed=0)[0]
    ids = torch.as_tensor(np.concatenate([np.tile(tok.prefix("default"), (3, 1)), tok.encode_observation(obs),
                                          np.full((3, 1), tok.act_id)], axis=1))
    values = torch.as_tensor(np.concatenate([np.zeros((3, 2)), tok.observation_values(obs), np.zeros((3, 1))],
                                            axis=1), dtype=torch.float32)
    with torch.no_grad(), feeding(policy.model, values):
        lm = policy.model(input_ids=ids).logits[:, -1]
    local = (ids - tok.number_offset).clamp(0, tok.number_vocab - 1) // tok.number_width
    is_number = (ids >= tok.number_offset) & (ids < tok.number_offset + tok.number_vocab)
    linear = (values * is_number)[..., None] * state.read_out.detach()[0, local]     # (3, T, regressed slots)
    want = torch.tanh(lm[:, tok.regression_ids()] + linear.sum(dim=1))          # Box(-1, 1): bounded, squashed
    assert tok.squashed_actions().all()
    got = policy.new_session(3).act(obs)
    np.testing.assert_allclose(got, tok.decode_action(tok.regressed_ids(want.numpy()), want.numpy()), atol=1e-5)
    assert state.read_out.abs().sum() > 0


def test_the_read_out_starts_at_the_least_squares_linear_law_of_the_training_steps():
    policy = tiny_policy(OBS, ACT)
    tok, state = policy.tokenizer, state_of(policy.model)
    obs = _stream(OBS, 300, 1, seed=4)[0]
    actions = np.tanh(0.3 * obs["goal"] - 0.2 * obs["pos"][:, ::-1]).astype(np.float32)  # of 4 numbers, squashed
    n = len(actions)
    tokens = tokenize_episodes(tok, obs, actions, np.arange(n) // 30, np.arange(n) % 30, np.full(n, "default"))
    fit_read_out(policy.model, [("default", tok, tokens)])
    obs_at = np.flatnonzero(tok.number_mask())
    slots = (tok.number_slot_starts()[obs_at] - tok.number_offset) // tok.number_width
    pred = tokens.values[:, obs_at] @ state.read_out.detach().numpy()[0, slots]          # (n, 2), intercept aside
    target = np.arctanh(tokens.value_labels[:, tok.obs_len + 1:])                       # the bounded dims' output
    assert np.abs((pred - target) - (pred - target).mean(0)).max() < 1e-3


def test_each_task_of_a_mixture_gets_its_own_linear_read_out():
    from bclm.embeddings import attach_for
    from bclm.models import ModelConfig, build_model
    from bclm.state import attach_state
    from bclm.tokenizers import build_tokenizers

    obs_space, act_space = gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(-1, 1, (1,), np.float32)
    toks = build_tokenizers({"a": (obs_space, act_space), "b": (obs_space, act_space)},
                            TokenizerConfig(obs_bins=64, action_bins=32, value_vocab=128))
    laws = {"a": np.array([0.5, 0.0, 0.0]), "b": np.array([-0.5, 0.0, 0.3])}     # opposite gains on o_0
    obs = np.random.default_rng(0).uniform(-1, 1, (400, 3)).astype(np.float32)
    steps = []
    for name, tok in toks.items():
        actions = np.tanh(obs @ laws[name])[:, None].astype(np.float32)
        tok.fit(obs, actions)
        steps.append((name, tok, tokenize_episodes(tok, obs, actions, np.arange(400) // 40, np.arange(400) % 40,
                                                   np.full(400, name))))
    model = build_model(ModelConfig(size="tiny"), toks["a"].vocab_size, 16, toks["a"].bos_id, toks["a"].eos_id,
                        toks["a"].pad_id)
    attach_for(model, toks["a"], 16, fresh=True)
    state = attach_state(model, toks)
    fit_read_out(model, steps)
    for name, tok, tokens in steps:
        obs_at = np.flatnonzero(tok.number_mask())
        slots = (tok.number_slot_starts()[obs_at] - tok.number_offset) // tok.number_width
        pred = tokens.values[:, obs_at] @ state.read_out.detach().numpy()[tok.tasks.index(name), slots]
        target = np.arctanh(np.clip(tokens.value_labels[:, tok.obs_len + 1:], -0.95, 0.95))
        assert np.abs((pred - target) - (pred - target).mean(0)).max() < 0.05, name     # its own law
        # The ACT token reads the read-out of the window's task, or of the served task in a cached step.
        prefix, step = tok.prefix(name), slice(0, tok.obs_len + 1)                # observations, then ACT
        ids = torch.as_tensor(np.concatenate([prefix, tokens.steps[0, step]]))[None]
        values = torch.as_tensor(np.concatenate([np.zeros(len(prefix)), tokens.values[0, step]]),
                                 dtype=torch.float32)[None]
        want = torch.as_tensor(pred[0], dtype=torch.float32)
        with feeding(model, values):
            state(ids)
        torch.testing.assert_close(state.linear[0, -1], want)
        with serving(model, tok, name), feeding(model, values[:, len(prefix):]):
            state(ids[:, len(prefix):])
        torch.testing.assert_close(state.linear[0, -1], want)


def test_a_policy_with_a_state_token_and_regression_round_trips(tmp_path):
    policy = trained_like(tiny_policy(OBS, ACT, context_length=40))
    policy.save_pretrained(tmp_path)
    assert not any("state" in k for k in load_file(tmp_path / "model.safetensors"))
    saved, state = load_file(tmp_path / STATE_FILE), state_of(policy.model)
    assert all(torch.equal(saved[k], getattr(state, k).detach()) for k in ("weight", "read_out"))
    plain = AutoModelForCausalLM.from_pretrained(tmp_path, trust_remote_code=False)       # no bclm code
    assert type(plain.get_input_embeddings()) is torch.nn.Embedding
    loaded = Policy.from_pretrained(tmp_path, device="cpu")
    for obs in _stream(OBS, 3, 12, seed=1):
        # To float32 rounding: the loaded table holds the rows the live model computes from its basis.
        np.testing.assert_allclose(policy.act(obs), loaded.act(obs), rtol=0, atol=1e-5)
    described = "\n".join(describe_policy(tmp_path))                     # what `bclm info` prints
    assert "2 continuous action value(s) regressed at ACT" in described and STATE_FILE in described
    staged = dict(stage_policy(tmp_path, tmp_path / "staged"))            # what `bclm push` uploads
    assert STATE_FILE in staged and STATE_FILE in (tmp_path / "staged" / "README.md").read_text()


def test_a_policy_saved_before_the_regression_head_loads_and_acts_identically():
    """tests/golden/policy_v3: Box actions as bins (tokenizer format 3), no state projector, and the actions
    the bclm that wrote it took (commit 4465aa7)."""
    golden = Path(__file__).parent / "golden" / "policy_v3"
    expected = json.loads((golden / "expected_actions.json").read_text())
    policy = Policy.from_pretrained(golden, device="cpu")
    assert not policy.tokenizer.regression and state_of(policy.model) is None
    session = policy.new_session(4)
    actions = [session.act(np.asarray(o, np.float32)).tolist() for o in expected["observations"]]
    assert actions == expected["actions"]


# --- training ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def reach_data(tmp_path_factory):
    path = tmp_path_factory.mktemp("reach") / "data"
    collect(get_task(REACH), "benchmarks.point_reach:expert", 16, path, seed=0)
    return path


def test_regression_learns_a_law_linear_in_several_observation_numbers(reach_data, tmp_path):
    """About 500 labels of a reach whose expert force is linear in position, velocity and goal (an MLP learns
    it from 1,000): the policy reaches most goals it has never seen."""
    recipe = cfg.build_config(TrainRecipe, None, [
        "--dataset", str(reach_data), "--output-dir", str(tmp_path / "p"), "--model.size", "tiny",
        "--train.epochs", "0", "--train.max_steps", "400", "--train.lr", "2e-3", "--train.warmup_steps", "10",
        "--loop.log_every", "25", "--loop.progress", "false", "--data.val_episodes", "0",
        "--eval.episodes", "10", "--eval.num_envs", "5", "--eval.select_episodes", "0"])      # what training learned
    train(recipe)
    losses = [json.loads(x)["loss"] for x in (tmp_path / "p" / "metrics.jsonl").read_text().splitlines()
              if '"loss"' in x]
    assert losses[-1] < losses[0] / 20, losses
    report = json.loads((tmp_path / "p" / "eval_report.json").read_text())
    assert report["success_rate"] >= 0.6, report["success_rate"]
    assert (tmp_path / "p" / STATE_FILE).is_file()


def test_each_task_keeps_the_least_squares_law_alone_where_it_succeeds_more_often(reach_data, tmp_path):
    """Five training steps leave the transformer's share poor; the reach's expert is linear in the observation,
    so the law alone succeeds more often on the selection episodes and is kept: saved with the policy, acted
    with by the evaluation and after a reload. A warm start trains the whole policy again."""
    def recipe(out, *extra):
        return cfg.build_config(TrainRecipe, None, [
            "--dataset", str(reach_data), "--output-dir", str(out), "--model.size", "tiny", "--train.epochs", "0",
            "--train.max_steps", "5", "--train.warmup_steps", "0", "--loop.progress", "false", "--eval.episodes", "10",
            "--eval.num_envs", "5",
            "--eval.select_episodes", "10", *extra])

    policy = train(recipe(tmp_path / "p"))
    choice = json.loads((tmp_path / "p" / "law_selection.json").read_text())[REACH]
    assert choice["kept"] == "law" and choice["law"] > choice["policy"], choice
    assert json.loads((tmp_path / "p" / "eval_report.json").read_text())["success_rate"] >= 0.6
    loaded = Policy.from_pretrained(tmp_path / "p", device="cpu")
    assert state_of(loaded.model).trunk_gate.tolist() == [0.0] and state_of(loaded.model).law_only
    for obs in _stream(loaded.tokenizer.observation_space, 3, 5, seed=2):
        np.testing.assert_allclose(policy.act(obs), loaded.act(obs), rtol=0, atol=1e-5)
    warm = train(recipe(tmp_path / "w", "--init-from", str(tmp_path / "p"), "--eval.select_episodes", "0"))
    assert state_of(warm.model).trunk_gate.tolist() == [1.0] and not state_of(warm.model).law_only
