"""One writer per directory: a run, dataset or sweep directory is written by one bclm process at a time.

The lock is `filelock`'s, an advisory `flock` on a hidden file beside the directory (`.NAME.lock`): beside
it, not in it, so a dataset directory stays empty until its first file and nothing extra is pushed or listed.
The kernel drops a `flock` when its holder dies, so a run killed with -9 never blocks the next one. The
holder's PID and command go into `.NAME.lock.json` (a second file: filelock may truncate the lock file when
another process opens it), so that a second writer is told whom it waits for.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from bclm import atomic
from bclm.errors import BCLMError

_HELD: set[Path] = set()       # directories this process holds: nested calls (a sweep's cells) pass through


def lock_path(directory: str | Path) -> Path:
    directory = Path(directory).absolute()
    return directory.parent / f".{directory.name}.lock"


def _launched_rank() -> int:
    # Read from the launcher's environment: a lock is taken before accelerate joins the process group.
    return int(os.environ.get("RANK", "0"))


@contextmanager
def exclusive(directory: str | Path, flag: str = "--output-dir") -> Iterator[None]:
    """Hold `directory` (given as `flag`) for the block; a second holder gets a one-line BCLMError naming the
    first's PID. Only rank 0 of a launch takes it: the other ranks write under rank 0's hold."""
    if Path(directory).exists() and not Path(directory).is_dir():
        raise BCLMError(f"{flag} {directory} is a file, not a directory: choose another {flag}")
    directory = Path(directory).absolute()
    if directory in _HELD or _launched_rank() != 0:
        yield
        return
    path = lock_path(directory)
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(path, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise BCLMError(f"{directory} is being written by another bclm process ({_holder(path)}): wait for it "
                        "to finish, stop it, or choose another directory") from None
    atomic.write_json(path.with_name(path.name + ".json"), {
        "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
        "since": time.strftime("%Y-%m-%d %H:%M:%S")})
    _HELD.add(directory)
    try:
        yield
    finally:
        _HELD.discard(directory)
        lock.release()


def _holder(path: Path) -> str:
    owner = atomic.read_json(path.with_name(path.name + ".json"))
    if not isinstance(owner, dict):
        return "its PID not yet written"
    return f"PID {owner.get('pid')} on {owner.get('host')}, since {owner.get('since')}: {owner.get('command')}"
