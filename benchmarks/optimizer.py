"""AdamW step time: the fused kernel bclm uses (`fused=True`) against torch's default (foreach), per model size.

Both optimizers step the same parameters with the same random gradients; they alternate (A B A B ...) so that
load from other processes hits both alike, and the median over rounds is reported. On a GPU (when there is
one) the times are synchronised.

    python benchmarks/optimizer.py                 # sizes small, base, large
    python benchmarks/optimizer.py --quick         # seconds, to check the script runs
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see train_throughput.py

import torch

from bclm.models import ModelConfig, build_model


def timed_steps(optimizer: torch.optim.Optimizer, steps: int, device: torch.device) -> float:
    """Milliseconds per `optimizer.step()`."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for _ in range(steps):
        optimizer.step()
    sync()
    return (time.perf_counter() - start) / steps * 1e3


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["small", "base", "large"])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=20, help="optimizer steps per side per round")
    p.add_argument("--quick", action="store_true")
    args = p.parse_args()
    if args.quick:
        args.sizes, args.rounds, args.steps = ["tiny"], 2, 3
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    print(f"device {device}, torch {torch.__version__}, torch threads {torch.get_num_threads()}\n")
    print("| model | parameters | foreach AdamW | fused AdamW | speed-up |")
    print("|---|---:|---:|---:|---:|")
    for size in args.sizes:
        model = build_model(ModelConfig(size=size), 2048, 256, 1, 2, 0).to(device)
        for param in model.parameters():
            param.grad = torch.randn_like(param) * 1e-3
        sides = {"foreach": torch.optim.AdamW(model.parameters(), lr=1e-4, foreach=True),
                 "fused": torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)}
        for opt in sides.values():
            timed_steps(opt, 2, device)                # state allocated, kernels loaded
        ms: dict[str, list[float]] = {name: [] for name in sides}
        for _ in range(args.rounds):
            for name, opt in sides.items():
                ms[name].append(timed_steps(opt, args.steps, device))
        a, b = statistics.median(ms["foreach"]), statistics.median(ms["fused"])
        print(f"| {size} | {model.num_parameters() / 1e6:.1f}M | {a:.2f} ms | {b:.2f} ms | {a / b:.2f}x |")


if __name__ == "__main__":
    main()
