"""DAgger: train → roll out the β-mixture of policy and expert → the expert labels every visited state →
aggregate → retrain. Rounds are explicit and on disk, so a crashed run resumes at its first unfinished
round:

    OUT/data/round-000    expert demonstrations        OUT/round-000/   BC policy on round 0 (+ eval report)
    OUT/data/round-001    β₁-mixture rollouts, labeled  OUT/round-001/   policy on rounds ≤ 1
    ...                                                 OUT/dagger_report.json, OUT/mistakes.png
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from bclm import atomic, dirlock, distributed, failpoints
from bclm.config import option
from bclm.data.store import TrajectoryStore
from bclm.envs import TaskSpec, get_task, load_expert
from bclm.errors import BCLMError
from bclm.eval.evaluate import check_unseen, write_report
from bclm.eval.plots import plot_mistakes
from bclm.policy import ActSession, Policy
from bclm.rollout import (
    NO_NOISE,
    ExpertActor,
    FittedNoiseActor,
    Gate,
    GatedActor,
    InterventionActor,
    MixtureActor,
    Noise,
    load_intervener,
    run_episodes,
)
from bclm.rollout.shards import expert_ref_of, open_store, write_expert_shard, write_gathered
from bclm.trainer.bc import QUANTIZATION_FILE, largest, train
from bclm.trainer.config import TaskEntry, TrainRecipe
from bclm.trainer.data import task_entries
from bclm.trainer.launch import init_processes, whole_models
from bclm.trainer.rundir import run_finished

ROUND = "round-{:03d}"
ROUND_SEEDS = 100_000     # round r rolls out envs seeded seed + ROUND_SEEDS * r + i


@dataclass
class DaggerConfig:
    env: str = option("", "Task name or gymnasium id (also module:EnvId-v0).")
    expert: str = option("", "Expert: builtin name or module:callable ('' = the task's).")
    rounds: int = option(3, "DAgger rounds after round 0 (the expert demonstrations).")
    initial_episodes: int = option(10, "Expert episodes in round 0.")
    noise: str = option("", "DART on round 0: the expert's executed actions are perturbed, its clean actions are "
                            "the labels: eps:P (a random action with probability P) or gauss:S (Gaussian noise "
                            "of S times half the action range). eps:fit, gauss:fit or fit (eps for discrete "
                            "actions, gauss for continuous): DART's fitted level instead, clean round 0, then "
                            "rounds of noisy expert episodes whose level is the last policy's error on them. In "
                            "`bclm sweep` this is the 'dart' method's noise ('dart-fit' fits it).")
    episodes_per_round: int = option(10, "Mixture episodes rolled out and labeled in each later round.")
    beta: str = option("linear", "β schedule over rounds i >= 1: constant | linear | geometric (β₀ = 1).")
    beta_value: float = option(0.5, "β of the constant schedule, or p of the geometric one (β_i = p^i).")
    beta_rounds: int = option(0, "Rounds over which the linear schedule decays to 0 (0 = `rounds`).")
    rollout_max_steps: int = option(
        0, "Truncate the rollouts of rounds >= 1 after this many steps (0 = the env's own limit): once a learner is "
           "stuck in a loop, more steps of it cost labels and add little the expert has not already labeled.")
    label_repeats: bool = option(
        True, "β-mixture rounds: ask the expert again where a rollout revisits an observation it already labeled "
              "in that episode. False: such steps (a learner in a loop) stay in the history with no loss and cost "
              "no label; where the expert drives it is asked all the same.")
    warm_start: bool = option(True, "Start each round's training from the previous round's policy.")
    intervener: str = option(
        "", "HG-DAgger instead of the β-mixture: who may take over from the learner. 'expert-gated' (the "
            "expert, where it disagrees), 'human' (terminal), or 'module:callable' (obs, learner_action) -> "
            "action or None. Only intervention steps are labeled.")
    gate: str = option(
        "", "Budgeted DAgger instead of the β-mixture: the learner acts and the expert is asked only where the "
            "learner is unsure (its action tokens' entropy or margin). 'query' (ThriftyDAgger): the expert labels "
            "those states; 'takeover' (SafeDAgger, LazyDAgger): it also drives from there until the learner is "
            "sure again. Unasked steps stay in the data as history with no loss.")
    gate_budget: float = option(0.3, "Gated rounds: the fraction of the round's steps the expert labels; the "
                                      "uncertainty threshold is set during the round to meet it.")
    gate_metric: str = option("entropy", "Gated rounds: the learner's uncertainty, entropy (summed over its action "
                                         "tokens) or margin (1 - the smallest top-2 probability margin).")
    gate_release: float = option(0.5, "Takeover: the expert hands back once the uncertainty falls below the "
                                      "quantile at this fraction of the entry quantile's level (hysteresis, so "
                                      "control does not flap; 1 = none).")
    bc_baseline: bool = option(False, "Also train BC on expert demonstrations with as many labels as the last "
                                      "round used, and plot it against DAgger.")
    num_envs: int = option(8, "Environments stepped together while collecting.")
    async_envs: bool = option(False, "Step the rollout envs in worker processes (as eval.async_envs).")
    env_workers: int = option(0, "With async_envs, the worker processes the rollout envs are spread over (as "
                                 "eval.env_workers).")
    seed: int = option(0, "Seed of round 0's first env; round r uses seed + 100000 * r.")

    def __post_init__(self) -> None:
        if self.beta not in ("constant", "linear", "geometric"):
            raise BCLMError(f"dagger.beta {self.beta!r}: expected constant, linear or geometric")
        if self.rounds < 0 or self.initial_episodes < 1 or self.episodes_per_round < 1:
            raise BCLMError("dagger.rounds must be >= 0, initial_episodes and episodes_per_round >= 1")
        if self.rollout_max_steps < 0:
            raise BCLMError(f"dagger.rollout_max_steps {self.rollout_max_steps}: expected >= 0 (0 = the env's limit)")
        if Noise.parse(self.noise, "dagger.noise").fit and (self.gate or self.intervener):
            raise BCLMError("dagger.noise fit makes the rounds noisy expert episodes: leave dagger.gate and "
                            "dagger.intervener unset")
        if self.gate:
            self.make_gate()
            if self.intervener:
                raise BCLMError("dagger.gate and dagger.intervener are two ways to choose who labels: set one")

    def make_gate(self) -> Gate:
        return Gate(self.gate, self.gate_budget, self.gate_metric, self.gate_release)


@dataclass
class DaggerRecipe(TrainRecipe):
    dagger: DaggerConfig = field(default_factory=DaggerConfig, metadata={"help": "dagger"})


def beta_schedule(config: DaggerConfig) -> Callable[[int], float]:
    """β_i for round i: β_0 = 1 (pure expert), then the configured decay."""
    horizon = config.beta_rounds or max(config.rounds, 1)

    def beta(i: int) -> float:
        if i == 0:
            return 1.0
        if config.beta == "constant":
            return float(config.beta_value)
        if config.beta == "linear":
            return max(0.0, 1.0 - i / horizon)
        return float(config.beta_value) ** i
    return beta


def collect_round(task: TaskSpec, expert_ref: str, policy: Policy, store: TrajectoryStore, round_index: int,
                  beta: float, config: DaggerConfig) -> None:
    """Roll out the β-mixture (or the learner under an intervener) and append shard `round-k`, atomically:
    a crash loses at most this round. The round's figures are read back from the shard (`_round_row`)."""
    num_envs = max(1, min(config.num_envs, config.episodes_per_round))
    seed = config.seed + ROUND_SEEDS * round_index
    if config.rollout_max_steps:        # gymnasium.make's own TimeLimit; such episodes end `truncated`
        task = dataclasses.replace(task, env_kwargs={**task.env_kwargs, "max_episode_steps": config.rollout_max_steps})
    env_ids = distributed.env_share(num_envs)                 # this process's envs (all, in one process)
    session = policy.new_session(max(1, len(env_ids)) if env_ids is not None else num_envs, seed=seed)
    actor = round_actor(config, session, expert_ref, store, beta, seed,
                        list(range(num_envs)) if env_ids is None else env_ids)
    share = run_episodes(task, actor, config.episodes_per_round, num_envs=num_envs, seed=seed,
                         expert=actor.labels(), asynchronous=config.async_envs, env_workers=config.env_workers,
                         env_ids=env_ids)
    for ep in share.episodes:
        ep.beta = beta if isinstance(actor, MixtureActor) else float("nan")   # the others toss no β coin
    if isinstance(actor, FittedNoiseActor):     # the level it ended the round with, over every rank's states
        levels, counts = zip(*distributed.all_gather((actor.level, actor.count)))
        source = f"dart {actor.noise.kind}:fit {np.average(levels, weights=counts) if sum(counts) else 0.0:.4g}"
    elif config.gate:
        source = f"gated-dagger {config.gate} {config.gate_metric} budget {config.gate_budget:g}"
    else:
        source = "hg-dagger" if config.intervener else "dagger" if config.label_repeats else "dagger skip-repeats"
    write_gathered(store, ROUND.format(round_index), share, round_index=round_index, source=source,
                   policy_revision=ROUND.format(round_index - 1))


