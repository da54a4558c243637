"""Experiment trackers: a run logs to tensorboard and to trackio offline, and a resumed run continues the same
tracker run."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from test_cli import ENV, EXPERT, TINY, bclm, bclm_process

from bclm import config as cfg
from bclm.errors import BCLMError
from bclm.trainer.config import TrainRecipe
from bclm.trainer.trackers import run_name


def _trackio(project: str, run: str) -> dict:
    """What trackio stored, read in a process of its own (trackio reads TRACKIO_DIR when imported)."""
    code = ("import json, sys; from trackio.sqlite_storage import SQLiteStorage as S; "
            "p, r = sys.argv[1:]; logs = S.get_logs(p, r); "
            "print(json.dumps({'runs': S.get_runs(p), 'loss_steps': [x['step'] for x in logs if 'loss' in x]}))")
    out = subprocess.run([sys.executable, "-c", code, project, run], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


def test_a_run_logs_to_tensorboard_and_trackio_and_a_resumed_run_continues_it(tmp_path, monkeypatch):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    monkeypatch.setenv("TRACKIO_DIR", str(tmp_path / "trackio"))
    r = bclm("collect", "--env", ENV, "--expert", EXPERT, "--episodes", "10", "--output", "data", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    args = ["train", "--dataset", "data", "--output-dir", "policy", *TINY, "--train.max_steps", "20",
            "--loop.log_every", "5", "--loop.save_every", "10", "--loop.report_to", "[tensorboard, trackio]",
            "--loop.project", "bclm-test", "--eval.episodes", "2"]
    killed = bclm_process(*args, cwd=tmp_path, env={"BCLM_FAILPOINT": "step:13"})
    assert killed.returncode == -9                              # SIGKILL at step 13, after the step-10 checkpoint
    resumed = bclm_process(*args, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    run = run_name(tmp_path / "policy")
    stored = _trackio("bclm-test", run)
    assert stored["runs"] == [run]                              # one run, continued, not a second one
    assert {15, 20} <= set(stored["loss_steps"]) <= {5, 10, 15, 20}
    assert len(stored["loss_steps"]) == len(set(stored["loss_steps"]))
    events = EventAccumulator(str(tmp_path / "policy" / "tensorboard"))
    events.Reload()
    assert {5, 10, 15, 20} <= {e.step for e in events.Scalars("loss")}


@pytest.mark.parametrize(("value", "message"), [
    ("[mlflow]", "loop.report_to: 'mlflow' is not one of tensorboard, trackio, wandb"),
    ("[wandb]", "loop.report_to: wandb is not installed (pip install wandb)")])
def test_unknown_or_missing_trackers_are_refused_before_any_work(value, message):
    pytest.importorskip("tensorboard")
    if "wandb" in value:
        import importlib.util

        if importlib.util.find_spec("wandb") is not None:
            pytest.skip("wandb is installed here")
    with pytest.raises(BCLMError, match=message.replace("(", r"\(").replace(")", r"\)")):
        cfg.build_config(TrainRecipe, None, ["--dataset", "d", "--output-dir", "o", "--loop.report_to", value])
