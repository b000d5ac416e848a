"""Primary endpoints (bs_ref.protocol.endpoints, docs/theory.md §19): Holm, bootstrap p-values, simultaneous
intervals, TOST, the minimum detectable difference, the primary-contrast table, the stopping rule and censoring.

Hand-computed cases carry their arithmetic in comments; properties run under the hypothesis profiles of
tests/conftest.py."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from scipy.stats import norm

from bs_ref.protocol import endpoints as ep

P_VALUES = st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=1, max_size=8)


def normal_grid(center: float, scale: float = 1.0, n: int = 1999) -> np.ndarray:
    """Deterministic 'replicates': center + scale · Φ⁻¹((i + 0.5)/n), the quantiles of N(center, scale²)."""
    return center + scale * norm.ppf((np.arange(n) + 0.5) / n)


# --------------------------------------------------------------------------------------------- Holm
def test_holm_hand_computed():
    # p = (0.01, 0.04, 0.03, 0.005), m = 4. Sorted: 0.005, 0.01, 0.03, 0.04 with multipliers 4, 3, 2, 1:
    # 0.020, 0.030, 0.060, 0.040; running maximum: 0.020, 0.030, 0.060, 0.060. Back in the given order:
    # (0.01 -> 0.03, 0.04 -> 0.06, 0.03 -> 0.06, 0.005 -> 0.02).
    adjusted = ep.holm_adjust([0.01, 0.04, 0.03, 0.005])
    np.testing.assert_allclose(adjusted, [0.03, 0.06, 0.06, 0.02], rtol=1e-12)
    # At alpha = 0.05: step 1 0.005 <= 0.05/4 = 0.0125 rejects, step 2 0.01 <= 0.05/3 = 0.0167 rejects,
    # step 3 0.03 > 0.05/2 = 0.025 stops.
    assert ep.holm_reject([0.01, 0.04, 0.03, 0.005], 0.05).tolist() == [True, False, False, True]
    # p = (0.02, 0.5, 0.012): sorted 0.012·3 = 0.036, 0.02·2 = 0.04, 0.5·1 = 0.5 -> (0.04, 0.5, 0.036).
    np.testing.assert_allclose(ep.holm_adjust([0.02, 0.5, 0.012]), [0.04, 0.5, 0.036], rtol=1e-12)
    # Capping and monotonicity: (0.4, 0.6) -> 0.4·2 = 0.8, max(0.8, 0.6·1) = 0.8; (0.7, 0.9) -> min(1, 1.4) = 1.
    np.testing.assert_allclose(ep.holm_adjust([0.4, 0.6]), [0.8, 0.8])
    np.testing.assert_allclose(ep.holm_adjust([0.7, 0.9]), [1.0, 1.0])
    # One contrast: Holm is the raw p-value.
    np.testing.assert_allclose(ep.holm_adjust([0.037]), [0.037])


@given(P_VALUES)
def test_holm_is_bounded_and_monotone(p):
    p = np.array(p)
    adjusted = ep.holm_adjust(p)
    assert np.all(adjusted >= p - 1e-15) and np.all(adjusted <= 1.0)
    order = np.argsort(p, kind="stable")
    assert np.all(np.diff(adjusted[order]) >= 0)  # a smaller raw p never gets a larger adjusted p
    # tied raw p-values get the same adjusted value
    for value in np.unique(p):
        assert np.ptp(adjusted[p == value]) == 0


@given(P_VALUES.flatmap(lambda p: st.tuples(st.just(p), st.permutations(range(len(p))))))
def test_holm_does_not_depend_on_the_order_of_the_contrasts(case):
    p, permutation = np.array(case[0]), list(case[1])
    np.testing.assert_array_equal(ep.holm_adjust(p[permutation]), ep.holm_adjust(p)[permutation])


@given(P_VALUES, st.floats(0.001, 0.2))
def test_holm_adjusted_p_values_give_the_step_down_decisions(p, alpha):
    p = np.array(p)
    m = p.size
    expected = np.zeros(m, dtype=bool)
    for k, index in enumerate(np.argsort(p, kind="stable")):  # reject p_(k+1) while <= alpha / (m - k)
        if p[index] > alpha / (m - k):
            break
        expected[index] = True
    # the product (m - k)·p and the quotient alpha/(m - k) round differently at the boundary: compare off it
    if not np.any(np.isclose((m - np.arange(m)) * np.sort(p), alpha, rtol=1e-9, atol=0)):
        assert ep.holm_reject(p, alpha).tolist() == expected.tolist()


@pytest.mark.parametrize(
    ("p_values", "match"),
    [([], "p_values"), ([0.1, 1.2], "p_values"), ([0.1, math.nan], "p_values"), ([[0.1]], "p_values")],
)
def test_holm_rejects_bad_p_values(p_values, match):
    with pytest.raises(ValueError, match=match):
        ep.holm_adjust(p_values)


def test_holm_reject_names_a_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        ep.holm_reject([0.01], alpha=1.5)


# --------------------------------------------------------------------------------------------- bootstrap p, intervals
def test_bootstrap_p_value_hand_computed():
    # All 999 replicates positive: #{r <= 0} = 0, so p = 2·(1 + 0)/(999 + 1) = 0.002, the smallest possible.
    assert ep.bootstrap_p_value(np.full(999, 0.3)) == pytest.approx(0.002)
    # Symmetric around 0, 0 included: -10..10 (B = 21), #{<= 0} = #{>= 0} = 11 -> 2·12/22 > 1 -> capped at 1.
    assert ep.bootstrap_p_value(np.arange(-10, 11)) == 1.0
    # Symmetric without 0: ±1, ±2, ±3 (B = 6): 2·(1 + 3)/7 = 8/7 -> 1.
    assert ep.bootstrap_p_value([-3, -2, -1, 1, 2, 3]) == 1.0
    # (-1, 1, 2, 3, 4), B = 5: #{<= 0} = 1, #{>= 0} = 4 -> 2·(1 + 1)/6 = 2/3.
    assert ep.bootstrap_p_value([-1, 1, 2, 3, 4]) == pytest.approx(2 / 3)
    # All replicates exactly 0 count in both tails: p = 1.
    assert ep.bootstrap_p_value(np.zeros(50)) == 1.0
    # All negative mirrors all positive.
    assert ep.bootstrap_p_value(np.full(999, -0.3)) == pytest.approx(0.002)


def test_bootstrap_p_value_matches_the_normal_p_value_on_normal_replicates():
    # Replicates at the quantiles of N(2, 1): the share <= 0 is Φ(-2), so p ≈ 2·Φ(-2) = 0.0455.
    assert ep.bootstrap_p_value(normal_grid(2.0, n=9999)) == pytest.approx(2 * norm.cdf(-2.0), abs=5e-4)


def test_nan_replicates_are_discarded_up_to_ten_percent():
    r = np.full(100, 1.0)
    r[:5] = np.nan  # 5 % NaN: p from the 95 others, 2/(95 + 1)
    assert ep.bootstrap_p_value(r) == pytest.approx(2 / 96)
    r[:11] = np.nan  # 11 % NaN: no p-value
    assert math.isnan(ep.bootstrap_p_value(r))
    assert all(math.isnan(b) for b in ep.simultaneous_interval(r, 4))


def test_simultaneous_interval_hand_computed():
    # Replicates 0, 1, ..., 10000: the q-th percentile (linear interpolation) is 100·q. m = 4, alpha = 0.05: the
    # level is 1 - 0.05/4 = 0.9875, tails 0.625 % and 99.375 % -> (62.5, 9937.5).
    low, high = ep.simultaneous_interval(np.arange(10001), m=4, alpha=0.05)
    assert (low, high) == pytest.approx((62.5, 9937.5))
    # m = 1 is the ordinary 95 % interval: (250, 9750).
    assert ep.simultaneous_interval(np.arange(10001), m=1) == pytest.approx((250.0, 9750.0))


def test_percentile_interval_with_infinite_replicates_takes_the_outer_ranks():
    r = np.concatenate([[-np.inf] * 10, np.arange(90.0)])
    low, high = ep.percentile_interval(r, 0.95)
    assert low == -np.inf and high == pytest.approx(87.0)


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: ep.simultaneous_interval([1.0, 2.0], m=0), "m must"),
        (lambda: ep.simultaneous_interval([1.0, 2.0], m=2, alpha=0.0), "alpha"),
        (lambda: ep.percentile_interval([1.0, 2.0], confidence=95), "confidence"),
        (lambda: ep.bootstrap_p_value([]), "replicates"),
        (lambda: ep.bootstrap_p_value([["a"]]), "replicates"),
    ],
)
def test_interval_and_p_value_inputs_are_checked(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --------------------------------------------------------------------------------------------- TOST and verdicts
def test_tost_hand_computed():
    # 200 replicates: 30 at -90, 140 at 0, 30 at +90. alpha = 0.05 reads the 90 % interval, percentiles 5 and 95:
    # positions 0.05·199 = 9.95 and 189.05, both inside the runs of ±90 -> [-90, 90].
    r = np.concatenate([np.full(30, -90.0), np.zeros(140), np.full(30, 90.0)])
    inside = ep.tost(r, margin=100.0)
    assert inside.equivalent and (inside.ci_low, inside.ci_high) == (-90.0, 90.0)
    assert inside.margin == 100.0 and inside.alpha == 0.05 and inside.confidence == pytest.approx(0.90)
    assert not ep.tost(r, margin=90.0).equivalent  # touching the margin is not inside it
    assert ep.tost(r, margin=90.001).equivalent
    assert not ep.tost(r, margin=50.0).equivalent
    # Replicates around 0.1 with a margin of 0.05: the interval lies outside the margin altogether.
    assert not ep.tost(normal_grid(0.1, 0.01), margin=0.05).equivalent
    # N(0, 0.01²) quantiles: the 90 % interval is ±1.645·0.01 = ±0.0164, inside ±0.02 but not inside ±0.015.
    assert ep.tost(normal_grid(0.0, 0.01), margin=0.02).equivalent
    assert not ep.tost(normal_grid(0.0, 0.01), margin=0.015).equivalent


@given(st.floats(0.001, 10.0), st.floats(0.0, 10.0), st.integers(0, 2**16))
def test_tost_equivalence_is_monotone_in_the_margin(margin, extra, seed):
    r = np.random.default_rng(seed).normal(0.0, 1.0, 200)
    if ep.tost(r, margin).equivalent:
        assert ep.tost(r, margin + extra).equivalent


@pytest.mark.parametrize("margin", [0.0, -0.1, math.nan, math.inf, None, "0.1"])
def test_tost_names_a_bad_margin(margin):
    with pytest.raises(ValueError, match="margin"):
        ep.tost([0.0, 0.1], margin)


def test_tost_names_a_bad_alpha():
    with pytest.raises(ValueError, match="alpha"):
        ep.tost([0.0, 0.1], 0.1, alpha=0.5)


def test_endpoint_verdict():
    assert ep.endpoint_verdict(True, +1, higher_is_better=True) == "better"
    assert ep.endpoint_verdict(True, +1, higher_is_better=False) == "worse"
    assert ep.endpoint_verdict(True, -1, higher_is_better=False) == "better"
    assert ep.endpoint_verdict(True, -1, higher_is_better=True) == "worse"
    # a rejected difference inside the margin is still a difference
    assert ep.endpoint_verdict(True, +1, True, equivalent=True) == "better"
    assert ep.endpoint_verdict(False, +1, True, equivalent=True) == "equivalent (|Δ| < δ)"
    assert ep.endpoint_verdict(False, +1, True, equivalent=False) == "inconclusive"
    assert ep.endpoint_verdict(False, +1, True) == "inconclusive"
    assert ep.endpoint_verdict(None, 0, True) == "n/a"
    with pytest.raises(ValueError, match="direction"):
        ep.endpoint_verdict(True, 0, True)


# --------------------------------------------------------------------------------------------- MDE
def test_minimum_detectable_difference_against_a_direct_normal_computation():
    # m = 4, alpha = 0.05: z_{1 - 0.05/8} = z_0.99375 = 2.4977, z_0.8 = 0.8416; sum 3.3393; se 0.015 -> 0.0501.
    mde = ep.minimum_detectable_difference(0.015, m=4)
    assert mde == pytest.approx((norm.ppf(1 - 0.05 / 8) + norm.ppf(0.8)) * 0.015, rel=1e-12)
    assert mde == pytest.approx(0.0501, abs=1e-4)
    # m = 1: 1.95996 + 0.84162 = 2.80158.
    assert ep.minimum_detectable_difference(1.0) == pytest.approx(2.80158, abs=1e-5)
    # Power at the MDE, directly: P(estimate > z_crit·se) for estimate ~ N(MDE, se²) is 0.8 (the far tail,
    # P(estimate < -z_crit·se), is neglected by the formula: below 1e-7 here).
    z_crit = norm.ppf(1 - 0.05 / 8)
    assert norm.sf(z_crit - mde / 0.015) == pytest.approx(0.8, abs=1e-12)
    assert norm.cdf(-z_crit - mde / 0.015) < 1e-7
    # Higher power or more contrasts need a larger difference; se 0 detects anything.
    assert ep.minimum_detectable_difference(0.015, m=4, power=0.9) > mde > ep.minimum_detectable_difference(0.015)
    assert ep.minimum_detectable_difference(0.0, m=4) == 0.0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"se": -1.0}, "se"),
        ({"se": "x"}, "se"),
        ({"se": 1.0, "m": 0}, "m must"),
        ({"se": 1.0, "alpha": 1.0}, "alpha"),
        ({"se": 1.0, "power": 1.0}, "power"),
    ],
)
def test_minimum_detectable_difference_inputs_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ep.minimum_detectable_difference(**kwargs)


# --------------------------------------------------------------------------------------------- paired bootstrap
def test_bootstrap_mean_difference_one_and_two_levels():
    # Constant differences: every replicate is the constant.
    estimate, replicates, n_items, n_runs = ep.bootstrap_mean_difference(np.full(10, 0.25), n_resamples=50)
    assert estimate == 0.25 and np.allclose(replicates, 0.25) and (n_items, n_runs) == (10, 1)
    # Items: the bootstrap se of a mean is about sd·sqrt((n - 1)/n)/sqrt(n).
    d = np.random.default_rng(1).normal(0.0, 1.0, 40)
    _, replicates, _, _ = ep.bootstrap_mean_difference(d, n_resamples=4000, seed=3)
    expected = np.std(d, ddof=0) / math.sqrt(d.size)
    assert ep.bootstrap_se(replicates) == pytest.approx(expected, rel=0.08)
    # Runs x items with an item NaN in one run: that item is dropped from every run; same seed, same replicates.
    d2 = np.random.default_rng(2).normal(0.1, 1.0, (3, 12))
    d2[1, 4] = np.nan
    estimate, r1, n_items, n_runs = ep.bootstrap_mean_difference(d2, n_resamples=200, seed=5)
    assert (n_items, n_runs) == (11, 3)
    assert estimate == pytest.approx(np.delete(d2, 4, axis=1).mean())
    np.testing.assert_array_equal(r1, ep.bootstrap_mean_difference(d2, n_resamples=200, seed=5)[1])


def test_bootstrap_mean_difference_inputs_are_checked():
    with pytest.raises(ValueError, match="differences"):
        ep.bootstrap_mean_difference([0.1])
    with pytest.raises(ValueError, match="differences"):
        ep.bootstrap_mean_difference(np.zeros((2, 2, 2)))
    with pytest.raises(ValueError, match="n_resamples"):
        ep.bootstrap_mean_difference([0.1, 0.2], n_resamples=0)


# --------------------------------------------------------------------------------------------- primary table
def test_primary_table_holm_intervals_mde_and_the_holm_only_note():
    # B = 1999 replicates, so the smallest p is 2/2000 = 0.001.
    # clear: N(5, 1) quantiles, all > 0 (5 + Φ⁻¹(0.5/1999) = 5 - 3.48) -> p = 0.001.
    # edge:  N(2.17, 1): #{<= 0} = #{i: (i + 0.5)/1999 <= Φ(-2.17) = 0.01500} = #{i <= 29.49} = 30
    #        -> p = 2·(1 + 30)/2000 = 0.031.
    # Holm, m = 2: 0.001·2 = 0.002 <= 0.05 rejects; max(0.002, 0.031·1) = 0.031 <= 0.05 rejects.
    # The simultaneous interval of edge is the 97.5 % one: 2.17 + Φ⁻¹(0.0125) = 2.17 - 2.24 < 0, so it touches 0.
    clear = ep.Contrast("clear", True, replicates=normal_grid(5.0), estimate=5.0, n_items=40, n_seeds=3)
    edge = ep.Contrast("edge", True, replicates=normal_grid(2.17), estimate=2.17, n_items=40, n_seeds=3, n_pairs=2)
    rows = ep.primary_contrast_table([clear, edge])
    assert [r.label for r in rows] == ["primary", "primary"]
    assert rows[0].p_raw == pytest.approx(0.001) and rows[0].p_holm == pytest.approx(0.002)
    assert rows[1].p_raw == pytest.approx(0.031) and rows[1].p_holm == pytest.approx(0.031)
    assert rows[0].reject and rows[1].reject
    assert rows[0].verdict == rows[1].verdict == "better"
    assert rows[0].note == "" and rows[1].note == ep.HOLM_ONLY
    assert rows[1].ci_low < 0 < rows[1].ci_high and rows[1].ci_level == pytest.approx(0.975)
    assert rows[1].ci_low == pytest.approx(2.17 + norm.ppf(0.0125), abs=0.01)
    # MDE at alpha/m = 0.025 from the bootstrap se (≈ 1 for unit-normal quantiles): (z_0.9875 + z_0.8)·se.
    assert rows[0].mde == pytest.approx((norm.ppf(1 - 0.05 / 4) + norm.ppf(0.8)) * rows[0].se, rel=1e-12)
    assert rows[0].se == pytest.approx(1.0, abs=0.01)
    assert (rows[1].n_items, rows[1].n_seeds, rows[1].n_pairs, rows[1].n_replicates) == (40, 3, 2, 1999)
    # Alone, edge is tested at alpha/1: the 95 % interval (2.17 - 1.96 > 0) excludes 0 and there is no note.
    (alone,) = ep.primary_contrast_table([edge])
    assert alone.reject and alone.note == "" and alone.ci_low > 0
    table = ep.primary_table_markdown(rows)
    assert "97.5 % simultaneous" in table and ep.HOLM_ONLY in table and "40 / 3 / 2" in table


def test_primary_table_equivalence_inconclusive_worse_and_missing():
    # m = 4. TOST runs at alpha/m = 0.0125 per contrast: the 97.5 % interval of N(0, 0.01²) quantiles is
    # ±2.24·0.01 = ±0.0224, inside δ = 0.03 (equivalent) but not inside δ = 0.02.
    contrasts = [
        ep.Contrast("same", True, replicates=normal_grid(0.0, 0.01), estimate=0.0, margin=0.03, n_items=100, n_seeds=3),
        ep.Contrast(
            "unclear", True, replicates=normal_grid(0.0, 0.01), estimate=0.0, margin=0.02, n_items=100, n_seeds=3
        ),
        # lower is better (e.g. fact leak) and A is higher: worse
        ep.Contrast("leak", False, replicates=normal_grid(0.2, 0.02), estimate=0.2, n_items=100, n_seeds=3),
        # 20 % NaN replicates: no test, but the contrast still counts in Holm's m
        ep.Contrast(
            "broken",
            True,
            replicates=np.r_[np.full(400, np.nan), normal_grid(0.0, n=1600)],
            estimate=0.0,
            n_items=100,
            n_seeds=3,
        ),
    ]
    rows = {r.name: r for r in ep.primary_contrast_table(contrasts)}
    assert rows["same"].verdict == ep.EQUIVALENT
    assert rows["same"].equivalence.equivalent and rows["same"].equivalence.alpha == pytest.approx(0.0125)
    assert rows["same"].equivalence.ci_high == pytest.approx(norm.ppf(1 - 0.0125) * 0.01, abs=2e-4)
    assert rows["unclear"].verdict == "inconclusive" and not rows["unclear"].equivalence.equivalent
    assert rows["leak"].verdict == "worse" and rows["leak"].equivalence is None
    # leak's raw p is 0.001 (all replicates > 0); Holm multiplies the smallest of four by 4.
    assert rows["leak"].p_holm == pytest.approx(0.004)
    assert rows["broken"].verdict == "n/a" and math.isnan(rows["broken"].p_holm) and rows["broken"].reject is None
    assert math.isnan(rows["broken"].ci_low) and math.isnan(rows["broken"].mde)


def test_primary_table_rows_do_not_depend_on_the_order_of_the_contrasts():
    rng = np.random.default_rng(0)
    contrasts = [
        ep.Contrast(f"c{i}", True, differences=rng.normal(shift, 1.0, (3, 30)), margin=0.5)
        for i, shift in enumerate((0.0, 0.3, 0.8))
    ]
    forward = ep.primary_contrast_table(contrasts, n_resamples=500, seed=1)
    backward = ep.primary_contrast_table(contrasts[::-1], n_resamples=500, seed=1)
    assert [r.name for r in forward] == [r.name for r in backward[::-1]]
    for a, b in zip(forward, backward[::-1]):
        assert (a.p_raw, a.p_holm, a.ci_low, a.ci_high, a.verdict) == (
            b.p_raw,
            b.p_holm,
            b.ci_low,
            b.ci_high,
            b.verdict,
        )
        assert (a.n_items, a.n_seeds, a.n_pairs) == (30, 3, 1)


def test_primary_table_refuses_a_fifth_contrast_and_bad_declarations():
    r = normal_grid(1.0)
    c = [ep.Contrast(f"c{i}", True, replicates=r, estimate=1.0, n_items=10, n_seeds=3) for i in range(5)]
    with pytest.raises(ValueError, match="contrasts: got 5 primary contrasts; declare between 1 and 4"):
        ep.primary_contrast_table(c)
    with pytest.raises(ValueError, match="contrasts"):
        ep.primary_contrast_table([])
    with pytest.raises(ValueError, match="distinct"):
        ep.primary_contrast_table([c[0], c[0]])
    with pytest.raises(ValueError, match="exactly one of replicates"):
        ep.primary_contrast_table([ep.Contrast("x", True)])
    with pytest.raises(ValueError, match="estimate"):
        ep.primary_contrast_table([ep.Contrast("x", True, replicates=r, n_items=10, n_seeds=3)])
    with pytest.raises(ValueError, match="n_seeds"):
        ep.primary_contrast_table([ep.Contrast("x", True, replicates=r, estimate=1.0, n_items=10)])
    with pytest.raises(ValueError, match="margin"):
        ep.primary_contrast_table(
            [ep.Contrast("x", True, replicates=r, estimate=1.0, n_items=10, n_seeds=3, margin=-1)]
        )
    with pytest.raises(ValueError, match="n_items=7"):
        ep.primary_contrast_table([ep.Contrast("x", True, differences=np.ones(10), n_items=7)])
    with pytest.raises(ValueError, match="'x': replicates"):
        ep.primary_contrast_table(
            [ep.Contrast("x", True, replicates=np.ones((2, 2)), estimate=1.0, n_items=10, n_seeds=3)]
        )
    # 100 replicates: the smallest p, 2/101 = 0.0198, cannot reach alpha/m = 0.05/4 = 0.0125.
    few = [ep.Contrast(f"c{i}", True, replicates=r[:100], estimate=1.0, n_items=10, n_seeds=3) for i in range(4)]
    with pytest.raises(ValueError, match="n_resamples"):
        ep.primary_contrast_table(few)


def test_label_rows_marks_every_other_row_exploratory():
    rows = [
        {"comparison": "bs_s − npo", "measure": "agg", "setting": "end", "verdict": "no difference"},
        {"comparison": "bs_s − npo", "measure": "fact_leak", "setting": "end", "verdict": "better"},
        {"comparison": "bs_t − ga", "measure": "agg", "setting": "end", "verdict": "worse"},
    ]
    labelled = ep.label_rows(rows, primary={("bs_s − npo", "agg", "end")})
    assert [r["label"] for r in labelled] == ["primary", "exploratory", "exploratory"]
    assert labelled[1]["verdict"] == "better" and "label" not in rows[1]  # copies; verdicts kept
    by_name = ep.label_rows([{"name": "a"}, {"name": "b"}], primary={"b"})
    assert [r["label"] for r in by_name] == ["exploratory", "primary"]
    with pytest.raises(ValueError, match="declare at most 4"):
        ep.label_rows(rows, primary={1, 2, 3, 4, 5})
    with pytest.raises(ValueError, match="in no row"):
        ep.label_rows(rows, primary={("bs_s − npo", "mu", "end")})


# --------------------------------------------------------------------------------------------- stopping rule
def run_until(rule: ep.StopAtLevel, values) -> tuple[int, bool]:
    """The stopping step and whether the level was reached, for the measure's values at steps 0, 1, 2, ..."""
    for step, value in enumerate(values):
        if rule.should_stop(step, value):
            return step, rule.reached(value)
    raise AssertionError("the trajectory ended before the rule stopped")