def round_actor(config: DaggerConfig, session: ActSession, expert_ref: str, store: TrajectoryStore, beta: float,
                seed: int, env_ids: list[int]) -> MixtureActor | InterventionActor | GatedActor | FittedNoiseActor:
    """Who acts and who labels in a round after round 0: see `bclm.trainer.actors` and DART's fitted noise."""
    if config.intervener:
        return InterventionActor(
            session, load_intervener(config.intervener, expert_ref, store.observation_space, store.action_space),
            store.observation_space, store.action_space)
    expert = ExpertActor(load_expert(expert_ref), store.observation_space, store.action_space, expert_ref,
                         on_fault="count")
    noise = Noise.parse(config.noise)
    if noise.fit:
        return FittedNoiseActor(expert, noise, seed, env_ids, session)
    if config.gate:
        return GatedActor(session, expert, config.make_gate())
    return MixtureActor(session, expert, beta, seed, env_ids, skip_repeats=not config.label_repeats)


def train_recipe(recipe: DaggerRecipe, **changes: Any) -> TrainRecipe:
    """The training part of a DAgger recipe, with `changes` (every round and baseline trains alike)."""
    fields = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(TrainRecipe)}
    fields.update(changes)
    return TrainRecipe(**fields)


@dataclass
class DaggerTask:
    """One task of a DAgger run: its env, expert and store (a mixture has one of each per task)."""

    name: str | None           # None: a single-task run (the policy's task is the dataset's)
    spec: TaskSpec
    expert_ref: str
    store: TrajectoryStore
    initial_episodes: int
    entry: TaskEntry | None = None


