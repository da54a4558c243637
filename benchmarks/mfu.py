"""Training tokens/s and model FLOPs utilisation (MFU) of bclm's training step on one GPU.

The model is bclm's Llama "large" size (12 layers, d=768, 113M parameters without embeddings), trained in
bf16 autocast on synthetic Meta-World-like episodes (39-d observations, 4-d actions: 44 tokens per step)
cut into full-length windows. Two sides train the same initial weights on the same batches, interleaved
in rounds (A B A B ...) so that clock or load changes hit both alike:

* bclm: `train_step` under `accelerate.Accelerator(mixed_precision="bf16")` with bclm's AdamW groups,
  cosine schedule and `action_loss` (LM head only at the positions that predict action tokens);
* bare: `model(input_ids, attention_mask, labels=labels).loss.backward()` under `torch.autocast`,
  `clip_grad_norm_`, AdamW, `LambdaLR` — the textbook Hugging Face loop, as the baseline.

MFU follows PaLM (Chowdhery et al. 2022, appendix B): model FLOPs per token = 6·N + 12·L·d·T, with N the
non-embedding parameters, L layers, d the hidden size and T the context length (the attention term counts
the full T×T score matrix, as PaLM does, although causal attention computes about half of it). MFU =
tokens/s × FLOPs per token / the accelerator's peak dense bf16 FLOP/s. The LM head is left out of N: the
vocabulary is ~1K tokens, and bclm evaluates it only at action positions (4 of every 44 tokens).

    python benchmarks/mfu.py                       # large model, context 1024, batch 32, on the GPU
    python benchmarks/mfu.py --compile             # with torch.compile on both sides
    python benchmarks/mfu.py --quick               # seconds, on CPU, to check that the script runs
"""

from __future__ import annotations

import argparse
import copy
import statistics

import gymnasium as gym
import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import send_to_device

# The baseline loop and the timer are train_throughput.py's (this folder is on sys.path when run as a script).
from train_throughput import bare_stepper, collated_batches, timed

from bclm.models import ModelConfig, build_model
from bclm.tokenizers import BCTokenizer, TokenizerConfig
from bclm.trainer.config import OptimConfig
from bclm.trainer.step import make_optimizer, make_scheduler, train_step

