"""Model cards for policies and dataset cards for trajectory datasets, with the Hub's YAML metadata.

The metadata is built with `huggingface_hub`'s card classes, so the Hub indexes it as it does its own: a
policy's `model-index` holds one result per task and env (success rate, mean return, mistake rate), and a
dataset's `configs` make each DAgger round loadable on its own with `datasets.load_dataset(repo, round)`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from huggingface_hub import DatasetCard, DatasetCardData, EvalResult, ModelCard, ModelCardData

from bclm.data.store import META_FILE
from bclm.errors import BCLMError
from bclm.policy import POLICY_FILE

CARD_FILE = "README.md"
LIBRARY = "bclm"
TAGS = ["bclm", "behavior-cloning", "imitation-learning", "reinforcement-learning"]
METRICS = (("success_rate", "success rate"), ("mean_return", "mean return"), ("mistake_rate", "mistake rate"))


def read_json_or_empty(path: Path) -> dict[str, Any]:
    """A JSON file that may be absent ({}); a damaged one is an error naming it."""
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except json.JSONDecodeError as e:
        raise BCLMError(f"{path} is not valid JSON: {e}") from None


def task_reports(meta: dict[str, Any], report: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(task name, its evaluation report) for each task a policy was evaluated on."""
    if "tasks" in report:
        return list(report["tasks"].items())
    return [(meta.get("task", "default"), report)] if report else []


def eval_results(meta: dict[str, Any], report: dict[str, Any]) -> list[EvalResult]:
    results = []
    for task, r in task_reports(meta, report):
        for key, name in METRICS:
            if isinstance(r.get(key), int | float):
                results.append(EvalResult(
                    task_type="reinforcement-learning", task_name="Reinforcement Learning",
                    dataset_type=r.get("env") or meta.get("env") or task, dataset_name=task,
                    metric_type=key, metric_name=name, metric_value=round(float(r[key]), 4)))
    return results


def parameter_count(directory: Path) -> int:
    """From the safetensors headers, without loading the weights (tied weights are stored once)."""
    from safetensors import safe_open

    total = 0
    for path in sorted(directory.glob("*.safetensors")):
        with safe_open(str(path), "pt") as f:
            total += sum(int(np.prod(f.get_slice(k).get_shape())) for k in f.keys())  # noqa: SIM118 (not a dict)
    return total


def policy_card(directory: str | Path, *, repo_id: str = "", datasets: list[str] | None = None,
                tags: list[str] | None = None, license: str | None = None) -> ModelCard:
    """The model card of the policy in `directory`, from its metadata, evaluation report and recipe."""
    directory = Path(directory)
    meta = read_json_or_empty(directory / POLICY_FILE)
    report = read_json_or_empty(directory / "eval_report.json")
    config = read_json_or_empty(directory / "config.json")
    recipe_path = directory / "recipe.yaml"
    recipe = yaml.safe_load(recipe_path.read_text()) if recipe_path.is_file() else {}
    name = repo_id.split("/")[-1] if repo_id else directory.resolve().name
    envs = sorted({r.get("env") or meta.get("env", "") for _, r in task_reports(meta, report)} - {""})
    data = ModelCardData(
        library_name=LIBRARY, license=license, tags=[*TAGS, *envs, *(tags or [])],
        datasets=(datasets or _hub_datasets(recipe)) or None, pipeline_tag="reinforcement-learning",
        model_name=name, eval_results=eval_results(meta, report) or None)
    body = "\n".join([
        f"# {name}", "",
        f"A bclm behavior-cloning policy: a `{config.get('model_type', '?')}` causal "
        f"LM ({parameter_count(directory) / 1e6:.2f}M parameters, {config.get('num_hidden_layers', '?')} layers, "
        f"width {config.get('hidden_size', '?')}, context {meta.get('context_length', '?')} tokens) that reads "
        "tokenized observations and writes tokenized actions, trained by next-token log-likelihood on the action "
        "tokens.", "",
        "## Evaluation", "", _eval_table(meta, report), "", *_videos(meta, report),
        "## Use", "", "```python", "from bclm.policy import Policy", "",
        f'policy = Policy.from_pretrained("{repo_id or directory}")',
        "actions = policy.act(observations)   # a batch, as from a gymnasium vector env", "```", "",
        "```bash", f"bclm eval --policy {repo_id or directory} --episodes 100", "```", "",
        "The weights alone load with plain transformers and no remote code "
        f'(`AutoModelForCausalLM.from_pretrained("{repo_id or directory}")`); their token ids are defined by '
        "`bclm_tokenizer.json`, which `Policy.from_pretrained` loads with them and checks against the digest "
        "recorded in `config.json`.", "",
        "## Training", "", _training_summary(recipe), "",
        "## Files", "", *[f"- `{p}`: {what}" for p, what in _file_notes(directory)], ""])
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def _eval_table(meta: dict[str, Any], report: dict[str, Any]) -> str:
    rows = task_reports(meta, report)
    if not rows:
        return "Not evaluated (no `eval_report.json`)."
    lines = ["| task | env | episodes | success rate | mean return | mistake rate |", "|---|---|---:|---:|---:|---:|"]
    for task, r in rows:
        cells = [f"{r[k]:.3f}" if isinstance(r.get(k), int | float) else "-" for k, _ in METRICS]
        lines.append(f"| {task} | {r.get('env', '')} | {r.get('episodes', '')} | " + " | ".join(cells) + " |")
    if "tasks" in report:
        lines.append(f"| **average** | | | {report['success_rate']:.3f} | | |")
    seed = report.get("seed", next((r.get("seed") for _, r in rows), None))
    return "\n".join(lines) + f"\n\nSeeded evaluation rollouts (first env seed {seed}), greedy decoding."