def test_stop_at_level_stops_at_the_declared_level_in_both_directions():
    down = ep.StopAtLevel(level=-2.0, max_steps=100, direction="decrease")
    assert run_until(down, [-1.0, -1.5, -1.99, -2.0, -3.0]) == (3, True)  # at the level counts
    assert down.reached(-math.inf) and not down.reached(-1.0)
    up = ep.StopAtLevel(level=0.5, max_steps=100, direction="increase")
    assert run_until(up, [0.1, 0.3, 0.6, 0.9]) == (2, True)
    assert not up.reached(0.4999)
    # already at the level before the first step: stop at step 0
    assert run_until(down, [-2.5]) == (0, True)


def test_stop_at_level_fraction_form():
    # original -1, retain -3, f = 0.5: level = -1 + 0.5·(-3 - (-1)) = -2, falling.
    rule = ep.StopAtLevel.from_fraction(original=-1.0, retain=-3.0, fraction=0.5, max_steps=50)
    assert rule.level == -2.0 and rule.direction == "decrease"
    assert run_until(rule, [-1.0, -1.8, -2.1]) == (2, True)
    # original 0.2, retain 0.8, f = 0.25: level = 0.2 + 0.25·0.6 = 0.35, rising.
    rule = ep.StopAtLevel.from_fraction(0.2, 0.8, 0.25, max_steps=50)
    assert rule.level == pytest.approx(0.35) and rule.direction == "increase"
    assert run_until(rule, [0.2, 0.3, 0.34, 0.36]) == (3, True)
    # f = 1 is the retain model's value; the record keeps f and the two values
    full = ep.StopAtLevel.from_fraction(-1.0, -3.0, 1.0, max_steps=50)
    assert full.level == -3.0
    assert full.to_dict() == {
        "level": -3.0,
        "max_steps": 50,
        "direction": "decrease",
        "fraction": 1.0,
        "original": -1.0,
        "retain": -3.0,
    }


