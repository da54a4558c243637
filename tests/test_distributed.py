"""Two CPU processes (gloo) under `accelerate launch`: DDP, DeepSpeed ZeRO-2 and ZeRO-3.

Several wrong setups exit 0 while training wrongly (one process instead of two, DeepSpeed silently
dropped, data not split), so these tests check the distributed state each run wrote (launch.json), that
the ranks saw different batches, and that the losses equal a single-process run with the same global
batch. Tolerance: 1e-5 relative; the runs differ only in the order of floating-point reductions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from bclm import config as cfg
from bclm.collect import collect
from bclm.envs import get_task
from bclm.trainer.bc import train
from bclm.trainer.config import TrainRecipe

try:
    import deepspeed
except ImportError:
    deepspeed = None
needs_deepspeed = pytest.mark.skipif(deepspeed is None, reason="deepspeed is not installed (the deepspeed extra)")
# CPU processes with gloo, compared with a CPU run in this process: on a machine with a GPU the launches
# would take it (one GPU cannot hold two ranks), so these run where CI runs, without one.
pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="2-process CPU tests; this machine has a GPU")
ROOT = Path(__file__).resolve().parent.parent
STEPS, PER_RANK_BATCH = 6, 4


def _args(dataset: Path, out: Path, batch: int) -> list[str]:
    return ["--dataset", str(dataset), "--output-dir", str(out), "--model.size", "tiny",
            "--data.context_length", "30", "--data.val_episodes", "1", "--train.batch_size", str(batch),
            "--train.max_steps", str(STEPS), "--train.warmup_steps", "2", "--loop.log_every", "2",
            # Not DeepSpeed's defaults: the recipe's clipping and accumulation must reach the engine.
            "--train.grad_clip", "0.5", "--train.grad_accum", "2",
            "--loop.progress", "false", "--eval.episodes", "1", "--eval.num_envs", "1"]


def _losses(out: Path) -> dict[int, dict]:
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    logged = {r["step"]: r for r in rows if "loss" in r}
    for r in rows:                       # a logged step's validation line joins its training line
        if "val_loss" in r and r["step"] in logged:
            logged[r["step"]].update(r)
    return logged


def launch(config: str, args: list[str], timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", f"recipes/accelerate/{config}.yaml",
           "--num_processes", "2", "-m", "bclm", "train", *args]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("dist") / "data"
    collect(get_task("CartPole-v1"), None, 3, path, seed=0)
    return path


@pytest.fixture(scope="module")
def reference(dataset, tmp_path_factory) -> dict[int, dict]:
    """One process with the global batch (2 × the per-rank batch)."""
    out = tmp_path_factory.mktemp("dist") / "single"
    train(cfg.build_config(TrainRecipe, None, _args(dataset, out, 2 * PER_RANK_BATCH)))
    assert json.loads((out / "launch.json").read_text())["num_processes"] == 1
    return _losses(out)


@pytest.mark.parametrize(("config", "kind", "stage"), [
    ("ddp", "MULTI_CPU", None),
    pytest.param("zero2", "DEEPSPEED", 2, marks=needs_deepspeed),
    pytest.param("zero3", "DEEPSPEED", 3, marks=needs_deepspeed)])
def test_two_processes_split_the_data_and_match_one_process(dataset, reference, tmp_path, config, kind, stage):
    out = tmp_path / config
    launch(config, _args(dataset, out, PER_RANK_BATCH))
    info = json.loads((out / "launch.json").read_text())
    assert info["num_processes"] == 2
    assert info["distributed_type"] == kind
    assert info["zero_stage"] == stage
    first = info["first_batch_sha1_per_rank"]
    assert len(first) == 2 and first[0] != first[1]                 # each rank got its own windows
    losses = _losses(out)
    assert sorted(losses) == sorted(reference) == [2, 4, 6]
    for step, ref in reference.items():
        assert losses[step]["lr"] == pytest.approx(ref["lr"], rel=1e-9)        # one schedule step per step
        for key in ("loss", "val_loss", "action_accuracy"):
            assert losses[step][key] == pytest.approx(ref[key], rel=1e-5), (config, step, key)
    if stage == 3:
        _exported_model_is_the_live_one(out, losses[STEPS])


def _exported_model_is_the_live_one(out: Path, live: dict) -> None:
    """ZeRO-3 shards every weight: the exported file must hold the gathered whole, loadable by plain
    transformers. The last validation was computed by the sharded engine; the file must give the same loss
    and pick the same action token at every held-out position (same accuracy, to the token)."""
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    from bclm.policy import Policy
    from bclm.trainer.data import prepare_data
    from bclm.trainer.step import validate

    model = AutoModelForCausalLM.from_pretrained(out)                  # no bclm, no remote code
    assert all(p.ndim >= 1 and p.numel() > 0 for p in model.parameters())
    policy = Policy.from_pretrained(out)
    recipe = cfg.build_config(TrainRecipe, out / "recipe.yaml", ["--overwrite", "true"])
    data = prepare_data(recipe, policy.tokenizers)
    val = validate(policy.model, data.val_set, policy.tokenizer.pad_id, Accelerator(cpu=True))
    assert val["val_loss"] == pytest.approx(live["val_loss"], rel=1e-5)
    assert val["val_action_accuracy"] == pytest.approx(live["val_action_accuracy"], abs=1e-6)
    torch.testing.assert_close(policy.model.state_dict()["model.embed_tokens.weight"],
                               model.state_dict()["model.embed_tokens.weight"])


def test_a_run_killed_mid_training_resumes_to_the_same_losses(dataset, tmp_path):
    """SIGKILL after a checkpoint, start again: model, optimizer, schedule, RNG and data position come back,
    so every logged loss equals the uninterrupted run's."""
    import signal
    import time

    steps = ["--train.max_steps", "160", "--loop.save_every", "40", "--loop.log_every", "20", "--loop.val_every", "20",
             "--train.batch_size", "16", "--eval.episodes", "1"]
    straight = tmp_path / "straight"
    train(cfg.build_config(TrainRecipe, None, [*_args(dataset, straight, 16), *steps]))

    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "bclm", "train", *_args(dataset, out, 16), *steps]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    marker = out / "checkpoints" / "step-80" / "bclm_step.json"
    deadline = time.time() + 120
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert marker.exists() and not (out / "model.safetensors").exists(), "the run ended before it was killed"

    resumed = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stdout
    expected, got = _losses(straight), _losses(out)             # the last line logged for each step
    assert sorted(got) == sorted(expected)
    for step, row in expected.items():
        for key in ("loss", "val_loss", "lr"):
            assert got[step][key] == pytest.approx(row[key], rel=1e-6), (step, key)


