"""Interrupts keep the work: Ctrl-C in collect keeps its finished chunks, SIGTERM in training writes a
checkpoint, and the same command then continues to the result an uninterrupted run gives."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from bclm import dirlock
from bclm.data.store import TrajectoryStore
from bclm.trainer.rundir import latest_checkpoint, run_finished

ROOT = Path(__file__).resolve().parents[1]
ENV = "tests.custom_env:CustomTarget-v0"
EXPERT = "tests.custom_env:expert"


def _start(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.Popen([sys.executable, "-m", "bclm", *args], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _interrupt_when(proc: subprocess.Popen, ready, sig: int, timeout: float = 300) -> tuple[int, str]:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the command never reached the point to interrupt"
        time.sleep(0.05)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=timeout)
    return proc.returncode, err


def _one_line(err: str) -> str:
    # Progress bars redraw with carriage returns; what is left must be one line.
    lines = [line for line in re.split(r"[\r\n]", err) if line.strip() and "%|" not in line]
    assert len(lines) == 1, err
    return lines[0]


def test_ctrl_c_in_collect_keeps_the_chunks_and_the_same_command_completes_them(tmp_path):
    args = ("collect", "--env", ENV, "--expert", EXPERT, "--episodes", "250", "--num-envs", "2", "--output")
    proc = _start(*args, "data", cwd=tmp_path)
    code, err = _interrupt_when(proc, lambda: (tmp_path / "data" / "round-000-0001").is_dir(), signal.SIGINT)
    assert code == 130 and "interrupted" in _one_line(err)
    kept = TrajectoryStore(tmp_path / "data").shard_names()
    assert "round-000" in kept and len(kept) < 3
    done = _start(*args, "data", cwd=tmp_path)
    assert done.wait(300) == 0, done.communicate()
    whole = _start(*args, "whole", cwd=tmp_path)
    assert whole.wait(300) == 0, whole.communicate()
    resumed, uninterrupted = TrajectoryStore(tmp_path / "data").arrays(), TrajectoryStore(tmp_path / "whole").arrays()
    assert len(set(resumed.columns["episode"])) == 250
    assert np.array_equal(np.asarray(resumed.observation), np.asarray(uninterrupted.observation))
    assert np.array_equal(np.asarray(resumed.action), np.asarray(uninterrupted.action))
    for name in ("episode", "step", "reward"):
        assert np.array_equal(resumed.columns[name], uninterrupted.columns[name]), name


@pytest.mark.slow
def test_sigterm_in_training_writes_a_checkpoint_and_the_same_command_finishes(tmp_path):
    from bclm.collect import collect
    from bclm.envs import get_task

    collect(get_task(ENV), EXPERT, 12, tmp_path / "data", seed=0)
    args = ("train", "--dataset", "data", "--output-dir", "out", "--model.size", "tiny", "--train.max_steps", "300",
            "--train.epochs", "0", "--train.batch_size", "8", "--loop.log_every", "5", "--loop.progress", "false",
            "--eval.episodes", "2")
    proc = _start(*args, cwd=tmp_path)
    code, err = _interrupt_when(proc, lambda: (tmp_path / "out" / "metrics.jsonl").is_file(), signal.SIGTERM)
    assert code == 130 and "interrupted" in _one_line(err)
    assert latest_checkpoint(tmp_path / "out") is not None and not run_finished(tmp_path / "out")
    again = _start(*args, cwd=tmp_path)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0 and "resumed from" in out, err
    assert run_finished(tmp_path / "out")


def test_sigterm_to_a_parallel_sweep_checkpoints_its_running_cells_and_starts_no_more(tmp_path):
    # `kill PID` signals the sweep's own process only; its two workers train, a third cell waits.
    proc = _start("sweep", "--env", ENV, "--dagger.expert", EXPERT, "--methods", "bc", "--budgets", "50,100,150",
                  "--seeds", "1", "--sweep.jobs", "2", "--output-dir", "out", "--model.size", "tiny",
                  "--train.epochs", "0", "--train.max_steps", "100000", "--train.batch_size", "8",
                  "--loop.log_every", "5", "--loop.progress", "false", "--eval.episodes", "2", cwd=tmp_path)
    cells = [tmp_path / "out" / "bc" / f"labels-{budget}" / "seed-0" for budget in (50, 100, 150)]
    code, err = _interrupt_when(proc, lambda: all((c / "metrics.jsonl").is_file() for c in cells[:2]),
                                signal.SIGTERM, timeout=120)
    assert code == 130 and "interrupted" in _one_line(err)
    assert all(latest_checkpoint(c) is not None and not run_finished(c) for c in cells[:2])
    assert not cells[2].exists()
    logged = [(c / "metrics.jsonl").stat().st_size for c in cells[:2]]
    time.sleep(2)
    assert [(c / "metrics.jsonl").stat().st_size for c in cells[:2]] == logged, "a cell trains on after the sweep"


DAGGER = ("dagger", "--output-dir", "run", "--dagger.env", ENV, "--dagger.expert", EXPERT, "--dagger.rounds", "1",
          "--dagger.initial_episodes", "4", "--dagger.episodes_per_round", "3", "--dagger.num_envs", "3",
          "--model.size", "tiny", "--data.context_length", "14", "--train.epochs", "0", "--train.max_steps", "15",
          "--train.lr", "3e-3", "--train.warmup_steps", "3", "--train.batch_size", "16", "--loop.save_every", "5",
          "--loop.log_every", "5", "--loop.progress", "false", "--eval.episodes", "2", "--eval.num_envs", "2")


def _dagger(cwd: Path, failpoint: str = "") -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if failpoint:
        env["BCLM_FAILPOINT"] = failpoint
    return subprocess.Popen([sys.executable, "-m", "bclm", *DAGGER], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _outcome(run: Path) -> dict:
    """What must not depend on where the run was killed: its report, every logged loss, its data."""
    import json

    rounds = json.loads((run / "dagger_report.json").read_text())["rounds"]
    keys = ("round", "success_rate", "mean_return", "expert_labels", "mistake_rate")
    losses = {r: [(m["step"], m["loss"]) for m in map(json.loads, (run / r / "metrics.jsonl").read_text().splitlines())
                  if "loss" in m] for r in ("round-000", "round-001")}
    steps = TrajectoryStore(run / "data").arrays()
    return {"report": [{k: row[k] for k in keys} for row in rounds], "losses": losses,
            "data": (np.asarray(steps.observation).tobytes(), np.asarray(steps.action).tobytes())}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory) -> dict:
    work = tmp_path_factory.mktemp("uninterrupted")
    proc = _dagger(work)
    assert proc.wait(600) == 0, proc.communicate()
    return _outcome(work / "run")


# Each phase of `train` and `dagger`, in the order a run reaches them (round 0 trains 15 steps with
# checkpoints at 5 and 10; round 1's steps are `step` 16-30, its shard the second `shard`).
PHASES = ["shard:1", "prepared:1", "step:3", "checkpoint:1", "checkpointed:1", "step:12", "weights:1", "exported:1",
          "evaluated:1", "carded:1", "round-reported:1", "shard:2", "step:20", "weights:2"]


@pytest.mark.slow
@pytest.mark.parametrize("phase", PHASES)
def test_a_kill_9_in_any_phase_resumes_to_the_uninterrupted_result(tmp_path, uninterrupted, phase):
    killed = _dagger(tmp_path, phase)
    killed.communicate(timeout=600)
    assert killed.returncode == -signal.SIGKILL, f"the run never reached {phase}"
    again = _dagger(tmp_path)
    _, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert _outcome(tmp_path / "run") == uninterrupted


@pytest.fixture
def small_disk(tmp_path):
    """A real file system of 300 KiB (tmpfs) and a way to resize it or make it read-only; skipped where this
    process may not mount (CI containers run as root and may)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=300k", "tmpfs", str(disk)], capture_output=True,
                          text=True)
    if made.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {made.stderr.strip()}")

    def remount(options: str) -> None:
        subprocess.run(["mount", "-o", f"remount,{options}", str(disk)], check=True)
    yield disk, remount
    subprocess.run(["umount", "-l", str(disk)], check=False)


