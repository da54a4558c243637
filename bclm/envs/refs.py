"""'module:callable' references: how a user hands bclm an expert, an intervener or a task's symmetry."""

from __future__ import annotations

import importlib
from typing import Any

from bclm.errors import BCLMError


def import_callable(ref: str, what: str) -> Any:
    """The callable `ref` names ('module:attr.path'); errors name `what` it was for and `ref`."""
    module_name, _, attr_path = ref.partition(":")
    if not module_name or not attr_path:
        raise BCLMError(f"{what} {ref!r} is malformed: expected 'module:callable'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise BCLMError(f"{what} {ref!r} could not be imported: {e}") from e
    for part in attr_path.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError:
            raise BCLMError(f"{what} {ref!r} could not be resolved: no attribute {part!r}") from None
    if not callable(obj):
        raise BCLMError(f"{what} {ref!r} is not callable: it is a {type(obj).__name__}")
    return obj
