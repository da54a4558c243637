"""`bclm sweep`: learning curves, success against expert labels, for BC, DART, DAgger, HG-DAgger and budgeted
(gated) DAgger over seeds.

Every cell lives in its own resumable directory, so a killed sweep resumes without redoing finished cells:

    OUT/data/expert-seed-S/      expert episodes in blocks of 1, 1, 2, 4, ... 64 (BC budgets take a prefix
                                 of them), env seeds from dagger.seed + SEED_STRIDE * (S + 1)
    OUT/bc/labels-B/seed-S/      a BC policy on the longest prefix of those episodes within B labels
    OUT/data/dart-seed-S/        the same with the expert's actions perturbed by `dagger.noise` (DART)
    OUT/dart/labels-B/seed-S/    a BC policy on those, labeled with the expert's clean actions
    OUT/dagger/seed-S/           a DAgger run (`bclm dagger`'s layout), rounds added until the largest budget
    OUT/gated/seed-S/            the same with the expert asked only where the learner is unsure (and
    OUT/takeover/seed-S/         driving from there: `dagger.gate`), `dagger.gate_budget` of each round
    OUT/dart-fit/seed-S/         DART's fitted noise: rounds of noisy expert episodes, the level fitted to
                                 the last round's policy error on them
    OUT/sweep.json, sweep.md, success_vs_labels.png, mistakes_vs_t.png

Labels are counted alike for every method: the expert-labeled steps of the data a policy was trained on.
A method's point at budget B is, per seed, its policy with the most labels that do not exceed B (BC: the
longest episode prefix; DAgger: the last round within B), so every method is compared at equal labels.
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bclm import atomic, dirlock, interrupt
from bclm.config import option
from bclm.data.store import META_FILE, TrajectoryStore
from bclm.envs import TaskSpec, get_task
from bclm.errors import BCLMError
from bclm.eval.compare import horizon_exponent, iqm, mean_ci, paired
from bclm.eval.curves import markdown_table, plot_curves, plot_differences
from bclm.eval.plots import plot_mistakes
from bclm.rollout import NO_NOISE, Noise
from bclm.rollout.shards import create_store, expert_ref_of, write_expert_shard
from bclm.trainer.bc import train
from bclm.trainer.dagger import DaggerRecipe, needs_training, rounds_held, run_dagger, train_recipe

# method -> how its DAgger rounds choose who labels (offline methods have no rounds)
METHODS: dict[str, dict[str, str]] = {
    "bc": {}, "dart": {}, "dagger": {}, "hg-dagger": {"intervener": "expert-gated"},
    "gated": {"gate": "query"}, "takeover": {"gate": "takeover"}, "dart-fit": {"noise": "fit"}}
OFFLINE = ("bc", "dart")       # a policy per budget, trained on a prefix of the seed's demonstrations
# Sweep seed S's envs start at dagger.seed + SEED_STRIDE * (S + 1): apart from the other seeds' (each seed's
# data and DAgger rounds are its own sample, or the CI would be over one sample) and from the evaluation's
# (eval.seed 10,000 + i: a sweep of 1000 * S + i, before, trained on the very layouts it was scored on once a
# seed passed 10,000 - 1000 * S episodes). A DAgger round r adds 100,000 * r, its extra episodes 7,777,777.
SEED_STRIDE = 10_000_019
BLOCK = 64                     # expert episodes per shard at most (see block_size)


@dataclass
class SweepConfig:
    methods: list[str] = option(["bc", "dagger"], f"Methods to compare: {', '.join(METHODS)}.")
    budgets: list[int] = option([500, 1000, 2000], "Expert-label budgets: the curve's points.")
    seeds: int = option(3, "Seeds per cell (data, model initialisation and rollouts); the CI is over them.")
    first_seed: int = option(0, "The first seed: seeds first_seed ... first_seed + seeds - 1, so that a second "
                                "sweep over a disjoint set of seeds can check a first one's conclusion.")
    max_rounds: int = option(20, "DAgger rounds at most, if the largest budget is not reached before.")
    jobs: int = option(0, "Cells run in parallel processes (0 = one per 2 cores).")

    def __post_init__(self) -> None:
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise BCLMError(f"sweep.methods {self.methods}: expected some of {list(METHODS)}")
        if not self.budgets or min(self.budgets) < 1:
            raise BCLMError(f"sweep.budgets {self.budgets}: expected positive label counts")
        if self.seeds < 1 or self.max_rounds < 1 or self.jobs < 0 or self.first_seed < 0:
            raise BCLMError("sweep.seeds and sweep.max_rounds must be >= 1, sweep.jobs and sweep.first_seed >= 0")
        self.budgets = sorted(set(self.budgets))

    @property
    def seed_range(self) -> range:
        return range(self.first_seed, self.first_seed + self.seeds)


@dataclass
class SweepRecipe(DaggerRecipe):
    sweep: SweepConfig = field(default_factory=SweepConfig, metadata={"help": "sweep"})


@dataclass(frozen=True)
class Cell:
    method: str
    seed: int
    budget: int | None = None          # BC and DART cells; a DAgger cell covers every budget with its rounds

    def path(self, out: Path) -> Path:
        if self.method in OFFLINE:
            return out / self.method / f"labels-{self.budget}" / f"seed-{self.seed}"
        return out / self.method / f"seed-{self.seed}"


def cells(config: SweepConfig) -> list[Cell]:
    out = []
    for seed in config.seed_range:
        for method in config.methods:
            budgets = config.budgets if method in OFFLINE else [None]
            out.extend(Cell(method, seed, b) for b in budgets)
    return out


# --- one cell ----------------------------------------------------------------------------------------
def first_env_seed(recipe: SweepRecipe, seed: int) -> int:
    return recipe.dagger.seed + SEED_STRIDE * (seed + 1)


def seed_store(task: TaskSpec, path: Path, first: int) -> TrajectoryStore:
    """The seed's expert store, created with its first env seed recorded; one collected under other seeds
    (by a bclm before SEED_STRIDE, or with another dagger.seed) is refused rather than extended."""
    if not (path / META_FILE).is_file():
        return create_store(task, path, origin={"sweep_first_env_seed": first})
    store = TrajectoryStore(path)
    found = store.meta.get("sweep_first_env_seed", "an older scheme")
    if found != first:
        raise BCLMError(f"{path}: collected with env seeds from {found}, expected {first} (an older bclm's sweep "
                        "seeds overlap the evaluation's and each other's); use a new --output-dir")
    return store


def block_size(i: int) -> int:
    """Episodes of the expert shard that starts at episode i: 1, 1, 2, 4, ... up to BLOCK. Writing a shard
    costs more than an episode of BabyAI's bot (0.11 s against 0.07 s), so one shard per episode made
    collection several times slower (benchmarks/sweep_collection.py); doubling collects at most as many
    again (or BLOCK) past the largest budget, and a block's size depends only on where it starts, so a sweep
    with a larger budget collects the same data."""
    return min(BLOCK, max(1, i))


def expert_episodes(recipe: SweepRecipe, out: Path, seed: int, method: str = "bc") -> list[tuple[str, int]]:
    """(shard, labels) of each of the seed's expert episodes, in order, collected in blocks (a shard each)
    until the largest budget is passed; for 'dart', with the expert's executed actions perturbed by
    `dagger.noise`. Episode i's env is seeded first + i when it is the first of its env in the block."""
    task = get_task(recipe.dagger.env)
    ref = expert_ref_of(task, recipe.dagger.expert or None)
    noise = Noise.parse(recipe.dagger.noise, "dagger.noise") if method == "dart" else NO_NOISE
    first = first_env_seed(recipe, seed)
    store = seed_store(task, expert_store(out, seed, method), first)
    episodes, total, done = [], 0, set(store.shard_names())
    while total <= recipe.sweep.budgets[-1]:
        name = f"ep-{len(episodes):05d}"
        if name not in done:
            write_expert_shard(store, task, ref, block_size(len(episodes)), seed=first + len(episodes),
                               num_envs=recipe.dagger.num_envs, shard=name, noise=noise)
        _, labels = np.unique(store.load([name])["episode"], return_counts=True)
        episodes += [(name, int(n)) for n in labels]
        total += int(labels.sum())
    return episodes