def _run(capsys, *args: str) -> tuple[int, str]:
    """The CLI in this process (a subprocess would spend most of the test importing torch)."""
    from bclm.cli import main

    code = main(list(args))
    return code, capsys.readouterr().err


def test_a_full_disk_is_named_and_the_same_commands_finish_once_there_is_room(tmp_path, small_disk, capsys,
                                                                                monkeypatch):
    from bclm.collect import collect
    from bclm.envs import get_task

    disk, remount = small_disk
    monkeypatch.chdir(tmp_path)
    collect(get_task(ENV), EXPERT, 4, tmp_path / "data", seed=0)
    gather = ("collect", "--env", ENV, "--expert", EXPERT, "--episodes", "60", "--output", "disk/data")
    train = ("train", "--dataset", "data", "--output-dir", "disk/out", "--model.size", "tiny", "--train.max_steps",
             "20", "--train.epochs", "0", "--train.warmup_steps", "0", "--loop.save_every", "10",
             "--loop.progress", "false", "--eval.episodes", "2")
    for args, written in ((gather, "disk/data/round-000"), (train, "disk/out/checkpoints/step-10")):
        code, err = _run(capsys, *args)
        last = [line for line in re.split(r"[\r\n]", err) if line.strip() and "%|" not in line][-1]
        assert code == 2 and "Traceback" not in err, err
        assert last == f"bclm {args[0]}: error: cannot write {written}: the disk is full", err
    remount("size=64m")
    for args in (gather, train):
        assert _run(capsys, *args)[0] == 0
    assert len(TrajectoryStore(disk / "data").arrays().observation) == 60 * 50 and run_finished(disk / "out")


