"""Behavior cloning: next-token cross-entropy on action tokens, under accelerate (one loop for 1..N devices)."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_scheduler

from bclm import config as cfg
from bclm.data.sequences import IGNORE_INDEX, PadCollator, WindowDataset, tokenize_episodes
from bclm.data.store import StepArrays, TrajectoryStore
from bclm.envs import get_task
from bclm.errors import BCLMError
from bclm.eval.evaluate import evaluate, write_report
from bclm.models import build_model, count_parameters, pretrained_vocabulary
from bclm.policy import Policy
from bclm.tokenizers import BCTokenizer
from bclm.trainer.config import OptimConfig, TrainRecipe

CHECKPOINTS = "checkpoints"


# --- small steps -------------------------------------------------------------------------------------
def action_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Mean cross-entropy over action tokens, with the counts behind action-token accuracy.

    Windows share one layout, so the positions that carry labels are (nearly) the same in every row:
    only those positions go through the LM head (`logits_to_keep`), which saves most of its compute.
    The collator computes them on the host so that no device sync is needed here; stats stay tensors
    (converted only when logged) for the same reason.
    """
    targets = batch["labels"][:, 1:]                                # (B, T-1) next-token targets
    keep = batch.get("predict_positions")
    if keep is None:
        keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    logits = out.logits.float()                                     # (B, K, V)
    chosen = targets[:, keep]                                       # (B, K)
    loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), chosen.reshape(-1),
                                             ignore_index=IGNORE_INDEX)
    with torch.no_grad():
        valid = chosen != IGNORE_INDEX
        stats = {"loss": loss.detach(), "correct": ((logits.argmax(-1) == chosen) & valid).sum(),
                 "action_tokens": valid.sum()}
    return loss, stats


def make_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=optim.lr, betas=optim.betas)


def make_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig):
    return get_scheduler("cosine_with_min_lr", optimizer, num_warmup_steps=optim.warmup_steps,
                         num_training_steps=optim.max_steps,
                         scheduler_specific_kwargs={"min_lr_rate": optim.min_lr_ratio})


def batches(loader: torch.utils.data.DataLoader, accelerator: Accelerator, skip: int = 0) -> Iterator[dict]:
    """Endless stream of batches over epochs; the first `skip` batches are passed over (for resume)."""
    epoch, within = divmod(skip, len(loader))
    while True:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from (accelerator.skip_first_batches(loader, within) if within else loader)
        epoch, within = epoch + 1, 0


# --- setup -------------------------------------------------------------------------------------------
@dataclass
class Prepared:
    """Everything the loop needs, built from the recipe and the dataset."""

    tokenizer: BCTokenizer
    train_set: WindowDataset
    val_set: WindowDataset | None
    task_name: str
    env: str          # the TaskSpec name evaluations resolve with get_task


def prepare_data(recipe: TrainRecipe, tokenizer: BCTokenizer | None = None) -> Prepared:
    """Load the dataset, fit a new tokenizer on it (or check it against a given one), build windows."""
    store = TrajectoryStore(recipe.dataset)
    steps = store.arrays(recipe.data.shards or None)
    task_name = recipe.task or store.meta.get("task") or "default"
    where = f"dataset {recipe.dataset}"
    if tokenizer is None:
        base_vocab, text_tokenizer = pretrained_vocabulary(recipe.model)
        tokenizer = BCTokenizer(store.observation_space, store.action_space, recipe.tokenizer, tasks=[task_name],
                                base_vocab_size=base_vocab, text_tokenizer=text_tokenizer)
    else:
        tokenizer.assert_compatible(store.observation_space, store.action_space, where=where)
        if task_name not in tokenizer.tasks:
            raise BCLMError(f"{where}: task {task_name!r} is not one of the policy's tasks {tokenizer.tasks}")
    tokenizer.check_observation(steps.observation, where=where)
    tokenizer.check_action(steps.action, where=where)
    tokenizer.check_action(_take_tree(steps.expert_action, steps.columns["labeled"]),
                           where=f"{where} (expert_action)")
    if not tokenizer.fitted:
        tokenizer.fit(steps.observation, steps.action)
    train_steps, val_steps = split_episodes(steps, recipe.data.val_episodes)
    train_set = _windows(tokenizer, train_steps, recipe, task_name)
    val_set = _windows(tokenizer, val_steps, recipe, task_name) if val_steps is not None else None
    return Prepared(tokenizer, train_set, val_set, task_name, store.meta.get("task") or store.meta["env_id"])


def initial_model(recipe: TrainRecipe) -> tuple[PreTrainedModel | None, BCTokenizer | None]:
    """The warm-start policy's model and tokenizer (`init_from`), or nothing for a fresh model."""
    if not recipe.init_from:
        return None, None
    policy = Policy.from_pretrained(recipe.init_from)
    return policy.model.train(), policy.tokenizer


