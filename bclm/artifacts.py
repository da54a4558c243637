"""The files of a saved policy: where they come from (a local directory or a Hub repo), whether the weights
are safe to load and whole, and whether the tokenizer belongs to the model.

Weights load only from safetensors: a pickle (`pytorch_model.bin`, `*.pt`) can run code when it is read,
so a policy directory or repo that has only pickles is refused, and Hub downloads never fetch them.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from bclm.errors import BCLMError

# What a policy download fetches: configs, safetensors weights, the recipe and report, the model card and a
# pretrained LM's text tokenizer files. Everything else in a repo (pickles above all) stays on the Hub.
POLICY_PATTERNS = ["*.json", "*.safetensors", "*.yaml", "*.md", "*.jsonl", "*.txt", "*.model", "*.jinja"]
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".ckpt")
CONFIG_DIGEST = "bclm_tokenizer_sha256"


def policy_directory(path_or_repo_id: str | Path, revision: str | None = None) -> Path:
    """A local policy directory, or the snapshot of Hub repo `path_or_repo_id` at `revision`."""
    # Top-level files only: the Hub's `*` also matches across "/", and a repo may hold checkpoints below.
    return local_or_hub(path_or_repo_id, "policy", revision, allow_patterns=POLICY_PATTERNS, ignore_patterns=["*/*"])


def local_or_hub(path_or_repo_id: str | Path, what: str, revision: str | None, **download: Any) -> Path:
    """A local directory, or else the snapshot of the Hub repo of that id at `revision`; a string that can
    only be a path (./x, /x, ~/x, a/b/c) is a missing directory, not a repo id."""
    path = Path(path_or_repo_id)
    if path.is_dir():
        if revision:
            raise BCLMError(f"revision {revision!r} applies to Hub repo ids, but {path} is a local directory")
        return path
    ref = str(path_or_repo_id)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1 or (os.sep != "/" and os.sep in ref):
        raise BCLMError(f"{what} directory {ref} not found")
    return hub_snapshot(ref, what, revision=revision, **download)


def hub_snapshot(repo_id: str, what: str, **download: Any) -> Path:
    """The snapshot of Hub repo `repo_id` (`huggingface_hub.snapshot_download`: downloaded once into the
    Hugging Face cache; offline, the cached copy), or an error that says which of the two failed."""
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError
    try:
        return Path(snapshot_download(repo_id, **download))
    except LocalEntryNotFoundError:
        raise BCLMError(f"{what} {repo_id!r}: no such directory, and the Hub cannot be reached (offline) with no "
                        "cached copy of that repo") from None
    except (HfHubHTTPError, ValueError) as e:
        raise BCLMError(f"{what} {repo_id!r}: no such directory, and the Hub refused the repo id: "
                        f"{' '.join(str(e).split())}") from None


def check_weights(directory: Path) -> None:
    """Refuse a directory without safetensors weights, or whose safetensors files are cut short or corrupt
    (a partial download or copy), before transformers reads them."""
    from safetensors import SafetensorError, safe_open

    files = sorted(directory.glob("*.safetensors"))
    # The LM's own weights: one file, or shards named by an index (a state projector's file is no LM).
    if not (directory / "model.safetensors").is_file() and not any(directory.glob("*.safetensors.index.json")):
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        why = f" (it has {', '.join(pickles)}: bclm never loads pickled weights)" if pickles else ""
        raise BCLMError(f"{directory}: no model.safetensors{why}")
    for index in directory.glob("*.safetensors.index.json"):
        shards = set(json.loads(index.read_text()).get("weight_map", {}).values())
        missing = sorted(name for name in shards if not (directory / name).is_file())
        if missing:
            raise BCLMError(f"{index} names weight files that are missing: {', '.join(missing)}")
    for path in files:
        # The header and the file's size are checked (a partial download or copy), not every byte.
        try:
            with safe_open(str(path), "pt"):
                pass
        except SafetensorError as e:
            raise BCLMError(f"{path} is truncated or its header is damaged ({e}, {path.stat().st_size} bytes): "
                            "download or copy it again") from None


def check_shapes(directory: Path, config: Any) -> None:
    """Refuse weights whose shapes are not what `config` builds, in one line (transformers prints a report of
    every mismatch before it raises)."""
    import torch
    from safetensors import safe_open
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):                 # shapes only: no memory, no initialisation
        expected = {k: tuple(v.shape) for k, v in AutoModelForCausalLM.from_config(config).state_dict().items()}
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            for key in f.keys():                  # noqa: SIM118 (safe_open is not iterable)
                shape, want = tuple(f.get_slice(key).get_shape()), expected.get(key)
                if want is not None and shape != want:
                    raise BCLMError(f"{path}: {key} has shape {list(shape)}, but {directory / 'config.json'} builds "
                                    f"{list(want)}: the config does not belong to these weights")


def tokenizer_digest(path: Path) -> str:
    """SHA-256 of a tokenizer file's JSON content (key order and whitespace do not count)."""
    try:
        content = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise BCLMError(f"{path} is not valid JSON: {e}") from None
    return hashlib.sha256(json.dumps(content, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def check_tokenizer_pair(tokenizer_path: Path, model_config: Any) -> None:
    """The model's config.json records the digest of the tokenizer it was saved with; another tokenizer
    would map observations and actions to other token ids than the model learned, silently."""
    recorded = getattr(model_config, CONFIG_DIGEST, None)
    if recorded is None:          # saved before bclm recorded the pair: the vocabulary check still applies
        return
    actual = tokenizer_digest(tokenizer_path)
    if actual != recorded:
        raise BCLMError(
            f"{tokenizer_path} belongs to another model: {tokenizer_path.parent / 'config.json'} was saved with "
            f"a tokenizer of sha256 {recorded[:12]}…, this file is {actual[:12]}…; use the tokenizer saved with "
            "these weights")
