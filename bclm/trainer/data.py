"""Training data from a recipe: one task (`dataset`) or a mixture (`tasks`), tokenized on one vocabulary.

Each task has its own store, spaces and tokenizer; the windows of all tasks are concatenated and drawn
in proportion to the tasks' sampling weights, and each window carries its task index and loss weight so
that the loss and the metrics can be split by task.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bclm.data.augment import Symmetry, augmented
from bclm.data.sequences import DataConfig, WindowDataset, jitter_bins, resolve_context, tokenize_episodes
from bclm.data.store import META_FILE, StepArrays, TrajectoryStore
from bclm.distributed import launched_world_size
from bclm.envs import get_task
from bclm.envs.refs import import_callable
from bclm.errors import BCLMError
from bclm.eval.evaluate import EvalConfig, check_unseen
from bclm.models import pretrained_vocabulary
from bclm.tokenizers import BCTokenizer, build_tokenizers, cover_tokenizers, fit_tokenizers
from bclm.trainer.config import TaskEntry, TrainRecipe


@dataclass
class TaskData:
    name: str
    env: str                       # the TaskSpec name evaluations resolve with get_task
    train: WindowDataset
    val: WindowDataset | None
    weight: float


@dataclass
class Prepared:
    """Everything the loop needs, built from the recipe and the datasets."""

    tokenizers: dict[str, BCTokenizer]
    tasks: list[TaskData]
    train_set: torch.utils.data.Dataset
    val_set: torch.utils.data.Dataset | None
    context_length: int
    quantization: dict[str, dict] = field(default_factory=dict)    # task -> the tokenizer's round-trip report
    covered: dict[str, BCTokenizer] = field(default_factory=dict)  # task -> its warm tokenizer before widening

    @property
    def task_names(self) -> list[str]:
        return [t.name for t in self.tasks]

    def env_of(self, name: str, override: str = "") -> str:
        """The env task `name` is evaluated on: `override` (eval.env) where there is one task, else its own."""
        own = next(t.env for t in self.tasks if t.name == name)
        return (override or own) if len(self.tasks) == 1 else own

    def sampler(self, seed: int) -> EpochSampler:
        """Shuffled windows; with several tasks drawn in proportion to their task's weight."""
        if len(self.tasks) == 1:
            return EpochSampler(len(self.train_set), seed)
        per_window = np.concatenate([np.full(len(t.train), t.weight / len(t.train)) for t in self.tasks])
        return EpochSampler(len(per_window), seed, torch.as_tensor(per_window))


class EpochSampler(torch.utils.data.Sampler[int]):
    """Window order as a function of (seed, epoch) alone: a permutation, or with `weights` a weighted draw
    with replacement. A generator carried from epoch to epoch cannot be put back mid-epoch, so a resumed
    run would draw other windows than the run that never stopped; this order is the same on resume, and
    on every rank (accelerate then hands each rank its own batches of it)."""

    def __init__(self, size: int, seed: int, weights: torch.Tensor | None = None):
        self.size, self.seed, self.weights, self.epoch = size, seed, weights, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        if self.weights is None:
            return iter(torch.randperm(self.size, generator=generator).tolist())
        return iter(torch.multinomial(self.weights, self.size, replacement=True, generator=generator).tolist())


def task_entries(recipe: TrainRecipe) -> list[TaskEntry]:
    """The recipe's tasks: `tasks`, or the single `dataset` as a mixture of one."""
    if recipe.tasks and recipe.dataset:
        raise BCLMError("give either dataset (one task) or tasks (a mixture), not both")
    if not recipe.tasks:
        if not recipe.dataset:
            raise BCLMError("dataset is required (--dataset DIR), or a `tasks` mixture in the recipe")
        return [TaskEntry(name=recipe.task, dataset=recipe.dataset)]
    entries, seen = [], set()
    for i, e in enumerate(recipe.tasks):
        name = e.name or e.env
        if not name:
            raise BCLMError(f"tasks[{i}] needs a name (or an env to name it after)")
        if name in seen:
            raise BCLMError(f"tasks[{i}]: task name {name!r} appears twice in the mixture; names must be unique")
        seen.add(name)
        if not e.dataset and not e.episodes:
            raise BCLMError(f"tasks[{i}] ({name!r}) needs a dataset, or episodes > 0 to collect one from {e.env!r}")
        dataset = e.dataset or str(Path(recipe.output_dir) / "data" / name.replace(":", "_").replace("/", "_"))
        entries.append(TaskEntry(name=name, dataset=dataset, env=e.env, episodes=e.episodes, weight=e.weight,
                                 loss_weight=e.loss_weight))
    return entries


