"""bs_ref.protocol.uncertainty: the intervals of summary.csv and matched.csv, and verdict.csv, from what a run
directory stores (eval.json, the per-item values of every curve point), on synthetic runs.

- which comparisons are made: BS-T with GA×(1−λ) of its own λ (grid labels too), BS-S with its base loss, BS-S
  and BS-T with NPO, every method with GA; a comparison whose methods are absent is left out;
- summary.csv: the point values are the ones of earlier versions; a run's row gets its items' interval, a
  method's mean row the interval over its runs (crossed design when seeds × pair seeds is complete);
- matched forgetting: each item is read off with the weight found on the aggregate curve, so the level holds
  exactly on all items, and the per-item read-off agrees with the aggregate read-off of matched.csv;
- verdict.csv: exactly its columns, a clear effect gets its verdict, comparisons at the end and at each level;
- results without per-item values (an older run directory) or without belief bands keep their values and get
  empty bounds.
"""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest

from bs_ref.metrics.scores import EVAL_FORMAT, aggregate
from bs_ref.protocol import cli, report, stats, uncertainty
from bs_ref.protocol.matched import given_levels, interpolate_at_level
from bs_ref.protocol.store import REFERENCE_METHODS, RunDir
from bs_ref.protocol.uncertainty import Context

KINDS = ("forget", "retain", "real_authors", "world_facts")
N = 10


def _items(rng, kind, leak=0.5, nll_shift=0.0):
    out = []
    for i in range(N):
        item = {
            "index": i,
            "nll_answer": float(rng.uniform(0.2, 3) + nll_shift),
            "nll_perturbed": list(rng.uniform(0.5, 4, 3)),
            "rougeL_recall": float(rng.uniform()),
            "generation": "a fluent answer about the author",
        }
        item["nll_paraphrased"] = float(rng.uniform(0.2, 3)) if kind in ("forget", "retain") else item["nll_answer"]
        if kind == "forget":
            item.update(
                es=float(rng.uniform()),
                em=float(rng.uniform()),
                fact_leak=bool(rng.random() < leak),
                fact_leak_paraphrased_question=bool(rng.random() < leak),
                fact_leak_any_of_n=bool(rng.random() < leak),
                fact_logprob=float(-rng.uniform(0, 5)),
                nll_heldout=float(rng.uniform(0.5, 3)),
            )
        out.append(item)
    return out


def _point(step, nll, leak, rng, bands=True, retain=None):
    """A curve point with per-item values (as Evaluator.curve_point stores them)."""
    forget = {
        "nll_answer": list(nll),
        "fact_leak": list(leak),
        "fact_leak_paraphrased_question": list(leak),
        "prob": list(np.exp(-nll)),
        "fluency": list(rng.uniform(0.5, 1, N)),
        "truth_ratio": list(rng.uniform(0.2, 2, N)),
    }
    for column in ("rouge", "tr_score", "es", "em", "para_prob", "tr_mod"):
        forget[column] = list(rng.uniform(0, 1, N))
    if retain is not None:
        forget["retain_truth_ratio"] = list(retain)
    if bands:
        count = np.array([2, 0, 1, 3, 2, 1, 0, 2, 1, 1])
        forget["band_high_sum"] = list(-(1.0 + 0.1 * step) * count)
        forget["band_high_count"] = list(count)
    utility = {
        k: {
            "prob": list(rng.uniform(0.3, 1, 4)),
            "rouge": list(rng.uniform(0.3, 1, 4)),
            "tr_score": list(rng.uniform(0.3, 1, 4)),
        }
        for k in KINDS[1:]
    }
    point = {
        "step": step,
        "target_logprob": float(-np.mean(nll)),
        "fact_leak": float(np.mean(leak)),
        "model_utility": 0.8,
        "mem": 0.3,
        "log10_forget_quality": -1.0,
        "items": {"forget": forget, **utility},
    }
    if bands:
        point["band_high_logprob"] = float(np.sum(forget["band_high_sum"]) / np.sum(count))
    return point


def _curve(rng, speed, start_nll, bands=True):
    """Target NLL rising by ``speed`` per evaluation (steps 0, 3, 6), fact leak falling."""
    retain = rng.uniform(0.2, 2, N)
    points = []
    for i, step in enumerate((0, 3, 6)):
        nll = start_nll + speed * i * rng.uniform(0.5, 1.5, N)
        leak = (rng.random(N) < max(0.0, 1.0 - 0.4 * speed * i)).astype(float)
        points.append(_point(step, nll, leak, rng, bands, retain if i == 0 else None))
    return points


