"""Experiment trackers of a training run, as accelerate's tracker classes: tensorboard (the default, files in
OUTPUT_DIR/tensorboard), trackio (local files under TRACKIO_DIR, no network) and wandb (offline unless
WANDB_MODE says otherwise, synced later with `wandb sync`).

A run's name is derived from its output directory, so the same command after a crash or Ctrl-C continues the
same tracker run (trackio and wandb resume it) instead of starting a second one.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from pathlib import Path

from accelerate.tracking import GeneralTracker, TensorBoardTracker, TrackioTracker, WandBTracker

from bclm.errors import BCLMError

TRACKERS = ("tensorboard", "trackio", "wandb")      # each also the name of the package it needs


def run_name(out: Path) -> str:
    """`DIR-hash`: the output directory's name, and a digest of its absolute path (two runs both called
    `policy` in different folders stay apart)."""
    path = str(Path(out).resolve())
    return f"{Path(path).name}-{hashlib.sha1(path.encode()).hexdigest()[:8]}"


def check_trackers(names: list[str]) -> None:
    """Unknown or uninstalled trackers, refused before any work."""
    for name in names:
        if name not in TRACKERS:
            raise BCLMError(f"loop.report_to: {name!r} is not one of {', '.join(TRACKERS)} (or [] for none)")
        if importlib.util.find_spec(name) is None:
            raise BCLMError(f"loop.report_to: {name} is not installed (pip install {name})")


def make_trackers(names: list[str], out: Path, project: str) -> list[GeneralTracker]:
    """The trackers for `Accelerator(log_with=...)`, each named for this output directory."""
    check_trackers(names)
    name = run_name(out)
    made: dict[str, GeneralTracker] = {}
    for tracker in dict.fromkeys(names):
        if tracker == "tensorboard":
            made[tracker] = TensorBoardTracker("tensorboard", str(out))
        elif tracker == "trackio":
            made[tracker] = TrackioTracker(project, name=name, resume="allow", embed=False)
        else:
            made[tracker] = WandBTracker(project, name=name, id=name, resume="allow", dir=str(out),
                                         mode=os.environ.get("WANDB_MODE", "offline"))
    return list(made.values())
