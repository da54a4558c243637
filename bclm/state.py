"""The state token: a step's continuous observation, projected into one vector at its ACT token.

With a token per observation number, a transformer must gather the numbers of a step by attention before
it can weigh them, and a law that is linear in several of them (a reach: force = gain · (goal − position)
− damping · velocity) is then learned slowly or not at all: measured on a 2-D reach from 1,000 labels, 23%
success with a token per number, 100% with one projected vector on the same trunk (and an MLP 96%). JAT and
VLA projectors embed a continuous input with one linear layer for the same reason. Here the ACT token of each
step adds `Σ_s W_s z_s`: z_s is the value of the step's continuous observation number in slot s, normalised
with the tokenizer's statistics (0 at the centre of its data, ±1 at its edges: `observation_values`), W_s a
learned vector per slot. Training batches and rollouts hand the exact values beside the ids (`feeding`); with
ids alone, z_s is the position of the token's bin (`BCTokenizer.number_positions`), rounded to the bin. The
number tokens stay in the sequence (history, discrete and text leaves are unchanged); the ACT token, where
the action is read, gets the linear path an MLP's first layer has.

The same sums give the regression head a linear read-out (`add_read_out`): each regressed action value is
the LM's output at its slot's id plus `Σ_s R_{s,k} z_s`, the linear path from input to output that an MLP
has and that a transformer's normalisations and gates bend (a Llama trunk erred 1.8x the tanh MLP's torque
around Pendulum's top, benchmarks/RESULTS.md).

The step's observation tokens are the `obs_len` tokens before its ACT, and its read-out is its task's: of
the task whose token last started a window, or of the task being served where the ids fed hold no task
token (a cached decoding step). The causal LM itself stays a plain `AutoModelForCausalLM`; the projector's
weights are their own safetensors file beside it (`STATE_FILE`), which `Policy.from_pretrained` attaches again.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from torch import nn

from bclm.data.sequences import IGNORE_INDEX, EpisodeTokens
from bclm.embeddings import STATE, StructuredEmbedding, untie
from bclm.tokenizers import BCTokenizer, slot_positions

STATE_FILE = "state_projector.safetensors"


class StateProjector(nn.Module):
    """(B, T) ids -> (B, T, dim): at each ACT token, the sum over the step's observation number tokens of their
    value times their slot's vector; zero elsewhere. The same sums with the read-out's weights, (B, T, out),
    are kept in `linear` for `add_read_out`."""

    def __init__(self, dim: int, positions: np.ndarray, number_offset: int, act_id: int, task_offset: int,
                 obs_lens: list[int], out_slots: list[int]):
        super().__init__()
        slots, width = positions.shape
        self.weight = nn.Parameter(torch.zeros(slots, dim))
        # The linear read-out: per task, per observation slot, a weight per regressed action slot (`out_slots`).
        # Per task: one law shared by a mixture is a compromise that, off a task's data, pulls it towards the
        # others' actions (MT10: reach closed the gripper and dived like pick-place, 5% success). None without
        # any regressed slot: DeepSpeed ZeRO-3 cannot gather a parameter of no elements.
        self.register_parameter("read_out", nn.Parameter(torch.zeros(len(obs_lens), slots, len(out_slots)))
                                if out_slots else None)
        # Per task, how much of the LM's output the regressed values take (1; 0 where `bclm.trainer.select`
        # kept the least-squares law alone) and the law's intercept (0 unless then).
        self.register_buffer("trunk_gate", torch.ones(len(obs_lens)) if out_slots else None)
        self.register_buffer("law_bias", torch.zeros(len(obs_lens), len(out_slots)) if out_slots else None)
        self.law_only = False                       # whether some task's gate is 0 (`refresh`)
        self.task: torch.Tensor | None = None       # (B, T) the task of each position of the last forward
        self.register_buffer("out_ids", number_offset + width * torch.as_tensor(out_slots, dtype=torch.long),
                             persistent=False)
        self.linear: torch.Tensor | None = None     # (B, T, out) the read-out of the last forward, at ACT tokens
        self.register_buffer("positions", torch.as_tensor(positions, dtype=torch.float32).flatten(), persistent=False)
        self.register_buffer("obs_lens", torch.as_tensor(obs_lens, dtype=torch.long), persistent=False)
        self.number_offset, self.width, self.act_id, self.task_offset = number_offset, width, act_id, task_offset
        self.default_task = 0                       # set by `serving` for ids that hold no task token
        self.values: torch.Tensor | None = None     # (B, T) exact values of the ids about to be fed (`feeding`)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        local = input_ids - self.number_offset
        is_number = (local >= 0) & (local < len(self.positions))
        local = local.clamp(0, len(self.positions) - 1)
        # The exact values where the caller gave them; else the bins' positions (rounded to the bin).
        value = self.values.to(self.weight.dtype) if self.values is not None else self.positions[local]
        value = torch.where(is_number, value, 0.0)                                           # (B, T)
        arange = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        task, slot = self._tasks(input_ids, arange), local // self.width
        self.task = task
        weights = self.weight[slot] if self.read_out is None else torch.cat([self.weight[slot],
                                                                             self.read_out[task, slot]], dim=-1)
        terms = value[..., None] * weights                                                   # (B, T, dim + out)
        before = torch.cat([torch.zeros_like(terms[:, :1]), terms.cumsum(dim=1)], dim=1)      # sums of [0, t)
        start = (arange - self.obs_lens[task]).clamp(min=0)
        index = torch.stack([arange, start])[..., None].expand(-1, -1, -1, terms.shape[-1])
        state = before.gather(1, index[0]) - before.gather(1, index[1])
        state = torch.where((input_ids == self.act_id)[..., None], state, 0.0)
        self.linear = state[..., self.weight.shape[1]:]
        return state[..., :self.weight.shape[1]]

    def refresh(self) -> None:
        """Note whether any task keeps the law alone, so that `add_read_out` costs nothing where none does."""
        self.law_only = self.trunk_gate is not None and bool((self.trunk_gate < 1).any())

    def use_trunk(self) -> None:
        """Every task's value the LM's output plus the read-out again: what training fits."""
        if self.trunk_gate is not None:
            self.trunk_gate.fill_(1.0)
            self.law_bias.zero_()
        self.refresh()

    def _tasks(self, input_ids: torch.Tensor, arange: torch.Tensor) -> torch.Tensor:
        """(B, T) the task of each position: that of the last task token before it, else the served one."""
        task = input_ids - self.task_offset
        is_task = (task >= 0) & (task < len(self.obs_lens))
        last = torch.where(is_task, arange, -1).cummax(dim=1).values
        task_at = task.gather(1, last.clamp(min=0)).clamp(0, len(self.obs_lens) - 1)
        return torch.where(last >= 0, task_at, self.default_task)


def wants_state(tokenizers: Mapping[str, BCTokenizer]) -> bool:
    """Whether any task has continuous observation dimensions in number slots (format 3)."""
    return any(t.part_slots("observation").any() for t in tokenizers.values())


def attach_state(model: nn.Module, tokenizers: Mapping[str, BCTokenizer],
                 weights: Mapping[str, torch.Tensor] | None = None, fresh: bool = True) -> StateProjector | None:
    """Give `model` a state projector for `tokenizers` (its `weights` as saved; without them the projection
    small and random when `fresh`, else zero, so that a warm-started model computes what it did, and the
    read-out zero), unless it has one already or no task has continuous observation slots. Returns it."""
    if not wants_state(tokenizers):
        return None
    emb = model.get_input_embeddings()
    if not isinstance(emb, StructuredEmbedding):
        untie(model)
        emb = StructuredEmbedding(emb.weight, 0, 0, 0)
        model.set_input_embeddings(emb)
    if emb.state is not None:
        return emb.state
    first = next(iter(tokenizers.values()))
    obs_lens = [tokenizers[task].obs_len if task in tokenizers else 0 for task in first.tasks]
    regressed = [t.part_slots("action") for t in tokenizers.values() if t.regression]
    out_slots = np.flatnonzero(np.any(regressed, axis=0)).tolist() if regressed else []
    state = StateProjector(emb.embedding_dim, slot_positions(tokenizers, "observation"), first.number_offset,
                           first.act_id, first.task_offset, obs_lens, out_slots).to(emb.weight.device)
    if weights is None and fresh:
        nn.init.normal_(state.weight, std=getattr(model.config, "initializer_range", 0.02))
    elif weights is not None:
        weights = dict(weights)
        if "read_out" in weights and weights["read_out"].dim() == 2:     # saved before read-outs were per task
            weights["read_out"] = weights["read_out"].expand(len(obs_lens), -1, -1).clone()
        for name in ("trunk_gate", "law_bias"):                        # saved before the law could be chosen
            if getattr(state, name) is not None:
                weights.setdefault(name, getattr(state, name))
        state.load_state_dict({k: v.to(state.weight.dtype) for k, v in weights.items()})
        state.refresh()
    emb.state = state
    return state


def state_of(model: nn.Module) -> StateProjector | None:
    """The projector of `model`, also when torch.compile, DDP or DeepSpeed wrap it (`_orig_mod`, `module`)."""
    inner = getattr(model, "_orig_mod", model)
    inner = getattr(inner, "module", inner)
    if hasattr(inner, "get_input_embeddings"):       # O(1): called at every forward pass of a rollout
        return getattr(inner.get_input_embeddings(), STATE, None)
    return next((m for m in model.modules() if isinstance(m, StateProjector)), None)


@contextmanager
def feeding(model: nn.Module, values: torch.Tensor | None) -> Iterator[None]:
    """Within the block, the ids fed to `model` have the exact values `values` (B, T) (the tokenizer's
    `observation_values`): the ids alone carry them rounded to their bins. torch has no way to hand a tensor
    beside the ids to an inner module of a transformers model, hence this attribute."""
    state = state_of(model) if values is not None else None
    if state is None:
        yield
        return
    state.values = values
    try:
        yield
    finally:
        state.values = None


@contextmanager
def serving(model: nn.Module, tokenizer: BCTokenizer, task: str) -> Iterator[None]:
    """Within the block, ids without a task token are steps of `task` (cached decoding)."""
    state = state_of(model)
    if state is None:
        yield
        return
    before, state.default_task = state.default_task, tokenizer.tasks.index(task) if task in tokenizer.tasks else 0
    try:
        yield
    finally:
        state.default_task = before


def add_read_out(model: nn.Module, logits: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
    """`logits` (B, K, V) at `positions` (K,) of the last forward pass (or (B, V) at its last token) plus the
    projector's linear read-out at the regressed action slots' ids: the regression head's value is the LM's
    output there plus a map linear in the step's observation, the path an MLP's output has."""
    state = state_of(model)
    if state is None or state.linear is None or not len(state.out_ids):
        return logits
    at = slice(-1, None) if positions is None else positions
    linear = state.linear[:, at]
    if state.law_only:                      # a task whose value is the law alone: its LM output is gated off
        task = state.task[:, at]
        flat = logits if positions is not None else logits[:, None]
        gated = flat[..., state.out_ids] * state.trunk_gate[task][..., None].to(logits.dtype)
        flat = flat.index_copy(-1, state.out_ids, gated)
        linear = linear + state.law_bias[task]
        logits = flat if positions is not None else flat[:, 0]
    linear = linear if positions is not None else linear[:, 0]
    return logits.index_add(-1, state.out_ids, linear.to(logits.dtype))


def fit_read_out(model: nn.Module, steps: list[tuple[str, BCTokenizer, EpisodeTokens]], ridge: float = 1e-3) -> None:
    """Start each task's read-out at the least-squares linear map (ridge, with an intercept left to the LM)
    from its training steps' observation values to their expert's regressed action values, so that the
    transformer learns what a linear law misses rather than racing a linear path that starts at zero: it
    fits a few hundred labels long before gradients build the linear map, and extrapolates as it fits."""
    state = state_of(model)
    if state is None or state.read_out is None:
        return
    for task, tok, tokens in steps:
        read_out, _ = least_squares_law(state, tok, tokens, ridge)
        with torch.no_grad():
            state.read_out[tok.tasks.index(task)] = torch.as_tensor(read_out)


def least_squares_law(state: StateProjector, tok: BCTokenizer, tokens: EpisodeTokens, ridge: float = 1e-3
                      ) -> tuple[np.ndarray, np.ndarray]:
    """(slots, out) weights and (out,) intercept of the ridge least-squares map from the steps' observation
    values to their regressed action values (the tanh pre-image on squashed slots), per output slot."""
    out_slots = ((state.out_ids - state.number_offset) // state.width).tolist()
    x, y = _linear_problem(tok, tokens, state.weight.shape[0], out_slots)
    x1 = np.concatenate([x, np.ones((len(x), 1))], axis=1)
    law = np.zeros((x1.shape[1], len(out_slots)))
    for j in range(len(out_slots)):
        rows = ~np.isnan(y[:, j])
        if rows.sum() > 1:
            gram = x1[rows].T @ x1[rows]
            gram += ridge * np.trace(gram) / len(gram) * np.eye(len(gram))
            law[:, j] = np.linalg.solve(gram, x1[rows].T @ y[rows, j])
    return law[:-1], law[-1]


def _linear_problem(tok: BCTokenizer, tokens: EpisodeTokens, slots: int, out_slots: list[int]
                    ) -> tuple[np.ndarray, np.ndarray]:
    """(steps, slots) observation values by slot and (steps, out) the regressed targets (NaN where unlabeled)."""
    x = np.zeros((len(tokens.values), slots))
    obs = np.flatnonzero(tok.number_mask())
    x[:, (tok.number_slot_starts()[obs] - tok.number_offset) // tok.number_width] = tokens.values[:, obs]
    y = np.full((len(x), len(out_slots)), np.nan)
    for k in np.flatnonzero(tok.regressed_actions()):
        column, at = out_slots.index((tok.regression_ids()[k] - tok.number_offset) // tok.number_width), \
            tok.obs_len + 1 + k
        # A squashed value is the tanh of the output: fit the output (saturated targets at tanh 0.95).
        target = np.arctanh(np.clip(tokens.value_labels[:, at], -0.95, 0.95)) if tok.squashed_actions()[k] \
            else tokens.value_labels[:, at]
        y[:, column] = np.where(tokens.labels[:, at] != IGNORE_INDEX, target, np.nan)
    return x, y


def save_state(model: nn.Module, directory: Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write the projector's weights (from a gathered ZeRO-3 `state_dict` when given) to `directory/STATE_FILE`."""
    from safetensors.torch import save_file

    state = state_of(model)
    if state is None:
        return
    gathered = {k.rsplit(".", 1)[1]: v for k, v in (state_dict or {}).items() if f".{STATE}." in k}
    weights = {k: gathered.get(k, v) for k, v in state.state_dict().items()}
    save_file({k: v.detach().float().cpu().contiguous() for k, v in weights.items()}, str(directory / STATE_FILE),
              metadata={"format": "bclm-state-projector"})


def load_state(model: nn.Module, tokenizers: Mapping[str, BCTokenizer], directory: Path) -> None:
    """Attach the projector saved in `directory`, if any."""
    from safetensors.torch import load_file

    path = directory / STATE_FILE
    if path.is_file():
        attach_state(model, tokenizers, load_file(str(path)))
