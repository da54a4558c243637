"""Training without padding: real (non-pad) tokens per second, padded batches against packed ones.

The data is a real recipe's, through the real pipeline: `recipes/joint.yaml` (BabyAI GoToLocal, Meta-World
reach and push, CartPole: windows of 19 to 64 tokens) or `recipes/mt10.yaml` (ten Meta-World tasks, one
step each), collected by their experts with fewer episodes (`--episodes-scale`) and prepared by
`prepare_data` as `bclm train` does. The same windows, drawn by the recipe's mixture sampler, are collated
twice: padded (`PadCollator`, one window per row) and packed (`PackCollator`, rows of `--row-factor` x the
context). Each side trains its own copy of the same initial model with `train_step`; the sides alternate
(A B A B ...) so that load from other processes hits both alike, and the median over rounds is reported.
The first batch's loss is printed from both sides: it must agree.

    python benchmarks/packing.py                      # joint recipe
    python benchmarks/packing.py --recipe recipes/mt10.yaml
    python benchmarks/packing.py --quick              # seconds, to check the script runs
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")   # see train_throughput.py

import torch
from accelerate import Accelerator

from bclm import config as cfg
from bclm.data.collate import PackCollator, PadCollator
from bclm.embeddings import attach_for
from bclm.models import build_model
from bclm.trainer.config import TrainRecipe
from bclm.trainer.data import prepare_data
from bclm.trainer.step import action_loss, make_optimizer, make_scheduler, train_step


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--recipe", default="recipes/joint.yaml")
    p.add_argument("--data-dir", default="/tmp/bclm-bench-packing", help="where the demonstrations are kept")
    p.add_argument("--episodes-scale", type=float, default=0.1, help="fraction of the recipe's episodes collected")
    p.add_argument("--row-factor", type=int, nargs="+", default=[1, 4], help="packed row length / context")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per side per round")
    p.add_argument("--size", default="", help="model size (default: the recipe's)")
    p.add_argument("--set", nargs="*", default=[], metavar="--SECTION.FIELD VALUE",
                   help="recipe overrides, e.g. --set --data.history observations --data.context_length 256")
    p.add_argument("--quick", action="store_true", help="tiny settings, only to check that the script runs")
    args, unknown = p.parse_known_args()
    args.set += unknown                   # overrides after --set that argparse took for options of its own
    if args.quick:
        args.episodes_scale, args.rounds, args.steps, args.size = 0.02, 1, 1, "tiny"
    return args


def recipe_for(args: argparse.Namespace) -> TrainRecipe:
    recipe = cfg.build_config(TrainRecipe, args.recipe, ["--output-dir", args.data_dir, *args.set])
    tasks = [dataclasses.replace(t, episodes=max(2, round(t.episodes * args.episodes_scale))) for t in recipe.tasks]
    model = dataclasses.replace(recipe.model, size=args.size or recipe.model.size)
    return dataclasses.replace(recipe, tasks=tasks, model=model)


def main() -> None:
    args = parse_args()
    recipe = recipe_for(args)
    data = prepare_data(recipe)
    tok = data.tokenizers[data.task_names[0]]
    torch.manual_seed(0)
    model = build_model(recipe.model, tok.vocab_size, data.context_length, tok.bos_id, tok.eos_id, tok.pad_id)
    attach_for(model, max(data.tokenizers.values(), key=lambda t: t.own_number_slots),
               recipe.model.number_features, fresh=True)
    per_side = 1 + args.rounds * args.steps
    batch = recipe.train.batch_size
    sampler, order = data.sampler(0), []
    while len(order) < per_side * batch:                # as many epochs of the mixture's draws as needed
        sampler.set_epoch(len(order) // max(1, len(sampler)))
        order += list(sampler)
    windows = [[data.train_set[i] for i in order[b * batch:(b + 1) * batch]] for b in range(per_side)]
    collators = {"padded": PadCollator(tok.pad_id)}
    collators.update({f"packed x{f}": PackCollator(tok.pad_id, f * data.context_length) for f in args.row_factor})
    batches = {name: [c(w) for w in windows] for name, c in collators.items()}
    optim = dataclasses.replace(recipe.train, max_steps=per_side, warmup_steps=1, epochs=0.0)
    lengths = [len(it["input_ids"]) for w in windows for it in w]
    print(f"{Path(args.recipe).name} {' '.join(args.set)}: {len(data.task_names)} tasks, {len(data.train_set)} "
          f"windows of {min(lengths)}-{max(lengths)} tokens (context {data.context_length}), batch {batch}, model "
          f"{recipe.model.size} ({model.num_parameters() / 1e6:.2f}M), torch threads {torch.get_num_threads()}")
    accelerator = Accelerator(cpu=True)
    sides = {}
    for name in batches:
        m = copy.deepcopy(model).train()
        first = action_loss(m, batches[name][0], len(data.task_names))[0].item()
        opt = make_optimizer(m, optim)
        sides[name] = (m, opt, make_scheduler(opt, optim), first)
    rates: dict[str, list[float]] = {name: [] for name in sides}
    for r in range(-1, args.rounds):                 # round -1: warm-up (AdamW state), not reported
        for name, (m, opt, sched, _) in sides.items():
            chunk = batches[name][1:2] if r < 0 else batches[name][1 + r * args.steps:1 + (r + 1) * args.steps]
            start = time.perf_counter()
            for _ in chunk:
                train_step(m, opt, sched, iter(chunk), accelerator, optim, len(data.task_names))
            rate = sum(int(b["real_tokens"]) for b in chunk) / (time.perf_counter() - start)
            if r >= 0:
                rates[name].append(rate)
    base = statistics.median(rates["padded"])
    print("\n| batches | tokens per batch (real / in rows) | first-batch loss | real tokens/s | vs padded |")
    print("|---|---:|---:|---:|---:|")
    for name, (_, _, _, first) in sides.items():
        real = statistics.mean(int(b["real_tokens"]) for b in batches[name])
        total = statistics.mean(b["input_ids"].numel() for b in batches[name])
        rate = statistics.median(rates[name])
        print(f"| {name} | {real:,.0f} / {total:,.0f} | {first:.5f} | {rate:,.0f} | {rate / base:.2f}x |")


if __name__ == "__main__":
    main()