def dagger_tasks(recipe: DaggerRecipe, out: Path) -> list[DaggerTask]:
    """The run's tasks: `dagger.env` (stores in OUT/data), or each task of a `tasks` mixture (OUT/data/NAME)."""
    cfg = recipe.dagger
    if not recipe.tasks:
        spec = get_task(cfg.env or recipe.eval.env)
        ref = expert_ref_of(spec, cfg.expert or None)
        return [DaggerTask(None, spec, ref, open_store(spec, out / "data"), cfg.initial_episodes)]
    if cfg.env or cfg.expert or cfg.bc_baseline:
        raise BCLMError("a DAgger mixture takes each task's env and expert from `tasks`: leave dagger.env, "
                        "dagger.expert and dagger.bc_baseline unset")
    tasks = []
    mixture = [dataclasses.replace(e, episodes=e.episodes or cfg.initial_episodes) for e in recipe.tasks]
    for entry in task_entries(dataclasses.replace(recipe, output_dir=str(out), tasks=mixture)):
        if not entry.env:
            raise BCLMError(f"task {entry.name!r}: a DAgger mixture needs each task's env (its expert labels it)")
        spec = get_task(entry.env)
        store = open_store(spec, Path(entry.dataset))
        tasks.append(DaggerTask(entry.name, spec, expert_ref_of(spec, None), store, entry.episodes, entry))
    return tasks


