"""`bclm collect | train | eval | demo`: thin commands over the library; bad input is a one-line error."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bclm import atomic, interrupt
from bclm.errors import BCLMError

USAGE = """usage: bclm <command> [options]

commands:
  collect   expert demonstrations into a dataset
  train     behavior cloning from a dataset (YAML recipe + --section.field overrides)
  dagger    DAgger rounds: expert demos, then β-mixture rollouts labeled by the expert, retraining
  eval      scripted evaluation rollouts of a policy, written as a JSON report
  sweep     learning curves: BC, DAgger, HG-DAgger over label budgets and seeds (mean ± 95% CI, plots)
  demo      the default job: BC vs DART vs DAgger at equal expert labels, a car on a curvy road, CPU, minutes
  push      a policy or a dataset to the Hugging Face Hub (--dry-run prints what would be uploaded)
  pull      a dataset from the Hub (any round's revision) into a local bclm dataset
  export-lerobot    a bclm dataset as a LeRobotDataset v3.0 directory
  import-lerobot    a LeRobotDataset v3.0 directory as a bclm dataset
  import-imitation  an `imitation` trajectories .npz file as a bclm dataset
  import-minari     a local Minari dataset (a directory or an id; nothing is downloaded) as a bclm dataset
  info      what a dataset or a policy directory holds: spaces, episodes, rounds, tokenizer layout, quantisation

`bclm <command> --help` lists each command's options.
"""


def _collect(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bclm collect", description="Expert demonstrations into a new dataset.")
    p.add_argument("--env", required=True, help="Task name or gymnasium id (also module:EnvId-v0).")
    p.add_argument("--expert", default="", help="Expert: builtin name or module:callable (default: the task's).")
    p.add_argument("--episodes", type=int, required=True, help="Episodes to record.")
    p.add_argument("--output", required=True, help="New dataset directory (must not exist or be empty; the same "
                                                    "command continues an interrupted collection in it).")
    p.add_argument("--seed", type=int, default=0, help="Seed of env 0; env i uses seed + i.")
    p.add_argument("--num-envs", type=int, default=8, help="Environments stepped together.")
    p.add_argument("--noise", default="", help="DART: execute a perturbed expert action, label the clean one: "
                   "eps:P (a random action with probability P) or gauss:S (Gaussian, S x half the action range).")
    args = p.parse_args(argv)
    from bclm.collect import collect
    from bclm.distributed import launched_world_size
    from bclm.envs import get_task
    from bclm.rollout.noise import Noise

    noise = Noise.parse(args.noise)

    if launched_world_size() > 1:
        raise BCLMError("bclm collect runs in one process (every rank would write the same dataset); run it "
                        "without accelerate launch, or use `bclm dagger`, which splits its rollouts over ranks")
    summary = collect(get_task(args.env), args.expert or None, args.episodes, args.output, seed=args.seed,
                      num_envs=args.num_envs, progress=True, noise=noise)
    print(json.dumps(summary, indent=2))
    return 0


def _train(argv: list[str]) -> int:
    from bclm import config as cfg

    if "-h" in argv or "--help" in argv:
        from bclm.trainer.config import TrainRecipe

        print("usage: bclm train [RECIPE.yaml] --dataset DIR --output-dir DIR [--section.field VALUE ...]\n")
        print("\n".join(cfg.help_text(TrainRecipe)))
        return 0
    recipe_path = argv[0] if argv and not argv[0].startswith("--") else None
    overrides = argv[1:] if recipe_path else argv
    cfg.check_keys("train", overrides)      # a typo is named before torch loads
    recipe = load_train_recipe(recipe_path, overrides)
    from bclm.distributed import is_main
    from bclm.trainer.bc import train

    start = time.perf_counter()
    train(recipe)
    if is_main():
        report = json.loads((Path(recipe.output_dir) / "eval_report.json").read_text())
        print(report_table(report))
        print(f"policy saved to {recipe.output_dir} ({time.perf_counter() - start:.0f} s)")
    return 0


def load_train_recipe(path: str | None, overrides: list[str]) -> Any:
    """A TrainRecipe from a train or a DAgger recipe: one file serves `bclm train` (BC on a dataset) and
    `bclm dagger`; its `dagger:` section is still checked, then set aside."""
    from bclm import config as cfg
    from bclm.trainer.dagger import DaggerRecipe, train_recipe

    recipe = cfg.build_config(DaggerRecipe, path, overrides)
    return train_recipe(recipe)


DAGGER_FLAGS = {"--env": "--dagger.env", "--expert": "--dagger.expert", "--rounds": "--dagger.rounds",
                "--episodes-per-round": "--dagger.episodes_per_round",
                "--initial-episodes": "--dagger.initial_episodes", "--beta": "--dagger.beta"}


def _recipe_with_flags(command: str, recipe_class: Callable[[], type], argv: list[str], flags: dict[str, str],
                       usage: str) -> Any:
    """[RECIPE.yaml] then overrides, the short `flags` spelled out (`--env X` is `--dagger.env X`); None after
    printing the help. `recipe_class` imports the recipe's class (and torch) once the keys are known good."""
    from bclm import config as cfg

    if "-h" in argv or "--help" in argv:
        print(usage + "\n")
        print("\n".join(cfg.help_text(recipe_class())))
        return None
    recipe_path = argv[0] if argv and not argv[0].startswith("--") else None
    overrides = [flags.get(a.split("=")[0], a.split("=")[0]) + a[len(a.split("=")[0]):]
                 for a in (argv[1:] if recipe_path else argv)]
    cfg.check_keys(command, overrides)
    return cfg.build_config(recipe_class(), recipe_path, overrides)


def dagger_recipe() -> type:
    """`bclm dagger`'s recipe class (`bclm train` reads it too), imported on demand: it brings torch."""
    from bclm.trainer.dagger import DaggerRecipe

    return DaggerRecipe


def sweep_recipe() -> type:
    """`bclm sweep`'s recipe class, the widest: its sections include dagger's and train's."""
    from bclm.sweep import SweepRecipe

    return SweepRecipe


def _dagger(argv: list[str]) -> int:
    recipe = _recipe_with_flags("dagger", dagger_recipe, argv, DAGGER_FLAGS,
                                "usage: bclm dagger [RECIPE.yaml] --env ENV [--expert EXPERT] --rounds K "
                                "--episodes-per-round N --output-dir DIR [--section.field VALUE ...]")
    if recipe is None:
        return 0
    from bclm.distributed import is_main
    from bclm.eval.evaluate import format_table
    from bclm.trainer.dagger import run_dagger

    report = run_dagger(recipe)
    if not is_main():
        return 0
    columns = ["round", "beta", "expert_labels", "success_rate", "mean_return", "mistake_rate", "mistakes_at_horizon"]
    if "tasks" in report:          # a mixture: a row per round and task, after the totals
        rows = [{"task": name, "round": r["round"], "beta": r["beta"], **per_task}
                for r in report["rounds"] for name, per_task in r["tasks"].items()]
        print(format_table(report["rounds"], columns[:4]) + "\n")
        print(format_table(rows, ["task", *columns]))
    else:
        print(format_table(report["rounds"], columns))
    print(f"report: {Path(recipe.output_dir) / 'dagger_report.json'}")
    return 0


SWEEP_FLAGS = {**DAGGER_FLAGS, "--methods": "--sweep.methods", "--budgets": "--sweep.budgets",
               "--seeds": "--sweep.seeds", "--jobs": "--sweep.jobs"}


def _sweep(argv: list[str]) -> int:
    recipe = _recipe_with_flags("sweep", sweep_recipe, argv, SWEEP_FLAGS,
                                "usage: bclm sweep [RECIPE.yaml] --env ENV --budgets 500,1000,2000 --seeds 3 "
                                "--output-dir DIR [--methods bc,dagger,hg-dagger] [--section.field VALUE ...]")
    if recipe is None:
        return 0
    from bclm.sweep import run_sweep

    run_sweep(recipe)
    out = Path(recipe.output_dir)
    print((out / "sweep.md").read_text())
    print(f"report: {out / 'sweep.json'}; plots: {out / 'success_vs_labels.png'}, {out / 'mistakes_vs_t.png'}")
    return 0


def _eval(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bclm eval", description="Evaluate a policy with seeded rollouts.")
    p.add_argument("--policy", required=True, help="Policy directory (from `bclm train`) or Hub repo id.")
    p.add_argument("--revision", default=None, help="Hub revision of a policy repo id (branch, tag, commit).")
    p.add_argument("--env", default="", help="Task name or gymnasium id (default: the policy's).")
    p.add_argument("--task", default="", help="Which task of a multi-task policy (default: every task, each on "
                                              "its own env, with the average success).")
    p.add_argument("--episodes", type=int, default=20)
    p.add_argument("--num-envs", type=int, default=8)
    p.add_argument("--seed", type=int, default=10_000)
    p.add_argument("--expert", default="", help="Expert for the mistake rate (default: the task's, if any).")
    p.add_argument("--sample", action="store_true", help="Sample actions instead of greedy decoding.")
    p.add_argument("--async-envs", action="store_true", help="Step the envs in worker processes (Meta-World).")
    p.add_argument("--env-workers", type=int, default=0, help="With --async-envs, the worker processes the envs "
                                                              "are spread over (0 = one per env).")
    p.add_argument("--output", default="", help="Write the JSON report here.")
    p.add_argument("--video", type=int, default=0, help="Record the first N episodes of each task as MP4 (GIF "
                                                        "without imageio-ffmpeg) into videos/ next to --output.")
    args = p.parse_args(argv)
    from bclm.envs import get_task
    from bclm.eval.evaluate import EvalConfig, evaluate, evaluate_tasks, write_report
    from bclm.policy import Policy

    if args.video and not args.output:
        raise BCLMError(f"--video {args.video} needs --output REPORT.json: the videos go to videos/ next to it")
    if args.output:
        atomic.check_writable(args.output, "--output")      # before the evaluation, not after it
    video_dir = Path(args.output).parent / "videos" if args.video else None
    policy = Policy.from_pretrained(args.policy, revision=args.revision)
    config = EvalConfig(episodes=args.episodes, num_envs=args.num_envs, seed=args.seed, expert=args.expert,
                        greedy=not args.sample, async_envs=args.async_envs, env_workers=args.env_workers,
                        video=args.video)
    envs = policy.metadata.get("envs") or {}
    if args.task:
        policy = policy.for_task(args.task)
    elif args.env and len(policy.tasks) > 1:
        raise BCLMError(f"--env {args.env} on a multi-task policy needs --task (one of {policy.tasks}): the task "
                        "picks the prompt and the action space")
    clock: dict[str, float] = {}
    if envs and not args.task:
        report = evaluate_tasks(policy, envs, config, progress=True, video_dir=video_dir, clock=clock)
    else:
        task = get_task(args.env or envs.get(policy.task) or policy.metadata.get("env") or policy.task)
        report = evaluate(policy, task, config, progress=True, video_dir=video_dir, clock=clock)
    if args.output:
        write_report(report, args.output)
    print(report_table(report, policy.task, clock))
    return 0


def report_table(report: dict[str, Any], task: str = "", clock: dict[str, float] | None = None) -> str:
    """An evaluation report as a table: a row per task of a multi-task report, with the average; with the
    rollouts' wall times (`clock[env]`), their env-steps/s."""
    from bclm.eval.evaluate import format_table

    if "tasks" in report:
        rows = [{"task": name, **r} for name, r in report["tasks"].items()]
    else:
        rows = [{"task": task or report.get("env", ""), **report}]
    for row in rows:
        if clock and row.get("env") in clock:
            row["env_steps_per_s"] = f"{row['episodes'] * row['mean_length'] / max(clock[row['env']], 1e-9):,.0f}"
    if "tasks" in report:
        rows.append({"task": "average", "success_rate": report["success_rate"]})
    return format_table(rows, ["task", "env", "episodes", "success_rate", "mean_return", "mean_length"]
                        + (["mistake_rate"] if any("mistake_rate" in r for r in rows) else [])
                        + (["env_steps_per_s"] if any("env_steps_per_s" in r for r in rows) else []))


def _demo(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bclm demo", description="BC vs DART vs DAgger: success against expert labels "
                                "over seeds, a car kept on a curvy road (a `bclm sweep`; the same --workdir "
                                "resumes it).")
    p.add_argument("--workdir", default="runs/demo", help="Where the data, policies and reports go.")
    p.add_argument("--seeds", type=int, default=5, help="Seeds per method and budget.")
    p.add_argument("--first-seed", type=int, default=0,
                   help="The first seed: another value gives a disjoint set of seeds (e.g. 5 after the default 0).")
    p.add_argument("--env", default="LaneKeep-v0",
                   help="The task, with the same budgets: LaneKeep-Gusty-v0 is the same road in gusts, where the "
                        "expert's demonstrations show its recoveries and BC is enough.")
    args = p.parse_args(argv)
    from bclm.demo import run_demo

    run_demo(Path(args.workdir), seeds=args.seeds, first_seed=args.first_seed, env=args.env)
    return 0


def _push(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bclm push", description="Upload a policy or a dataset to the Hugging Face "
                                "Hub (log in first: `hf auth login`, or set HF_TOKEN).")
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--policy", help="Policy directory (from `bclm train` or a DAgger round).")
    what.add_argument("--dataset", help="bclm dataset directory; each round becomes a config and a tag.")
    p.add_argument("--repo-id", required=True, help="Hub repo, e.g. your-name/cartpole-dagger.")
    p.add_argument("--private", action="store_true", help="Create the repo private.")
    p.add_argument("--revision", default=None, help="Branch to push to (created if missing; default main).")
    p.add_argument("--dry-run", action="store_true", help="Build and check the folder, print it, upload nothing.")
    p.add_argument("--dataset-repo", action="append", default=None,
                   help="Hub dataset the policy was trained on, for its model card (repeatable).")
    p.add_argument("--tag", action="append", default=None, help="Extra card tag (repeatable).")
    p.add_argument("--license", default=None, help="License id for the card, e.g. apache-2.0.")
    args = p.parse_args(argv)
    from bclm.hub import push_dataset, push_policy

    if args.policy:
        plan = push_policy(args.policy, args.repo_id, private=args.private, revision=args.revision,
                           dry_run=args.dry_run, datasets=args.dataset_repo, tags=args.tag, license=args.license)
    else:
        plan = push_dataset(args.dataset, args.repo_id, private=args.private, revision=args.revision,
                            dry_run=args.dry_run, tags=args.tag, license=args.license)
    print(("dry run: would upload " if args.dry_run else "uploaded ") + plan.describe())
    return 0


def _pull(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bclm pull", description="A Hub dataset (or a folder in its layout) into a "
                                                              "new local bclm dataset.")
    p.add_argument("--dataset", required=True, help="Hub dataset repo id, or a local folder in the Hub layout.")
    p.add_argument("--revision", default=None, help="Branch, commit or round tag (e.g. round-001: rounds 0-1).")
    p.add_argument("--output", required=True, help="New dataset directory.")
    args = p.parse_args(argv)
    from bclm.hub import pull_dataset

    store = pull_dataset(args.dataset, args.output, revision=args.revision)
    print(_store_summary(store))
    return 0


def _store_summary(store: Any) -> str:
    return json.dumps({"dataset": str(store.path), "shards": store.shard_names(), "steps": len(store.load())})


def _export_lerobot(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bclm export-lerobot", description="A bclm dataset as LeRobotDataset v3.0.")
    p.add_argument("--dataset", required=True, help="bclm dataset directory.")
    p.add_argument("--output", required=True, help="New LeRobot dataset directory.")
    p.add_argument("--fps", type=int, default=30, help="Frames per second for meta/info.json (bclm steps carry "
                   "no clock; LeRobot turns frame indices into timestamps with it).")
    p.add_argument("--robot-type", default=None, help="robot_type recorded in meta/info.json.")
    args = p.parse_args(argv)
    from bclm.data.lerobot import export_lerobot

    out = export_lerobot(args.dataset, args.output, fps=args.fps, robot_type=args.robot_type)
    print(f"LeRobot v3.0 dataset written to {out}")
    return 0


def _import_lerobot(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bclm import-lerobot", description="A LeRobotDataset v3.0 as a bclm dataset.")
    p.add_argument("--input", required=True, help="LeRobot v3.0 dataset directory.")
    p.add_argument("--output", required=True, help="New bclm dataset directory.")
    args = p.parse_args(argv)
    from bclm.data.lerobot import import_lerobot

    store = import_lerobot(args.input, args.output)
    print(_store_summary(store))
    return 0


def _import_imitation(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bclm import-imitation",
                                description="Trajectories saved by `imitation` (.npz) as a bclm dataset.")
    p.add_argument("--input", required=True, help="The .npz file.")
    p.add_argument("--env", required=True, help="Task name or gymnasium id (gives the spaces).")
    p.add_argument("--output", required=True, help="New bclm dataset directory.")
    args = p.parse_args(argv)
    from bclm.data.imitation import import_imitation_npz

    store = import_imitation_npz(args.input, args.output, env_id=args.env)
    print(_store_summary(store))
    return 0


def _import_minari(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bclm import-minari",
                                description="A local Minari dataset (directory or id; nothing is downloaded) as a "
                                            "bclm dataset.")
    p.add_argument("source", help="The dataset's directory, or its id under MINARI_DATASETS_PATH.")
    p.add_argument("--output", required=True, help="New bclm dataset directory.")
    p.add_argument("--env", default="", help="Task name or gymnasium id, where the dataset records none.")
    args = p.parse_args(argv)
    from bclm.data.minari import import_minari

    store = import_minari(args.source, args.output, env_id=args.env)
    print(_store_summary(store))
    return 0


def _info(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="bclm info", description="What a dataset or a policy directory holds.")
    p.add_argument("path", help="A bclm dataset or policy directory.")
    args = p.parse_args(argv)
    from bclm.info import describe

    print(describe(args.path))
    return 0


COMMANDS = {"collect": _collect, "train": _train, "dagger": _dagger, "sweep": _sweep, "eval": _eval, "demo": _demo,
            "push": _push,
            "pull": _pull, "export-lerobot": _export_lerobot, "import-lerobot": _import_lerobot,
            "import-imitation": _import_imitation, "import-minari": _import_minari, "info": _info}


def _end_process_group() -> None:
    """After a command that ran under `accelerate launch`: every rank done, the process group ends cleanly.
    (Not after an error: the other ranks may never reach the barrier; the launcher stops them.)"""
    torch = sys.modules.get("torch")
    if torch is not None and torch.distributed.is_available() and torch.distributed.is_initialized():
        from bclm.trainer.launch import shutdown

        shutdown()


def main(argv: list[str] | None = None) -> int:
    # Idle OpenMP threads sleep instead of spinning: on a shared CPU, spinning threads of two processes
    # stall each other (a 100x slowdown seen on 2 cores). Export OMP_WAIT_POLICY=ACTIVE to override.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    # bclm shows its own progress (collect, train, eval); the Hub's per-file loading bars are noise here.
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    command = COMMANDS.get(argv[0])
    if command is None:
        print(f"bclm: unknown command {argv[0]!r}\n\n{USAGE}", file=sys.stderr)
        return 2
    interrupt.install()
    try:
        code = command(argv[1:])
        _end_process_group()
        return code
    except (BCLMError, FileNotFoundError) as e:
        # One line whatever the message holds (numpy prints spaces over several lines).
        print(f"bclm {argv[0]}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    except OSError as e:
        if e.errno not in atomic.NAMED_ERRNO:
            raise
        # Every writer (checkpoints, shards, tensorboard, reports) fails alike on a full or read-only disk.
        where = f" {e.filename}" if e.filename else ""
        print(f"bclm {argv[0]}: error: cannot write{where}: {atomic.NAMED_ERRNO[e.errno]}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        # What was done is on disk (collected chunks, checkpoints, finished rounds and cells).
        print(f"\nbclm {argv[0]}: interrupted; what was finished is kept, and the same command continues from "
              "it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
