"""`bclm info PATH`: what a dataset or a policy directory holds, in a few lines, from its files alone (a
dataset's step columns, a policy's JSON files and safetensors headers; no weights are loaded)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bclm.data.store import META_FILE, TrajectoryStore
from bclm.errors import BCLMError
from bclm.hub.cards import SUMMARY_COLUMNS, parameter_count, read_json_or_empty, shard_summary
from bclm.policy import POLICY_FILE
from bclm.state import STATE_FILE
from bclm.tokenizers import load_tokenizers
from bclm.trainer.bc import QUANTIZATION_FILE, quantization_summary


def describe(path: str | Path) -> str:
    path = Path(path)
    if (path / META_FILE).is_file():
        return "\n".join(describe_dataset(TrajectoryStore(path)))
    if (path / POLICY_FILE).is_file():
        return "\n".join(describe_policy(path))
    raise BCLMError(f"{path}: neither a bclm dataset (no {META_FILE}) nor a bclm policy (no {POLICY_FILE})")


def describe_dataset(store: TrajectoryStore) -> list[str]:
    """Env, spaces, and per shard (a DAgger round) its source, episodes, steps and expert labels."""
    meta = store.meta
    lines = [f"dataset {store.path}: env {meta.get('env_id')}, task {meta.get('task')}",
             f"  observations {store.observation_space}", f"  actions {store.action_space}"]
    totals = np.zeros(3, dtype=np.int64)
    for name in store.shard_names():
        s = shard_summary(store.load([name]).select_columns(list(SUMMARY_COLUMNS))[:])
        totals += (s["episodes"], s["steps"], s["labels"])
        lines.append(f"  {name} ({s['source']}): {s['episodes']:,} episodes, {s['steps']:,} steps, "
                     f"{s['labels']:,} expert labels, mean return {s['mean_return']:.2f}")
    lines.append(f"  total: {len(store.shard_names())} shard(s), {totals[0]:,} episodes, {totals[1]:,} steps, "
                 f"{totals[2]:,} expert labels")
    return lines


def describe_policy(directory: Path) -> list[str]:
    """Model, context and history layout, each task's tokenizer layout, the quantisation and the evaluation."""
    meta, config = read_json_or_empty(directory / POLICY_FILE), read_json_or_empty(directory / "config.json")
    tokenizers = load_tokenizers(directory)
    lines = [f"policy {directory}: {config.get('model_type', '?')}, {parameter_count(directory) / 1e6:.2f}M "
             f"parameters ({config.get('num_hidden_layers', '?')} layers, width {config.get('hidden_size', '?')}), "
             f"context {meta.get('context_length')} tokens, history {meta.get('history', 'full')}",
             f"  vocabulary {next(iter(tokenizers.values())).vocab_size:,} tokens, {len(tokenizers)} task(s)"]
    envs = meta.get("envs") or {}
    for task, tok in tokenizers.items():
        lines += [f"  task {task} (env {envs.get(task) or meta.get('env') or task}): a step is {tok.step_len} "
                  f"tokens ({tok.obs_len} observation, ACT, {tok.action_len} action) after a {tok.prefix_len}-token "
                  f"prompt; {tok.config.obs_bins} observation / {tok.config.action_bins} action bins "
                  f"({tok.config.mode})" + (f"; integer tokens in slots on a {'x'.join(map(str, grid))} grid"
                                            if (grid := tok.config.symbol_grid) else ""),
                  f"    observations {tok.observation_space}", f"    actions {tok.action_space}"]
        if tok.regression:
            lines.append(f"    {int(tok.regressed_actions().sum())} continuous action value(s) regressed at ACT")
    if (directory / STATE_FILE).is_file():
        lines.append(f"  state token: continuous observations projected at ACT ({STATE_FILE})")
    lines += _quantization(directory) + _evaluation(directory)
    return lines


def _quantization(directory: Path) -> list[str]:
    report = read_json_or_empty(directory / QUANTIZATION_FILE)
    return ["  " + line for line in quantization_summary(report).splitlines()] if report else []


def _evaluation(directory: Path) -> list[str]:
    report = read_json_or_empty(directory / "eval_report.json")
    if not report:
        return ["  not evaluated (no eval_report.json)"]
    rows = report.get("tasks", {"": report})
    return [f"  evaluation{' ' + name if name else ''}: success {r['success_rate']:.1%} over {r['episodes']} "
            f"episodes, mean return {r['mean_return']:.2f}, mean length {r['mean_length']:.1f}"
            for name, r in rows.items()]

