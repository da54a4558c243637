"""Rollout videos: the frames env 0 renders (`render_mode="rgb_array"`) over its first episodes, written as MP4
through imageio's ffmpeg plugin (the `video` extra: imageio-ffmpeg), or as GIF (pillow) without it.

Env 0's episodes are the first ones of a rollout's report (episodes are ordered by env, then by completion).
gymnasium's RecordVideo wrapper would need moviepy and a wrapper inside the vector env; frames read from
env 0 in the loop need neither.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import numpy as np

from bclm.errors import BCLMError

RENDER_MODE = "rgb_array"


class EpisodeFilm:
    """Frames of env 0's first `episodes` episodes. With SAME_STEP autoreset the frame rendered after an
    episode's last step already shows the next episode, so it opens the next film."""

    def __init__(self, episodes: int, task_name: str):
        self.episodes = episodes
        self.task_name = task_name
        self.films: list[list[np.ndarray]] = []
        self.frames: list[np.ndarray] = []
        self.env: Any = None
        self.fps = 30

    def attach(self, vector_env: Any, quota: int) -> None:
        envs = getattr(vector_env, "envs", None)
        if envs is None:
            raise BCLMError("--video renders env 0 in this process: leave async envs off to record videos")
        self.env = envs[0]
        check_offscreen(self.env, self.task_name)
        self.fps = int(self.env.metadata.get("render_fps") or 30)
        self.episodes = min(self.episodes, quota)          # env 0's episodes in the report, no more

    def capture(self, episode_ended: bool) -> None:
        """After a reset (False) or a step (whether env 0's episode ended at it)."""
        if len(self.films) >= self.episodes:
            return
        frame = self._render()
        if episode_ended:
            self.films.append(self.frames)
            self.frames = []
        self.frames.append(frame)

    def _render(self) -> np.ndarray:
        try:
            frame = self.env.render()
        except Exception as e:      # no display, no offscreen GL: say which backend to set
            raise BCLMError(f"{self.task_name}: rendering failed ({type(e).__name__}: {e}); MuJoCo envs render "
                            "offscreen with EGL or OSMesa: set MUJOCO_GL=egl or MUJOCO_GL=osmesa where one is "
                            "installed") from e
        if not isinstance(frame, np.ndarray) or frame.ndim != 3:
            raise BCLMError(f"{self.task_name}: render() returned {type(frame).__name__}, not an RGB frame: the "
                            f"env does not support render_mode={RENDER_MODE!r}")
        return frame

    def write(self, directory: str | Path) -> list[Path]:
        """Each recorded episode as `TASK-episode-K.mp4` (or `.gif`) in `directory`; the paths written."""
        out = Path(directory)
        out.mkdir(parents=True, exist_ok=True)
        stem = self.task_name.replace("/", "_").replace(":", "_")
        return [write_video(frames, out / f"{stem}-episode-{k}", self.fps) for k, frames in enumerate(self.films)]


def check_offscreen(env: Any, task_name: str) -> None:
    """A MuJoCo env (Meta-World) renders through GLFW by default, which needs a display; without one, MuJoCo
    can abort the whole process at the first frame, so the missing backend is named before any is tried."""
    if hasattr(env.unwrapped, "mujoco_renderer") and not (os.environ.get("MUJOCO_GL") or os.environ.get("DISPLAY")):
        raise BCLMError(f"{task_name}: MuJoCo needs an offscreen backend to render without a display: set "
                        "MUJOCO_GL=egl (GPU machines) or MUJOCO_GL=osmesa (CPU, with libosmesa installed)")


def write_video(frames: list[np.ndarray], stem: Path, fps: int) -> Path:
    """`stem`.mp4 (H.264) when imageio-ffmpeg is installed, else `stem`.gif; written whole or not at all."""
    import imageio.v3 as iio

    mp4 = importlib.util.find_spec("imageio_ffmpeg") is not None
    path = stem.with_suffix(".mp4" if mp4 else ".gif")
    tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
    if mp4:    # even sizes are all H.264 (yuv420p) needs; the default 16 would resize most env frames
        iio.imwrite(tmp, np.stack(frames), fps=fps, codec="libx264", macro_block_size=2)
    else:
        iio.imwrite(tmp, np.stack(frames), duration=1000 / fps, loop=0)
    os.replace(tmp, path)
    return path
