"""Sequence building and data loading vs the training step they feed (MT10-shaped data).

Synthetic episodes shaped like Meta-World's (39-d observations, 4-d actions, 150 steps, 50 per task,
10 tasks' worth) are tokenized and cut into one-step windows (context 46, as `recipes/mt10.yaml`), then
the DataLoader (bclm's `PadCollator`, no worker processes) is timed against bclm's training step on the
same batches. The share of a step spent waiting for data is what matters: it should stay small next to
the step, on CPU here and against a GPU's faster step (compare the tokens/s to the GPU's in RESULTS.md).

    python benchmarks/data_loading.py            # batch 256, model small
    python benchmarks/data_loading.py --quick    # seconds, to check the script runs
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see train_throughput.py

import gymnasium as gym
import numpy as np
import torch
from accelerate import Accelerator

from bclm.data.collate import PadCollator
from bclm.data.sequences import WindowDataset, tokenize_episodes
from bclm.models import ModelConfig, build_model
from bclm.tokenizers import BCTokenizer, TokenizerConfig
from bclm.trainer.config import OptimConfig
from bclm.trainer.step import make_optimizer, make_scheduler, train_step


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--episodes", type=int, default=500)
    p.add_argument("--episode-length", type=int, default=150)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--size", default="small")
    p.add_argument("--batches", type=int, default=40, help="timed batches")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.episodes, args.episode_length, args.batch_size, args.size, args.batches = 8, 20, 16, "tiny", 3
    return args


def main() -> None:
    args = parse_args()
    rng = np.random.default_rng(0)
    n = args.episodes * args.episode_length
    obs = rng.normal(size=(n, 39)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(n, 4)).astype(np.float32)
    tok = BCTokenizer(gym.spaces.Box(-np.inf, np.inf, (39,), np.float32),
                      gym.spaces.Box(-1.0, 1.0, (4,), np.float32), TokenizerConfig()).fit(obs, act)

    start = time.perf_counter()
    tokens = tokenize_episodes(tok, obs, act, np.repeat(np.arange(args.episodes), args.episode_length),
                               np.tile(np.arange(args.episode_length), args.episodes),
                               np.full(n, "default", dtype=object))
    dataset = WindowDataset(tokens, tok, context_length=46)
    build_s = time.perf_counter() - start

    loader = torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
                                         collate_fn=PadCollator(tok.pad_id),
                                         generator=torch.Generator().manual_seed(0))
    it = iter(loader)
    next(it)
    start = time.perf_counter()
    batches = [next(it) for _ in range(args.batches)]
    load_s = (time.perf_counter() - start) / args.batches
    batch_tokens = sum(int(b["attention_mask"].sum()) for b in batches) / args.batches

    accelerator = Accelerator(cpu=True)
    model = build_model(ModelConfig(size=args.size), tok.vocab_size, 46, tok.bos_id, tok.eos_id, tok.pad_id)
    optim = OptimConfig(max_steps=args.batches + 1, batch_size=args.batch_size, warmup_steps=1)
    optimizer = make_optimizer(model, optim)
    scheduler = make_scheduler(optimizer, optim)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    stream = iter(batches)
    train_step(model, optimizer, scheduler, stream, accelerator, optim)        # warm-up
    start = time.perf_counter()
    for _ in range(args.batches - 1):
        train_step(model, optimizer, scheduler, stream, accelerator, optim)
    step_s = (time.perf_counter() - start) / (args.batches - 1)

    print(f"{args.episodes} episodes × {args.episode_length} steps ({n} steps, 44 tokens each), context 46, "
          f"batch {args.batch_size}, model {args.size}, torch threads {torch.get_num_threads()}")
    print()
    print("| stage | time | tokens/s |")
    print("|---|---:|---:|")
    print(f"| sequence building (tokenize + windows, {len(dataset)} windows) | {build_s:.2f} s | "
          f"{n * 44 / build_s:,.0f} |")
    print(f"| DataLoader batch (PadCollator, no workers) | {load_s * 1e3:.1f} ms | {batch_tokens / load_s:,.0f} |")
    print(f"| training step (bclm train_step, CPU) | {step_s * 1e3:.1f} ms | {batch_tokens / step_s:,.0f} |")
    print()
    print(f"data loading / training step = {load_s / step_s:.2f}")


if __name__ == "__main__":
    main()