def test_a_read_only_disk_is_named_before_any_work(tmp_path, small_disk, capsys, monkeypatch):
    from bclm.collect import collect
    from bclm.envs import get_task

    _, remount = small_disk
    monkeypatch.chdir(tmp_path)
    collect(get_task(ENV), EXPERT, 2, tmp_path / "data", seed=0)
    remount("ro")
    for args in (("collect", "--env", ENV, "--expert", EXPERT, "--episodes", "2", "--output", "disk/data"),
                 ("train", "--dataset", "data", "--output-dir", "disk/out", "--model.size", "tiny")):
        code, err = _run(capsys, *args)
        assert code == 2 and "the file system is read-only" in _one_line(err), err


def _holding(directory: Path) -> subprocess.Popen:
    """Another process that holds `directory` until killed (it prints once it does)."""
    code = f"import sys, time; from bclm import dirlock\nwith dirlock.exclusive({str(directory)!r}):\n" \
           "    print('held', flush=True); time.sleep(600)"
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


# Every command that writes a directory, told to write `out` (beside a 3-episode dataset `data`).
WRITERS = {"collect": ("--env", ENV, "--expert", EXPERT, "--episodes", "2", "--output", "out"),
           "train": ("--dataset", "data", "--output-dir", "out"),
           "dagger": ("--env", ENV, "--expert", EXPERT, "--output-dir", "out"),
           "sweep": ("--env", ENV, "--dagger.expert", EXPERT, "--output-dir", "out"),
           "export-lerobot": ("--dataset", "data", "--output", "out")}


@pytest.fixture
def small_data(tmp_path, monkeypatch) -> Path:
    from bclm.collect import collect
    from bclm.envs import get_task

    monkeypatch.chdir(tmp_path)
    collect(get_task(ENV), EXPERT, 3, tmp_path / "data", seed=0)
    return tmp_path


@pytest.mark.parametrize("command", list(WRITERS))
def test_an_output_that_is_a_file_is_one_line_and_the_file_is_kept(small_data, capsys, command):
    (small_data / "out").write_text("mine")
    code, err = _run(capsys, command, *WRITERS[command])
    assert code == 2 and "out is a file, not a directory" in _one_line(err)
    assert (small_data / "out").read_text() == "mine"


@pytest.mark.parametrize("command", list(WRITERS))
def test_a_second_writer_is_one_line_naming_the_holder_and_a_kill_9_frees_the_directory(small_data, capsys,
                                                                                        command):
    out = small_data / "out"
    holder = _holding(out)
    try:
        code, err = _run(capsys, command, *WRITERS[command])
        assert code == 2 and f"out is being written by another bclm process (PID {holder.pid}" in _one_line(err)
    finally:
        holder.kill()
        holder.wait()
    assert not out.exists() or not any(out.iterdir())          # the refused command wrote nothing
    with dirlock.exclusive(out):                               # the killed holder's lock is gone
        pass


