"""Token sequences for training: windows of whole timesteps, the task prompt first, loss on actions only.

Two history layouts (`data.history`):
- "full": a window is `[BOS, TASK, o_s, ACT, a_s, o_s+1, ACT, a_s+1, ...]` holding at most
  `(context_length - prefix_len) // step_len` whole timesteps, every action trained: log π(a_t | o_≤t, a_<t).
  `data.action_dropout` masks past actions at random during training (history dropout).
- "observations": past steps keep their observation tokens only, `[BOS, TASK, o_t-k, ..., o_t-1, o_t, ACT, a_t]`,
  one window per labeled step with the loss on its action: log π(a_t | o_≤t). The model cannot copy its last
  action (the copycat shortcut), and the rollout session feeds exactly this (`bclm.policy.ActSession`).
Labels are -100 everywhere except on action tokens. With `predict_observations` (`train.obs_loss_weight`), a
training item also carries `obs_labels`: its observation tokens as targets of an auxiliary next-token loss.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import torch

from bclm.config import option
from bclm.errors import BCLMError
from bclm.tokenizers import HISTORY_LAYOUTS, BCTokenizer

IGNORE_INDEX = -100


@dataclass
class DataConfig:
    context_length: int = option(
        0, "Tokens per training window (and the policy's context at rollout time); 0 = one timestep (the prompt "
           "and the longest task step): no history, so no copycat shortcut, which suits experts that act on the "
           "current observation. Give a longer context for tasks that need memory.")
    stride_fraction: float = option(
        0.5, "Distance between window starts within an episode, as a fraction of the steps per window.")
    shards: list[str] = option([], "Shards of the dataset to train on (empty = all).")
    max_episodes: int = option(
        0, "Train on the first N episodes (by id) of those shards only (0 = all): how a sweep's budget takes a "
           "prefix of the expert episodes that ends inside a shard.")
    val_episodes: int = option(
        -1, "Episodes held out (spread over the dataset) to measure validation loss and action accuracy, and to "
            "keep the best weights (loop.keep_best); -1 = a tenth of them when there are at least 10, else none.")
    jitter: float = option(
        0.0, "Training augmentation: each observation number token (continuous bin) moves by a random whole "
             "number of bins up to this fraction of the observation bins, either way (0 = off); never by half "
             "the spacing of a dimension whose data sits on a grid, so no two of its values are confused. Off by "
             "default: it blurs sharp expert decision boundaries (LunarLander: 237 -> 12 mean return at 1/32).")
    augment: int = option(
        0, "Training augmentation: each training episode is added this many more times, transformed by the "
           "task's symmetry (data.symmetry), with the same labels; held-out episodes are not (0 = off).")
    symmetry: str = option(
        "", "What data.augment transforms with: 'module:callable' (observations, episode ids, numpy Generator) "
            "-> observations; '' = the task's own (BabyAI: object colours renamed alike in the view and the "
            "mission, which leaves the bot's actions unchanged).")

    history: str = option(
        "full", "What the context holds of past steps: full (observations and executed actions; every step of a "
                "window is trained) or observations (past observations only: no past actions to copy, one trained "
                "step per window). Matters only with a context_length longer than one step.")
    action_dropout: float = option(
        0.0, "History dropout (history full): each past action of a training window is replaced by a mask token "
             "with this probability, so the model learns to act from the observations too (0 = off).")

    def __post_init__(self) -> None:
        if self.history not in HISTORY_LAYOUTS:
            raise BCLMError(f"data.history {self.history!r}: expected one of {', '.join(HISTORY_LAYOUTS)}")
        if not 0 <= self.action_dropout < 1 or (self.action_dropout and self.history != "full"):
            raise BCLMError(f"data.action_dropout {self.action_dropout}: expected a probability in [0, 1), with "
                            "data.history full (the observations layout has no past actions to drop)")
        if self.max_episodes < 0:
            raise BCLMError(f"data.max_episodes must be >= 0 (0 = all), got {self.max_episodes}")
        if self.val_episodes < -1:
            raise BCLMError(f"data.val_episodes must be >= 0, or -1 for a tenth, got {self.val_episodes}")
        if self.augment < 0:
            raise BCLMError(f"data.augment must be >= 0 (extra copies of each training episode), got {self.augment}")
        if not 0 <= self.jitter < 1:
            raise BCLMError(f"data.jitter must be in [0, 1), got {self.jitter}")
        if self.context_length and self.context_length < 8:
            raise BCLMError(f"data.context_length must be 0 (one timestep) or at least 8, got {self.context_length}")
        if not 0 < self.stride_fraction <= 1:
            raise BCLMError(f"data.stride_fraction must be in (0, 1], got {self.stride_fraction}")


def resolve_context(context_length: int, tokenizers: Iterable[BCTokenizer]) -> int:
    """`context_length`, or for 0 the tokens of one timestep of the task with the longest step."""
    return context_length or max(t.prefix_len + t.step_len for t in tokenizers)


def steps_per_window(tokenizer: BCTokenizer, context_length: int, history: str = "full") -> int:
    n = tokenizer.steps_in_context(context_length, history)
    if n < 1:
        raise BCLMError(
            f"data.context_length {context_length} is too short for one timestep "
            f"({tokenizer.prefix_len} prompt + {tokenizer.step_len} step tokens)")
    return n


@dataclass
class EpisodeTokens:
    """All timesteps of a dataset as tokens: (N, step_len), grouped into contiguous episodes."""

    steps: np.ndarray          # (N, step_len) int64 inputs: observations and the actions executed
    labels: np.ndarray         # (N, step_len) int64 targets: expert action tokens, IGNORE_INDEX elsewhere
    starts: np.ndarray         # (E,) first row of each episode
    lengths: np.ndarray        # (E,) steps per episode
    task_tokens: np.ndarray    # (E,) task token id of each episode
    episode_ids: np.ndarray    # (E,) the store's episode id
    values: np.ndarray         # (N, step_len) float32 exact values of the continuous observation tokens, 0 elsewhere
    value_labels: np.ndarray   # (N, step_len) float32 the same of the expert's action tokens (the labels)


def action_labels(tokenizer: BCTokenizer, executed: np.ndarray, expert: np.ndarray) -> np.ndarray:
    """(N, action_len) targets: the expert's token k where the executed tokens before k are the expert's.

    Inputs always hold what was executed (the history that really happened). A relabeled step teaches
    the expert's action; for a multi-token action, token k is predicted after tokens < k, so it is a
    target only while those are the expert's own: the model is never taught to continue a prefix the
    expert would not have produced (at inference it would only see such a prefix after its own error,
    and the expert's continuation of it is unknown). Regressed tokens (`tokenizer.regressed_actions`) are all
    predicted at the step's ACT token, before any action token, so they are always targets.
    """
    agree = executed[:, :-1] == expert[:, :-1]
    prefix_ok = np.concatenate([np.ones((len(expert), 1), bool), np.cumprod(agree, axis=1).astype(bool)], axis=1)
    return np.where(prefix_ok | tokenizer.regressed_actions(), expert, IGNORE_INDEX)


def tokenize_episodes(tokenizer: BCTokenizer, observation, action, episode: np.ndarray, step: np.ndarray,
                      task: np.ndarray, expert_action=None, labeled: np.ndarray | None = None) -> EpisodeTokens:
    """Tokenize every step at once (vectorised), then sort rows into contiguous episodes.

    `action` is what was executed; `expert_action` (default: the same) is what the loss teaches, on the
    steps that are `labeled` (default: all; a step the expert failed to label is context only).
    """
    tokens = tokenizer.encode_steps(observation, action)
    first_action = tokenizer.obs_len + 1
    executed = tokens[:, first_action:]
    expert = executed if expert_action is None else tokenizer.encode_action(expert_action)
    labels = np.full_like(tokens, IGNORE_INDEX)
    labels[:, first_action:] = action_labels(tokenizer, executed, expert)
    values = np.zeros(tokens.shape, np.float32)
    values[:, :tokenizer.obs_len] = tokenizer.observation_values(observation)     # what the state token reads
    value_labels = np.zeros(tokens.shape, np.float32)
    value_labels[:, first_action:] = tokenizer.action_values(action if expert_action is None else expert_action)
    if labeled is not None:
        labels[~np.asarray(labeled, bool)] = IGNORE_INDEX
    order = np.lexsort((step, episode))
    tokens, labels, episode, task = tokens[order], labels[order], episode[order], task[order]
    ids, starts, lengths = np.unique(episode, return_index=True, return_counts=True)
    task_tokens = np.array([tokenizer.task_token(str(t)) for t in task[starts]], dtype=np.int64)
    return EpisodeTokens(tokens, labels, starts, lengths, task_tokens, ids, values[order], value_labels[order])


def window_index(lengths: np.ndarray, per_window: int, stride: int) -> np.ndarray:
    """(W, 3) rows of (episode, first step, number of steps); the last window of an episode ends at its end."""
    rows = []
    for e, n in enumerate(lengths):
        starts = list(range(0, max(n - per_window, 0) + 1, stride))
        if starts[-1] + per_window < n:
            starts.append(n - per_window)
        rows.extend((e, s, min(per_window, n - s)) for s in starts)
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


class WindowDataset(torch.utils.data.Dataset):
    """Windows over tokenized episodes; items are built on access (cheap slices of one array).

    Every item carries its task's index in a mixture and its loss weight, so that a batch mixing tasks can
    weight and report the loss per task. Training windows may jitter observation numbers and drop past
    actions; both draws are functions of (seed, epoch, window) alone, so that every process of a
    distributed run, and a resumed run, changes a window alike."""

    def __init__(self, tokens: EpisodeTokens, tokenizer: BCTokenizer, context_length: int,
                 stride_fraction: float = 0.5, task_index: int = 0, loss_weight: float = 1.0,
                 jitter: np.ndarray | None = None, seed: int = 0, history: str = "full",
                 action_dropout: float = 0.0, predict_observations: bool = False):
        self.tokens = tokens
        self.predict_observations = predict_observations
        self.history, self.action_dropout = history, action_dropout
        self.obs_len = tokenizer.obs_len
        self.step_is_obs = np.arange(tokenizer.step_len) < tokenizer.obs_len
        self.per_window = steps_per_window(tokenizer, context_length, history)
        if history == "full":
            stride = max(1, int(self.per_window * stride_fraction))
            self.index = _with_labels(tokens, window_index(tokens.lengths, self.per_window, stride))
        else:          # a window per labeled step, ending at it, with up to per_window - 1 past observations
            self.index = _last_step_windows(tokens, self.per_window)
        self.bos, self.mask_id = tokenizer.bos_id, tokenizer.pad_id
        # (step_len,) how many bins each token of a step may be moved by (see `jitter_bins`), kept inside the
        # observation bins of its dimension's number slot.
        self.jitter = jitter if jitter is not None and jitter.any() else None
        self.slot_starts = tokenizer.number_slot_starts()
        self.obs_bins = tokenizer.config.obs_bins
        self.seed, self.epoch = seed, 0
        self.task_index = torch.tensor(task_index)
        self.loss_weight = torch.tensor(loss_weight, dtype=torch.float32)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        e, s, n = self.index[i]
        rows = slice(self.tokens.starts[e] + s, self.tokens.starts[e] + s + n)
        steps, labels = self.tokens.steps[rows], self.tokens.labels[rows]
        values, value_labels = self.tokens.values[rows], self.tokens.value_labels[rows]
        if self.action_dropout:
            steps, labels = self._dropped(steps, labels, i)
        prefix = np.array([self.bos, self.tokens.task_tokens[e]], dtype=np.int64)
        input_ids = np.concatenate([prefix, self._body(steps)])
        if self.jitter is not None:
            input_ids = self._jittered(input_ids, n, i)
        item = {"input_ids": torch.from_numpy(input_ids),
                "labels": torch.from_numpy(np.concatenate([np.full(2, IGNORE_INDEX), self._body(labels)])),
                # Exact values of continuous tokens, beside the ids (bclm.state, bclm.trainer.regression).
                "values": torch.from_numpy(np.concatenate([np.zeros(2, np.float32), self._body(values)])),
                "value_labels": torch.from_numpy(np.concatenate([np.zeros(2, np.float32), self._body(value_labels)])),
                "task_index": self.task_index, "loss_weight": self.loss_weight}
        if self.predict_observations:
            item["obs_labels"] = torch.from_numpy(self._observation_targets(input_ids, n))
        return item

    def _body(self, per_step: np.ndarray) -> np.ndarray:
        """A window's `per_step` (n, step_len) rows as the history layout holds them: whole steps, or past steps'
        observation tokens only (the labels of those are all IGNORE_INDEX, their value labels 0)."""
        if self.history == "observations":
            return np.concatenate([per_step[:-1, :self.obs_len].reshape(-1), per_step[-1]])
        return per_step.reshape(-1)

    def _observation_targets(self, input_ids: np.ndarray, steps: int) -> np.ndarray:
        """The window's observation tokens as they were fed (jittered too), IGNORE_INDEX elsewhere."""
        return np.where(self._laid_out(self.step_is_obs, steps, len(input_ids)), input_ids, IGNORE_INDEX)

    def _laid_out(self, per_step: np.ndarray, steps: int, length: int) -> np.ndarray:
        """(length,) a value per token of a step, over a window of `steps` steps as the history layout holds
        them (past steps' observation tokens only, with history observations), zero over the prompt."""
        if self.history == "observations":
            body = np.concatenate([np.tile(per_step[:self.obs_len], steps - 1), per_step])
        else:
            body = np.tile(per_step, steps)
        return np.concatenate([np.zeros(length - len(body), per_step.dtype), body])

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _dropped(self, steps: np.ndarray, labels: np.ndarray, i: int) -> tuple[np.ndarray, np.ndarray]:
        """History dropout: the actions of past steps masked with probability `action_dropout`. A masked
        action's tokens after its first lose their labels too: each was predicted after the ones before it."""
        rng = np.random.default_rng((self.seed, self.epoch, int(i), 1))
        drop = rng.random(len(steps)) < self.action_dropout
        drop[-1] = False                      # the last action is no step's history
        steps, labels = steps.copy(), labels.copy()
        first = self.obs_len + 1
        steps[drop, first:] = self.mask_id
        labels[drop, first + 1:] = IGNORE_INDEX
        return steps, labels

    def _jittered(self, input_ids: np.ndarray, steps: int, i: int) -> np.ndarray:
        """The window's observation numbers moved by random whole bins."""
        rng = np.random.default_rng((self.seed, self.epoch, int(i)))
        bins, low = (self._laid_out(x, steps, len(input_ids)) for x in (self.jitter, self.slot_starts))
        moved = np.clip(input_ids + rng.integers(-bins, bins + 1), low, low + self.obs_bins - 1)
        return np.where(bins > 0, moved, input_ids)


def _with_labels(tokens: EpisodeTokens, index: np.ndarray) -> np.ndarray:
    """The windows with at least one labeled step: a window of unlabeled steps only (unasked states of gated
    or HG-DAgger rounds, expert faults) would cost a forward pass and teach nothing."""
    labeled = np.concatenate([[0], np.cumsum((tokens.labels != IGNORE_INDEX).any(axis=1))])
    first = tokens.starts[index[:, 0]] + index[:, 1]
    return index[labeled[first + index[:, 2]] > labeled[first]]


def _last_step_windows(tokens: EpisodeTokens, per_window: int) -> np.ndarray:
    """(W, 3) rows of (episode, first step, number of steps) ending at each step that carries a label."""
    labeled = (tokens.labels != IGNORE_INDEX).any(axis=1)
    rows = [(e, max(0, t - per_window + 1), min(per_window, t + 1))
            for e, (start, n) in enumerate(zip(tokens.starts, tokens.lengths)) for t in range(n) if labeled[start + t]]
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def jitter_bins(tokenizer: BCTokenizer, steps: np.ndarray, fraction: float) -> np.ndarray:
    """(step_len,) the most bins each observation number of a step may move: `fraction` of the bins, but
    less than half the median spacing of the values a dimension takes in `steps` (N, step_len), so that
    data on a grid (positions in steps of 0.1, say) never has one of its values moved onto another's."""
    out = np.zeros(tokenizer.step_len, dtype=np.int64)
    amplitude = round(fraction * tokenizer.config.obs_bins)
    for pos in np.flatnonzero(tokenizer.number_mask()) if amplitude else []:
        values = np.unique(steps[:, pos])
        gap = float(np.median(np.diff(values))) if len(values) > 1 else 1.0
        out[pos] = amplitude if gap <= 1 else min(amplitude, int((gap - 1) // 2))
    return out
