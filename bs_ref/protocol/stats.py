"""Uncertainty on every number, paired comparisons of methods, and verdicts (docs/theory.md §10).

Data. One measure of one method is evaluated in several *runs*, one per seed cell (unlearning seed, model-pair
seed), and every run is scored on the SAME items (the forget, retain, real-authors and world-facts questions are
shared by all runs and all methods). A run is either a vector of per-item values (item-mean measures: fact leak,
target log-prob drop, ...) or a mapping ``split -> items`` (aggregate measures: MU, FQ, Mem, Agg), where items are
a list of item dicts (``bs_ref.metrics.scores.evaluate_split``), an array with items on axis 0, or a column table
``{column: array with items on axis 0}`` (``tofu_columns``).

Point estimate. The mean over runs, with equal weight, of each run's statistic on all items: its item mean, or
for an aggregate measure the aggregate recomputed from the run's per-item values (FQ, MU, Mem and Agg are
re-aggregated, never averaged over items).

Interval. A 95 % percentile interval from a two-level nonparametric bootstrap (2,000 replicates by default,
``numpy.random.Generator`` seeded by ``seed``, so the same inputs and seed give the same interval). Each
replicate (1) resamples the runs with replacement and (2) resamples the items with replacement, once per split,
and applies that one item resample to every run of the replicate — the items are one shared set, so an item's
effect is common to all runs and must move together in a resample. A reference model's items ride with the
split they answer: a key ``"forget@retain_model"`` (or a column of the forget table) gets the ``"forget"``
draw, so FQ compares each resampled question with the retain model's answer to the same question. The
statistic is recomputed on every resampled run and averaged over the resampled runs (a run drawn twice counts
twice); the interval is the 2.5th and 97.5th percentiles of the replicates (linear interpolation; the outer
nearest ranks when a replicate is ±inf). With
``design="crossed"`` and runs keyed by ``(seed, pair_seed)`` on a complete grid, step (1) instead resamples the
unlearning seeds and the pair seeds independently and takes every cell of the two draws (weight = product of
the two multiplicities), which keeps the pair effect shared by all unlearning seeds of a pair; use it once there
are several pair seeds, since resampling cells as if independent understates a pair effect.

Speed. The TOFU statistics and ``ratio_statistic`` carry a vectorised form (``statistic.vectorised``): every
replicate at once from the same item draws, a resampled mean being one matrix product of multiplicities and
values (FQ: the KS statistic of every replicate from ECDF counts, then the memoised p-value). The replicates
equal the loop's up to the order of additions (tested); data it does not take (a non-finite item value, items
as dicts) run the loop. Any other statistic runs the loop.

Why percentile and not BCa. BCa corrects the percentile interval with a bias term (the share of replicates
below the point estimate) and an acceleration estimated by a jackknife. In a two-level design there is no
single jackknife (over runs? items? both?), and with the 1–9 runs of an experiment the run resample takes only
a handful of distinct values, so both corrections would be estimated from a lumpy distribution. The percentile
interval needs neither, respects monotone transformations (log10 FQ), and for one run it is the method of
``scipy.stats.bootstrap(..., method="percentile")``, with the same interval up to Monte-Carlo error (tested).

What the interval covers, and its limits. It covers the variability from drawing other items and other seed
cells, conditional on the model architecture, the data set and the CPU kernel path (§10 "Floating point"). The
item–run interaction is counted in both levels, which makes the interval conservative when it dominates; with
few runs the run level is under-estimated instead (the bootstrap variance of a mean of R runs is (R−1)/R of the
usual estimate and uses normal rather than Student quantiles), so coverage falls as the run effect grows. Simulated
(normal items, 40 items, 3 runs, item×run noise of half the item SD, 1,000 datasets): 95 % with a run SD of 0.1
item SD, 93 % at 0.2, 85 % at 0.5, 77 % at 1.0; one run without a run effect 95 %; Bernoulli items 96–98 %.
Report ``run_std`` (the spread over seed cells) beside the interval, and add seeds where it is large.

Paired comparisons. ``compare(a, b)`` applies the SAME replicates (the same run draw, the same item draw per
split) to both methods, which must be evaluated on the same items and the same seed cells; the statistic is the
difference A − B (for item means, the mean of the per-item differences), so item and seed effects shared by the
two methods cancel. The verdict at 95 % is ``better`` when the interval excludes 0 in A's favour (above 0 when
higher is better for the measure, below 0 when lower is better), ``worse`` when it excludes 0 against A,
``no difference`` otherwise (an interval touching 0 included), and ``n/a`` when no interval exists.

Missing values and degenerate cases.

- NaN item values (an item without a fact annotation, a None field): the item is dropped from every run before
  resampling — for a comparison, an item missing in any run of A or of B is dropped from both — so every
  replicate uses the same items for every run and both methods; ``n_items`` counts the items kept. ±inf values
  are kept (a fact log-prob of −inf is a result): the statistic is then ±inf; an item on which A and B are the
  same infinity has no difference and is dropped like a NaN.
- Aggregate statistics see all items of every split; the callable handles missing fields itself.
- Replicates whose statistic is NaN (an aggregate undefined on a resample; +inf and −inf in one replicate) are
  discarded; when more than 10 % are, the bounds are NaN.
- One run: only items are resampled (the one-level item bootstrap). One item (or no item) in a split: the item
  variability cannot be estimated, so the value is reported with NaN bounds rather than a zero-width interval.
  Constant data: all replicates equal the value and the interval is [value, value] — a true statement.
- FQ is a p-value, not an estimate of a population quantity: resampled items (duplicates included) tend to
  give a larger KS statistic than the observed one, so the replicates of log10 FQ sit mostly below the point
  and its interval is skewed low. Read it as how far FQ moves when the forget questions are redrawn; FQ
  comparisons remain paired, but state claims with MU, Mem, Agg and the leakage measures.
- A NaN point estimate gives NaN bounds; a NaN bound gives the verdict ``n/a`` and the cell ``value [–, –]``.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy.stats import ks_2samp

from bs_ref.metrics import paper
from bs_ref.metrics.scores import answer_prob, apply_convention, item_ratios, truth_ratio_score

N_RESAMPLES = 2000
CONFIDENCE = 0.95
DESIGNS = ("runs", "crossed")
MEM_EPS = 1e-3
"""The harmonic-mean floor of Mem/Util/Agg, ``bs_ref.metrics.paper.MEM_EPS`` (copied: importing bs_ref.metrics
loads torch, which the statistics never need; a test keeps the two equal)."""
MAX_FAILED_SHARE = 0.10
"""Largest share of replicates an aggregate statistic may leave NaN before the bounds are reported as NaN."""

VERDICTS = ("better", "worse", "no difference", "n/a")
VERDICT_COLUMNS = (
    "comparison",
    "measure",
    "setting",
    "difference",
    "ci_low",
    "ci_high",
    "n_items",
    "n_seeds",
    "verdict",
)
"""Columns of ``verdict.csv`` (``n_seeds``: the number of seed cells, i.e. runs, the comparison used)."""
MINUS = "\u2212"
MISSING = "\u2013"

HIGHER_IS_BETTER = {
    "fact_leak": False,
    "fact_leak_paraphrased_question": False,
    "fact_leak_any_of_n": False,
    "fact_logprob": False,
    "target_logprob_drop": True,
    "high_band_drop": True,
    "model_utility": True,
    "log10_forget_quality": True,
    "forget_quality": True,
    "mem": True,
    "util": True,
    "agg": True,
}
"""Direction of each measure for the verdict: True when a larger value is better (more forgetting or more
utility). Fact leak and the fact's log-prob: lower is better forgetting; drops, MU, FQ, Mem, Util, Agg: higher."""