def test_stop_at_level_stops_at_the_budget():
    rule = ep.StopAtLevel(level=-2.0, max_steps=5, direction="decrease")
    assert run_until(rule, [-1.0] * 10) == (5, False)  # censored: stopped by the budget, level not reached
    with pytest.raises(ValueError, match="past max_steps"):
        rule.should_stop(6, -1.0)


@given(
    st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=30),
    st.floats(-10, 10, allow_nan=False),
    st.sampled_from(ep.DIRECTIONS),
    st.integers(0, 40),
)
def test_stop_at_level_stops_at_the_first_step_at_the_level_or_the_budget(values, level, direction, budget):
    rule = ep.StopAtLevel(level=level, max_steps=budget + 1, direction=direction)
    values = values + [10.0 if direction == "decrease" else -10.0] * (budget + 2)  # never reach after the data
    hits = [i for i, v in enumerate(values) if (v <= level if direction == "decrease" else v >= level)]
    first = min([*hits, budget + 1])
    assert run_until(rule, values) == (first, first in hits)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: ep.StopAtLevel(math.nan, 10, "decrease"), "level"),
        (lambda: ep.StopAtLevel(-2.0, 0, "decrease"), "max_steps"),
        (lambda: ep.StopAtLevel(-2.0, 10.5, "decrease"), "max_steps"),
        (lambda: ep.StopAtLevel(-2.0, True, "decrease"), "max_steps"),
        (lambda: ep.StopAtLevel(-2.0, 10, "down"), "direction"),
        (lambda: ep.StopAtLevel(-2.0, 10, "decrease", fraction=0.5), "from_fraction"),
        (lambda: ep.StopAtLevel(-2.0, 10, "decrease", fraction=0.5, original=-1.0, retain=-4.0), "from_fraction"),
        (lambda: ep.StopAtLevel(-2.0, 10, "increase", fraction=0.5, original=-1.0, retain=-3.0), "direction"),
        (lambda: ep.StopAtLevel.from_fraction(-1.0, -3.0, 0.0, 10), "fraction"),
        (lambda: ep.StopAtLevel.from_fraction(-1.0, -3.0, 1.5, 10), "fraction"),
        (lambda: ep.StopAtLevel.from_fraction(-1.0, -1.0, 0.5, 10), "original and retain are equal"),
        (lambda: ep.StopAtLevel.from_fraction(math.inf, -1.0, 0.5, 10), "original"),
        (lambda: ep.StopAtLevel.from_fraction(-1.0, None, 0.5, 10), "retain"),
        (lambda: ep.StopAtLevel(-2.0, 10, "decrease").reached(math.nan), "value is NaN"),
        (lambda: ep.StopAtLevel(-2.0, 10, "decrease").should_stop(-1, -1.0), "step"),
    ],
)
def test_stop_at_level_bad_inputs_name_the_argument(make, match):
    with pytest.raises(ValueError, match=match):
        make()