def _write_run(
    tmp_path, methods=("ga", "npo", "ga_scaled", "bs_t", "bs_s"), seeds=(0, 1), pairs=(0, 1), items=True, bands=True
):
    rng = np.random.default_rng(0)
    store = RunDir(tmp_path / "run", {})
    retain_forget, results = {}, []
    speed = {"ga": 1.0, "npo": 0.8, "ga_scaled": 0.6, "bs_t": 0.62, "bs_s": 0.9}
    leak = {"ga": 0.5, "npo": 0.6, "ga_scaled": 0.7, "bs_t": 0.7, "bs_s": 0.05}  # bs_s leaks far less
    for pair in pairs:
        retain_forget[pair] = _items(rng, "forget", 0.0)
        start_nll = rng.uniform(0.2, 1.0, N)
        for label in methods:
            for seed in seeds:
                per_split = {k: _items(rng, k, leak[label]) for k in KINDS}
                agg = aggregate(per_split, retain_forget[pair])
                metrics = {
                    "fact_leak": agg["fact_leak_rate"],
                    "model_utility": agg["model_utility"],
                    "mem": agg["mem"],
                    "agg": agg["agg"],
                    "forget_rougeL": agg["forget_rouge"],
                    "log10_forget_quality": agg["log10_forget_quality"],
                }
                curve = _curve(rng, speed[label], start_nll, bands)
                if not items:
                    curve = [{k: v for k, v in p.items() if k != "items"} for p in curve]
                metrics["target_logprob_drop"] = curve[0]["target_logprob"] - curve[-1]["target_logprob"]
                result = {"method": label, "seed": seed, "pair_seed": pair, "metrics": metrics, "curve": curve}
                payload = {"format": EVAL_FORMAT, "convention": "tofu", "meta": {}, "splits": per_split}
                store.save_result(label, seed, result, payload if items else None, pair=pair)
                results.append(store.load_result(label, seed, pair))
    plan, _ = cli.resolve_methods(list(methods), {}, REFERENCE_METHODS)
    ctx = Context(retain_forget=retain_forget, methods=dict(plan), pair_seeds=pairs, n_resamples=400)
    info = report.RunInfo("python experiments/tofu.py", "Data: test.", True, given_levels(None, None))
    written = report.write_report(store, results, list(seeds), info, context=ctx)
    return store, results, written, ctx


def _csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_comparisons_pair_each_method_with_its_control():
    labels = [
        "original",
        "retrain",
        "ga",
        "npo",
        "ga_scaled",
        "ga_scaled:lam=0.6",
        "bs_t",
        "bs_t:lam=0.6",
        "bs_t:lam=0.6,temperature=2",
        "bs_t:temperature=4",
        "bs_s",
        "bs_s:base=ga",
    ]
    plan, problems = cli.resolve_methods(labels, {}, REFERENCE_METHODS)
    assert not problems
    ctx = Context(methods=dict(plan))
    pairs = uncertainty.comparisons([label for label, _ in plan], ctx)
    assert len(pairs) == len(set(pairs))
    for a, b in [
        ("bs_t", "ga_scaled"),
        ("bs_t:lam=0.6", "ga_scaled:lam=0.6"),
        ("bs_t:lam=0.6,temperature=2", "ga_scaled:lam=0.6"),
        ("bs_t:temperature=4", "ga_scaled"),
        ("bs_s", "bs_t"),
        ("bs_s:base=ga", "ga"),
        ("bs_s", "npo"),
        ("bs_s:base=ga", "npo"),
        ("bs_t", "npo"),
        ("npo", "ga"),
        ("ga_scaled:lam=0.6", "ga"),
        ("bs_s:base=ga", "bs_s"),
    ]:
        assert (a, b) in pairs, (a, b)
    assert not any(a in REFERENCE_METHODS or b in REFERENCE_METHODS for a, b in pairs)
    assert pairs.index(("bs_t", "ga_scaled")) < pairs.index(("bs_s", "bs_t")) < pairs.index(("bs_s", "npo"))
    # a run-wide --lam: the plain labels carry it, and BS-T is still paired with the GA×(1−λ) of that λ
    plan, _ = cli.resolve_methods(["ga_scaled", "bs_t", "ga_scaled:lam=0.2"], {"lam": 0.4}, REFERENCE_METHODS)
    assert uncertainty.comparisons([label for label, _ in plan], Context(methods=dict(plan))) == [("bs_t", "ga_scaled")]
    # methods that are not in the run: no comparison, no error
    assert uncertainty.comparisons(["ga", "bs_t"], Context()) == [("bs_t", "ga")]
    assert uncertainty.comparisons(["bs_s", "npo"], Context()) == [("bs_s", "npo")]  # no base bs_t: not compared
    assert uncertainty.comparisons(["original"], Context()) == []


