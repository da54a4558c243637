"""Files that are either absent or whole: written to a temporary name beside them, then renamed into place.

A kill between creating a file and writing its bytes would otherwise leave an empty or half-written
marker, report or metadata file that a resumed run reads as complete.
"""

from __future__ import annotations

import errno
import json
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from bclm.errors import BCLMError

# Write failures a user can act on, named for them (the bare OSError comes from deep inside a writer).
NAMED_ERRNO = {errno.ENOSPC: "the disk is full", errno.EROFS: "the file system is read-only",
          errno.EACCES: "permission denied", errno.EDQUOT: "the disk quota is exceeded"}


def write_text(path: str | Path, text: str) -> Path:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:           # named for the file being written, not its temporary (the CLI reports it)
        raise OSError(e.errno, e.strerror, str(path)) from e
    finally:
        tmp.unlink(missing_ok=True)
    return path


@contextmanager
def disk_errors_named(path: str | Path) -> Iterator[None]:
    """A write into `path` that fails on a full or read-only file system raises an OSError naming both.

    safetensors (a Rust I/O error), torch.save ("unexpected pos") and Arrow report a full disk in their own
    words, or without the file; the file system itself says what went wrong.
    """
    try:
        yield
    except Exception as e:
        if isinstance(e, OSError) and e.errno in NAMED_ERRNO and e.filename:
            raise
        code = _file_system_fault(Path(path))
        if code is None:
            raise
        raise OSError(code, os.strerror(code), str(path)) from e


def _file_system_fault(path: Path) -> int | None:
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        fs = os.statvfs(path)
    except OSError:
        return None
    if fs.f_flag & os.ST_RDONLY:
        return errno.EROFS
    # A failed write leaves less than a block or two; 1 MiB leaves room for the file system's own rounding.
    return errno.ENOSPC if fs.f_bavail * fs.f_frsize < 1 << 20 else None


def check_writable(path: str | Path, what: str) -> None:
    """Before long work: `path` can be written as a file (not a directory, in a writable folder)."""
    path = Path(path)
    if path.is_dir():
        raise BCLMError(f"{what} {path} is a directory: expected a file path")
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        why = f": {NAMED_ERRNO[errno.EROFS]}" if _file_system_fault(folder) == errno.EROFS else ""
        raise BCLMError(f"{what} {path}: {folder} is not a writable directory{why}")


def write_json(path: str | Path, body: Any, **dump: Any) -> Path:
    return write_text(path, json.dumps(body, **dump))


def read_json(path: str | Path) -> Any | None:
    """The file's JSON, or None where it is missing or cannot be parsed (counted as absent)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