# --------------------------------------------------------------------------------------------- censoring
def _runs():
    # budget 125. ga reaches the level on every seed; simnpo once; bs_s twice; never_ reaches it on no seed.
    return [
        {"method": "ga", "seed": 0, "reached": True, "steps": 40, "measures": {"rouge": 0.2}},
        {"method": "ga", "seed": 1, "reached": True, "steps": 60, "measures": {"rouge": 0.3}},
        {"method": "ga", "seed": 2, "reached": True, "steps": 80, "measures": {"rouge": 0.4}},
        ep.StoppedRun("simnpo", 0, True, 90, {"rouge": 0.3}),
        ep.StoppedRun("simnpo", 1, False, 125, {"rouge": 0.6}),
        ep.StoppedRun("simnpo", 2, False, 125, {"rouge": 0.7}),
        ep.StoppedRun("bs_s", 0, True, 50, {"rouge": 0.3}),
        ep.StoppedRun("bs_s", 1, True, 70, {"rouge": 0.3}),
        ep.StoppedRun("bs_s", 2, False, 125, {"rouge": 0.6}),
        ep.StoppedRun("never", 0, False, 125, {}),
        ep.StoppedRun("never", 1, False, 125, {}),
        ep.StoppedRun("never", 2, False, 125, {}),
    ]