def within_budget(episodes: list[tuple[str, int]], budget: int) -> tuple[list[str], int, int]:
    """The longest prefix of (shard, labels) episodes whose labels stay within `budget` (at least one): its
    shards, episodes and labels; a larger budget's data holds a smaller one's."""
    count, labels = 1, episodes[0][1]
    while count < len(episodes) and labels + episodes[count][1] <= budget:
        labels += episodes[count][1]
        count += 1
    return list(dict.fromkeys(name for name, _ in episodes[:count])), count, labels


def expert_store(out: Path, seed: int, method: str = "bc") -> Path:
    return out / "data" / f"{'dart' if method == 'dart' else 'expert'}-seed-{seed}"


def run_bc_cell(recipe: SweepRecipe, out: Path, cell: Cell) -> dict[str, Any]:
    chosen, count, labels = within_budget(expert_episodes(recipe, out, cell.seed, cell.method), cell.budget)
    policy_dir = cell.path(out)
    if needs_training(recipe, policy_dir):
        task = get_task(recipe.dagger.env)
        train(train_recipe(recipe, dataset=str(expert_store(out, cell.seed, cell.method)), output_dir=str(policy_dir),
                           data=dataclasses.replace(recipe.data, shards=chosen, max_episodes=count),
                           loop=dataclasses.replace(recipe.loop, seed=cell.seed),
                           eval=dataclasses.replace(recipe.eval, env=task.name,
                                                    expert=recipe.dagger.expert or (task.expert or ""))))
    report = json.loads((policy_dir / "eval_report.json").read_text())
    return {"expert_labels": labels, "episodes_trained": count, **report}