Statistic = Callable[[dict[str, Any]], float]
"""An aggregate statistic: one run's resampled ``{split: items}`` -> a number."""


@dataclass(frozen=True)
class Interval:
    """A point estimate with its bootstrap interval: ``value`` (mean over runs of the per-run statistic),
    ``ci_low``/``ci_high`` (NaN where no interval exists), the items and runs used, and ``run_std``, the standard
    deviation (ddof 1) of the per-run statistic over runs (NaN for one run): the spread over seed cells."""

    value: float
    ci_low: float
    ci_high: float
    n_items: int
    n_runs: int
    run_std: float


@dataclass(frozen=True)
class Comparison:
    """A paired difference A − B with its interval, the items and runs used, and the verdict for A."""

    difference: float
    ci_low: float
    ci_high: float
    n_items: int
    n_runs: int
    verdict: str


# --------------------------------------------------------------------------------------------- per-item data
def item_values(items: Sequence[Mapping[str, Any]], field: str) -> np.ndarray:
    """One field of a list of item dicts as float64 (bools as 0/1; None, a missing field or a non-number: NaN)."""
    out = np.full(len(items), np.nan)
    for i, item in enumerate(items):
        value = item.get(field)
        if value is None:
            continue
        try:
            out[i] = float(value)
        except (TypeError, ValueError):
            pass
    return out


def item_matrix(runs: Sequence[Sequence[Mapping[str, Any]]], field: str) -> np.ndarray:
    """``item_values`` of every run: shape (n_runs, n_items); the runs must list the same items in the same order."""
    rows = [item_values(items, field) for items in runs]
    if len({r.size for r in rows}) > 1:
        raise ValueError(f"runs have different numbers of items {[r.size for r in rows]}; evaluate the same items")
    return np.stack(rows) if rows else np.zeros((0, 0))


# --------------------------------------------------------------------------------------------- runs and keys
def _split_runs(runs: Any, run_keys: Sequence[Hashable] | None) -> tuple[list, list | None]:
    """(list of runs, their keys or None): a Mapping is {run key: run}; a 2-D array gives its rows; a 1-D array is
    one run; any other sequence is a list of runs (so one ``{split: items}`` run is passed as ``[run]``)."""
    if isinstance(runs, Mapping):
        keys = list(runs)
        return [runs[k] for k in keys], keys
    if isinstance(runs, np.ndarray):
        arr = np.asarray(runs, dtype=float)
        runs = [arr] if arr.ndim == 1 else list(arr)
    else:
        runs = list(runs)
    keys = None if run_keys is None else list(run_keys)
    if keys is not None and len(keys) != len(runs):
        raise ValueError(f"got {len(keys)} run keys for {len(runs)} runs; give one (seed, pair_seed) per run")
    return runs, keys


