"""Trajectory datasets on the Hub, in the layout `datasets` reads:

    README.md                                   dataset card; YAML `configs`: default (all) + one per round
    bclm_dataset.json                           spaces and env: how bclm tokenizes the columns
    data/round-000/train-00000-of-00001.parquet one Parquet file per shard (the features in its schema)
    data/round-001/...

A push makes one commit per round, tagged with the round's name, so revision `round-002` holds rounds 0-2:
the exact data DAgger's round 2 trained on. `datasets.load_dataset(repo, "round-001")` loads one round.
The folder is written and checked here rather than by `Dataset.push_to_hub`, which pushes one config per call,
cannot tag each round's commit, and cannot show a dry run.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import datasets
import pyarrow as pa
import pyarrow.parquet as pq

from bclm.artifacts import local_or_hub
from bclm.data.store import META_FILE, TrajectoryStore, staged_dir
from bclm.errors import BCLMError
from bclm.hub.cards import CARD_FILE, SUMMARY_COLUMNS, dataset_card, shard_summary
from bclm.hub.upload import UploadPlan, create_repo, hub_api, hub_errors, link_or_copy, list_files

PARQUET = "data/{}/train-00000-of-00001.parquet"


def stage_dataset(store_path: str | Path, staging: str | Path, *, repo_id: str = "", tags: list[str] | None = None,
                  license: str | None = None) -> tuple[list[tuple[str, int]], list[tuple[str, dict]]]:
    """Write the folder a push of the store uploads; returns its files and (shard, summary) per shard."""
    store = TrajectoryStore(store_path)
    names = store.shard_names()
    if not names:
        raise BCLMError(f"{store.path} holds no complete shard to push")
    with staged_dir(staging) as tmp:
        link_or_copy(store.path / META_FILE, tmp / META_FILE)
        summaries = []
        for name in names:
            shard = store.load([name])
            path = tmp / PARQUET.format(name)
            path.parent.mkdir(parents=True)
            shard.to_parquet(str(path))
            check_parquet(path, store.features, len(shard))
            summaries.append((name, shard_summary(shard.select_columns(list(SUMMARY_COLUMNS))[:])))
        write_dataset_card(tmp, store.meta, summaries, repo_id=repo_id, tags=tags, license=license)
        files = list_files(tmp)
    return files, summaries


def write_dataset_card(folder: Path, meta: dict[str, Any], summaries: list[tuple[str, dict]], **card: Any) -> None:
    from huggingface_hub import DatasetCard

    dataset_card(meta, summaries, **card).save(folder / CARD_FILE)
    DatasetCard.load(folder / CARD_FILE)           # the YAML the Hub will index parses


def check_parquet(path: Path, features: datasets.Features, rows: int | None = None) -> None:
    """A shard's Parquet file is readable and carries the store's exact features (in its schema)."""
    try:
        found = datasets.Features.from_arrow_schema(pq.read_schema(path))
        count = pq.read_metadata(path).num_rows
    except (pa.ArrowException, OSError) as e:
        raise BCLMError(f"{path} is not a readable Parquet file ({e}): download it again") from None
    if found != features:
        raise BCLMError(f"{path}: its columns {list(found)} do not match the dataset's {list(features)}")
    if rows is not None and count != rows:
        raise BCLMError(f"{path}: {count} rows, expected {rows}")


def round_tag(shard: str, revision: str | None) -> str:
    return f"{revision}-{shard}" if revision else shard


def push_dataset(store_path: str | Path, repo_id: str, *, private: bool = False, revision: str | None = None,
                 dry_run: bool = False, tags: list[str] | None = None, license: str | None = None,
                 api: Any = None) -> UploadPlan:
    """Upload a trajectory store as dataset repo `repo_id`: a commit and a tag per round, each commit holding
    exactly this store's rounds so far (other data under data/ is deleted in it). Rounds already on the Hub
    under their tag, with the same rows, are skipped, so a push that stopped half-way resumes."""
    with tempfile.TemporaryDirectory(prefix="bclm-push-") as tmp:
        staging = Path(tmp) / "dataset"
        files, summaries = stage_dataset(store_path, staging, repo_id=repo_id, tags=tags, license=license)
        names = [name for name, _ in summaries]
        plan = UploadPlan(repo_id, "dataset", revision=revision, private=private, files=files,
                          commits=[f"{round_tag(n, revision)}: {PARQUET.format(n)}, card" for n in names])
        if dry_run:
            return plan
        api = hub_api(api)
        with hub_errors(plan):
            create_repo(api, plan)
            pushed = {ref.name for ref in api.list_repo_refs(repo_id, repo_type="dataset").tags}
            meta = TrajectoryStore(store_path).meta
            for k, name in enumerate(names):
                tag = round_tag(name, revision)
                if tag in pushed:
                    _check_pushed(api, repo_id, tag, staging, name)
                    continue
                write_dataset_card(staging, meta, summaries[:k + 1], repo_id=repo_id, tags=tags, license=license)
                commit = api.upload_folder(
                    repo_id=repo_id, repo_type="dataset", folder_path=str(staging), revision=revision,
                    allow_patterns=[META_FILE, CARD_FILE, *(f"data/{n}/*" for n in names[:k + 1])],
                    delete_patterns="data/*", commit_message=f"bclm: {name} ({summaries[k][1]['episodes']} episodes)")
                api.create_tag(repo_id, repo_type="dataset", tag=tag, revision=commit.oid)
        return plan


def _check_pushed(api: Any, repo_id: str, tag: str, staging: Path, shard: str) -> None:
    """A round tagged before must hold this store's rows for that round, not another run's. The tables are
    compared, not the files' bytes, which change with the pyarrow version that wrote them."""
    path = PARQUET.format(shard)
    remote = api.hf_hub_download(repo_id, path, repo_type="dataset", revision=tag)
    if not pq.read_table(remote).equals(pq.read_table(staging / path)):
        raise BCLMError(f"{repo_id}: tag {tag} already holds other data for {shard}: push this dataset to a "
                        "new repo or a new --revision")


def pull_dataset(repo_or_dir: str | Path, output: str | Path, *, revision: str | None = None) -> TrajectoryStore:
    """A bclm dataset at `output` from a Hub dataset repo (at `revision`, e.g. a round's tag) or a folder in
    the Hub layout; the shards are the same rows, columns and features as the store that was pushed. Every
    file is checked before anything is written, and the store appears at `output` only once complete."""
    folder = local_or_hub(repo_or_dir, "dataset", revision, repo_type="dataset",
                          allow_patterns=[META_FILE, CARD_FILE, "data/*/*.parquet"])
    source = TrajectoryStore(folder)          # checks bclm_dataset.json: format, version, spaces
    shards: dict[str, list[Path]] = {}
    for path in sorted(folder.glob("data/*/*.parquet")):
        check_parquet(path, source.features)
        shards.setdefault(path.parent.name, []).append(path)
    if not shards:
        raise BCLMError(f"{folder}: no data/<round>/*.parquet files")
    # A Hub snapshot's folder is named by its commit: the revision a later pull can reproduce exactly.
    origin = None if Path(repo_or_dir).is_dir() else {
        "hub_repo_id": str(repo_or_dir), "hub_revision": revision or "main", "hub_commit": folder.name}
    with staged_dir(output) as tmp:
        store = TrajectoryStore.create(tmp, source.observation_space, source.action_space,
                                       env_id=source.meta["env_id"], task=source.meta["task"], origin=origin)
        for name, files in shards.items():
            store.write_dataset(name, datasets.Dataset(pa.concat_tables([pq.read_table(f) for f in files])))
    return TrajectoryStore(output)

