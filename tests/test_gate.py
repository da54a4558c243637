"""Budgeted DAgger: the gate meets its label budget, asks where the learner is least sure, takes over with
hysteresis, and a gated round records asked and unasked steps."""

from __future__ import annotations

import numpy as np
import pytest

from bclm.data.store import TrajectoryStore
from bclm.errors import BCLMError
from bclm.rollout.gate import Gate
from bclm.trainer.dagger import DaggerConfig, run_dagger
from tests.test_dagger import _recipe


def _drive(gate: Gate, signal: np.ndarray) -> np.ndarray:
    """Feed (T, B) uncertainties step by step (no episode ends); the (T, B) decisions."""
    return np.stack([gate.decide(u, np.zeros(len(u), bool)) for u in signal])


def _switches(asked: np.ndarray) -> int:
    return int((asked[1:] != asked[:-1]).sum())


@pytest.mark.parametrize("budget", [0.1, 0.3, 0.6])
def test_query_gate_meets_its_budget_and_asks_the_least_sure_states(budget):
    rng = np.random.default_rng(0)
    signal = rng.lognormal(size=(500, 4))           # the scale is unknown to the gate
    asked = _drive(Gate("query", budget), signal)
    assert abs(asked.mean() - budget) <= 0.1 * budget
    assert signal[asked].mean() > 2 * signal[~asked].mean()


def test_takeover_gate_keeps_control_with_hysteresis_and_meets_its_budget():
    rng = np.random.default_rng(1)
    # A slowly drifting uncertainty with step-to-step noise: without hysteresis control flaps on the noise.
    drift = np.convolve(rng.normal(size=2100), np.ones(100) / 10, mode="valid")[:2000, None]
    signal = drift + rng.normal(scale=0.3, size=(2000, 1))
    flappy = _drive(Gate("takeover", 0.3, release=1.0), signal)
    steady = _drive(Gate("takeover", 0.3, release=0.5), signal)
    for asked in (flappy, steady):
        assert abs(asked.mean() - 0.3) <= 0.03
    assert _switches(steady) < 0.5 * _switches(flappy)


def test_a_new_episode_hands_control_back():
    gate = Gate("takeover", 0.5)
    gate.decide(np.array([0.0, 1.0]), np.zeros(2, bool))
    assert gate.in_control.tolist() == [False, True]
    gate.decide(np.array([1.0, 0.0]), np.array([False, True]))
    assert gate.in_control[1] == False  # noqa: E712 -- a fresh episode starts with the learner


@pytest.mark.parametrize(("field", "value", "named"), [
    ("gate", "sometimes", "dagger.gate"), ("gate_budget", 0.0, "dagger.gate_budget"),
    ("gate_metric", "variance", "dagger.gate_metric"), ("gate_release", 2.0, "dagger.gate_release")])
def test_bad_gate_settings_are_named(field, value, named):
    with pytest.raises(BCLMError, match=named):
        DaggerConfig(**{"gate": "query", field: value})


def test_gate_and_intervener_together_are_refused():
    with pytest.raises(BCLMError, match="set one"):
        DaggerConfig(gate="query", intervener="expert-gated")


@pytest.mark.parametrize("mode", ["query", "takeover"])
def test_a_gated_round_labels_its_budget_and_keeps_unasked_steps_as_history(tmp_path, mode):
    out = tmp_path / "run"
    report = run_dagger(_recipe(out, 1, "--dagger.gate", mode, "--dagger.gate_budget", "0.3",
                                "--dagger.episodes_per_round", "4", "--dagger.num_envs", "2"))
    row = report["rounds"][1]
    steps = TrajectoryStore(out / "data").arrays(["round-001"])
    labeled, used = steps.columns["labeled"], steps.columns["expert_used"]
    assert len(steps) == 4 * 50                                      # every step is kept, asked or not
    assert abs(labeled.mean() - 0.3) <= 0.03, labeled.mean()
    assert row["queries"] == int(labeled.sum()) and row["query_fraction"] == pytest.approx(labeled.mean())
    assert row["expert_labels"] == report["rounds"][0]["expert_labels"] + row["queries"]
    assert set(steps.columns["source"]) == {f"gated-dagger {mode} entropy budget 0.3"}
    assert row["beta"] is None and np.isnan(steps.columns["beta"]).all()
    if mode == "query":                     # the learner acted everywhere; the expert only labeled
        assert not used.any()
    else:                                   # where the expert was asked, it drove
        assert (used == labeled).all()
        np.testing.assert_array_equal(steps.action[labeled], steps.expert_action[labeled])
