"""Batches of training windows, two ways: padded (one window per row, padding masked) or packed (windows end to
end in rows of the context's length, no attention across windows). Both give the loss the same tokens.

Packing: transformers reads where `position_ids` restart as sequence boundaries when no attention mask is
given (a block-diagonal causal mask under SDPA and eager attention, varlen kernels under flash attention).
Its `DataCollatorWithFlattening` packs a whole batch into one row, whose attention under SDPA (a dense mask)
costs the batch size squared times a window's; rows of the context's length keep it at a padded batch's,
hence the first-fit packing here.
"""

from __future__ import annotations

import torch

from bclm.data.sequences import IGNORE_INDEX

PER_WINDOW = ("task_index", "loss_weight")      # per-window fields, per token once windows share a row
TARGETS = ("labels", "obs_labels")              # per-token targets (obs_labels only with observation prediction)
VALUES = ("values", "value_labels")              # per-token exact values of continuous tokens (0 elsewhere)


def predicted_positions(out: dict[str, torch.Tensor]) -> torch.Tensor:
    """Positions whose next token is a target of any kind: only these need logits (computed here, on the host)."""
    has_target = torch.zeros_like(out["labels"][0, 1:], dtype=torch.bool)
    for key in TARGETS:
        if key in out:
            has_target |= (out[key][:, 1:] != IGNORE_INDEX).any(dim=0)
    return has_target.nonzero().squeeze(-1)


class PadCollator:
    """Right-pads a batch to its longest window; padding is masked out and carries no loss."""

    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        length = max(len(it["input_ids"]) for it in items)
        shape = (len(items), length)
        targets = [k for k in TARGETS if k in items[0]]
        batch_out = {"input_ids": torch.full(shape, self.pad_id, dtype=torch.long),
                     "attention_mask": torch.zeros(shape, dtype=torch.long)}
        batch_out.update({k: torch.full(shape, IGNORE_INDEX, dtype=torch.long) for k in targets})
        values = [k for k in VALUES if k in items[0]]
        batch_out.update({k: torch.zeros(shape) for k in values})
        for b, it in enumerate(items):
            n = len(it["input_ids"])
            for key in ("input_ids", *targets, *values):
                batch_out[key][b, :n] = it[key]
            batch_out["attention_mask"][b, :n] = 1
        batch_out["predict_positions"] = predicted_positions(batch_out)
        batch_out["real_tokens"] = batch_out["attention_mask"].sum()
        for key in PER_WINDOW:
            if key in items[0]:
                batch_out[key] = torch.stack([it[key] for it in items])
        return batch_out


class PackCollator:
    """Packs a batch's windows into rows of at most `row_length` tokens (first fit, longest first), each window
    with its own position ids from 0. A row's tail is filler: pad tokens with positions of their own (a
    sequence of their own to the attention) and no labels. A window's first token is never a target, so no
    window is trained on predicting the next one's start. `task_index` and `loss_weight` become per token.
    A batch that packing would shrink by less than `MIN_SAVING` is padded instead."""

    MIN_SAVING = 0.1        # pack only when it saves this share of the padded batch's tokens

    def __init__(self, pad_id: int, row_length: int):
        self.pad_id = pad_id
        self.row_length = row_length
        self.padded = PadCollator(pad_id)

    def __call__(self, items: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
        lengths = [len(it["input_ids"]) for it in items]
        rows = first_fit(lengths, self.row_length)
        length = max(sum(lengths[i] for i in row) for row in rows)
        # Packed rows cost a few percent more per token than padded ones (a block mask built per batch,
        # benchmarks/packing.py): where windows hardly differ in length, the padded batch is the faster one.
        if len(rows) * length > (1 - self.MIN_SAVING) * len(items) * max(lengths):
            return self.padded(items)
        shape = (len(rows), length)
        targets = [k for k in TARGETS if k in items[0]]
        out = {"input_ids": torch.full(shape, self.pad_id, dtype=torch.long),
               "position_ids": torch.arange(length).repeat(len(rows), 1)}
        out.update({k: torch.full(shape, IGNORE_INDEX, dtype=torch.long) for k in targets})
        fields = [k for k in PER_WINDOW if k in items[0]] + [k for k in VALUES if k in items[0]]
        for key in fields:
            out[key] = torch.zeros(shape, dtype=items[0][key].dtype)
        for r, row in enumerate(rows):
            at = 0
            for i in row:
                n = len(items[i]["input_ids"])
                out["input_ids"][r, at:at + n] = items[i]["input_ids"]
                for key in targets:
                    out[key][r, at + 1:at + n] = items[i][key][1:]
                out["position_ids"][r, at:at + n] = torch.arange(n)
                for key in fields:
                    out[key][r, at:at + n] = items[i][key]
                at += n
            out["position_ids"][r, at:] = torch.arange(length - at)
        out["predict_positions"] = predicted_positions(out)
        out["real_tokens"] = torch.tensor(sum(len(it["input_ids"]) for it in items))
        return out


def first_fit(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of `lengths` in rows whose sums stay within `capacity` (longer items alone in a row), placed
    longest first into the first row with room (first-fit decreasing: within 11/9 of the fewest rows, plus one)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        r = next((r for r, free in enumerate(room) if free >= lengths[i]), None)
        if r is None:
            rows.append([])
            room.append(capacity)
            r = len(rows) - 1
        rows[r].append(i)
        room[r] -= lengths[i]
    return rows