def _flip_byte(shard: Path, where: float) -> None:
    arrow = next(shard.glob("*.arrow"))
    data = bytearray(arrow.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    arrow.write_bytes(bytes(data))


@pytest.mark.parametrize("where", [0.3, 0.6, 0.95])
def test_a_flipped_byte_in_a_shard_is_named_before_training(small_data, capsys, where):
    _flip_byte(small_data / "data" / "round-000", where)
    code, err = _run(capsys, "train", "--dataset", "data", "--output-dir", "out", "--model.size", "tiny")
    assert code == 2 and "shard data/round-000 is damaged: data-00000-of-00001.arrow is changed" in _one_line(err)
    assert not (small_data / "out").exists()


def test_dagger_names_a_damaged_label_shard_before_rewriting_anything(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ["dagger", *DAGGER[1:]]
    assert _run(capsys, *[a if a != "1" else "0" for a in args])[0] == 0       # round 0 only
    report = (tmp_path / "run" / "dagger_report.json").read_bytes()
    _flip_byte(tmp_path / "run" / "data" / "round-000", 0.5)
    code, err = _run(capsys, *args)
    assert code == 2 and "round-000 is damaged" in _one_line(err)
    assert (tmp_path / "run" / "dagger_report.json").read_bytes() == report
    assert not (tmp_path / "run" / "round-001").exists()


def test_a_warmup_longer_than_the_sized_run_is_one_warning_line(small_data, capsys):
    code, err = _run(capsys, "train", "--dataset", "data", "--output-dir", "out", "--model.size", "tiny",
                     "--train.warmup_steps", "1000", "--train.max_steps", "5", "--loop.progress", "false",
                     "--eval.episodes", "1")
    warned = [line for line in err.splitlines() if "warning" in line]
    assert code == 0 and warned == ["warning: train.warmup_steps 1000 is more than a tenth of this run's 5 steps "
                                    "(sized to the data); warming up over 0"], err


TRAIN_PHASES = ["step:7", "checkpoint:1", "checkpointed:1", "step:18", "weights:1", "exported:1"]


@pytest.mark.parametrize("phase", TRAIN_PHASES[:1] + [pytest.param(p, marks=pytest.mark.slow)
                                                     for p in TRAIN_PHASES[1:]])
def test_with_determinism_a_kill_9_and_resume_gives_bitwise_the_uninterrupted_weights(small_data, phase):
    args = ("train", "--dataset", "data", "--output-dir", "OUT", "--model.size", "tiny", "--train.max_steps", "20",
            "--train.epochs", "0", "--train.warmup_steps", "2", "--loop.save_every", "5", "--loop.deterministic",
            "true", "--loop.progress", "false", "--eval.episodes", "1")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def train(out: str, failpoint: str = "") -> int:
        return subprocess.run([sys.executable, "-m", "bclm", *[out if a == "OUT" else a for a in args]],
                              cwd=small_data, env={**env, "BCLM_FAILPOINT": failpoint}, capture_output=True).returncode
    assert train("whole") == 0
    assert train("killed", phase) == -signal.SIGKILL
    assert train("killed") == 0
    whole, resumed = (small_data / d / "model.safetensors" for d in ("whole", "killed"))
    assert whole.read_bytes() == resumed.read_bytes()


def test_a_shard_without_hashes_damaged_in_its_middle_is_one_line(small_data, capsys):
    from bclm.data.store import SHARD_HASHES

    (small_data / "data" / "round-000" / SHARD_HASHES).unlink()        # as shards of earlier bclm versions
    arrow = next((small_data / "data" / "round-000").glob("*.arrow"))
    data = bytearray(arrow.read_bytes())
    for where in (0.3, 0.5, 0.7):
        data[int(len(data) * where)] ^= 0xFF
    arrow.write_bytes(bytes(data))
    code, err = _run(capsys, "train", "--dataset", "data", "--output-dir", "out", "--model.size", "tiny")
    assert code == 2 and "shard data/round-000 is damaged (Arrow cannot read its rows" in _one_line(err)


def test_two_trainings_into_one_directory_the_second_exits_at_once_and_the_first_resumes_after_kill_9(small_data):
    args = ("train", "--dataset", "data", "--output-dir", "out", "--model.size", "tiny", "--train.max_steps",
            "300", "--train.epochs", "0", "--train.batch_size", "8", "--loop.save_every", "5",
            "--loop.progress", "false", "--eval.episodes", "1")
    first = _start(*args, cwd=small_data)
    try:
        deadline = time.monotonic() + 120
        while latest_checkpoint(small_data / "out") is None:
            assert first.poll() is None and time.monotonic() < deadline, first.communicate()
            time.sleep(0.1)
        first.send_signal(signal.SIGSTOP)            # still the holder, paused: it cannot finish meanwhile
        second = _start(*args, cwd=small_data)
        _, err = second.communicate(timeout=120)
        assert second.returncode == 2 and f"(PID {first.pid} on" in _one_line(err)
    finally:
        first.kill()
        first.wait()
    again = _start(*args, cwd=small_data)
    out, err = again.communicate(timeout=300)
    assert again.returncode == 0 and "resumed from" in out, err
