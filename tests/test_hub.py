"""Hub sharing, offline: the exact folders a push uploads (built by the library's own staging functions and
sent through a recording stand-in for `HfApi`), loading by repo id from the Hub cache, model cards, and
the errors for files that do not belong together."""

from __future__ import annotations

import fnmatch
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import datasets
import numpy as np
import pytest
import torch
from huggingface_hub import DatasetCard, ModelCard
from transformers import AutoModelForCausalLM

from bclm import config as cfg
from bclm.collect import collect
from bclm.data.store import META_FILE, TrajectoryStore
from bclm.envs import get_task
from bclm.errors import BCLMError
from bclm.hub import pull_dataset, push_dataset, push_policy, stage_dataset, stage_policy
from bclm.policy import Policy
from bclm.rollout.shards import write_expert_shard
from bclm.trainer.bc import train
from bclm.trainer.config import TrainRecipe

ENV = "tests.custom_env:CustomTarget-v0"
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("hub") / "data"
    collect(get_task(ENV), "tests.custom_env:expert", 8, path, seed=0)
    write_expert_shard(TrajectoryStore(path), get_task(ENV), "tests.custom_env:expert", 3, seed=50, num_envs=2,
                       shard="round-001")
    return path


@pytest.fixture(scope="module")
def trained(store, tmp_path_factory):
    out = tmp_path_factory.mktemp("hub") / "policy"
    train(cfg.build_config(TrainRecipe, None, [
        "--dataset", str(store), "--output-dir", str(out), "--model.size", "tiny", "--data.context_length", "14",
        "--train.max_steps", "30", "--train.batch_size", "16", "--loop.progress", "false",
        "--eval.episodes", "2", "--eval.num_envs", "2"]))
    return out


def observations(policy: Policy, n: int = 6, steps: int = 5) -> list[np.ndarray]:
    space = policy.tokenizer.observation_space
    space.seed(3)
    return [np.stack([space.sample() for _ in range(n)]) for _ in range(steps)]


def act_all(policy: Policy, obs: list[np.ndarray]) -> np.ndarray:
    policy.reset()
    return np.stack([np.asarray(policy.act(o)) for o in obs])


class RecordingHub:
    """Stands in for `huggingface_hub.HfApi` offline: every commit is a folder snapshot, tags name commits,
    and upload_folder applies allow_patterns and delete_patterns as the Hub does."""

    def __init__(self, root: Path):
        self.root, self.calls, self.heads, self.tags = root, [], {}, {}

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))

    def update_repo_settings(self, repo_id, **kw):
        self.calls.append(("update_repo_settings", repo_id, kw))

    def create_branch(self, repo_id, *, branch, **kw):
        if branch not in self.heads and "main" in self.heads:       # a new branch starts at main's head
            self.heads[branch] = self.heads["main"]
        self.calls.append(("create_branch", repo_id, branch))

    def upload_folder(self, *, repo_id, folder_path, revision=None, allow_patterns=None, delete_patterns=None,
                      commit_message="", **kw):
        branch = revision or "main"
        commit = self.root / f"commit-{len(self.calls)}"
        if branch in self.heads:
            shutil.copytree(self.heads[branch], commit)
        commit.mkdir(exist_ok=True)
        local = [p.relative_to(folder_path).as_posix() for p in Path(folder_path).rglob("*") if p.is_file()]
        sent = [p for p in local if allow_patterns is None or any(fnmatch.fnmatch(p, a) for a in allow_patterns)]
        for p in [p.relative_to(commit).as_posix() for p in commit.rglob("*") if p.is_file()]:
            if delete_patterns and p not in sent and fnmatch.fnmatch(p, delete_patterns):
                (commit / p).unlink()
        for p in sent:
            (commit / p).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder_path) / p, commit / p)
        self.heads[branch] = commit
        self.calls.append(("upload_folder", repo_id, commit_message))
        return SimpleNamespace(oid=commit.name)

    def create_tag(self, repo_id, *, tag, revision, **kw):
        self.tags[tag] = self.root / revision
        self.calls.append(("create_tag", tag))

    def list_repo_refs(self, repo_id, **kw):
        return SimpleNamespace(tags=[SimpleNamespace(name=t) for t in self.tags])

    def hf_hub_download(self, repo_id, filename, *, revision, **kw):
        return str(self.tags[revision] / filename)


