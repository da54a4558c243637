"""The law selection (`bclm.trainer.select`) applied to policies trained before it: per task, success on the
evaluation episodes as trained, and with the choice the selection episodes make.

Training is untouched by the selection, so a policy trained without it, selected here, is what training with
it would have written: this measures the default on existing runs without training them again. Nothing in
the policy directories is changed.

    PYTHONPATH=. python benchmarks/law_selection.py runs/mt10/seed-0 \\
        runs/label_efficiency/MetaWorld-reach-v3/bc/labels-600/seed-*
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
from pathlib import Path

import torch

from bclm import config as cfg
from bclm.envs import get_task
from bclm.eval.evaluate import evaluate
from bclm.policy import Policy
from bclm.trainer.config import TrainRecipe
from bclm.trainer.data import prepare_data
from bclm.trainer.select import select_laws


def selected(policy_dir: Path, episodes: int) -> dict[str, dict]:
    recipe = cfg.build_config(TrainRecipe, str(policy_dir / "recipe.yaml"), [])
    recipe = dataclasses.replace(recipe, eval=dataclasses.replace(recipe.eval, select_episodes=episodes))
    policy = Policy.from_pretrained(policy_dir, device="cpu")
    data = prepare_data(recipe, policy.tokenizers)
    before = json.loads((policy_dir / "eval_report.json").read_text())
    trained = {t: r["success_rate"] for t, r in before["tasks"].items()} if "tasks" in before else \
        {data.tasks[0].name: before["success_rate"]}
    rows = {}
    for task, choice in select_laws(policy, data, recipe.eval, recipe.eval.env).items():
        after = trained[task]
        if choice["kept"] == "law":
            acting = policy.for_task(task) if len(data.tasks) > 1 else policy
            after = evaluate(acting, get_task(data.env_of(task, recipe.eval.env)), recipe.eval)["success_rate"]
        rows[task] = {**choice, "trained": trained[task], "selected": after}
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("policies", nargs="+", help="Finished policy directories (with recipe.yaml and eval_report.json).")
    p.add_argument("--episodes", type=int, default=20, help="Selection episodes per task and candidate.")
    args = p.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; torch {torch.__version__}")
    print("| policy | task | selection: trained / law | kept | evaluation: trained | evaluation: selected |")
    print("|---|---|---:|---|---:|---:|")
    for path in map(Path, args.policies):
        rows = selected(path, args.episodes)
        for task, r in rows.items():
            law = "-" if r["law"] is None else f"{r['law']:.0%}"
            print(f"| {path} | {task} | {r['policy']:.0%} / {law} | {r['kept']} | {r['trained']:.0%} | "
                  f"{r['selected']:.0%} |", flush=True)
        trained, chosen = (sum(r[key] for r in rows.values()) / max(len(rows), 1) for key in ("trained", "selected"))
        print(f"| {path} | mean of {len(rows)} | | | {trained:.1%} | {chosen:.1%} |", flush=True)


if __name__ == "__main__":
    main()
