"""bs_ref.protocol.stats: two-level bootstrap intervals, paired comparisons, verdicts, verdict.csv (docs/theory.md §10).

- coverage of the 95 % interval on simulated data with a known mean (normal and Bernoulli items; one run, and
  three runs with a run effect), 200 datasets each, fixed seeds;
- one run agrees with ``scipy.stats.bootstrap(method="percentile")`` within Monte-Carlo error;
- paired comparisons: much narrower than unpaired for correlated methods, the verdict follows the direction,
  identical methods give exactly 0 and ``no difference``;
- aggregate statistics (harmonic mean of split means; the TOFU statistics reproduce
  ``bs_ref.metrics.scores.aggregate``), with one item draw shared by runs, methods and '@' references; their
  vectorised forms (and the ratio / band-drop statistics) give the replicate loop's intervals;
- determinism, NaN items, ±inf, degenerate cases (one run, one item, constant data), the crossed design, and
  the output helpers.
"""

from __future__ import annotations

import csv
import inspect
import io
import math

import numpy as np
import pytest
import scipy.stats

from bs_ref.metrics.paper import MEM_EPS
from bs_ref.metrics.scores import aggregate
from bs_ref.protocol import stats


# --------------------------------------------------------------------------------------------- coverage
def _dataset(rng: np.random.Generator, kind: str, n_runs: int, n_items: int, run_effect: float):
    """(per-item values (n_runs, n_items), true mean): item effect + run effect + item×run noise."""
    if kind == "normal":
        runs = rng.normal(0.0, run_effect, (n_runs, 1))
        return 1.0 + runs + rng.normal(0.0, 1.0, (1, n_items)) + rng.normal(0.0, 0.5, (n_runs, n_items)), 1.0
    # Bernoulli items: item probabilities symmetric around 0.5, a uniform run shift (no clipping: mean 0.5)
    p = 0.05 + 0.9 * rng.beta(0.5, 0.5, (1, n_items)) if n_runs > 1 else 0.1 + 0.8 * rng.beta(2, 2, (1, n_items))
    shift = rng.uniform(-run_effect, run_effect, (n_runs, 1))
    return (rng.random((n_runs, n_items)) < p + shift).astype(float), 0.5


@pytest.mark.parametrize(
    "kind, n_runs, run_effect",
    [("normal", 1, 0.0), ("normal", 3, 0.1), ("bernoulli", 1, 0.0), ("bernoulli", 3, 0.1)],
)
def test_interval_covers_the_true_mean_about_95_percent_of_the_time(kind, n_runs, run_effect):
    rng = np.random.default_rng(20260 + n_runs)
    hits = 0
    for d in range(200):
        x, truth = _dataset(rng, kind, n_runs, 40, run_effect)
        iv = stats.interval(x, n_resamples=500, seed=d)
        hits += iv.ci_low <= truth <= iv.ci_high
    assert 0.90 <= hits / 200 <= 0.99


def _scipy_percentile(x: np.ndarray, n_resamples: int, seed: int) -> tuple[float, float]:
    kwargs = dict(method="percentile", n_resamples=n_resamples, confidence_level=0.95)
    if "rng" in inspect.signature(scipy.stats.bootstrap).parameters:
        kwargs["rng"] = np.random.default_rng(seed)
    else:  # scipy < 1.15
        kwargs["random_state"] = np.random.default_rng(seed)
    ci = scipy.stats.bootstrap((x,), np.mean, **kwargs).confidence_interval
    return float(ci.low), float(ci.high)


@pytest.mark.parametrize("kind", ["normal", "bernoulli"])
def test_single_run_matches_scipy_percentile_bootstrap(kind):
    rng = np.random.default_rng(3)
    x = rng.normal(0.4, 1.0, 60) if kind == "normal" else (rng.random(60) < 0.3).astype(float)
    ours = stats.interval(x, n_resamples=4000, seed=11)
    low, high = _scipy_percentile(x, 4000, 12)  # another stream: agreement up to Monte-Carlo error
    se = x.std(ddof=1) / math.sqrt(x.size)
    assert ours.value == pytest.approx(x.mean())
    assert abs(ours.ci_low - low) < 0.25 * se and abs(ours.ci_high - high) < 0.25 * se
    assert ours.n_runs == 1 and ours.n_items == 60 and math.isnan(ours.run_std)


