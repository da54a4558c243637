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

from bclm.collect import create_store, expert_ref_of, write_expert_shard
from bclm.config import option
from bclm.data.store import META_FILE, TrajectoryStore
from bclm.envs import TaskSpec, get_task, load_expert
from bclm.errors import BCLMError
from bclm.eval.evaluate import write_report
from bclm.eval.plots import plot_mistakes
from bclm.eval.rollout import ExpertActor, run_episodes
from bclm.policy import Policy
from bclm.trainer.actors import InterventionActor, MixtureActor, load_intervener
from bclm.trainer.bc import train
from bclm.trainer.config import TrainRecipe

ROUND = "round-{:03d}"


@dataclass
class DaggerConfig:
    env: str = option("", "Task name or gymnasium id (also module:EnvId-v0).")
    expert: str = option("", "Expert: builtin name or module:callable ('' = the task's).")
    rounds: int = option(3, "DAgger rounds after round 0 (the expert demonstrations).")
    initial_episodes: int = option(10, "Expert episodes in round 0.")
    episodes_per_round: int = option(10, "Mixture episodes rolled out and labeled in each later round.")
    beta: str = option("linear", "β schedule over rounds i >= 1: constant | linear | geometric (β₀ = 1).")
    beta_value: float = option(0.5, "β of the constant schedule, or p of the geometric one (β_i = p^i).")
    beta_rounds: int = option(0, "Rounds over which the linear schedule decays to 0 (0 = `rounds`).")
    rollout_max_steps: int = option(
        0, "Truncate the rollouts of rounds >= 1 after this many steps (0 = the env's own limit): once a learner is "
           "stuck in a loop, more steps of it cost labels and add little the expert has not already labeled.")
    warm_start: bool = option(True, "Start each round's training from the previous round's policy.")
    intervener: str = option(
        "", "HG-DAgger instead of the β-mixture: who may take over from the learner. 'expert-gated' (the "
            "expert, where it disagrees), 'human' (terminal), or 'module:callable' (obs, learner_action) -> "
            "action or None. Only intervention steps are labeled.")
    bc_baseline: bool = option(False, "Also train BC on expert demonstrations with as many labels as the last "
                                      "round used, and plot it against DAgger.")
    num_envs: int = option(8, "Environments stepped together while collecting.")
    seed: int = option(0, "Seed of round 0's first env; round r uses seed + 100000 * r.")

    def __post_init__(self) -> None:
        if self.beta not in ("constant", "linear", "geometric"):
            raise BCLMError(f"dagger.beta {self.beta!r}: expected constant, linear or geometric")
        if self.rounds < 0 or self.initial_episodes < 1 or self.episodes_per_round < 1:
            raise BCLMError("dagger.rounds must be >= 0, initial_episodes and episodes_per_round >= 1")
        if self.rollout_max_steps < 0:
            raise BCLMError(f"dagger.rollout_max_steps {self.rollout_max_steps}: expected >= 0 (0 = the env's limit)")


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
    seed = config.seed + 100_000 * round_index
    if config.rollout_max_steps:        # gymnasium.make's own TimeLimit; such episodes end `truncated`
        task = dataclasses.replace(task, env_kwargs={**task.env_kwargs, "max_episode_steps": config.rollout_max_steps})
    session = policy.new_session(num_envs, seed=seed)
    if config.intervener:
        actor: MixtureActor | InterventionActor = InterventionActor(
            session, load_intervener(config.intervener, expert_ref, store.observation_space, store.action_space),
            store.observation_space, store.action_space)
    else:
        expert = ExpertActor(load_expert(expert_ref), store.observation_space, store.action_space, expert_ref,
                             on_fault="count")
        actor = MixtureActor(session, expert, beta, seed)
    result = run_episodes(task, actor, config.episodes_per_round, num_envs=num_envs, seed=seed,
                          expert=actor.labels())
    for ep in result.episodes:
        ep.beta = float("nan") if config.intervener else beta     # HG-DAgger tosses no β coin
    source = "hg-dagger" if config.intervener else "dagger"
    store.write_shard(ROUND.format(round_index), result.episodes, round_index=round_index, source=source,
                      policy_revision=ROUND.format(round_index - 1))


def train_recipe(recipe: DaggerRecipe, **changes: Any) -> TrainRecipe:
    """The training part of a DAgger recipe, with `changes` (every round and baseline trains alike)."""
    fields = {f.name: getattr(recipe, f.name) for f in dataclasses.fields(TrainRecipe)}
    fields.update({"overwrite": False, **changes})
    return TrainRecipe(**fields)


def round_recipe(recipe: DaggerRecipe, out: Path, round_index: int, task: TaskSpec, expert_ref: str) -> TrainRecipe:
    warm = recipe.dagger.warm_start and round_index > 0
    return train_recipe(
        recipe, dataset=str(out / "data"), output_dir=str(out / ROUND.format(round_index)),
        data=dataclasses.replace(recipe.data, shards=[ROUND.format(i) for i in range(round_index + 1)]),
        init_from=str(out / ROUND.format(round_index - 1)) if warm else "",
        eval=dataclasses.replace(recipe.eval, env=task.name, expert=expert_ref))