def _pair_runs(a: Any, b: Any, run_keys: Sequence[Hashable] | None) -> tuple[list, list, list | None]:
    """Align two methods' runs: by key when both are mappings (the common keys, in A's order), else by position."""
    if isinstance(a, Mapping) != isinstance(b, Mapping):
        raise ValueError("pass both methods' runs as mappings {(seed, pair_seed): run} or both as sequences")
    if isinstance(a, Mapping):
        keys = [k for k in a if k in b]
        if not keys:
            raise ValueError(f"the two methods share no run: {sorted(map(str, a))} vs {sorted(map(str, b))}")
        return [a[k] for k in keys], [b[k] for k in keys], keys
    runs_a, keys = _split_runs(a, run_keys)
    runs_b, _ = _split_runs(b, run_keys)
    if len(runs_a) != len(runs_b):
        raise ValueError(f"A has {len(runs_a)} runs and B {len(runs_b)}; a paired comparison needs the same runs")
    return runs_a, runs_b, keys


def _check_design(design: str, keys: list | None, n_runs: int) -> None:
    if design not in DESIGNS:
        raise ValueError(f"unknown design {design!r}; choose one of {DESIGNS}")
    if design == "crossed":
        if keys is None or not all(isinstance(k, tuple) and len(k) == 2 for k in keys):
            raise ValueError("design='crossed' needs runs keyed by (seed, pair_seed) tuples (a mapping or run_keys)")
        seeds, pairs = {k[0] for k in keys}, {k[1] for k in keys}
        if len(set(keys)) != n_runs or n_runs != len(seeds) * len(pairs):
            raise ValueError(
                f"design='crossed' needs every unlearning seed on every pair seed: {n_runs} runs for "
                f"{len(seeds)} seeds x {len(pairs)} pair seeds; use design='runs' for an incomplete grid"
            )


# --------------------------------------------------------------------------------------------- resampling
def _counts(rng: np.random.Generator, n_resamples: int, n: int) -> np.ndarray:
    """Multiplicities (n_resamples, n) of n draws with replacement from range(n), per replicate."""
    draws = rng.integers(0, n, size=(n_resamples, n))
    flat = (draws + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n)


def _run_weights(rng: np.random.Generator, n_resamples: int, keys: list | None, n_runs: int, design: str) -> np.ndarray:
    """Weights (n_resamples, n_runs), each row summing to 1: a run's multiplicity in the replicate's run draw."""
    if design == "runs":
        return _counts(rng, n_resamples, n_runs) / n_runs
    seeds = sorted({k[0] for k in keys}, key=repr)
    pairs = sorted({k[1] for k in keys}, key=repr)
    seed_w = _counts(rng, n_resamples, len(seeds)) / len(seeds)
    pair_w = _counts(rng, n_resamples, len(pairs)) / len(pairs)
    s_of = np.array([seeds.index(k[0]) for k in keys])
    p_of = np.array([pairs.index(k[1]) for k in keys])
    return seed_w[:, s_of] * pair_w[:, p_of]


def _percentiles(replicates: np.ndarray, confidence: float) -> tuple[float, float]:
    alpha = 1.0 - confidence
    q = [100 * alpha / 2, 100 * (1 - alpha / 2)]
    if np.all(np.isfinite(replicates)):
        low, high = np.percentile(replicates, q)
    else:  # ±inf replicates: interpolating between -inf and -inf is NaN; take the outer nearest ranks
        low = np.percentile(replicates, q[0], method="lower")
        high = np.percentile(replicates, q[1], method="higher")
    return float(low), float(high)


def _check_args(n_resamples: int, confidence: float) -> None:
    if int(n_resamples) < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")


def _run_std(values: np.ndarray) -> float:
    return float(np.std(values, ddof=1)) if values.size > 1 and np.all(np.isfinite(values)) else float("nan")


# --------------------------------------------------------------------------------------------- item means
def _as_matrix(runs: list) -> np.ndarray:
    rows = [np.asarray(r, dtype=float) for r in runs]
    if not rows:
        raise ValueError("no runs: pass at least one run of per-item values")
    if any(r.ndim != 1 for r in rows) or len({r.size for r in rows}) > 1:
        raise ValueError(f"each run must be a 1-D array over the same items, got shapes {[r.shape for r in rows]}")
    return np.stack(rows)


def _mean_bootstrap(
    x: np.ndarray, keys: list | None, n_resamples: int, seed: int, confidence: float, design: str
) -> tuple[float, float, float, np.ndarray]:
    """(value, low, high, per-run means) of the mean over runs of item means, NaN items already dropped."""
    n_runs, n_items = x.shape
    per_run = x.mean(axis=1) if n_items else np.full(n_runs, np.nan)
    value = float(per_run.mean())
    if n_items < 2 or math.isnan(value):
        return value, float("nan"), float("nan"), per_run
    if np.all(x == x.flat[0]):  # constant data: every replicate is the value
        return value, value, value, per_run
    rng = np.random.default_rng(seed)
    weights = _run_weights(rng, n_resamples, keys, n_runs, design)
    counts = _counts(rng, n_resamples, n_items).astype(float)
    finite = np.isfinite(x)
    run_means = counts @ np.where(finite, x, 0.0).T / n_items  # (n_resamples, n_runs): means over resampled items
    if not finite.all():  # a drawn ±inf item makes that run's mean ±inf (both: NaN)
        pos, neg = counts @ (x == np.inf).T > 0, counts @ (x == -np.inf).T > 0
        run_means = np.where(pos & neg, np.nan, np.where(pos, np.inf, np.where(neg, -np.inf, run_means)))
    with np.errstate(invalid="ignore"):
        replicates = np.sum(np.where(weights > 0, weights * run_means, 0.0), axis=1)
    replicates = replicates[~np.isnan(replicates)]
    if replicates.size < (1.0 - MAX_FAILED_SHARE) * n_resamples:
        return value, float("nan"), float("nan"), per_run
    low, high = _percentiles(replicates, confidence)
    return value, low, high, per_run