def test_summary_intervals_keep_the_values_and_use_the_runs(tmp_path):
    store, results, written, ctx = _write_run(tmp_path)
    rows = _csv(store.path("summary.csv"))
    header = list(rows[0])
    assert header[:19] == [
        "method",
        "seed",
        "forget_quality",
        "log10_forget_quality",
        "model_utility",
        "mem",
        "util",
        "agg",
        "fact_leak",
        "fact_leak_paraphrased_question",
        "fact_leak_any_of_n",
        "fact_logprob",
        "heldout_prob",
        "forget_prob",
        "forget_rougeL",
        "forget_truth_ratio",
        "target_logprob_drop",
        "steps",
        "wall_s",
    ]
    assert header[19:22] == ["pair_seed", "high_band_drop", "n_runs"] and "agg_ci_low" in header
    runs = uncertainty.load_runs(store, results, ctx)
    one = next(r for r in rows if r["method"] == "bs_t" and r["seed"] == "1" and r["pair_seed"] == "1")
    result = next(r for r in results if r["method"] == "bs_t" and r["seed"] == 1 and r["pair_seed"] == 1)
    assert float(one["fact_leak"]) == pytest.approx(result["metrics"]["fact_leak"], rel=1e-5)  # the stored value
    leak = runs["bs_t"][(1, 1)].end()["forget"]["fact_leak"]
    expected = stats.interval(leak, n_resamples=400)
    assert (float(one["fact_leak_ci_low"]), float(one["fact_leak_ci_high"])) == pytest.approx(
        (expected.ci_low, expected.ci_high), rel=1e-5
    )
    mean = next(r for r in rows if r["method"] == "bs_t" and r["seed"] == "mean")
    assert mean["n_runs"] == "4" and mean["pair_seed"] == ""
    crossed = stats.interval(
        {k: r.end()["forget"]["fact_leak"] for k, r in runs["bs_t"].items()}, design="crossed", n_resamples=400
    )
    assert float(mean["fact_leak_ci_low"]) == pytest.approx(crossed.ci_low, rel=1e-5)
    assert float(mean["fact_leak"]) == pytest.approx(crossed.value, rel=1e-5)
    for row in rows:
        if row["seed"] == "std":
            assert row["agg_ci_low"] == "" and row["fact_leak_ci_high"] == ""
            continue
        for name in ("model_utility", "agg", "fact_leak", "target_logprob_drop", "high_band_drop"):
            low, high = float(row[f"{name}_ci_low"]), float(row[f"{name}_ci_high"])
            assert low <= high, (row["method"], row["seed"], name)
    # the high-band drop: start − end of the pooled band mean, and its interval resamples the questions
    drop = float(one["high_band_drop"])
    assert drop == pytest.approx(result["curve"][0]["band_high_logprob"] - result["curve"][-1]["band_high_logprob"])
    assert float(one["high_band_drop_ci_low"]) == pytest.approx(drop, abs=1e-9)  # every question fell the same
    table = store.path("table.md").read_text()
    assert table.startswith("# TOFU unlearning results\n\n## Verdicts: paired comparisons at 95 %")
    assert "| bs_t | 4 | " in table and "[" in table.split("| bs_t | 4 | ")[1].splitlines()[0]