def test_censored_runs_are_kept_in_counts_medians_and_measures():
    table = ep.censoring_table(_runs(), comparisons=[("ga", "simnpo"), ("never", "simnpo")], max_steps=125)
    by = {m.method: m for m in table.methods}
    assert [m.method for m in table.methods] == ["ga", "simnpo", "bs_s", "never"]
    # simnpo: 3 runs, 1 reached, 2 censored. Sorted steps 90, 125*, 125*: the median (position 1) is a censored
    # run's budget, so 125 is a lower bound ("≥ 125").
    s = by["simnpo"]
    assert (s.n_runs, s.n_reached, s.n_censored) == (3, 1, 2)
    assert s.median_steps == 125 and s.median_is_lower_bound and s.median_cell == "≥ 125"
    # measures at the stopping point over all three runs, censored ones at their budget: (0.3 + 0.6 + 0.7)/3.
    assert s.measures["rouge"] == pytest.approx(1.6 / 3)
    # bs_s: 50, 70, 125*: the median 70 sits before the censored run, so censoring cannot move it.
    b = by["bs_s"]
    assert (b.n_censored, b.median_steps, b.median_is_lower_bound, b.median_cell) == (1, 70, False, "70")
    assert by["ga"].median_steps == 60 and not by["ga"].median_is_lower_bound
    assert by["never"].n_censored == 3 and by["never"].median_cell == "≥ 125" and by["never"].measures == {}
    # ga vs simnpo: seed 0 40 < 90; seeds 1, 2 ga reached (60, 80) while simnpo was censored at 125: ga first on
    # all 3 seeds; the exact sign test on 3 decisive seeds gives p = 2·0.5³ = 0.25.
    g = table.comparisons[0]
    assert (g.n_pairs, g.a_first, g.b_first, g.ties, g.both_censored, g.indeterminate) == (3, 3, 0, 0, 0, 0)
    assert g.score == 3 and g.p_value == pytest.approx(0.25)
    # never vs simnpo: seed 0 simnpo first; seeds 1, 2 both censored — counted, not dropped.
    n = table.comparisons[1]
    assert (n.a_first, n.b_first, n.both_censored, n.score, n.n_pairs) == (0, 1, 2, -1, 3)
    assert n.p_value == pytest.approx(1.0)


