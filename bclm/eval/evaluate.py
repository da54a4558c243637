"""Evaluate a policy with scripted, seeded rollouts; the report is plain JSON."""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from bclm import atomic
from bclm.config import option
from bclm.envs import TaskSpec, get_task, load_expert, make_env
from bclm.errors import BCLMError
from bclm.policy import Policy
from bclm.rollout import ExpertActor, action_mismatch, run_episodes, summarize
from bclm.rollout.video import EpisodeFilm


@dataclass
class EvalConfig:
    env: str = option("", "Task name or gymnasium id to evaluate on (default: the dataset's env).")
    episodes: int = option(20, "Evaluation episodes.")
    num_envs: int = option(8, "Environments stepped together (one batched forward pass per step).")
    seed: int = option(10_000, "Seed of the first env; env i uses seed + i (kept apart from collection seeds).")
    expert: str = option("", "Expert for the mistake rate ('module:callable' or builtin name; '' = the task's).")
    async_envs: bool = option(
        False, "Step the envs in worker processes: faster where an env step costs more than the policy's share "
               "of it (Meta-World) and cores are spare; same results.")
    env_workers: int = option(0, "With async_envs, the worker processes the envs are spread over, several per "
                                 "process (0 = one process per env).")
    video: int = option(0, "Record the first N episodes of each task (env 0's) as MP4, GIF without imageio-ffmpeg "
                           "(the video extra), into videos/ next to the report; training records its final "
                           "evaluation, and the model card shows them.")
    greedy: bool = option(True, "Greedy decoding; false samples with `temperature`.")
    temperature: float = option(1.0, "Sampling temperature when greedy is false.")
    select_episodes: int = option(
        -1, "After training, where the task's env is at hand and actions are regressed: episodes on which each task "
            "is rolled out as trained and as the least-squares linear law alone; the law is kept where it succeeds "
            "strictly more often (bclm.trainer.select). -1 = as many as `episodes`; 0 = keep the trained policy "
            "without trying.")
    select_seed: int = option(20_000, "Seed of the first env of those episodes (apart from the evaluation's).")
    mistake_tolerance: float = option(
        0.1, "A continuous action counts as a mistake when it differs from the expert's by more than this "
             "fraction of the dimension's range.")

    @property
    def selection_episodes(self) -> int:
        """The selection's episodes per task and candidate (`select_episodes`, -1 read as `episodes`)."""
        return self.episodes if self.select_episodes < 0 else self.select_episodes

    def __post_init__(self) -> None:
        if self.episodes < 1 or self.num_envs < 1:
            raise BCLMError(f"eval.episodes and eval.num_envs must be >= 1, got {self.episodes}, {self.num_envs}")
        if self.env_workers < 0:
            raise BCLMError(f"eval.env_workers must be >= 0 (0 = one process per env), got {self.env_workers}")
        if self.select_episodes < -1:
            raise BCLMError(f"eval.select_episodes must be >= -1 (-1 = as many as eval.episodes, 0 = no selection), "
                            f"got {self.select_episodes}")
        if self.video < 0:
            raise BCLMError(f"eval.video must be >= 0 (episodes recorded per task), got {self.video}")


def check_unseen(first: int, episodes: int, config: EvalConfig, what: str) -> None:
    """Refuse training envs seeded first + i that are the evaluation's: the policy would be scored on the
    very layouts (BabyAI, Meta-World goals) it was trained on."""
    if first < config.seed + config.episodes and config.seed < first + episodes:
        raise BCLMError(f"{what}: its env seeds {first}..{first + episodes - 1} overlap the evaluation's "
                        f"({config.seed}..{config.seed + config.episodes - 1}, eval.seed and eval.episodes); "
                        "move one of them")
    chosen = config.selection_episodes
    if first < config.select_seed + chosen and config.select_seed < first + episodes:
        raise BCLMError(f"{what}: its env seeds {first}..{first + episodes - 1} overlap the selection episodes' "
                        f"({config.select_seed}..{config.select_seed + chosen - 1}, eval.select_seed and "
                        "eval.select_episodes); move one of them")


def check_env(policy: Policy, task: TaskSpec) -> int | None:
    """Refuse an env whose spaces are not the policy's; return its time limit (max_episode_steps)."""
    env = make_env(task)
    try:
        policy.tokenizer.assert_compatible(env.observation_space, env.action_space, where=f"env {task.env_id}")
        return env.spec.max_episode_steps if env.spec is not None else None
    finally:
        env.close()


def evaluate(policy: Policy, task: TaskSpec, config: EvalConfig, progress: bool = False,
             video_dir: Path | None = None, clock: dict[str, float] | None = None) -> dict[str, Any]:
    """Success, return, length, and (with an expert) mistakes over `config.episodes` seeded episodes; with
    `config.video` and a `video_dir`, the first episodes as videos there (`report["videos"]`, paths relative
    to the directory above it, where the report goes). `clock[env]` gets the rollout's wall time."""
    horizon = check_env(policy, task)
    expert_ref = config.expert or (task.expert or "")
    space = policy.tokenizer.action_space
    expert = (ExpertActor(load_expert(expert_ref), policy.tokenizer.observation_space, space, expert_ref,
                          on_fault="count") if expert_ref else None)
    num_envs = max(1, min(config.num_envs, config.episodes))
    session = policy.new_session(num_envs, greedy=config.greedy, temperature=config.temperature,
                                 seed=config.seed)
    film = EpisodeFilm(config.video, task.name) if config.video and video_dir is not None else None
    was_training = policy.model.training
    policy.model.eval()
    start = time.perf_counter()
    try:
        result = run_episodes(task, session, config.episodes, num_envs=num_envs, seed=config.seed,
                              expert=expert, differ=partial(action_mismatch, space,
                                                            tolerance=config.mistake_tolerance),
                              record=False, progress=progress, asynchronous=config.async_envs,
                              env_workers=config.env_workers, film=film)
    finally:
        policy.model.train(was_training)
    report = {"env": task.name, "seed": config.seed, "expert": expert_ref or None,
              **summarize(result.episodes, result.mistakes, horizon=horizon)}
    if clock is not None:       # kept out of the report, which must not depend on the machine's speed
        clock[task.name] = time.perf_counter() - start
    if expert is not None:
        report["expert_faults"] = expert.faults
    if film is not None:
        report["videos"] = [f"{video_dir.name}/{p.name}" for p in film.write(video_dir)]
    return report


def evaluate_tasks(policy: Policy, envs: dict[str, str], config: EvalConfig, progress: bool = False,
                   video_dir: Path | None = None, clock: dict[str, float] | None = None) -> dict[str, Any]:
    """Every task of a multi-task policy (`envs[task] = the TaskSpec name it is evaluated on`), each with its
    own prompt, tokenizer and action space: a report per task and the average success."""
    if config.expert or config.env:
        raise BCLMError(f"eval.expert={config.expert!r} / eval.env={config.env!r} name one expert or env, but a "
                        "multi-task evaluation uses each task's own: leave them empty (or evaluate one task)")
    reports = {name: evaluate(policy.for_task(name), get_task(env), config, progress, video_dir, clock)
               for name, env in envs.items()}
    rates = [r["success_rate"] for r in reports.values()]
    return {"success_rate": sum(rates) / len(rates), "seed": config.seed, "tasks": reports}


def write_report(report: dict[str, Any], path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_json(path, report, indent=2)


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table (for the terminal and the README)."""
    def cell(v: Any) -> str:
        return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)
    table = [columns] + [[cell(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(columns))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths)) for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
