"""Pushing a policy to the Hub. The folder uploaded is built by `stage_policy`: the policy's Hub files and a
fresh model card, checked by loading it as a policy and parsing the card before anything is sent."""

from __future__ import annotations

import tempfile
from fnmatch import fnmatch
from pathlib import Path
from typing import Any

from bclm.artifacts import POLICY_PATTERNS
from bclm.data.store import staged_dir
from bclm.errors import BCLMError
from bclm.hub.cards import CARD_FILE, policy_card
from bclm.hub.upload import UploadPlan, create_repo, hub_api, hub_errors, link_or_copy, list_files

# Training byproducts stay local: checkpoints (optimizer pickles) and tensorboard logs are folders, and
# launch.json describes one machine's processes. The card is written fresh from the other files.
LOCAL_ONLY = ("launch.json", CARD_FILE)
VIDEOS = "videos"          # the final evaluation's recorded episodes (`eval.video`), embedded in the card


def stage_policy(policy_dir: str | Path, staging: str | Path, *, repo_id: str = "",
                 datasets: list[str] | None = None, tags: list[str] | None = None,
                 license: str | None = None) -> list[tuple[str, int]]:
    """Build the folder that a push of `policy_dir` uploads, in `staging`; returns its files and sizes."""
    from huggingface_hub import ModelCard

    from bclm.policy import Policy

    source = Path(policy_dir)
    if not source.is_dir():
        raise BCLMError(f"policy directory {source} not found")
    rounds = sorted(source.glob("round-*/bclm_policy.json"))
    if rounds and not (source / "bclm_policy.json").is_file():
        raise BCLMError(f"{source} is a DAgger run, not a policy: push one round's policy, e.g. "
                        f"{rounds[-1].parent}, and its data with --dataset {source / 'data'}")
    with staged_dir(staging) as tmp:
        for path in sorted(source.iterdir()):
            if path.is_file() and path.name not in LOCAL_ONLY and any(fnmatch(path.name, p) for p in POLICY_PATTERNS):
                link_or_copy(path, tmp / path.name)
        for video in sorted((source / VIDEOS).rglob("*")):       # what the card's Videos section shows
            if video.is_file():
                link_or_copy(video, tmp / video.relative_to(source))
        policy_card(tmp, repo_id=repo_id, datasets=datasets, tags=tags, license=license).save(tmp / CARD_FILE)
        # What is pushed is what loads: the staged folder as a policy, its card as Hub metadata.
        Policy.from_pretrained(tmp, device="cpu")
        ModelCard.load(tmp / CARD_FILE)
        files = list_files(tmp)
    return files


def push_policy(policy_dir: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                commit_message: str = "", dry_run: bool = False, datasets: list[str] | None = None,
                tags: list[str] | None = None, license: str | None = None, api: Any = None) -> UploadPlan:
    """Upload a policy directory to Hub repo `repo_id` (created if missing; `revision` a branch). The repo
    ends up holding exactly the staged folder: remote files it does not have are deleted in the same commit."""
    with tempfile.TemporaryDirectory(prefix="bclm-push-") as tmp:
        staging = Path(tmp) / "policy"
        files = stage_policy(policy_dir, staging, repo_id=repo_id, datasets=datasets, tags=tags, license=license)
        plan = UploadPlan(repo_id, "model", revision=revision, private=private, files=files)
        if dry_run:
            return plan
        api = hub_api(api)
        with hub_errors(plan):
            create_repo(api, plan)
            api.upload_folder(repo_id=repo_id, repo_type="model", folder_path=str(staging), revision=revision,
                              commit_message=commit_message or f"bclm: policy from {Path(policy_dir).name}",
                              delete_patterns="*")
        return plan
