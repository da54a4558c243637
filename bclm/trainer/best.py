"""Keep the best weights seen on the validation split, so the exported policy is the best, not the last.

Behavior cloning overfits small datasets: validation action accuracy peaks and then falls while the
training loss keeps going down. The best weights so far are one safetensors file under OUTPUT_DIR, with the
step and the figure in its metadata, written to a temporary name and renamed: a crash leaves the previous
best or the new one, and a resumed run goes on comparing against it.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

BEST_FILE = "checkpoints/best.safetensors"   # beside the resumable checkpoints: never uploaded or loaded
HIGHER_IS_BETTER = {"val_action_accuracy": True, "val_loss": False}


class KeepBest:
    def __init__(self, out: Path, metric: str):
        self.path, self.metric = out / BEST_FILE, metric
        self.step, self.value = self._recorded()

    def _recorded(self) -> tuple[int, float]:
        if not self.path.is_file():
            return 0, math.nan
        with safe_open(str(self.path), framework="pt") as f:
            meta = f.metadata() or {}
        return int(meta.get("step", 0)), float(meta.get("value", math.nan))

    def better(self, value: float) -> bool:
        """Ties go to the later step: at equal accuracy it has trained longer (a lower loss)."""
        if math.isnan(self.value):
            return math.isfinite(value)
        return value >= self.value if HIGHER_IS_BETTER[self.metric] else value <= self.value

    def update(self, model: torch.nn.Module, stats: dict[str, float], step: int, main: bool) -> None:
        """Record `model` as the best when `stats[metric]` beats the best so far (written by the main process)."""
        value = stats[self.metric]
        if not self.better(value):
            return
        self.step, self.value = step, value
        if main:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(f".{self.path.name}.tmp")
            # Copies: DeepSpeed's parameters are views into one flat buffer, which safetensors will not write.
            weights = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
            save_file(weights, str(tmp), metadata={"step": str(step), "value": repr(value), "metric": self.metric})
            os.replace(tmp, self.path)

    def restore(self, model: torch.nn.Module) -> int:
        """Load the best weights into `model`; the step they are from (0: none recorded, model unchanged)."""
        if self.step:
            model.load_state_dict(load_file(str(self.path), device=str(next(model.parameters()).device)))
        return self.step
