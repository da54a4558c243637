"""Tokenization of gymnasium observations and actions for behavior cloning with causal LMs."""

from bclm.tokenizers.multitask import (
    build_tokenizers,
    cover_tokenizers,
    fit_tokenizers,
    load_tokenizers,
    save_tokenizers,
    slot_positions,
)
from bclm.tokenizers.spaces import assemble, flatten_leaves, leaf_arrays, space_from_dict, space_to_dict
from bclm.tokenizers.tokenizer import HISTORY_LAYOUTS, TOKENIZER_FILE, BCTokenizer, TokenizerConfig

__all__ = [
    "HISTORY_LAYOUTS",
    "TOKENIZER_FILE",
    "BCTokenizer",
    "TokenizerConfig",
    "assemble",
    "build_tokenizers",
    "cover_tokenizers",
    "fit_tokenizers",
    "flatten_leaves",
    "leaf_arrays",
    "load_tokenizers",
    "save_tokenizers",
    "slot_positions",
    "space_from_dict",
    "space_to_dict",
]