# --------------------------------------------------------------------------------------------- aggregates
def _group(split: str) -> str:
    """The item set a split key is resampled with: the part before '@' ("forget@retain_model" -> "forget")."""
    return split.split("@", 1)[0]


def _length(items: Any) -> int:
    if isinstance(items, Mapping):
        lengths = {len(np.asarray(v)) for v in items.values()}
        if len(lengths) != 1:
            raise ValueError(f"a column table must have columns of one length, got {sorted(lengths)}")
        return lengths.pop()
    return len(items)


def _prepare(run: Mapping[str, Any]) -> dict[str, Any]:
    """Column tables as arrays (so that each resample is a fancy index)."""
    out = {}
    for split, items in run.items():
        if isinstance(items, Mapping):
            out[split] = {k: np.asarray(v) for k, v in items.items()}
        elif isinstance(items, np.ndarray):
            out[split] = items
        else:
            out[split] = list(items)
    return out


class _Resampled(Mapping):
    """A column table seen through an item index: a column is indexed when the statistic reads it."""

    def __init__(self, table: Mapping[str, np.ndarray], index: np.ndarray):
        self._table, self._index, self._cache = table, index, {}

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._cache:
            self._cache[key] = self._table[key][self._index]
        return self._cache[key]

    def __iter__(self):
        return iter(self._table)

    def __len__(self) -> int:
        return len(self._table)

    def __contains__(self, key: object) -> bool:
        return key in self._table


def _take(items: Any, index: np.ndarray) -> Any:
    if isinstance(items, Mapping):
        return _Resampled(items, index)
    if isinstance(items, np.ndarray):
        return items[index]
    return [items[i] for i in index]


def _sizes(runs: list[dict]) -> dict[str, int]:
    """Items per item set, checked to be the same for every split key of the set and every run."""
    sizes: dict[str, int] = {}
    for run in runs:
        if not isinstance(run, Mapping):
            raise ValueError("an aggregate statistic needs each run as a mapping {split: items}")
        for split, items in run.items():
            n, group = _length(items), _group(split)
            if sizes.setdefault(group, n) != n:
                raise ValueError(
                    f"split {split!r} has {n} items but its item set {group!r} has {sizes[group]} elsewhere; "
                    "every run (and every '@' reference) must hold the same items"
                )
    if len({frozenset(r) for r in runs}) > 1:
        raise ValueError("runs have different splits; evaluate every run on the same splits")
    return sizes


def _aggregate_bootstrap(
    methods: list[list[dict]],
    statistic: Statistic,
    keys: list | None,
    n_resamples: int,
    seed: int,
    confidence: float,
    design: str,
) -> tuple[float, float, float, np.ndarray, int]:
    """(value, low, high, per-run values, n_items) of mean_r [stat(A_r)] (one method) or mean_r [stat(A_r) −
    stat(B_r)] (two methods), every replicate sharing one run draw and one item draw per item set."""
    prepared = [[_prepare(run) for run in runs] for runs in methods]
    sizes = _sizes([run for runs in prepared for run in runs])
    n_runs = len(prepared[0])
    n_items = min(sizes.values()) if sizes else 0

    def value_of(r: int, index: dict[str, np.ndarray] | None) -> float:
        values = []
        for runs in prepared:
            run = runs[r]
            sample = run if index is None else {s: _take(v, index[_group(s)]) for s, v in run.items()}
            values.append(float(statistic(sample)))
        return values[0] if len(values) == 1 else values[0] - values[1]

    per_run = np.array([value_of(r, None) for r in range(n_runs)])
    value = float(per_run.mean())
    if n_items < 2 or math.isnan(value):
        return value, float("nan"), float("nan"), per_run, n_items
    rng = np.random.default_rng(seed)
    weights = _run_weights(rng, n_resamples, keys, n_runs, design)
    draws = {g: rng.integers(0, n, size=(n_resamples, n)) for g, n in sorted(sizes.items())}
    replicates = _vectorised_replicates(prepared, statistic, draws, sizes, weights)
    if replicates is None:
        replicates = _looped_replicates(prepared, value_of, draws, weights, n_resamples)
    ok = ~np.isnan(replicates)
    if ok.mean() < 1.0 - MAX_FAILED_SHARE:
        return value, float("nan"), float("nan"), per_run, n_items
    low, high = _percentiles(replicates[ok], confidence)
    return value, low, high, per_run, n_items


def _looped_replicates(prepared, value_of, draws, weights, n_resamples) -> np.ndarray:
    """Every replicate's statistic by calling the statistic on each resampled run (any statistic)."""
    replicates = np.empty(n_resamples)
    for b in range(n_resamples):
        index = {g: d[b] for g, d in draws.items()}
        active = np.flatnonzero(weights[b])
        values = np.array([value_of(r, index) for r in active])
        with np.errstate(invalid="ignore"):
            replicates[b] = float(np.sum(weights[b, active] * values))
    return replicates


class _NotVectorised(Exception):
    """A vectorised statistic cannot take these data (a non-finite item, items as dicts): use the loop."""


