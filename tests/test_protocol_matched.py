"""bs_ref.protocol.matched: methods compared at matched forgetting, on synthetic curves (hypothesis).

- the level: 0.9 × the lower median of the methods' best forgetting (or the minimum), NaN when nothing forgets;
- each curve read off by linear interpolation between the evaluations around the crossing; None when never
  reached, never an invented value;
- a curve without belief bands (no band candidates, or an empty band) gives NaN band changes: empty cells
  in matched.csv, "n/a" in the table, no KeyError anywhere.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bs_ref.protocol import matched
from bs_ref.protocol.matched import BANDS


def _curve(drops, utilities, leaks=None):
    leaks = leaks or [0.0] * len(drops)
    return [
        {"step": 5 * i, "target_logprob": -d, "model_utility": u, "fact_leak": f}
        for i, (d, u, f) in enumerate(zip(drops, utilities, leaks))
    ]


def test_matched_forgetting_reads_each_curve_at_the_common_level():
    curves = {
        "fast": _curve([0.0, 2.0, 4.0, 6.0], [0.9, 0.8, 0.7, 0.6]),
        "slow": _curve([0.0, 1.0, 2.0, 3.0], [0.9, 0.88, 0.86, 0.84]),
    }
    level, at = matched.matched_forgetting(curves, "target_drop", ["model_utility"])
    assert level == pytest.approx(0.9 * 3.0)  # 0.9 × the most forgetting both methods reach
    assert at["slow"]["model_utility"] == pytest.approx(0.846) and at["slow"]["step"] == pytest.approx(13.5)
    assert at["fast"]["model_utility"] == pytest.approx(0.765) and at["fast"]["step"] == pytest.approx(6.75)
    assert matched.common_level(curves, "target_drop", margin=1.0) == pytest.approx(3.0)


def test_matched_forgetting_on_fact_leak_and_nothing_forgotten():
    curves = {
        "a": _curve([0, 1, 2], [0.9, 0.8, 0.7], leaks=[1.0, 0.5, 0.25]),
        "b": _curve([0, 1, 2], [0.9, 0.85, 0.8], leaks=[1.0, 0.75, 0.5]),
    }
    level, at = matched.matched_forgetting(curves, "fact_unleaked", ["model_utility"])
    assert level == pytest.approx(0.45)  # both reach a leak rate of 0.5; matched at 0.9 × that forgetting
    assert at["a"]["model_utility"] == pytest.approx(0.81) and at["b"]["model_utility"] == pytest.approx(0.81)
    flat = {"a": _curve([0, 0, 0], [0.9, 0.9, 0.9]), "b": _curve([0, -1, -2], [0.9] * 3)}
    level, at = matched.matched_forgetting(flat, "target_drop", ["model_utility"])
    assert math.isnan(level) and at == {"a": None, "b": None}


def test_one_weak_method_does_not_set_the_matched_level():
    curves = {
        "weak": _curve([0.0, 0.02, 0.04], [0.9, 0.9, 0.9]),
        "a": _curve([0.0, 1.0, 2.0], [0.9, 0.8, 0.7]),
        "b": _curve([0.0, 2.0, 3.0], [0.9, 0.85, 0.8]),
        "c": _curve([0.0, 3.0, 5.0], [0.9, 0.6, 0.5]),
    }
    level, at = matched.matched_forgetting(curves, "target_drop", ["model_utility"])
    assert level == pytest.approx(0.9 * 2.0)  # lower median of the maxima 0.04, 2, 3, 5: half the methods reach it
    assert at["weak"] is None  # not reached: no value is made up for it
    assert at["a"]["model_utility"] == pytest.approx(0.72) and at["b"]["model_utility"] == pytest.approx(0.855)
    level_min, at_min = matched.matched_forgetting(curves, "target_drop", ["model_utility"], policy="min")
    assert level_min == pytest.approx(0.036) and all(v is not None for v in at_min.values())
    with pytest.raises(ValueError, match="policy"):
        matched.common_level(curves, "target_drop", policy="max")


def _results(with_bands: bool):
    results = [
        {"method": m, "seed": s, "curve": _curve(d, [0.9, 0.8, 0.7], leaks=[1.0, 0.6, 0.4])}
        for s in (0, 1)
        for m, d in (("weak", [0.0, 0.01, 0.03]), ("a", [0.0, 1.0, 2.0]), ("b", [0.0, 2.0, 4.0]))
    ]
    for r in results:
        for p in r["curve"]:
            p.update(mem=0.1, log10_forget_quality=-3.0)
            if with_bands:
                p.update({f"band_{b}_logprob": -1.0 for b in BANDS})
    return results


def test_matched_table_reports_methods_that_do_not_reach_the_level():
    results = _results(with_bands=True)
    rows, levels = matched.matched_rows(results, [0, 1])
    assert levels["target_drop"] == pytest.approx(1.8)
    weak = [r for r in rows if r["measure"] == "target_drop" and r["method"] == "weak"]
    assert len(weak) == 2 and not any(r["reached"] for r in weak) and weak[0]["max_forgetting"] == pytest.approx(0.03)
    table = matched.format_matched([r for r in rows if r["measure"] == "target_drop"], "target_drop")
    assert "| weak | not reached (best: 0.030 nats) |" in table
    assert "| a | 2/2 runs | 9.000 ± 0.000 | 0.720 [–, –] |" in table  # no per-item values: no interval
    bounded = matched.format_matched(
        [r for r in rows if r["measure"] == "target_drop"], "target_drop", {"a": {"model_utility": (0.7, 0.75)}}
    )
    assert "| a | 2/2 runs | 9.000 ± 0.000 | 0.720 [0.700, 0.750] |" in bounded
    assert matched.matched_rows(results, [0, 1], matched.given_levels(1.0, 0.5))[1] == {
        "target_drop": 1.0,
        "fact_unleaked": 0.5,
    }


@pytest.mark.parametrize("missing", ["absent", "none", "one band empty"])
def test_a_curve_without_belief_bands_is_reported_as_na(missing):
    results = _results(with_bands=missing != "absent")
    for r in results:
        for p in r["curve"]:
            if missing == "none":
                p.update({f"band_{b}_logprob": None for b in BANDS})
            elif missing == "one band empty":
                p["band_low_logprob"] = None
    rows, _ = matched.matched_rows(results, [0, 1])
    reached = [r for r in rows if r["reached"]]
    assert reached
    for row in reached:
        assert math.isnan(row["low_band_change"])
        assert math.isnan(row["high_band_change"]) == (missing != "one band empty")
    table = matched.format_matched([r for r in rows if r["measure"] == "target_drop"], "target_drop")
    line = next(x for x in table.splitlines() if x.startswith("| a |"))
    assert line.endswith("| n/a |") and line.endswith("[–, –] | n/a | n/a | n/a |") == (missing != "one band empty")


@given(
    st.lists(st.floats(0, 5), min_size=2, max_size=11),
    st.lists(st.floats(0, 1), min_size=12, max_size=12),
    st.floats(0.01, 1.0),
)
def test_interpolation_lies_between_the_crossing_evaluations(increments, utilities, fraction):
    drops = np.concatenate([[0.0], np.cumsum(increments)])
    curve = _curve(list(drops), utilities[: len(drops)])
    if drops[-1] <= 0:
        return
    level = fraction * drops[-1]
    point = matched.interpolate_at_level(curve, "target_drop", level, ["model_utility", "band_high_logprob"])
    i = int(np.argmax(drops >= level))
    lo, hi = curve[max(i - 1, 0)], curve[i]
    assert lo["step"] <= point["step"] <= hi["step"]
    low_u, high_u = sorted((lo["model_utility"], hi["model_utility"]))
    assert low_u - 1e-9 <= point["model_utility"] <= high_u + 1e-9
    assert math.isnan(point["band_high_logprob"])  # a key the points lack: NaN, not a KeyError
    assert matched.interpolate_at_level(curve, "target_drop", drops[-1] + 1.0, ["model_utility"]) is None


def test_given_levels_are_checked():
    assert matched.level_problems(None, None) == [] and matched.level_problems(0.5, 0.2) == []
    assert matched.level_problems(-1.0, 1.0) == [
        "--match-target-drop must be a positive number of nats, got -1.0",
        "--match-fact-leak must be a fact-leak rate in [0, 1), got 1.0",
    ]