def run_dagger_cell(recipe: SweepRecipe, out: Path, cell: Cell) -> list[dict[str, Any]]:
    """Rounds added one at a time (each call resumes the run on disk) until the largest budget is reached."""
    cfg = recipe.dagger
    # `dagger.noise` is the DART methods' (dart-fit keeps its kind): the other methods start from clean
    # demonstrations, as BC's, so that every method is compared from the same kind of data.
    kind = Noise.parse(cfg.noise, "dagger.noise").kind
    labeler = {"intervener": "", "gate": "", "noise": "", **METHODS[cell.method]}
    if cell.method == "dart-fit" and kind:
        labeler["noise"] = f"{kind}:fit"
    dagger = dataclasses.replace(cfg, **labeler, bc_baseline=False,
                                 seed=first_env_seed(recipe, cell.seed), beta_rounds=cfg.beta_rounds or cfg.rounds)
    seeded = dataclasses.replace(recipe.loop, seed=cell.seed)
    rows: list[dict[str, Any]] = []
    # From the rounds a killed cell already holds: asking DAgger for fewer than its directory holds is refused.
    for rounds in range(min(rounds_held(cell.path(out)), recipe.sweep.max_rounds), recipe.sweep.max_rounds + 1):
        run = dataclasses.replace(recipe, output_dir=str(cell.path(out)), loop=seeded,
                                  dagger=dataclasses.replace(dagger, rounds=rounds))
        rows = run_dagger(run)["rounds"]
        if rows[-1]["expert_labels"] >= recipe.sweep.budgets[-1]:
            break
    return rows


