"""A training run's directory: when it is finished, its resumable checkpoints, and its log after a resume.

A run is finished only once its last file, `bclm_done.json`, is in place (written after the policy, its
evaluation and its card). A kill anywhere before that leaves a run the same command resumes from its newest
complete checkpoint; `config.json` being there decides nothing, since transformers writes it before the
weights.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from accelerate import Accelerator

from bclm import atomic, failpoints
from bclm.hub.cards import CARD_FILE
from bclm.policy import POLICY_FILE

CHECKPOINTS = "checkpoints"
STEP_MARKER = "bclm_step.json"       # written last into a checkpoint: it is complete
DONE_MARKER = "bclm_done.json"       # written last into a run: it is finished
METRICS_FILE = "metrics.jsonl"
_LEGACY_DONE = (POLICY_FILE, "eval_report.json", CARD_FILE)


def run_finished(out: Path) -> bool:
    # Without the marker (runs of bclm before it): the three files a run writes last, in this order, after
    # the weights. A new run has all three only once its card is written, when nothing is left to do.
    return isinstance(atomic.read_json(out / DONE_MARKER), dict) or \
        all((out / name).is_file() for name in _LEGACY_DONE)


def mark_finished(out: Path, step: int) -> None:
    atomic.write_json(out / DONE_MARKER, {"step": step})


def unmark_finished(out: Path) -> None:
    """An overwritten run is not finished until it finishes again (its old final files go first, so a kill
    during the new final save cannot leave old reports beside half-written weights)."""
    for name in (DONE_MARKER, *_LEGACY_DONE):
        (out / name).unlink(missing_ok=True)


def _step_of(checkpoint: Path) -> int:
    return int(checkpoint.name.split("-")[1])


def checkpoints(out: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a marker that cannot be parsed counts as absent: interrupted)."""
    ckpts = sorted((out / CHECKPOINTS).glob("step-*"), key=_step_of)
    return [p for p in ckpts if isinstance(atomic.read_json(p / STEP_MARKER), dict)]


def latest_checkpoint(out: Path) -> Path | None:
    complete = checkpoints(out)
    return complete[-1] if complete else None


def save_checkpoint(accelerator: Accelerator, out: Path, step: int, keep: int = 0) -> Path:
    """A resumable checkpoint at `step`; then only the newest `keep` complete ones are kept (0 = all), and
    interrupted ones older than this one go."""
    path = out / CHECKPOINTS / f"step-{step}"
    with atomic.disk_errors_named(path):
        accelerator.save_state(str(path))
    failpoints.point("checkpoint")
    if accelerator.is_main_process:
        # Written last: a checkpoint without this marker was interrupted and is never resumed from.
        atomic.write_json(path / STEP_MARKER, {"step": step})
        failpoints.point("checkpointed")
        complete = checkpoints(out)
        stale = complete[:-keep] if keep else []
        stale += [p for p in (out / CHECKPOINTS).glob("step-*") if p not in complete and _step_of(p) < step]
        for old in stale:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def trim_metrics(out: Path, step: int) -> None:
    """Drop the log lines past `step` (the resumed run writes those steps again), atomically."""
    path = out / METRICS_FILE
    if not path.is_file():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if int(json.loads(line)["step"]) <= step:
                kept.append(line + "\n")
        except (ValueError, KeyError, TypeError):
            continue           # a line cut short by the kill
    atomic.write_text(path, "".join(kept))
