"""Packed batches: the same windows give the same loss, statistics and gradients as padded ones, on fewer tokens."""

from __future__ import annotations

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from bclm.data.collate import PackCollator, PadCollator, first_fit
from bclm.data.sequences import IGNORE_INDEX
from bclm.trainer.step import action_loss

PAD = 0


def _windows(lengths: list[int], seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """Windows of random tokens, actions labeled at every third position, two tasks of different weights."""
    g = torch.Generator().manual_seed(seed)
    items = []
    for i, n in enumerate(lengths):
        ids = torch.randint(1, 40, (n,), generator=g)
        labels = torch.full((n,), IGNORE_INDEX)
        labels[2::3] = ids[2::3]
        items.append({"input_ids": ids, "labels": labels, "task_index": torch.tensor(i % 2),
                      "loss_weight": torch.tensor(0.5 if i % 2 else 2.0)})
    return items


def _model(attn: str) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=40, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=64)
    return LlamaForCausalLM._from_config(config, attn_implementation=attn)


def _loss_and_grads(model: torch.nn.Module, batch: dict[str, torch.Tensor], obs_weight: float = 0.0):
    model.zero_grad()
    loss, stats = action_loss(model, batch, num_tasks=2, obs_weight=obs_weight)
    loss.backward()
    return loss.detach(), stats, [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_packed_batch_trains_exactly_as_the_padded_one(attn):
    items = _windows([30, 7, 12, 30, 19, 4, 25, 9])
    padded, packed = PadCollator(PAD)(items), PackCollator(PAD, row_length=32)(items)
    assert packed["input_ids"].numel() < 0.75 * padded["input_ids"].numel()       # 6 rows of 32 -> 4 rows
    assert int(packed["real_tokens"]) == int(padded["real_tokens"]) == sum(len(it["input_ids"]) for it in items)
    model = _model(attn)
    loss_a, stats_a, grads_a = _loss_and_grads(model, padded)
    loss_b, stats_b, grads_b = _loss_and_grads(model, packed)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    for key in ("correct", "action_tokens", "task_tokens", "task_correct"):
        assert torch.equal(stats_b[key], stats_a[key]), key
    torch.testing.assert_close(stats_b["task_loss_sum"], stats_a["task_loss_sum"], rtol=1e-5, atol=1e-5)
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)


def test_observation_targets_pack_and_train_as_padded_ones():
    items = _windows([30, 7, 12, 30, 19, 4, 25, 9])
    for it in items:                                      # the tokens that are not action targets
        it["obs_labels"] = torch.where(it["labels"] == IGNORE_INDEX, it["input_ids"], IGNORE_INDEX)
        it["obs_labels"][:2] = IGNORE_INDEX               # the prompt
    padded, packed = PadCollator(PAD)(items), PackCollator(PAD, row_length=32)(items)
    # every position whose next token is past the prompt, to the longest window's end
    assert padded["predict_positions"].tolist() == list(range(1, 29))
    model = _model("sdpa")
    loss_a, stats_a, grads_a = _loss_and_grads(model, padded, obs_weight=0.5)
    loss_b, stats_b, grads_b = _loss_and_grads(model, packed, obs_weight=0.5)
    torch.testing.assert_close(loss_b, loss_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(stats_b["obs_loss"], stats_a["obs_loss"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss_a, stats_a["loss"] + 0.5 * stats_a["obs_loss"])
    for ga, gb in zip(grads_a, grads_b):
        torch.testing.assert_close(gb, ga, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_windows_in_one_row_do_not_see_each_other(attn):
    """Changing one window's tokens leaves the loss of the window packed after it unchanged."""
    model = _model(attn).eval()
    items = _windows([10, 6])
    items[0]["labels"][:] = IGNORE_INDEX                  # only the second window is scored
    collate = PackCollator(PAD, row_length=32)
    assert collate(items)["position_ids"].tolist() == [list(range(10)) + list(range(6))]
    before, _ = action_loss(model, collate(items))
    items[0]["input_ids"] = torch.randint(1, 40, (10,))
    after, _ = action_loss(model, collate(items))
    torch.testing.assert_close(after, before, rtol=1e-6, atol=1e-6)


def test_batches_that_packing_hardly_shrinks_stay_padded():
    alike = _windows([30, 28, 29, 30])        # rows of 64: two per row, as many tokens as padded
    assert torch.equal(PackCollator(PAD, row_length=64)(alike)["input_ids"], PadCollator(PAD)(alike)["input_ids"])
    varied = _windows([30, 8, 29, 6])         # rows of 32: 30 | 29 | 8 + 6, a quarter fewer tokens
    assert PackCollator(PAD, row_length=32)(varied)["input_ids"].shape == (3, 30)


def test_first_fit_places_every_window_once_within_the_row_length():
    lengths = [5, 31, 12, 12, 20, 1, 9, 30, 16, 16]
    rows = first_fit(lengths, 32)
    assert sorted(i for row in rows for i in row) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in row) <= 32 for row in rows)
    assert len(rows) == 5                                 # 152 tokens: 5 rows is the fewest possible