def round_recipe(recipe: DaggerRecipe, out: Path, round_index: int, tasks: list[DaggerTask]) -> TrainRecipe:
    warm = recipe.dagger.warm_start and round_index > 0
    changes: dict[str, Any] = {
        "output_dir": str(out / ROUND.format(round_index)),
        "data": dataclasses.replace(recipe.data, shards=[ROUND.format(i) for i in range(round_index + 1)]),
        "init_from": str(out / ROUND.format(round_index - 1)) if warm else ""}
    if tasks[0].name is None:
        task = tasks[0]
        changes.update(dataset=str(task.store.path),
                       eval=dataclasses.replace(recipe.eval, env=task.spec.name, expert=task.expert_ref))
    else:          # every task's data so far; each is evaluated on its own env with its own expert
        changes["tasks"] = [dataclasses.replace(t.entry, dataset=str(t.store.path), env=t.spec.name, episodes=0)
                            for t in tasks]
    return train_recipe(recipe, **changes)


def needs_training(recipe: TrainRecipe, policy_dir: Path) -> bool:
    """A round's (or cell's) policy is trained unless it is finished; with `overwrite`, trained again (its data
    is kept: shards are never overwritten)."""
    return recipe.overwrite or not run_finished(policy_dir)


def rounds_held(out: Path) -> int:
    """The last DAgger round that `out` holds, as a policy directory or a shard of any task (0 for none)."""
    pattern = "round-[0-9][0-9][0-9]"
    held = [*out.glob(pattern), *out.glob(f"data/{pattern}"), *out.glob(f"data/*/{pattern}")]
    return max((int(p.name[6:]) for p in held if p.is_dir()), default=0)


def check_finished_rounds(tasks: list[DaggerTask], out: Path, rounds: int, overwrite: bool) -> None:
    """Refuse, before anything is rewritten, a run whose data or finished rounds are damaged, or that holds
    more rounds than asked for: the report would otherwise be rewritten with fewer rounds than it had."""
    for t in tasks:
        if t.store.shard_names():
            t.store.verify()                                # names a damaged shard
            t.store.load()
    held = rounds_held(out)
    if held > rounds and not overwrite:
        raise BCLMError(f"{out} already holds DAgger rounds up to {held}, more than --dagger.rounds {rounds}: give "
                        f"--dagger.rounds {held} or more to continue it, or another --output-dir (or --overwrite "
                        "true to report only the first rounds)")
    for k in range(rounds + 1):
        report = out / ROUND.format(k) / "eval_report.json"
        if run_finished(report.parent) and not isinstance(atomic.read_json(report), dict):
            raise BCLMError(f"{report} is missing or damaged, though round {k} finished: restore it, or delete "
                            f"{report.parent} to train that round again")


def run_dagger(recipe: DaggerRecipe) -> dict[str, Any]:
    """All rounds, resuming at the first unfinished one; returns (and writes) the per-round report.

    With a `tasks` mixture, every round rolls out and labels `episodes_per_round` episodes of each task
    (the shared policy prompted for that task, that task's expert) and the report splits labels, success
    and mistakes by task."""
    cfg = recipe.dagger
    if not recipe.output_dir:
        raise BCLMError("output_dir is required (--output-dir DIR)")
    if recipe.dataset:
        raise BCLMError("dagger collects its own data under --output-dir; leave --dataset unset")
    out = Path(recipe.output_dir)
    if "human" in (cfg.expert, cfg.intervener) and distributed.launched_world_size() > 1:
        raise BCLMError("a human labeler answers at one terminal: run DAgger with --expert/--intervener human "
                        "in one process, not under a multi-process launch")
    with dirlock.exclusive(out):
        return _run_dagger(recipe, out)