# --------------------------------------------------------------------------------------------- comparisons
def _correlated(shift: float, seed: int = 0):
    """Two methods sharing large item and run effects, B = A − shift + small noise."""
    rng = np.random.default_rng(seed)
    base = rng.normal(0, 1, (1, 50)) + rng.normal(0, 0.5, (3, 1)) + rng.normal(0, 0.3, (3, 50))
    return base + shift + rng.normal(0, 0.05, base.shape), base


def test_paired_difference_is_much_narrower_than_unpaired():
    a, b = _correlated(0.1)
    paired = stats.compare(a, b, higher_is_better=True, seed=1)
    ia, ib = stats.interval(a, seed=2), stats.interval(b, seed=3)
    unpaired_width = math.hypot(ia.ci_high - ia.ci_low, ib.ci_high - ib.ci_low)
    assert paired.ci_high - paired.ci_low < 0.2 * unpaired_width
    assert paired.ci_low > 0 and paired.verdict == "better"
    assert ia.ci_low < ib.ci_high and ib.ci_low < ia.ci_high  # unpaired, the intervals overlap
    assert paired.n_items == 50 and paired.n_runs == 3


def test_verdict_follows_the_direction_of_the_measure():
    a, b = _correlated(0.2, seed=4)
    assert stats.compare(a, b, higher_is_better=True).verdict == "better"  # e.g. MU, target log-prob drop
    assert stats.compare(a, b, higher_is_better=False).verdict == "worse"  # e.g. fact leak
    assert stats.compare(b, a, higher_is_better=True).verdict == "worse"
    assert stats.compare(b, a, higher_is_better=False).verdict == "better"
    assert stats.verdict(0.0, 0.3, True) == "no difference"  # an interval touching 0
    assert stats.verdict(-0.3, -0.1, False) == "better" and stats.verdict(0.1, 0.3, False) == "worse"
    assert stats.verdict(float("nan"), float("nan"), True) == "n/a"


def test_identical_methods_give_exactly_zero_and_no_difference():
    a, _ = _correlated(0.0)
    result = stats.compare(a, a.copy(), higher_is_better=True)
    assert (result.difference, result.ci_low, result.ci_high, result.verdict) == (0.0, 0.0, 0.0, "no difference")


def test_runs_are_paired_by_key_when_given_as_mappings():
    a, b = _correlated(0.1)
    keys = [(0, 0), (1, 0), (2, 0)]
    by_key = stats.compare(dict(zip(keys, a)), dict(zip(reversed(keys), b[::-1])), higher_is_better=True)
    assert by_key == stats.compare(a, b, higher_is_better=True)
    partial = stats.compare(dict(zip(keys, a)), dict(zip(keys[:2], b[:2])), higher_is_better=True)
    assert partial.n_runs == 2  # the runs both methods have
    with pytest.raises(ValueError, match="same runs"):
        stats.compare(a, b[:2], higher_is_better=True)


# --------------------------------------------------------------------------------------------- aggregates
def _split_runs(rng, n_runs=3, sizes=(30, 20), offset=0.0, noise=None):
    runs = []
    for _ in range(n_runs):
        run = {}
        for s, n in zip(("x", "y"), sizes):
            base = np.linspace(0.5, 1.5, n) + offset
            run[s] = {"v": base + (rng.normal(0, 0.3, n) if noise is None else noise)}
        runs.append(run)
    return runs


def _hmean_of_split_means(run):
    return 2.0 / (1.0 / run["x"]["v"].mean() + 1.0 / run["y"]["v"].mean())


