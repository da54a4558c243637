"""Behavior cloning: next-token cross-entropy on action tokens, under accelerate (one loop for 1..N devices)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedModel

from bclm import atomic, dirlock, failpoints, interrupt
from bclm import config as cfg
from bclm.data.collate import PackCollator, PadCollator
from bclm.embeddings import attach_for, reindex_numbers, shared_radix, word_rows
from bclm.envs import get_task
from bclm.errors import BCLMError
from bclm.eval.evaluate import evaluate, evaluate_tasks, write_report
from bclm.hub.cards import CARD_FILE, policy_card
from bclm.models import build_model
from bclm.policy import Policy
from bclm.state import attach_state, fit_read_out, save_state
from bclm.tokenizers import BCTokenizer
from bclm.trainer.best import KeepBest
from bclm.trainer.config import OptimConfig, TrainRecipe
from bclm.trainer.data import EpochSampler, Prepared, prepare_data, verify_datasets
from bclm.trainer.launch import (
    align_deepspeed,
    check_engine,
    configured_zero_stage,
    describe_launch,
    make_accelerator,
    whole_models,
)
from bclm.trainer.ordinal import OrdinalTargets, ordinal_targets
from bclm.trainer.regression import RegressionTargets, regression_targets
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
from bclm.trainer.select import select_laws
from bclm.trainer.step import make_optimizer, make_scheduler, sized_to_data, summarize_stats, train_step, validate
from bclm.trainer.trackers import make_trackers

QUANTIZATION_FILE = "quantization_report.json"
SELECT_FILE = "law_selection.json"


# --- small steps -------------------------------------------------------------------------------------
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
    verify_datasets(recipe)               # a dataset or a mixture, checked before anything is written
    return Path(recipe.output_dir)


def claim_output_dir(recipe: TrainRecipe, out: Path) -> None:
    """Under the directory's lock: a finished run is kept unless overwritten, and the directory made."""
    if run_finished(out):
        if not recipe.overwrite:
            raise BCLMError(f"{out} already holds a finished policy; choose another --output-dir "
                            "(or pass --overwrite true to train it again)")
        unmark_finished(out)
    out.mkdir(parents=True, exist_ok=True)


# --- the run ----------------------------------------------------------------------------------------
@dataclass
class _Run:
    """What a training run carries from its setup through its steps to its export."""
    out: Path
    data: Prepared
    optim: OptimConfig                  # sized to the data
    model: Any                          # prepared (wrapped by accelerate, compiled when asked)
    optimizer: Any
    scheduler: Any
    loader: torch.utils.data.DataLoader
    sampler: EpochSampler
    ordinal: OrdinalTargets | None
    regression: RegressionTargets | None
    zero3: bool
    start: int                          # the optimizer steps already done (resumed from a checkpoint)
    keeper: KeepBest | None = None

    @property
    def tokenizer(self) -> BCTokenizer:
        """The layout (vocabulary, special ids) every task shares."""
        return self.data.tokenizers[self.data.task_names[0]]


def train(recipe: TrainRecipe, accelerator: Accelerator | None = None) -> Policy:
    """Fit a policy on the recipe's dataset; write it (safetensors + tokenizer + report) to output_dir, which
    no other bclm process may write meanwhile."""
    out = check_output_dir(recipe)
    with dirlock.exclusive(out):
        claim_output_dir(recipe, out)
        return _train(recipe, out, accelerator)


def _train(recipe: TrainRecipe, out: Path, accelerator: Accelerator | None) -> Policy:
    accelerator = accelerator or make_accelerator(
        "bf16" if recipe.train.bf16 else "no", recipe.train.grad_accum, str(out),
        log_with=make_trackers(recipe.loop.report_to, out, recipe.loop.project) or None)
    run = _set_up(recipe, accelerator, out)
    if accelerator.is_main_process:
        _announce(recipe, run, accelerator)
    run.keeper = _keeper(recipe, run.data, out, run.zero3, accelerator)
    policy = Policy(accelerator.unwrap_model(run.model), run.data.tokenizers, run.data.context_length,
                    task=run.data.task_names[0], metadata=_policy_metadata(run.data, recipe.data.history))
    _optimize(recipe, run, policy, accelerator)
    _restore_best(accelerator, run.model, run.keeper)
    policy = _export(accelerator, run.model, policy, out, run.zero3)
    if accelerator.is_main_process:
        _select(recipe, run, policy, accelerator)
        _evaluate_and_card(recipe, run, policy, accelerator)
    # Every rank returns only once the policy and its report are on disk. The process group stays up
    # (DAgger trains again in it); `launch.shutdown` ends it when the command is done.
    accelerator.wait_for_everyone()
    for tracker in accelerator.trackers:
        tracker.finish()
    del run                     # the engine, optimizer state and loader workers go now, not at the caller's
    policy.model.eval()
    return policy