def run_cell(recipe: SweepRecipe, out: Path, cell: Cell, threads: int = 0) -> dict[str, Any]:
    if threads:
        import torch

        torch.set_num_threads(threads)
    with interrupt.task():
        points = [run_bc_cell(recipe, out, cell)] if cell.method in OFFLINE else run_dagger_cell(recipe, out, cell)
    return {"cell": dataclasses.asdict(cell), "points": points}


# --- the sweep -----------------------------------------------------------------------------------------
def run_sweep(recipe: SweepRecipe) -> dict[str, Any]:
    if not recipe.output_dir:
        raise BCLMError("output_dir is required (--output-dir DIR)")
    if not recipe.dagger.env:
        raise BCLMError("the sweep needs a task: --env NAME (dagger.env in a recipe)")
    expert_ref_of(get_task(recipe.dagger.env), recipe.dagger.expert or None)     # fail before any work
    noise = Noise.parse(recipe.dagger.noise, "dagger.noise")
    if "dart" in recipe.sweep.methods and (not noise or noise.fit):
        raise BCLMError("sweep method 'dart' needs a fixed noise level: --dagger.noise eps:P or gauss:S (for a "
                        "fitted one, the method 'dart-fit')")
    out = Path(recipe.output_dir)
    with dirlock.exclusive(out):
        return _run_sweep(recipe, out)