def test_aggregate_statistic_interval_and_paired_comparison():
    rng = np.random.default_rng(5)
    a = _split_runs(rng)
    iv = stats.interval(a, _hmean_of_split_means, n_resamples=400)
    assert iv.value == pytest.approx(np.mean([_hmean_of_split_means(r) for r in a]))
    assert iv.ci_low < iv.value < iv.ci_high and iv.n_items == 20 and iv.n_runs == 3
    # B: the same items and runs, shifted by 0.05 with a little noise: paired, the shift is resolved
    b = [{s: {"v": t["v"] - 0.05 + rng.normal(0, 0.01, t["v"].size)} for s, t in run.items()} for run in a]
    result = stats.compare(a, b, _hmean_of_split_means, higher_is_better=True, n_resamples=400)
    assert result.ci_low > 0 and result.verdict == "better"
    assert result.ci_high - result.ci_low < 0.2 * (iv.ci_high - iv.ci_low)
    same = stats.compare(a, a, _hmean_of_split_means, higher_is_better=True, n_resamples=200)
    assert (same.difference, same.ci_low, same.ci_high, same.verdict) == (0.0, 0.0, 0.0, "no difference")


def test_one_item_draw_per_replicate_is_shared_by_runs_methods_and_references():
    calls = []

    def record(run):
        ids = run["forget"]["id"]
        assert np.array_equal(ids, run["forget@retain_model"]["id"])  # the reference moves with the forget items
        assert np.array_equal(ids, [it["id"] for it in run["forget@items"]])  # lists of item dicts too
        calls.append(tuple(ids) + tuple(run["retain"]["id"]))
        return float(run["forget"]["v"].mean())

    def run(k):
        ids = np.arange(8)
        return {
            "forget": {"id": ids, "v": ids + k},
            "forget@retain_model": {"id": ids},
            "forget@items": [{"id": int(i)} for i in ids],
            "retain": {"id": np.arange(5)},
        }

    n_resamples = 50
    stats.compare(
        [run(0), run(1), run(2)], [run(5), run(6), run(7)], record, higher_is_better=True, n_resamples=n_resamples
    )
    blocks = sum(1 for i, c in enumerate(calls) if i == 0 or c != calls[i - 1])
    assert blocks <= n_resamples + 1  # the point estimate, then one item draw per replicate for every call


def _tofu_items(rng, n, kind):
    """``n`` evaluation items of a split kind, as ``bs_ref.metrics.scores.evaluate_split`` writes them."""
    out = []
    for i in range(n):
        item = {
            "index": i,
            "nll_answer": float(rng.uniform(0.2, 3)),
            "nll_perturbed": list(rng.uniform(0.5, 4, 3)),
            "rougeL_recall": float(rng.uniform()),
            "generation": "a fluent answer about the author",
        }
        item["nll_paraphrased"] = float(rng.uniform(0.2, 3)) if kind in ("forget", "retain") else item["nll_answer"]
        if kind == "forget":
            item.update(
                es=float(rng.uniform()),
                em=float(rng.uniform()),
                fact_leak=bool(rng.random() < 0.4),
                fact_logprob=None if i == 0 else float(-rng.uniform(0, 5)),
            )
        out.append(item)
    return out


