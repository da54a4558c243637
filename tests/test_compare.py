"""Statistics that separate methods over the same seeds (bclm.eval.compare) and the sweep's paired report."""

from __future__ import annotations

import numpy as np
import pytest

from bclm.eval.compare import bootstrap_ci, horizon_exponent, iqm, mean_ci, paired, probability_of_improvement
from bclm.eval.curves import markdown_table
from bclm.sweep import SweepConfig, comparisons, summarize


def test_a_difference_on_every_seed_is_found_where_the_bands_overlap():
    bc = {0: 0.40, 1: 0.90, 2: 0.60, 3: 0.75, 4: 0.50}
    dagger = {s: v + 0.10 for s, v in bc.items()}
    a, b = mean_ci(list(dagger.values())), mean_ci(list(bc.values()))
    assert a["mean"] - a["ci95"] < b["mean"] + b["ci95"]                  # unpaired: the bands overlap
    d = paired(dagger, bc)
    assert d["differences"] == pytest.approx([0.1] * 5) and d["mean"] == pytest.approx(0.1)
    assert d["bootstrap95"] == pytest.approx([0.1, 0.1])                  # the same gain on every seed
    assert d["iqm"][0] == pytest.approx(d["iqm"][1] + 0.1)


def test_pairs_are_made_by_seed_not_by_position():
    d = paired({0: 1.0, 1: 0.0, 2: 0.5}, {2: 0.5, 0: 0.8, 1: 0.1, 7: 0.9})   # seed 7 has no partner
    assert d["seeds"] == [0, 1, 2] and d["differences"] == pytest.approx([0.2, -0.1, 0.0])
    assert paired({0: 1.0}, {0: 0.0}) is None                              # one seed: no interval


def test_the_interval_of_a_noisy_difference_spans_zero_and_holds_its_mean():
    rng = np.random.default_rng(0)
    diff = rng.normal(0.0, 0.2, 8)
    lo, hi = bootstrap_ci(diff)
    assert lo < 0 < hi and lo <= diff.mean() <= hi
    t = mean_ci(diff)
    assert t["mean"] - t["ci95"] < 0 < t["mean"] + t["ci95"]
    assert mean_ci([3.0]) == {"mean": 3.0, "ci95": 0.0, "n": 1}
    assert mean_ci([0.0, 1.0])["ci95"] == pytest.approx(12.706 * np.std([0, 1], ddof=1) / np.sqrt(2), rel=1e-4)


def test_iqm_and_probability_of_improvement():
    assert iqm([0.0, 0.5, 0.5, 0.5, 100.0]) == pytest.approx(0.5)           # one outlying seed each way is cut
    assert probability_of_improvement([2, 3, 4], [0, 1, 1]) == 1.0
    assert probability_of_improvement([1, 1], [1, 1]) == 0.5
    assert probability_of_improvement([0, 2], [1, 1]) == 0.5


def test_the_horizon_exponent_tells_compounding_from_a_constant_rate():
    t = np.arange(1, 501)
    assert horizon_exponent(0.01 * t) == pytest.approx(1.0, abs=0.01)       # O(εT)
    assert horizon_exponent(0.001 * t ** 2) == pytest.approx(2.0, abs=0.01)  # O(εT²)
    assert horizon_exponent(np.zeros(500)) is None


def _cells(method: str, success: dict[int, float], budget: int) -> list[dict]:
    return [{"cell": {"method": method, "seed": s, "budget": budget},
             "points": [{"expert_labels": budget, "success_rate": v, "mean_return": v,
                         "mistakes_per_episode": 10 * (1 - v), "mistakes_vs_t": list(np.arange(1, 11) * (1 - v))}]}
            for s, v in success.items()]


def test_the_sweep_reports_each_method_against_bc_on_the_same_seeds():
    bc = {0: 0.2, 1: 0.8, 2: 0.5, 3: 0.4, 4: 0.6}
    dagger = {4: 0.7, 3: 0.5, 2: 0.6, 1: 0.9, 0: 0.3}                        # +0.1 each, listed in another order
    summary = summarize(_cells("bc", bc, 100) + _cells("dagger", dagger, 100),
                        SweepConfig(methods=["bc", "dagger"], budgets=[100], seeds=5))
    (c,) = comparisons(summary)
    assert (c["method"], c["baseline"], c["budget"]) == ("dagger", "bc", 100)
    assert c["success_rate"]["differences"] == pytest.approx([0.1] * 5)
    assert c["mistakes_per_episode"]["mean"] == pytest.approx(-1.0)
    assert c["success_rate"]["probability_of_improvement"] > 0.5
    assert summary["bc"][0]["horizon_exponent"] == pytest.approx(1.0, abs=0.01)
    table = markdown_table(summary, [c])
    assert "dagger − bc | 100 | +10 ± 0 points | [+10, +10]" in table
