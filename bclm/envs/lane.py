"""LaneKeep-v0: keep a car on a curvy road, the lecture's example of errors that compound.

A car drives at 4 m/s along a road of 0.4 m arcs whose curvatures follow the sum of two sines (random
amplitudes, wavelengths and phases per episode). It observes a Dict of five numbers: its lateral offset from the
centreline, its heading relative to the road's, and the road's curvature here, 1 m and 2 m ahead; it commands
a steering curvature in [-1, 1] (times `MAX_CURVATURE`). An episode fails once the car is more than half a
lane (0.5 m) off the centreline (it terminates) and succeeds (info["success"]) if it is still on the road
after `STEPS` steps of 0.1 s.

The expert steers along the road's curvature plus a PD correction of offset and heading. It starts every
episode on the centreline and, the road being arcs it steers exactly, never leaves it: in its demonstrations
offset and heading are exactly 0. A cloned policy's small steering errors carry it where the expert was never
seen acting, and each error there makes the next one larger (the O(εH²) of behavior cloning). DAgger's rounds
label the states the learner reaches, and DART's perturbed demonstrations show the expert coming back.
`LaneKeep-Gusty-v0` adds sideways gusts (2 cm per step): they push the expert off its path as well, its
demonstrations then show the recoveries, and behavior cloning is enough. Written here because no gymnasium
task is a lane keeper with a scripted expert.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

DT, SPEED, STEPS, SUBSTEPS = 0.1, 4.0, 300, 4
SEGMENT = SPEED * DT         # m: the road is a chain of arcs this long, one per step driven on the centreline
MAX_CURVATURE = 1.0          # 1/m: the tightest turn full steering makes (a 1 m radius)
RESOLUTION = 4096            # an arc's curvature is a multiple of MAX_CURVATURE / RESOLUTION
HALF_LANE = 0.5              # m: further off the centreline is off the road
GUST = 0.02                  # m: the sideways push per step (standard deviation) of LaneKeep-Gusty-v0
GAIN_OFFSET, GAIN_HEADING = 1.0, 2.0        # the expert's feedback: 1/m² of offset, 1/m of heading
AHEAD = (0.0, 1.0, 2.0)      # m: where the observation reads the road's curvature


class LaneKeep(gym.Env):
    metadata = {"render_modes": []}  # noqa: RUF012 -- gymnasium's convention is a class-level dict

    def __init__(self, gust: float = 0.0, steps: int = STEPS) -> None:
        one = spaces.Box(-np.inf, np.inf, (1,), np.float32)
        self.observation_space = spaces.Dict({"offset": one, "heading": one,
                                              "curvature": spaces.Box(-np.inf, np.inf, (len(AHEAD),), np.float32)})
        self.action_space = spaces.Box(-1.0, 1.0, (1,), np.float32)
        self.gust, self.steps = float(gust), int(steps)
        self.road = np.zeros((2, 3))           # rows: (amplitude, wavenumber, phase) of each sine
        self.s = self.offset = self.heading = 0.0
        self.t = 0

    def curvature(self, s: float | np.ndarray) -> np.ndarray:
        """The curvature of the arc at arc length `s`: the two sines read at the arc's start, on a grid that
        float32 and the steering command hold exactly, so that the expert follows the road exactly."""
        start = SEGMENT * np.floor(np.atleast_1d(s) / SEGMENT + 1e-9)
        amp, k, phase = self.road.T
        smooth = np.sum(amp[:, None] * np.sin(k[:, None] * start[None, :] + phase[:, None]), axis=0)
        return np.round(smooth / MAX_CURVATURE * RESOLUTION) * MAX_CURVATURE / RESOLUTION

    def _obs(self) -> dict[str, np.ndarray]:
        return {"offset": np.array([self.offset], np.float32), "heading": np.array([self.heading], np.float32),
                "curvature": self.curvature(self.s + np.array(AHEAD)).astype(np.float32)}

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        rng = self.np_random
        self.road = np.stack([rng.uniform([0.1, 0.05], [0.25, 0.15]),                  # amplitudes, 1/m
                              2 * np.pi / rng.uniform([15.0, 6.0], [30.0, 12.0]),      # wavenumbers, 1/m
                              rng.uniform(0, 2 * np.pi, 2)], axis=1)
        self.s, self.offset, self.heading, self.t = 0.0, 0.0, 0.0, 0
        return self._obs(), {}

    def step(self, action: Any):
        steer = MAX_CURVATURE * float(np.clip(np.asarray(action, dtype=np.float64).reshape(-1)[0], -1.0, 1.0))
        h = DT / SUBSTEPS
        for _ in range(SUBSTEPS):                # the Frenet-frame kinematics of a car on a curved road
            road = float(self.curvature(self.s)[0])
            along = SPEED * np.cos(self.heading) / max(1.0 - road * self.offset, 1e-3)
            self.offset += h * SPEED * np.sin(self.heading)
            self.heading += h * (SPEED * steer - road * along)
            self.s += h * along
        self.offset += self.gust * float(self.np_random.normal())
        self.t += 1
        off_road = abs(self.offset) > HALF_LANE
        truncated = self.t >= self.steps and not off_road
        return self._obs(), -abs(self.offset), off_road, truncated, {"success": truncated}


def expert(observation: Any) -> np.ndarray:
    """Steer along the road's curvature, plus a PD correction of the offset and heading (a critically damped
    return to the centreline in about 1.5 s), clipped to full steering."""
    offset, heading, road = (float(np.asarray(observation[k]).reshape(-1)[0])
                             for k in ("offset", "heading", "curvature"))
    return np.array([np.clip((road - GAIN_OFFSET * offset - GAIN_HEADING * heading) / MAX_CURVATURE, -1.0, 1.0)],
                    dtype=np.float32)


gym.register("bclm/LaneKeep-v0", entry_point=LaneKeep, max_episode_steps=STEPS)
gym.register("bclm/LaneKeep-Gusty-v0", entry_point=LaneKeep, max_episode_steps=STEPS, kwargs={"gust": GUST})
