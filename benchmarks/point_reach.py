"""PointReach-v0: a continuous task that is not one of bclm's builtins, handed to it by import path.

A point mass on a plane must reach a random goal and stop there. Observation: a Dict of three 2-D Boxes
(position, velocity, goal; 6 numbers); action: a 2-D force in [-1, 1]; 100 steps of 0.1 s. An episode
succeeds (info["success"], and it terminates) once the point is within 0.05 of the goal at a speed below
0.05. The expert is a PD law, linear in several observation numbers (force = 4 (goal - position) - 4
velocity, clipped): what an MLP's first layer computes at once, and what a learner that sees one token per
number must first gather.

    PYTHONPATH=. bclm collect --env benchmarks.point_reach:PointReach-v0 \\
        --expert benchmarks.point_reach:expert --episodes 10 --output runs/reach_data
"""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from gymnasium import spaces

DT, STEPS, TOLERANCE = 0.1, 100, 0.05


class PointReach(gym.Env):
    metadata = {"render_modes": []}  # noqa: RUF012 -- gymnasium's convention is a class-level dict

    def __init__(self) -> None:
        box = spaces.Box(-np.inf, np.inf, (2,), np.float32)
        self.observation_space = spaces.Dict({"position": box, "velocity": box, "goal": box})
        self.action_space = spaces.Box(-1.0, 1.0, (2,), np.float32)
        self.position = self.velocity = self.goal = np.zeros(2)
        self.t = 0

    def _obs(self) -> dict[str, np.ndarray]:
        return {"position": self.position.astype(np.float32), "velocity": self.velocity.astype(np.float32),
                "goal": self.goal.astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.position = self.np_random.uniform(-1, 1, 2)
        self.goal = self.np_random.uniform(-1, 1, 2)
        self.velocity, self.t = np.zeros(2), 0
        return self._obs(), {}

    def step(self, action):
        force = np.clip(np.asarray(action, dtype=np.float64), -1.0, 1.0)
        self.velocity = self.velocity + DT * force
        self.position = self.position + DT * self.velocity
        self.t += 1
        distance = float(np.linalg.norm(self.goal - self.position))
        success = distance < TOLERANCE and float(np.linalg.norm(self.velocity)) < TOLERANCE
        return self._obs(), -distance, success, self.t >= STEPS, {"success": success}


def expert(observation) -> np.ndarray:
    """The PD expert, on one observation or a batch (a Dict of arrays with a leading batch dimension)."""
    goal, position, velocity = (np.asarray(observation[k], dtype=np.float64) for k in ("goal", "position", "velocity"))
    return np.clip(4.0 * (goal - position) - 4.0 * velocity, -1.0, 1.0).astype(np.float32)


gym.register("PointReach-v0", entry_point=PointReach, max_episode_steps=STEPS)