def _run_sweep(recipe: SweepRecipe, out: Path) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    todo = cells(recipe.sweep)
    jobs = recipe.sweep.jobs or max(1, (os.cpu_count() or 2) // 2)
    # Collected first, once per (method, seed) and in parallel like the cells: the offline cells of one seed
    # then read the same episodes.
    stores = [(m, seed) for m in recipe.sweep.methods if m in OFFLINE for seed in recipe.sweep.seed_range]
    _in_parallel(collect_seed, [(recipe, out, m, seed) for m, seed in stores], jobs)
    bar = tqdm(total=len(todo), desc="sweep cells", unit="cell", leave=False, disable=not recipe.loop.progress)
    results = _in_parallel(run_cell, [(recipe, out, c) for c in todo], jobs, bar)
    bar.close()
    summary = summarize(results, recipe.sweep)
    report = {"env": recipe.dagger.env, "budgets": recipe.sweep.budgets, "cells": results, "summary": summary,
              "comparisons": comparisons(summary)}
    write_outputs(report, out, recipe.dagger.env)
    return report


def collect_seed(recipe: SweepRecipe, out: Path, method: str, seed: int, _threads: int = 0) -> None:
    with interrupt.task():                     # the envs and the expert: no torch threads to set
        expert_episodes(recipe, out, seed, method)


def _in_parallel(fn: Any, calls: list[tuple[Any, ...]], jobs: int, bar: tqdm | None = None) -> list[Any]:
    """[fn(*call, threads) for each call], in `jobs` processes when there are several; `bar` counts them."""
    def counted(result: Any) -> Any:
        if bar is not None:
            bar.update(1)
        return result

    if jobs == 1 or len(calls) <= 1:
        return [counted(fn(*call)) for call in calls]
    processes = min(jobs, len(calls))
    threads = max(1, (os.cpu_count() or 2) // processes)
    pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"),
                               initializer=interrupt.install_worker)
    try:
        return [counted(r) for r in pool.map(fn, *zip(*calls), [threads] * len(calls))]
    except BaseException:
        # A SIGTERM sent to the sweep alone (`kill PID`, a scheduler), or a call that failed, would leave the
        # other calls running on, and the workers would go on to the queued ones (the executor cannot cancel
        # those it has handed out): signal them, so that each running call checkpoints and stops and no worker
        # starts another.
        for worker in multiprocessing.active_children():
            worker.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def at_budget(points: list[dict[str, Any]], budget: int) -> dict[str, Any] | None:
    """The point with the most labels within `budget` (None where even the first exceeds it)."""
    within = [p for p in points if p["expert_labels"] <= budget]
    return max(within, key=lambda p: p["expert_labels"]) if within else None


def summarize(results: list[dict[str, Any]], config: SweepConfig) -> dict[str, list[dict[str, Any]]]:
    summary: dict[str, list[dict[str, Any]]] = {}
    for method in config.methods:
        for budget in config.budgets:
            runs = [r for r in results if r["cell"]["method"] == method
                    and r["cell"]["budget"] in (budget, None)]
            pairs = [(r["cell"]["seed"], p) for r in runs if (p := at_budget(r["points"], budget)) is not None]
            if not pairs:
                continue
            seeds, points = [s for s, _ in pairs], [p for _, p in pairs]
            row: dict[str, Any] = {"budget": budget, "seeds": seeds}
            for key in ("expert_labels", "success_rate", "mean_return", "mistakes_per_episode"):
                if all(key in p for p in points):
                    values = [p[key] for p in points]
                    row[key] = {**mean_ci(values), "values": values, "iqm": iqm(values)}
            curves = [p["mistakes_vs_t"] for p in points if p.get("mistakes_vs_t")]
            if len(curves) == len(points):
                row["mistakes_vs_t"] = np.mean(_same_length(curves), axis=0).round(4).tolist()
                row["horizon_exponent"] = horizon_exponent(row["mistakes_vs_t"])
            summary.setdefault(method, []).append(row)
    return summary


def _same_length(curves: list[list[float]]) -> np.ndarray:
    """Mistakes-vs-t curves of the seeds, each carried to the longest at its last step's rate: an env with no time
    limit gives each evaluation the horizon of its longest episode, short where every episode failed early
    (and failed episodes count a mistake per step from there on, `cumulative_mistakes`)."""
    n = max(len(c) for c in curves)
    out = np.zeros((len(curves), n))
    for i, c in enumerate(curves):
        rate = c[-1] - (c[-2] if len(c) > 1 else 0.0)
        out[i] = np.concatenate([c, c[-1] + rate * np.arange(1, n - len(c) + 1)])
    return out


def comparisons(summary: dict[str, list[dict[str, Any]]], baseline: str = "bc") -> list[dict[str, Any]]:
    """Each other method against `baseline` at each budget both reached, paired over their common seeds:
    success and mistakes per episode (`bclm.eval.compare.paired`)."""
    if baseline not in summary:
        return []
    base = {row["budget"]: row for row in summary[baseline]}
    out = []
    for method, rows in summary.items():
        for row in rows:
            if method == baseline or row["budget"] not in base:
                continue
            entry: dict[str, Any] = {"method": method, "baseline": baseline, "budget": row["budget"]}
            for key in ("success_rate", "mistakes_per_episode"):
                if key in row and key in base[row["budget"]]:
                    a, b = (dict(zip(r["seeds"], r[key]["values"])) for r in (row, base[row["budget"]]))
                    entry[key] = paired(a, b)
            out.append(entry)
    return out


def write_outputs(report: dict[str, Any], out: Path, env: str) -> None:
    summary = report["summary"]
    atomic.write_json(out / "sweep.json", report, indent=2)
    atomic.write_text(out / "sweep.md", markdown_table(summary, report.get("comparisons", [])))
    plot_curves(summary, out / "success_vs_labels.png", title=f"{env}: success vs expert labels")
    if any(c.get("success_rate") for c in report.get("comparisons", [])):
        plot_differences(report["comparisons"], out / "paired_difference.png",
                         title=f"{env}: success difference on the same seeds")
    curves = [{"name": f"{method}, budget {rows[-1]['budget']:,}", "mistakes_vs_t": rows[-1]["mistakes_vs_t"],
               "expert_labels": round(rows[-1]["expert_labels"]["mean"])}
              for method, rows in summary.items() if rows and "mistakes_vs_t" in rows[-1]]
    if curves:
        plot_mistakes(curves, out / "mistakes_vs_t.png", title=f"{env}: mistakes vs horizon (mean over seeds)")
