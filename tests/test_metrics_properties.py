"""Property tests of the metric math (docs/theory.md §6): truth ratio, forget quality, model utility, ES/EM, Mem."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bs_ref.metrics import leakage, paper
from bs_ref.metrics import scores as tofu

nll = st.floats(min_value=0.0, max_value=20.0, allow_nan=False)
perturbed = st.lists(nll, min_size=1, max_size=6)
# Truth ratios exp(k / 8) on an integer grid: ties survive any monotone transform exactly.
ratio_samples = st.lists(st.integers(-40, 40), min_size=1, max_size=60).map(lambda k: np.exp(np.array(k) / 8.0))
unit = st.floats(min_value=0.0, max_value=1.0, allow_nan=False)
component = st.one_of(st.just(0.0), st.floats(min_value=1e-6, max_value=1.0))  # no subnormals: 1/x overflows


@given(ratio_samples)
def test_forget_quality_of_identical_samples_is_one(r):
    assert tofu.forget_quality(r, r)["forget_quality"] == pytest.approx(1.0)


@pytest.mark.filterwarnings("ignore:ks_2samp. Exact calculation unsuccessful")
@given(ratio_samples, ratio_samples)
def test_forget_quality_invariant_under_inverse_and_log(a, b):
    p = tofu.forget_quality(a, b)["forget_quality"]
    assert tofu.forget_quality(1.0 / a, 1.0 / b)["forget_quality"] == pytest.approx(p, rel=1e-9, abs=1e-300)
    assert tofu.forget_quality(np.log(a), np.log(b))["forget_quality"] == pytest.approx(p, rel=1e-9, abs=1e-300)


@given(nll, perturbed)
def test_forget_truth_ratio_score_in_unit_interval(para, pert):
    for convention in tofu.CONVENTIONS:
        r = tofu.truth_ratio(para, pert, convention)
        score = float(tofu.truth_ratio_score(r, "forget"))
        assert 0.0 < score <= 1.0
        assert 0.0 <= float(tofu.truth_ratio_score(r, "retain")) < 1.0


@given(nll, perturbed)
def test_geometric_truth_ratio_at_most_arithmetic(para, pert):
    geometric = tofu.truth_ratio(para, pert, "tofu")
    arithmetic = tofu.truth_ratio(para, pert, "arithmetic")
    assert geometric <= arithmetic * (1 + 1e-12)
    if len(set(pert)) == 1:
        assert geometric == pytest.approx(arithmetic, rel=1e-12)


def test_truth_ratio_hand_value():
    # P(ã) = e^-1, P(â) = e^-2 and e^-4: geometric R = e^-3 / e^-1, arithmetic R = (e^-2 + e^-4)/2 / e^-1.
    assert tofu.truth_ratio(1.0, [2.0, 4.0], "tofu") == pytest.approx(math.exp(-2.0))
    assert tofu.truth_ratio(1.0, [2.0, 4.0], "arithmetic") == pytest.approx((math.exp(-1) + math.exp(-3)) / 2)


@given(st.lists(component, min_size=9, max_size=9))
def test_model_utility_is_a_harmonic_mean(values):
    names = [f"{s}_{m}" for s in tofu.UTILITY_SPLITS for m in tofu.UTILITY_METRICS]
    mu = tofu.model_utility(dict(zip(names, values)))
    assert mu <= np.mean(values) + 1e-12
    if min(values) == 0.0:
        assert mu == 0.0
    else:
        assert mu == pytest.approx(9 / sum(1 / v for v in values))


def test_model_utility_zero_component_and_missing():
    names = [f"{s}_{m}" for s in tofu.UTILITY_SPLITS for m in tofu.UTILITY_METRICS]
    assert tofu.model_utility({n: (0.0 if i == 4 else 0.9) for i, n in enumerate(names)}) == 0.0
    with pytest.raises(ValueError, match="missing"):
        tofu.model_utility({n: 0.5 for n in names[:8]})


@given(nll, perturbed)
def test_real_author_prob_is_a_normalised_share(gt, pert):
    p = tofu.answer_prob(gt, pert, "real_authors")
    expected = math.exp(-gt) / (math.exp(-gt) + sum(math.exp(-x) for x in pert))
    assert p == pytest.approx(expected, rel=1e-9, abs=1e-300)
    assert tofu.answer_prob(gt, pert, "retain") == pytest.approx(math.exp(-gt))


@given(st.lists(st.booleans(), min_size=1, max_size=30))
def test_extraction_strength_definition(matches):
    es, em = paper.extraction_strength(matches), paper.exact_memorisation(matches)
    n = len(matches)
    k_star = next(k for k in range(n + 1) if all(matches[k:]))  # smallest suffix start that matches
    assert es == pytest.approx(1 - k_star / n)
    assert em == pytest.approx(sum(matches) / n)
    assert es <= em + 1e-12  # a matching suffix is a subset of the matching tokens


def test_extraction_strength_hand_cases():
    assert paper.extraction_strength([True, False, True, True]) == 0.5
    assert paper.exact_memorisation([True, False, True, True]) == 0.75
    assert paper.extraction_strength([True, True, True, False]) == 0.0
    assert paper.extraction_strength([True] * 5) == 1.0
    with pytest.raises(ValueError, match="empty"):
        paper.extraction_strength([])


@given(unit, unit, unit, unit)
def test_mem_in_unit_interval_and_floored(es, em, pp, trm):
    m = paper.mem(es, em, pp, trm)
    assert paper.MEM_EPS - 1e-15 <= m <= 1.0 + 1e-12
    assert m <= np.mean([1 - es, 1 - em, 1 - pp, 1 - trm]) + paper.MEM_EPS


@given(st.floats(min_value=1e-6, max_value=1e6))
def test_tr_mod_is_correct_share(r):
    assert float(paper.tr_mod(r)) == pytest.approx(1 / (1 + r))


def test_mem_util_agg_hand_values():
    assert paper.mem(0.0, 0.0, 0.0, 0.0) == pytest.approx(1.0)
    assert paper.util(0.5, 1.0) == pytest.approx(2 / 3)
    assert paper.agg(1.0, 2 / 3) == pytest.approx(0.8)
    assert paper.mem(1.0, 0.0, 0.0, 0.0) == pytest.approx(4 / (3 + 1 / paper.MEM_EPS))


def test_fluency_proxy():
    assert paper.fluency_proxy("The author was born in Paris in 1990.") == 1.0
    assert paper.fluency_proxy("") == 0.0
    assert paper.fluency_proxy("the the the the the the the the") < 0.2
    assert paper.fluency_proxy("@@## %% ^^ ~~ @@ ## born") < 0.5
    scores, source = paper.fluency_scores(["fine text here", "x x x x x"], classifier=lambda t: np.ones(len(t)))
    assert scores.tolist() == [1.0, 1.0] and source == "<lambda>"


@given(st.text(min_size=0, max_size=20), st.sampled_from(["Paris", "New York", "1990", "Jean-Luc"]))
def test_contains_fact_ignores_case_and_punctuation(prefix, fact):
    text = f"{prefix} -- {fact.upper()}!"
    assert leakage.contains_fact(text, fact)
    assert leakage.contains_fact(text, fact.lower())


def test_contains_fact_whole_words():
    assert leakage.contains_fact("Born in PARIS, France.", "paris")
    assert not leakage.contains_fact("He lives in Parisville.", "Paris")
    assert not leakage.contains_fact("Born in 19901.", "1990")
    assert leakage.fact_leak_rate(["in Paris", "in Rome"], ["Paris", "Paris"]) == 0.5
    assert leakage.fact_leak_rate([["no", "in Paris"], ["no"]], ["Paris", "Paris"]) == 0.5


# --------------------------------------------------------------------------------------------------
# Defined for any NLL: a collapsed model (NLLs of 1e4, 1e308, inf) is a result, not a crash
# --------------------------------------------------------------------------------------------------

EXTREME = [0.0, 1e-300, 1e-5, 1.0, 30.0, 700.0, 1e4, 1e308, 1.7e308, math.inf]
extreme_nll = st.one_of(st.sampled_from(EXTREME), st.floats(min_value=0.0, max_value=1e308))
extreme_perturbed = st.lists(extreme_nll, min_size=1, max_size=5)
moderate_nll = st.floats(min_value=0.0, max_value=300.0)


def old_truth_ratio(para, pert, convention):
    """The formula before the log-space rewrite (it overflowed): the reference where it gave a number."""
    from scipy.special import logsumexp

    pert = np.asarray(pert, dtype=float)
    with np.errstate(over="raise"):  # an overflowing mean (of [1e308, 1e308]) is an overflow too
        log_p_wrong = logsumexp(-pert) - math.log(pert.size) if convention == "arithmetic" else -pert.mean()
    return float(math.exp(log_p_wrong + float(para)))


def old_answer_prob(gt, pert, kind):
    from scipy.special import logsumexp

    if kind in ("forget", "retain"):
        return float(math.exp(-gt))
    return float(math.exp(-gt - logsumexp(np.concatenate([[-gt], -np.asarray(pert, dtype=float)]))))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the old formulas' own overflow warnings
@given(extreme_nll, extreme_perturbed)
def test_every_metric_is_defined_and_in_range_for_any_nll(para, pert):
    for convention in tofu.CONVENTIONS:
        r = tofu.truth_ratio(para, pert, convention)
        assert 0.0 <= r <= math.inf and not math.isnan(r)
        for kind in tofu.SPLIT_KINDS:
            score = float(tofu.truth_ratio_score(r, kind))
            assert 0.0 <= score <= 1.0
        assert 0.0 <= float(paper.tr_mod(r)) <= 1.0
        try:
            old = old_truth_ratio(para, pert, convention)
        except (OverflowError, FloatingPointError):
            continue
        if not math.isnan(old):
            assert r == old  # bit for bit wherever the old formula gave a number
            if old > 0.0:
                assert float(tofu.truth_ratio_score(r, "forget")) == min(old, 1.0 / old)
    for kind in tofu.SPLIT_KINDS:
        p = tofu.answer_prob(para, pert, kind)
        assert 0.0 <= p <= 1.0
        old = old_answer_prob(para, pert, kind)
        if not math.isnan(old):
            assert p == old
    assert 0.0 <= paper.prob_from_nll(para) <= 1.0
    m = paper.mem(0.5, 0.5, paper.prob_from_nll(para), float(paper.tr_mod(tofu.truth_ratio(para, pert))))
    assert paper.MEM_EPS - 1e-15 <= m <= 1.0


@given(moderate_nll, st.lists(moderate_nll, min_size=1, max_size=5))
def test_log_space_metrics_equal_a_plain_float64_reference_on_ordinary_nlls(para, pert):
    p_c, p_w = np.exp(-para), np.exp(-np.asarray(pert))
    geometric, arithmetic = np.prod(p_w) ** (1 / len(pert)) / p_c, np.mean(p_w) / p_c
    if 1e-250 < np.prod(p_w) and 1e-300 < p_c:  # the naive reference itself underflows beyond this
        assert tofu.truth_ratio(para, pert, "tofu") == pytest.approx(geometric, rel=1e-9)
    if 1e-300 < p_c and np.mean(p_w) > 1e-300:
        assert tofu.truth_ratio(para, pert, "arithmetic") == pytest.approx(arithmetic, rel=1e-9)
    assert tofu.answer_prob(para, pert, "retain") == math.exp(-para)
    if p_c + p_w.sum() > 1e-300:
        assert tofu.answer_prob(para, pert, "world_facts") == pytest.approx(p_c / (p_c + p_w.sum()), rel=1e-9)


def test_the_limits_of_the_truth_ratio_and_prob():
    inf = math.inf
    assert tofu.truth_ratio(inf, [1.0]) == inf and tofu.truth_ratio(1.0, [inf]) == 0.0
    assert tofu.truth_ratio(1e4, [0.0]) == inf and tofu.truth_ratio(0.0, [1e308, 1e308]) == 0.0
    assert tofu.truth_ratio(1e308, [1e308, 1e308]) == 1.0  # the mean of [1e308, 1e308] does not overflow
    for convention in tofu.CONVENTIONS:  # both answers impossible: indistinguishable, as for any equal NLLs
        assert tofu.truth_ratio(inf, [inf, inf], convention) == 1.0
    assert tofu.truth_ratio(inf, [inf, 2.0], "tofu") == 1.0  # geometric mean with a zero: P_w = 0 = P_c
    assert tofu.truth_ratio(inf, [inf, 2.0], "arithmetic") == inf  # P_w = e^-2 / 2 > 0 = P_c
    assert tofu.truth_ratio_score(np.array([0.0, inf, 1.0]), "forget").tolist() == [0.0, 0.0, 1.0]
    assert tofu.truth_ratio_score(np.array([0.0, inf, 1.0]), "retain").tolist() == [1.0, 0.0, 0.0]
    assert float(paper.tr_mod(inf)) == 0.0 and float(paper.tr_mod(0.0)) == 1.0
    assert tofu.answer_prob(inf, [], "forget") == 0.0 and tofu.answer_prob(1e308, [], "retain") == 0.0
    assert tofu.answer_prob(inf, [1.0, 2.0], "real_authors") == 0.0
    assert tofu.answer_prob(1.0, [inf, inf], "real_authors") == 1.0
    assert tofu.answer_prob(inf, [inf, inf], "real_authors") == pytest.approx(1 / 3)


@pytest.mark.parametrize(
    "call",
    [
        lambda: tofu.truth_ratio(math.nan, [1.0]),
        lambda: tofu.truth_ratio(1.0, [2.0, math.nan], "arithmetic"),
        lambda: tofu.truth_ratio(-math.inf, [1.0]),
        lambda: tofu.answer_prob(math.nan, [1.0], "forget"),
        lambda: tofu.answer_prob(1.0, [math.nan], "world_facts"),
        lambda: tofu.truth_ratio_score(math.nan, "forget"),
        lambda: paper.tr_mod(np.array([1.0, math.nan])),
        lambda: paper.prob_from_nll(math.nan),
        lambda: leakage.summarise([{"fact_logprob": math.nan}]),
    ],
)
def test_nan_nlls_raise_a_clear_error(call):
    with pytest.raises(ValueError, match="NaN"):
        call()


def collapsed_item(i, nll_answer, nll_para, nll_pert, fact_logprob):
    return {
        "index": i,
        "nll_answer": nll_answer,
        "nll_paraphrased": nll_para,
        "nll_perturbed": nll_pert,
        "rougeL_recall": 0.0,
        "es": 0.0,
        "em": 0.0,
        "generation": "",
        "fact_leak": False,
        "fact_logprob": fact_logprob,
    }


@pytest.mark.filterwarnings("ignore:ks_2samp. Exact calculation unsuccessful")
@given(st.lists(st.tuples(extreme_nll, extreme_nll, extreme_perturbed), min_size=1, max_size=6))
def test_aggregate_of_a_collapsed_model_is_a_result(rows):
    items = [collapsed_item(i, a, p, q, -a) for i, (a, p, q) in enumerate(rows)]
    out = tofu.aggregate({kind: items for kind in tofu.SPLIT_KINDS}, items)
    bounded = ["model_utility", "forget_quality", "para_prob", "tr_mod", "mem", "util", "agg", "fluency"]
    bounded += [f"{s}_{m}" for s in tofu.SPLIT_KINDS for m in tofu.UTILITY_METRICS]
    for name in bounded:
        assert 0.0 <= out[name] <= 1.0, name
    assert out["fact_logprob"] <= 0.0 and not math.isnan(out["fact_logprob"])


def test_leakage_log_prob_means_do_not_overflow():
    assert leakage.summarise([{"fact_logprob": -1e308}, {"fact_logprob": -1e308}])["fact_logprob"] == -1e308
    assert leakage.summarise([{"fact_logprob": -math.inf}, {"fact_logprob": -1.0}])["fact_logprob"] == -math.inf
    assert paper.stable_mean([1.0, 2.0, 4.0]) == float(np.mean([1.0, 2.0, 4.0]))