# Dense bf16 peak FLOP/s by device-name substring (vendor datasheets, without sparsity). The H200 has the
# H100 SXM's compute; only its memory differs.
PEAK_BF16 = {"H100": 989.4e12, "H200": 989.4e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="large", help="bclm model size (large = 113M non-embedding parameters)")
    p.add_argument("--context-length", type=int, default=1024)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--hidden-size", type=int, default=0, help="override the size's hidden size (and heads of 64)")
    p.add_argument("--layers", type=int, default=0, help="override the size's number of layers")
    p.add_argument("--compile", action="store_true", help="torch.compile the model on both sides")
    p.add_argument("--rounds", type=int, default=5, help="A B rounds; the median over rounds is reported")
    p.add_argument("--steps", type=int, default=10, help="optimizer steps per side per round")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps per side first (compile, allocator)")
    p.add_argument("--peak-tflops", type=float, default=0.0,
                   help="peak dense bf16 TFLOP/s of the device (default: looked up from its name)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="tiny settings on CPU, only to check that the script runs")
    args = p.parse_args()
    if args.quick:
        args.size, args.context_length, args.batch_size = "tiny", 88, 4
        args.rounds, args.steps, args.warmup = 2, 2, 1
    return args


def peak_flops(device: torch.device, given_tflops: float) -> tuple[float, str]:
    if given_tflops:
        return given_tflops * 1e12, "given"
    if device.type != "cuda":
        return 0.0, "cpu"
    name = torch.cuda.get_device_name(device)
    for key, value in PEAK_BF16.items():
        if key in name:
            return value, name
    raise SystemExit(f"unknown peak bf16 FLOP/s for {name!r}: pass --peak-tflops")


def synthetic_batches(context_length: int, batch_size: int, count: int, seed: int
                      ) -> tuple[BCTokenizer, list[dict[str, torch.Tensor]]]:
    """`count` collated batches of full windows over random 500-step episodes (39-d obs, 4-d actions)."""
    rng = np.random.default_rng(seed)
    steps, episodes = 500, max(4, count * batch_size // 200)
    n = steps * episodes
    obs = rng.normal(size=(n, 39)).astype(np.float32)
    act = rng.uniform(-1, 1, size=(n, 4)).astype(np.float32)
    tok = BCTokenizer(gym.spaces.Box(-np.inf, np.inf, (39,), np.float32),
                      gym.spaces.Box(-1.0, 1.0, (4,), np.float32), TokenizerConfig())
    tok.fit(obs, act)
    return tok, collated_batches(tok, obs, act, np.repeat(np.arange(episodes), steps),
                                 np.tile(np.arange(steps), episodes), context_length, batch_size, count, seed)


def bclm_stepper(model: torch.nn.Module, optim: OptimConfig, cpu: bool):
    accelerator = Accelerator(cpu=cpu, mixed_precision="bf16")
    optimizer = make_optimizer(model, optim)
    scheduler = make_scheduler(optimizer, optim)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    model.train()
    return accelerator.device, lambda stream: train_step(model, optimizer, scheduler, stream, accelerator, optim)


def main() -> None:
    args = parse_args()
    cpu = args.quick or not torch.cuda.is_available()
    per_side = args.warmup + args.rounds * args.steps
    tok, batches = synthetic_batches(args.context_length, args.batch_size, per_side, args.seed)
    torch.manual_seed(args.seed)
    overrides = {}
    if args.hidden_size:
        overrides.update(hidden_size=args.hidden_size, intermediate_size=4 * args.hidden_size,
                         num_attention_heads=args.hidden_size // 64)
    if args.layers:
        overrides["num_hidden_layers"] = args.layers
    model = build_model(ModelConfig(size=args.size, overrides=overrides), tok.vocab_size, args.context_length,
                        tok.bos_id, tok.eos_id, tok.pad_id)
    n_params = model.num_parameters() - model.get_input_embeddings().weight.numel()    # the head is tied
    cfg = model.config
    flops_per_token = 6 * n_params + 12 * cfg.num_hidden_layers * cfg.hidden_size * args.context_length
    bare_model = copy.deepcopy(model)
    if args.compile:
        model, bare_model = torch.compile(model), torch.compile(bare_model)
    optim = OptimConfig(max_steps=per_side, batch_size=args.batch_size, bf16=True, warmup_steps=2)
    device, bclm_step = bclm_stepper(model, optim, cpu)
    sides = {"bclm train_step": bclm_step, "bare PyTorch": bare_stepper(bare_model, optim, True, device)}
    # Moved once, outside the timed region: both sides then measure the step, not host-to-device copies.
    batches = [send_to_device(b, device) for b in batches]
    peak, peak_source = peak_flops(device, args.peak_tflops)

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {name}; model {args.size} {overrides or ''} ({n_params / 1e6:.1f}M non-embedding parameters, "
          f"vocab {tok.vocab_size}), context {args.context_length}, batch {args.batch_size}, bf16 autocast, "
          f"compile {args.compile}; torch {torch.__version__}")
    print(f"FLOPs/token = 6N + 12·L·d·T = {flops_per_token / 1e6:.0f} MFLOP; peak {peak / 1e12:.1f} TFLOP/s "
          f"({peak_source})")
    for step in sides.values():
        timed(step, batches[:args.warmup], device)
    rates: dict[str, list[float]] = {n: [] for n in sides}
    for r in range(args.rounds):
        chunk = batches[args.warmup + r * args.steps: args.warmup + (r + 1) * args.steps]
        for n, step in sides.items():
            rates[n].append(timed(step, chunk, device))
        print(f"  round {r + 1}: " + ", ".join(f"{n} {v[-1]:,.0f} tok/s" for n, v in rates.items()), flush=True)

    med = {n: statistics.median(v) for n, v in rates.items()}
    print()
    print("| loop | median tokens/s | model TFLOP/s | MFU | vs bare |")
    print("|---|---:|---:|---:|---:|")
    for n, v in med.items():
        tflops = v * flops_per_token / 1e12
        mfu = f"{v * flops_per_token / peak:.1%}" if peak else "-"
        print(f"| {n} | {v:,.0f} | {tflops:.1f} | {mfu} | {v / med['bare PyTorch']:.2f}x |")
    if device.type == "cuda":
        print(f"\npeak GPU memory {torch.cuda.max_memory_allocated(device) / 2**30:.1f} GiB")


if __name__ == "__main__":
    main()
