"""Files that are either absent or whole: written to a temporary name beside them, then renamed into place.

A kill between creating a file and writing its bytes would otherwise leave an empty or half-written
marker, report or metadata file that a resumed run reads as complete.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path: str | Path, body: Any, **dump: Any) -> Path:
    return write_text(path, json.dumps(body, **dump))


def read_json(path: str | Path) -> Any | None:
    """The file's JSON, or None where it is missing or cannot be parsed (counted as absent)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
