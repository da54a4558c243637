"""Tokenization of gymnasium observations and actions for behavior cloning with causal LMs."""

from bclm.tokenizers.spaces import assemble, flatten_leaves, leaf_arrays, space_from_dict, space_to_dict
from bclm.tokenizers.tokenizer import TOKENIZER_FILE, BCTokenizer, TokenizerConfig

__all__ = [
    "TOKENIZER_FILE",
    "BCTokenizer",
    "TokenizerConfig",
    "assemble",
    "flatten_leaves",
    "leaf_arrays",
    "space_from_dict",
    "space_to_dict",
]