def split_episodes(steps: StepArrays, val_episodes: int) -> tuple[StepArrays, StepArrays | None]:
    if val_episodes <= 0:
        return steps, None
    episodes = np.unique(steps.columns["episode"])
    if val_episodes >= len(episodes):
        raise BCLMError(f"data.val_episodes={val_episodes} leaves no training episode ({len(episodes)} in all)")
    is_val = np.isin(steps.columns["episode"], episodes[-val_episodes:])
    return _select(steps, ~is_val), _select(steps, is_val)


def _select(steps: StepArrays, mask: np.ndarray) -> StepArrays:
    return StepArrays(observation=_take_tree(steps.observation, mask), action=_take_tree(steps.action, mask),
                      expert_action=_take_tree(steps.expert_action, mask),
                      columns={k: v[mask] for k, v in steps.columns.items()})


def _take_tree(batch: Any, mask: np.ndarray) -> Any:
    if isinstance(batch, dict):
        return {k: _take_tree(v, mask) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(_take_tree(v, mask) for v in batch)
    return batch[mask]


def _windows(tokenizer: BCTokenizer, steps: StepArrays, recipe: TrainRecipe, task_name: str) -> WindowDataset:
    task = np.full(len(steps), task_name, dtype=object)
    tokens = tokenize_episodes(tokenizer, steps.observation, steps.action, steps.columns["episode"],
                               steps.columns["step"], task, expert_action=steps.expert_action,
                               labeled=steps.columns["labeled"])
    return WindowDataset(tokens, tokenizer, recipe.data.context_length, recipe.data.stride_fraction)


def check_output_dir(recipe: TrainRecipe) -> Path:
    if not recipe.output_dir:
        raise BCLMError("output_dir is required (--output-dir DIR)")
    if not recipe.dataset:
        raise BCLMError("dataset is required (--dataset DIR)")
    out = Path(recipe.output_dir)
    if (out / "config.json").exists() and not recipe.overwrite:
        raise BCLMError(f"{out} already holds a trained policy; choose another --output-dir "
                        "(or pass --overwrite true to replace it)")
    out.mkdir(parents=True, exist_ok=True)
    return out


def latest_checkpoint(out: Path) -> Path | None:
    ckpts = sorted((out / CHECKPOINTS).glob("step-*"), key=lambda p: int(p.name.split("-")[1]))
    complete = [p for p in ckpts if (p / "bclm_step.json").is_file()]
    return complete[-1] if complete else None


# --- the loop ----------------------------------------------------------------------------------------
def train(recipe: TrainRecipe, accelerator: Accelerator | None = None) -> Policy:
    """Fit a policy on the recipe's dataset; write it (safetensors + tokenizer + report) to output_dir."""
    out = check_output_dir(recipe)
    optim, loop = recipe.train, recipe.loop
    set_seed(loop.seed)
    warm_model, warm_tokenizer = initial_model(recipe)
    data = prepare_data(recipe, warm_tokenizer)
    accelerator = accelerator or Accelerator(
        mixed_precision="bf16" if optim.bf16 else "no", gradient_accumulation_steps=optim.grad_accum,
        log_with="tensorboard", project_dir=str(out))
    tok = data.tokenizer
    model = warm_model or build_model(recipe.model, tok.vocab_size, recipe.data.context_length, tok.bos_id,
                                      tok.eos_id, tok.pad_id)
    optimizer = make_optimizer(model, optim)
    scheduler = make_scheduler(optimizer, optim)
    generator = torch.Generator().manual_seed(loop.seed)
    loader = torch.utils.data.DataLoader(
        data.train_set, batch_size=optim.batch_size, shuffle=True, drop_last=len(data.train_set) > optim.batch_size,
        collate_fn=PadCollator(tok.pad_id), num_workers=loop.num_workers, generator=generator)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    if optim.compile:
        model = torch.compile(model)
    start = _maybe_resume(accelerator, out)
    if accelerator.is_main_process:
        cfg_dict = cfg.to_dict(recipe)
        (out / "recipe.yaml").write_text(yaml.safe_dump(cfg_dict, sort_keys=False))
        accelerator.init_trackers("tensorboard", config=_flat_scalars(cfg_dict))
        accelerator.print(f"model: {count_parameters(accelerator.unwrap_model(model)) / 1e6:.2f}M parameters, "
                          f"vocab {tok.vocab_size}, {len(data.train_set)} windows, step_len {tok.step_len}")
    policy = Policy(accelerator.unwrap_model(model), tok, recipe.data.context_length, task=data.task_name,
                    metadata={"env": data.env})
    stream = batches(loader, accelerator, skip=start * optim.grad_accum)
    bar = tqdm(total=optim.max_steps, initial=start, desc="train", disable=not (loop.progress and
                                                                                 accelerator.is_main_process))
    metrics_file = out / "metrics.jsonl"
    model.train()
    t0, tokens_seen, window, window_steps = time.perf_counter(), 0.0, {}, 0
    for step in range(start + 1, optim.max_steps + 1):
        for k, v in train_step(model, optimizer, scheduler, stream, accelerator, optim).items():
            window[k] = window[k] + v if k in window else v
        window_steps += 1
        if step % loop.log_every == 0 or step == optim.max_steps:
            tokens_seen += float(window.pop("tokens"))
            stats = summarize_stats(window, window_steps)
            window, window_steps = {}, 0
            stats.update(step=step, lr=scheduler.get_last_lr()[0],
                         tokens_per_s=tokens_seen / max(time.perf_counter() - t0, 1e-9))
            if data.val_set is not None:
                stats.update(validate(model, data.val_set, tok.pad_id, accelerator))
            _log(accelerator, stats, metrics_file)
            bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['action_accuracy']:.3f}")
        if loop.eval_every and step % loop.eval_every == 0 and step < optim.max_steps:
            _evaluate_and_log(policy, recipe, step, accelerator, out, metrics_file)
        if loop.save_every and step % loop.save_every == 0 and step < optim.max_steps:
            save_checkpoint(accelerator, out, step)
        bar.update(1)
    bar.close()
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        policy.save_pretrained(out)
        _evaluate_and_log(policy, recipe, optim.max_steps, accelerator, out, metrics_file, final=True)
    accelerator.end_training()
    policy.model.eval()
    return policy


