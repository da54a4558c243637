"""Ranks for code that runs alike in one process or in several (collection and DAgger rounds), read from
accelerate's `PartialState`.

Rollouts are split by env: each rank steps every world-th env of the single-process layout, with that
env's seed and episode quota, and the shares are gathered back in single-process order. Only rank 0
writes; the others wait for it.
"""

from __future__ import annotations

import os
from typing import Any

from accelerate import PartialState
from accelerate.utils import gather_object


def launched_world_size() -> int:
    """Processes the launcher (accelerate launch / torchrun) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _state() -> PartialState | None:
    """accelerate's state once this process has joined its launch (`init_processes` or an Accelerator); None
    before, so that asking for a rank never joins a process group as a side effect."""
    return PartialState() if PartialState._shared_state else None


def world_size() -> int:
    state = _state()
    return state.num_processes if state is not None else 1


def rank() -> int:
    """This process's rank in the launch; 0 outside one (also before it is joined)."""
    state = _state()
    return state.process_index if state is not None else 0


def is_main() -> bool:
    return rank() == 0


def env_share(num_envs: int) -> list[int] | None:
    """The envs (of `num_envs`) this rank steps; None in one process (all of them)."""
    return None if world_size() == 1 else list(range(rank(), num_envs, world_size()))


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, on every rank (rank order); `[obj]` in one process."""
    return [obj] if world_size() == 1 else gather_object([obj])


def barrier() -> None:
    state = _state()
    if state is not None:
        state.wait_for_everyone()