def test_median_with_an_even_number_of_runs():
    # 10, 20, 30, 40*: the median (20 + 30)/2 = 25 reads positions 1 and 2; the censored run is at 3: exact.
    runs = [ep.StoppedRun("a", s, r, t) for s, (r, t) in enumerate([(True, 10), (True, 20), (True, 30), (False, 40)])]
    (row,) = ep.censoring_summary(runs)
    assert row.median_steps == 25 and not row.median_is_lower_bound
    # 10, 20, 40*, 40*: the censored run at position 2 enters the median (20 + 40)/2 = 30: a lower bound.
    runs = [ep.StoppedRun("a", s, r, t) for s, (r, t) in enumerate([(True, 10), (True, 20), (False, 40), (False, 40)])]
    (row,) = ep.censoring_summary(runs)
    assert row.median_steps == 30 and row.median_is_lower_bound and row.median_cell == "≥ 30"
    # a run that reached the level at the last step of the budget is not censored: 10, 40, 40* -> median 40 exact.
    runs = [ep.StoppedRun("a", 0, True, 10), ep.StoppedRun("a", 1, False, 40), ep.StoppedRun("a", 2, True, 40)]
    (row,) = ep.censoring_summary(runs)
    assert row.median_steps == 40 and not row.median_is_lower_bound


