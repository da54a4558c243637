"""Embeddings of number tokens (continuous bins) that know that bin 117 is next to bin 118.

A value token learned as a free symbol carries no notion of distance: with little data the model memorises
exact tokens, and a state a few bins away from every demonstration lands on embeddings it never trained.
Here the embedding of number k (of N) is a learned linear map of the first F cosine (DCT-II) components of
its bin, cos(π f (k + ½) / N) for f < F: a smooth function of the value with a resolution of about N / F
bins. Neighbouring bins start and stay close, and an unseen bin sits between its seen neighbours.

Everything else (symbols, special, text and task tokens) keeps its ordinary embedding row, so the module is
an `nn.Embedding` whose number rows are computed. At save time the computed rows are written into the
table (`plain_embedding`), so a checkpoint is a plain `AutoModelForCausalLM` that loads without bclm.

With number slots (tokenizer format 3) the range is `slots` blocks of N ids, one per continuous dimension,
and each block has its own map: the embedding of bin k of dimension d is a smooth function of k along a
direction of d's own, so summing tokens over positions (what attention does) weighs each dimension
separately, as an MLP's first layer does.

torch, transformers and accelerate have no embedding of this kind, hence this small module.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from bclm.tokenizers import BCTokenizer

NUMBER_PROJ = "number_proj"


def cosine_basis(size: int, features: int) -> torch.Tensor:
    """(size, features) orthonormal DCT-II basis: column f is cos(π f (k + ½) / size), unit norm."""
    k = torch.arange(size, dtype=torch.float64)[:, None] + 0.5
    f = torch.arange(features, dtype=torch.float64)[None, :]
    basis = torch.cos(math.pi * f * k / size)
    return (basis / basis.norm(dim=0, keepdim=True)).float()


def value_basis(positions: torch.Tensor, features: int) -> torch.Tensor:
    """(slots, width, features) per-slot basis: a constant, the bin's position in its dimension's data
    (linear in the value, so a value past the demonstrations lands past them along the same direction), then
    cosines of the bin index for finer shape."""
    slots, width = positions.shape
    cols = [torch.ones(slots, width, dtype=torch.float64), positions.double()]
    cosines = cosine_basis(width, max(features - 1, 1)).double()[:, 1:] * math.sqrt(width)   # entries ~ ±1
    cols += [cosines[:, f].expand(slots, width) for f in range(cosines.shape[1])]
    return torch.stack(cols[:features], dim=-1).float()


def number_rows(basis: torch.Tensor, proj: torch.Tensor) -> torch.Tensor:
    """(slots * width, dim) rows from the (width, F) shared or (slots, width, F) per-slot basis and the
    (slots, F, dim) projections."""
    spec = "wf,sfd->swd" if basis.ndim == 2 else "swf,sfd->swd"
    return torch.einsum(spec, basis, proj).reshape(-1, proj.shape[-1])


class NumberEmbedding(nn.Embedding):
    """An embedding table whose rows [start, start + size) are `slots` blocks of `basis @ number_proj[slot]`."""

    def __init__(self, table: torch.Tensor, start: int, size: int, features: int, slots: int = 1,
                 positions: torch.Tensor | None = None):
        super().__init__(table.shape[0], table.shape[1], _weight=table.detach().clone(),
                         device=table.device, dtype=table.dtype)
        if size % slots:
            raise ValueError(f"number range of {size} ids is not {slots} equal slots")
        self.start, self.size, self.slots = int(start), int(size), int(slots)
        width = self.size // self.slots
        features = min(int(features), width)
        basis = cosine_basis(width, features) if positions is None else value_basis(positions, features)
        self.register_buffer("number_basis", basis.to(table.device, table.dtype), persistent=False)
        # Least squares onto the basis: a warm start keeps the smooth part of the rows it was given
        # (all of it when they came from a NumberEmbedding of the same basis).
        # On the CPU in float64 with an SVD driver: a reserved slot's basis (no dimension behind it) is rank
        # deficient, which the GPU's only driver cannot solve.
        rows = table.detach()[self.start:self.start + self.size].cpu().double().view(self.slots, width, -1)
        per_slot = basis.expand(self.slots, width, features).double()
        proj = torch.linalg.lstsq(per_slot, rows, driver="gelsd").solution                # (slots, F, dim)
        # lstsq returns a strided view of a larger buffer: a compact copy of its own (DeepSpeed views its bytes).
        proj = proj.to(table.device, table.dtype).clone(memory_format=torch.contiguous_format)
        self.number_proj = nn.Parameter(proj)

    def numbers(self) -> torch.Tensor:
        """(size, dim) the number rows."""
        return number_rows(self.number_basis, self.number_proj)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = super().forward(input_ids)
        local = input_ids - self.start
        is_number = (local >= 0) & (local < self.size)
        numbers = self.numbers()[local.clamp(0, self.size - 1)]
        return torch.where(is_number[..., None], numbers.to(out.dtype), out)

    def materialized(self) -> torch.Tensor:
        table = self.weight.detach().clone()
        table[self.start:self.start + self.size] = self.numbers().detach()
        return table


def attach_number_embedding(model: nn.Module, start: int, size: int, features: int,
                            fresh: bool, slots: int = 1, positions: torch.Tensor | None = None,
                            ) -> NumberEmbedding | None:
    """Give `model` number embeddings (unless `features` or `size` is 0); the output head is untied first,
    so that predicted logits stay free while inputs are smooth, and the exported model computes exactly
    what the live one does. `fresh`: the number rows start as a small random smooth function."""
    if features <= 0 or size <= 0:
        return None
    current = model.get_input_embeddings()
    if isinstance(current, NumberEmbedding):
        return current
    untie(model)
    emb = NumberEmbedding(current.weight, start, size, features, slots, positions)
    if fresh:
        nn.init.normal_(emb.number_proj, std=getattr(model.config, "initializer_range", 0.02))
    model.set_input_embeddings(emb)
    return emb


def attach_for(model: nn.Module, tokenizer: BCTokenizer, features: int, fresh: bool) -> NumberEmbedding | None:
    """`attach_number_embedding` laid out as `tokenizer`'s number range: its slots, and with a slot per
    dimension (format 3) the value basis of each dimension's bins."""
    positions = torch.as_tensor(tokenizer.number_positions()) if tokenizer.config.number_slots else None
    return attach_number_embedding(model, tokenizer.number_offset, tokenizer.number_vocab, features, fresh,
                                   slots=max(tokenizer.number_slots, 1), positions=positions)


