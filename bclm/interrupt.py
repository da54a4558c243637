"""SIGTERM (what clusters send before preemption) ends a command like Ctrl-C, except in a training loop,
which finishes its step and writes a checkpoint first (`deferred`), and in a pool worker between tasks,
which only stops taking more (`install_worker`)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class _State:
    defer = False          # a training loop is running and polls `requested`
    requested = False
    idle = False           # a pool worker between tasks
    stopped = False        # a SIGTERM has arrived


_state = _State()


def _on_term(signum, frame) -> None:
    _state.stopped = True
    if _state.defer:
        _state.requested = True
        return
    if not _state.idle:
        raise KeyboardInterrupt


def install() -> None:
    signal.signal(signal.SIGTERM, _on_term)
    # A process started in the background by a shell inherits SIGINT ignored; bclm's commands stop on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)


def install_worker() -> None:
    """For a process-pool worker. A KeyboardInterrupt between tasks would kill it inside the pool's own
    protocol (a traceback, a broken pool), so there a SIGTERM only marks it stopped and `task` refuses the
    next task. Ctrl-C reaches the workers too (the terminal signals the whole group) and is taken the same
    way: the command's own process reports it."""
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGINT, _on_term)
    _state.idle = True


@contextmanager
def task() -> Iterator[None]:
    before, _state.idle = _state.idle, False
    try:
        if _state.stopped:
            raise KeyboardInterrupt
        yield
    finally:
        _state.idle = before


@contextmanager
def deferred() -> Iterator[_State]:
    """Within the block a SIGTERM only sets `.requested`; the caller stops at a safe point."""
    _state.defer, _state.requested = True, False
    try:
        yield _state
    finally:
        _state.defer = False
