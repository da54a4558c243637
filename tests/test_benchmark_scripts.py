"""The benchmark scripts run end to end: label efficiency (bclm against the MLP), the Pendulum probes, shard writes,
the training step with packed symbols, BabyAI agreement with the bot, a sweep's expert collection."""

from __future__ import annotations

import re
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).parent.parent / "benchmarks"


def _run(*args: str) -> str:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_label_efficiency_then_the_pendulum_probe_print_their_tables(tmp_path):
    out = _run(str(BENCHMARKS / "label_efficiency.py"), "--quick", "--tasks", "Pendulum-v1", "--out", str(tmp_path))
    assert re.search(r"\| Pendulum-v1 \| 200 \| \d+% ± \d+ \| \d+% ± \d+ \| \d+% ± \d+ \|", out), out   # + linear law
    task_dir = tmp_path / "quick" / "Pendulum-v1"
    table = _run(str(BENCHMARKS / "pendulum_generalization.py"), str(task_dir))
    row = next(line for line in table.splitlines() if line.startswith("| 200 |"))
    errors = [float(x) for x in row.strip("| ").split(" | ")[3:]]
    assert len(errors) == 4 and all(0 <= e <= 4 for e in errors), row     # torques are within ±2


def test_the_pendulum_probe_names_a_directory_without_cells(tmp_path):
    done = subprocess.run([sys.executable, str(BENCHMARKS / "pendulum_generalization.py"), str(tmp_path)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and str(tmp_path) in done.stderr and "no trained cells" in done.stderr


@pytest.mark.slow               # 48 s of 23 learners: a probe of the past, not a path users take
def test_the_architecture_probe_prints_every_learner():
    out = _run(str(BENCHMARKS / "pendulum_architecture.py"), "--seeds", "1", "--episodes", "2", "--batches", "20")
    rows = [line for line in out.splitlines() if line.startswith("| ") and "%" in line]
    assert len(rows) == 23, out
    for row in rows:
        cells = row.strip("| ").split(" | ")
        assert all(0 <= float(c) <= 4 for c in cells[2:4]), row          # torques are within ±2


def test_local_mixup_mixes_state_and_torque_alike_between_neighbours(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    import torch
    from pendulum_architecture import batch, neighbours

    x, law = torch.randn(50, 3), torch.tensor([1.0, -2.0, 0.5])
    y = x @ law                                                # a linear law: mixing must keep it exactly
    near = neighbours(x, 4)
    assert (near != torch.arange(50)[:, None]).all()           # a state is not its own neighbour
    xb, yb = batch(x, y, torch.Generator().manual_seed(0), near)
    assert torch.allclose(xb @ law, yb, atol=1e-5)
    assert not any(torch.isclose(xb, r, atol=1e-6).all(-1).any() for r in x)   # new states, not copies
    out = _run(str(BENCHMARKS / "pendulum_architecture.py"), "--seeds", "1", "--episodes", "2", "--batches", "20",
               "--mixup", "4", "--only", "tanh")
    assert len([line for line in out.splitlines() if line.startswith("| MLP 2 x 64 tanh")]) == 1, out


def test_the_shard_write_benchmark_prints_both_ways():
    out = _run(str(BENCHMARKS / "shard_writes.py"), "--quick")
    assert re.search(r"\| a new store object \(every shard read\) \| [\d.]+ \| 1\.00 \|", out), out
    assert re.search(r"\| the store that wrote the shards \(the sweep\) \| [\d.]+ \| [\d.]+x faster \|", out), out


def test_the_training_step_benchmark_times_factored_symbols_against_free_rows_and_the_bare_loop():
    out = _run(str(BENCHMARKS / "train_throughput.py"), "--quick", "--task", "babyai")
    for side in ("bclm train_step, free symbol rows", "bclm train_step", "bare PyTorch"):
        assert re.search(rf"\| {side} \| [\d,]+ \| [\d,]+ \| [\d,]+ \| [\d.]+x \|", out), out
    assert re.search(r"factored / free symbol rows = [\d.]+", out), out


def test_babyai_agreement_splits_by_target_view_and_bot_action():
    sys.path.insert(0, str(BENCHMARKS))
    import gymnasium as gym
    from babyai_agreement import agreement

    class AlwaysForward:                       # blind to the mission
        tokenizer = types.SimpleNamespace(observation_space=gym.spaces.Dict({}))

        def act(self, batch, new_episode):
            return np.full(len(new_episode), 2)

    class ByMission(AlwaysForward):            # acts on the mission's text only
        def act(self, batch, new_episode):
            return np.array([sum(map(ord, m)) % 1000 for m in batch["mission"]])

    class FindsTheTarget(AlwaysForward):       # a -Heading policy: the first view cell showing the target
        def act(self, batch, new_episode):
            from bclm.envs.babyai import named_cells

            shows = (batch["image"][0] == named_cells(batch["mission"][0], 1)).all(axis=1)
            return np.array([shows.argmax() if shows.any() else 49]), np.full(1, 2)

    blind, reader, finder = agreement([AlwaysForward(), ByMission(), FindsTheTarget()], "BabyAI-GoToLocal-v0",
                                      episodes=6)
    assert "heading" not in blind and finder["heading"][1] > 0 and finder["heading"][0] >= 0.8 * finder["heading"][1]
    assert finder["all"] == blind["all"] and finder["mission swapped"][0] == 0
    assert blind["all"][1] > 0 and blind["in view"][1] + blind["out of view"][1] == blind["all"][1]
    for key, (agree, steps) in blind.items():
        if "bot:" in key:
            assert agree == (steps if key.endswith("forward") else 0), (key, agree, steps)
    swapped = blind["mission swapped"][1]
    assert 0 < swapped <= blind["in view"][1] and reader["mission swapped"][1] == swapped
    assert blind["mission swapped"][0] == 0 and reader["mission swapped"][0] == swapped


def test_the_sweep_collection_benchmark_prints_both_ways():
    out = _run(str(BENCHMARKS / "sweep_collection.py"), "--quick")
    assert re.search(r"\| one per shard \(before 2026-12-06\) \| \d+\.\d \| 1\.00 \|", out), out
    assert re.search(r"\| in blocks of up to 64 per shard \(`bclm sweep`\) \| \d+\.\d \| \d+\.\d\dx \|", out), out