def _set_up(recipe: TrainRecipe, accelerator: Accelerator, out: Path) -> _Run:
    """Data, model, optimizer and schedule, prepared by accelerate, resumed from the last checkpoint if any."""
    optim, loop = recipe.train, recipe.loop
    zero3 = configured_zero_stage(accelerator) == 3
    if zero3 and loop.eval_every:
        raise BCLMError("loop.eval_every needs the whole model in one process, but ZeRO-3 shards it: evaluate "
                        "the exported policy instead (bclm eval --policy OUTPUT_DIR), or use ZeRO-2")
    if loop.deterministic:         # cuBLAS needs a fixed workspace to be deterministic (read at its first use)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    set_seed(loop.seed)
    torch.use_deterministic_algorithms(loop.deterministic)      # both ways: it outlives the run in-process
    model, data = _model_and_data(recipe)
    optim = sized_to_data(optim, len(data.train_set), accelerator.num_processes, _continuous(data.tokenizers))
    tok = data.tokenizers[data.task_names[0]]
    optimizer = make_optimizer(model, optim)
    scheduler = make_scheduler(optimizer, optim)
    sampler = data.sampler(loop.seed)
    collate = PackCollator(tok.pad_id, data.context_length) if optim.packing else PadCollator(tok.pad_id)
    loader = torch.utils.data.DataLoader(
        data.train_set, batch_size=optim.batch_size, sampler=sampler,
        drop_last=len(data.train_set) > optim.batch_size, collate_fn=collate, num_workers=loop.num_workers)
    align_deepspeed(accelerator, optim.grad_clip, optim.grad_accum)
    model, optimizer, loader, scheduler = accelerator.prepare(model, optimizer, loader, scheduler)
    check_engine(accelerator, model)
    if optim.compile:
        model = torch.compile(model)
    return _Run(out, data, optim, model, optimizer, scheduler, loader, sampler,
                ordinal_targets(tok, optim.ordinal_sigma),
                regression_targets(data.tokenizers, optim.residual_penalty), zero3,
                start=_maybe_resume(accelerator, out))


def _model_and_data(recipe: TrainRecipe) -> tuple[PreTrainedModel, Prepared]:
    """The tokenized data and the model for its vocabulary: fresh, or warm-started from `init_from`."""
    with whole_models():
        warm_model, warm_tokenizers = initial_model(recipe)
        data = prepare_data(recipe, warm_tokenizers)
        failpoints.point("prepared")
        tok = data.tokenizers[data.task_names[0]]
        if data.covered:                # the warm model's rows follow the bins its data widened
            reindex_numbers(warm_model, data.covered, data.tokenizers)
        model = warm_model or build_model(recipe.model, tok.vocab_size, data.context_length, tok.bos_id,
                                          tok.eos_id, tok.pad_id)
        # The task with the most continuous dimensions lays out every number slot (a bin's value relative to
        # its data, the basis, is a function of the bin index, margin and companding, alike across tasks).
        widest = max(data.tokenizers.values(), key=lambda t: t.own_number_slots)
        radix = shared_radix(data.tokenizers.values()) if recipe.model.symbol_factors else None
        words = word_rows(data.tokenizers.values(), radix, recipe.model.word_factors)
        attach_for(model, widest, recipe.model.number_features, fresh=warm_model is None, radix=radix, words=words)
        if recipe.model.state_token:
            state = attach_state(model, data.tokenizers, fresh=warm_model is None)
            if state is not None:               # a warm start trains the whole policy, whatever was kept
                state.use_trunk()
            if warm_model is None:
                fit_read_out(model, [(t.name, data.tokenizers[t.name], t.train.tokens) for t in data.tasks])
    return model, data