def test_tofu_statistics_reproduce_metrics_aggregate():
    rng = np.random.default_rng(6)

    def items(n, kind):
        return _tofu_items(rng, n, kind)

    kinds = ("forget", "retain", "real_authors", "world_facts")
    per_split = {k: items(12, k) for k in kinds}
    retain_forget, original_forget = items(12, "forget"), items(12, "forget")
    agg = aggregate(per_split, retain_forget)
    table = stats.tofu_columns(per_split, retain_forget=retain_forget, original_forget=original_forget)
    for name, statistic in stats.TOFU_STATISTICS.items():
        expected = agg["log10_forget_quality" if name == "log10_forget_quality" else name]
        assert statistic(table) == pytest.approx(expected, rel=1e-12), name
    forget = table["forget"]
    assert np.mean(forget["fact_leak"]) == pytest.approx(agg["fact_leak_rate"])
    assert np.isnan(forget["fact_logprob"][0]) and np.nanmean(forget["fact_logprob"]) == pytest.approx(
        agg["fact_logprob"]
    )
    nll = [it["nll_answer"] for it in per_split["forget"]]
    assert np.allclose(forget["target_drop"], np.subtract(nll, [it["nll_answer"] for it in original_forget]))
    iv = stats.interval([table, table], stats.model_utility_statistic, n_resamples=100)
    assert iv.value == pytest.approx(agg["model_utility"]) and iv.ci_low < iv.value < iv.ci_high
    assert iv.run_std == 0.0 and set(stats.ITEM_MEASURES) <= set(stats.HIGHER_IS_BETTER)
    assert stats.MEM_EPS == MEM_EPS


def _tofu_run(rng, n=12):
    kinds = ("forget", "retain", "real_authors", "world_facts")
    return stats.tofu_columns({k: _tofu_items(rng, n, k) for k in kinds}, retain_forget=_tofu_items(rng, n, "forget"))


def _looped(statistic):
    """The same statistic without its vectorised form: the replicate loop runs."""
    return lambda run: statistic(run)


def test_vectorised_statistics_equal_the_replicate_loop():
    rng = np.random.default_rng(12)
    a = {(seed, pair): _tofu_run(rng) for seed in range(2) for pair in range(2)}
    b = {key: _tofu_run(rng) for key in a}
    ratio = stats.ratio_statistic("num", "den", "q")
    checks = [*stats.TOFU_STATISTICS.items(), ("band drop", stats.band_drop_statistic("high")), ("ratio", ratio)]
    for key in a:
        den = rng.integers(0, 4, 9).astype(float)
        for run in (a[key], b[key]):
            run["q"] = {"num": rng.normal(-2, 1, 9) * den, "den": den}
            run["forget"]["band_high_drop_sum"] = rng.normal(0.3, 1, 12)
            run["forget"]["band_high_count"] = rng.integers(1, 3, 12).astype(float)
    for name, statistic in checks:
        assert hasattr(statistic, "vectorised"), name
        for design in ("runs", "crossed"):
            fast = stats.interval(a, statistic, n_resamples=300, design=design, seed=4)
            slow = stats.interval(a, _looped(statistic), n_resamples=300, design=design, seed=4)
            assert fast.value == slow.value, name
            assert fast.ci_low == pytest.approx(slow.ci_low, rel=1e-12, abs=1e-12), (name, design)
            assert fast.ci_high == pytest.approx(slow.ci_high, rel=1e-12, abs=1e-12), (name, design)
        fast = stats.compare(a, b, statistic, higher_is_better=True, n_resamples=300, design="crossed")
        slow = stats.compare(a, b, _looped(statistic), higher_is_better=True, n_resamples=300, design="crossed")
        assert (fast.difference, fast.verdict) == (slow.difference, slow.verdict), name
        assert (fast.ci_low, fast.ci_high) == pytest.approx((slow.ci_low, slow.ci_high), rel=1e-12, abs=1e-12), name
    # a non-finite item value: the vectorised form declines and the loop gives the interval
    a[(0, 0)]["retain"]["rouge"][3] = np.inf
    fast = stats.interval(a, stats.model_utility_statistic, n_resamples=200)
    assert fast == stats.interval(a, _looped(stats.model_utility_statistic), n_resamples=200)


