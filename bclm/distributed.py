"""Ranks for code that runs alike in one process or in several (collection and DAgger rounds).

Rollouts are split by env: each rank steps every world-th env of the single-process layout, with that
env's seed and episode quota, and the shares are gathered back in single-process order. Only rank 0
writes; the others wait for it.
"""

from __future__ import annotations

import os
from typing import Any

import torch


def launched_world_size() -> int:
    """Processes the launcher (accelerate launch / torchrun) started; 1 without one."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _initialized() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def world_size() -> int:
    return torch.distributed.get_world_size() if _initialized() else 1


def rank() -> int:
    """This process's rank in the process group; 0 outside one (also before it is joined)."""
    return torch.distributed.get_rank() if _initialized() else 0


def is_main() -> bool:
    return rank() == 0


def env_share(num_envs: int) -> list[int] | None:
    """The envs (of `num_envs`) this rank steps; None in one process (all of them)."""
    return None if world_size() == 1 else list(range(rank(), num_envs, world_size()))


def all_gather(obj: Any) -> list[Any]:
    """Every rank's `obj`, on every rank (rank order); `[obj]` in one process."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(out, obj)
    return out


def barrier() -> None:
    if _initialized():
        torch.distributed.barrier()
