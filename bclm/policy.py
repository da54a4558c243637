"""A policy = causal LM + bclm tokenizer; `act` serves a whole batch of vector-env observations at once.

Rollout-time decoding keeps one KV cache for the batch. Rows never need the same history length:
every row owns a mask over the cache, so an env whose episode ends simply masks out its old cache
entries and feeds its new prompt and observation as a left-padded block, with position ids counted
per row from 0, exactly as in training windows. When any row's context is full, every row keeps the
last quarter of its steps and the cache is rebuilt once from the token histories (also when masked-out
entries make the cache twice the context). At action positions a logit mask lets
only the valid tokens of that action dimension be produced, so every action decodes inside its space.
"""

from __future__ import annotations

import functools
import inspect
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, DynamicCache, PreTrainedModel

from bclm import atomic, failpoints
from bclm.artifacts import (
    CONFIG_DIGEST,
    check_shapes,
    check_tokenizer_pair,
    check_weights,
    policy_directory,
    tokenizer_digest,
)
from bclm.embeddings import StructuredEmbedding, plain_embedding, plain_state_dict
from bclm.errors import BCLMError
from bclm.state import add_read_out, feeding, load_state, save_state, serving
from bclm.tokenizers import (
    HISTORY_LAYOUTS,
    TOKENIZER_FILE,
    BCTokenizer,
    leaf_arrays,
    load_tokenizers,
    save_tokenizers,
)

POLICY_FILE = "bclm_policy.json"
POLICY_FORMAT_VERSION = 1


