"""A tiny user-defined task for tests: importing this module registers ``CustomTarget-v0``.

Reached as ``get_task("tests.custom_env:CustomTarget-v0")`` and ``load_expert("tests.custom_env:expert")``,
it shows the path a user's own env takes through bclm. It is kept trivially learnable (the expert is a
function of the current observation only) so CLI tests can train a tiny model on it in about a minute.
"""

from __future__ import annotations

from typing import Any

import gymnasium
import numpy as np

ENV_ID = "CustomTarget-v0"
GRID = 10  # positions are k / GRID for integer k in [-GRID, GRID]
EPISODE_STEPS = 50
# Reaching the farthest target takes 2 * GRID = 20 moves, so the expert always collects at least
# 50 - 20 + 1 = 31 rewards; 30 leaves a one-step slack for imitators.
REWARD_THRESHOLD = 30.0


class CustomTargetEnv(gymnasium.Env):
    """1-D target following. obs = [position, target - position]; actions 0 left, 1 stay, 2 right.

    The offset is observed directly so the expert's choice depends on one observation token: a token
    model learns that lookup from a few demos, where comparing two tokens would need many more.

    Both sit on a grid of step 1/GRID so the expert can land exactly on the target; reward is 1 for
    each step that ends on the target. The target does not move; episodes are truncated at 50 steps.
    """

    metadata = {"render_modes": []}  # noqa: RUF012 -- gymnasium's convention is a class-level dict

    def __init__(self) -> None:
        self.observation_space = gymnasium.spaces.Box(np.array([-1.0, -2.0], np.float32),
                                                      np.array([1.0, 2.0], np.float32), dtype=np.float32)
        self.action_space = gymnasium.spaces.Discrete(3)
        self._pos = 0
        self._target = 0

    def _obs(self) -> np.ndarray:
        return np.array([self._pos / GRID, (self._target - self._pos) / GRID], dtype=np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._pos = int(self.np_random.integers(-GRID, GRID + 1))
        self._target = int(self.np_random.integers(-GRID, GRID + 1))
        return self._obs(), {}

    def step(self, action: Any) -> tuple[np.ndarray, float, bool, bool, dict]:
        self._pos = int(np.clip(self._pos + int(action) - 1, -GRID, GRID))
        on_target = self._pos == self._target
        return self._obs(), float(on_target), False, False, {"success": on_target}


def expert(obs: Any) -> int:
    """Step toward the target, stay once on it."""
    return 1 + int(np.sign(round(float(obs[1]) * GRID)))


NOT_CALLABLE = 42  # for tests of load_expert on an attribute that is not a function

if ENV_ID not in gymnasium.registry:
    gymnasium.register(
        id=ENV_ID,
        entry_point=CustomTargetEnv,
        max_episode_steps=EPISODE_STEPS,
        reward_threshold=REWARD_THRESHOLD,
    )
