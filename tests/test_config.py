"""Recipes and overrides: typed, strict, with errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from bclm import config as cfg
from bclm.errors import BCLMError
from bclm.trainer.config import TrainRecipe


def test_defaults_recipe_and_overrides_compose(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("model:\n  size: tiny\ntrain:\n  lr: 0.01\n  max_steps: 5\n")
    r = cfg.build_config(TrainRecipe, recipe, ["--train.max_steps", "7", "--output-dir=out",
                                               "--tokenizer.percentiles", "[2, 98]", "--train.bf16", "true"])
    assert r.model.size == "tiny" and r.train.lr == 0.01        # from the recipe
    assert r.train.max_steps == 7 and r.output_dir == "out"     # overrides win
    assert r.tokenizer.percentiles == (2.0, 98.0) and r.train.bf16 is True
    assert r.data.context_length == 0 and r.train.epochs == -1   # defaults kept


@pytest.mark.parametrize("text,needle", [
    ("train:\n  max_step: 3\n", "max_step"),
    ("modle:\n  size: tiny\n", "modle"),
])
def test_unknown_recipe_key_names_key_and_file(tmp_path, text, needle):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(BCLMError, match=needle) as e:
        cfg.build_config(TrainRecipe, recipe, [])
    assert "r.yaml" in str(e.value)


@pytest.mark.parametrize("args,needle", [
    (["--train.max_steps", "many"], "train.max_steps"),
    (["--train.bf16", "maybe"], "train.bf16"),
    (["--model.size", "huge"], "huge"),
    (["--train.lr"], "needs a value"),
    (["stray"], "stray"),
    (["--train.lr", "nan"], "train.lr: expected a finite number"),
    (["--train.grad_clip", "inf"], "train.grad_clip: expected a finite number"),
    (["--train.epochs", "0", "--train.max_steps", "50", "--train.warmup_steps", "100"], "train.warmup_steps"),
    (["--train.epochs", "-2"], "train.epochs must be >= 0, or -1 for auto, got -2"),
    (["--loop.keep_checkpoints", "-1"], "loop.keep_checkpoints"),
    (["--loop.save_every", "-1"], "loop.save_every must be >= 0"),
    (["--train.schedule", "linear"], r"train.schedule: expected one of \['cosine', 'wsd', 'constant'\]"),
    (["--train.decay_fraction", "0"], r"train.decay_fraction must be in \(0, 1\]"),
    (["--train.obs_loss_weight", "-0.1"], "train.obs_loss_weight must be >= 0, got -0.1"),
])
def test_bad_overrides_are_named(args, needle):
    with pytest.raises(BCLMError, match=needle):
        cfg.build_config(TrainRecipe, None, args)


def test_a_recipe_that_is_not_utf8_is_named(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_bytes(b"train:\n  lr: 1e-3 \xff\xfe\n")
    with pytest.raises(BCLMError, match=r"r\.yaml is not UTF-8"):
        cfg.build_config(TrainRecipe, recipe, [])


@pytest.mark.parametrize("text", ["", "# only a comment\n"])
def test_an_empty_recipe_is_an_error_not_the_defaults(tmp_path, text):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(text)
    with pytest.raises(BCLMError, match=r"recipe .*r\.yaml is empty"):
        cfg.build_config(TrainRecipe, recipe, [])


def test_help_lists_every_field_with_its_help():
    text = "\n".join(cfg.help_text(TrainRecipe))
    assert "--train.lr" in text and "Peak learning rate" in text
    assert "--tokenizer.obs_bins" in text and "--eval.episodes" in text


def test_to_dict_round_trips():
    r = cfg.build_config(TrainRecipe, None, ["--model.size", "tiny", "--train.betas", "[0.9, 0.99]"])
    assert cfg.from_dict(TrainRecipe, cfg.to_dict(r)) == r


def test_demo_uses_the_recipe_free_representation():
    """The demo shows what `bclm train --dataset D` does with no recipe: only the model size and budget differ."""
    from pathlib import Path

    from bclm.demo import demo_recipe

    demo, defaults = demo_recipe(Path("o")), TrainRecipe()
    assert (demo.tokenizer, demo.data) == (defaults.tokenizer, defaults.data)
    assert demo.model.number_features == defaults.model.number_features


RECIPES = Path(__file__).resolve().parents[1] / "recipes"


@pytest.mark.parametrize("name", sorted(p.name for p in RECIPES.glob("*.yaml")))
def test_shipped_recipes_parse(name):
    from bclm.cli import load_train_recipe
    from bclm.envs import get_task
    from bclm.trainer.data import task_entries

    recipe = load_train_recipe(str(RECIPES / name), ["--train.max_steps", "7", "--output-dir", "o"])
    assert isinstance(recipe, TrainRecipe) and recipe.train.max_steps == 7    # `bclm train` takes every recipe
    if recipe.tasks:                          # a mixture: unique names, and every env is a known task
        assert len(task_entries(recipe)) == len(recipe.tasks) > 1
        assert all(get_task(t.env).expert for t in recipe.tasks)


def test_a_bare_boolean_flag_is_true_and_never_takes_the_next_option():
    recipe = cfg.build_config(TrainRecipe, None, ["--overwrite", "--model.size", "tiny", "--train.packing"])
    assert recipe.overwrite is True and recipe.model.size == "tiny" and recipe.train.packing is True
    assert cfg.build_config(TrainRecipe, None, ["--overwrite", "false"]).overwrite is False
    with pytest.raises(BCLMError, match="overwrite: expected true or false, got 'tiny'"):
        cfg.build_config(TrainRecipe, None, ["--overwrite", "tiny"])
    with pytest.raises(BCLMError, match=r"--train\.lr needs a value"):      # only booleans stand alone
        cfg.build_config(TrainRecipe, None, ["--train.lr"])


def test_a_typo_names_the_nearest_key():
    with pytest.raises(BCLMError, match=r"unknown key 'lrr' \(did you mean 'lr'\?"):
        cfg.build_config(TrainRecipe, None, ["--train.lrr", "0.1"])
