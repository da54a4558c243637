"""Behavior-cloning trainer: it learns, it changes every parameter, it saves and resumes."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from bclm import config as cfg
from bclm.collect import collect
from bclm.envs import get_task
from bclm.errors import BCLMError
from bclm.policy import POLICY_FILE, Policy
from bclm.trainer.bc import train
from bclm.trainer.config import TrainRecipe
from bclm.trainer.rundir import DONE_MARKER, latest_checkpoint
from bclm.trainer.step import action_loss

ENV = "tests.custom_env:CustomTarget-v0"


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    path = tmp_path_factory.mktemp("trainer") / "data"
    collect(get_task(ENV), "tests.custom_env:expert", 12, path, seed=0)
    return path


def _recipe(dataset, out, *extra: str) -> TrainRecipe:
    return cfg.build_config(TrainRecipe, None, [
        "--dataset", str(dataset), "--output-dir", str(out), "--model.size", "tiny",
        "--data.context_length", "14", "--train.lr", "3e-3", "--train.warmup_steps", "5",
        "--train.batch_size", "16", "--loop.log_every", "5", "--loop.progress", "false",
        "--eval.episodes", "2", "--eval.num_envs", "2", *extra])


def _losses(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]


def test_training_lowers_loss_and_changes_every_parameter(dataset, tmp_path, monkeypatch):
    import copy

    import bclm.trainer.bc as bc

    initial = {}

    def recording_build_model(*args, **kwargs):
        model = build_model(*args, **kwargs)
        initial["model"] = copy.deepcopy(model)
        return model

    build_model = bc.build_model
    monkeypatch.setattr(bc, "build_model", recording_build_model)
    recipe = _recipe(dataset, tmp_path / "p", "--train.max_steps", "40", "--data.val_episodes", "2")
    policy = train(recipe)
    for (name, p0), p1 in zip(initial["model"].named_parameters(), policy.model.parameters()):
        assert not torch.equal(p0, p1), f"{name} did not change"
    logs = _losses(tmp_path / "p")
    assert logs[-1]["loss"] < 0.5 * logs[0]["loss"]
    val = _validations(tmp_path / "p")
    assert val[-1]["step"] == 40 and "val_action_accuracy" in val[-1]
    assert val[-1]["val_loss"] < val[0]["val_loss"]
    assert logs[-1]["action_accuracy"] > 0.8
    report = json.loads((tmp_path / "p" / "eval_report.json").read_text())
    assert report["episodes"] == 2


def _validations(out):
    return [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines() if '"val_loss"' in x]


def test_the_exported_policy_has_the_best_validation_weights_and_a_resume_keeps_them(dataset, tmp_path):
    from safetensors.torch import load_file

    from bclm.trainer.best import BEST_FILE

    out = tmp_path / "p"
    # A learning rate far too high for the last steps makes the final weights worse than earlier ones.
    args = ("--train.max_steps", "30", "--data.val_episodes", "3", "--loop.val_every", "5",
            "--loop.keep_best", "val_loss", "--train.lr", "3e-2", "--train.min_lr_ratio", "1",
            "--loop.save_every", "25")
    policy = train(_recipe(dataset, out, *args))
    val = _validations(out)
    best = min(val, key=lambda v: (v["val_loss"], -v["step"]))
    assert best["step"] == 25                             # not the last weights (seen in this run: 1.00 at 30)
    weights = load_file(out / BEST_FILE)
    from safetensors import safe_open
    with safe_open(str(out / BEST_FILE), framework="pt") as f:
        assert int(f.metadata()["step"]) == best["step"]
    live = policy.model.state_dict()
    assert all(torch.equal(live[k], v) for k, v in weights.items())
    # A run killed during its final save (no done marker, half a policy) resumes from step 25: it validates
    # step 30 again, logs each step once, and exports the recorded best.
    for name in (DONE_MARKER, "model.safetensors", POLICY_FILE):
        (out / name).unlink()
    again = train(_recipe(dataset, out, *args))
    assert [v["step"] for v in _validations(out)] == [v["step"] for v in val]
    assert all(torch.equal(again.model.state_dict()[k], v) for k, v in weights.items())


def test_keep_best_auto_chooses_on_accuracy_for_discrete_actions_and_keeps_the_last_for_continuous_ones():
    import gymnasium as gym
    import numpy as np

    from bclm.tokenizers import BCTokenizer, TokenizerConfig
    from bclm.trainer.bc import best_metric

    obs_space, rng = gym.spaces.Box(-1, 1, (2,), np.float32), np.random.default_rng(0)
    obs = rng.uniform(-1, 1, (50, 2)).astype(np.float32)
    discrete = BCTokenizer(obs_space, gym.spaces.Discrete(3), TokenizerConfig()).fit(obs, rng.integers(0, 3, 50))
    box = gym.spaces.Box(-2, 2, (1,), np.float32)
    continuous = BCTokenizer(obs_space, box, TokenizerConfig()).fit(obs, rng.uniform(-2, 2, (50, 1)).astype(np.float32))
    assert best_metric("auto", {"a": discrete}) == "val_action_accuracy"
    assert best_metric("auto", {"a": discrete, "b": continuous}) == ""
    assert best_metric("val_loss", {"b": continuous}) == "val_loss"


def test_by_default_continuous_actions_train_twice_the_passes_of_discrete_ones(tmp_path):
    """train.epochs auto: 100 passes over Pendulum's 200 windows at 200 a step is 100 steps (50 if discrete)."""
    data, out = tmp_path / "data", tmp_path / "p"
    collect(get_task("Pendulum-v1"), None, 1, data, seed=0)
    train(cfg.build_config(TrainRecipe, None, [
        "--dataset", str(data), "--output-dir", str(out), "--model.size", "tiny", "--train.batch_size", "200",
        "--train.max_steps", "1000", "--loop.log_every", "50", "--loop.progress", "false", "--eval.episodes", "1"]))
    assert [r["step"] for r in _losses(out)][-1] == 100


