"""Behavior cloning: next-token cross-entropy on action tokens, under accelerate (one loop for 1..N devices)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_scheduler

from bclm import atomic, failpoints, interrupt
from bclm import config as cfg
from bclm.data.sequences import IGNORE_INDEX, PadCollator
from bclm.embeddings import attach_for
from bclm.envs import get_task
from bclm.errors import BCLMError
from bclm.eval.evaluate import evaluate, evaluate_tasks, write_report
from bclm.hub.cards import CARD_FILE, policy_card
from bclm.models import build_model, count_parameters
from bclm.policy import Policy
from bclm.tokenizers import BCTokenizer
from bclm.trainer.best import KeepBest
from bclm.trainer.config import OptimConfig, TrainRecipe
from bclm.trainer.data import EpochSampler, Prepared, prepare_data, task_entries
from bclm.trainer.launch import (
    align_deepspeed,
    check_engine,
    configured_zero_stage,
    describe_launch,
    make_accelerator,
    whole_models,
)
from bclm.trainer.ordinal import OrdinalTargets, ordinal_targets
from bclm.trainer.rundir import (
    METRICS_FILE,
    STEP_MARKER,
    latest_checkpoint,
    mark_finished,
    run_finished,
    save_checkpoint,
    trim_metrics,
    unmark_finished,
)

QUANTIZATION_FILE = "quantization_report.json"
_PLAIN = OrdinalTargets(0, 1, 0.0)   # plain cross-entropy


# --- small steps -------------------------------------------------------------------------------------
def action_loss(model: torch.nn.Module, batch: dict[str, torch.Tensor], num_tasks: int = 1,
                accelerator: Accelerator | None = None, ordinal: OrdinalTargets | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Cross-entropy over action tokens (each window's tokens times its task's loss weight, over the number
    of action tokens), with the counts behind action-token accuracy, per task when `num_tasks` > 1. With
    `ordinal`, continuous action tokens are scored against HL-Gauss targets instead of one-hot ones.

    Windows share one layout, so the positions that carry labels are (nearly) the same in every row:
    only those positions go through the LM head (`logits_to_keep`), which saves most of its compute.
    The collator computes them on the host so that no device sync is needed here; stats stay tensors
    (converted only when logged) for the same reason. With several processes (`accelerator`), the mean is
    over the action tokens of the whole global batch, so that the gradient averaged over ranks equals a
    single process's on the same global batch, however the tokens fall between ranks.
    """
    targets = batch["labels"][:, 1:]                                # (B, T-1) next-token targets
    keep = batch.get("predict_positions")
    if keep is None:
        keep = (targets != IGNORE_INDEX).any(dim=0).nonzero().squeeze(-1)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep)
    logits = out.logits.float()                                     # (B, K, V)
    chosen = targets[:, keep]                                       # (B, K)
    token_loss = (ordinal or _PLAIN).token_loss(logits, chosen)    # (B, K), 0 where ignored
    valid = chosen != IGNORE_INDEX
    weight = batch.get("loss_weight")
    weighted = token_loss if weight is None else token_loss * weight.to(token_loss.dtype)[:, None]
    count = valid.sum().clamp(min=1)
    if accelerator is not None and accelerator.num_processes > 1:
        count = accelerator.reduce(valid.sum(), reduction="sum").clamp(min=1) / accelerator.num_processes
    loss = weighted.sum() / count
    with torch.no_grad():
        hits = (logits.argmax(-1) == chosen) & valid
        stats = {"loss": loss.detach(), "correct": hits.sum(), "action_tokens": valid.sum()}
        if num_tasks > 1:
            # Sums per task (the window's task index), so that averages over a logging window stay exact.
            task = batch["task_index"]
            for key, per_row in (("task_loss_sum", token_loss.sum(1)), ("task_correct", hits.sum(1)),
                                 ("task_tokens", valid.sum(1))):
                stats[key] = torch.zeros(num_tasks, device=task.device).index_add_(0, task, per_row.float())
    return loss, stats


