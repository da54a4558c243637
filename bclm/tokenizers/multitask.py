"""One vocabulary for many tasks whose observation and action spaces differ (Gato-style).

Each task keeps its own `BCTokenizer` (its spaces, bins and bounds), and all of them share one id layout:
the special tokens, the value range (a value token means "bin k" whatever the task), one text range with
one BPE trained on every task's text, and the task tokens in one order. So one model embeds them all, the
task token at the start of every window tells it which task it is in, and each task decodes with its own
action codecs: its actions stay inside its own action space.

Saved as `bclm_tokenizer.json` with format `bclm-tokenizer-set` (a tokenizer per task). A single-task
policy keeps the plain `bclm-tokenizer` file; `load_tokenizers` reads either.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

from bclm.errors import BCLMError
from bclm.tokenizers.codecs import train_bpe
from bclm.tokenizers.tokenizer import (
    FORMAT,
    BCTokenizer,
    TokenizerConfig,
    check_format,
    read_tokenizer_file,
    write_tokenizer_file,
)

SET_FORMAT = "bclm-tokenizer-set"
SET_FORMAT_VERSION = 1
# What every tokenizer of a set must agree on for one model to serve them all.
SHARED_LAYOUT = ("pad_id", "bos_id", "eos_id", "act_id", "value_offset", "number_offset", "number_vocab", "text_offset",
                 "task_offset", "vocab_size")


def build_tokenizers(spaces: Mapping[str, tuple[gym.Space, gym.Space]], config: TokenizerConfig,
                     base_vocab_size: int = 0, text_tokenizer: Any = None) -> dict[str, BCTokenizer]:
    """A tokenizer per task (`spaces[task] = (observation_space, action_space)`) on one shared layout."""
    names = list(spaces)
    if not names:
        raise BCLMError("a multi-task vocabulary needs at least one task")
    tokenizers = {name: BCTokenizer(obs, act, config, tasks=names, base_vocab_size=base_vocab_size,
                                    text_tokenizer=text_tokenizer) for name, (obs, act) in spaces.items()}
    if len(tokenizers) > 1 and any(t.needs_bpe for t in tokenizers.values()):
        for tok in tokenizers.values():
            tok.reserve_text = True
    slots = max(t.own_number_slots for t in tokenizers.values())
    for tok in tokenizers.values():
        tok.reserve_slots = slots if len(tokenizers) > 1 else 0
    check_shared_layout(tokenizers)
    return tokenizers


def fit_tokenizers(tokenizers: Mapping[str, BCTokenizer], data: Mapping[str, tuple[Any, Any]]) -> None:
    """Fit each task's bins on its own (observations, actions); one BPE on the text of every task."""
    texts: list[str] = []
    for name, tok in tokenizers.items():
        if not tok.fitted:
            texts.extend(tok.fit_values(*data[name]))
    unfitted = [t for t in tokenizers.values() if not t.fitted]
    if any(t.needs_bpe for t in unfitted):
        bpe = train_bpe(texts, unfitted[0].config.text_vocab_size)
        for tok in unfitted:
            tok.set_bpe(bpe)
    for tok in unfitted:
        tok.fitted = True


def cover_tokenizers(tokenizers: Mapping[str, BCTokenizer],
                     data: Mapping[str, tuple[Any, Any]]) -> dict[str, BCTokenizer]:
    """Widen fitted (warm-start) tokenizers to cover each task's (observations, actions): DAgger's later rounds
    reach states the first fit never saw. Returns, per task whose tokenizer moved, a copy from before, which
    `bclm.embeddings.reindex_numbers` needs to move the model's rows with the bins."""
    before = {id(t): copy.deepcopy(t) for t in tokenizers.values()}
    moved = {id(tok) for name, tok in tokenizers.items() if tok.cover(*data[name])}
    return {name: before[id(tok)] for name, tok in tokenizers.items() if id(tok) in moved}


def check_shared_layout(tokenizers: Mapping[str, BCTokenizer], where: str = "tokenizers") -> None:
    """Every task's tokenizer must know every task, in one order, with the same id layout."""
    names = list(tokenizers)
    first_name, first = names[0], tokenizers[names[0]]
    for name, tok in tokenizers.items():
        missing = [n for n in names if n not in tok.tasks]
        if missing:
            raise BCLMError(f"{where}: the tokenizer of task {name!r} does not know task(s) {missing}")
        if tok.tasks != first.tasks:
            raise BCLMError(f"{where}: task {name!r} orders its task tokens {tok.tasks}, task {first_name!r} "
                            f"{first.tasks}: one model cannot serve both")
        for attr in SHARED_LAYOUT:
            if getattr(tok, attr) != getattr(first, attr):
                raise BCLMError(f"{where}: task {name!r} has {attr}={getattr(tok, attr)} but task {first_name!r} "
                                f"has {getattr(first, attr)}: their tokenizers do not share one vocabulary")


def slot_positions(tokenizers: Mapping[str, BCTokenizer], part: str) -> np.ndarray:
    """(number_slots, number_width) the bin positions of every slot that some task uses for its `part`
    ("observation" or "action") dimensions, from the first such task. Positions are relative to each
    dimension's data, so tasks agree on them unless one bounds a slot by its space and another by its data:
    they are what ids alone say of a value, where the exact values are not at hand."""
    table = None
    for tok in reversed(list(tokenizers.values())):          # the first task's positions written last
        positions = tok.number_positions(part)
        table = np.zeros_like(positions) if table is None else table
        mine = tok.part_slots(part)
        table[mine] = positions[mine]
    return table


def save_tokenizers(tokenizers: Mapping[str, BCTokenizer], directory: str | Path) -> Path:
    """One tokenizer (shared by all its tasks) as a plain tokenizer file, else a tokenizer set."""
    distinct = {id(t): t for t in tokenizers.values()}
    if len(distinct) == 1:
        return next(iter(distinct.values())).save_pretrained(directory)
    check_shared_layout(tokenizers)
    return write_tokenizer_file(directory, {"format": SET_FORMAT, "format_version": SET_FORMAT_VERSION,
                                            "tokenizers": {name: tok.to_dict() for name, tok in tokenizers.items()}})


def load_tokenizers(directory: str | Path, text_tokenizer: Any = None) -> dict[str, BCTokenizer]:
    """Task name -> tokenizer, from a plain tokenizer file (all its tasks share it) or a tokenizer set."""
    path, d = read_tokenizer_file(directory)
    if isinstance(d, dict) and d.get("format") == FORMAT:
        tok = BCTokenizer.from_dict(d, text_tokenizer=text_tokenizer, source=str(path))
        return dict.fromkeys(tok.tasks, tok)
    check_format(d, str(path), SET_FORMAT, SET_FORMAT_VERSION)
    body = d.get("tokenizers")
    if not isinstance(body, dict) or not body:
        raise BCLMError(f"{path}: \"tokenizers\" must map each task name to its tokenizer, got {type(body).__name__}")
    tokenizers = {name: BCTokenizer.from_dict(t, text_tokenizer=text_tokenizer, source=f"{path} (task {name!r})")
                  for name, t in body.items()}
    check_shared_layout(tokenizers, where=str(path))
    return tokenizers