def _announce(recipe: TrainRecipe, run: _Run, accelerator: Accelerator) -> None:
    """The recipe as run, the tracker, and what is about to be trained (main process)."""
    cfg_dict = cfg.to_dict(recipe)
    atomic.write_text(run.out / "recipe.yaml", yaml.safe_dump(cfg_dict, sort_keys=False))
    accelerator.init_trackers(recipe.loop.project, config=_flat_scalars(cfg_dict))
    accelerator.print(f"launch: {describe_launch(accelerator)}")
    atomic.write_json(run.out / QUANTIZATION_FILE, run.data.quantization, indent=2)
    accelerator.print(quantization_summary(run.data.quantization, run.data.covered))
    data, tok = run.data, run.tokenizer
    asked = recipe.train.warmup_steps
    if run.optim.warmup_steps < asked != OptimConfig.__dataclass_fields__["warmup_steps"].default:
        print(f"warning: train.warmup_steps {asked} is more than a tenth of this run's {run.optim.max_steps} "
              f"steps (sized to the data); warming up over {run.optim.warmup_steps}", file=sys.stderr)
    accelerator.print(f"model: {accelerator.unwrap_model(run.model).num_parameters() / 1e6:.2f}M parameters, "
                      f"vocab {tok.vocab_size}, {len(data.train_set)} windows, {len(data.task_names)} task(s), "
                      f"step_len {sorted({t.step_len for t in data.tokenizers.values()})}, context "
                      f"{data.context_length} tokens; {run.optim.max_steps} steps of {run.optim.batch_size} windows")


