"""The Accelerator for however bclm was launched, and the checks that it is the setup the launcher meant.

Several wrong setups train without an error while doing the wrong thing (seen here with accelerate 1.15
and DeepSpeed 0.19): `cpu=True` silently drops DeepSpeed and runs DDP; DeepSpeed on CPU without the gloo
backend leaves accelerate believing it has one process while DeepSpeed has two, so the data is not split.
So the Accelerator is built for the launch (gloo where there is no GPU, `cpu=True` only without DeepSpeed)
and `check_launch` compares what the launcher, accelerate, torch.distributed and DeepSpeed each believe.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator, DistributedType, PartialState
from accelerate.state import AcceleratorState
from accelerate.utils import GradientAccumulationPlugin, InitProcessGroupKwargs

from bclm.distributed import launched_world_size
from bclm.errors import BCLMError


def deepspeed_requested() -> bool:
    return os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true"


# Ranks wait at a barrier while rank 0 evaluates (rollouts at the end of training, a long Meta-World
# evaluation included): the default of 10 minutes would end the job there.
PROCESS_GROUP_TIMEOUT = timedelta(hours=3)


def _process_group_kwargs() -> dict[str, Any]:
    """gloo where there is no GPU (DeepSpeed's default would be NCCL), and a long timeout."""
    kwargs: dict[str, Any] = {"timeout": PROCESS_GROUP_TIMEOUT}
    if not torch.cuda.is_available():
        kwargs["backend"] = "gloo"
    return kwargs


def make_accelerator(mixed_precision: str, grad_accum: int, project_dir: str | None = None,
                     log_with: Any = None) -> Accelerator:
    """An Accelerator for this launch: GPUs with NCCL, or CPU processes with gloo (DDP or DeepSpeed)."""
    cpu = not torch.cuda.is_available()
    handlers = [InitProcessGroupKwargs(**_process_group_kwargs())] if launched_world_size() > 1 else []
    accelerator = Accelerator(
        cpu=cpu and not deepspeed_requested(), mixed_precision=mixed_precision,
        # The batch stream is endless across epochs: no forced sync (and counter reset) at an epoch's end,
        # which would shift accumulation groups off the optimizer steps when an epoch is not a multiple.
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=grad_accum, sync_with_dataloader=False),
        log_with=log_with, project_dir=project_dir, kwargs_handlers=handlers,
        # accelerate would step the schedule once per process per optimizer step (it assumes the schedule
        # was written for one process's batches); bclm's max_steps counts optimizer steps, so the trainer
        # steps it once per optimizer step, whatever the number of processes.
        step_scheduler_with_optimizer=False)
    check_launch(accelerator)
    return accelerator


def configured_zero_stage(accelerator: Accelerator) -> int | None:
    """The ZeRO stage the DeepSpeed config asks for (None without DeepSpeed)."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return None
    config: Any = plugin.deepspeed_config
    if isinstance(config, (str, Path)):
        config = json.loads(Path(config).read_text())
    return int(config.get("zero_optimization", {}).get("stage", 0))


@contextlib.contextmanager
def whole_models() -> Iterator[None]:
    """Build and load models whole in every process, also under ZeRO-3. accelerate registers its DeepSpeed
    config with transformers whatever `zero3_init_flag` says, and transformers then builds and loads every
    model as zero.Init shards (an exported policy would load as empty tensors). Whole, the initial weights
    are those of a single-process run with the same seed; DeepSpeed shards the model at `prepare`."""
    plugin = AcceleratorState().deepspeed_plugin if AcceleratorState._shared_state else None
    if plugin is None:
        yield
        return
    from transformers.integrations import unset_hf_deepspeed_config

    unset_hf_deepspeed_config()
    try:
        yield
    finally:
        plugin.set_deepspeed_weakref()      # what accelerate keeps registered, for the rest of the run


def check_launch(accelerator: Accelerator) -> None:
    """Refuse a launch whose parts disagree on the number of processes or on DeepSpeed."""
    world = launched_world_size()
    seen = {"the launcher (WORLD_SIZE)": world, "accelerate": accelerator.num_processes}
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        seen["torch.distributed"] = torch.distributed.get_world_size()
    if accelerator.distributed_type == DistributedType.DEEPSPEED:
        from deepspeed import comm

        if comm.is_initialized():
            seen["DeepSpeed"] = comm.get_world_size()
    if len(set(seen.values())) > 1:
        parts = ", ".join(f"{k} {v}" for k, v in seen.items())
        raise BCLMError(f"the processes disagree on how many there are ({parts}): data would not be split "
                        "as the launch meant. On CPU, launch DDP with `--multi_gpu` (or torchrun) and DeepSpeed "
                        "with its config; see recipes/accelerate/")
    if deepspeed_requested() and accelerator.distributed_type != DistributedType.DEEPSPEED:
        raise BCLMError(f"the launch asked for DeepSpeed (ACCELERATE_USE_DEEPSPEED=true) but accelerate set up "
                        f"{accelerator.distributed_type.value}: is deepspeed installed "
                        "(pip install -e '.[deepspeed]')?")


def align_deepspeed(accelerator: Accelerator, grad_clip: float, grad_accum: int) -> None:
    """Before `prepare`: DeepSpeed's clipping and accumulation are the recipe's. accelerate would fill an
    "auto" clipping with 1.0 whatever the recipe says, and a fixed value in the JSON that differs from the
    recipe would silently win; the first is filled here, the second refused."""
    plugin = accelerator.state.deepspeed_plugin
    if plugin is None:
        return
    config = plugin.deepspeed_config
    for key, ours, field in (("gradient_clipping", float(grad_clip), "train.grad_clip"),
                             ("gradient_accumulation_steps", int(grad_accum), "train.grad_accum")):
        value = config.get(key, "auto")
        if value == "auto":
            config[key] = ours
        elif float(value) != ours:
            raise BCLMError(f"the DeepSpeed config sets {key} {value} but the recipe's {field} is {ours}: "
                            f'set it to "auto" in the JSON (bclm fills it) or make them agree')


def check_engine(accelerator: Accelerator, model: torch.nn.Module) -> None:
    """After `prepare`: the DeepSpeed engine runs the ZeRO stage its config asks for."""
    stage = configured_zero_stage(accelerator)
    if stage is None:
        return
    engine_stage = model.zero_optimization_stage() if hasattr(model, "zero_optimization_stage") else None
    if engine_stage != stage:
        raise BCLMError(f"the DeepSpeed config asks for ZeRO stage {stage} but the engine runs {engine_stage}")


def shutdown() -> None:
    """End the process group cleanly once a command is done. Freeing the engines first and waiting for
    every rank avoided the abort at interpreter exit seen with ZeRO-3 on gloo (a thread racing shutdown)."""
    gc.collect()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def init_processes() -> None:
    """Join the launch's process group before any Accelerator exists (DAgger collects before it trains)."""
    if launched_world_size() > 1 and not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        PartialState(cpu=not torch.cuda.is_available() and not deepspeed_requested(), **_process_group_kwargs())


def describe_launch(accelerator: Accelerator) -> str:
    """What accelerate (and DeepSpeed) set up: the line to check before trusting a multi-process run."""
    stage = configured_zero_stage(accelerator)
    zero = f", ZeRO stage {stage}" if stage is not None else ""
    return (f"{accelerator.distributed_type.value}, {accelerator.num_processes} process(es){zero}, "
            f"device {accelerator.device}, mixed precision {accelerator.mixed_precision}")
