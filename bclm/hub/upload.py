"""An upload to the Hub as a plan: the folder to push is staged and checked first, a dry run prints it, and a
real push uploads exactly that folder with `huggingface_hub` (`create_repo`, `upload_folder`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bclm.errors import BCLMError

HUB = "https://huggingface.co"


@dataclass
class UploadPlan:
    """What a push sends: the staged folder's files (relative paths and sizes) to `repo_id` at `revision`."""

    repo_id: str
    repo_type: str
    revision: str | None = None
    private: bool = False
    files: list[tuple[str, int]] = field(default_factory=list)
    commits: list[str] = field(default_factory=list)     # what each commit holds, when there are several

    @property
    def url(self) -> str:
        return f"{HUB}/{'datasets/' if self.repo_type == 'dataset' else ''}{self.repo_id}"

    def describe(self) -> str:
        total = sum(size for _, size in self.files)
        head = (f"{len(self.files)} files ({total / 2**20:.2f} MiB) to {self.url} "
                f"(revision {self.revision or 'main'}, {'private' if self.private else 'public'})")
        width = max(len(p) for p, _ in self.files)
        lines = [head, *[f"  {p.ljust(width)}  {_size(n):>10}" for p, n in self.files]]
        if self.commits:
            lines += ["commits, one per round, each tagged with its round:", *[f"  {c}" for c in self.commits]]
        return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n} B" if n < 1024 else f"{n / 1024:.1f} KiB" if n < 2**20 else f"{n / 2**20:.1f} MiB"


def list_files(folder: Path) -> list[tuple[str, int]]:
    return sorted((p.relative_to(folder).as_posix(), p.stat().st_size) for p in folder.rglob("*") if p.is_file())


def link_or_copy(src: Path, dst: Path) -> None:
    """Stage a file without doubling the disk it takes (a hard link), or copy it across file systems."""
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def hub_api(api: Any = None) -> Any:
    if api is not None:
        return api
    from huggingface_hub import HfApi
    return HfApi()


def create_repo(api: Any, plan: UploadPlan) -> None:
    """The repo (and the branch `plan.revision`), unless they exist. `private=None` when not asked for lets an
    organisation's private-by-default setting apply; `create_repo` ignores `private` for a repo that exists,
    so a private push makes an existing repo private explicitly."""
    api.create_repo(plan.repo_id, repo_type=plan.repo_type, private=True if plan.private else None, exist_ok=True)
    if plan.private:
        api.update_repo_settings(plan.repo_id, repo_type=plan.repo_type, private=True)
    if plan.revision:
        api.create_branch(plan.repo_id, repo_type=plan.repo_type, branch=plan.revision, exist_ok=True)


@contextmanager
def hub_errors(plan: UploadPlan) -> Iterator[None]:
    """The Hub's refusals (not logged in, no write access, a bad revision) as one-line errors."""
    from huggingface_hub.errors import HfHubHTTPError

    try:
        yield
    except HfHubHTTPError as e:
        raise BCLMError(f"pushing to {plan.url} failed: {' '.join(str(e).split())} (log in with `hf auth login` "
                        "or set HF_TOKEN, with write access to the repo)") from None
