"""Gymnasium spaces as JSON, and batches of space values as flat per-leaf arrays.

A tokenizer is saved next to the model weights, so the spaces it was built for must survive a JSON
round trip exactly (including infinite Box bounds, which plain JSON cannot hold).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np

from bclm.errors import BCLMError

LEAF_TYPES = (gym.spaces.Box, gym.spaces.Discrete, gym.spaces.MultiDiscrete, gym.spaces.MultiBinary,
              gym.spaces.Text)


# --- exact JSON for float arrays ---------------------------------------------------------------

def float_to_json(x: float) -> float | str:
    """Python floats print repr-exact in JSON; non-finite values become strings because JSON has none."""
    x = float(x)
    if math.isfinite(x):
        return x
    if math.isnan(x):
        return "nan"
    return "inf" if x > 0 else "-inf"


def floats_to_json(arr: np.ndarray) -> list:
    return [float_to_json(v) for v in np.asarray(arr, dtype=np.float64).ravel().tolist()]


def floats_from_json(values: Sequence[float | str]) -> np.ndarray:
    return np.array([float(v) for v in values], dtype=np.float64)


# --- spaces <-> dict ----------------------------------------------------------------------------

def _box_to_dict(space: gym.spaces.Box) -> dict:
    d: dict[str, Any] = {"type": "Box", "shape": list(space.shape), "dtype": space.dtype.name}
    if np.issubdtype(space.dtype, np.integer):
        d["low"] = space.low.ravel().tolist()
        d["high"] = space.high.ravel().tolist()
    else:
        d["low"] = floats_to_json(space.low)
        d["high"] = floats_to_json(space.high)
    return d


def _box_from_dict(d: dict) -> gym.spaces.Box:
    shape = tuple(d["shape"])
    dtype = np.dtype(d["dtype"])
    if np.issubdtype(dtype, np.integer):
        low = np.array(d["low"], dtype=dtype).reshape(shape)
        high = np.array(d["high"], dtype=dtype).reshape(shape)
    else:
        low = floats_from_json(d["low"]).astype(dtype).reshape(shape)
        high = floats_from_json(d["high"]).astype(dtype).reshape(shape)
    return gym.spaces.Box(low=low, high=high, shape=shape, dtype=dtype)


def space_to_dict(space: gym.Space) -> dict:
    """JSON-safe description of `space`; `space_from_dict` restores an equal space."""
    if isinstance(space, gym.spaces.Box):
        return _box_to_dict(space)
    if isinstance(space, gym.spaces.Discrete):
        return {"type": "Discrete", "n": int(space.n), "start": int(space.start), "dtype": space.dtype.name}
    if isinstance(space, gym.spaces.MultiDiscrete):
        return {"type": "MultiDiscrete", "nvec": space.nvec.tolist(), "start": space.start.tolist(),
                "dtype": space.dtype.name}
    if isinstance(space, gym.spaces.MultiBinary):
        n = space.n
        return {"type": "MultiBinary", "n": int(n) if np.ndim(n) == 0 else [int(v) for v in n]}
    if isinstance(space, gym.spaces.Dict):
        # A list of pairs, not an object: saving with sort_keys must not reorder the keys.
        return {"type": "Dict", "spaces": [[k, space_to_dict(s)] for k, s in space.spaces.items()]}
    if isinstance(space, gym.spaces.Tuple):
        return {"type": "Tuple", "spaces": [space_to_dict(s) for s in space.spaces]}
    if isinstance(space, gym.spaces.Text):
        return {"type": "Text", "max_length": int(space.max_length), "min_length": int(space.min_length),
                "charset": space.characters}
    raise BCLMError(f"unsupported space type {type(space).__name__}: bclm supports Box, Discrete, "
                    "MultiDiscrete, MultiBinary, Text, Dict and Tuple")


def space_from_dict(d: dict) -> gym.Space:
    kind = d.get("type") if isinstance(d, dict) else None
    if kind == "Box":
        return _box_from_dict(d)
    if kind == "Discrete":
        return gym.spaces.Discrete(d["n"], start=d["start"], dtype=np.dtype(d.get("dtype", "int64")))
    if kind == "MultiDiscrete":
        return gym.spaces.MultiDiscrete(np.array(d["nvec"]), start=np.array(d["start"]),
                                        dtype=np.dtype(d.get("dtype", "int64")))
    if kind == "MultiBinary":
        n = d["n"]
        return gym.spaces.MultiBinary(n if isinstance(n, int) else list(n))
    if kind == "Dict":
        return gym.spaces.Dict({k: space_from_dict(s) for k, s in d["spaces"]})
    if kind == "Tuple":
        return gym.spaces.Tuple([space_from_dict(s) for s in d["spaces"]])
    if kind == "Text":
        return gym.spaces.Text(d["max_length"], min_length=d["min_length"], charset=d["charset"])
    raise BCLMError(f"unsupported space description (type {kind!r}): expected one of Box, Discrete, "
                    "MultiDiscrete, MultiBinary, Text, Dict, Tuple")


# --- leaves -------------------------------------------------------------------------------------

def _join(prefix: str, key: str) -> str:
    return f"{prefix}.{key}" if prefix else key


def _children(space: gym.Space) -> list[tuple[Any, gym.Space]]:
    if isinstance(space, gym.spaces.Dict):
        return list(space.spaces.items())
    return list(enumerate(space.spaces))


def flatten_leaves(space: gym.Space, prefix: str = "") -> list[tuple[str, gym.Space]]:
    """Leaf spaces in a stable order, named by dotted paths ("" for a non-composite root)."""
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        out: list[tuple[str, gym.Space]] = []
        for key, sub in _children(space):
            out.extend(flatten_leaves(sub, _join(prefix, str(key))))
        return out
    if isinstance(space, LEAF_TYPES):
        return [(prefix, space)]
    raise BCLMError(f"unsupported space type {type(space).__name__} at leaf '{prefix}': bclm supports "
                    "Box, Discrete, MultiDiscrete, MultiBinary, Text, Dict and Tuple")


def _text_array(batch: Any) -> np.ndarray:
    items = [batch] if isinstance(batch, str) else list(batch)
    out = np.empty(len(items), dtype=object)
    out[:] = [str(s) for s in items]
    return out


def _child_value(batch: Any, key: Any, prefix: str) -> Any:
    try:
        return batch[key]
    except (KeyError, IndexError, TypeError) as exc:
        raise BCLMError(f"batch has no entry '{_join(prefix, str(key))}': expected a value structured "
                        "like the space (dict for Dict, tuple for Tuple)") from exc


def leaf_arrays(space: gym.Space, batch: Any, prefix: str = "") -> dict[str, np.ndarray]:
    """A vector-env style batch (leading dim B on every leaf) -> {leaf path: array (B, *shape)}."""
    if isinstance(space, (gym.spaces.Dict, gym.spaces.Tuple)):
        out: dict[str, np.ndarray] = {}
        for key, sub in _children(space):
            out.update(leaf_arrays(sub, _child_value(batch, key, prefix), _join(prefix, str(key))))
        return out
    if isinstance(space, gym.spaces.Text):
        return {prefix: _text_array(batch)}
    return {prefix: np.asarray(batch)}


def assemble(space: gym.Space, leaves: dict[str, np.ndarray], prefix: str = "") -> Any:
    """Inverse of `leaf_arrays`: per-leaf arrays -> dict / tuple / array batch."""
    if isinstance(space, gym.spaces.Dict):
        return {k: assemble(s, leaves, _join(prefix, k)) for k, s in space.spaces.items()}
    if isinstance(space, gym.spaces.Tuple):
        return tuple(assemble(s, leaves, _join(prefix, str(i))) for i, s in enumerate(space.spaces))
    return leaves[prefix]
