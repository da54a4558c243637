"""BCTokenizer: observations and actions of a gymnasium env <-> token ids for a causal LM.

Vocabulary (every id shifted by base_vocab_size, so a pretrained LM's own text vocabulary comes first):

    [pad, bos, eos, act, obs, 3 spare] [value range: value_vocab] [number range] [text range] [one token per task]

The value range holds symbols: discrete values and integers encoded exactly. The number range (format 2)
holds the bins of continuous values, number k meaning "bin k of this dimension's bounds" whatever the
dimension; being apart from the symbols, these tokens can get embeddings that know their order (see
bclm.embeddings). Format-1 files have no number range: their bins share the value range.
Tasks are last so that adding a task never moves a value or text id of an existing model.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from bclm import atomic
from bclm.errors import BCLMError
from bclm.tokenizers.codecs import BOUNDS, MODES, BoxCodec, Codec, TextCodec, codec_from_dict, make_codec, train_bpe
from bclm.tokenizers.spaces import assemble, flatten_leaves, leaf_arrays, space_from_dict, space_to_dict

TOKENIZER_FILE = "bclm_tokenizer.json"
# What a context holds of past steps: whole steps, or their observation tokens only (`steps_in_context`).
HISTORY_LAYOUTS = ("full", "observations")
FORMAT = "bclm-tokenizer"
FORMAT_VERSION = 4
# How continuous action dimensions are predicted (`TokenizerConfig.action_head`); format 4 adds regression.
ACTION_HEADS = ("regression", "bins")
NUM_SPECIAL = 8


@dataclass
class TokenizerConfig:
    obs_bins: int = field(default=256, metadata={"help": "Bins per continuous observation dimension."})
    action_bins: int = field(default=256, metadata={"help": "Bins per continuous action dimension."})
    mode: str = field(default="mulaw", metadata={
        "help": "Continuous binning: 'mulaw' (Gato-style companding: fine bins near the centre of the bounds, "
                "coarse ones in the margin beyond the data), 'uniform', or 'quantile' (equal-mass bins between "
                "the data's percentiles, fitted on the training data: fine where the demonstrations dwell)."})
    mu: float = field(default=100.0, metadata={"help": "mu of the mu-law companding (mode 'mulaw')."})
    obs_bounds: str = field(default="data", metadata={
        "help": "Where observation Box bounds come from: 'space', 'data' (training-data percentiles), or "
                "'auto' (the space's bounds when all finite, else data)."})
    action_bounds: str = field(default="auto", metadata={
        "help": "Where action Box bounds come from: 'space', 'data' or 'auto' (as obs_bounds)."})
    percentiles: tuple[float, float] = field(default=(1.0, 99.0), metadata={
        "help": "Lower and upper data percentiles used as bounds when fitting; values outside are clipped."})
    margin: float = field(default=3.0, metadata={
        "help": "Data-fitted bounds are widened by this many times their range on each side, so that states "
                "past the demonstrations keep distinct (coarser, with mulaw) bins instead of clipping."})
    value_vocab: int = field(default=1024, metadata={
        "help": "Size of the value-token range shared by all observation and action values (Gato-style)."})
    group: int = field(default=1, metadata={
        "help": "MultiDiscrete/MultiBinary elements packed into one token (mixed radix)."})
    symbol_grid: tuple[int, ...] = field(default=(), metadata={
        "help": "Give each token of an integer observation leaf (MultiDiscrete, MultiBinary) its own block of ids, "
                "its slot, laid out on this grid (row-major; [7, 7] for a BabyAI view of 49 cells): an id then "
                "says where the token sits as well as what it packs, and with model.symbol_factors its "
                "embedding adds one row per grid coordinate. The leaf needs grid-product x combinations value "
                "ids (raise value_vocab). Empty: the tokens of a leaf share their ids."})
    text_max_tokens: int = field(default=16, metadata={"help": "Tokens per Text value (truncated/padded)."})
    text_vocab_size: int = field(default=512, metadata={
        "help": "Vocabulary size of the byte-level BPE trained for Text leaves (at least 256)."})
    numbers: bool = field(default=True, metadata={
        "help": "Continuous bins get their own 'number' token range (format 2), whose embeddings are a smooth "
                "function of the bin (model.number_features); false: the format-1 layout, bins in the value "
                "range as free symbols."})
    number_slots: bool = field(default=True, metadata={
        "help": "Each continuous dimension gets its own slot of number ids (format 3), so a token says which "
                "dimension it is as well as its bin: the model can add dimensions up with a weight each, as an "
                "MLP's first layer does; false: every dimension shares one slot (format 2)."})
    action_head: str = field(default="regression", metadata={
        "help": "How continuous action dimensions are predicted. 'regression' (format 4): all of a step's at once, "
                "at its ACT token, each the output logit of its slot's first id (plus the state token's linear "
                "read-out; through tanh where the space bounds the dimension), trained by squared error on the "
                "value normalised to its bounds and decoded exactly, as an MLP regresses (needs number_slots). "
                "'bins': one categorical token per dimension, cross-entropy over its bins (train.ordinal_sigma "
                "smooths it), each dimension after the ones before it."})

    def __post_init__(self) -> None:
        self.percentiles = tuple(float(p) for p in self.percentiles)  # JSON gives a list back
        self.symbol_grid = tuple(self.symbol_grid)
        if not all(isinstance(g, (int, np.integer)) and g >= 1 for g in self.symbol_grid):
            raise BCLMError(f"tokenizer config symbol_grid={list(self.symbol_grid)!r}: expected a list of "
                            "integers >= 1 (or empty)")
        for name in ("obs_bins", "action_bins", "value_vocab", "group", "text_max_tokens"):
            if not isinstance(getattr(self, name), (int, np.integer)) or getattr(self, name) < 1:
                raise BCLMError(f"tokenizer config {name}={getattr(self, name)!r}: expected an integer >= 1")
        for name in ("obs_bins", "action_bins"):
            if getattr(self, name) > self.value_vocab:
                raise BCLMError(f"tokenizer config {name}={getattr(self, name)} exceeds value_vocab="
                                f"{self.value_vocab}: every bin needs its own value token")
        if self.action_head not in ACTION_HEADS:
            raise BCLMError(f"tokenizer config action_head={self.action_head!r}: expected one of {list(ACTION_HEADS)}")
        if self.mode not in MODES:
            raise BCLMError(f"tokenizer config mode={self.mode!r}: expected one of {list(MODES)}")
        for name in ("obs_bounds", "action_bounds"):
            if getattr(self, name) not in BOUNDS:
                raise BCLMError(f"tokenizer config {name}={getattr(self, name)!r}: expected one of "
                                f"{list(BOUNDS)}")
        if not 0 <= self.margin <= 10:
            raise BCLMError(f"tokenizer config margin={self.margin!r}: expected a multiple of the range in [0, 10]")
        if not self.mu > 0:
            raise BCLMError(f"tokenizer config mu={self.mu!r}: expected a positive number")
        lo, hi = self.percentiles if len(self.percentiles) == 2 else (None, None)
        if lo is None or not 0 <= lo < hi <= 100:
            raise BCLMError(f"tokenizer config percentiles={self.percentiles!r}: expected (lo, hi) with "
                            "0 <= lo < hi <= 100")
        if self.text_vocab_size < 256:
            raise BCLMError(f"tokenizer config text_vocab_size={self.text_vocab_size}: expected >= 256 "
                            "(the byte-level BPE starts from 256 byte tokens)")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["percentiles"] = list(self.percentiles)
        d["symbol_grid"] = list(self.symbol_grid)
        # Fields format 1 did not have are left out at their format-1 values, so such files read back as written.
        for name, old in (("numbers", False), ("margin", 0.0), ("number_slots", False), ("symbol_grid", []),
                          ("action_head", "bins")):
            if d[name] == old:
                del d[name]
        if not self.numbers:
            d.pop("number_slots", None)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> TokenizerConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise BCLMError(f"unknown tokenizer config field(s) {unknown}: expected some of {sorted(known)}")
        return cls(**{"numbers": False, "margin": 0.0, "number_slots": False, "action_head": "bins",
                      **d})   # older formats lack them


def _leaf(path: str) -> str:
    return f"leaf '{path}'" if path else "root leaf"


class BCTokenizer:
    def __init__(self, observation_space: gym.Space, action_space: gym.Space,
                 config: TokenizerConfig | None = None, tasks: Sequence[str] = ("default",),
                 base_vocab_size: int = 0, text_tokenizer: Any = None, reserve_text: bool = False,
                 reserve_slots: int = 0):
        self.observation_space = observation_space
        self.action_space = action_space
        self.config = config if config is not None else TokenizerConfig()
        self.tasks: list[str] = []
        self.text_tokenizer = text_tokenizer
        self.base_vocab_size = self._base_vocab(int(base_vocab_size), text_tokenizer)
        self.fitted = False
        # A task without text in a multi-task vocabulary still reserves the shared text range, so that
        # every task's tokenizer places its task tokens at the same ids (see bclm.tokenizers.multitask).
        self.reserve_text = bool(reserve_text)
        # Likewise number slots: a task with fewer continuous dimensions reserves the set's largest count.
        self.reserve_slots = int(reserve_slots)
        self.obs_leaves = flatten_leaves(observation_space)
        self.action_leaves = flatten_leaves(action_space)
        cfg = self.config
        # Text leaves (instructions, missions) come first in each step: attention is causal, so only tokens
        # after the instruction can be read in its light ("is this cell the red ball?"). Placed last, the
        # instruction reaches the view only through its own few positions. (Saved files keep their order.)
        self.obs_codecs = sorted((self._codec(s, p, cfg.obs_bins, cfg.obs_bounds, cfg.symbol_grid)
                                  for p, s in self.obs_leaves), key=lambda codec: codec.kind != "text")
        self.action_codecs = [self._codec(s, p, cfg.action_bins, cfg.action_bounds)
                              for p, s in self.action_leaves]
        for t in tasks:
            self.add_task(t)

    @staticmethod
    def _base_vocab(base: int, text_tokenizer: Any) -> int:
        if text_tokenizer is None:
            return base
        n = len(text_tokenizer)
        if base == 0:
            return n
        if base < n:
            raise BCLMError(f"base_vocab_size={base} is smaller than the text tokenizer's {n} tokens")
        return base

    def _codec(self, space: gym.Space, path: str, bins: int, bounds: str, grid: tuple[int, ...] = ()) -> Codec:
        c = self.config
        return make_codec(space, path, bins=bins, mode=c.mode, mu=c.mu, bounds=bounds,
                          percentiles=c.percentiles, margin=c.margin, value_vocab=c.value_vocab, group=c.group,
                          text_max_tokens=c.text_max_tokens, text_vocab_size=c.text_vocab_size,
                          text_tokenizer=self.text_tokenizer, grid=grid)

    # --- vocabulary layout ----------------------------------------------------------------------

    @property
    def pad_id(self) -> int:
        return self.base_vocab_size

    @property
    def bos_id(self) -> int:
        return self.base_vocab_size + 1

    @property
    def eos_id(self) -> int:
        return self.base_vocab_size + 2

    @property
    def act_id(self) -> int:
        return self.base_vocab_size + 3

    @property
    def obs_id(self) -> int:
        return self.base_vocab_size + 4

    @property
    def value_offset(self) -> int:
        return self.base_vocab_size + NUM_SPECIAL

    @property
    def number_offset(self) -> int:
        return self.value_offset + self.config.value_vocab

    @property
    def number_width(self) -> int:
        """Ids per number slot: one per bin of the finest binning (0 in format 1)."""
        return max(self.config.obs_bins, self.config.action_bins) if self.config.numbers else 0

    @property
    def own_number_slots(self) -> int:
        """Slots this tokenizer's own spaces need: one per continuous dimension (format 3), or 1 (format 2)."""
        if not self.config.numbers:
            return 0
        if not self.config.number_slots:
            return 1
        return int(sum(_binned(c).sum() for c in self.obs_codecs + self.action_codecs))

    @property
    def continuous_actions(self) -> bool:
        """Whether any action dimension is binned (a continuous value), rather than every one exact."""
        return any(_binned(c).any() for c in self.action_codecs)

    @property
    def regression(self) -> bool:
        """Whether continuous action dimensions are regressed at the ACT token (`TokenizerConfig.action_head`)."""
        return (self.config.action_head == "regression" and self.config.numbers and self.config.number_slots
                and self.continuous_actions)

    def regressed_actions(self) -> np.ndarray:
        """(action_len,) True at the action tokens whose value is regressed rather than chosen among bins."""
        if not self.regression:
            return np.zeros(self.action_len, dtype=bool)
        return np.concatenate([_binned(c) for c in self.action_codecs])

    def squashed_actions(self) -> np.ndarray:
        """(action_len,) True at the regressed tokens whose bounds are their space's: their value is the tanh of
        the output, so it stays inside the space and saturates as a bounded expert does (a clipped force, a
        torque limit), as the reference MLP's and SAC's bounded actions do."""
        bounded = [_binned(c) & (isinstance(c, BoxCodec) and not c.data_bounds) for c in self.action_codecs]
        return self.regressed_actions() & (np.concatenate(bounded) if bounded else np.zeros(0, bool))

    def regression_ids(self) -> np.ndarray:
        """(action_len,) the id whose output logit at the ACT token is each regressed action token's value: the
        first id of its number slot (-1 at tokens chosen among tokens)."""
        starts = np.concatenate([self._offsets(c) for c in self.action_codecs]) if self.action_codecs else \
            np.zeros(0, dtype=np.int64)
        return np.where(self.regressed_actions(), starts, -1)

    @property
    def number_slots(self) -> int:
        return max(self.own_number_slots, self.reserve_slots)

    @property
    def number_vocab(self) -> int:
        """Ids of the number range: `number_slots` slots of `number_width` ids (0 in format 1)."""
        return self.number_slots * self.number_width

    @property
    def has_text(self) -> bool:
        return any(isinstance(c, TextCodec) for c in self.obs_codecs + self.action_codecs)

    @property
    def text_range_size(self) -> int:
        """Ids reserved after the value range: only for a BPE trained here (a base LM's text is in-base)."""
        if not (self.has_text or self.reserve_text) or self.text_tokenizer_name is not None:
            return 0
        return self.config.text_vocab_size + 1

    @property
    def text_tokenizer_name(self) -> str | None:
        names = [c.hf_name for c in self.obs_codecs + self.action_codecs
                 if isinstance(c, TextCodec) and c.backend == "hf"]
        if names:
            return names[0]
        if self.text_tokenizer is not None:
            return getattr(self.text_tokenizer, "name_or_path", "")
        return None

    @property
    def text_offset(self) -> int:
        if self.text_tokenizer_name is not None:
            return 0
        return self.number_offset + self.number_vocab

    @property
    def task_offset(self) -> int:
        return self.number_offset + self.number_vocab + self.text_range_size

    @property
    def vocab_size(self) -> int:
        return self.task_offset + len(self.tasks)

    def task_token(self, name: str) -> int:
        if name not in self.tasks:
            raise BCLMError(f"unknown task {name!r}: the tokenizer knows {self.tasks}")
        return self.task_offset + self.tasks.index(name)

    def add_task(self, name: str) -> int:
        if not isinstance(name, str) or not name:
            raise BCLMError(f"task name {name!r}: expected a non-empty string")
        if name not in self.tasks:
            self.tasks.append(name)
        return self.task_token(name)

    @property
    def obs_len(self) -> int:
        return sum(c.num_tokens for c in self.obs_codecs)

    @property
    def action_len(self) -> int:
        return sum(c.num_tokens for c in self.action_codecs)

    @property
    def step_len(self) -> int:
        return self.obs_len + 1 + self.action_len

    @property
    def prefix_len(self) -> int:
        return 2

    def steps_in_context(self, context_length: int, history: str = "full") -> int:
        """Timesteps a context holds: whole steps, or with history "observations" (past steps as their
        observation tokens only) one whole step and as many past observations as fit. 0 if none fits."""
        room = context_length - self.prefix_len
        if history == "full" or room < self.step_len:
            return max(0, room // self.step_len)
        return 1 + (room - self.step_len) // self.obs_len

    def prefix(self, task: str) -> np.ndarray:
        return np.array([self.bos_id, self.task_token(task)], dtype=np.int64)

    def _offsets(self, codec: Codec) -> np.ndarray:
        """(num_tokens,) global id of each of the codec's local id 0: text, number (binned) or value range."""
        if codec.kind == "text":
            return np.full(codec.num_tokens, self.text_offset, dtype=np.int64)
        binned = _binned(codec) & self.config.numbers
        slot = 0
        if self.config.number_slots:
            # Continuous dimensions take slots in step order: observation codecs, then action codecs.
            before = 0
            for other in self.obs_codecs + self.action_codecs:
                if other is codec:
                    break
                before += int(_binned(other).sum())
            slot = before + np.cumsum(binned) - 1
        return np.where(binned, self.number_offset + slot * self.number_width, self.value_offset).astype(np.int64)

    def number_positions(self, part: str = "") -> np.ndarray:
        """(number_slots, number_width) each bin's value relative to its dimension's data (`bin_positions`),
        0 on ids a slot does not use, and on the slots of the other part when `part` is "observation" or
        "action"; slots only (format 3): a shared slot has no one dimension to measure."""
        out = np.zeros((self.number_slots, self.number_width))
        slot = 0
        for codec in self.obs_codecs + self.action_codecs:
            binned = _binned(codec)
            if binned.any():
                n = int(binned.sum())
                if part != ("action" if codec in self.obs_codecs else "observation"):
                    positions = codec.bin_positions()[binned]
                    out[slot:slot + n, :positions.shape[1]] = positions
                slot += n
        return out

    def part_slots(self, part: str) -> np.ndarray:
        """(number_slots,) True at the slots of this tokenizer's "observation" or "action" dimensions."""
        n_obs = sum(int(_binned(c).sum()) for c in self.obs_codecs)
        own = np.arange(self.number_slots) < self.own_number_slots
        return own & ((np.arange(self.number_slots) < n_obs) == (part == "observation"))

    def word_ids(self, word: str) -> set[int]:
        """Ids of the text tokens that spell `word` alone or after a space (BPE's form inside a sentence)."""
        codecs = [c for c in self.obs_codecs + self.action_codecs if isinstance(c, TextCodec)]
        local = {c.single_token(form) for c in codecs for form in (word, " " + word)}
        return {self.text_offset + i for i in local if i is not None}

    def packed_radix(self) -> set[tuple[int, ...]]:
        """The element layouts of the observation tokens that pack several integer elements (`group` > 1)."""
        radix_codecs = [c for c in self.obs_codecs if not isinstance(c, BoxCodec | TextCodec)]
        return set().union(*(c.packed_layouts() for c in radix_codecs))

    def number_slot_starts(self) -> np.ndarray:
        """(step_len,) the first id of each observation number token's slot (0 elsewhere): jitter stays in it."""
        starts = np.zeros(self.step_len, dtype=np.int64)
        mask = self.number_mask()
        if mask.any():
            offsets = np.concatenate([self._offsets(c) for c in self.obs_codecs])
            starts[:self.obs_len] = np.where(mask[:self.obs_len], offsets, 0)
        return starts

    def number_mask(self) -> np.ndarray:
        """(step_len,) True at the observation tokens of a step that are numbers (continuous bins)."""
        mask = np.zeros(self.step_len, dtype=bool)
        if self.config.numbers:
            mask[:self.obs_len] = np.concatenate([_binned(c) for c in self.obs_codecs]) if self.obs_codecs else []
        return mask

    # --- validation -----------------------------------------------------------------------------

    def _leaves(self, space: gym.Space, leaves: list[tuple[str, gym.Space]], batch: Any,
                where: str) -> dict[str, np.ndarray]:
        """Per-leaf arrays, checked for shape and a common batch size."""
        try:
            arrays = leaf_arrays(space, batch)
        except BCLMError as exc:
            raise BCLMError(f"{where}: {exc}") from exc
        sizes = set()
        for path, sub in leaves:
            arr = arrays[path]
            expected = () if isinstance(sub, gym.spaces.Text) else tuple(sub.shape)
            if arr.ndim < 1 or arr.shape[1:] != expected:
                raise BCLMError(f"{where}: {_leaf(path)} has shape {arr.shape}, expected (batch, "
                                f"{', '.join(map(str, expected))}) for {sub}")
            sizes.add(arr.shape[0])
        if len(sizes) > 1:
            raise BCLMError(f"{where}: leaves have different batch sizes {sorted(sizes)}")
        return arrays

    def _check_finite(self, leaves: list[tuple[str, gym.Space]], arrays: dict[str, np.ndarray],
                      where: str, kind: str) -> None:
        for path, sub in leaves:
            if isinstance(sub, gym.spaces.Box) and np.issubdtype(arrays[path].dtype, np.floating):
                bad = ~np.isfinite(arrays[path])
                if bad.any():
                    row = int(np.argwhere(bad)[0][0])
                    raise BCLMError(f"{where}: {kind} {_leaf(path)} contains NaN or inf (row {row})")

    def check_observation(self, obs_batch: Any, where: str = "input") -> dict[str, np.ndarray]:
        arrays = self._leaves(self.observation_space, self.obs_leaves, obs_batch, where)
        self._check_finite(self.obs_leaves, arrays, where, "observation")
        return arrays

    def check_action(self, act_batch: Any, where: str = "action") -> dict[str, np.ndarray]:
        arrays = self._leaves(self.action_space, self.action_leaves, act_batch, where)
        for path, sub in self.action_leaves:
            _check_contained(sub, arrays[path], path, where)
        return arrays

    # --- fitting ------------------------------------------------------------------------------

    def fit(self, observations: Any, actions: Any) -> BCTokenizer:
        texts = self.fit_values(observations, actions)
        if self.needs_bpe:
            self.set_bpe(train_bpe(texts, self.config.text_vocab_size))
        self.fitted = True
        return self

    def fit_values(self, observations: Any, actions: Any) -> list[str]:
        """Fit the bounds/bins of every non-text leaf; return the text values a BPE would be trained on."""
        obs = self.check_observation(observations, "fit observations")
        act = self.check_action(actions, "fit actions")
        texts: list[str] = []
        for codecs, arrays in ((self.obs_codecs, obs), (self.action_codecs, act)):
            for codec in codecs:
                if isinstance(codec, TextCodec):
                    texts.extend(str(t) for t in arrays[codec.path])
                else:
                    codec.fit(arrays[codec.path])
        return texts

    def cover(self, observations: Any, actions: Any) -> bool:
        """Widen the data-fitted bounds of a fitted tokenizer to cover new data, each dimension in its own frame
        (`BoxCodec.cover`); returns whether any bound moved."""
        parts = ((self.obs_codecs, self.check_observation(observations, "cover observations")),
                 (self.action_codecs, self.check_action(actions, "cover actions")))
        moved = [codec.cover(leaves[codec.path]) for codecs, leaves in parts
                 for codec in codecs if isinstance(codec, BoxCodec)]
        return any(moved)

    def moved_numbers(self, before: BCTokenizer) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """After `cover`: (ids, sources, chosen) where each number id of a widened dimension takes the row of
        the id that held its bin's value under `before` (the edge bin for values past `before`'s bounds, which
        clipped them there); `chosen`: the id is an action bin chosen among (its output row moves too), not an
        observation or a regressed action, whose value is read from its slot's first id alone."""
        ids, sources, chosen = [], [], []
        regressed = np.concatenate([np.zeros(self.obs_len, dtype=bool), self.regressed_actions()])
        pos = 0
        for old, new in zip(before.obs_codecs + before.action_codecs, self.obs_codecs + self.action_codecs):
            if isinstance(new, BoxCodec) and self.config.numbers and self.config.number_slots:
                bins = np.arange(new.bins)
                old_ids = old.encode(new.decode(np.repeat(bins[:, None], new.num_tokens, axis=1)))
                offsets = self._offsets(new)
                for d in np.flatnonzero(_binned(new) & ((old.low != new.low) | (old.high != new.high))):
                    ids.append(offsets[d] + bins)
                    sources.append(offsets[d] + old_ids[:, d])
                    chosen.append(np.full(new.bins, pos >= self.obs_len and not regressed[pos + d]))
            pos += new.num_tokens
        return tuple(np.concatenate(a) if a else np.zeros(0, dtype=np.int64 if i < 2 else bool)
                     for i, a in enumerate((ids, sources, chosen)))

    @property
    def needs_bpe(self) -> bool:
        return any(isinstance(c, TextCodec) and c.backend == "bpe" for c in self.obs_codecs + self.action_codecs)

    def set_bpe(self, bpe: Any) -> None:
        # One BPE for all text leaves (of all tasks of a multi-task vocabulary): they share one id range.
        for codec in self.obs_codecs + self.action_codecs:
            if isinstance(codec, TextCodec) and codec.backend == "bpe":
                codec.bpe = bpe

    # --- encode / decode ----------------------------------------------------------------------

    def _encode(self, codecs: list[Codec], arrays: dict[str, np.ndarray]) -> np.ndarray:
        batch = len(next(iter(arrays.values())))
        parts = [codec.encode(arrays[codec.path]) + self._offsets(codec) for codec in codecs]
        return np.concatenate(parts, axis=1) if parts else np.zeros((batch, 0), dtype=np.int64)

    def _decode(self, space: gym.Space, codecs: list[Codec], ids: np.ndarray, length: int, what: str) -> Any:
        ids = np.asarray(ids, dtype=np.int64)
        if ids.ndim != 2 or ids.shape[1] != length:
            raise BCLMError(f"{what} ids have shape {ids.shape}, expected (batch, {length})")
        leaves, pos = {}, 0
        for codec in codecs:
            local = ids[:, pos: pos + codec.num_tokens] - self._offsets(codec)
            leaves[codec.path] = codec.decode(local)
            pos += codec.num_tokens
        return assemble(space, leaves)

    def encode_observation(self, obs_batch: Any) -> np.ndarray:
        return self._encode(self.obs_codecs, self.check_observation(obs_batch))

    def encode_action(self, act_batch: Any) -> np.ndarray:
        arrays = self._leaves(self.action_space, self.action_leaves, act_batch, "input")
        self._check_finite(self.action_leaves, arrays, "input", "action")
        return self._encode(self.action_codecs, arrays)

    def decode_observation(self, ids: np.ndarray) -> Any:
        return self._decode(self.observation_space, self.obs_codecs, ids, self.obs_len, "observation")

    def decode_action(self, ids: np.ndarray, values: np.ndarray | None = None) -> Any:
        """Actions of `ids` (batch, action_len); with `values` (batch, action_len), the regressed tokens'
        positions (`regressed_actions`), those dimensions are their exact values rather than bin centres."""
        actions = self._decode(self.action_space, self.action_codecs, ids, self.action_len, "action")
        if values is None or not self.regression:
            return actions
        leaves, pos = leaf_arrays(self.action_space, actions), 0
        for codec in self.action_codecs:
            n, binned = codec.num_tokens, _binned(codec)
            if binned.any():
                exact = codec.denormalize(values[:, pos:pos + n]).reshape(len(values), -1)
                kept = leaves[codec.path].reshape(len(values), -1)
                leaves[codec.path] = np.where(binned, exact, kept).astype(codec.dtype).reshape(
                    leaves[codec.path].shape)
            pos += n
        return assemble(self.action_space, leaves)

    def regressed_ids(self, values: np.ndarray) -> np.ndarray:
        """(batch, action_len) the token ids of the regressed values `values` (batch, action_len), as they enter
        the context (0 at the other tokens)."""
        ids, pos = np.zeros(values.shape, dtype=np.int64), 0
        for codec in self.action_codecs:
            n = codec.num_tokens
            if _binned(codec).any():
                ids[:, pos:pos + n] = codec.encode(codec.denormalize(values[:, pos:pos + n])) + self._offsets(codec)
            pos += n
        return np.where(self.regressed_actions(), ids, 0)

    def _values(self, codecs: list[Codec], arrays: dict[str, np.ndarray]) -> np.ndarray:
        batch = len(next(iter(arrays.values()))) if arrays else 0
        parts = [np.where(_binned(c), c.normalize(np.clip(arrays[c.path].reshape(batch, -1), c.low, c.high)), 0.0)
                 if isinstance(c, BoxCodec) else
                 np.zeros((batch, c.num_tokens)) for c in codecs]
        return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((batch, 0), np.float32)

    def observation_values(self, obs_batch: Any) -> np.ndarray:
        """(batch, obs_len) the exact value of each continuous observation token relative to its data (as
        `number_positions` measures bins: ±1 at the data's edges, clipped to the bounds), 0 at the other
        tokens: what the state token reads (bclm.state) instead of the bins' rounded positions."""
        return self._values(self.obs_codecs, self.check_observation(obs_batch))

    def action_values(self, act_batch: Any) -> np.ndarray:
        """(batch, action_len) the same for actions: the regression head's exact targets."""
        return self._values(self.action_codecs, leaf_arrays(self.action_space, act_batch))

    def encode_steps(self, obs_batch: Any, act_batch: Any) -> np.ndarray:
        obs = self.encode_observation(obs_batch)
        act = self.encode_action(act_batch)
        if len(obs) != len(act):
            raise BCLMError(f"encode_steps: {len(obs)} observations but {len(act)} actions")
        sep = np.full((len(obs), 1), self.act_id, dtype=np.int64)
        return np.concatenate([obs, sep, act], axis=1)

    def action_token_ranges(self) -> np.ndarray:
        rows = [np.stack([self._offsets(c), self._offsets(c) + c.sizes()], axis=1) for c in self.action_codecs]
        return np.concatenate(rows).astype(np.int64) if rows else np.zeros((0, 2), dtype=np.int64)

    # --- reporting ----------------------------------------------------------------------------

    def quantization_report(self, observations: Any, actions: Any) -> dict:
        """Round-trip error per leaf and dimension, and how often the bounds clipped a value."""
        report: dict[str, Any] = {"observation": {}, "action": {}}
        sources = (("observation", self.obs_codecs, self.check_observation(observations, "report")),
                   ("action", self.action_codecs, self.check_action(actions, "report")))
        overall = 0.0
        for name, codecs, arrays in sources:
            for codec in codecs:
                leaf = _leaf_report(codec, arrays[codec.path])
                report[name][codec.path] = leaf
                overall = max([overall, *leaf.get("max_abs_error", [])])
        report["max_abs_error"] = overall
        return report

    # --- persistence --------------------------------------------------------------------------

    def to_dict(self) -> dict:
        return {
            "format": FORMAT,
            "format_version": self._format_version(),
            "observation_space": space_to_dict(self.observation_space),
            "action_space": space_to_dict(self.action_space),
            # A tokenizer that regresses nothing is written as 'bins' (its files stay format 3).
            "config": TokenizerConfig.to_dict(self.config if self.regression else
                                              dataclasses.replace(self.config, action_head="bins")),
            "tasks": list(self.tasks),
            "base_vocab_size": self.base_vocab_size,
            "text_tokenizer": self.text_tokenizer_name,
            "fitted": self.fitted,
            # Only in multi-task files (older readers never see it where it matters).
            **({"reserve_text": True} if self.reserve_text else {}),
            **({"reserve_slots": self.reserve_slots} if self.reserve_slots > self.own_number_slots else {}),
            "codecs": {"observation": [c.to_dict() for c in self.obs_codecs],
                       "action": [c.to_dict() for c in self.action_codecs]},
            # Derived, but written out so that the file alone documents the id layout.
            "layout": {"pad_id": self.pad_id, "bos_id": self.bos_id, "eos_id": self.eos_id,
                       "act_id": self.act_id, "obs_id": self.obs_id, "value_offset": self.value_offset,
                       "text_offset": self.text_offset, "task_offset": self.task_offset,
                       "vocab_size": self.vocab_size,
                       **({"number_offset": self.number_offset, "number_vocab": self.number_vocab,
                           **({"number_slots": self.number_slots} if self.config.number_slots else {})}
                          if self.config.numbers else {})},
        }

    def _format_version(self) -> int:
        if not self.config.numbers:
            return 1
        if not self.config.number_slots:
            return 2
        return FORMAT_VERSION if self.regression else 3

    @classmethod
    def from_dict(cls, d: dict, text_tokenizer: Any = None, source: str = "tokenizer dict") -> BCTokenizer:
        check_format(d, source)
        hf_name = d.get("text_tokenizer")
        tok = cls(space_from_dict(d["observation_space"]), space_from_dict(d["action_space"]),
                  TokenizerConfig.from_dict(d["config"]), tasks=d["tasks"],
                  base_vocab_size=d["base_vocab_size"],
                  text_tokenizer=text_tokenizer if hf_name is not None else None,
                  reserve_text=bool(d.get("reserve_text", False)), reserve_slots=int(d.get("reserve_slots", 0)))
        tok.obs_codecs = [codec_from_dict(c, tok.text_tokenizer) for c in d["codecs"]["observation"]]
        tok.action_codecs = [codec_from_dict(c, tok.text_tokenizer) for c in d["codecs"]["action"]]
        tok.fitted = bool(d["fitted"])
        return tok

    def save_pretrained(self, directory: str | Path) -> Path:
        return write_tokenizer_file(directory, self.to_dict())

    @classmethod
    def from_pretrained(cls, directory: str | Path, text_tokenizer: Any = None) -> BCTokenizer:
        path, d = read_tokenizer_file(directory)
        return cls.from_dict(d, text_tokenizer=text_tokenizer, source=str(path))

    def assert_compatible(self, observation_space: gym.Space, action_space: gym.Space, where: str) -> None:
        for name, mine, theirs in (("observation", self.observation_space, observation_space),
                                   ("action", self.action_space, action_space)):
            if space_to_dict(mine) != space_to_dict(theirs):
                raise BCLMError(f"{where}: {name} space {theirs} differs from the tokenizer's {name} "
                                f"space {mine}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BCTokenizer) and self.to_dict() == other.to_dict()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return (f"BCTokenizer(obs_len={self.obs_len}, action_len={self.action_len}, "
                f"vocab_size={self.vocab_size}, tasks={self.tasks}, fitted={self.fitted})")


def write_tokenizer_file(directory: str | Path, body: dict) -> Path:
    path = Path(directory) / TOKENIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(body, indent=2, sort_keys=True, allow_nan=False) + "\n")
    return path


def read_tokenizer_file(directory: str | Path) -> tuple[Path, Any]:
    path = Path(directory) / TOKENIZER_FILE
    if not path.is_file():
        raise BCLMError(f"{path} not found: {directory} is not a bclm policy/tokenizer directory")
    try:
        return path, json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise BCLMError(f"{path} is not valid JSON: {exc}") from exc


def check_format(d: Any, source: str, fmt: str = FORMAT, max_version: int = FORMAT_VERSION) -> None:
    if not isinstance(d, dict) or d.get("format") != fmt:
        raise BCLMError(f"{source} is not a bclm tokenizer (expected \"format\": \"{fmt}\")")
    version = d.get("format_version")
    if not isinstance(version, int) or version > max_version:
        raise BCLMError(f"{source} has {fmt} format_version {version!r}; this bclm reads versions up "
                        f"to {max_version}: upgrade bclm")


def _outside_mask(space: gym.Space, arr: np.ndarray) -> np.ndarray:
    """(B, ...) True where an element is outside the space (vectorised, Text aside)."""
    if isinstance(space, gym.spaces.Box):
        x = arr.astype(np.float64)
        with np.errstate(invalid="ignore"):
            return ~((x >= space.low.astype(np.float64)) & (x <= space.high.astype(np.float64)))
    if isinstance(space, gym.spaces.Text):
        return np.array([not space.contains(s) for s in arr], dtype=bool)
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.bool_)):
        if not np.issubdtype(arr.dtype, np.floating):
            return np.ones(arr.shape, dtype=bool)
        integral = np.isfinite(arr) & (arr == np.round(arr))
        if not integral.all():
            return ~integral
    x = arr.astype(np.int64)
    if isinstance(space, gym.spaces.MultiBinary):
        return (x < 0) | (x > 1)
    nvec = np.asarray(space.n if isinstance(space, gym.spaces.Discrete) else space.nvec, dtype=np.int64)
    start = np.asarray(space.start, dtype=np.int64)
    return (x < start) | (x >= start + nvec)