def _policy_done(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "eval_report.json").is_file()


def run_dagger(recipe: DaggerRecipe) -> dict[str, Any]:
    """All rounds, resuming at the first unfinished one; returns (and writes) the per-round report."""
    cfg = recipe.dagger
    if not recipe.output_dir:
        raise BCLMError("output_dir is required (--output-dir DIR)")
    if recipe.dataset or recipe.tasks:
        raise BCLMError("dagger collects its own data for one task (dagger.env) under --output-dir; leave "
                        "--dataset and `tasks` unset")
    task = get_task(cfg.env or recipe.eval.env)
    expert_ref = expert_ref_of(task, cfg.expert or None)
    out = Path(recipe.output_dir)
    data_dir = out / "data"
    beta = beta_schedule(cfg)
    if not (data_dir / META_FILE).is_file():
        create_store(task, data_dir)
    store = TrajectoryStore(data_dir)
    rows = []
    for k in range(cfg.rounds + 1):
        if ROUND.format(k) not in store.shard_names():
            if k == 0:
                write_expert_shard(store, task, expert_ref, cfg.initial_episodes, seed=cfg.seed,
                                   num_envs=cfg.num_envs)
            else:
                policy = Policy.from_pretrained(out / ROUND.format(k - 1))
                collect_round(task, expert_ref, policy, store, k, beta(k), cfg)
        policy_dir = out / ROUND.format(k)
        if not _policy_done(policy_dir):
            train(round_recipe(recipe, out, k, task, expert_ref))
        rows.append(_round_row(store, k, None if k and cfg.intervener else beta(k), policy_dir))
        write_report({"env": task.name, "expert": expert_ref, "rounds": rows}, out / "dagger_report.json")
    report: dict[str, Any] = {"env": task.name, "expert": expert_ref, "rounds": rows}
    curves = [{"name": "BC (round 0)", **rows[0]}]
    if cfg.rounds:
        curves.append({"name": f"DAgger (round {cfg.rounds})", **rows[-1]})
    if cfg.bc_baseline:
        report["bc_baseline"] = bc_baseline(recipe, task, expert_ref, out, rows[-1]["expert_labels"])
        curves.append({"name": "BC, equal labels", **report["bc_baseline"]})
    write_report(report, out / "dagger_report.json")
    if all(c.get("mistakes_vs_t") for c in curves):
        plot_mistakes(curves, out / "mistakes.png", title=f"{task.name}: BC vs DAgger")
    return report


def bc_baseline(recipe: DaggerRecipe, task: TaskSpec, expert_ref: str, out: Path, labels: int) -> dict[str, Any]:
    """BC on expert-only data with at least `labels` steps (whole episodes), trained like the rounds."""
    cfg = recipe.dagger
    data_dir, policy_dir = out / "bc-data", out / "bc-baseline"
    if not (data_dir / META_FILE).is_file():
        create_store(task, data_dir)
    store = TrajectoryStore(data_dir)
    k = 0
    while len(store.shard_names()) == 0 or len(store.load()) < labels:
        # Episode lengths are not known in advance: add expert episodes in batches until the budget is met.
        write_expert_shard(store, task, expert_ref, cfg.episodes_per_round, seed=cfg.seed + 7_777_777 + 1000 * k,
                           num_envs=cfg.num_envs, shard=f"part-{k:03d}")
        k += 1
    if not _policy_done(policy_dir):
        train(train_recipe(recipe, dataset=str(data_dir), output_dir=str(policy_dir), init_from="",
                           data=dataclasses.replace(recipe.data, shards=[]),
                           eval=dataclasses.replace(recipe.eval, env=task.name, expert=expert_ref)))
    report = json.loads((policy_dir / "eval_report.json").read_text())
    return {"expert_labels": len(store.load()), **report}


def _round_row(store: TrajectoryStore, k: int, beta: float | None, policy_dir: Path) -> dict[str, Any]:
    labeled = store.load([ROUND.format(i) for i in range(k + 1)])["labeled"][:]
    shard = store.load([ROUND.format(k)])
    row: dict[str, Any] = {"round": k, "beta": beta, **json.loads((policy_dir / "eval_report.json").read_text())}
    row["expert_labels"] = int(labeled.sum())
    # A β-mixture round labels every state, so unlabeled ones are expert faults; an HG-DAgger round labels
    # only its interventions. (The eval report's own `expert_faults` are faults while judging mistakes.)
    if k and shard["source"][0] == "hg-dagger":
        row["interventions"] = int(shard["labeled"][:].sum())
    else:
        row["label_faults"] = int((~shard["labeled"][:]).sum())
    return row
