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

Packed symbols (`tokenizer.group` > 1: a BabyAI cell's object, colour and state in one token) can get the
same treatment (`model.symbol_factors`) for a different reason: as free rows, "red ball" and "red key"
share nothing, and a policy must learn separately for each of the 18 object tokens that it matches the
mission's words, which held BabyAI GoToLocal on a plateau for thousands of steps. Their embedding adds the
sum of one row per element value, so "red" is one vector wherever it appears; the free row stays as a
residual. Text tokens can share those rows too (`model.word_factors`): the mission's word "red" then adds
the red element row, so matching a word to the cells that show it starts as a dot product the model already
has, rather than a binding it must discover.

Where a packed token sits matters too: a BabyAI policy that has found the cell named by the mission must turn
towards it, left or right. With rotary positions only queries and keys know positions; the value an attention
head reads from a cell says what is there, not where. With slots (`tokenizer.symbol_grid`) every cell has
its own ids, and its embedding adds one row per coordinate of its place on the grid, so "third column" is
one vector in every row of the view, as Gato and ViT add row and column embeddings to image patches.

torch, transformers and accelerate have no embedding of this kind, hence this small module.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from bclm.errors import BCLMError
from bclm.tokenizers import BCTokenizer

NUMBER_PROJ = "number_proj"
SYMBOL_FACTORS = "symbol_factors"
STATE = "state"                  # a `bclm.state.StateProjector` submodule, saved apart from the plain table


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


def factor_index(radix: tuple[int, ...], grid: tuple[int, ...] = ()) -> torch.Tensor:
    """(prod(radix), len(radix)): for each packed symbol (mixed radix, first element most significant, as the
    codecs pack them), the row of each of its element values in the stacked per-element table. With a `grid`
    of slots (`tokenizer.symbol_grid`): (prod(grid) * prod(radix), len(grid) + len(radix)), symbol v of slot s
    at row s * prod(radix) + v, which adds one row per grid coordinate of s, stacked after the elements'."""
    digits = _digits(radix) + element_starts(radix)
    if not grid:
        return torch.as_tensor(digits)
    coords = _digits(grid) + sum(radix) + element_starts(grid)
    per_slot = len(digits)
    return torch.as_tensor(np.concatenate([np.repeat(coords, per_slot, axis=0), np.tile(digits, (len(coords), 1))],
                                          axis=1))


def _digits(radix: tuple[int, ...]) -> np.ndarray:
    return np.array(list(np.ndindex(*radix)), dtype=np.int64).reshape(-1, len(radix))


def element_starts(radix: tuple[int, ...]) -> np.ndarray:
    """(len(radix),) the first row of each element's values in the stacked per-element table."""
    return np.concatenate([[0], np.cumsum(radix)[:-1]]).astype(np.int64)


class StructuredEmbedding(nn.Embedding):
    """An embedding table whose rows [start, start + size) are `slots` blocks of `basis @ number_proj[slot]`
    (none when `size` is 0) and, once `add_symbol_factors` is called, whose packed symbols add the sum of
    their elements' rows; with a `state` projector, whose ACT tokens add the step's state (`bclm.state`)."""

    def __init__(self, table: torch.Tensor, start: int, size: int, features: int, slots: int = 1,
                 positions: torch.Tensor | None = None):
        super().__init__(table.shape[0], table.shape[1], _weight=table.detach().clone(),
                         device=table.device, dtype=table.dtype)
        self.start, self.size, self.slots = 0, 0, 1
        self.factor_start = 0
        self.register_buffer("factor_index", None, persistent=False)
        self.register_buffer("word_ids", None, persistent=False)
        self.register_buffer("word_rows", None, persistent=False)
        self.register_parameter(SYMBOL_FACTORS, None)
        self.register_buffer("number_basis", None, persistent=False)
        self.register_parameter(NUMBER_PROJ, None)
        self.register_module(STATE, None)
        if size:
            self.add_numbers(table, start, size, features, slots, positions)

    def add_numbers(self, table: torch.Tensor, start: int, size: int, features: int, slots: int = 1,
                    positions: torch.Tensor | None = None) -> None:
        """Rows [start, start + size) become `slots` blocks of `basis @ number_proj[slot]`, fitted to `table`."""
        if size % slots:
            raise ValueError(f"number range of {size} ids is not {slots} equal slots")
        self.start, self.size, self.slots = int(start), int(size), int(slots)
        width = self.size // self.slots
        features = min(int(features), width)
        basis = cosine_basis(width, features) if positions is None else value_basis(positions, features)
        self.number_basis = basis.to(table.device, table.dtype)
        # Least squares onto the basis: a warm start keeps the smooth part of the rows it was given
        # (all of it when they came from a StructuredEmbedding of the same basis).
        # On the CPU in float64 with an SVD driver: a reserved slot's basis (no dimension behind it) is rank
        # deficient, which the GPU's only driver cannot solve.
        rows = table.detach()[self.start:self.start + self.size].cpu().double().view(self.slots, width, -1)
        per_slot = basis.expand(self.slots, width, features).double()
        proj = torch.linalg.lstsq(per_slot, rows, driver="gelsd").solution                # (slots, F, dim)
        # lstsq returns a strided view of a larger buffer: a compact copy of its own (DeepSpeed views its bytes).
        proj = proj.to(table.device, table.dtype).clone(memory_format=torch.contiguous_format)
        self.number_proj = nn.Parameter(proj)

    def add_symbol_factors(self, start: int, radix: tuple[int, ...], fresh: bool, std: float = 0.02,
                           grid: tuple[int, ...] = ()) -> None:
        """Packed symbols [start, start + prod(radix)) add one row per element value (and with slots on a
        `grid`, the prod(grid) blocks of them one row per grid coordinate too). `fresh`: those rows start small
        and random and the symbols' free rows at zero, so the embedding starts as pure structure; otherwise
        the rows start at zero and the embedding is unchanged (a warm start)."""
        index = factor_index(radix, grid).to(self.weight.device)
        self.factor_start, self.factor_index = int(start), index
        rows = sum(radix) + sum(grid)
        self.symbol_factors = nn.Parameter(torch.zeros(rows, self.embedding_dim, device=self.weight.device,
                                                       dtype=self.weight.dtype))
        if fresh:
            nn.init.normal_(self.symbol_factors, std=std)
            with torch.no_grad():
                self.weight[start:start + len(index)] = 0.0

    def add_word_factors(self, ids: torch.Tensor, rows: torch.Tensor, fresh: bool) -> None:
        """Tokens `ids` (words) add the element rows `rows` of the packed symbols' table (call after
        `add_symbol_factors`). `fresh`: their free rows start at zero, so a word starts as its element."""
        self.word_ids, self.word_rows = ids.to(self.weight.device), rows.to(self.weight.device)
        if fresh:
            with torch.no_grad():
                self.weight[self.word_ids] = 0.0

    def numbers(self, proj: torch.Tensor | None = None) -> torch.Tensor:
        """(size, dim) the number rows (of the projection `proj`, the live one by default)."""
        proj = self.number_proj if proj is None else proj
        return number_rows(self.number_basis.to(proj.device, proj.dtype), proj)

    def symbols(self, factors: torch.Tensor | None = None) -> torch.Tensor:
        """(prod(radix), dim) what the packed symbols add to their free rows (of the element rows `factors`,
        the live ones by default)."""
        factors = self.symbol_factors if factors is None else factors
        return factors[self.factor_index.to(factors.device)].sum(dim=1)

    def words(self, factors: torch.Tensor | None = None) -> torch.Tensor:
        """(words, dim) what the tied word tokens add to their free rows (of `factors`, the live ones by default)."""
        factors = self.symbol_factors if factors is None else factors
        return factors[self.word_rows.to(factors.device)]

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        out = super().forward(input_ids)
        if self.size:
            local = input_ids - self.start
            is_number = (local >= 0) & (local < self.size)
            numbers = self.numbers()[local.clamp(0, self.size - 1)]
            out = torch.where(is_number[..., None], numbers.to(out.dtype), out)
        if self.factor_index is not None:
            n = len(self.factor_index)
            local = input_ids - self.factor_start
            is_symbol = (local >= 0) & (local < n)
            out = out + is_symbol[..., None] * self.symbols()[local.clamp(0, n - 1)].to(out.dtype)
        if self.word_ids is not None:
            hits = (input_ids[..., None] == self.word_ids).to(out.dtype)                   # (..., words)
            out = out + hits @ self.words().to(out.dtype)
        if self.state is not None:
            out = out + self.state(input_ids).to(out.dtype)
        return out

    def materialized(self, table: torch.Tensor | None = None, proj: torch.Tensor | None = None,
                     factors: torch.Tensor | None = None) -> torch.Tensor:
        """A copy of the free `table` (the live one by default) with the structured rows written in, computed
        from `proj` and `factors` (the live parameters by default; a gathered ZeRO-3 state dict's otherwise)."""
        with torch.no_grad():
            table = (self.weight if table is None else table).detach().clone()
            if self.size:
                table[self.start:self.start + self.size] = self.numbers(proj)
            if self.factor_index is not None:
                table[self.factor_start:self.factor_start + len(self.factor_index)] += self.symbols(factors)
            if self.word_ids is not None:
                words = self.words(factors).to(table.device, table.dtype)
                table.index_add_(0, self.word_ids.to(table.device), words)
        return table


def attach_structured_embedding(model: nn.Module, start: int, size: int, features: int, fresh: bool,
                                slots: int = 1, positions: torch.Tensor | None = None,
                                symbols: tuple[int, tuple[int, ...], tuple[int, ...]] | None = None,
                                words: tuple[torch.Tensor, torch.Tensor] | None = None) -> StructuredEmbedding | None:
    """Give `model` number embeddings (unless `features` or `size` is 0) and, with `symbols` = (first id,
    radix, slot grid), factored packed symbols, whose element rows the tokens of `words` = (ids, rows) share; None when
    neither applies. The output head is untied first, so that predicted logits stay free while inputs are
    structured, and the exported model computes exactly what the live one does. `fresh`: the structure starts
    as a small random function, not fitted to the rows."""
    size = size if features > 0 else 0
    if size <= 0 and symbols is None:
        return None
    current = model.get_input_embeddings()
    if isinstance(current, StructuredEmbedding):
        # A warm start whose table came back plain but with a state projector (`bclm.state`): structure it again.
        if size and not current.size:
            current.add_numbers(current.weight, start, size, features, slots, positions)
        return current
    untie(model)
    emb = StructuredEmbedding(current.weight, start, size, features, slots, positions)
    std = getattr(model.config, "initializer_range", 0.02)
    if fresh and size:
        nn.init.normal_(emb.number_proj, std=std)
    if symbols is not None:
        start, radix, grid = symbols
        emb.add_symbol_factors(start, radix, fresh=fresh, std=std, grid=grid)
        if words is not None:
            emb.add_word_factors(*words, fresh=fresh)
    model.set_input_embeddings(emb)
    return emb


def shared_radix(tokenizers: Iterable[BCTokenizer]) -> tuple[int, ...] | None:
    """The one element layout of every packed observation token of `tokenizers` (None without any): packed
    ids share the value range, so two layouts would give one id two meanings."""
    tokenizers = list(tokenizers)
    layouts = set().union(*(t.packed_radix() for t in tokenizers))
    grids = {t.config.symbol_grid for t in tokenizers if t.packed_radix()}
    if len(grids) > 1:
        raise BCLMError(f"model.symbol_factors: packed tokens lie on {len(grids)} slot grids "
                        f"({', '.join(str(list(g)) for g in sorted(grids))}); expected one tokenizer.symbol_grid")
    if len(layouts) > 1:
        raise BCLMError(f"model.symbol_factors: packed tokens have {len(layouts)} element layouts "
                        f"({', '.join(map(str, sorted(layouts)))}); set model.symbol_factors false or use one "
                        f"tokenizer.group layout")
    return next(iter(layouts), None)


def word_rows(tokenizers: Iterable[BCTokenizer], radix: tuple[int, ...] | None,
              words: dict[str, list[int]]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(ids, rows) for `model.word_factors`: the text tokens that spell each word (alone or after a space,
    as BPE writes a word inside a sentence) and the row of its [element, value] in the stacked element table
    of the packed layout `radix`; None without words."""
    if not words:
        return None
    if radix is None:
        raise BCLMError("model.word_factors: no packed observation tokens to share rows with; set "
                        "model.symbol_factors true with tokenizer.group > 1, or leave word_factors empty")
    tokenizers = list(tokenizers)
    starts = element_starts(radix)
    ids: list[int] = []
    rows: list[int] = []
    for word, (element, value) in words.items():
        if not (0 <= element < len(radix) and 0 <= value < radix[element]):
            raise BCLMError(f"model.word_factors.{word}: [element, value] = [{element}, {value}] is outside the "
                            f"packed layout {radix}")
        found = sorted(set().union(*(t.word_ids(word) for t in tokenizers)))
        if not found:
            raise BCLMError(f"model.word_factors.{word}: no text token of the data spells {word!r} alone; "
                            "expected a word of the missions that BPE keeps whole")
        ids += found
        rows += [int(starts[element]) + value] * len(found)
    return torch.tensor(ids), torch.tensor(rows)


def attach_for(model: nn.Module, tokenizer: BCTokenizer, features: int, fresh: bool,
               radix: tuple[int, ...] | None = None,
               words: tuple[torch.Tensor, torch.Tensor] | None = None) -> StructuredEmbedding | None:
    """`attach_structured_embedding` laid out as `tokenizer`'s number range: its slots, and with a slot per
    dimension (format 3) the value basis of each dimension's bins; `radix`: factor the packed symbols, whose
    rows `words` (from `word_rows`) share, with a row per coordinate of the slot grid (`tokenizer.symbol_grid`)."""
    positions = torch.as_tensor(tokenizer.number_positions()) if tokenizer.config.number_slots else None
    symbols = (tokenizer.value_offset, radix, tokenizer.config.symbol_grid) if radix else None
    return attach_structured_embedding(model, tokenizer.number_offset, tokenizer.number_vocab, features, fresh,
                                       slots=max(tokenizer.number_slots, 1), positions=positions,
                                       symbols=symbols, words=words)


def reindex_numbers(model: nn.Module, before: Mapping[str, BCTokenizer], after: Mapping[str, BCTokenizer]) -> int:
    """Move a warm-started model's number rows with the bins of tokenizers that `cover_tokenizers` widened
    (`before`: their copies from before): each row of a widened dimension becomes the row of the old bin that
    held its value, so the model embeds (and, for action bins chosen among, scores) every value the old bins
    covered as it did. The table must be plain (as a policy loads), before `attach_for` structures it; in a
    mixture the first task to move an id decides its row, as it decides the slot's positions. Returns the
    number of rows moved."""
    emb = model.get_input_embeddings()
    if isinstance(emb, StructuredEmbedding) and emb.size:
        raise BCLMError("reindex_numbers needs the plain table of a loaded policy, before attach_for")
    untie(model)
    head = model.get_output_embeddings()
    done: set[int] = set()
    with torch.no_grad():
        rows, head_rows = emb.weight.detach().clone(), None if head is None else head.weight.detach().clone()
        for name, old in before.items():
            ids, sources, chosen = after[name].moved_numbers(old)
            fresh = np.array([i not in done for i in ids.tolist()], dtype=bool)
            ids, sources, chosen = ids[fresh], sources[fresh], chosen[fresh]
            done.update(ids.tolist())
            emb.weight[torch.as_tensor(ids)] = rows[torch.as_tensor(sources)]
            if head_rows is not None and chosen.any():
                head.weight[torch.as_tensor(ids[chosen])] = head_rows[torch.as_tensor(sources[chosen])]
    return len(done)


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
    if not isinstance(emb, StructuredEmbedding):
        yield
        return
    plain = nn.Embedding(emb.num_embeddings, emb.embedding_dim, _weight=emb.materialized(),
                         device=emb.weight.device, dtype=emb.weight.dtype)
    model.set_input_embeddings(plain)
    try:
        yield
    finally:
        model.set_input_embeddings(emb)


def plain_state_dict(state_dict: dict[str, torch.Tensor], emb: StructuredEmbedding) -> dict[str, torch.Tensor]:
    """A gathered (ZeRO-3) state dict with the structured rows written into the table and their parameters
    (and a state projector's, saved apart) dropped."""
    out = {k: v for k, v in state_dict.items() if f".{STATE}." not in k}
    structured = [k for k in out if k.endswith((NUMBER_PROJ, SYMBOL_FACTORS))]
    if not structured:
        return out
    prefix = structured[0].rsplit(".", 1)[0] + "."
    proj, factors = out.pop(prefix + NUMBER_PROJ, None), out.pop(prefix + SYMBOL_FACTORS, None)
    out[prefix + "weight"] = emb.materialized(out[prefix + "weight"], proj, factors)
    return out