def _check_contained(space: gym.Space, arr: np.ndarray, path: str, where: str) -> None:
    bad = _outside_mask(space, arr)
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        value = arr[index].item() if isinstance(arr[index], np.generic) else arr[index]
        raise BCLMError(f"{where}: {_leaf(path)} value {value!r} (at index {index}) is outside the "
                        f"space {space}")


def _binned(codec: Codec) -> np.ndarray:
    """(num_tokens,) True where a token is a continuous bin (a Box dimension not encoded exactly)."""
    return ~codec.exact if isinstance(codec, BoxCodec) else np.zeros(codec.num_tokens, dtype=bool)


def _leaf_report(codec: Codec, x: np.ndarray) -> dict:
    decoded = codec.decode(codec.encode(x))
    if isinstance(codec, TextCodec):
        exact = float(np.mean([a == b for a, b in zip(x, decoded)])) if len(x) else 1.0
        return {"exact_fraction": exact}
    flat = x.reshape(len(x), -1).astype(np.float64)
    err = np.abs(decoded.reshape(len(x), -1).astype(np.float64) - flat)
    clipped = (flat < codec.low) | (flat > codec.high) if hasattr(codec, "low") else np.zeros_like(flat, dtype=bool)
    return {"max_abs_error": [float(v) for v in err.max(axis=0)] if len(x) else [],
            "mean_abs_error": [float(v) for v in err.mean(axis=0)] if len(x) else [],
            "clip_fraction": [float(v) for v in clipped.mean(axis=0)] if len(x) else []}
