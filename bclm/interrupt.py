"""SIGTERM (what clusters send before preemption) ends a command like Ctrl-C, except in a training loop,
which finishes its step and writes a checkpoint first (`deferred`)."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager


class _State:
    defer = False          # a training loop is running and polls `requested`
    requested = False


_state = _State()


def _on_term(signum, frame) -> None:
    if _state.defer:
        _state.requested = True
        return
    raise KeyboardInterrupt


def install() -> None:
    signal.signal(signal.SIGTERM, _on_term)
    # A process started in the background by a shell inherits SIGINT ignored; bclm's commands stop on it.
    signal.signal(signal.SIGINT, signal.default_int_handler)


@contextmanager
def deferred() -> Iterator[_State]:
    """Within the block a SIGTERM only sets `.requested`; the caller stops at a safe point."""
    _state.defer, _state.requested = True, False
    try:
        yield _state
    finally:
        _state.defer = False