def train_step(model, optimizer, scheduler, stream: Iterator[dict], accelerator: Accelerator,
               optim: OptimConfig) -> dict[str, torch.Tensor]:
    """One optimizer step over `grad_accum` micro-batches; returns tensors (no device sync)."""
    totals: dict[str, torch.Tensor] = {}
    for _ in range(optim.grad_accum):
        batch = next(stream)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss, stats = action_loss(model, batch)
            accelerator.backward(loss)
            if accelerator.sync_gradients and optim.grad_clip > 0:
                stats["grad_norm"] = accelerator.clip_grad_norm_(model.parameters(), optim.grad_clip)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        stats["loss"] = stats["loss"] / optim.grad_accum
        stats["tokens"] = batch["attention_mask"].sum() * accelerator.num_processes
        for k, v in stats.items():
            totals[k] = totals[k] + v if k in totals else v
    return totals


def summarize_stats(totals: dict[str, torch.Tensor], steps: int) -> dict[str, float]:
    """Per-step averages of accumulated `train_step` results, as floats for logging."""
    out = {"loss": float(totals["loss"]) / steps,
           "action_accuracy": float(totals["correct"]) / max(float(totals["action_tokens"]), 1.0)}
    if "grad_norm" in totals:
        out["grad_norm"] = float(totals["grad_norm"]) / steps
    return out


@torch.no_grad()
def validate(model, dataset: WindowDataset, pad_id: int, accelerator: Accelerator,
             batch_size: int = 64) -> dict[str, float]:
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=PadCollator(pad_id))
    loss_sum, correct, n = 0.0, 0.0, 0.0
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            _, stats = action_loss(model, batch)
        tokens = float(stats["action_tokens"])
        loss_sum += float(stats["loss"]) * tokens
        correct += float(stats["correct"])
        n += tokens
    model.train()
    return {"val_loss": loss_sum / max(n, 1), "val_action_accuracy": correct / max(n, 1)}


def _evaluate_and_log(policy: Policy, recipe: TrainRecipe, step: int, accelerator: Accelerator, out: Path,
                      metrics_file: Path, final: bool = False) -> dict[str, Any] | None:
    if not accelerator.is_main_process:
        return None
    task = get_task(recipe.eval.env or policy.metadata.get("env") or policy.task)
    report = evaluate(policy, task, recipe.eval)
    report["step"] = step
    scalars = {f"eval/{k}": v for k, v in report.items() if isinstance(v, int | float) and k != "seed"}
    _log(accelerator, {"step": step, **scalars}, metrics_file)
    if final:
        write_report(report, out / "eval_report.json")
    return report


def save_checkpoint(accelerator: Accelerator, out: Path, step: int) -> Path:
    path = out / CHECKPOINTS / f"step-{step}"
    accelerator.save_state(str(path))
    if accelerator.is_main_process:
        # Written last: a checkpoint without this marker was interrupted and is never resumed from.
        (path / "bclm_step.json").write_text(json.dumps({"step": step}))
    accelerator.wait_for_everyone()
    return path


def _maybe_resume(accelerator: Accelerator, out: Path) -> int:
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        return 0
    accelerator.load_state(str(ckpt))
    step = json.loads((ckpt / "bclm_step.json").read_text())["step"]
    accelerator.print(f"resumed from {ckpt} (step {step})")
    return int(step)


def _log(accelerator: Accelerator, stats: dict[str, Any], metrics_file: Path) -> None:
    step = int(stats["step"])
    accelerator.log({k: v for k, v in stats.items() if k != "step"}, step=step)
    if accelerator.is_main_process:
        with metrics_file.open("a") as f:
            f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                                for k, v in stats.items()}) + "\n")


def _flat_scalars(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_scalars(v, f"{prefix}{k}."))
        elif isinstance(v, int | float | str | bool):
            out[f"{prefix}{k}"] = v
    return out