def sized_to_data(optim: OptimConfig, windows: int, processes: int = 1) -> OptimConfig:
    """`optim` with max_steps set to `epochs` passes over `windows` (capped by max_steps), the warmup at most
    a tenth of them: a small dataset trains for as long as it needs to, not a fixed number of steps."""
    if not optim.epochs:
        return optim
    per_step = optim.batch_size * optim.grad_accum * processes
    steps = max(1, min(optim.max_steps, math.ceil(optim.epochs * windows / per_step)))
    return dataclasses.replace(optim, epochs=0.0, max_steps=steps, warmup_steps=min(optim.warmup_steps, steps // 10))


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


def batches(loader: torch.utils.data.DataLoader, accelerator: Accelerator, skip: int = 0,
            sampler: EpochSampler | None = None) -> Iterator[dict]:
    """Endless stream of batches over epochs; the first `skip` batches are passed over (for resume)."""
    epoch, within = divmod(skip, len(loader))
    while True:
        if sampler is not None:
            sampler.set_epoch(epoch)
        for dataset in getattr(loader.dataset, "datasets", [loader.dataset]):    # a mixture's, or the one
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        yield from (accelerator.skip_first_batches(loader, within) if within else loader)
        epoch, within = epoch + 1, 0


# --- setup -------------------------------------------------------------------------------------------
def initial_model(recipe: TrainRecipe) -> tuple[PreTrainedModel | None, dict[str, BCTokenizer] | None]:
    """The warm-start policy's model and tokenizers (`init_from`), or nothing for a fresh model."""
    if not recipe.init_from:
        return None, None
    policy = Policy.from_pretrained(recipe.init_from)
    return policy.model.train(), policy.tokenizers


def check_output_dir(recipe: TrainRecipe) -> Path:
    if not recipe.output_dir:
        raise BCLMError("output_dir is required (--output-dir DIR)")
    task_entries(recipe)                  # a dataset or a mixture, checked before anything is written
    out = Path(recipe.output_dir)
    if out.exists() and not out.is_dir():
        raise BCLMError(f"--output-dir {out} is a file, not a directory: choose another --output-dir")
    if run_finished(out):
        if not recipe.overwrite:
            raise BCLMError(f"{out} already holds a finished policy; choose another --output-dir "
                            "(or pass --overwrite true to train it again)")
        unmark_finished(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


# --- the loop ----------------------------------------------------------------------------------------
def train(recipe: TrainRecipe, accelerator: Accelerator | None = None) -> Policy:
    """Fit a policy on the recipe's dataset; write it (safetensors + tokenizer + report) to output_dir."""
    out = check_output_dir(recipe)
    optim, loop = recipe.train, recipe.loop
    accelerator = accelerator or make_accelerator("bf16" if optim.bf16 else "no", optim.grad_accum, str(out))
    zero3 = configured_zero_stage(accelerator) == 3
    if zero3 and loop.eval_every:
        raise BCLMError("loop.eval_every needs the whole model in one process, but ZeRO-3 shards it: evaluate "
                        "the exported policy instead (bclm eval --policy OUTPUT_DIR), or use ZeRO-2")
    set_seed(loop.seed)
    with whole_models():
        warm_model, warm_tokenizers = initial_model(recipe)
        data = prepare_data(recipe, warm_tokenizers)
        failpoints.point("prepared")
        names = data.task_names
        tok = data.tokenizers[names[0]]      # the layout (vocabulary, special ids) every task shares
        model = warm_model or build_model(recipe.model, tok.vocab_size, data.context_length, tok.bos_id,
                                          tok.eos_id, tok.pad_id)
        # The task with the most continuous dimensions lays out every number slot (a bin's value relative to
        # its data, the basis, is a function of the bin index, margin and companding, alike across tasks).
        widest = max(data.tokenizers.values(), key=lambda t: t.own_number_slots)
        attach_for(model, widest, recipe.model.number_features, fresh=warm_model is None)
    optim = sized_to_data(optim, len(data.train_set), accelerator.num_processes)
    ordinal = ordinal_targets(tok, optim.ordinal_sigma)
    optimizer = make_optimizer(model, optim)
    scheduler = make_scheduler(optimizer, optim)
    sampler = data.sampler(loop.seed)
    loader = torch.utils.data.DataLoader(
        data.train_set, batch_size=optim.batch_size, sampler=sampler,
        drop_last=len(data.train_set) > optim.batch_size, collate_fn=PadCollator(tok.pad_id),
        num_workers=loop.num_workers)
    align_deepspeed(accelerator, optim.grad_clip, optim.grad_accum)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    check_engine(accelerator, model)
    if optim.compile:
        model = torch.compile(model)
    start = _maybe_resume(accelerator, out)
    if accelerator.is_main_process:
        cfg_dict = cfg.to_dict(recipe)
        atomic.write_text(out / "recipe.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
        accelerator.init_trackers("tensorboard", config=_flat_scalars(cfg_dict))
        accelerator.print(f"launch: {describe_launch(accelerator)}")
        atomic.write_json(out / QUANTIZATION_FILE, data.quantization, indent=2)
        accelerator.print(quantization_summary(data.quantization))
        accelerator.print(f"model: {count_parameters(accelerator.unwrap_model(model)) / 1e6:.2f}M parameters, "
                          f"vocab {tok.vocab_size}, {len(data.train_set)} windows, {len(names)} task(s), "
                          f"step_len {sorted({data.tokenizers[n].step_len for n in names})}, context "
                          f"{data.context_length} tokens; {optim.max_steps} steps of {optim.batch_size} windows")
    policy = Policy(accelerator.unwrap_model(model), data.tokenizers, data.context_length, task=names[0],
                    metadata=_policy_metadata(data, recipe.data.history))
    digests: list[str] = []
    stream = _recorded(batches(loader, accelerator, skip=start * optim.grad_accum, sampler=sampler), digests)
    bar = tqdm(total=optim.max_steps, initial=start, desc="train", disable=not (loop.progress and
                                                                                 accelerator.is_main_process))
    metrics_file = out / METRICS_FILE
    val_every = loop.val_every or max(1, optim.max_steps // 20)
    keeper = _keeper(recipe, data, out, zero3, accelerator)
    model.train()
    t0, tokens_seen, window, window_steps = time.perf_counter(), 0.0, {}, 0
    with interrupt.deferred() as term:      # SIGTERM: finish the step, write a checkpoint, stop
        for step in range(start + 1, optim.max_steps + 1):
            for k, v in train_step(model, optimizer, scheduler, stream, accelerator, optim, len(names),
                                       ordinal).items():
                window[k] = window[k] + v if k in window else v
            window_steps += 1
            failpoints.point("step")
            if step == start + 1:
                _write_launch(accelerator, out, digests)
            if step % loop.log_every == 0 or step == optim.max_steps:
                window = _across_processes(accelerator, window)
                tokens_seen += float(window.pop("tokens"))
                stats = summarize_stats(window, window_steps, names)
                window, window_steps = {}, 0
                stats.update(step=step, lr=scheduler.get_last_lr()[0],
                             tokens_per_s=tokens_seen / max(time.perf_counter() - t0, 1e-9))
                _log(accelerator, stats, metrics_file)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['action_accuracy']:.3f}")
            if data.val_set is not None and (step % val_every == 0 or step == optim.max_steps):
                _validate(model, data, accelerator, step, metrics_file, ordinal, keeper)
            if loop.eval_every and step % loop.eval_every == 0 and step < optim.max_steps:
                _evaluate_and_log(policy, data, recipe, step, accelerator, out, metrics_file)
            if loop.save_every and step % loop.save_every == 0 and step < optim.max_steps:
                save_checkpoint(accelerator, out, step, loop.keep_checkpoints)
            bar.update(1)
            if _preempted(accelerator, term) and step < optim.max_steps:
                if not (loop.save_every and step % loop.save_every == 0):
                    save_checkpoint(accelerator, out, step, loop.keep_checkpoints)
                raise KeyboardInterrupt
    bar.close()
    _restore_best(accelerator, model, keeper)
    policy = _export(accelerator, model, policy, out, zero3)
    if accelerator.is_main_process:
        failpoints.point("exported")
        _evaluate_and_log(policy, data, recipe, optim.max_steps, accelerator, out, metrics_file, final=True)
        failpoints.point("evaluated")
        # A model card with the evaluation, so the directory is ready for the Hub (`bclm push`).
        policy_card(out).save(out / CARD_FILE)
        failpoints.point("carded")
        mark_finished(out, optim.max_steps)
    # Every rank returns only once the policy and its report are on disk. The process group stays up
    # (DAgger trains again in it); `launch.shutdown` ends it when the command is done.
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:
        tracker.finish()
    del model, optimizer, scheduler, loader, stream
    policy.model.eval()
    return policy


def _export(accelerator: Accelerator, model: torch.nn.Module, policy: Policy, out: Path, zero3: bool) -> Policy:
    """Save the final policy from the main process. Under ZeRO-3 every rank holds a shard of each weight:
    the ranks gather them into one state dict first, and the policy evaluated and returned is the one
    reloaded from that file (so what is tested is what was exported)."""
    accelerator.wait_for_everyone()
    state_dict = accelerator.get_state_dict(model) if zero3 else None       # a collective under ZeRO-3
    if accelerator.is_main_process:
        policy.save_pretrained(out, state_dict=state_dict)
    accelerator.wait_for_everyone()
    if not zero3:
        return policy
    with whole_models():
        return Policy.from_pretrained(out, device=accelerator.device)


def train_step(model, optimizer, scheduler, stream: Iterator[dict], accelerator: Accelerator,
               optim: OptimConfig, num_tasks: int = 1, ordinal: OrdinalTargets | None = None,
               ) -> dict[str, torch.Tensor]:
    """One optimizer step over `grad_accum` micro-batches; returns tensors (no device sync)."""
    totals: dict[str, torch.Tensor] = {}
    for _ in range(optim.grad_accum):
        batch = next(stream)
        with accelerator.accumulate(model):
            with accelerator.autocast():
                loss, stats = action_loss(model, batch, num_tasks, accelerator, ordinal)
            accelerator.backward(loss)
            if accelerator.sync_gradients and optim.grad_clip > 0:
                norm = accelerator.clip_grad_norm_(model.parameters(), optim.grad_clip)
                if norm is not None:          # DeepSpeed clips inside its step and reports a float
                    stats["grad_norm"] = torch.as_tensor(norm, dtype=torch.float32, device=accelerator.device)
            optimizer.step()
            if accelerator.sync_gradients:
                scheduler.step()
            optimizer.zero_grad(set_to_none=True)
        stats["loss"] = stats["loss"] / optim.grad_accum
        stats["tokens"] = batch["attention_mask"].sum()
        for k, v in stats.items():
            totals[k] = totals[k] + v if k in totals else v
    return totals


def summarize_stats(totals: dict[str, torch.Tensor], steps: int, task_names: list[str] | None = None,
                    prefix: str = "") -> dict[str, float]:
    """Per-step averages of accumulated `train_step` results, as floats for logging; with several tasks
    also `loss/TASK` (unweighted, per action token) and `action_accuracy/TASK`."""
    out = {f"{prefix}loss": float(totals["loss"]) / steps,
           f"{prefix}action_accuracy": float(totals["correct"]) / max(float(totals["action_tokens"]), 1.0)}
    if "grad_norm" in totals:
        out["grad_norm"] = float(totals["grad_norm"]) / steps
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
             ) -> dict[str, float]:
    """Loss and action accuracy over held-out windows (per task too, with several tasks)."""
    model.eval()
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, collate_fn=PadCollator(pad_id))
    totals: dict[str, torch.Tensor] = {}
    for batch in loader:
        batch = {k: v.to(accelerator.device) for k, v in batch.items()}
        with accelerator.autocast():
            _, stats = action_loss(model, batch, len(task_names or []), accelerator, ordinal)
        stats["loss"] = stats["loss"] * stats["action_tokens"]       # token-weighted over batches
        for k, v in stats.items():
            totals[k] = totals[k] + v if k in totals else v
    model.train()
    tokens = max(float(totals["action_tokens"]), 1.0)
    out = summarize_stats(totals, 1, task_names, prefix="val_")
    out["val_loss"] = float(totals["loss"]) / tokens
    return out


def _validate(model, data: Prepared, accelerator: Accelerator, step: int, metrics_file: Path,
              ordinal: OrdinalTargets | None, keeper: KeepBest | None) -> None:
    tok = data.tokenizers[data.task_names[0]]
    stats = validate(model, data.val_set, tok.pad_id, accelerator, data.task_names, ordinal=ordinal)
    if keeper is not None:
        keeper.update(accelerator.unwrap_model(model), stats, step, accelerator.is_main_process)
    _log(accelerator, {"step": step, **stats}, metrics_file)


def best_metric(setting: str, tokenizers: dict[str, BCTokenizer]) -> str:
    """The validation metric `loop.keep_best` chooses on ('' = keep the last weights); see its help for 'auto'."""
    if setting != "auto":
        return setting
    return "" if any(t.continuous_actions for t in tokenizers.values()) else "val_action_accuracy"


def _keeper(recipe: TrainRecipe, data: Prepared, out: Path, zero3: bool, accelerator: Accelerator) -> KeepBest | None:
    metric = best_metric(recipe.loop.keep_best, data.tokenizers)
    if data.val_set is None or not metric:
        return None
    if zero3:       # each rank holds a shard of every weight: there is no whole model to keep
        accelerator.print("loop.keep_best is ignored under ZeRO-3: the last weights are exported")
        return None
    return KeepBest(out, metric)


def _restore_best(accelerator: Accelerator, model: torch.nn.Module, keeper: KeepBest | None) -> None:
    accelerator.wait_for_everyone()            # the main process wrote the file
    if keeper is not None and keeper.restore(accelerator.unwrap_model(model)):
        accelerator.print(f"exporting the weights of step {keeper.step}, the best {keeper.metric} "
                          f"({keeper.value:.4f})")


def _policy_metadata(data: Prepared, history: str) -> dict[str, Any]:
    """What a session needs besides the model: the env(s), and a history layout other than the full one."""
    layout = {"history": history} if history != "full" else {}
    if len(data.tasks) == 1:
        return {"env": data.tasks[0].env, **layout}
    return {"env": data.tasks[0].env, "envs": {t.name: t.env for t in data.tasks}, **layout}


def _evaluate_and_log(policy: Policy, data: Prepared, recipe: TrainRecipe, step: int, accelerator: Accelerator,
                      out: Path, metrics_file: Path, final: bool = False) -> dict[str, Any] | None:
    if not accelerator.is_main_process:
        return None
    if len(data.tasks) == 1:
        report = evaluate(policy, get_task(recipe.eval.env or data.tasks[0].env), recipe.eval)
        scalars = _scalars(report, "eval/")
    else:
        report = evaluate_tasks(policy, {t.name: t.env for t in data.tasks}, recipe.eval)
        scalars = {"eval/success_rate": report["success_rate"]}
        for name, task_report in report["tasks"].items():
            scalars.update(_scalars(task_report, f"eval/{name}/"))
    report["step"] = step
    _log(accelerator, {"step": step, **scalars}, metrics_file)
    if final:
        write_report(report, out / "eval_report.json")
    return report


def _scalars(report: dict[str, Any], prefix: str) -> dict[str, float]:
    return {f"{prefix}{k}": v for k, v in report.items() if isinstance(v, int | float) and k != "seed"}


def _preempted(accelerator: Accelerator, term: Any) -> bool:
    """Whether any process got a SIGTERM (all of them must write the checkpoint together)."""
    if accelerator.num_processes == 1:
        return term.requested
    flag = torch.tensor([float(term.requested)], device=accelerator.device)
    return bool(accelerator.reduce(flag, reduction="sum").item() > 0)


def _maybe_resume(accelerator: Accelerator, out: Path) -> int:
    ckpt = latest_checkpoint(out)
    if ckpt is None:
        if accelerator.is_main_process:
            trim_metrics(out, 0)
        return 0
    accelerator.load_state(str(ckpt))
    step = int(atomic.read_json(ckpt / STEP_MARKER)["step"])
    if accelerator.is_main_process:
        trim_metrics(out, step)
    accelerator.print(f"resumed from {ckpt} (step {step})")
    return step


def _recorded(stream: Iterator[dict], digests: list[str]) -> Iterator[dict]:
    """`stream`, with a digest of its first batch put in `digests` (which windows this rank got)."""
    batch = next(stream)
    digests.append(hashlib.sha1(batch["input_ids"].cpu().numpy().tobytes()).hexdigest()[:16])
    yield batch
    yield from stream


def _write_launch(accelerator: Accelerator, out: Path, digests: list[str]) -> None:
    """launch.json: what accelerate set up, and each rank's first batch (ranks must see different data)."""
    per_rank = gather_object(digests)
    if accelerator.is_main_process:
        info = {"launch": describe_launch(accelerator), "distributed_type": accelerator.distributed_type.value,
                "num_processes": accelerator.num_processes, "zero_stage": configured_zero_stage(accelerator),
                "mixed_precision": accelerator.mixed_precision, "first_batch_sha1_per_rank": per_rank}
        atomic.write_json(out / "launch.json", info, indent=2)


def _across_processes(accelerator: Accelerator, window: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A logging window's sums over every rank; loss and grad norm (already global) averaged instead."""
    if accelerator.num_processes == 1:
        return window
    total = accelerator.reduce(window, reduction="sum")
    for key in ("loss", "grad_norm"):
        if key in total:
            total[key] = total[key] / accelerator.num_processes
    return total


def _log(accelerator: Accelerator, stats: dict[str, Any], metrics_file: Path) -> None:
    step = int(stats["step"])
    accelerator.log({k: v for k, v in stats.items() if k != "step"}, step=step)
    if accelerator.is_main_process:
        with metrics_file.open("a") as f:
            f.write(json.dumps({k: (round(v, 6) if isinstance(v, float) and math.isfinite(v) else v)
                                for k, v in stats.items()}) + "\n")


def quantization_summary(reports: dict[str, dict]) -> str:
    """One line per task: the largest round-trip error and clip rate of its observations and actions."""
    lines = []
    for task, report in reports.items():
        parts = []
        for kind in ("observation", "action"):
            leaves = report[kind].values()
            err = max((max(leaf.get("max_abs_error", [0.0]) or [0.0]) for leaf in leaves), default=0.0)
            clip = max((max(leaf.get("clip_fraction", [0.0]) or [0.0]) for leaf in leaves), default=0.0)
            parts.append(f"{kind}s max error {err:.3g}, clipped {clip:.1%}")
        lines.append(f"tokenizer ({task}): " + "; ".join(parts))
    return "\n".join(lines)


def _flat_scalars(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_scalars(v, f"{prefix}{k}."))
        elif isinstance(v, int | float | str | bool):
            out[f"{prefix}{k}"] = v
    return out