def _videos(meta: dict[str, Any], report: dict[str, Any]) -> list[str]:
    """The evaluation's recorded episodes, shown by the Hub (paths relative to the policy directory)."""
    rows = [(task, path) for task, r in task_reports(meta, report) for path in r.get("videos", [])]
    if not rows:
        return []
    lines = ["### Videos", ""]
    for task, path in rows:
        tag = f'<video src="{path}" controls autoplay loop muted width="360"></video>' if path.endswith(".mp4") \
            else f"![{task}]({path})"
        lines += [f"{task}, `{path}`:", "", tag, ""]
    return lines


def _training_summary(recipe: dict[str, Any]) -> str:
    if not recipe:
        return "No `recipe.yaml` in this directory."
    train, model = recipe.get("train", {}), recipe.get("model", {})
    data = recipe.get("dataset") or ", ".join(t.get("dataset", "") for t in recipe.get("tasks", []))
    return (f"Model `{model.get('arch')}` size `{model.get('size')}`; {train.get('max_steps')} steps of batch "
            f"{train.get('batch_size')}, learning rate {train.get('lr')}; data: `{data}`. "
            "The whole recipe is `recipe.yaml`: `bclm train recipe.yaml` retrains this policy.")


FILE_NOTES = {
    "config.json": "the transformers model config (with the digest of its tokenizer)",
    "model.safetensors": "the weights",
    "state_projector.safetensors": "the state token's projector: a step's continuous observation into one vector "
                                   "at its ACT token (attached by `Policy.from_pretrained`)",
    "generation_config.json": "transformers' generation defaults",
    "bclm_tokenizer.json": "how observations and actions become token ids (spaces, bins, vocabulary)",
    POLICY_FILE: "context length, default task, the env of each task",
    "recipe.yaml": "the training recipe",
    "eval_report.json": "the evaluation report behind the table above",
    "metrics.jsonl": "the training log (loss, accuracy, learning rate per logged step)",
    "videos": "recorded episodes of the final evaluation",
}


def _file_notes(directory: Path) -> list[tuple[str, str]]:
    return [(name, what) for name, what in FILE_NOTES.items() if (directory / name).exists()]


def _hub_datasets(recipe: dict[str, Any]) -> list[str]:
    """Hub dataset repos the recipe's local datasets were pulled from (`bclm pull` records the repo)."""
    paths = [recipe.get("dataset", "")] + [t.get("dataset", "") for t in recipe.get("tasks", []) or []]
    repos = [read_json_or_empty(Path(p) / META_FILE).get("hub_repo_id") for p in paths if p]
    return sorted({r for r in repos if r})


def dataset_card(meta: dict[str, Any], shards: list[tuple[str, dict[str, Any]]], *, repo_id: str = "",
                 tags: list[str] | None = None, license: str | None = None) -> DatasetCard:
    """The card of a trajectory dataset: one `datasets` config per shard (a DAgger round), and `default`
    with all of them. `shards` is (name, summary) with the summary's episodes, steps, labels, source."""
    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": "data/*/*.parquet"}]}]
    configs += [{"config_name": name, "data_files": [{"split": "train", "path": f"data/{name}/*.parquet"}]}
                for name, _ in shards]
    data = DatasetCardData(license=license, tags=[*TAGS, meta.get("env_id", ""), *(tags or [])],
                           task_categories=["reinforcement-learning", "robotics"], configs=configs)
    ref = repo_id or "DIR"
    lines = ["| config (round) | source | episodes | steps | expert labels | β | mean return |",
             "|---|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {name} | {s['source']} | {s['episodes']} | {s['steps']} | {s['labels']} | {s['beta']:.2f} | "
              f"{s['mean_return']:.2f} |" for name, s in shards]
    body = "\n".join([
        f"# {repo_id.split('/')[-1] if repo_id else meta.get('env_id', 'bclm dataset')}", "",
        f"Trajectories of `{meta.get('env_id')}` (task `{meta.get('task')}`) recorded by "
        "bclm: one row per environment step with the executed action, the "
        "expert's label for the same state, and provenance (episode, step, round, source, β, policy revision).",
        "", "## Rounds", "", *lines, "",
        "Each round is a config, and each round is also a tag of this repo (`BRANCH-round-001` for data pushed to "
        "a branch) whose revision holds the rounds up to it, so the data any DAgger round trained on can be "
        "fetched again:", "",
        "```python", "import datasets", "",
        f'round_1 = datasets.load_dataset("{ref}", "round-001", split="train")',
        f'everything = datasets.load_dataset("{ref}", split="train")', "```", "", "```bash",
        f"bclm pull --dataset {ref} --revision round-001 --output data   # a bclm dataset: rounds 0 and 1",
        "```", "",
        "`bclm_dataset.json` holds the observation and action spaces (gymnasium, as JSON), from which bclm "
        "tokenizes the columns.", ""])
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


SUMMARY_COLUMNS = ("episode", "labeled", "source", "beta", "reward")


def shard_summary(columns: dict[str, np.ndarray]) -> dict[str, Any]:
    episodes = len(np.unique(columns["episode"]))
    return {"episodes": episodes, "steps": len(columns["episode"]), "labels": int(columns["labeled"].sum()),
            "source": str(columns["source"][0]), "beta": float(columns["beta"][0]),
            "mean_return": float(columns["reward"].sum(dtype=np.float64) / max(episodes, 1))}