def verify_datasets(recipe: TrainRecipe) -> None:
    """The recipe's datasets that exist, checked against their shards' hashes before anything is written."""
    for entry in task_entries(recipe):
        if (Path(entry.dataset) / META_FILE).is_file():
            TrajectoryStore(entry.dataset).verify(recipe.data.shards or None)


def ensure_dataset(entry: TaskEntry, evaluation: EvalConfig, num_envs: int = 8) -> TrajectoryStore:
    """The entry's store; with `episodes` > 0, first its expert demonstrations when it holds none yet (also
    after a crash mid-collection: the shard is written atomically, so it is simply collected again)."""
    path = Path(entry.dataset)
    has_store = (path / META_FILE).is_file()
    if entry.episodes > 0 and not (has_store and TrajectoryStore(path).shard_names()):
        from bclm.rollout.shards import expert_ref_of, open_store, write_expert_shard

        if launched_world_size() > 1:
            # Every rank would collect into the same directory; one process collects, then all train.
            raise BCLMError(f"task {entry.name!r}: dataset {path} is not collected yet; run this recipe once in "
                            "one process (or `bclm collect`) before a multi-process launch")
        check_unseen(0, entry.episodes, evaluation, f"task {entry.name or entry.env!r}'s {entry.episodes} episodes")
        task = get_task(entry.env)
        store = open_store(task, path)
        write_expert_shard(store, task, expert_ref_of(task, None), entry.episodes, seed=0, num_envs=num_envs)
    return TrajectoryStore(path)


def prepare_data(recipe: TrainRecipe, tokenizers: dict[str, BCTokenizer] | None = None) -> Prepared:
    """Load every task's dataset, build and fit one vocabulary over them (or check them against a warm-start
    policy's and widen its bounds to cover them), and build windows."""
    entries = task_entries(recipe)
    stores = [ensure_dataset(e, recipe.eval) for e in entries]
    names = [e.name or s.meta.get("task") or "default" for e, s in zip(entries, stores)]
    steps = [first_episodes(s.arrays(recipe.data.shards or None), recipe.data.max_episodes, s.path) for s in stores]
    warm = tokenizers is not None
    if not warm:
        base_vocab, text_tokenizer = pretrained_vocabulary(recipe.model)
        spaces = {n: (s.observation_space, s.action_space) for n, s in zip(names, stores)}
        tokenizers = build_tokenizers(spaces, recipe.tokenizer, base_vocab, text_tokenizer)
    for name, store, s in zip(names, stores, steps):
        where = f"dataset {store.path}"
        if name not in tokenizers:
            shared = {id(t): t for t in tokenizers.values()}
            if len(shared) == 1:          # a single-space policy: a space mismatch is the clearer error
                next(iter(shared.values())).assert_compatible(store.observation_space, store.action_space, where)
            raise BCLMError(f"{where}: task {name!r} is not one of the policy's tasks {list(tokenizers)}")
        tok = tokenizers[name]
        tok.assert_compatible(store.observation_space, store.action_space, where=where)
        tok.check_observation(s.observation, where=where)
        tok.check_action(s.action, where=where)
        tok.check_action(take_tree(s.expert_action, s.columns["labeled"]), where=f"{where} (expert_action)")
    values = {n: (s.observation, s.action) for n, s in zip(names, steps)}
    covered = cover_tokenizers(tokenizers, values) if warm else {}
    fit_tokenizers(tokenizers, values)
    context = resolve_context(recipe.data.context_length, [tokenizers[n] for n in names])
    tasks = []
    for index, (entry, name, store, s) in enumerate(zip(entries, names, stores, steps)):
        env = entry.env or store.meta.get("task") or store.meta["env_id"]
        train_steps, val_steps = split_episodes(s, recipe.data.val_episodes)
        if recipe.data.augment:
            train_steps = augmented(train_steps, symmetry_of(recipe.data, env, tokenizers[name]), recipe.data.augment,
                                    recipe.loop.seed)
        train, val = (None if part is None else _windows(tokenizers[name], part, recipe.data, context, name, index,
                                                          entry.loss_weight, recipe.loop.seed if part is train_steps
                                                          else None, recipe.train.obs_loss_weight > 0)
                      for part in (train_steps, val_steps))
        tasks.append(TaskData(name, env, train, val, entry.weight))
    train_set = _concat([t.train for t in tasks])
    val_parts = [t.val for t in tasks if t.val is not None]
    val_set = _concat(val_parts) if val_parts else None
    quantization = {n: tokenizers[n].quantization_report(s.observation, s.action) for n, s in zip(names, steps)}
    return Prepared(tokenizers, tasks, train_set, val_set, context, quantization, covered)