def _run_dagger(recipe: DaggerRecipe, out: Path) -> dict[str, Any]:
    cfg = recipe.dagger
    init_processes()            # under `accelerate launch`: every rank rolls out its share of each round
    tasks = dagger_tasks(recipe, out)
    for t in tasks:                   # the seeds run_round and collect_round use
        check_unseen(cfg.seed, t.initial_episodes, recipe.eval, "dagger round 0")
        for k in range(1, cfg.rounds + 1):
            check_unseen(cfg.seed + ROUND_SEEDS * k, cfg.episodes_per_round, recipe.eval, f"dagger round {k}")
    check_finished_rounds(tasks, out, cfg.rounds, recipe.overwrite)
    beta = beta_schedule(cfg)
    rows = []
    bar = tqdm(total=cfg.rounds + 1, desc="dagger rounds", unit="round", leave=False,
               disable=not (recipe.loop.progress and distributed.is_main()))
    for k in range(cfg.rounds + 1):
        rows.append(run_round(recipe, tasks, k, beta, out))
        if distributed.is_main():
            write_report(_report(tasks, rows), out / "dagger_report.json")
            failpoints.point("round-reported")
        bar.update(1)
    bar.close()
    report = _report(tasks, rows)
    if tasks[0].name is not None:
        return report
    task, expert_ref = tasks[0].spec, tasks[0].expert_ref
    curves = [{"name": "BC (round 0)", **rows[0]}]
    if cfg.rounds:
        curves.append({"name": f"DAgger (round {cfg.rounds})", **rows[-1]})
    if cfg.bc_baseline:
        report["bc_baseline"] = bc_baseline(recipe, task, expert_ref, out, rows[-1]["expert_labels"])
        curves.append({"name": "BC, equal labels", **report["bc_baseline"]})
    if not distributed.is_main():
        return report
    write_report(report, out / "dagger_report.json")
    if all(c.get("mistakes_vs_t") for c in curves):
        plot_mistakes(curves, out / "mistakes.png", title=f"{task.name}: BC vs DAgger")
    return report


def run_round(recipe: DaggerRecipe, tasks: list[DaggerTask], k: int, beta: Callable[[int], float],
              out: Path) -> dict[str, Any]:
    """Round k (unless its data and policy are there already): the expert's demonstrations (k = 0) or the
    round's rollouts labeled, then training on every round so far; returns the round's report row."""
    cfg = recipe.dagger
    pending = [t for t in tasks if ROUND.format(k) not in t.store.shard_names()]
    policy = None
    if k and pending:
        with whole_models():
            policy = Policy.from_pretrained(out / ROUND.format(k - 1))
    for t in pending:
        if policy is None:
            noise = Noise.parse(cfg.noise)      # a fitted level needs a learner: round 0 is clean
            write_expert_shard(t.store, t.spec, t.expert_ref, t.initial_episodes, seed=cfg.seed,
                               num_envs=cfg.num_envs, noise=NO_NOISE if noise.fit else noise)
        else:
            collect_round(t.spec, t.expert_ref, policy.for_task(t.name) if t.name else policy, t.store, k,
                          beta(k), cfg)
    policy_dir = out / ROUND.format(k)
    if needs_training(recipe, policy_dir):
        train(round_recipe(recipe, out, k, tasks))
    return _round_row(tasks, k, policy_dir)


def _report(tasks: list[DaggerTask], rows: list[dict[str, Any]]) -> dict[str, Any]:
    if tasks[0].name is None:
        return {"env": tasks[0].spec.name, "expert": tasks[0].expert_ref, "rounds": rows}
    return {"tasks": {t.name: {"env": t.spec.name, "expert": t.expert_ref} for t in tasks}, "rounds": rows}


