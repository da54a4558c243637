"""The training recipe: one typed config tree, filled from YAML and command-line overrides."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from bclm.config import option
from bclm.data.sequences import DataConfig
from bclm.errors import BCLMError
from bclm.eval.evaluate import EvalConfig
from bclm.models import ModelConfig
from bclm.tokenizers import TokenizerConfig
from bclm.trainer.best import HIGHER_IS_BETTER
from bclm.trainer.trackers import check_trackers


@dataclass
class OptimConfig:
    epochs: float = option(
        -1.0, "Training length in passes over the training windows; the step count this gives is capped by "
              "max_steps (0 = exactly max_steps). -1 = auto: 50 when every action is discrete, 100 when any is "
              "continuous (its 256-way bins fit slowly: LunarLanderContinuous from 1,500 labels reached 52-63% "
              "action accuracy and 57% success in 50 passes, 81-87% and 87% in 100).")
    max_steps: int = option(2000, "Optimizer steps: the cap on the steps `epochs` gives, or the length itself "
                                  "when epochs is 0.")
    batch_size: int = option(64, "Windows per optimizer step (per process, before gradient accumulation).")
    grad_accum: int = option(1, "Micro-batches accumulated per optimizer step.")
    lr: float = option(5e-4, "Peak learning rate of AdamW.")
    schedule: Literal["cosine", "wsd", "constant"] = option(
        "cosine", "Learning rate after the warmup: cosine (from the peak down to min_lr_ratio over the run), wsd "
                  "(warmup-stable-decay: the peak until the last decay_fraction of the steps, then a cosine down to "
                  "min_lr_ratio; more steps at the peak, and a run that can be lengthened) or constant.")
    decay_fraction: float = option(0.2, "wsd: the share of the steps spent decaying.")
    min_lr_ratio: float = option(0.1, "Final learning rate of the cosine and wsd schedules, as a fraction of the peak.")
    warmup_steps: int = option(100, "Linear warmup steps.")
    ordinal_sigma: float = option(
        0.0, "Width in bins of the HL-Gauss target of continuous action tokens chosen among bins "
             "(tokenizer.action_head bins): cross-entropy against a Gaussian over the neighbouring bins, so near "
             "misses cost little (0 = plain cross-entropy). Regressed dimensions (the default) ignore it.")
    obs_loss_weight: float = option(
        0.0, "Observation prediction (JAT's kappa): the training loss adds this times the mean next-token "
             "cross-entropy of the windows' observation tokens, a dense auxiliary signal next to the one action "
             "per step (0 = actions only). The logged loss, validation and keep-the-best stay on the actions.")
    residual_penalty: float = option(
        0.0, "With the state token's linear read-out of regressed action dimensions: the training loss adds this "
             "times the mean square of what the transformer adds to the linear law, in the action's normalised "
             "units (a Gaussian prior that the law is linear unless the data say otherwise; 0 = none). Off by "
             "default: 0.1 did not measure better beyond noise (docs/results/continuous.md). The logged loss, "
             "validation and keep-the-best stay on the actions.")
    weight_decay: float = option(0.1, "AdamW weight decay (not applied to norms and biases).")
    betas: tuple[float, float] = option((0.9, 0.95), "AdamW betas.")
    grad_clip: float = option(1.0, "Clip the global gradient norm to this (0 disables).")
    bf16: bool = option(False, "bf16 autocast (CPUs with avx512_bf16 and recent GPUs).")
    compile: bool = option(False, "torch.compile the model (faster steps after a warm-up compile).")
    packing: bool = option(
        True, "Pack a batch's windows end to end into rows of the context's length, with no attention across "
              "windows, instead of padding each to the longest: the same loss on fewer tokens where window "
              "lengths differ (mixtures of tasks, episode starts).")

    def __post_init__(self) -> None:
        for name in ("max_steps", "batch_size", "grad_accum"):
            if getattr(self, name) < 1:
                raise BCLMError(f"train.{name} must be >= 1, got {getattr(self, name)}")
        if self.epochs < 0 and self.epochs != -1:
            raise BCLMError(f"train.epochs must be >= 0, or -1 for auto, got {self.epochs}")
        if not self.obs_loss_weight >= 0:
            raise BCLMError(f"train.obs_loss_weight must be >= 0, got {self.obs_loss_weight}")
        if not self.residual_penalty >= 0:
            raise BCLMError(f"train.residual_penalty must be >= 0, got {self.residual_penalty}")
        if not self.ordinal_sigma >= 0:
            raise BCLMError(f"train.ordinal_sigma must be >= 0 (bins), got {self.ordinal_sigma}")
        if not 0 < self.decay_fraction <= 1:
            raise BCLMError(f"train.decay_fraction must be in (0, 1], got {self.decay_fraction}")
        if not self.lr > 0:
            raise BCLMError(f"train.lr must be > 0, got {self.lr}")
        if self.warmup_steps < 0 or (not self.epochs and self.warmup_steps >= self.max_steps):
            raise BCLMError(f"train.warmup_steps must be >= 0 and below train.max_steps ({self.max_steps}) when "
                            f"train.epochs is 0, got {self.warmup_steps}")


@dataclass
class LoopConfig:
    seed: int = option(0, "Seed for model initialisation and data order.")
    deterministic: bool = option(
        False, "Bitwise-repeatable training: torch's deterministic algorithms, so that two runs with the same "
               "seed (and a killed run resumed) give identical weights on the same machine and thread count "
               "(OMP_NUM_THREADS). Costs some speed; see docs/guides/reliability.md.")
    log_every: int = option(25, "Log loss and action accuracy every N steps (tensorboard + metrics.jsonl).")
    eval_every: int = option(0, "Evaluation rollouts every N steps (0 = only at the end).")
    val_every: int = option(0, "Validate on the held-out episodes every N steps (0 = 20 times per run).")
    keep_best: str = option(
        "auto", "With held-out episodes, export the weights with the best value of this (val_action_accuracy or "
                "val_loss) rather than the last ones ('' = the last). 'auto': val_action_accuracy when every action "
                "is discrete, the last weights when any is continuous (exact-bin accuracy then measures a good "
                "action poorly: on LunarLanderContinuous it exported step 348 of 1,953 and 0% success, where the "
                "last weights gave 95%).")
    save_every: int = option(0, "Save a resumable checkpoint every N steps (0 = only the final policy).")
    keep_checkpoints: int = option(2, "Keep the newest N checkpoints and delete older ones (0 = keep all).")
    num_workers: int = option(0, "DataLoader worker processes.")
    progress: bool = option(True, "Show a progress bar.")
    report_to: list[str] = option(
        ["tensorboard"], "Experiment trackers: tensorboard (OUTPUT_DIR/tensorboard), trackio (local, under "
                         "TRACKIO_DIR), wandb (offline unless WANDB_MODE=online); [] for none. A resumed run "
                         "continues the same tracker run.")
    project: str = option("bclm", "The trackio / wandb project the runs are logged under.")

    def __post_init__(self) -> None:
        check_trackers(self.report_to)
        if self.keep_best not in ("", "auto", *HIGHER_IS_BETTER):
            raise BCLMError(f"loop.keep_best must be one of {['', 'auto', *HIGHER_IS_BETTER]}, got "
                            f"{self.keep_best!r}")
        if self.log_every < 1:
            raise BCLMError(f"loop.log_every must be >= 1, got {self.log_every}")
        for name in ("val_every", "eval_every", "save_every", "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise BCLMError(f"loop.{name} must be >= 0, got {getattr(self, name)}")


@dataclass
class TaskEntry:
    """One task of a multi-task mixture: its data, how often it is sampled and how much its loss counts."""

    name: str = option("", "Task name: its prompt token and the key of its metrics (default: the env's name).")
    dataset: str = option("", "Its trajectory dataset directory (default: OUTPUT_DIR/data/NAME when `episodes` "
                              "are collected).")
    env: str = option("", "Task (env) it is evaluated on and collected from (default: the dataset's).")
    episodes: int = option(0, "Expert episodes collected into `dataset` first when it does not exist yet.")
    weight: float = option(1.0, "Sampling weight: windows are drawn from the tasks in proportion to it.")
    loss_weight: float = option(1.0, "Multiplies this task's action-token loss.")

    def __post_init__(self) -> None:
        if not self.weight > 0 or not self.loss_weight > 0:
            raise BCLMError(f"task {self.name or self.env!r}: weight and loss_weight must be > 0, got "
                            f"{self.weight} and {self.loss_weight}")
        if self.episodes < 0:
            raise BCLMError(f"task {self.name or self.env!r}: episodes must be >= 0, got {self.episodes}")
        if not (self.dataset or self.env):
            raise BCLMError("a task of `tasks` needs a dataset, or an env to collect its demonstrations from")


@dataclass
class TrainRecipe:
    dataset: str = option("", "Trajectory dataset directory (from `bclm collect`).")
    output_dir: str = option("", "Where the policy, checkpoints, logs and reports go.")
    task: str = option("", "Task name for the prompt token (default: the dataset's task).")
    overwrite: bool = option(False, "Allow writing into an output_dir that already holds a finished policy.")
    init_from: str = option("", "Warm start from this bclm policy directory (its model and tokenizer; the "
                                "dataset's spaces must match the tokenizer's).")
    tasks: list[TaskEntry] = option([], "Multi-task mixture (instead of `dataset`): a list of tasks, each with "
                                        "name, dataset or env + episodes, weight and loss_weight.")
    model: ModelConfig = field(default_factory=ModelConfig, metadata={"help": "model"})
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig, metadata={"help": "tokenizer"})
    data: DataConfig = field(default_factory=DataConfig, metadata={"help": "data"})
    train: OptimConfig = field(default_factory=OptimConfig, metadata={"help": "optimizer"})
    loop: LoopConfig = field(default_factory=LoopConfig, metadata={"help": "loop"})
    eval: EvalConfig = field(default_factory=EvalConfig, metadata={"help": "eval"})
