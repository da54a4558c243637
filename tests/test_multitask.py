"""One model over tasks whose spaces differ: shared vocabulary, mixture sampling, per-task metrics and decoding."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest
import torch

from bclm import config as cfg
from bclm.errors import BCLMError
from bclm.policy import Policy
from bclm.tokenizers import TokenizerConfig, build_tokenizers, load_tokenizers, save_tokenizers
from bclm.trainer.bc import train
from bclm.trainer.config import TrainRecipe
from bclm.trainer.data import prepare_data

# Different observation sizes, and a discrete next to a continuous action space.
MIXTURE = [{"name": "cartpole", "env": "CartPole-v1", "episodes": 1, "weight": 3.0},
           {"name": "pendulum", "env": "Pendulum-v1", "episodes": 1, "weight": 1.0, "loss_weight": 2.0}]


def _recipe(out, tasks=MIXTURE, *extra: str) -> TrainRecipe:
    recipe = cfg.build_config(TrainRecipe, None, [
        "--output-dir", str(out), "--model.size", "tiny", "--data.context_length", "64", "--train.max_steps", "12",
        "--train.batch_size", "8", "--loop.log_every", "6", "--loop.progress", "false", "--eval.episodes", "2",
        "--eval.num_envs", "2", *extra])
    recipe.tasks = cfg.from_dict(TrainRecipe, {"tasks": tasks}).tasks
    return recipe


def test_two_task_mixture_trains_reports_per_task_and_decodes_inside_each_space(tmp_path):
    out = tmp_path / "run"
    policy = train(_recipe(out))
    assert policy.tasks == ["cartpole", "pendulum"]

    logs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in logs if "loss" in r]
    for name in ("cartpole", "pendulum"):
        assert all(np.isfinite(r[f"loss/{name}"]) and 0 <= r[f"action_accuracy/{name}"] <= 1 for r in train_rows)
    report = json.loads((out / "eval_report.json").read_text())
    assert set(report["tasks"]) == {"cartpole", "pendulum"}
    assert report["tasks"]["pendulum"]["env"] == "Pendulum-v1" and report["tasks"]["pendulum"]["episodes"] == 2
    assert report["success_rate"] == pytest.approx(np.mean([r["success_rate"] for r in report["tasks"].values()]))

    loaded = Policy.from_pretrained(out)                 # a fresh load: both tokenizers, one model
    assert loaded.tasks == ["cartpole", "pendulum"]
    for name, env_id in (("cartpole", "CartPole-v1"), ("pendulum", "Pendulum-v1")):
        env = gym.make_vec(env_id, num_envs=3, vectorization_mode="sync")
        obs, _ = env.reset(seed=1)
        task_policy = loaded.for_task(name)
        for _ in range(4):
            actions = task_policy.act(obs)
            assert all(env.single_action_space.contains(np.asarray(a, env.single_action_space.dtype))
                       for a in actions)
            obs, *_ = env.step(actions)
    # The two tasks are different prompts to one model: the same tokens under the two task tokens differ.
    cart, pend = loaded.tokenizers["cartpole"], loaded.tokenizers["pendulum"]
    assert cart.task_token("cartpole") != pend.task_token("pendulum") and cart.vocab_size == pend.vocab_size


def test_mixture_sampling_follows_the_task_weights(tmp_path):
    recipe = _recipe(tmp_path / "run")
    data = prepare_data(recipe)
    draws = torch.tensor(list(data.sampler(0)))
    first = len(data.tasks[0].train)
    share = float((draws < first).float().mean())
    assert share == pytest.approx(0.75, abs=0.06)         # weights 3 : 1, whatever the window counts
    item = data.train_set[len(data.train_set) - 1]
    assert int(item["task_index"]) == 1 and float(item["loss_weight"]) == 2.0


def test_a_mixture_with_a_repeated_task_name_is_refused(tmp_path):
    tasks = [{"name": "cp", "env": "CartPole-v1", "episodes": 1}, {"name": "cp", "env": "Pendulum-v1", "episodes": 1}]
    with pytest.raises(BCLMError, match="'cp' appears twice"):
        train(_recipe(tmp_path / "run", tasks))


def test_a_warm_start_whose_tokenizer_lacks_a_task_is_refused(tmp_path):
    single = [{"name": "cartpole", "env": "CartPole-v1", "episodes": 1}]
    train(_recipe(tmp_path / "first", single, "--train.max_steps", "2"))
    recipe = _recipe(tmp_path / "second", MIXTURE, "--init-from", str(tmp_path / "first"))
    with pytest.raises(BCLMError, match=r"data/pendulum: observation space .* differs from the tokenizer's"):
        train(recipe)


def test_tokenizer_sets_round_trip_and_refuse_a_mixed_up_layout(tmp_path):
    spaces = {"a": (gym.spaces.Box(-1, 1, (3,)), gym.spaces.Discrete(4)),
              "b": (gym.spaces.Dict({"mission": gym.spaces.Text(20)}), gym.spaces.Box(-1, 1, (2,)))}
    tokenizers = build_tokenizers(spaces, TokenizerConfig(text_max_tokens=4))
    assert tokenizers["a"].task_offset == tokenizers["b"].task_offset      # `a` reserves b's text range
    tokenizers["a"].fit(np.zeros((2, 3), np.float32), np.array([0, 3]))
    tokenizers["b"].fit({"mission": np.array(["go left", "go right"], dtype=object)},
                        np.zeros((2, 2), np.float32))
    save_tokenizers(tokenizers, tmp_path)
    loaded = load_tokenizers(tmp_path)
    assert {k: v.to_dict() for k, v in loaded.items()} == {k: v.to_dict() for k, v in tokenizers.items()}

    other = build_tokenizers({"a": spaces["a"]}, TokenizerConfig(value_vocab=512))["a"]
    other.tasks = ["a", "b"]
    body = json.loads((tmp_path / "bclm_tokenizer.json").read_text())
    body["tokenizers"]["a"] = other.to_dict()
    (tmp_path / "bclm_tokenizer.json").write_text(json.dumps(body))
    with pytest.raises(BCLMError, match="do not share one vocabulary"):
        load_tokenizers(tmp_path)


def test_a_mixture_recipe_trains_and_evaluates_every_task_from_the_command_line(tmp_path, capsys):
    import yaml

    from bclm.cli import main

    recipe = tmp_path / "mix.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"size": "tiny"}, "data": {"context_length": 64},
                                      "train": {"max_steps": 4, "batch_size": 8}, "tasks": MIXTURE}))
    out = tmp_path / "run"
    assert main(["train", str(recipe), "--output-dir", str(out), "--loop.progress", "false",
                 "--eval.episodes", "1"]) == 0
    capsys.readouterr()
    assert main(["eval", "--policy", str(out), "--episodes", "1", "--num-envs", "1"]) == 0
    table = capsys.readouterr().out
    assert all(word in table for word in ("cartpole", "CartPole-v1", "pendulum", "Pendulum-v1", "average"))
    assert main(["eval", "--policy", str(out), "--task", "pendulum", "--episodes", "1"]) == 0
    rows = capsys.readouterr().out.splitlines()[2:]
    assert len(rows) == 1 and "Pendulum-v1" in rows[0]
    assert main(["eval", "--policy", str(out), "--env", "Pendulum-v1"]) == 2     # which prompt? refused
    assert "needs --task" in capsys.readouterr().err


def test_a_collection_interrupted_before_its_shard_is_collected_again(tmp_path):
    from bclm.data.store import TrajectoryStore
    from bclm.envs import get_task
    from bclm.rollout.shards import create_store

    out = tmp_path / "run"
    create_store(get_task("CartPole-v1"), out / "data" / "cartpole")     # metadata written, then a crash
    train(_recipe(out, MIXTURE[:1], "--train.max_steps", "2"))
    assert TrajectoryStore(out / "data" / "cartpole").shard_names() == ["round-000"]


def test_dagger_over_a_mixture_labels_each_task_and_reports_per_task(tmp_path):
    from bclm.data.store import TrajectoryStore
    from bclm.trainer.dagger import DaggerRecipe, run_dagger

    recipe = cfg.build_config(DaggerRecipe, None, [
        "--output-dir", str(tmp_path / "run"), "--model.size", "tiny", "--data.context_length", "64",
        "--train.max_steps", "3", "--loop.progress", "false", "--eval.episodes", "1", "--eval.num_envs", "1",
        "--dagger.rounds", "1", "--dagger.episodes_per_round", "2", "--dagger.beta", "constant",
        "--dagger.beta_value", "0.5", "--dagger.rollout_max_steps", "30"])
    recipe.tasks = cfg.from_dict(TrainRecipe, {"tasks": MIXTURE}).tasks
    report = run_dagger(recipe)
    last = report["rounds"][1]
    assert set(last["tasks"]) == {"cartpole", "pendulum"} == set(report["tasks"])
    for name in ("cartpole", "pendulum"):
        store = TrajectoryStore(tmp_path / "run" / "data" / name)
        assert store.shard_names() == ["round-000", "round-001"]
        steps = store.load(["round-001"])
        assert set(steps["task"][:]) == {report["tasks"][name]["env"]} and len(steps) <= 2 * 30
        assert last["tasks"][name]["expert_labels"] == len(store.load())      # every state labeled
        assert last["tasks"][name]["expert_labels"] > report["rounds"][0]["tasks"][name]["expert_labels"]
    assert last["expert_labels"] == sum(r["expert_labels"] for r in last["tasks"].values())
    assert run_dagger(recipe)["rounds"] == report["rounds"]                  # a finished run resumes as done


def test_dagger_mixture_from_the_command_line_prints_a_row_per_task(tmp_path, capsys):
    import yaml

    from bclm.cli import main

    recipe = tmp_path / "mix.yaml"
    recipe.write_text(yaml.safe_dump({"model": {"size": "tiny"}, "data": {"context_length": 64},
                                      "train": {"max_steps": 2}, "tasks": MIXTURE}))
    assert main(["dagger", str(recipe), "--output-dir", str(tmp_path / "run"), "--rounds", "1",
                 "--episodes-per-round", "1", "--dagger.rollout_max_steps", "10", "--loop.progress", "false",
                 "--eval.episodes", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sum(line.startswith(("cartpole", "pendulum")) for line in lines) == 4        # 2 rounds x 2 tasks
    assert main(["dagger", str(recipe), "--output-dir", str(tmp_path / "run2"), "--env", "CartPole-v1"]) == 2
    assert "leave dagger.env" in capsys.readouterr().err