def test_ratio_and_band_drop_statistics_pool_the_questions():
    # question 0: two candidates in the band, question 1: none, question 2: one
    drop_sum, count = np.array([1.0, 0.0, 4.0]), np.array([2.0, 0.0, 1.0])
    table = {"forget": {"band_high_drop_sum": drop_sum, "band_high_count": count}}
    assert stats.band_drop_statistic("high")(table) == pytest.approx(5.0 / 3.0)  # pooled, not a mean of means
    assert math.isnan(
        stats.ratio_statistic("band_high_drop_sum", "band_high_count")(
            {"forget": {"band_high_drop_sum": np.zeros(2), "band_high_count": np.zeros(2)}}
        )
    )
    iv = stats.interval([table], stats.band_drop_statistic("high"), n_resamples=500)
    assert iv.value == pytest.approx(5.0 / 3.0) and 0.5 - 1e-12 <= iv.ci_low < iv.value < iv.ci_high <= 4.0 + 1e-12
    assert stats.HIGHER_IS_BETTER["high_band_drop"] is True


def test_memoised_ks_pvalue_equals_scipy():
    rng = np.random.default_rng(11)
    for n, m in ((12, 12), (12, 9), (40, 40), (7, 30)):
        for _ in range(20):
            a, b = rng.integers(0, 6, n).astype(float), rng.normal(2.5, 2, m).round(0)  # ties within and across
            assert stats.ks_pvalue(a, b) == scipy.stats.ks_2samp(a, b).pvalue
    a = np.array([np.inf, 0.5, 2.0, np.inf])
    assert stats.ks_pvalue(a, [0.1, 0.2, np.inf]) == scipy.stats.ks_2samp(a, [0.1, 0.2, np.inf]).pvalue


# --------------------------------------------------------------------------------------------- edge cases
def test_same_seed_same_interval_and_another_seed_another():
    rng = np.random.default_rng(7)
    x = rng.normal(size=(4, 25))
    assert stats.interval(x, seed=3) == stats.interval(x, seed=3)
    assert stats.interval(x, seed=3) != stats.interval(x, seed=4)
    runs = _split_runs(rng)
    first = stats.interval(runs, _hmean_of_split_means, n_resamples=100, seed=9)
    assert first == stats.interval(runs, _hmean_of_split_means, n_resamples=100, seed=9)


def test_nan_items_are_dropped_from_every_run_and_both_methods():
    rng = np.random.default_rng(8)
    a, b = rng.normal(size=(3, 20)), rng.normal(size=(3, 20))
    a_nan, b_nan = a.copy(), b.copy()
    a_nan[1, 4] = np.nan  # an item missing in one run of A
    b_nan[:, 9] = np.nan  # an item without annotation in B
    keep = np.setdiff1d(np.arange(20), [4, 9])
    assert stats.interval(a_nan) == stats.interval(a[:, np.setdiff1d(np.arange(20), [4])])
    assert stats.compare(a_nan, b_nan, higher_is_better=True) == stats.compare(
        a[:, keep], b[:, keep], higher_is_better=True
    )
    leaks = [{"fact_leak": True}, {"fact_leak": None}, {"fact_leak": False}, {}]
    assert np.array_equal(stats.item_values(leaks, "fact_leak"), [1.0, np.nan, 0.0, np.nan], equal_nan=True)
    assert stats.item_matrix([leaks, leaks], "fact_leak").shape == (2, 4)
    assert stats.interval(stats.item_matrix([leaks, leaks], "fact_leak")).n_items == 2


