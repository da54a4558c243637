"""One optimizer step of behavior cloning and its parts: the action-token loss, AdamW and its schedule, the
training length sized to the data, and validation on held-out windows."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterator

import torch
from accelerate import Accelerator
from transformers import get_scheduler

from bclm.data.collate import PadCollator, predicted_positions
from bclm.data.sequences import IGNORE_INDEX
from bclm.state import add_read_out, feeding
from bclm.trainer.config import OptimConfig
from bclm.trainer.ordinal import OrdinalTargets
from bclm.trainer.regression import RegressionTargets

_PLAIN = OrdinalTargets(0, 1, 0.0)   # plain cross-entropy


def action_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_tasks: int = 1,
                accelerator: Accelerator | None = None, ordinal: OrdinalTargets | None = None,
                obs_weight: float = 0.0, regression: RegressionTargets | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy over action tokens (each window's tokens times its task's loss weight, over the number
    of action tokens), with the counts behind action-token accuracy, per task when `num_tasks` > 1. With
    `ordinal`, continuous action tokens are scored against HL-Gauss targets instead of one-hot ones; with
    `regression`, by the squared error of their value read at the step's ACT token (a hit: its nearest bin
    is the target's), plus its `residual_penalty` on what the LM adds to the linear read-out. A batch
    with `obs_labels` adds `obs_weight` times the mean cross-entropy of its observation tokens to the loss
    returned; `stats["loss"]` stays the action loss, comparable with runs without it.

    Padded windows share one layout, so the positions that carry labels are (nearly) the same in every row:
    only those positions go through the LM head (`logits_to_keep`), which saves most of its compute.
    The collator computes them on the host so that no device sync is needed here; stats stay tensors
    (converted only when logged) for the same reason. With several processes (`accelerator`), the mean is
    over the action tokens of the whole global batch, so that the gradient averaged over ranks equals a
    single process's on the same global batch, however the tokens fall between ranks.
    """
    targets = batch["labels"][:, 1:]                                # (B, T-1) next-token targets
    keep = batch.get("predict_positions")
    if keep is None:
        keep = predicted_positions(batch)
    # A packed batch has position ids and no attention mask; a padded one the opposite (see bclm.data.collate).
    # No KV cache: training needs none, and transformers reads packed rows from the position ids only without one.
    with feeding(model, batch.get("values")):
        out = model(input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
                    position_ids=batch.get("position_ids"), logits_to_keep=keep, use_cache=False)
        lm_logits = out.logits.float()
        logits = add_read_out(model, lm_logits, keep)               # (B, K, V)
    chosen = targets[:, keep]                                       # (B, K)
    token_loss = (ordinal or _PLAIN).token_loss(logits, chosen)    # (B, K), 0 where ignored
    valid = chosen != IGNORE_INDEX
    hits = (logits.argmax(-1) == chosen) & valid
    penalty = None
    if regression is not None:
        exact = batch["value_labels"][:, 1:][:, keep] if "value_labels" in batch else None
        squared, regressed, near = regression.token_loss(logits, chosen, keep, batch["input_ids"], exact)
        token_loss, hits = torch.where(regressed, squared, token_loss), torch.where(regressed, near, hits)
        if regression.residual_penalty and logits is not lm_logits:       # a linear read-out was added
            penalty = regression.residual_loss(lm_logits, chosen, keep, batch["input_ids"])
    weight = batch.get("loss_weight")
    weighted = token_loss if weight is None else token_loss * _per_target(weight, keep, chosen).to(token_loss.dtype)
    loss = _global_mean(weighted, valid, accelerator)
    total = loss
    if penalty is not None:
        total = total + _global_mean(penalty, valid, accelerator)
    if "obs_labels" in batch:
        observed = batch["obs_labels"][:, 1:][:, keep]
        obs_loss = _global_mean(_PLAIN.token_loss(logits, observed), observed != IGNORE_INDEX, accelerator)
        total = loss + obs_weight * obs_loss
    with torch.no_grad():
        hits = hits.detach()
        stats = {"loss": loss.detach(), "correct": hits.sum(), "action_tokens": valid.sum()}
        if "obs_labels" in batch:
            stats["obs_loss"] = obs_loss.detach()
        if num_tasks > 1:
            # Sums per task (the window's task index), so that averages over a logging window stay exact.
            task = _per_target(batch["task_index"], keep, chosen).flatten()
            for key, per_token in (("task_loss_sum", token_loss), ("task_correct", hits), ("task_tokens", valid)):
                stats[key] = torch.zeros(num_tasks, device=task.device).index_add_(0, task, per_token.flatten().float())
    return total, stats


def _global_mean(token_loss: torch.Tensor, valid: torch.Tensor, accelerator: Accelerator | None) -> torch.Tensor:
    """Sum over this process's `valid` tokens over the mean count per process of the whole global batch."""
    count = valid.sum().clamp(min=1)
    if accelerator is not None and accelerator.num_processes > 1:
        count = accelerator.reduce(valid.sum(), reduction="sum").clamp(min=1) / accelerator.num_processes
    return token_loss.sum() / count


def _per_target(values: torch.Tensor, keep: torch.Tensor, chosen: torch.Tensor) -> torch.Tensor:
    """(B, K) a per-window field at each kept target: given per window (B,) in a padded batch, per token
    (B, T) in a packed one, where the target at position p + 1 belongs to the window of token p + 1."""
    return values[:, 1:][:, keep] if values.dim() == 2 else values[:, None].expand_as(chosen)