def test_by_default_a_tenth_of_the_episodes_is_held_out_spread_over_the_dataset(dataset):
    from bclm.data.store import TrajectoryStore
    from bclm.trainer.data import split_episodes

    steps = TrajectoryStore(dataset).arrays()
    train_part, held = split_episodes(steps, -1)          # 12 episodes: 1 held out, the last
    assert len(train_part.columns["episode"]) + len(held.columns["episode"]) == len(steps.columns["episode"])
    assert set(held.columns["episode"]) == {steps.columns["episode"].max()}
    _, held3 = split_episodes(steps, 3)
    assert len(set(held3.columns["episode"])) == 3 and steps.columns["episode"].min() in held3.columns["episode"]
    assert split_episodes(steps, 0)[1] is None


@pytest.mark.parametrize("schedule,peak_until,last", [("cosine", 10, 1e-4), ("wsd", 80, 1e-4),
                                                    ("constant", 99, 1e-3)])
def test_schedules_hold_the_peak_as_long_as_they_say_and_end_where_they_should(schedule, peak_until, last):
    from bclm.trainer.config import OptimConfig
    from bclm.trainer.step import make_scheduler
    optim = OptimConfig(schedule=schedule, max_steps=100, warmup_steps=10, lr=1e-3, min_lr_ratio=0.1)
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=optim.lr)
    scheduler, lrs = make_scheduler(opt, optim), []
    for _ in range(optim.max_steps):
        lrs.append(scheduler.get_last_lr()[0])
        opt.step()
        scheduler.step()
    assert lrs[0] < lrs[5] < lrs[10] and max(lrs) == pytest.approx(1e-3)      # the warmup
    assert lrs[10:peak_until + 1] == pytest.approx([1e-3] * (peak_until - 9))  # wsd: decays over the last 20%
    assert peak_until == 99 or lrs[peak_until + 1] < lrs[peak_until]
    assert lrs[-1] == pytest.approx(last, rel=0.1)


def test_action_loss_ignores_observation_tokens():
    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    ids = torch.randint(0, 20, (2, 9))
    labels = torch.full_like(ids, -100)
    labels[:, [4, 8]] = ids[:, [4, 8]]
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}
    loss, stats = action_loss(model, batch)
    reference = model(**batch).loss          # transformers' own shifted cross-entropy
    assert torch.allclose(loss, reference, atol=1e-5)
    assert int(stats["action_tokens"]) == 4


def test_observation_loss_is_the_weighted_cross_entropy_of_observation_tokens():
    torch.manual_seed(0)
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(LlamaConfig(vocab_size=20, hidden_size=16, intermediate_size=32,
                                         num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2))
    ids = torch.randint(0, 20, (2, 9))
    labels, obs_labels = torch.full_like(ids, -100), torch.full_like(ids, -100)
    labels[:, [4, 8]] = ids[:, [4, 8]]
    obs_labels[:, [1, 2, 3, 5, 6, 7]] = ids[:, [1, 2, 3, 5, 6, 7]]
    batch = {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids),
             "obs_labels": obs_labels}
    loss, stats = action_loss(model, batch, obs_weight=0.25)
    plain = {k: batch[k] for k in ("input_ids", "attention_mask")}
    actions, observations = model(**plain, labels=labels).loss, model(**plain, labels=obs_labels).loss
    torch.testing.assert_close(loss, actions + 0.25 * observations)
    torch.testing.assert_close(stats["loss"], actions)                   # what is logged stays the actions'
    torch.testing.assert_close(stats["obs_loss"], observations)