def test_degenerate_cases():
    one_item = stats.interval(np.array([[0.3], [0.5]]))
    assert one_item.value == pytest.approx(0.4) and math.isnan(one_item.ci_low) and math.isnan(one_item.ci_high)
    assert stats.compare([[0.3]], [[0.1]], higher_is_better=True).verdict == "n/a"
    constant = stats.interval(np.full((3, 10), 0.25))
    assert constant.ci_low == constant.value == constant.ci_high == 0.25 and constant.run_std == 0.0
    empty = stats.interval(np.full((2, 5), np.nan))
    assert empty.n_items == 0 and math.isnan(empty.value) and math.isnan(empty.ci_low)
    one_run = stats.interval(np.arange(10.0))
    assert one_run.n_runs == 1 and one_run.ci_low < 4.5 < one_run.ci_high
    logprobs = np.array([[-np.inf, -1.0, -2.0, -3.0, -1.5, -2.5]])
    with_inf = stats.interval(logprobs)
    assert with_inf.value == -np.inf and with_inf.ci_low == -np.inf and math.isfinite(with_inf.ci_high)
    both_inf = stats.compare(logprobs, logprobs - 1.0, higher_is_better=False)  # −inf − (−inf): item 0 dropped
    assert both_inf.n_items == 5 and both_inf.difference == 1.0 and both_inf.verdict == "worse"
    failing = stats.interval(
        [{"x": np.arange(5.0)}], lambda run: float("nan") if run["x"].min() > 0 else 1.0, n_resamples=200
    )
    assert failing.value == 1.0 and math.isnan(failing.ci_low)  # most replicates undefined: no interval
    with pytest.raises(ValueError, match="same items"):
        stats.interval([np.zeros(3), np.zeros(4)])
    with pytest.raises(ValueError, match="same items"):
        stats.interval([{"x": np.zeros(3)}, {"x": np.zeros(4)}], lambda run: 0.0)


def test_crossed_design_keeps_the_pair_effect_shared():
    rng = np.random.default_rng(10)
    keys = [(seed, pair) for pair in range(3) for seed in range(3)]
    pair_effect = {p: rng.normal(0, 1.0) for p in range(3)}
    x = {k: pair_effect[k[1]] + rng.normal(0, 0.2, 30) for k in keys}
    cells = stats.interval(x)
    crossed = stats.interval(x, design="crossed")
    assert crossed.value == cells.value
    assert crossed.ci_high - crossed.ci_low > 1.3 * (cells.ci_high - cells.ci_low)
    with pytest.raises(ValueError, match="every unlearning seed on every pair seed"):
        stats.interval({k: v for k, v in x.items() if k != (0, 0)}, design="crossed")
    with pytest.raises(ValueError, match="seed, pair_seed"):
        stats.interval(list(x.values()), design="crossed")
    with pytest.raises(ValueError, match="unknown design"):
        stats.interval(x, design="items")


# --------------------------------------------------------------------------------------------- output
def test_verdict_csv_rows_and_table_cells():
    a, b = _correlated(0.2)
    result = stats.compare(a, b, higher_is_better=False)
    rows = [
        stats.verdict_row(stats.comparison_label("bs_t", "ga_scaled"), "fact_leak", stats.setting_label(), result),
        stats.verdict_row(
            "bs_s \u2212 npo",
            "model_utility",
            stats.setting_label("target_drop", 0.81234),
            stats.Comparison(float("nan"), float("nan"), float("nan"), 0, 0, "n/a"),
        ),
    ]
    text = stats.verdict_csv(rows)
    parsed = list(csv.reader(io.StringIO(text)))
    assert parsed[0] == [
        "comparison",
        "measure",
        "setting",
        "difference",
        "ci_low",
        "ci_high",
        "n_items",
        "n_seeds",
        "verdict",
    ]
    assert parsed[1][:3] == ["bs_t \u2212 ga_scaled", "fact_leak", "end"] and parsed[1][6:] == ["50", "3", "worse"]
    assert float(parsed[1][3]) == pytest.approx(result.difference, rel=1e-5)
    assert parsed[2][2] == "matched:target_drop@0.8123" and parsed[2][3:6] == ["", "", ""]
    assert stats.format_interval(0.51234, 0.4711, 0.55349) == "0.512 [0.471, 0.553]"
    assert stats.format_interval(None) == stats.format_interval(float("nan"), 0.1, 0.2) == "\u2013"
    assert stats.format_interval(0.5, float("nan"), float("nan")) == "0.500 [\u2013, \u2013]"
    assert stats.format_interval(-12.3, -1e-5, 2e5) == "-12.300 [-1.00e-05, 2.00e+05]"
    assert stats.format_result(stats.Interval(0.25, 0.2, 0.3, 10, 1, float("nan"))) == "0.250 [0.200, 0.300]"
    assert stats.format_result(None) == "\u2013"