# --- policies ----------------------------------------------------------------------------------------

def test_trained_policy_directory_has_the_hub_layout_and_a_model_card(trained):
    for name in ("config.json", "model.safetensors", "bclm_tokenizer.json", "bclm_policy.json", "recipe.yaml",
                 "eval_report.json", "README.md"):
        assert (trained / name).is_file(), name
    config = json.loads((trained / "config.json").read_text())
    assert "auto_map" not in config and len(config["bclm_tokenizer_sha256"]) == 64
    card = ModelCard.load(trained / "README.md")
    report = json.loads((trained / "eval_report.json").read_text())
    assert card.data.library_name == "bclm" and "behavior-cloning" in card.data.tags
    assert report["env"] in card.data.tags
    results = {r.metric_type: r for r in card.data.eval_results}
    assert results["success_rate"].metric_value == pytest.approx(report["success_rate"], abs=1e-4)
    assert results["mean_return"].metric_value == pytest.approx(report["mean_return"], abs=1e-4)
    assert results["success_rate"].dataset_type == report["env"]
    assert f"| {report['success_rate']:.3f} |" in card.text          # the table renders the report


def test_policy_loads_in_a_fresh_process_by_path_and_by_repo_id_with_identical_actions(trained, tmp_path):
    policy = Policy.from_pretrained(trained, device="cpu")
    obs = observations(policy)
    np.save(tmp_path / "obs.npy", np.stack(obs))
    expected = act_all(policy, obs)
    # A Hub cache holding the repo `someone/policy` at one commit, read offline as a download would be.
    snapshot = tmp_path / "hub" / "models--someone--policy" / "snapshots" / ("a" * 40)
    stage_policy(trained, snapshot, repo_id="someone/policy")
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("a" * 40)
    script = ("import sys, numpy as np\nfrom bclm.policy import Policy\n"
              "p = Policy.from_pretrained(sys.argv[1], device='cpu')\nobs = np.load(sys.argv[2])\n"
              "np.save(sys.argv[3], np.stack([np.asarray(p.act(o)) for o in obs]))\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    for i, ref in enumerate((str(trained), "someone/policy")):
        subprocess.run([sys.executable, "-c", script, ref, str(tmp_path / "obs.npy"), str(tmp_path / f"{i}.npy")],
                       env=env, check=True, cwd=tmp_path, timeout=300)
        np.testing.assert_array_equal(np.load(tmp_path / f"{i}.npy"), expected)


def test_weights_load_with_plain_transformers(trained):
    policy = Policy.from_pretrained(trained, device="cpu")
    plain = AutoModelForCausalLM.from_pretrained(str(trained), trust_remote_code=False).eval()
    ids = torch.arange(1, 13).unsqueeze(0) % policy.tokenizer.vocab_size
    with torch.no_grad():
        torch.testing.assert_close(plain(ids).logits, policy.model(ids).logits, rtol=0, atol=0)


def test_push_uploads_exactly_the_staged_folder(trained, tmp_path):
    hub = RecordingHub(tmp_path / "remote")
    (tmp_path / "remote").mkdir()
    plan = push_policy(trained, "someone/policy", private=True, revision="v1", api=hub)
    assert hub.calls[:3] == [
        ("create_repo", "someone/policy", {"repo_type": "model", "private": True, "exist_ok": True}),
        ("update_repo_settings", "someone/policy", {"repo_type": "model", "private": True}),   # if it existed
        ("create_branch", "someone/policy", "v1")]
    remote = hub.heads["v1"]
    staged = stage_policy(trained, tmp_path / "staged", repo_id="someone/policy")
    assert [(p.relative_to(remote).as_posix(), p.stat().st_size) for p in sorted(remote.rglob("*"))] == staged
    assert plan.files == staged
    assert not any(name.startswith(("checkpoints", "tensorboard")) for name, _ in staged)
    for name, _ in staged:
        assert (remote / name).read_bytes() == (tmp_path / "staged" / name).read_bytes()
    policy = Policy.from_pretrained(trained, device="cpu")
    obs = observations(policy)
    np.testing.assert_array_equal(act_all(Policy.from_pretrained(remote, device="cpu"), obs), act_all(policy, obs))
    # A second push of another policy leaves no stale file of the first one behind.
    (tmp_path / "extra.json").write_text("{}")
    shutil.copy(tmp_path / "extra.json", remote / "stale.json")
    push_policy(trained, "someone/policy", revision="v1", api=hub)
    assert not (hub.heads["v1"] / "stale.json").exists()


def test_dry_run_uploads_nothing_and_lists_the_folder(trained, capsys):
    from bclm.cli import main

    hub = RecordingHub(Path("/nonexistent"))
    plan = push_policy(trained, "someone/policy", dry_run=True, api=hub)
    assert hub.calls == [] and "model.safetensors" in plan.describe()
    assert main(["push", "--policy", str(trained), "--repo-id", "someone/policy", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("dry run: would upload ") and "https://huggingface.co/someone/policy" in out
    for name in ("README.md", "bclm_tokenizer.json", "config.json", "model.safetensors"):
        assert name in out


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("checkpoints", "tensorboard"))
    return dst


def test_tokenizer_from_another_model_is_refused(trained, tmp_path):
    import gymnasium as gym

    from tests.conftest import tiny_policy
    other = tiny_policy(gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(4))
    other.save_pretrained(tmp_path / "other")
    mixed = _copy(trained, tmp_path / "mixed")
    shutil.copy(tmp_path / "other" / "bclm_tokenizer.json", mixed / "bclm_tokenizer.json")
    with pytest.raises(BCLMError, match=r"bclm_tokenizer.json belongs to another model"):
        Policy.from_pretrained(mixed, device="cpu")
    # Reformatting the right tokenizer file (whitespace, key order) is not a mismatch.
    body = json.loads((trained / "bclm_tokenizer.json").read_text())
    (mixed / "bclm_tokenizer.json").write_text(json.dumps(body))
    Policy.from_pretrained(mixed, device="cpu")


def test_truncated_or_pickled_weights_are_refused(trained, tmp_path):
    cut = _copy(trained, tmp_path / "cut")
    data = (cut / "model.safetensors").read_bytes()
    (cut / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(BCLMError, match=r"model.safetensors is truncated or its header is damaged"):
        Policy.from_pretrained(cut, device="cpu")
    pickled = _copy(trained, tmp_path / "pickled")
    (pickled / "model.safetensors").rename(pickled / "pytorch_model.bin")
    with pytest.raises(BCLMError, match=r"no model.safetensors \(it has pytorch_model.bin: bclm never loads"):
        Policy.from_pretrained(pickled, device="cpu")


def test_unknown_repo_offline_is_a_clear_error(tmp_path):
    code = ("from bclm.policy import Policy\nfrom bclm.errors import BCLMError\ntry:\n"
            "    Policy.from_pretrained('nobody/nothing')\nexcept BCLMError as e:\n    print(e)\n")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert "policy 'nobody/nothing': no such directory, and the Hub cannot be reached (offline)" in out.stdout


# --- datasets ----------------------------------------------------------------------------------------

def _columns(store: TrajectoryStore, shards: list[str]) -> dict:
    return store.load(shards)[:]


def test_dataset_push_makes_a_commit_and_tag_per_round_and_pulls_back_exactly(store, tmp_path):
    hub = RecordingHub(tmp_path / "remote")
    (tmp_path / "remote").mkdir()
    plan = push_dataset(store, "someone/data", api=hub)
    assert [c for c in hub.calls if c[0] == "create_tag"] == [("create_tag", "round-000"), ("create_tag", "round-001")]
    assert len(plan.commits) == 2
    original = TrajectoryStore(store)
    for k, tag in enumerate(("round-000", "round-001")):
        snapshot = hub.tags[tag]
        assert sorted(p.parent.name for p in snapshot.glob("data/*/*.parquet")) == original.shard_names()[:k + 1]
        pulled = pull_dataset(snapshot, tmp_path / f"pulled-{k}")
        assert pulled.shard_names() == original.shard_names()[:k + 1]
        assert pulled.features == original.features
        got, want = _columns(pulled, pulled.shard_names()), _columns(original, pulled.shard_names())
        assert got.keys() == want.keys()
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
        card = DatasetCard.load(snapshot / "README.md")
        assert [c["config_name"] for c in card.data.configs] == ["default", *original.shard_names()[:k + 1]]
    # Pushing again resumes: every round is tagged with the same data, so nothing is uploaded.
    uploads = sum(c[0] == "upload_folder" for c in hub.calls)
    push_dataset(store, "someone/data", api=hub)
    assert sum(c[0] == "upload_folder" for c in hub.calls) == uploads


def test_pushing_another_run_under_existing_round_tags_is_refused(store, tmp_path):
    hub = RecordingHub(tmp_path / "remote")
    (tmp_path / "remote").mkdir()
    other = tmp_path / "other"
    collect(get_task(ENV), "tests.custom_env:expert", 2, other, seed=7)
    push_dataset(other, "someone/data", api=hub)
    with pytest.raises(BCLMError, match="tag round-000 already holds other data"):
        push_dataset(store, "someone/data", api=hub)


def test_staged_dataset_loads_with_datasets_one_round_at_a_time(store, tmp_path):
    files, _ = stage_dataset(store, tmp_path / "staged", repo_id="someone/data")
    assert ("bclm_dataset.json", (Path(store) / META_FILE).stat().st_size) in files
    original = TrajectoryStore(store)
    one = datasets.load_dataset(str(tmp_path / "staged"), "round-001", split="train",
                                cache_dir=str(tmp_path / "cache"))
    assert one.features == original.features and len(one) == len(original.load(["round-001"]))
    everything = datasets.load_dataset(str(tmp_path / "staged"), split="train", cache_dir=str(tmp_path / "cache"))
    assert len(everything) == len(original.load())


def test_dataset_of_a_newer_format_version_is_refused(store, tmp_path):
    staged = tmp_path / "staged"
    stage_dataset(store, staged)
    meta = json.loads((staged / META_FILE).read_text())
    (staged / META_FILE).unlink()
    (staged / META_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(BCLMError, match=r"bclm_dataset.json: format_version 99 is newer than this bclm reads"):
        pull_dataset(staged, tmp_path / "out")


def test_pull_by_repo_id_and_revision_from_the_hub_cache_and_the_card_names_the_dataset(store, tmp_path):
    from bclm.hub import policy_card

    hub = RecordingHub(tmp_path / "remote")
    (tmp_path / "remote").mkdir()
    push_dataset(store, "someone/data", api=hub)
    repo = tmp_path / "hub" / "datasets--someone--data"
    for tag in ("round-000", "round-001"):
        shutil.copytree(hub.tags[tag], repo / "snapshots" / hub.tags[tag].name.ljust(40, "0"))
        (repo / "refs").mkdir(exist_ok=True)
        (repo / "refs" / tag).write_text(hub.tags[tag].name.ljust(40, "0"))
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    r = subprocess.run([sys.executable, "-m", "bclm", "pull", "--dataset", "someone/data", "--revision", "round-000",
                        "--output", str(tmp_path / "pulled")], env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    pulled = TrajectoryStore(tmp_path / "pulled")
    assert pulled.shard_names() == ["round-000"]
    assert (pulled.meta["hub_repo_id"], pulled.meta["hub_revision"]) == ("someone/data", "round-000")
    assert pulled.meta["hub_commit"] == hub.tags["round-000"].name.ljust(40, "0")
    from bclm.data.lerobot import export_lerobot, import_lerobot

    export_lerobot(tmp_path / "pulled", tmp_path / "lerobot")          # the origin survives a LeRobot round trip
    assert import_lerobot(tmp_path / "lerobot", tmp_path / "back").meta == pulled.meta
    # A policy trained on the pulled data names the Hub dataset in its card.
    policy_dir = tmp_path / "policy"
    import gymnasium as gym

    from tests.conftest import tiny_policy
    tiny_policy(gym.spaces.Box(-1, 1, (2,), np.float32), gym.spaces.Discrete(4)).save_pretrained(policy_dir)
    (policy_dir / "recipe.yaml").write_text(f"dataset: {tmp_path / 'pulled'}\n")
    assert policy_card(policy_dir).data.datasets == ["someone/data"]


def test_dataset_pushed_to_a_branch_holds_only_its_own_rounds(store, tmp_path):
    hub = RecordingHub(tmp_path / "remote")
    (tmp_path / "remote").mkdir()
    other = tmp_path / "other"
    collect(get_task(ENV), "tests.custom_env:expert", 2, other, seed=7)
    write_expert_shard(TrajectoryStore(other), get_task(ENV), "tests.custom_env:expert", 1, seed=9, num_envs=1,
                       shard="round-002")
    push_dataset(other, "someone/data", api=hub)                      # main: another run's round-000, round-002
    push_dataset(store, "someone/data", revision="exp", api=hub)
    assert sorted(t for t in hub.tags if t.startswith("exp-")) == ["exp-round-000", "exp-round-001"]
    snapshot = hub.tags["exp-round-001"]
    assert sorted(p.parent.name for p in snapshot.glob("data/*/*.parquet")) == ["round-000", "round-001"]
    pulled = pull_dataset(snapshot, tmp_path / "pulled")
    np.testing.assert_array_equal(pulled.load()["observation"][:], TrajectoryStore(store).load()["observation"][:])


def test_private_push_creates_no_public_repo_and_errors_are_one_line(trained, tmp_path):
    from httpx2 import Request, Response
    from huggingface_hub.errors import HfHubHTTPError

    class Refusing(RecordingHub):
        def create_repo(self, repo_id, **kw):
            response = Response(401, request=Request("POST", "https://huggingface.co/api/repos/create"))
            raise HfHubHTTPError("401 Client Error: Unauthorized", response=response)

    hub = RecordingHub(tmp_path)
    push_policy(trained, "someone/policy", api=hub)
    assert hub.calls[0][2]["private"] is None          # the account's or organisation's default applies
    assert not any(c[0] == "update_repo_settings" for c in hub.calls)
    with pytest.raises(BCLMError, match=r"pushing to https://huggingface.co/someone/policy failed: 401"):
        push_policy(trained, "someone/policy", api=Refusing(tmp_path))


def test_a_failed_pull_leaves_no_output_and_names_the_file(store, tmp_path):
    staged = tmp_path / "staged"
    stage_dataset(store, staged)
    bad = staged / "data" / "round-001" / "train-00000-of-00001.parquet"
    bad.write_bytes(bad.read_bytes()[:100])
    with pytest.raises(BCLMError, match=r"round-001/train-00000-of-00001.parquet is not a readable Parquet file"):
        pull_dataset(staged, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.tmp-*"))


def test_sharded_weights_with_a_missing_shard_and_downloads_skip_pickles(trained, tmp_path):
    from huggingface_hub.utils import filter_repo_objects

    from bclm.artifacts import POLICY_PATTERNS

    sharded = _copy(trained, tmp_path / "sharded")
    policy = Policy.from_pretrained(trained, device="cpu")
    (sharded / "model.safetensors").unlink()
    policy.model.save_pretrained(str(sharded), max_shard_size="100KB")
    shards = sorted(sharded.glob("model-*.safetensors"))
    assert len(shards) > 1
    obs = observations(policy)
    np.testing.assert_array_equal(act_all(Policy.from_pretrained(sharded, device="cpu"), obs), act_all(policy, obs))
    shards[-1].unlink()
    with pytest.raises(BCLMError, match=rf"names weight files that are missing: {shards[-1].name}"):
        Policy.from_pretrained(sharded, device="cpu")
    repo = ["config.json", "model.safetensors", "pytorch_model.bin", "training_args.pt", "optimizer.pkl",
            "checkpoints/step-10/model.safetensors", "round-001/config.json", "README.md", "bclm_tokenizer.json"]
    fetched = list(filter_repo_objects(repo, allow_patterns=POLICY_PATTERNS, ignore_patterns=["*/*"]))
    assert fetched == ["config.json", "model.safetensors", "README.md", "bclm_tokenizer.json"]