def test_training_with_observation_prediction_logs_it_and_validates_on_actions(dataset, tmp_path):
    out = tmp_path / "p"
    train(_recipe(dataset, out, "--train.max_steps", "30", "--train.obs_loss_weight", "0.5",
                  "--data.val_episodes", "2"))
    logs = _losses(out)
    assert logs[-1]["obs_loss"] < 0.7 * logs[0]["obs_loss"] and logs[-1]["loss"] < logs[0]["loss"]
    val = _validations(out)
    assert val and not any("val_obs_loss" in v for v in val)
    assert yaml.safe_load((out / "recipe.yaml").read_text())["train"]["obs_loss_weight"] == 0.5


def test_interrupted_run_resumes_from_its_last_checkpoint(dataset, tmp_path):
    out = tmp_path / "p"
    train(_recipe(dataset, out, "--train.max_steps", "10", "--loop.save_every", "5"))
    assert latest_checkpoint(out).name == "step-5"
    def logged():
        return [(m["step"], m["loss"], m["action_accuracy"]) for m in _losses(out)]

    before = logged()
    # A crash after transformers wrote config.json, before the weights: not finished, not stuck.
    for name in (DONE_MARKER, "model.safetensors", POLICY_FILE, "eval_report.json"):
        (out / name).unlink()
    with (out / "metrics.jsonl").open("a") as f:
        f.write('{"loss": 1.0, "st')                      # a log line cut short by the kill
    train(_recipe(dataset, out, "--train.max_steps", "10", "--loop.save_every", "5"))
    assert logged() == before                  # resumed at step 5: each step logged once, the same losses
    Policy.from_pretrained(out)
    with pytest.raises(BCLMError, match="already holds a finished policy"):
        train(_recipe(dataset, out, "--train.max_steps", "10"))


def test_a_wsd_run_resumed_with_more_steps_is_the_longer_run(dataset, tmp_path):
    """Only WSD's decay depends on the run's length, so a checkpoint of its stable phase extends the run."""
    args = ("--train.epochs", "0", "--train.schedule", "wsd", "--train.warmup_steps", "2", "--loop.log_every", "1")
    extended, planned = tmp_path / "extended", tmp_path / "planned"
    train(_recipe(dataset, extended, *args, "--train.max_steps", "10", "--loop.save_every", "5"))
    train(_recipe(dataset, extended, *args, "--train.max_steps", "20", "--overwrite", "true"))  # from step 5
    train(_recipe(dataset, planned, *args, "--train.max_steps", "20"))
    logged = [[(m["step"], m["lr"], m["loss"]) for m in _losses(out)] for out in (extended, planned)]
    assert [s for s, _, _ in logged[0]] == list(range(1, 21))
    assert sum(logged[0], ()) == pytest.approx(sum(logged[1], ()))     # the same rates and losses
    assert logged[0][9][1] == pytest.approx(3e-3)          # step 10, the short run's last: at the peak now


def test_checkpoints_rotate_to_the_newest_ones(dataset, tmp_path):
    out = tmp_path / "p"
    train(_recipe(dataset, out, "--train.max_steps", "12", "--loop.save_every", "2", "--loop.keep_checkpoints", "2"))
    assert sorted(p.name for p in (out / "checkpoints").glob("step-*")) == ["step-10", "step-8"]


@pytest.mark.parametrize("marker", ["", '{"st', "[]"])
def test_a_checkpoint_whose_marker_is_empty_or_torn_counts_as_absent(tmp_path, marker):
    for step in (5, 10):
        (tmp_path / "checkpoints" / f"step-{step}").mkdir(parents=True)
    (tmp_path / "checkpoints" / "step-5" / "bclm_step.json").write_text('{"step": 5}')
    (tmp_path / "checkpoints" / "step-10" / "bclm_step.json").write_text(marker)   # killed mid-write
    assert latest_checkpoint(tmp_path).name == "step-5"