def _optimize(recipe: TrainRecipe, run: _Run, policy: Policy, accelerator: Accelerator) -> None:
    """The optimizer steps from `run.start` on, with logging, validation, evaluation and checkpoints as the
    recipe asks. A SIGTERM finishes the step, writes a checkpoint and stops (KeyboardInterrupt)."""
    optim, loop, names = run.optim, recipe.loop, run.data.task_names
    digests: list[str] = []
    stream = _recorded(batches(run.loader, accelerator, skip=run.start * optim.grad_accum, sampler=run.sampler),
                       digests)
    bar = tqdm(total=optim.max_steps, initial=run.start, desc="train",
               disable=not (loop.progress and accelerator.is_main_process))
    metrics_file = run.out / METRICS_FILE
    val_every = loop.val_every or max(1, optim.max_steps // 20)
    log = _LogWindow(names)
    run.model.train()
    with interrupt.deferred() as term:
        for step in range(run.start + 1, optim.max_steps + 1):
            log.add(train_step(run.model, run.optimizer, run.scheduler, stream, accelerator, optim, len(names),
                               run.ordinal, run.regression))
            failpoints.point("step")
            if step == run.start + 1:
                _write_launch(accelerator, run.out, digests)
            if step % loop.log_every == 0 or step == optim.max_steps:
                stats = log.flush(accelerator, step, run.scheduler.get_last_lr()[0])
                _log(accelerator, stats, metrics_file)
                bar.set_postfix(loss=f"{stats['loss']:.3f}", acc=f"{stats['action_accuracy']:.3f}")
            if run.data.val_set is not None and (step % val_every == 0 or step == optim.max_steps):
                _validate(run, accelerator, step, metrics_file)
            if loop.eval_every and step % loop.eval_every == 0 and step < optim.max_steps:
                _evaluate_and_log(policy, run.data, recipe, step, accelerator, run.out, metrics_file)
            if loop.save_every and step % loop.save_every == 0 and step < optim.max_steps:
                save_checkpoint(accelerator, run.out, step, loop.keep_checkpoints)
            bar.update(1)
            if _preempted(accelerator, term) and step < optim.max_steps:
                if not (loop.save_every and step % loop.save_every == 0):
                    save_checkpoint(accelerator, run.out, step, loop.keep_checkpoints)
                raise KeyboardInterrupt
    bar.close()


class _LogWindow:
    """`train_step` results summed over the steps since the last log line, and the tokens/s since the start."""

    def __init__(self, task_names: list[str]):
        self.task_names = task_names
        self.sums: dict[str, torch.Tensor] = {}
        self.steps = 0
        self.tokens = 0.0
        self.t0 = time.perf_counter()

    def add(self, stats: dict[str, torch.Tensor]) -> None:
        for k, v in stats.items():
            self.sums[k] = self.sums[k] + v if k in self.sums else v
        self.steps += 1

    def flush(self, accelerator: Accelerator, step: int, lr: float) -> dict[str, Any]:
        """The window's averages over every rank, as logged; the window starts again."""
        window = _across_processes(accelerator, self.sums)
        self.tokens += float(window.pop("tokens"))
        stats = summarize_stats(window, self.steps, self.task_names)
        self.sums, self.steps = {}, 0
        stats.update(step=step, lr=lr, tokens_per_s=self.tokens / max(time.perf_counter() - self.t0, 1e-9))
        return stats


def _select(recipe: TrainRecipe, run: _Run, policy: Policy, accelerator: Accelerator) -> None:
    """Per task, the trained policy or the least-squares law alone, whichever succeeds more often on the
    selection episodes (`bclm.trainer.select`); the choice saved with the policy and written to SELECT_FILE."""
    choices = select_laws(policy, run.data, recipe.eval, recipe.eval.env)
    if not choices:
        return
    if any(c["kept"] == "law" for c in choices.values()):
        save_state(policy.model, run.out)
    atomic.write_json(run.out / SELECT_FILE, choices, indent=2)
    accelerator.print("kept per task (success on the selection episodes, the trained policy / the law alone): "
                      + ", ".join(f"{t} {c['kept']} ({c['policy']:.0%} / "
                                  f"{'-' if c['law'] is None else format(c['law'], '.0%')})"
                                  for t, c in choices.items()))


def _evaluate_and_card(recipe: TrainRecipe, run: _Run, policy: Policy, accelerator: Accelerator) -> None:
    """The final evaluation, a model card with it (ready for `bclm push`), and the run marked finished."""
    failpoints.point("exported")
    _evaluate_and_log(policy, run.data, recipe, run.optim.max_steps, accelerator, run.out, run.out / METRICS_FILE,
                      final=True)
    failpoints.point("evaluated")
    policy_card(run.out).save(run.out / CARD_FILE)
    failpoints.point("carded")
    mark_finished(run.out, run.optim.max_steps)


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


def _validate(run: _Run, accelerator: Accelerator, step: int, metrics_file: Path) -> None:
    stats = validate(run.model, run.data.val_set, run.tokenizer.pad_id, accelerator, run.data.task_names,
                     ordinal=run.ordinal, regression=run.regression)
    if run.keeper is not None:
        run.keeper.update(accelerator.unwrap_model(run.model), stats, step, accelerator.is_main_process)
    _log(accelerator, {"step": step, **stats}, metrics_file)


def best_metric(setting: str, tokenizers: dict[str, BCTokenizer]) -> str:
    """The validation metric `loop.keep_best` chooses on ('' = keep the last weights); see its help for 'auto'."""
    if setting != "auto":
        return setting
    return "" if _continuous(tokenizers) else "val_action_accuracy"


def _continuous(tokenizers: dict[str, BCTokenizer]) -> bool:
    """Whether any task has a continuous action: the 'auto' settings of train.epochs and loop.keep_best."""
    return any(t.continuous_actions for t in tokenizers.values())


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
    videos = out / "videos" if final else None      # the final evaluation only, for the model card
    if len(data.tasks) == 1:
        report = evaluate(policy, get_task(data.env_of(data.tasks[0].name, recipe.eval.env)), recipe.eval,
                          video_dir=videos)
        scalars = _scalars(report, "eval/")
    else:
        report = evaluate_tasks(policy, {t.name: t.env for t in data.tasks}, recipe.eval, video_dir=videos)
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


def quantization_summary(reports: dict[str, dict], covered: dict[str, Any] | None = None) -> str:
    """One line per task: the largest round-trip error and clip rate of its observations and actions, and
    whether a warm start's bounds widened to cover the data (`covered`)."""
    lines = []
    for task, report in reports.items():
        parts = []
        for kind in ("observation", "action"):
            err, clip = (largest(report, kind, key) for key in ("max_abs_error", "clip_fraction"))
            parts.append(f"{kind}s max error {err:.3g}, clipped {clip:.1%}")
        widened = "; bounds widened to cover the data" if task in (covered or {}) else ""
        lines.append(f"tokenizer ({task}): " + "; ".join(parts) + widened)
    return "\n".join(lines)


def largest(report: dict, kind: str, key: str) -> float:
    """The largest per-dimension `key` of a quantization report's "observation" or "action" leaves (0 if none)."""
    return max((max(leaf.get(key) or [0.0]) for leaf in report[kind].values()), default=0.0)


def _flat_scalars(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat_scalars(v, f"{prefix}{k}."))
        elif isinstance(v, int | float | str | bool):
            out[f"{prefix}{k}"] = v
    return out
