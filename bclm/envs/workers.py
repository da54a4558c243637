"""A vector env whose envs are spread over a few worker processes, several envs in each.

gymnasium's AsyncVectorEnv runs one process per env: with 20 Meta-World envs on a 2-core machine, 20
processes take turns on two cores and every step pays 20 round trips. Here each worker steps its share of
the envs in a SyncVectorEnv (same SAME_STEP autoreset, same info layout), so a step costs one round trip per
worker, and the results equal a SyncVectorEnv's over the same envs and seeds.
"""

from __future__ import annotations

import contextlib
import multiprocessing
from collections.abc import Callable, Sequence
from typing import Any

import gymnasium
import numpy as np
from gymnasium.vector.utils import batch_space, concatenate, create_empty_array, iterate


def _worker(pipe: Any, env_fns: list[Callable[[], gymnasium.Env]], autoreset_mode: Any) -> None:
    envs = gymnasium.vector.SyncVectorEnv(env_fns, autoreset_mode=autoreset_mode)
    try:
        while True:
            command, data = pipe.recv()
            if command == "close":
                break
            try:
                pipe.send((True, envs.reset(**data) if command == "reset" else envs.step(data)))
            except Exception as e:     # the main process re-raises it, with its type
                pipe.send((False, e))
    finally:
        envs.close()
        pipe.close()


class WorkerVectorEnv(gymnasium.vector.VectorEnv):
    """`len(env_fns)` envs stepped in `workers` processes (contiguous shares, the first ones one env larger)."""

    def __init__(self, env_fns: Sequence[Callable[[], gymnasium.Env]], workers: int,
                 autoreset_mode: Any = gymnasium.vector.AutoresetMode.SAME_STEP):
        self.num_envs = len(env_fns)
        probe = env_fns[0]()
        self.single_observation_space, self.single_action_space = probe.observation_space, probe.action_space
        self.metadata = {**probe.metadata, "autoreset_mode": autoreset_mode}
        self.render_mode = probe.render_mode
        probe.close()
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.shares = [s.tolist() for s in np.array_split(np.arange(self.num_envs), min(workers, self.num_envs))]
        ctx = multiprocessing.get_context()
        self.pipes, self.processes = [], []
        for share in self.shares:
            parent, child = ctx.Pipe()
            process = ctx.Process(target=_worker, args=(child, [env_fns[i] for i in share], autoreset_mode),
                                  daemon=True)
            process.start()
            child.close()
            self.pipes.append(parent)
            self.processes.append(process)

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        seeds = seed if isinstance(seed, list) else [None if seed is None else seed + i for i in range(self.num_envs)]
        for pipe, share in zip(self.pipes, self.shares):
            pipe.send(("reset", {"seed": [seeds[i] for i in share], "options": options}))
        parts = self._receive()
        return self._observations([p[0] for p in parts]), merge_infos([p[1] for p in parts], self._sizes())

    def step(self, actions: Any):
        items = list(iterate(self.action_space, actions))
        for pipe, share in zip(self.pipes, self.shares):
            pipe.send(("step", concatenate(self.single_action_space, [items[i] for i in share],
                                           create_empty_array(self.single_action_space, len(share)))))
        parts = self._receive()
        obs = self._observations([p[0] for p in parts])
        reward, terminated, truncated = (np.concatenate([p[k] for p in parts]) for k in (1, 2, 3))
        return obs, reward, terminated, truncated, merge_infos([p[4] for p in parts], self._sizes())

    def close_extras(self, **kwargs: Any) -> None:
        for pipe in self.pipes:
            with contextlib.suppress(BrokenPipeError, OSError):      # a worker that already died
                pipe.send(("close", None))
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()

    def _receive(self) -> list[Any]:
        results = [pipe.recv() for pipe in self.pipes]
        for ok, value in results:
            if not ok:
                raise value
        return [value for _, value in results]

    def _sizes(self) -> list[int]:
        return [len(share) for share in self.shares]

    def _observations(self, parts: list[Any]) -> Any:
        items = [o for part, n in zip(parts, self._sizes())
                 for o in iterate(batch_space(self.single_observation_space, n), part)]
        return concatenate(self.single_observation_space, items,
                           create_empty_array(self.single_observation_space, self.num_envs))


def merge_infos(parts: list[dict[str, Any]], sizes: list[int]) -> dict[str, Any]:
    """Vector-env info dicts of consecutive env shares as one: each key's arrays end to end, with zeros
    (masks False, None in object arrays) for a share whose dict lacks the key; nested dicts alike."""
    out: dict[str, Any] = {}
    for key in dict.fromkeys(k for part in parts for k in part):
        values = [part.get(key) for part in parts]
        if any(isinstance(v, dict) for v in values):
            out[key] = merge_infos([v if isinstance(v, dict) else {} for v in values], sizes)
            continue
        template = np.asarray(next(v for v in values if v is not None))
        out[key] = np.concatenate([np.asarray(v) if v is not None else
                                   np.full((n, *template.shape[1:]), None if template.dtype == object else 0,
                                           dtype=template.dtype)
                                   for v, n in zip(values, sizes)])
    return out