def test_a_launch_whose_parts_disagree_is_refused(monkeypatch):
    from accelerate import Accelerator

    from bclm.errors import BCLMError
    from bclm.trainer.launch import check_launch

    accelerator = Accelerator(cpu=True)
    monkeypatch.setenv("WORLD_SIZE", "2")                # a launcher that started two, an accelerate that sees one
    with pytest.raises(BCLMError, match=r"launcher \(WORLD_SIZE\) 2, accelerate 1"):
        check_launch(accelerator)
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")   # DeepSpeed asked for, DDP/none set up
    with pytest.raises(BCLMError, match="asked for DeepSpeed"):
        check_launch(accelerator)


def test_dagger_in_two_processes_collects_what_one_process_collects(tmp_path):
    """Each rank rolls out its share of every round's envs; rank 0 writes the merged shard; both train on
    the aggregate. Same seeds, same global batch: the same data as one process, step for step."""
    from bclm.data.store import TrajectoryStore

    def args(out: Path, batch: int) -> list[str]:
        return ["--output-dir", str(out), "--dagger.env", "CartPole-v1", "--dagger.rounds", "2",
                "--dagger.initial_episodes", "2", "--dagger.episodes_per_round", "3", "--dagger.num_envs", "3",
                "--dagger.rollout_max_steps", "40", "--dagger.beta", "constant", "--dagger.beta_value", "0.5",
                "--model.size", "tiny", "--data.context_length", "30", "--train.batch_size", str(batch),
                "--train.max_steps", "4", "--loop.progress", "false", "--eval.episodes", "1"]

    one, two = tmp_path / "one", tmp_path / "two"
    single = subprocess.run([sys.executable, "-m", "bclm", "dagger", *args(one, 8)], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-2000:]
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", "recipes/accelerate/ddp.yaml",
           "--num_processes", "2", "-m", "bclm", "dagger", *args(two, 4)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("report:") == 1                       # rank 0 alone reports
    a, b = TrajectoryStore(one / "data"), TrajectoryStore(two / "data")
    assert a.shard_names() == b.shard_names() == ["round-000", "round-001", "round-002"]
    x, y = a.arrays(), b.arrays()
    assert len(x) == len(y)
    for name in ("observation", "action", "expert_action"):
        np.testing.assert_array_equal(getattr(x, name), getattr(y, name), err_msg=name)
    for name in ("episode", "step", "expert_used", "round"):
        np.testing.assert_array_equal(x.columns[name], y.columns[name], err_msg=name)
    assert json.loads((two / "round-002" / "launch.json").read_text())["num_processes"] == 2