def test_dataset_of_another_space_is_rejected_by_policy_eval(dataset, tmp_path):
    from bclm.eval.evaluate import EvalConfig, evaluate

    policy = train(_recipe(dataset, tmp_path / "p", "--train.max_steps", "2"))
    with pytest.raises(BCLMError, match="CartPole"):
        evaluate(policy, get_task("CartPole-v1"), EvalConfig(episodes=1))


def test_warm_start_checks_dataset_spaces(dataset, tmp_path):
    first = train(_recipe(dataset, tmp_path / "a", "--train.max_steps", "3"))
    warm = train(_recipe(dataset, tmp_path / "b", "--train.max_steps", "3", "--init-from", str(tmp_path / "a")))
    assert warm.tokenizer == first.tokenizer          # reused, not refitted
    other = tmp_path / "cartpole"
    collect(get_task("CartPole-v1"), None, 1, other, seed=0)
    with pytest.raises(BCLMError, match=r"dataset .*cartpole.*observation space"):
        train(_recipe(other, tmp_path / "c", "--train.max_steps", "3", "--init-from", str(tmp_path / "a")))
    assert not (tmp_path / "c" / "config.json").exists()


def test_a_warm_start_on_wider_states_widens_its_bins_to_cover_them(dataset, tmp_path):
    """DAgger's rounds warm-start on states the first data never reached: the tokenizer widens (≤ 0.5% of
    observation values clipped) instead of squashing them into its edge bins."""
    narrow = tmp_path / "one-episode"
    collect(get_task(ENV), "tests.custom_env:expert", 1, narrow, seed=3)
    first = train(_recipe(narrow, tmp_path / "a", "--train.max_steps", "3", "--tokenizer.margin", "0.05",
                               "--tokenizer.percentiles", "[0, 100]"))
    wide = first.tokenizer.quantization_report(*_steps(dataset))["observation"][""]["clip_fraction"]
    warm = train(_recipe(dataset, tmp_path / "b", "--train.max_steps", "3", "--init-from", str(tmp_path / "a")))
    report = json.loads((tmp_path / "b" / "quantization_report.json").read_text())
    clipped = report[next(iter(report))]["observation"][""]["clip_fraction"]
    assert max(wide) > 0.1 and max(clipped) <= 0.005, (wide, clipped)
    assert (warm.tokenizer.obs_codecs[0].low <= first.tokenizer.obs_codecs[0].low).all()
    assert Policy.from_pretrained(tmp_path / "b").tokenizer == warm.tokenizer


def test_a_warm_start_that_widens_the_bins_acts_as_before_on_the_states_it_learned_on(tmp_path):
    """The rows move with the bins and the state token's frame stays: before any training step, the widened
    warm start takes round 0's actions on round 0's states (each state a new episode, so history is alike).
    Without the rows moved, 9% of them agreed."""
    narrow, wide = tmp_path / "narrow", tmp_path / "wide"
    collect(get_task(ENV), "tests.custom_env:expert", 4, narrow, seed=3)
    collect(get_task(ENV), "tests.custom_env:expert", 12, wide, seed=40)
    first = train(_recipe(narrow, tmp_path / "a", "--train.max_steps", "150", "--tokenizer.margin", "0.05",
                          "--tokenizer.percentiles", "[0, 100]"))
    warm = train(_recipe(wide, tmp_path / "b", "--train.max_steps", "2", "--train.lr", "1e-12",
                         "--init-from", str(tmp_path / "a")))
    assert warm.tokenizer != first.tokenizer                                   # the bins did widen
    observations, _ = _steps(narrow)
    fresh = np.ones(len(observations), dtype=bool)
    before = first.act(observations, fresh)
    assert len(np.unique(before)) > 1                                          # not one action everywhere
    assert np.mean(before == warm.act(observations, fresh)) >= 0.95


def _steps(path):
    from bclm.data.store import TrajectoryStore

    steps = TrajectoryStore(path).arrays()
    return steps.observation, steps.action


def test_pretrained_checkpoint_gets_bclm_tokens_after_its_vocabulary(dataset, tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    base = LlamaForCausalLM(LlamaConfig(vocab_size=100, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                        num_attention_heads=2, num_key_value_heads=2))
    base.save_pretrained(tmp_path / "base")
    policy = train(_recipe(dataset, tmp_path / "p", "--train.max_steps", "3", "--model.pretrained",
                           str(tmp_path / "base")))
    tok = policy.tokenizer
    assert tok.base_vocab_size == 100 and tok.pad_id >= 100
    assert policy.model.get_input_embeddings().num_embeddings == tok.vocab_size
    loaded = Policy.from_pretrained(tmp_path / "p")
    assert loaded.tokenizer.base_vocab_size == 100