def test_verdict_csv_has_its_columns_and_a_clear_effect_gets_its_verdict(tmp_path):
    store, _, written, _ = _write_run(tmp_path)
    text = store.path("verdict.csv").read_text()
    assert text.splitlines()[0] == ",".join(stats.VERDICT_COLUMNS)
    rows = _csv(store.path("verdict.csv"))
    assert {r["verdict"] for r in rows} <= set(stats.VERDICTS)
    end = {(r["comparison"], r["measure"]): r for r in rows if r["setting"] == "end"}
    leak = end[("bs_s \u2212 npo", "fact_leak")]  # bs_s leaks at 5 %, npo at 60 %: clearly better
    assert leak["verdict"] == "better" and float(leak["ci_high"]) < 0 and leak["n_seeds"] == "4"
    assert int(leak["n_items"]) == N
    for comparison in (
        "bs_t \u2212 ga_scaled",
        "bs_s \u2212 bs_t",
        "bs_s \u2212 npo",
        "bs_t \u2212 npo",
        "npo \u2212 ga",
        "bs_s \u2212 ga",
    ):
        measures = {m for c, m in end if c == comparison}
        assert measures == set(uncertainty.VERDICT_MEASURES), comparison
    matched = [r for r in rows if r["setting"].startswith("matched:")]
    assert {r["setting"].split("@")[0] for r in matched} == {"matched:target_drop", "matched:fact_unleaked"}
    assert not any(
        r["measure"] in ("target_logprob_drop", "fact_leak_any_of_n")
        for r in matched
        if r["setting"].startswith("matched:target_drop")
    )
    assert written["verdicts"] and "conditional on the level" in store.path("table.md").read_text()


def test_matched_items_are_read_off_with_the_weight_of_the_aggregate_curve(tmp_path):
    store, results, written, ctx = _write_run(tmp_path, methods=("ga", "bs_t"), seeds=(0,), pairs=(0,))
    runs = uncertainty.load_runs(store, results, ctx)
    level = next(r["level"] for r in written["matched"] if r["measure"] == "target_drop")
    run = runs["ga"][(0, 0)]
    tables = run.matched("target_drop", level)
    # the level holds exactly on all items: the mean per-item drop at the read-off is the level
    assert np.mean(tables["curve_forget"]["target_drop"]) == pytest.approx(level, rel=1e-12)
    # item means read off item by item = the aggregate read off the curve (matched.csv's value)
    aggregate_leak = interpolate_at_level(run.curve, "target_drop", level, ["fact_leak"])["fact_leak"]
    assert np.mean(tables["forget"]["fact_leak"]) == pytest.approx(aggregate_leak, rel=1e-12)
    row = next(r for r in written["matched"] if r["method"] == "ga" and r["measure"] == "target_drop")
    assert row["fact_leak"] == pytest.approx(aggregate_leak) and row["fact_leak_ci_low"] <= row["fact_leak"]
    assert row["fact_leak_ci_high"] >= row["fact_leak"] and row["target_change"] == pytest.approx(-level)
    assert run.matched("target_drop", 1e6) is None  # never reached


def test_results_without_items_or_bands_keep_their_values_and_get_empty_bounds(tmp_path):
    store, _, written, _ = _write_run(tmp_path / "old", methods=("ga", "bs_t"), seeds=(0,), pairs=(0,), items=False)
    rows = _csv(store.path("summary.csv"))
    for row in rows:
        assert row["fact_leak"] != "" and row["fact_leak_ci_low"] == row["agg_ci_high"] == ""
    assert store.path("verdict.csv").read_text().splitlines() == [",".join(stats.VERDICT_COLUMNS)]
    assert "No verdict: the results lack their per-item values" in store.path("table.md").read_text()
    store, _, _, _ = _write_run(tmp_path / "nobands", methods=("ga", "bs_t"), seeds=(0,), pairs=(0,), bands=False)
    rows = _csv(store.path("summary.csv"))
    assert all(r["high_band_drop"] == r["high_band_drop_ci_low"] == "" for r in rows)
    verdicts = _csv(store.path("verdict.csv"))
    assert verdicts and not any(r["measure"] == "high_band_drop" for r in verdicts)


def test_design_is_crossed_only_for_a_complete_grid_of_several_seeds_and_pairs():
    assert uncertainty.design_of([(0, 0), (1, 0), (0, 1), (1, 1)]) == "crossed"
    assert uncertainty.design_of([(0, 0), (1, 0), (0, 1)]) == "runs"  # a run diverged: incomplete
    assert uncertainty.design_of([(0, 0), (1, 0), (2, 0)]) == "runs"  # one pair
    assert uncertainty.design_of([(None, 0), (None, 1)]) == "runs"  # a reference method, one row per pair
    assert math.isnan(stats.Comparison(float("nan"), 0, 0, 0, 0, "n/a").difference)
