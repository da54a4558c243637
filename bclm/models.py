"""The causal LM behind a policy: any `AutoModelForCausalLM`, built from a config or a local checkpoint."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel

from bclm.config import option
from bclm.errors import BCLMError

# Named sizes for the default Llama; parameters exclude embeddings (which depend on the vocabulary).
SIZES: dict[str, dict[str, int]] = {
    "tiny": {"hidden_size": 64, "intermediate_size": 256, "num_hidden_layers": 2, "num_attention_heads": 4},
    "small": {"hidden_size": 128, "intermediate_size": 512, "num_hidden_layers": 4, "num_attention_heads": 4},
    "base": {"hidden_size": 256, "intermediate_size": 1024, "num_hidden_layers": 6, "num_attention_heads": 8},
    "medium": {"hidden_size": 512, "intermediate_size": 2048, "num_hidden_layers": 8, "num_attention_heads": 8},
    "large": {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12},
}


@dataclass
class ModelConfig:
    arch: str = option("llama", "transformers model_type used when building from a config (llama, gpt2, qwen2, ...).")
    size: str = option("small", f"Named size: {', '.join(SIZES)}.")
    overrides: dict = option({}, "Extra config fields for the architecture (e.g. {num_hidden_layers: 3}).")
    pretrained: str = option("", "Local path of a pretrained causal LM; its vocabulary is extended by bclm's tokens.")
    attn_implementation: str = option("sdpa", "Attention kernel: sdpa, eager or flash_attention_2.")
    dropout: float = option(0.0, "Attention dropout (architectures that have it).")
    number_features: int = option(
        2, "Number tokens (continuous bins) are embedded as a learned map of this many basis functions of their "
           "bin. With a slot per dimension (tokenizer format 3): a constant, the bin's value relative to the data "
           "(so 2 is linear in the value, as an MLP's input and JAT's embedding are), then cosines of the bin; with "
           "one shared slot (format 2): cosines of the bin. 0 = free rows (the old free-symbol learner).")
    state_token: bool = option(
        True, "The state token: each step's ACT token adds a learned linear map of the step's continuous "
              "observation numbers (their values relative to the data), so the action is read where every "
              "number is already weighed, as by an MLP's first layer or JAT's observation embedding. Saved as "
              "state_projector.safetensors beside the plain causal LM. No effect without continuous observations.")
    symbol_factors: bool = option(
        False, "Tokens that pack several integer elements (tokenizer.group > 1, e.g. a BabyAI cell's object, "
               "colour and state) are embedded as the sum of a row per element value plus a free row, so that "
               "'red' is one vector in every red object; materialised into the plain table at save time.")
    word_factors: dict = option(
        {}, "Text words that share a packed element's row, as {word: [element, value]} (BabyAI: {red: [1, 0], "
            "ball: [0, 6]}): the mission's 'red' then adds the same row as every red cell. Needs symbol_factors.")

    def __post_init__(self) -> None:
        if self.number_features < 0:
            raise BCLMError(f"model.number_features must be >= 0, got {self.number_features}")
        for word, pair in self.word_factors.items():
            if not (isinstance(pair, list | tuple) and len(pair) == 2 and all(type(v) is int for v in pair)):
                raise BCLMError(f"model.word_factors.{word}: expected [element, value] (two integers), got {pair!r}")
        if self.word_factors and not self.symbol_factors:
            raise BCLMError("model.word_factors needs model.symbol_factors true (the rows the words share)")
        if not self.pretrained and self.size not in SIZES:
            raise BCLMError(f"model.size {self.size!r} is not one of {', '.join(SIZES)}")


def build_model(config: ModelConfig, vocab_size: int, max_positions: int, bos_id: int, eos_id: int,
                pad_id: int) -> PreTrainedModel:
    """A fresh model from `config`, or the pretrained one with its embeddings resized to `vocab_size`."""
    if config.pretrained:
        path = Path(config.pretrained)
        model = AutoModelForCausalLM.from_pretrained(
            str(path), attn_implementation=config.attn_implementation, use_safetensors=True,
            trust_remote_code=False)
        model.resize_token_embeddings(vocab_size)
        return model
    fields: dict[str, Any] = dict(SIZES[config.size])
    fields.update(config.overrides)
    fields.setdefault("num_key_value_heads", fields.get("num_attention_heads"))
    try:
        hf_config = AutoConfig.for_model(
            config.arch, vocab_size=vocab_size, max_position_embeddings=max_positions, bos_token_id=bos_id,
            eos_token_id=eos_id, pad_token_id=pad_id, tie_word_embeddings=True,
            attention_dropout=config.dropout, **fields)
    except ValueError as e:
        raise BCLMError(f"model.arch {config.arch!r}: {e}") from None
    hf_config._attn_implementation = config.attn_implementation
    return AutoModelForCausalLM.from_config(hf_config, attn_implementation=config.attn_implementation)


def pretrained_vocabulary(config: ModelConfig) -> tuple[int, Any]:
    """(vocabulary size, its text tokenizer or None) of `config.pretrained`; (0, None) without one.

    bclm's own ids go after the pretrained vocabulary, so the model keeps its text tokens and Text
    leaves are tokenized with the model's own tokenizer.
    """
    if not config.pretrained:
        return 0, None
    path = Path(config.pretrained)
    if not (path / "config.json").is_file():
        raise BCLMError(f"model.pretrained: {path / 'config.json'} not found (a local checkpoint is needed)")
    vocab = int(AutoConfig.from_pretrained(str(path), trust_remote_code=False).vocab_size)
    has_tokenizer = any((path / f).is_file() for f in ("tokenizer.json", "tokenizer_config.json"))
    return vocab, AutoTokenizer.from_pretrained(str(path), trust_remote_code=False) if has_tokenizer else None

