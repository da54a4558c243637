"""Training throughput: bclm's `train_step` (accelerate + `action_loss`) vs a bare PyTorch loop.

Both sides train the same model config from the same initial weights (a deep copy) on the same batches
in the same precision, so the ratio measures only what bclm's step adds or saves:

* bclm: `train_step(model, optimizer, scheduler, stream, accelerator, optim)` on the model as `bclm train`
  builds it (number embeddings whose rows are computed each step, the state token, an untied output head), under
  `accelerate.Accelerator(cpu=True)`, with bclm's AdamW groups and cosine schedule; its loss
  (`action_loss`) sends only the label-carrying positions through the LM head (`logits_to_keep`);
* bare: `model(input_ids, attention_mask, labels=labels).loss.backward()`, `clip_grad_norm_`,
  `torch.optim.AdamW` step, `LambdaLR` step, `zero_grad` — the textbook Hugging Face loop.

Data: random CartPole-like episodes (Box(4) obs, Discrete(2) actions) tokenized into a `WindowDataset`
(context 256) and collated once into a fixed list of batches, so neither side pays for data loading in
the timed region and both see exactly the same tokens. Tokens are non-pad input tokens
(`attention_mask.sum()`), the count bclm's training loop logs as tokens/s.

The two sides are interleaved (A B A B ...) in rounds so that load from other processes hits both
alike; each side's tokens/s is the median over rounds.

    python benchmarks/train_throughput.py           # size base, batch 16, fp32
    python benchmarks/train_throughput.py --bf16    # bf16 autocast on both sides
    python benchmarks/train_throughput.py --task babyai --size small --context-length 64 --batch-size 64
                                                    # BabyAI-like views: packed cells, factored on bclm's side
    python benchmarks/train_throughput.py --quick   # seconds, to check the script runs
"""

from __future__ import annotations

import argparse
import copy
import math
import os
import statistics
import time
from collections.abc import Callable, Iterator

# OpenMP worker threads that wait for work by sleeping instead of spinning; set before torch is loaded.
# With torch's default of one thread per core, spinning threads on a machine shared with other jobs wait
# at every op for a peer that is not scheduled: on a loaded 2-core box we measured a small model's forward
# at 270 ms spinning vs 2.8 ms sleeping (1.9 ms with one thread). Export OMP_WAIT_POLICY=ACTIVE to measure
# with the spinning default.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import gymnasium as gym
import numpy as np
import torch
from accelerate import Accelerator