def _vectorised_replicates(prepared, statistic, draws, sizes, weights) -> np.ndarray | None:
    """Every replicate at once for a statistic with a ``vectorised`` form (the TOFU statistics, ratios): the
    same item draws as the loop, as multiplicities, so a resampled mean is one matrix product. The replicates
    equal the loop's up to the rounding of a sum (the order of the additions). None: no vectorised form, or data
    it does not take (the loop then runs)."""
    vectorised = getattr(statistic, "vectorised", None)
    if vectorised is None:
        return None
    counts = {}
    for group, d in draws.items():
        n_resamples, n = d.shape
        flat = (d + n * np.arange(n_resamples)[:, None]).ravel()
        counts[group] = np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(float)
    try:
        per_method = []
        for runs in prepared:
            per_method.append(np.stack([np.asarray(vectorised(run, counts), dtype=float) for run in runs], axis=1))
    except _NotVectorised:
        return None
    values = per_method[0] if len(per_method) == 1 else per_method[0] - per_method[1]
    with np.errstate(invalid="ignore"):
        return np.sum(np.where(weights > 0, weights * values, 0.0), axis=1)


# --------------------------------------------------------------------------------------------- public API
def interval(
    runs: Any,
    statistic: Statistic | None = None,
    *,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    design: str = "runs",
    run_keys: Sequence[Hashable] | None = None,
) -> Interval:
    """Point estimate and two-level bootstrap interval of one measure of one method (module docstring).

    ``runs``: without ``statistic``, per-item values — an array (n_runs, n_items), a list of 1-D arrays, a 1-D
    array (one run), or a mapping {(seed, pair_seed): 1-D array}; the statistic is the item mean. With
    ``statistic``, a list (or mapping by run key) of ``{split: items}``; ``statistic(resampled)`` returns the
    run's number. ``design="crossed"`` resamples seeds and pair seeds separately (keys from the mapping or
    ``run_keys``)."""
    _check_args(n_resamples, confidence)
    runs, keys = _split_runs(runs, run_keys)
    if not runs:
        raise ValueError("no runs: pass at least one run")
    _check_design(design, keys, len(runs))
    if statistic is None:
        x = _as_matrix(runs)
        x = x[:, ~np.isnan(x).any(axis=0)]
        value, low, high, per_run = _mean_bootstrap(x, keys, n_resamples, seed, confidence, design)
        n_items = x.shape[1]
    else:
        value, low, high, per_run, n_items = _aggregate_bootstrap(
            [runs], statistic, keys, n_resamples, seed, confidence, design
        )
    return Interval(value, low, high, n_items, len(runs), _run_std(per_run))


def compare(
    a: Any,
    b: Any,
    statistic: Statistic | None = None,
    *,
    higher_is_better: bool,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
    confidence: float = CONFIDENCE,
    design: str = "runs",
    run_keys: Sequence[Hashable] | None = None,
) -> Comparison:
    """Paired difference A − B of one measure, with its interval and verdict for A (module docstring).

    ``a`` and ``b`` take the forms of ``interval``'s ``runs`` and must hold the same items and the same seed
    cells: sequences are paired by position, mappings by key (the keys both have, in A's order). Every
    replicate applies the same run draw and the same item draw to both. ``higher_is_better``: the measure's
    direction (``HIGHER_IS_BETTER``)."""
    _check_args(n_resamples, confidence)
    runs_a, runs_b, keys = _pair_runs(a, b, run_keys)
    if not runs_a:
        raise ValueError("no runs: pass at least one run per method")
    _check_design(design, keys, len(runs_a))
    if statistic is None:
        xa, xb = _as_matrix(runs_a), _as_matrix(runs_b)
        if xa.shape != xb.shape:
            raise ValueError(f"A has shape {xa.shape} and B {xb.shape}; compare the same runs on the same items")
        with np.errstate(invalid="ignore"):
            d = xa - xb  # NaN where either is NaN, and where both are the same infinity (undefined difference)
        d = d[:, ~np.isnan(d).any(axis=0)]
        value, low, high, _ = _mean_bootstrap(d, keys, n_resamples, seed, confidence, design)
        n_items = d.shape[1]
    else:
        value, low, high, _, n_items = _aggregate_bootstrap(
            [runs_a, runs_b], statistic, keys, n_resamples, seed, confidence, design
        )
    return Comparison(value, low, high, n_items, len(runs_a), verdict(low, high, higher_is_better))


def verdict(ci_low: float, ci_high: float, higher_is_better: bool) -> str:
    """``better`` / ``worse`` / ``no difference`` for method A from the interval of A − B (``n/a`` if NaN): better
    when the interval lies strictly on A's side of 0 (above 0 when higher is better, below 0 otherwise)."""
    if ci_low is None or ci_high is None or math.isnan(ci_low) or math.isnan(ci_high):
        return "n/a"
    above, below = ci_low > 0, ci_high < 0
    if not (above or below):
        return "no difference"
    return "better" if above == bool(higher_is_better) else "worse"


# --------------------------------------------------------------------------------------------- output
def comparison_label(a: str, b: str) -> str:
    """The ``comparison`` cell: ``"bs_t − ga_scaled"`` (a U+2212 minus between the method labels)."""
    return f"{a} {MINUS} {b}"


def setting_label(measure: str | None = None, level: float | None = None) -> str:
    """The ``setting`` cell: ``end`` (end of training) or ``matched:<measure>@<level>`` (4 significant digits)."""
    if measure is None:
        return "end"
    if level is None or not math.isfinite(level):
        raise ValueError(f"a matched setting needs a finite level, got {level!r}")
    return f"matched:{measure}@{level:.4g}"