AUTO_EPOCHS = {False: 50.0, True: 100.0}   # train.epochs -1, by whether any action is continuous


def sized_to_data(optim: OptimConfig, windows: int, processes: int = 1, continuous: bool = False) -> OptimConfig:
    """`optim` with max_steps set to `epochs` passes over `windows` (capped by max_steps), the warmup at most
    a tenth of them: a small dataset trains for as long as it needs to, not a fixed number of steps."""
    if not optim.epochs:
        return optim
    epochs = AUTO_EPOCHS[continuous] if optim.epochs == -1 else optim.epochs
    per_step = optim.batch_size * optim.grad_accum * processes
    steps = max(1, min(optim.max_steps, math.ceil(epochs * windows / per_step)))
    return dataclasses.replace(optim, epochs=0.0, max_steps=steps, warmup_steps=min(optim.warmup_steps, steps // 10))


def make_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # The fused kernel (CPU and CUDA): one launch for every parameter, 2-4x faster steps than the default
    # foreach one on CPU here (benchmarks/RESULTS.md).
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas, fused=True)


def make_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig):
    if optim.schedule == "constant":
        return get_scheduler("constant_with_warmup", optimizer, num_warmup_steps=optim.warmup_steps)
    if optim.schedule == "wsd":
        decay = min(max(1, round(optim.decay_fraction * optim.max_steps)), optim.max_steps - optim.warmup_steps)
        return get_scheduler("warmup_stable_decay", optimizer, num_warmup_steps=optim.warmup_steps,
                             num_training_steps=optim.max_steps,
                             scheduler_specific_kwargs={"num_decay_steps": decay, "min_lr_ratio": optim.min_lr_ratio})
    return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=optim.warmup_steps,
                         num_training_steps=optim.max_steps,
                         scheduler_specific_kwargs={"min_lr_rate": optim.min_lr_ratio})


def train_step(model, optimizer, scheduler, stream: Iterator[dict], accelerator: Accelerator,
               optim: OptimConfig, num_tasks: int = 1, ordinal: OrdinalTargets | None = None,
               regression: RegressionTargets | None = None) -> dict[str, torch.Tensor]:
    """One optimizer step over `grad_accum` micro-batches; returns tensors (no device sync)."""
    totals: dict[str, torch.Tensor] = {}
    for _ in range(optim.grad_accum):
        batch = next(stream)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss, stats = action_loss(model, batch, num_tasks, accelerator, ordinal, optim.obs_loss_weight,
                                          regression)
            accelerator.backward(loss)
            if accelerator.sync_gradients and optim.grad_clip > 0:
                norm = accelerator.clip_grad_norm_(model.parameters(), optim.grad_clip)
                if norm is not None:          # DeepSpeed clips inside its step and reports a float
                    stats["grad_norm"] = torch.as_tensor(norm, dtype=torch.float32, device=accelerator.device)
            optimizer.step()
            if accelerator.sync_gradients:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        for key in ("loss", "obs_loss"):
            if key in stats:
                stats[key] = stats[key] / optim.grad_accum
        stats["tokens"] = batch["real_tokens"]
        for k, v in stats.items():
            totals[k] = totals[k] + v if k in totals else v
    return totals


def summarize_stats(totals: dict[str, torch.Tensor], steps: int, task_names: list[str] | None = None,
                    prefix: str = "") -> dict[str, float]:
    """Per-step averages of accumulated `train_step` results, as floats for logging; with several tasks
    also `loss/TASK` (unweighted, per action token) and `action_accuracy/TASK`."""
    out = {f"{prefix}loss": float(totals["loss"]) / steps,
           f"{prefix}action_accuracy": float(totals["correct"]) / max(float(totals["action_tokens"]), 1.0)}
    for key in ("obs_loss", "grad_norm"):
        if key in totals:
            out[f"{prefix}{key}" if key == "obs_loss" else key] = float(totals[key]) / steps
    if "task_tokens" in totals:
        for i, name in enumerate(task_names or []):
            tokens = float(totals["task_tokens"][i])
            if tokens:                    # a task with no window in this logging window has no figure
                out[f"{prefix}loss/{name}"] = float(totals["task_loss_sum"][i]) / tokens
                out[f"{prefix}action_accuracy/{name}"] = float(totals["task_correct"][i]) / tokens
    return out


@torch.no_grad()
def validate(model, dataset: torch.utils.data.Dataset, pad_id: int, accelerator: Accelerator,
             task_names: list[str] | None = None, batch_size: int = 64, ordinal: OrdinalTargets | None = None,
             regression: RegressionTargets | None = None) -> dict[str, float]:
    """Loss and action accuracy over held-out windows (per task too, with several tasks)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=PadCollator(pad_id))
    totals: dict[str, torch.Tensor] = {}
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            _, stats = action_loss(model, batch, len(task_names or []), accelerator, ordinal, regression=regression)
        stats["loss"] = stats["loss"] * stats["action_tokens"]       # token-weighted over batches
        for k, v in stats.items():
            totals[k] = totals[k] + v if k in totals else v
    model.train()
    tokens = max(float(totals["action_tokens"]), 1.0)
    out = summarize_stats(totals, 1, task_names, prefix="val_")
    out["val_loss"] = float(totals["loss"]) / tokens
    return out
