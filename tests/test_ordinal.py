"""Ordinal (HL-Gauss) targets for continuous action tokens: near misses cost less; zero width is plain CE."""

from __future__ import annotations

import json

import pytest
import torch

from bclm import config as cfg
from bclm.collect import collect
from bclm.data.sequences import IGNORE_INDEX
from bclm.envs import get_task
from bclm.trainer.bc import train
from bclm.trainer.config import TrainRecipe
from bclm.trainer.ordinal import OrdinalTargets, hl_gauss_table

OFFSET, BINS, VOCAB = 5, 32, 40           # a number range [5, 37) inside a 40-token vocabulary


def _plain(logits, targets):
    return torch.nn.functional.cross_entropy(logits.transpose(1, 2), targets, ignore_index=IGNORE_INDEX,
                                             reduction="none")


def test_table_rows_are_distributions_peaked_on_their_own_bin():
    table = hl_gauss_table(BINS, 1.5)
    assert torch.allclose(table.sum(1), torch.ones(BINS))
    assert torch.equal(table.argmax(1), torch.arange(BINS))
    assert torch.allclose(table[10, 8:13], table[10, 8:13].flip(0))       # symmetric away from the edges
    assert torch.equal(hl_gauss_table(BINS, 0.0), torch.eye(BINS))


@pytest.mark.parametrize("sigma", [0.0, 1e-3])
def test_ordinal_loss_reduces_to_plain_cross_entropy_at_zero_width(sigma):
    torch.manual_seed(0)
    logits = torch.randn(4, 3, VOCAB)
    targets = torch.randint(OFFSET, OFFSET + BINS, (4, 3))
    targets[0, 0], targets[1, 2] = IGNORE_INDEX, 2                       # an ignored and a discrete token
    loss = OrdinalTargets(OFFSET, BINS, sigma).token_loss(logits, targets)
    assert torch.allclose(loss, _plain(logits, targets), atol=1e-5)


def test_a_near_miss_costs_less_than_a_far_one_and_other_tokens_keep_cross_entropy():
    logits = torch.zeros(1, 4, VOCAB)
    logits[..., OFFSET + 10] = 5.0                                        # the model is sure of bin 10
    targets = torch.tensor([[OFFSET + 11, OFFSET + 25, 2, IGNORE_INDEX]])
    plain, ordinal = _plain(logits, targets), OrdinalTargets(OFFSET, BINS, 1.0).token_loss(logits, targets)
    assert plain[0, 0] == plain[0, 1]                                     # one-hot: any miss costs the same
    assert ordinal[0, 0] < plain[0, 0] - 1                                # ordinal: a near miss is cheap,
    assert torch.isclose(ordinal[0, 1], plain[0, 1])                      # a far one costs the full price
    assert ordinal[0, 2] == plain[0, 2] and ordinal[0, 3] == 0


def test_training_with_ordinal_targets_lowers_the_loss_on_continuous_actions(tmp_path):
    data = tmp_path / "data"
    collect(get_task("Pendulum-v1"), None, 3, data, seed=0)
    out = tmp_path / "p"
    train(cfg.build_config(TrainRecipe, None, [
        "--dataset", str(data), "--output-dir", str(out), "--model.size", "tiny", "--train.ordinal_sigma", "2",
        "--train.max_steps", "40", "--train.lr", "3e-3", "--train.warmup_steps", "4", "--loop.log_every", "5",
        "--loop.progress", "false", "--eval.episodes", "1"]))
    losses = [json.loads(x)["loss"] for x in (out / "metrics.jsonl").read_text().splitlines() if '"loss"' in x]
    assert losses[-1] < 0.7 * losses[0]
    recipe = cfg.build_config(TrainRecipe, out / "recipe.yaml", [])
    assert recipe.train.ordinal_sigma == 2.0                              # kept with the run


def test_with_a_slot_per_dimension_the_target_stays_in_the_token_s_own_slot():
    width = 16                                      # 2 slots of 16 ids from OFFSET; 12 bins used in each
    logits = torch.zeros(1, 2, VOCAB)
    logits[..., OFFSET + width + 4] = 5.0           # sure of bin 4 of slot 1
    targets = torch.tensor([[OFFSET + width + 5, OFFSET + 5]])      # a near miss in slot 1; bin 5 of slot 0
    plain = _plain(logits, targets)
    ordinal = OrdinalTargets(OFFSET, 12, 1.0, slots=2, width=width).token_loss(logits, targets)
    assert ordinal[0, 0] < plain[0, 0] - 1
    assert torch.isclose(ordinal[0, 1], plain[0, 1])               # another dimension's bin is no neighbour