def verdict_row(comparison: str, measure: str, setting: str, result: Comparison) -> dict[str, Any]:
    """One row of ``verdict.csv`` (keys ``VERDICT_COLUMNS``)."""
    return {
        "comparison": comparison,
        "measure": measure,
        "setting": setting,
        "difference": result.difference,
        "ci_low": result.ci_low,
        "ci_high": result.ci_high,
        "n_items": result.n_items,
        "n_seeds": result.n_runs,
        "verdict": result.verdict,
    }


def verdict_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The text of ``verdict.csv``: the header ``VERDICT_COLUMNS``, numbers with 6 significant digits, empty
    cells for NaN (write it with the protocol's atomic ``write_text``)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(VERDICT_COLUMNS), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k, "")) for k in VERDICT_COLUMNS})
    return buffer.getvalue()


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return "" if math.isnan(value) else f"{value:.6g}"
    return "" if value is None else value


def format_number(value: float | None, digits: int = 3) -> str:
    """A table number as the project's tables write it: fixed point with ``digits`` decimals, scientific for very
    small or very large magnitudes, ``–`` for a missing (None/NaN) value, ``inf``/``-inf`` for infinities."""
    if value is None or math.isnan(value):
        return MISSING
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value != 0 and (abs(value) < 10 ** (-digits) or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def format_interval(
    value: float | None, ci_low: float | None = None, ci_high: float | None = None, digits: int = 3
) -> str:
    """A table cell ``value [low, high]``; ``–`` for a missing value, ``value [–, –]`` for a missing interval."""
    if value is None or math.isnan(value):
        return MISSING
    return f"{format_number(value, digits)} [{format_number(ci_low, digits)}, {format_number(ci_high, digits)}]"


def format_result(result: Interval | Comparison | None, digits: int = 3) -> str:
    """``format_interval`` of an ``Interval`` or a ``Comparison`` (``–`` for None)."""
    if result is None:
        return MISSING
    value = result.value if isinstance(result, Interval) else result.difference
    return format_interval(value, result.ci_low, result.ci_high, digits)


# --------------------------------------------------------------------------------------------- TOFU measures
def tofu_columns(
    per_split: Mapping[str, Sequence[Mapping[str, Any]]],
    convention: str = "tofu",
    retain_forget: Sequence[Mapping[str, Any]] | None = None,
    original_forget: Sequence[Mapping[str, Any]] | None = None,
    fluency_classifier: Any = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Per-item columns of one run's evaluation (``eval.json`` splits) for the TOFU statistics below.

    Every split: ``prob``, ``rouge``, ``tr_score`` (the truth-ratio score of the split's kind), ``truth_ratio``.
    Forget split also: ``es``, ``em``, ``para_prob``, ``tr_mod``, ``fluency`` (generations scored as
    ``bs_ref.metrics.scores.aggregate`` does), the leakage fields (``fact_leak``, ... NaN where None), and —
    given the reference models' forget items of the run's pair — ``retain_truth_ratio`` (for FQ) and
    ``target_drop`` = nll_answer − the original model's nll_answer (the item's log-prob drop). The reference
    columns live in the forget table, so every resample moves them with the forget items."""

    out: dict[str, dict[str, np.ndarray]] = {}
    for kind, items in per_split.items():
        items = apply_convention(list(items), convention)
        ratios = item_ratios(items, convention)
        table = {
            "prob": np.array([answer_prob(it["nll_answer"], it.get("nll_perturbed") or [], kind) for it in items]),
            "rouge": item_values(items, "rougeL_recall"),
            "truth_ratio": ratios,
            "tr_score": np.asarray(truth_ratio_score(ratios, kind), dtype=float),
        }
        if kind == "forget":
            table["es"], table["em"] = item_values(items, "es"), item_values(items, "em")
            table["para_prob"] = np.array([paper.prob_from_nll(it["nll_paraphrased"]) for it in items])
            table["tr_mod"] = np.asarray(paper.tr_mod(ratios), dtype=float)
            generations = [it.get("generation") for it in items]
            if items and all(isinstance(g, str) for g in generations):
                table["fluency"] = np.asarray(paper.fluency_scores(generations, fluency_classifier)[0], dtype=float)
            for field in (
                "fact_leak",
                "fact_leak_paraphrased_question",
                "fact_leak_any_of_n",
                "fact_logprob",
                "nll_answer",
            ):
                table[field] = item_values(items, field)
            for name, reference in (("retain", retain_forget), ("original", original_forget)):
                if reference is not None and len(apply_convention(list(reference), convention)) != len(items):
                    raise ValueError(
                        f"the {name} model's forget items ({len(reference)}) are not the forget split's "
                        f"({len(per_split[kind])}); pass that model's evaluation of the same forget questions"
                    )
            if retain_forget is not None:
                table["retain_truth_ratio"] = item_ratios(apply_convention(list(retain_forget), convention), convention)
            if original_forget is not None:
                original = item_values(apply_convention(list(original_forget), convention), "nll_answer")
                table["target_drop"] = table["nll_answer"] - original
        out[kind] = table
    return out


def _mean(values: np.ndarray) -> float:
    """The mean of a 1-D array (np.mean's result, without its per-call overhead: statistics run per replicate)."""
    return float(np.add.reduce(values)) / len(values) if len(values) else float("nan")


def _hmean(values: Sequence[float], eps: float = 0.0) -> float:
    arr = np.maximum(np.asarray(values, dtype=float), eps)
    if np.isnan(arr).any():
        return float("nan")
    if np.any(arr == 0):
        return 0.0
    return float(arr.size / np.sum(1.0 / arr))


def model_utility_statistic(run: Mapping[str, Mapping[str, np.ndarray]]) -> float:
    """MU: harmonic mean of {mean prob, mean rouge, mean tr_score} x {retain, real_authors, world_facts}."""
    splits = ("retain", "real_authors", "world_facts")
    return _hmean([_mean(run[s][m]) for s in splits for m in ("prob", "rouge", "tr_score")])


def log10_forget_quality_statistic(run: Mapping[str, Mapping[str, np.ndarray]]) -> float:
    """log10 FQ: log10 of the ks_2samp p-value of the forget truth ratios against the retain model's."""
    forget = run["forget"]
    if "retain_truth_ratio" not in forget:
        raise ValueError("log10 FQ needs the retain model's forget items: tofu_columns(..., retain_forget=...)")
    p = ks_pvalue(forget["truth_ratio"], forget["retain_truth_ratio"])
    return math.log10(p) if p > 0 else float("-inf")


_KS_PVALUES: dict[tuple[int, int, int], float] = {}


def ks_pvalue(a: np.ndarray, b: np.ndarray) -> float:
    """``scipy.stats.ks_2samp(a, b).pvalue`` (two-sided, method "auto"), memoised: that p-value depends only on
    the sample sizes and on the KS statistic, an integer k / (n_a n_b); k is computed here (as ks_2samp does:
    right-sided ECDF counts over the pooled data) and ks_2samp runs once per (n_a, n_b, k). Bootstrap
    replicates take few distinct k, so FQ costs a sort instead of an exact p-value per replicate."""

    a, b = np.sort(np.asarray(a, dtype=float)), np.sort(np.asarray(b, dtype=float))
    if a.size == 0 or b.size == 0 or np.isnan(a).any() or np.isnan(b).any():
        return float(ks_2samp(a, b).pvalue) if a.size and b.size else float("nan")
    pooled = np.concatenate([a, b])
    count_a = np.searchsorted(a, pooled, side="right").astype(np.int64)
    count_b = np.searchsorted(b, pooled, side="right").astype(np.int64)
    key = (a.size, b.size, int(np.max(np.abs(count_a * b.size - count_b * a.size))))
    if key not in _KS_PVALUES:
        if len(_KS_PVALUES) > 100_000:
            _KS_PVALUES.clear()
        _KS_PVALUES[key] = float(ks_2samp(a, b).pvalue)
    return _KS_PVALUES[key]


def mem_statistic(run: Mapping[str, Mapping[str, np.ndarray]]) -> float:
    """Mem = HM(1 − ES, 1 − EM, 1 − ParaProb, 1 − TR_mod) of the forget split's means, floored at 1e-3."""
    f = run["forget"]
    return _hmean([1.0 - _mean(f[c]) for c in ("es", "em", "para_prob", "tr_mod")], MEM_EPS)


def util_statistic(run: Mapping[str, Mapping[str, np.ndarray]]) -> float:
    """Util = HM(MU, mean forget fluency), floored at 1e-3 (NaN without generations)."""
    fluency = run["forget"].get("fluency")
    if fluency is None:
        return float("nan")
    return _hmean([model_utility_statistic(run), _mean(fluency)], MEM_EPS)


def agg_statistic(run: Mapping[str, Mapping[str, np.ndarray]]) -> float:
    """Agg = HM(Mem, Util), floored at 1e-3."""
    return _hmean([mem_statistic(run), util_statistic(run)], MEM_EPS)


# Vectorised forms: ``f(run, counts)`` -> the statistic of every replicate at once, ``counts[item set]`` the
# (n_resamples, n_items) multiplicities of the replicates' item draws (``_vectorised_replicates``). Each is the
# statistic above written on resampled means (a mean of resampled items is counts @ values / n); data they do not
# take (a non-finite item value, items as dicts) raise ``_NotVectorised`` and the loop runs instead.
def _column(run: Mapping[str, Any], split: str, column: str) -> np.ndarray:
    table = run[split]
    if not isinstance(table, Mapping):
        raise _NotVectorised(split)
    values = np.asarray(table[column], dtype=float)
    if not np.all(np.isfinite(values)):
        raise _NotVectorised(f"{split}.{column}")
    return values


def _vmean(run: Mapping[str, Any], counts: Mapping[str, np.ndarray], split: str, column: str) -> np.ndarray:
    values = _column(run, split, column)
    if values.size == 0:
        return np.full(next(iter(counts.values())).shape[0], np.nan)
    return counts[_group(split)] @ values / values.size


def _vhmean(columns: Sequence[np.ndarray], eps: float = 0.0) -> np.ndarray:
    """``_hmean`` of every replicate: columns are (n_resamples,) arrays of the terms."""
    arr = np.maximum(np.stack(columns, axis=1), eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = arr.shape[1] / np.sum(1.0 / arr, axis=1)
    out[np.any(arr == 0, axis=1)] = 0.0
    out[np.isnan(arr).any(axis=1)] = np.nan
    return out


def _model_utility_vectorised(run, counts) -> np.ndarray:
    splits = ("retain", "real_authors", "world_facts")
    return _vhmean([_vmean(run, counts, s, m) for s in splits for m in ("prob", "rouge", "tr_score")])


def _mem_vectorised(run, counts) -> np.ndarray:
    return _vhmean([1.0 - _vmean(run, counts, "forget", c) for c in ("es", "em", "para_prob", "tr_mod")], MEM_EPS)


def _util_vectorised(run, counts) -> np.ndarray:
    if "fluency" not in run["forget"]:
        return np.full(next(iter(counts.values())).shape[0], np.nan)
    return _vhmean([_model_utility_vectorised(run, counts), _vmean(run, counts, "forget", "fluency")], MEM_EPS)


def _agg_vectorised(run, counts) -> np.ndarray:
    return _vhmean([_mem_vectorised(run, counts), _util_vectorised(run, counts)], MEM_EPS)


def _log10_forget_quality_vectorised(run, counts) -> np.ndarray:
    """The KS statistic of every replicate as ``ks_pvalue`` computes it (integer ECDF-count differences, here at
    every distinct value of the two full samples: the ECDFs of a resample only step at its own values, so the
    maximum is the same), then the memoised p-value per distinct statistic."""
    forget = run["forget"]
    if not isinstance(forget, Mapping):
        raise _NotVectorised("forget")
    if "retain_truth_ratio" not in forget:
        raise ValueError("log10 FQ needs the retain model's forget items: tofu_columns(..., retain_forget=...)")
    a, b = np.asarray(forget["truth_ratio"], dtype=float), np.asarray(forget["retain_truth_ratio"], dtype=float)
    if np.isnan(a).any() or np.isnan(b).any() or a.size != b.size or a.size == 0:
        raise _NotVectorised("forget.truth_ratio")
    c = counts["forget"]
    thresholds = np.unique(np.concatenate([a, b]))
    count_a = c @ (a[:, None] <= thresholds[None, :]).astype(float)
    count_b = c @ (b[:, None] <= thresholds[None, :]).astype(float)
    n = a.size
    k = np.rint(np.max(np.abs(count_a * n - count_b * n), axis=1)).astype(np.int64)
    out = np.empty(k.size)
    for value in np.unique(k):
        rows = np.flatnonzero(k == value)
        key = (n, n, int(value))
        if key not in _KS_PVALUES:
            index = np.repeat(np.arange(n), c[rows[0]].astype(np.int64))
            ks_pvalue(a[index], b[index])  # memoises the p-value of this statistic
        p = _KS_PVALUES[key]
        out[rows] = math.log10(p) if p > 0 else float("-inf")
    return out


model_utility_statistic.vectorised = _model_utility_vectorised
log10_forget_quality_statistic.vectorised = _log10_forget_quality_vectorised
mem_statistic.vectorised = _mem_vectorised
util_statistic.vectorised = _util_vectorised
agg_statistic.vectorised = _agg_vectorised


def ratio_statistic(numerator: str, denominator: str, split: str = "forget") -> Statistic:
    """The statistic Σ numerator / Σ denominator over the items of ``split`` (NaN when Σ denominator = 0): a
    pooled mean whose items carry sums over several values, e.g. a belief band's mean log-prob over all
    (question, candidate) pairs with one item per question (``band_drop_statistic``). Vectorised."""

    def statistic(run: Mapping[str, Mapping[str, np.ndarray]]) -> float:
        den = float(np.sum(run[split][denominator]))
        return float(np.sum(run[split][numerator])) / den if den else float("nan")

    def vectorised(run, counts) -> np.ndarray:
        num, den = _column(run, split, numerator), _column(run, split, denominator)
        c = counts[_group(split)]
        with np.errstate(divide="ignore", invalid="ignore"):
            total = c @ den
            return np.where(total != 0, (c @ num) / np.where(total != 0, total, 1.0), np.nan)

    statistic.vectorised = vectorised
    statistic.__name__ = f"ratio_{numerator}_{denominator}"
    return statistic


def band_drop_statistic(band: str = "high", split: str = "forget") -> Statistic:
    """The drop of a belief band's pooled mean log-prob from the start of unlearning, resampled with the
    questions: one item per question with columns ``band_<band>_drop_sum`` (Σ over the question's candidates in
    the band of start log-prob − current log-prob) and ``band_<band>_count`` (their number;
    ``bs_ref.metrics.leakage.score_belief_bands(..., per_question=True)``). Σ drop_sum / Σ count is the band's
    pooled start mean − its pooled current mean (the candidates are the same at both), so on all questions it
    is the band drop the curves report. Larger = the band fell more."""
    return ratio_statistic(f"band_{band}_drop_sum", f"band_{band}_count", split)


TOFU_STATISTICS: dict[str, Statistic] = {
    "model_utility": model_utility_statistic,
    "log10_forget_quality": log10_forget_quality_statistic,
    "mem": mem_statistic,
    "util": util_statistic,
    "agg": agg_statistic,
}
"""Aggregate TOFU measures over ``tofu_columns`` runs, for ``interval(runs, statistic)`` / ``compare``."""

ITEM_MEASURES = {
    "fact_leak": "fact_leak",
    "fact_leak_paraphrased_question": "fact_leak_paraphrased_question",
    "fact_leak_any_of_n": "fact_leak_any_of_n",
    "fact_logprob": "fact_logprob",
    "target_logprob_drop": "target_drop",
}
"""Item-mean measures: measure name -> forget-split column of ``tofu_columns`` (``interval`` without statistic)."""