class Policy:
    """One model and a tokenizer per task (one shared vocabulary); `task` picks the one `act` serves.

    `tokenizer` may be a single `BCTokenizer` (every task it knows shares it) or a mapping task -> tokenizer
    (a multi-task policy whose tasks have different spaces). `for_task(name)` serves another task with the
    same model.
    """

    def __init__(self, model: PreTrainedModel, tokenizer: BCTokenizer | dict[str, BCTokenizer], context_length: int,
                 task: str = "default", metadata: dict[str, Any] | None = None):
        self.model = model
        self.tokenizers = dict.fromkeys(tokenizer.tasks, tokenizer) if isinstance(tokenizer, BCTokenizer) \
            else dict(tokenizer)
        if task not in self.tokenizers:
            raise BCLMError(f"task {task!r} is not one of the policy's tasks {list(self.tokenizers)}")
        self.tokenizer = self.tokenizers[task]
        self.context_length = context_length
        self.task = task
        self.metadata = dict(metadata or {})
        # What the context holds of past steps, as in training (`DataConfig.history`): "full" steps, or
        # "observations" (past observations only).
        self.history = self.metadata.get("history", "full")
        if self.history not in HISTORY_LAYOUTS:
            raise BCLMError(f"{POLICY_FILE}: history {self.history!r} is not a layout this bclm knows")
        self.steps_per_context = self.tokenizer.steps_in_context(context_length, self.history)
        if self.steps_per_context < 1:
            raise BCLMError(f"context_length {context_length} cannot hold one timestep of task {task!r} "
                            f"({self.tokenizer.step_len} tokens)")
        embeddings = model.get_input_embeddings().num_embeddings
        if embeddings < self.tokenizer.vocab_size:
            raise BCLMError(
                f"the model's vocabulary ({embeddings}) is smaller than the tokenizer's ({self.tokenizer.vocab_size}): "
                "the tokenizer belongs to another model")
        self._session: ActSession | None = None

    @property
    def tasks(self) -> list[str]:
        return list(self.tokenizers)

    def for_task(self, task: str) -> Policy:
        """The same model serving `task` (its own tokenizer, prompt and action space)."""
        return Policy(self.model, self.tokenizers, self.context_length, task=task, metadata=self.metadata)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def new_session(self, batch_size: int, *, use_cache: bool = True, greedy: bool = True,
                    temperature: float = 1.0, seed: int | None = None, task: str | None = None) -> ActSession:
        if task is not None and task != self.task:
            return self.for_task(task).new_session(batch_size, use_cache=use_cache, greedy=greedy,
                                                   temperature=temperature, seed=seed)
        return ActSession(self, batch_size, use_cache=use_cache, greedy=greedy, temperature=temperature,
                          seed=seed, task=self.task)

    def act(self, observations: Any, new_episode: np.ndarray | None = None) -> Any:
        """Actions for a batch of observations; `new_episode[i]` marks an env whose episode just began."""
        batch = _batch_size(self.tokenizer, observations)
        if self._session is None or self._session.batch_size != batch:
            self._session = self.new_session(batch)
            new_episode = np.ones(batch, dtype=bool)
        return self._session.act(observations, new_episode)

    def reset(self) -> None:
        self._session = None

    # --- persistence -------------------------------------------------------------------------------
    def save_pretrained(self, directory: str | Path, state_dict: dict[str, torch.Tensor] | None = None) -> None:
        """Model (safetensors), tokenizers and metadata; `state_dict` replaces the model's own weights (the
        consolidated weights of a model sharded by ZeRO-3)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tokenizer_path = save_tokenizers(self.tokenizers, directory)
        setattr(self.model.config, CONFIG_DIGEST, tokenizer_digest(tokenizer_path))    # the pair, for loading
        emb = self.model.get_input_embeddings()
        if state_dict is not None and isinstance(emb, StructuredEmbedding):
            state_dict = plain_state_dict(state_dict, emb)
        # A plain AutoModelForCausalLM checkpoint: the number rows written into the table (a gathered state
        # dict has them already; under ZeRO-3 the live module holds only this rank's shard).
        with plain_embedding(self.model) if state_dict is None else nullcontext(), \
                atomic.disk_errors_named(directory / "model.safetensors"):
            self.model.save_pretrained(str(directory), state_dict=state_dict)
        save_state(self.model, directory, state_dict)
        failpoints.point("weights")
        if self.tokenizer.text_tokenizer is not None:      # a pretrained LM's own text tokenizer
            self.tokenizer.text_tokenizer.save_pretrained(str(directory))
        meta = {"format": "bclm-policy", "format_version": POLICY_FORMAT_VERSION,
                "context_length": self.context_length, "task": self.task, **self.metadata}
        atomic.write_json(directory / POLICY_FILE, meta, indent=2, sort_keys=True)

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, device: str | torch.device = "auto",
                        revision: str | None = None) -> Policy:
        """Load a saved policy from a directory or a Hub repo id (at `revision`); `device` "auto" is the first
        CUDA device when there is one, else the CPU. Weights load only from safetensors, with no remote code."""
        directory = policy_directory(path_or_repo_id, revision)
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        for name in (POLICY_FILE, TOKENIZER_FILE, "config.json"):
            if not (directory / name).is_file():
                raise BCLMError(f"{directory / name} not found: {directory} is not a complete bclm policy")
        meta = json.loads((directory / POLICY_FILE).read_text())
        if meta.get("format_version", 0) > POLICY_FORMAT_VERSION:
            raise BCLMError(f"{directory / POLICY_FILE}: format_version {meta['format_version']} is newer "
                            f"than this bclm reads ({POLICY_FORMAT_VERSION})")
        check_weights(directory)
        try:
            config = AutoConfig.from_pretrained(str(directory), trust_remote_code=False)
        except (OSError, ValueError) as e:           # truncated or hand-edited JSON, unknown model_type
            raise BCLMError(f"{directory / 'config.json'} cannot be read: {_first_line(e)}") from None
        check_shapes(directory, config)
        check_tokenizer_pair(directory / TOKENIZER_FILE, config)
        has_text_tokenizer = (directory / "tokenizer_config.json").is_file()
        tokenizers = load_tokenizers(directory, text_tokenizer=AutoTokenizer.from_pretrained(
            str(directory), trust_remote_code=False) if has_text_tokenizer else None)
        model = AutoModelForCausalLM.from_pretrained(str(directory), config=config, use_safetensors=True,
                                                     trust_remote_code=False)
        load_state(model, tokenizers, directory)
        model.to(device).eval()
        context_length = int(meta.pop("context_length"))
        task = meta.pop("task", "default")
        for key in ("format", "format_version"):
            meta.pop(key, None)
        return cls(model, tokenizers, context_length, task=task, metadata=meta)


def _first_line(e: Exception) -> str:
    return next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)


def _batch_size(tokenizer: BCTokenizer, observations: Any) -> int:
    leaves = leaf_arrays(tokenizer.observation_space, observations)
    return len(next(iter(leaves.values())))


def cache_argument(model: torch.nn.Module) -> str:
    """The name of a model's KV-cache argument: `cache` since transformers 5.24 (where `past_key_values` warns
    at every call and goes in 5.40); `past_key_values` in older releases and architectures not yet moved."""
    return _cache_argument(type(model))


@functools.cache
def _cache_argument(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


class ActSession:
    """Decoding state for one batch of envs: token histories, the shared KV cache and its per-row mask."""

    def __init__(self, policy: Policy, batch_size: int, *, use_cache: bool, greedy: bool, temperature: float,
                 seed: int | None, task: str):
        self.policy = policy
        self.batch_size = batch_size
        self.use_cache = use_cache
        self.greedy = greedy
        self.temperature = temperature
        tok = policy.tokenizer
        self.prefix = tok.prefix(task)
        self.max_steps = policy.steps_per_context
        # Kept when contexts are trimmed: a quarter of the context, so the batch is re-fed a quarter of a
        # context every 3/4 context of steps (a half re-fed as much as it steps, doubling the work).
        self.keep_steps = self.max_steps // 4
        ranges = tok.action_token_ranges()
        vocab = policy.model.get_input_embeddings().num_embeddings
        allowed = torch.zeros((len(ranges), vocab), dtype=torch.bool)
        for k, (lo, hi) in enumerate(ranges):
            allowed[k, lo:hi] = True
        self.logit_mask = torch.where(allowed, 0.0, float("-inf")).to(policy.device)
        self.regressed, self.squashed, self.regression_ids = (tok.regressed_actions(), tok.squashed_actions(),
                                                              tok.regression_ids())
        self.fed = 0
        self.generator = torch.Generator(device=policy.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self.history: list[list[np.ndarray]] = [[] for _ in range(batch_size)]   # complete steps per row
        # Beside each step's ids, the exact values of its continuous observation tokens (0 elsewhere), which the
        # state token reads (bclm.state).
        self.step_values: list[list[np.ndarray]] = [[] for _ in range(batch_size)]
        self.started = np.zeros(batch_size, dtype=bool)
        self.trims = 0                                                   # times the contexts were trimmed
        self.stale = np.zeros(batch_size, dtype=bool)   # rows whose cache holds tokens that were not executed
        # How sure the last `act` was, per row (for gated DAgger; off by default, it costs a softmax a token):
        # the summed entropy of its action tokens and the smallest top-2 probability margin among them.
        self.track_uncertainty = False
        self.last_entropy = np.zeros(batch_size)
        self.last_margin = np.ones(batch_size)
        self._clear_cache()

    def _clear_cache(self) -> None:
        self.cache: DynamicCache | None = None
        self.cache_mask = torch.zeros((self.batch_size, 0), dtype=torch.long, device=self.policy.device)
        self.valid_len = np.zeros(self.batch_size, dtype=np.int64)
        self.pending: list[np.ndarray] = [np.zeros(0, np.int64) for _ in range(self.batch_size)]

    @torch.inference_mode()
    def act(self, observations: Any, new_episode: np.ndarray | None = None) -> Any:
        tok = self.policy.tokenizer
        obs_tokens = tok.encode_observation(observations)     # (B, obs_len); rejects NaN/inf and bad shapes
        restart = ~self.started if new_episode is None else (np.asarray(new_episode, bool) | ~self.started)
        for i in np.flatnonzero(restart):
            self.history[i], self.step_values[i] = [], []
        self.started[:] = True
        rebuild = any(len(h) + 1 > self.max_steps for h in self.history)
        if rebuild:
            self.trims += 1
            # A context is full: every row keeps its last `keep_steps` and the cache is rebuilt once.
            # Re-entering rows one at a time would left-pad a long block across the whole batch each
            # time a row fills up; together, the cost is one batch of half-contexts every W/2 steps.
            self.history, self.step_values = ([h[len(h) - self.keep_steps:] if self.keep_steps else [] for h in rows]
                                              for rows in (self.history, self.step_values))
        step_head = np.concatenate([obs_tokens, np.full((self.batch_size, 1), tok.act_id)], axis=1)
        head_values = np.concatenate([tok.observation_values(observations), np.zeros((self.batch_size, 1))], axis=1)
        if self.use_cache:
            logits = self._feed_step(step_head, head_values, restart | self.stale, rebuild)
            self.stale[:] = False
        else:
            logits = self._recompute(step_head, head_values, [np.zeros(0, np.int64)] * self.batch_size)
        # Regressed dimensions are all read at the ACT token (bclm.trainer.regression); the others are chosen
        # one token at a time, each after the tokens before it.
        values = np.zeros((self.batch_size, tok.action_len))
        values[:, self.regressed] = logits[:, self.regression_ids[self.regressed]].cpu().numpy()
        values = np.where(self.squashed, np.tanh(values), values)
        actions = tok.regressed_ids(values)
        self.last_entropy, self.last_margin = np.zeros(self.batch_size), np.ones(self.batch_size)
        self.fed = 0                          # action tokens of this step in the cache
        for k in np.flatnonzero(~self.regressed):
            if k > self.fed:
                if self.use_cache:
                    logits = self._feed(list(actions[:, self.fed:k]))
                else:
                    logits = self._recompute(step_head, head_values, list(actions[:, :k]))
                self.fed = int(k)
            actions[:, k] = self._choose(logits, k)
        if self.policy.history == "observations":
            # Past steps are their observations only, as in training: the step's ACT and action tokens leave
            # the cache (all rows end with them), and the context never shows an action to copy.
            for i in range(self.batch_size):
                self.history[i].append(step_head[i, :-1])
                self.step_values[i].append(head_values[i, :-1])
            if self.use_cache:
                self._crop(1 + self.fed)
            return tok.decode_action(actions, values)
        for i in range(self.batch_size):
            self.history[i].append(np.concatenate([step_head[i], actions[i]]))
            self.step_values[i].append(np.concatenate([head_values[i], np.zeros(tok.action_len)]))
            self.pending[i] = actions[i, self.fed:]
        return tok.decode_action(actions, values)

    def _crop(self, n: int) -> None:
        """Remove the last `n` tokens of every row from the cache."""
        self.cache.crop(-n)
        self.cache_mask = self.cache_mask[:, :-n]
        self.valid_len -= n

    def record_executed(self, actions: Any) -> None:
        """Replace the actions chosen by the last `act` with those really executed (e.g. an expert's
        under a β-mixture), so that the context holds the history that happened, as training data does."""
        if self.policy.history == "observations":       # the context holds no actions
            return
        tok = self.policy.tokenizer
        executed = tok.encode_action(actions)
        for i in range(self.batch_size):
            chosen = self.history[i][-1][-tok.action_len:]
            if np.array_equal(chosen, executed[i]):
                continue
            self.history[i][-1] = np.concatenate([self.history[i][-1][:-tok.action_len], executed[i]])
            self.pending[i] = executed[i, self.fed:]
            # The first `fed` action tokens are already in the cache: where they differ, re-feed the row next step.
            self.stale[i] |= not np.array_equal(chosen[:self.fed], executed[i, :self.fed])

    def _context(self, i: int, head: np.ndarray, head_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row i's whole context ending in `head`: its ids and their values."""
        return (np.concatenate([self.prefix, *self.history[i], head]),
                np.concatenate([np.zeros(len(self.prefix)), *self.step_values[i], head_values]))

    def _feed_step(self, step_head: np.ndarray, head_values: np.ndarray, refeed: np.ndarray,
                   rebuild: bool) -> torch.Tensor:
        """Feed this step's observation; rows in `refeed` (new episodes, stale rows) re-enter in full."""
        blocks = []
        for i in range(self.batch_size):
            if refeed[i]:
                self.cache_mask[i] = 0
                self.valid_len[i] = 0
                blocks.append(self._context(i, step_head[i], head_values[i]))
            else:
                blocks.append((np.concatenate([self.pending[i], step_head[i]]),
                               np.concatenate([np.zeros(len(self.pending[i])), head_values[i]])))
        longest = max(len(b) for b, _ in blocks) + self.policy.tokenizer.action_len
        if rebuild or self.cache_mask.shape[1] + longest > 2 * self.policy.context_length:
            # Trimmed histories, or too many masked-out entries: every row afresh from its history.
            self._clear_cache()
            blocks = [self._context(i, step_head[i], head_values[i]) for i in range(self.batch_size)]
        return self._feed(*zip(*blocks))

    def _feed(self, blocks: list[np.ndarray], value_blocks: list[np.ndarray] | None = None) -> torch.Tensor:
        """Append one left-padded block per row to the cache (with the values of its ids, if any: a block of
        action tokens has none to give); logits at each row's last token."""
        device = self.policy.device
        width = max(len(b) for b in blocks)
        ids = np.zeros((self.batch_size, width), dtype=np.int64)
        mask = np.zeros((self.batch_size, width), dtype=np.int64)
        values = np.zeros((self.batch_size, width), dtype=np.float32)
        for i, b in enumerate(blocks):
            ids[i, width - len(b):] = b
            mask[i, width - len(b):] = 1
            if value_blocks is not None:
                values[i, width - len(b):] = value_blocks[i]
        positions = np.maximum(self.valid_len[:, None] + np.cumsum(mask, axis=1) - 1, 0)
        self.valid_len += mask.sum(axis=1)
        mask_t = torch.from_numpy(mask).to(device)
        self.cache_mask = torch.cat([self.cache_mask, mask_t], dim=1)
        if self.cache is None:
            self.cache = DynamicCache(config=self.policy.model.config)
        fed = torch.from_numpy(values).to(device) if value_blocks is not None else None
        with serving(self.policy.model, self.policy.tokenizer, self.policy.task), feeding(self.policy.model, fed):
            out = self.policy.model(
                input_ids=torch.from_numpy(ids).to(device), attention_mask=self.cache_mask,
                position_ids=torch.from_numpy(positions).to(device), use_cache=True,
                **{cache_argument(self.policy.model): self.cache})         # the cache grows in place
            return add_read_out(self.policy.model, out.logits[:, -1, :].float())

    def _recompute(self, step_head: np.ndarray, head_values: np.ndarray, partial: list[np.ndarray]) -> torch.Tensor:
        """Reference path without a cache: the whole context of every row, every token."""
        self._clear_cache()
        blocks, value_blocks = [], []
        for i in range(self.batch_size):
            ids, values = self._context(i, step_head[i], head_values[i])
            blocks.append(np.concatenate([ids, partial[i]]))
            value_blocks.append(np.concatenate([values, np.zeros(len(partial[i]))]))
        logits = self._feed(blocks, value_blocks)
        self._clear_cache()
        return logits

    def _choose(self, logits: torch.Tensor, k: int) -> np.ndarray:
        masked = logits + self.logit_mask[k]
        if self.track_uncertainty:
            self._measure(masked)
        if self.greedy:
            return masked.argmax(dim=-1).cpu().numpy()
        probs = torch.softmax(masked / self.temperature, dim=-1)
        return torch.multinomial(probs, 1, generator=self.generator).squeeze(-1).cpu().numpy()

    def _measure(self, masked: torch.Tensor) -> None:
        probs = torch.softmax(masked, dim=-1)
        top2 = probs.topk(2, dim=-1).values
        self.last_entropy += torch.special.entr(probs).sum(dim=-1).cpu().numpy()
        self.last_margin = np.minimum(self.last_margin, (top2[:, 0] - top2[:, 1]).cpu().numpy())