def untie(model: nn.Module) -> None:
    head = model.get_output_embeddings()
    if head is not None and head.weight is model.get_input_embeddings().weight:
        head.weight = nn.Parameter(head.weight.detach().clone())
    for config in (model.config, getattr(model.config, "get_text_config", lambda: None)()):
        if config is not None:
            config.tie_word_embeddings = False


@contextmanager
def plain_embedding(model: nn.Module) -> Iterator[None]:
    """Within the block the model's input embedding is an ordinary `nn.Embedding` holding the computed rows."""
    emb = model.get_input_embeddings()
    if not isinstance(emb, NumberEmbedding):
        yield
        return
    plain = nn.Embedding(emb.num_embeddings, emb.embedding_dim, _weight=emb.materialized(),
                         device=emb.weight.device, dtype=emb.weight.dtype)
    model.set_input_embeddings(plain)
    try:
        yield
    finally:
        model.set_input_embeddings(emb)


def plain_state_dict(state_dict: dict[str, torch.Tensor], emb: NumberEmbedding) -> dict[str, torch.Tensor]:
    """A gathered (ZeRO-3) state dict with the number rows written into the table and the projection dropped."""
    out = dict(state_dict)
    for key in [k for k in out if k.endswith(NUMBER_PROJ)]:
        proj = out.pop(key)
        table_key = key[: -len(NUMBER_PROJ)] + "weight"
        table = out[table_key].clone()
        table[emb.start:emb.start + emb.size] = number_rows(emb.number_basis.to(proj.device, proj.dtype), proj)
        out[table_key] = table
    return out