from bclm.data.collate import PadCollator
from bclm.data.sequences import WindowDataset, tokenize_episodes
from bclm.embeddings import attach_for, shared_radix
from bclm.models import ModelConfig, build_model
from bclm.state import attach_state
from bclm.tokenizers import BCTokenizer, TokenizerConfig
from bclm.trainer.config import OptimConfig
from bclm.trainer.step import make_optimizer, make_scheduler, train_step


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", choices=["cartpole", "babyai"], default="cartpole",
                   help="cartpole: Box(4) observations (number tokens); babyai: a direction and a 7x7 view of "
                        "(object, colour, state) cells packed 3 to a token (factored symbols)")
    p.add_argument("--size", default="base", help="bclm model size (tiny, small, base, ...)")
    p.add_argument("--context-length", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (default fp32)")
    p.add_argument("--rounds", type=int, default=5, help="A B rounds; the median over rounds is reported")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per side per round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per side first (optimizer state)")
    p.add_argument("--episodes", type=int, default=64, help="synthetic episodes in the dataset")
    # torch's default (one thread per core) is right on an idle machine; on a shared one, OpenMP threads
    # waiting for each other at every op can cost far more than the second core brings: try 1.
    p.add_argument("--deterministic", action="store_true",
                   help="also bclm's step under loop.deterministic (torch's deterministic algorithms), on a copy")
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings, only to check that the script runs")
    args = p.parse_args()
    if args.quick:
        args.size, args.context_length, args.batch_size = "tiny", 64, 4
        args.rounds, args.steps, args.warmup, args.episodes = 2, 2, 1, 8
    return args


def synthetic_batches(context_length: int, batch_size: int, count: int, episodes: int, seed: int
                      ) -> tuple[BCTokenizer, list[dict[str, torch.Tensor]]]:
    """`count` collated batches of windows over random CartPole-like episodes."""
    rng = np.random.default_rng(seed)
    # Varied episode lengths, so some windows are shorter than the context and batches carry padding,
    # as real datasets with early terminations do.
    lengths = rng.integers(20, 300, size=episodes)
    n = int(lengths.sum())
    obs = rng.normal(size=(n, 4)).astype(np.float32)
    act = rng.integers(0, 2, size=n)
    episode = np.repeat(np.arange(episodes), lengths)
    step = np.concatenate([np.arange(k) for k in lengths])
    tok = BCTokenizer(gym.spaces.Box(-np.inf, np.inf, (4,), np.float32), gym.spaces.Discrete(2),
                      TokenizerConfig())
    tok.fit(obs, act)
    return tok, collated_batches(tok, obs, act, episode, step, context_length, batch_size, count, seed)


def synthetic_cells(context_length: int, batch_size: int, count: int, episodes: int, seed: int
                    ) -> tuple[BCTokenizer, list[dict[str, torch.Tensor]]]:
    """`count` collated batches of windows over random BabyAI-like episodes (a 51-token step)."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(5, 64, size=episodes)
    n = int(lengths.sum())
    cell = np.array([11, 6, 3])
    space = gym.spaces.Dict({"direction": gym.spaces.Discrete(4),
                             "image": gym.spaces.MultiDiscrete(np.tile(cell, (49, 1)))})
    obs = {"direction": rng.integers(0, 4, size=n), "image": rng.integers(0, cell, size=(n, 49, 3))}
    act = rng.integers(0, 7, size=n)
    episode = np.repeat(np.arange(episodes), lengths)
    step = np.concatenate([np.arange(k) for k in lengths])
    tok = BCTokenizer(space, gym.spaces.Discrete(7), TokenizerConfig(group=3))
    tok.fit(obs, act)
    return tok, collated_batches(tok, obs, act, episode, step, context_length, batch_size, count, seed)


def collated_batches(tok: BCTokenizer, obs: np.ndarray, act: np.ndarray, episode: np.ndarray, step: np.ndarray,
                     context_length: int, batch_size: int, count: int, seed: int) -> list[dict[str, torch.Tensor]]:
    """`count` shuffled batches of bclm windows over these episodes (epochs repeat as needed)."""
    tokens = tokenize_episodes(tok, obs, act, episode, step, np.full(len(act), "default", dtype=object))
    loader = torch.utils.data.DataLoader(WindowDataset(tokens, tok, context_length), batch_size=batch_size,
                                         shuffle=True, drop_last=True, collate_fn=PadCollator(tok.pad_id),
                                         generator=torch.Generator().manual_seed(seed))
    out: list[dict[str, torch.Tensor]] = []
    while len(out) < count:
        out.extend(loader)
    return out[:count]


def bclm_stepper(model: torch.nn.Module, optim: OptimConfig, bf16: bool) -> Callable[[Iterator], None]:
    accelerator = Accelerator(cpu=True, mixed_precision="bf16" if bf16 else "no")
    optimizer = make_optimizer(model, optim)
    scheduler = make_scheduler(optimizer, optim)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    return lambda stream: train_step(model, optimizer, scheduler, stream, accelerator, optim)


def bare_stepper(model: torch.nn.Module, optim: OptimConfig, bf16: bool,
                 device: torch.device | None = None) -> Callable[[Iterator], None]:
    """The textbook Hugging Face loop (also the baseline of mfu.py, on a GPU)."""
    device = device or torch.device("cpu")
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=optim.lr, betas=optim.betas,
                            weight_decay=optim.weight_decay)

    # The same warmup + cosine-to-min-lr schedule as bclm's, written as a plain LambdaLR.
    def lr_factor(step: int) -> float:
        if step < optim.warmup_steps:
            return step / max(1, optim.warmup_steps)
        progress = (step - optim.warmup_steps) / max(1, optim.max_steps - optim.warmup_steps)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
        return optim.min_lr_ratio + (1.0 - optim.min_lr_ratio) * cosine

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_factor)
    model.train()

    def step(stream: Iterator) -> None:
        batch = next(stream)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                         labels=batch["labels"]).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), optim.grad_clip)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)

    return step


def deterministic(step: Callable[[Iterator], None]) -> Callable[[Iterator], None]:
    """`step` as `loop.deterministic` runs it; the other sides keep torch's default algorithms."""
    def run(stream: Iterator) -> None:
        torch.use_deterministic_algorithms(True)
        try:
            step(stream)
        finally:
            torch.use_deterministic_algorithms(False)
    return run


def timed(step: Callable[[Iterator], None], batches: list[dict[str, torch.Tensor]],
          device: torch.device | None = None) -> float:
    """tokens/s of `len(batches)` optimizer steps (on a GPU, synchronised before and after)."""
    tokens = sum(int(b["attention_mask"].sum()) for b in batches)
    stream = iter(batches)
    sync = torch.cuda.synchronize if device is not None and device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in batches:
        step(stream)
    sync()
    return tokens / (time.perf_counter() - start)


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    per_side = args.warmup + args.rounds * args.steps
    make_batches = synthetic_cells if args.task == "babyai" else synthetic_batches
    tok, batches = make_batches(args.context_length, args.batch_size, per_side, args.episodes, args.seed)
    torch.manual_seed(args.seed)
    model = build_model(ModelConfig(size=args.size), tok.vocab_size, args.context_length, tok.bos_id,
                        tok.eos_id, tok.pad_id)
    bare_model = copy.deepcopy(model)   # identical initial weights on both sides
    # bclm's side trains what `bclm train` does: number embeddings (computed rows) and an untied head; with
    # packed symbols, summed from their elements' rows (`model.symbol_factors`), and with free rows beside.
    radix = shared_radix([tok])
    optim = OptimConfig(max_steps=per_side, batch_size=args.batch_size, bf16=args.bf16, warmup_steps=2)
    sides = {}
    if radix:   # what factoring the packed symbols costs, against bclm's own step with free rows
        free_rows = copy.deepcopy(model)
        attach_for(free_rows, tok, ModelConfig().number_features, fresh=True)
        sides["bclm train_step, free symbol rows"] = bclm_stepper(free_rows, optim, args.bf16)
    attach_for(model, tok, ModelConfig().number_features, fresh=True, radix=radix)
    attach_state(model, {"default": tok})       # the state token, fed the batches' exact values
    if args.deterministic:
        sides["bclm train_step, deterministic"] = deterministic(bclm_stepper(copy.deepcopy(model), optim, args.bf16))
    sides["bclm train_step"] = bclm_stepper(model, optim, args.bf16)
    sides["bare PyTorch"] = bare_stepper(bare_model, optim, args.bf16)

    pad_share = 1 - sum(int(b["attention_mask"].sum()) for b in batches) / sum(b["attention_mask"].numel()
                                                                               for b in batches)
    precision = "bf16 autocast" if args.bf16 else "fp32"
    print(f"model {args.size} ({model.num_parameters() / 1e6:.2f}M params, vocab {tok.vocab_size}), "
          f"context {args.context_length}, batch {args.batch_size}, {precision}, "
          f"{pad_share:.0%} padding, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f}")

    # Warm-up: the first step allocates AdamW's state and grows the allocator; not what we measure.
    for step in sides.values():
        timed(step, batches[:args.warmup])
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(args.rounds):
        chunk = batches[args.warmup + r * args.steps: args.warmup + (r + 1) * args.steps]
        for name, step in sides.items():          # A then B, every round
            rates[name].append(timed(step, chunk))
        line = ", ".join(f"{n} {v[-1]:,.0f} tok/s" for n, v in rates.items())
        print(f"  round {r + 1}: {line}", flush=True)

    med = {name: statistics.median(v) for name, v in rates.items()}
    bclm, bare = med["bclm train_step"], med["bare PyTorch"]
    print()
    print("| loop | median tokens/s | min | max | vs bare |")
    print("|---|---:|---:|---:|---:|")
    for name, v in rates.items():
        print(f"| {name} | {med[name]:,.0f} | {min(v):,.0f} | {max(v):,.0f} | {med[name] / bare:.2f}x |")
    print()
    print(f"bclm / bare = {bclm / bare:.2f} (target >= 0.95)")
    if "bclm train_step, deterministic" in med:
        print(f"deterministic / default = {med['bclm train_step, deterministic'] / bclm:.2f}")
    if "bclm train_step, free symbol rows" in med:
        print(f"factored / free symbol rows = {bclm / med['bclm train_step, free symbol rows']:.2f}")
    # Other processes on the machine skew everything (see --threads): say whether any came and went.
    print(f"load average (1 min) at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