def symmetry_of(config: DataConfig, env: str, tokenizer: BCTokenizer) -> Symmetry:
    """`data.symmetry`, else the task's own; what it returns must still be observations of the task."""
    ref = config.symmetry or get_task(env).symmetry
    if not ref:
        raise BCLMError(f"data.augment {config.augment}: task {env!r} has no symmetry to augment with; give one "
                        "as data.symmetry module:callable")
    transform = import_callable(ref, "data.symmetry")

    def checked(observation: Any, episode: np.ndarray, rng: np.random.Generator) -> Any:
        out = transform(observation, episode, rng)
        tokenizer.check_observation(out, where=f"data.symmetry {ref}")
        return out
    return checked


def _concat(sets: list[Any]) -> torch.utils.data.Dataset:
    return sets[0] if len(sets) == 1 else torch.utils.data.ConcatDataset(sets)


def first_episodes(steps: StepArrays, count: int, where: Path) -> StepArrays:
    """The steps of the first `count` episodes by id (all for 0)."""
    if not count:
        return steps
    episodes = np.unique(steps.columns["episode"])
    if count > len(episodes):
        raise BCLMError(f"data.max_episodes {count}: dataset {where} holds only {len(episodes)} episodes (in the "
                        "chosen shards)")
    return _select(steps, steps.columns["episode"] <= episodes[count - 1])


def split_episodes(steps: StepArrays, val_episodes: int) -> tuple[StepArrays, StepArrays | None]:
    """(training, held-out) steps: `val_episodes` whole episodes spread evenly from the last one back (so a
    DAgger dataset gives every round's share, not only its newest, most informative episodes); -1 = a tenth."""
    episodes = np.unique(steps.columns["episode"])
    if val_episodes < 0:
        val_episodes = len(episodes) // 10
    if val_episodes == 0:
        return steps, None
    if val_episodes >= len(episodes):
        raise BCLMError(f"data.val_episodes={val_episodes} leaves no training episode ({len(episodes)} in all)")
    held = episodes[np.round(np.linspace(len(episodes) - 1, 0, val_episodes)).astype(int)]
    is_val = np.isin(steps.columns["episode"], held)
    return _select(steps, ~is_val), _select(steps, is_val)


def _select(steps: StepArrays, mask: np.ndarray) -> StepArrays:
    return StepArrays(observation=take_tree(steps.observation, mask), action=take_tree(steps.action, mask),
                      expert_action=take_tree(steps.expert_action, mask),
                      columns={k: v[mask] for k, v in steps.columns.items()})


def take_tree(batch: Any, mask: np.ndarray) -> Any:
    if isinstance(batch, dict):
        return {k: take_tree(v, mask) for k, v in batch.items()}
    if isinstance(batch, tuple):
        return tuple(take_tree(v, mask) for v in batch)
    return batch[mask]


def _windows(tokenizer: BCTokenizer, steps: StepArrays, config: DataConfig, context_length: int, task_name: str,
             task_index: int, loss_weight: float, jitter_seed: int | None,
             predict_observations: bool = False) -> WindowDataset:
    """Windows of one task's steps; training windows (a `jitter_seed`) jitter their observation numbers, drop
    past actions and carry observation targets, as configured; held-out ones are left as they are (validation
    measures the actions alone)."""
    task = np.full(len(steps), task_name, dtype=object)
    tokens = tokenize_episodes(tokenizer, steps.observation, steps.action, steps.columns["episode"],
                               steps.columns["step"], task, expert_action=steps.expert_action,
                               labeled=steps.columns["labeled"])
    training = jitter_seed is not None
    bins = jitter_bins(tokenizer, tokens.steps, config.jitter) if training else None
    return WindowDataset(tokens, tokenizer, context_length, config.stride_fraction, jitter=bins, seed=jitter_seed or 0,
                         task_index=task_index, loss_weight=loss_weight, history=config.history,
                         action_dropout=config.action_dropout if training else 0.0,
                         predict_observations=predict_observations and training)