def bc_baseline(recipe: DaggerRecipe, task: TaskSpec, expert_ref: str, out: Path, labels: int) -> dict[str, Any]:
    """BC on expert-only data with at least `labels` steps (whole episodes), trained like the rounds."""
    cfg = recipe.dagger
    data_dir, policy_dir = out / "bc-data", out / "bc-baseline"
    store = open_store(task, data_dir)
    k = 0
    while len(store.shard_names()) == 0 or len(store.load()) < labels:
        # Episode lengths are not known in advance: add expert episodes in batches until the budget is met.
        write_expert_shard(store, task, expert_ref, cfg.episodes_per_round, seed=cfg.seed + 7_777_777 + 1000 * k,
                           num_envs=cfg.num_envs, shard=f"part-{k:03d}")
        k += 1
    if needs_training(recipe, policy_dir):
        train(train_recipe(recipe, dataset=str(data_dir), output_dir=str(policy_dir), init_from="",
                           data=dataclasses.replace(recipe.data, shards=[]),
                           eval=dataclasses.replace(recipe.eval, env=task.name, expert=expert_ref)))
    report = json.loads((policy_dir / "eval_report.json").read_text())
    return {"expert_labels": len(store.load()), **report}


def _round_row(tasks: list[DaggerTask], k: int, policy_dir: Path) -> dict[str, Any]:
    report = atomic.read_json(policy_dir / "eval_report.json")
    beta = _stored_beta(tasks[0].store, k)
    clipped = _clipped(policy_dir)
    if tasks[0].name is None:
        return {"round": k, "beta": beta, **report, **_labels(tasks[0].store, k),
                "obs_clipped": next(iter(clipped.values()), None)}
    per_task = {t.name: {**report["tasks"][t.name], **_labels(t.store, k), "obs_clipped": clipped.get(t.name)}
                for t in tasks}
    return {"round": k, "beta": beta, "success_rate": report["success_rate"],
            "expert_labels": sum(r["expert_labels"] for r in per_task.values()), "tasks": per_task}


def _clipped(policy_dir: Path) -> dict[str, float]:
    """Per task, the largest share of any observation dimension's training values that the round's tokenizer
    clipped at its bounds (its quantization report; a round trained before it was written has none)."""
    reports = atomic.read_json(policy_dir / QUANTIZATION_FILE)
    if not isinstance(reports, dict):
        return {}
    return {task: largest(rep, "observation", "clip_fraction") for task, rep in reports.items()}


def _stored_beta(store: TrajectoryStore, k: int) -> float | None:
    """Round k's β as its shard recorded it (None where no β coin was tossed): provenance is what was
    collected, whatever the schedule of a later rerun says."""
    beta = float(store.load([ROUND.format(k)])["beta"][0])
    return None if np.isnan(beta) else round(beta, 6)         # stored as float32


def _labels(store: TrajectoryStore, k: int) -> dict[str, int]:
    """Expert labels used up to round k, and round k's interventions (HG-DAgger) or label faults."""
    labeled = store.load([ROUND.format(i) for i in range(k + 1)])["labeled"][:]
    shard = store.load([ROUND.format(k)])
    row = {"expert_labels": int(labeled.sum())}
    # A β-mixture round labels every state, so unlabeled ones are expert faults; an HG-DAgger round labels
    # only its interventions. (The eval report's own `expert_faults` are faults while judging mistakes.)
    source = shard["source"][0]
    if k and source == "hg-dagger":
        row["interventions"] = int(shard["labeled"][:].sum())
    elif k and source.startswith("gated-dagger"):       # its unlabeled steps are the states it did not ask
        row["queries"] = int(shard["labeled"][:].sum())
        row["query_fraction"] = row["queries"] / max(1, len(shard))
    elif k and source == "dagger skip-repeats":       # revisited states left unlabeled (and any faults)
        row["unlabeled_steps"] = int((~shard["labeled"][:]).sum())
    elif k and source.startswith("dart"):               # "dart eps:fit 0.083": the fitted level
        row["noise_level"] = float(source.split()[-1])
        row["label_faults"] = int((~shard["labeled"][:]).sum())
    else:
        row["label_faults"] = int((~shard["labeled"][:]).sum())
    return row