def test_steps_comparison_ties_and_unequal_budgets():
    runs = [
        ep.StoppedRun("a", 0, True, 30),
        ep.StoppedRun("b", 0, True, 30),  # same step: tie
        ep.StoppedRun("a", 1, True, 40),
        ep.StoppedRun("b", 1, False, 40),  # b censored at a's step: a first (b's steps-to-level exceed 40)
        ep.StoppedRun("a", 2, False, 50),
        ep.StoppedRun("b", 2, True, 80),  # a censored at 50 before b reached at 80: no order
    ]
    c = ep.compare_steps_to_level(runs, "a", "b")
    assert (c.a_first, c.b_first, c.ties, c.both_censored, c.indeterminate) == (1, 0, 1, 0, 1)
    both = [ep.StoppedRun("a", 0, False, 9), ep.StoppedRun("b", 0, False, 9)]
    assert math.isnan(ep.compare_steps_to_level(both, "a", "b").p_value)  # no decisive seed


@pytest.mark.parametrize(
    ("runs", "kwargs", "match"),
    [
        ([ep.StoppedRun("a", 0, False, 50)], {"max_steps": 125}, "censored at step 50, before the budget 125"),
        ([ep.StoppedRun("a", 0, True, 150)], {"max_steps": 125}, "past max_steps"),
        ([ep.StoppedRun("a", 0, 1, 50)], {}, "reached=1"),
        ([ep.StoppedRun("a", 0, True, -1)], {}, "steps"),
        ([ep.StoppedRun("a", 0, True, 5), ep.StoppedRun("a", 0, True, 6)], {}, "seed twice"),
        ([{"method": "a", "seed": 0, "steps": 5}], {}, "lacks \\['reached'\\]"),
        ([("a", 0, True, 5)], {}, "StoppedRun or a mapping"),
        ([], {}, "no run records"),
    ],
)
def test_censoring_inputs_are_checked(runs, kwargs, match):
    with pytest.raises(ValueError, match=match):
        ep.censoring_summary(runs, **kwargs)


def test_steps_comparison_needs_paired_seeds_and_known_methods():
    runs = [ep.StoppedRun("a", 0, True, 5), ep.StoppedRun("a", 1, True, 5), ep.StoppedRun("b", 0, True, 6)]
    with pytest.raises(ValueError, match="different seeds"):
        ep.compare_steps_to_level(runs, "a", "b")
    with pytest.raises(ValueError, match="method_b: no runs of 'c'"):
        ep.compare_steps_to_level(runs, "a", "c")
    with pytest.raises(ValueError, match="comparisons"):
        ep.censoring_table(runs, comparisons=["a-b"])
