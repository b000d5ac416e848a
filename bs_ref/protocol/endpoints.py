"""Primary endpoints: Holm over the declared contrasts, TOST equivalence, minimum detectable differences, and runs
censored at a step budget (docs/theory.md §19).

A comparison of unlearning methods prints hundreds of paired differences (docs/theory.md §10). Read one by one at
95 %, some exclude 0 by chance. This module holds the rules that make a few of them a claim:

- **Primary contrasts** (at most ``MAX_PRIMARY`` = 4) are declared before the run: a name, the paired difference
  A − B of one measure in one setting, its direction, and optionally an equivalence margin δ. They form one family:
  their two-sided bootstrap p-values are Holm-adjusted (``holm_adjust``), each is printed with a simultaneous
  (Bonferroni) interval and its minimum detectable difference, and "the same as" is claimed only by TOST against
  the stated δ (``tost``). ``primary_contrast_table`` builds these rows; ``label_rows`` marks every other row of a
  report ``exploratory`` (uncorrected; a lead for the next declared run, not a finding).
- **Stopping at a declared level** (``StopAtLevel``): every method unlearns until a measure reaches a level fixed
  before the run, or until a step budget. A run that hits the budget first is *censored*: its steps-to-level is
  only known to exceed the budget. ``censoring_table`` keeps such runs in every count and in the comparison of
  steps-to-level (``compare_steps_to_level``); dropping them would select each method's faster runs.

Everything here is a pure function of numbers (numpy and scipy only): the bootstrap replicates come from
``bs_ref.stats`` or from ``bootstrap_mean_difference`` (per-item paired differences), the run records from the
experiment. Conventions follow ``bs_ref.stats``: differences are A − B, ``higher_is_better`` gives the direction of
the measure, percentile intervals interpolate linearly (the outer nearest ranks when a replicate is ±inf), NaN
replicates are discarded and more than 10 % of them make the result NaN.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.stats import binomtest, norm

ALPHA = 0.05
"""Family-wise error rate of the primary contrasts."""
POWER = 0.8
"""Power at which the minimum detectable difference is stated."""
MAX_PRIMARY = 4
"""Most primary contrasts a run may declare (docs/theory.md §19)."""
N_RESAMPLES = 2000
"""Bootstrap replicates of ``bootstrap_mean_difference`` (``bs_ref.stats.N_RESAMPLES``)."""
MAX_FAILED_SHARE = 0.10
"""Largest share of NaN replicates before a result is NaN (``bs_ref.stats.MAX_FAILED_SHARE``)."""

EQUIVALENT = "equivalent (|\u0394| < \u03b4)"
VERDICTS = ("better", "worse", EQUIVALENT, "inconclusive", "n/a")
"""Verdicts of a primary contrast for method A (``endpoint_verdict``)."""
LABELS = ("primary", "exploratory")
DIRECTIONS = ("decrease", "increase")
"""Directions of a ``StopAtLevel`` rule: the measure falls to the level, or rises to it."""
HOLM_ONLY = "Holm rejects; the simultaneous interval touches 0"
INTERVAL_ONLY = "the simultaneous interval excludes 0; Holm does not reject"
MISSING = "\u2013"


# --------------------------------------------------------------------------------------------- validation
def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, (bool, np.bool_))


def _check_probability(value: Any, name: str, upper: float = 1.0, hint: str = "") -> float:
    if not _is_number(value) or not 0 < float(value) < upper:
        raise ValueError(f"{name} must be a number in (0, {upper:g}), got {value!r}{hint}")
    return float(value)


def _check_count(value: Any, name: str, minimum: int = 1, hint: str = "") -> int:
    if not isinstance(value, (int, np.integer)) or isinstance(value, (bool, np.bool_)) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}{hint}")
    return int(value)


def _as_replicates(replicates: Any, name: str = "replicates") -> np.ndarray | None:
    """The usable replicates (NaN removed, ±inf kept) as float64, or None when more than 10 % are NaN."""
    try:
        arr = np.asarray(replicates, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be a 1-D array of numbers (bootstrap replicates): {error}") from None
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name} must be a non-empty 1-D array of bootstrap replicates, got shape {arr.shape}")
    missing = np.isnan(arr)
    if missing.mean() > MAX_FAILED_SHARE:
        return None
    return arr[~missing]


# --------------------------------------------------------------------------------------------- intervals and p
def percentile_interval(replicates: Any, confidence: float = 1 - ALPHA) -> tuple[float, float]:
    """The equal-tailed percentile interval of bootstrap replicates at ``confidence`` (as ``bs_ref.stats``: linear
    interpolation; the outer nearest ranks when a replicate is ±inf; NaN bounds when more than 10 % are NaN)."""
    confidence = _check_probability(confidence, "confidence", hint="; e.g. 0.95")
    r = _as_replicates(replicates)
    if r is None:
        return math.nan, math.nan
    tail = 100 * (1 - confidence) / 2
    if np.all(np.isfinite(r)):
        low, high = np.percentile(r, [tail, 100 - tail])
    else:  # interpolating between two infinities is NaN: take the outer nearest ranks
        low = np.percentile(r, tail, method="lower")
        high = np.percentile(r, 100 - tail, method="higher")
    return float(low), float(high)


def simultaneous_interval(replicates: Any, m: int, alpha: float = ALPHA) -> tuple[float, float]:
    """The Bonferroni simultaneous interval of one of ``m`` contrasts: the percentile interval at 1 − α/m
    (percentiles 100·α/(2m) and 100·(1 − α/(2m))). All m intervals cover their differences together with
    probability ≥ 1 − α (docs/theory.md §19).

    Printed beside Holm decisions, it can disagree with them: Holm tests the k-th smallest p-value at α/(m − k + 1),
    which is above α/m from the second step on, so Holm may reject a contrast whose Bonferroni interval touches 0.
    The decision is Holm's; ``primary_contrast_table`` keeps the interval as printed and writes the note
    ``HOLM_ONLY`` in the row (``INTERVAL_ONLY`` for the rare converse, a Monte-Carlo edge between the interpolated
    percentile and the +1-corrected p-value)."""
    m = _check_count(m, "m", hint="; m is the number of declared primary contrasts")
    alpha = _check_probability(alpha, "alpha", hint="; e.g. 0.05")
    return percentile_interval(replicates, 1 - alpha / m)


def bootstrap_p_value(replicates: Any) -> float:
    """Two-sided bootstrap p-value of "the difference is 0" from its bootstrap replicates r_1..r_B:

        p = min(1, 2 · min(1 + #{r_b ≤ 0}, 1 + #{r_b ≥ 0}) / (B + 1)).

    Twice the smaller tail share of the replicates beyond 0, each share with the +1 correction (the observed data
    counted as one more replicate; Davison & Hinkley 1997, §4.4), so p is never 0: its smallest value is 2/(B + 1),
    which must be below the Holm level α/m for a rejection to be possible (``primary_contrast_table`` checks it).
    A replicate equal to 0 counts in both tails (all replicates 0 give p = 1). It is the p-value dual to the
    percentile interval: p ≤ α exactly when the equal-tailed (1 − α) interval excludes 0, up to the +1 and the
    interpolation. NaN when more than 10 % of the replicates are NaN (docs/theory.md §19)."""
    r = _as_replicates(replicates)
    if r is None:
        return math.nan
    below = 1 + int(np.count_nonzero(r <= 0))
    above = 1 + int(np.count_nonzero(r >= 0))
    return min(1.0, 2 * min(below, above) / (r.size + 1))


def bootstrap_se(replicates: Any) -> float:
    """The bootstrap standard error: the standard deviation (ddof 1) of the replicates (NaN for fewer than 2 usable
    replicates or more than 10 % NaN; inf when a replicate is ±inf)."""
    r = _as_replicates(replicates)
    if r is None or r.size < 2:
        return math.nan
    if not np.all(np.isfinite(r)):
        return math.inf
    return float(np.std(r, ddof=1))


# --------------------------------------------------------------------------------------------- Holm
def holm_adjust(p_values: Any) -> np.ndarray:
    """Holm step-down adjusted p-values, in the order given (docs/theory.md §19).

    With the m raw p-values sorted p_(1) ≤ … ≤ p_(m), the adjusted value of p_(i) is
    max_{j ≤ i} min(1, (m − j + 1) · p_(j)): monotone in the raw p-values, at least the raw value, at most 1. A
    contrast is rejected at family-wise level α exactly when its adjusted p-value is ≤ α, which is Holm's
    step-down rule (reject p_(1) if ≤ α/m, then p_(2) if ≤ α/(m − 1), …, stop at the first that is not). Tied raw
    p-values get the same adjusted value, so the result does not depend on the order of the contrasts."""
    try:
        p = np.asarray(p_values, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"p_values must be a 1-D array of numbers in [0, 1]: {error}") from None
    if p.ndim != 1 or p.size == 0:
        raise ValueError(f"p_values must be a non-empty 1-D array, got shape {p.shape}")
    if not np.all(np.isfinite(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError(
            f"p_values must lie in [0, 1] and be finite, got {p.tolist()}; pass 1.0 for a declared contrast whose "
            "p-value is missing (it still counts in the family)"
        )
    m = p.size
    order = np.argsort(p, kind="stable")
    adjusted_sorted = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    adjusted = np.empty(m)
    adjusted[order] = adjusted_sorted
    return adjusted


def holm_reject(p_values: Any, alpha: float = ALPHA) -> np.ndarray:
    """Holm's decisions at family-wise level ``alpha``: True where the adjusted p-value is ≤ alpha."""
    alpha = _check_probability(alpha, "alpha", hint="; e.g. 0.05")
    return holm_adjust(p_values) <= alpha


# --------------------------------------------------------------------------------------------- equivalence
@dataclass(frozen=True)
class Equivalence:
    """A TOST result: ``equivalent`` when the (1 − 2α) percentile interval [ci_low, ci_high] lies strictly
    inside (−margin, margin); ``alpha`` is the level of each one-sided test, ``confidence`` = 1 − 2α."""

    equivalent: bool
    ci_low: float
    ci_high: float
    margin: float
    alpha: float
    confidence: float


def tost(replicates: Any, margin: float, alpha: float = ALPHA) -> Equivalence:
    """Two one-sided tests of equivalence with margin δ = ``margin`` (docs/theory.md §19).

    The hypotheses Δ ≤ −δ and Δ ≥ δ are each rejected at level α when the (1 − 2α) percentile interval of the
    replicates lies above −δ and below δ; both rejected is the claim |Δ| < δ. δ is declared before the run, in the
    measure's units, as the largest difference that would not matter. An interval touching ±δ, or NaN bounds, is
    not equivalent."""
    if not _is_number(margin) or not math.isfinite(float(margin)) or float(margin) <= 0:
        raise ValueError(f"margin must be a finite number > 0 in the measure's units (the declared δ), got {margin!r}")
    alpha = _check_probability(alpha, "alpha", upper=0.5, hint="; TOST reads the (1 - 2 alpha) interval")
    margin = float(margin)
    low, high = percentile_interval(replicates, 1 - 2 * alpha)
    equivalent = bool(-margin < low and high < margin)  # False for NaN bounds
    return Equivalence(equivalent, low, high, margin, alpha, 1 - 2 * alpha)


def endpoint_verdict(
    reject: bool | None, direction: float, higher_is_better: bool, equivalent: bool | None = None
) -> str:
    """The verdict for method A of a contrast A − B (docs/theory.md §19):

    - ``better`` / ``worse``: the difference is rejected as 0 (``reject``, e.g. Holm's decision) and lies on A's
      side (``direction`` > 0 when higher is better, < 0 when lower is better) or against it;
    - ``equivalent (|Δ| < δ)``: not rejected, and TOST shows |Δ| < δ (``equivalent``);
    - ``inconclusive``: neither — the data cannot tell a difference from its absence at this margin;
    - ``n/a``: no test (``reject`` is None: no usable replicates).

    A difference that is both rejected and equivalent (real but smaller than δ) is reported as better/worse; the
    row keeps the TOST result beside it. ``direction`` is the sign of the difference (the side of 0 where most
    replicates lie)."""
    if reject is None:
        return "n/a"
    if reject:
        if not _is_number(direction) or direction == 0 or math.isnan(float(direction)):
            raise ValueError(f"direction must be the sign of a rejected difference (> 0 or < 0), got {direction!r}")
        return "better" if (direction > 0) == bool(higher_is_better) else "worse"
    return EQUIVALENT if equivalent else "inconclusive"


# --------------------------------------------------------------------------------------------- power
def minimum_detectable_difference(se: float, m: int = 1, alpha: float = ALPHA, power: float = POWER) -> float:
    """The smallest true difference a two-sided test at level α/m detects with probability ``power``:

        MDE = (z_{1 − α/(2m)} + z_{power}) · se.

    Normal approximation: the estimate is taken as N(Δ, se²) with se the bootstrap standard error, and the far
    tail (rejecting on the wrong side) is neglected. With m primary contrasts the level is Holm's first step
    α/m (Bonferroni), so the MDE is conservative for contrasts Holm tests later. A contrast that shows no
    difference says nothing about effects smaller than its MDE (docs/theory.md §19). NaN for a NaN se."""
    m = _check_count(m, "m", hint="; m is the number of declared primary contrasts")
    alpha = _check_probability(alpha, "alpha", hint="; e.g. 0.05")
    power = _check_probability(power, "power", hint="; e.g. 0.8")
    if not _is_number(se) or float(se) < 0:
        raise ValueError(f"se must be a standard error >= 0, got {se!r}")
    return float((norm.ppf(1 - alpha / (2 * m)) + norm.ppf(power)) * float(se))


# --------------------------------------------------------------------------------------------- paired bootstrap
def bootstrap_mean_difference(
    differences: Any, n_resamples: int = N_RESAMPLES, seed: int = 0
) -> tuple[float, np.ndarray, int, int]:
    """(estimate, replicates, n_items, n_runs) of the mean paired difference A − B from per-item differences.

    ``differences`` is (items,) for one run or (runs, items) with the same items in every run. The estimate is the
    mean over runs of each run's item mean. Each replicate resamples runs with replacement and items with
    replacement, and applies the one item draw to every run (the two-level bootstrap of ``bs_ref.stats``, design
    "runs"); an item NaN in any run is dropped from all. For aggregate measures (MU, Agg, FQ) or crossed seed
    designs use the replicates of ``bs_ref.stats`` instead."""
    n_resamples = _check_count(n_resamples, "n_resamples", minimum=2)
    try:
        d = np.asarray(differences, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"differences must be an array of numbers (per-item A - B): {error}") from None
    if d.ndim == 1:
        d = d[None, :]
    if d.ndim != 2 or d.shape[0] == 0:
        raise ValueError(f"differences must have shape (items,) or (runs, items), got {np.shape(differences)}")
    d = d[:, ~np.isnan(d).any(axis=0)]
    n_runs, n_items = d.shape
    if n_items < 2:
        raise ValueError(f"differences has {n_items} item(s) without NaN; the item variability needs at least 2 items")
    if not np.all(np.isfinite(d)):
        raise ValueError("differences must be finite (an infinite per-item difference has no mean to compare)")
    rng = np.random.default_rng(seed)
    item_counts = _counts(rng, n_resamples, n_items)
    run_weights = _counts(rng, n_resamples, n_runs) / n_runs if n_runs > 1 else np.ones((n_resamples, 1))
    replicates = np.einsum("br,ri,bi->b", run_weights, d, item_counts) / n_items
    return float(d.mean()), replicates, n_items, n_runs


def _counts(rng: np.random.Generator, n_resamples: int, n: int) -> np.ndarray:
    """Multiplicities (n_resamples, n) of n draws with replacement from range(n)."""
    draws = rng.integers(0, n, size=(n_resamples, n))
    flat = (draws + n * np.arange(n_resamples)[:, None]).ravel()
    return np.bincount(flat, minlength=n_resamples * n).reshape(n_resamples, n).astype(float)


# --------------------------------------------------------------------------------------------- primary table
@dataclass(frozen=True, eq=False)
class Contrast:
    """A declared primary contrast A − B (docs/theory.md §19).

    Give either ``replicates`` (bootstrap replicates of the difference, e.g. from ``bs_ref.stats``, with the point
    ``estimate`` on all data, ``n_items`` and ``n_seeds``) or ``differences`` (per-item paired differences,
    (items,) or (runs, items): bootstrapped by ``bootstrap_mean_difference``). ``higher_is_better`` is the
    measure's direction (``bs_ref.stats.HIGHER_IS_BETTER``); ``margin`` the equivalence margin δ > 0 in the
    measure's units, or None for no equivalence claim; ``n_pairs`` the model pairs (original and retain twin)
    the runs used."""

    name: str
    higher_is_better: bool
    replicates: Any = None
    estimate: float | None = None
    differences: Any = None
    margin: float | None = None
    n_items: int | None = None
    n_seeds: int | None = None
    n_pairs: int = 1


@dataclass(frozen=True)
class PrimaryRow:
    """One row of the primary-contrast table: the estimate A − B; the raw and Holm-adjusted bootstrap p-values and
    Holm's decision; the simultaneous interval at ``ci_level`` = 1 − α/m; the bootstrap se and the MDE at α/m and
    the stated power; the TOST result at α/m when a margin was declared; the verdict for A, a note where the
    interval and the decision disagree, and the sizes."""

    name: str
    label: str
    estimate: float
    se: float
    p_raw: float
    p_holm: float
    reject: bool | None
    ci_low: float
    ci_high: float
    ci_level: float
    mde: float
    margin: float | None
    equivalence: Equivalence | None
    verdict: str
    note: str
    higher_is_better: bool
    n_items: int
    n_seeds: int
    n_pairs: int
    n_replicates: int


def _prepare_contrast(contrast: Contrast, n_resamples: int, seed: int) -> tuple[float, np.ndarray, int, int]:
    has_replicates, has_differences = contrast.replicates is not None, contrast.differences is not None
    if has_replicates == has_differences:
        raise ValueError(
            f"contrast {contrast.name!r}: give exactly one of replicates (with estimate, n_items, n_seeds) or "
            "differences (per-item paired differences)"
        )
    if has_differences:
        estimate, replicates, n_items, n_runs = bootstrap_mean_difference(contrast.differences, n_resamples, seed)
        for name, given, derived in (("n_items", contrast.n_items, n_items), ("n_seeds", contrast.n_seeds, n_runs)):
            if given is not None and given != derived:
                raise ValueError(
                    f"contrast {contrast.name!r}: {name}={given!r} but the differences have {derived} (items "
                    "without NaN, runs); leave it out or fix the data"
                )
        return estimate, replicates, n_items, n_runs
    if contrast.estimate is None or not _is_number(contrast.estimate):
        raise ValueError(
            f"contrast {contrast.name!r}: replicates need the point estimate on all data (estimate=...); the "
            "mean of the replicates is not the estimate"
        )
    n_items = _check_count(contrast.n_items, f"contrast {contrast.name!r}: n_items", hint=" (items compared)")
    n_seeds = _check_count(contrast.n_seeds, f"contrast {contrast.name!r}: n_seeds", hint=" (seed cells compared)")
    _as_replicates(contrast.replicates, f"contrast {contrast.name!r}: replicates")  # shape and type, named
    replicates = np.asarray(contrast.replicates, dtype=float)
    return float(contrast.estimate), replicates, n_items, n_seeds


def primary_contrast_table(
    contrasts: Sequence[Contrast],
    alpha: float = ALPHA,
    power: float = POWER,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> list[PrimaryRow]:
    """The rows of the declared primary contrasts, in the order given (docs/theory.md §19).

    With m = len(contrasts) ≤ ``MAX_PRIMARY``: raw p-values by ``bootstrap_p_value``, Holm-adjusted over the m
    (a contrast without usable replicates counts with p = 1 and gets NaN), simultaneous intervals at 1 − α/m, MDE
    at α/m and ``power``, TOST at α/m per declared margin (Bonferroni over the equivalence claims: the (1 − 2α/m)
    interval, narrower than the simultaneous one), and ``endpoint_verdict`` from Holm's decision. Every row is
    labelled ``primary``. Contrasts given as per-item differences are bootstrapped with ``n_resamples`` replicates
    and the generator seeded by ``seed`` (the same for each contrast, so a row does not depend on its position).

    Raises ValueError for more than four contrasts, duplicate names, a bad margin, or too few replicates for any
    rejection at α/m (the smallest p-value is 2/(B + 1))."""
    contrasts = list(contrasts)
    alpha = _check_probability(alpha, "alpha", hint="; e.g. 0.05")
    power = _check_probability(power, "power", hint="; e.g. 0.8")
    prepared = _check_contrasts(contrasts, alpha, n_resamples, seed)
    m = len(contrasts)
    p_raw = np.array([bootstrap_p_value(r) for _, r, _, _ in prepared])
    p_holm = holm_adjust(np.where(np.isnan(p_raw), 1.0, p_raw))
    return [
        _primary_row(contrast, prepared_one, p, p_adj, m, alpha, power)
        for contrast, prepared_one, p, p_adj in zip(contrasts, prepared, p_raw, p_holm)
    ]


def _check_contrasts(contrasts: list[Contrast], alpha: float, n_resamples: int, seed: int) -> list[tuple]:
    """The contrasts' (estimate, replicates, n_items, n_seeds), after refusing what the table cannot hold."""
    if not 1 <= len(contrasts) <= MAX_PRIMARY:
        raise ValueError(
            f"contrasts: got {len(contrasts)} primary contrasts; declare between 1 and {MAX_PRIMARY} (the limit of "
            "docs/theory.md §19) and label the others exploratory with label_rows"
        )
    names = [c.name for c in contrasts]
    if len(set(names)) != len(names) or not all(isinstance(n, str) and n for n in names):
        raise ValueError(f"contrasts: names must be distinct non-empty strings, got {names}")
    m = len(contrasts)
    prepared = [_prepare_contrast(c, n_resamples, seed) for c in contrasts]
    for contrast, (_, replicates, _, _) in zip(contrasts, prepared):
        if replicates.size and 2 / (replicates.size + 1) > alpha / m:
            raise ValueError(
                f"contrast {contrast.name!r}: {replicates.size} replicates give a smallest p-value of "
                f"{2 / (replicates.size + 1):.3g}, above the Holm level alpha/m = {alpha / m:.3g}; draw at least "
                f"{math.ceil(2 * m / alpha)} replicates (n_resamples)"
            )
        if contrast.margin is not None:
            tost(np.zeros(1), contrast.margin)  # validates the margin before any work is reported
    return prepared


def _primary_row(contrast: Contrast, prepared: tuple, p: float, p_adj: float, m: int, alpha: float, power: float):
    """One ``PrimaryRow``: its simultaneous interval, MDE, TOST and Holm verdict (``primary_contrast_table``)."""
    estimate, replicates, n_items, n_seeds = prepared
    usable = _as_replicates(replicates)
    low, high = simultaneous_interval(replicates, m, alpha)
    se = bootstrap_se(replicates)
    mde = minimum_detectable_difference(se, m, alpha, power) if math.isfinite(se) else se
    equivalence = None if contrast.margin is None else tost(replicates, contrast.margin, alpha / m)
    if math.isnan(p):
        reject, p_adj, direction = None, math.nan, 0.0
    else:
        reject = bool(p_adj <= alpha)
        direction = float(np.sign(np.count_nonzero(usable > 0) - np.count_nonzero(usable < 0)))
    verdict = endpoint_verdict(
        reject, direction, contrast.higher_is_better, None if equivalence is None else equivalence.equivalent
    )
    excludes_zero = low > 0 or high < 0
    note = ""
    if reject and not excludes_zero:
        note = HOLM_ONLY
    elif reject is False and excludes_zero:
        note = INTERVAL_ONLY
    return PrimaryRow(
        name=contrast.name,
        label="primary",
        estimate=estimate,
        se=se,
        p_raw=float(p),
        p_holm=float(p_adj),
        reject=reject,
        ci_low=low,
        ci_high=high,
        ci_level=1 - alpha / m,
        mde=mde,
        margin=None if contrast.margin is None else float(contrast.margin),
        equivalence=equivalence,
        verdict=verdict,
        note=note,
        higher_is_better=bool(contrast.higher_is_better),
        n_items=n_items,
        n_seeds=n_seeds,
        n_pairs=_check_count(contrast.n_pairs, f"contrast {contrast.name!r}: n_pairs"),
        n_replicates=int(replicates.size),
    )


def label_rows(
    rows: Iterable[Mapping[str, Any]],
    primary: Collection[Hashable],
    key: Callable[[Mapping[str, Any]], Hashable] | None = None,
) -> list[dict[str, Any]]:
    """Copies of report rows with a ``label`` column: ``primary`` for the declared contrasts, ``exploratory`` for
    every other row (docs/theory.md §19). Exploratory rows keep their uncorrected 95 % verdicts; they are leads for
    a later declared run, not findings.

    ``key`` maps a row to its contrast key; by default the row's ``name``, else its (comparison, measure, setting)
    (the ``verdict.csv`` columns). Raises ValueError for more than four primary keys or a declared primary
    contrast that no row carries (a declared endpoint is reported, never dropped)."""
    primary = set(primary)
    if len(primary) > MAX_PRIMARY:
        raise ValueError(f"primary: got {len(primary)} primary contrasts; declare at most {MAX_PRIMARY}")

    def default_key(row: Mapping[str, Any]) -> Hashable:
        if "name" in row:
            return row["name"]
        return (row.get("comparison"), row.get("measure"), row.get("setting"))

    key = key or default_key
    out, seen = [], set()
    for row in rows:
        k = key(row)
        is_primary = k in primary
        if is_primary:
            seen.add(k)
        out.append({**row, "label": "primary" if is_primary else "exploratory"})
    missing = primary - seen
    if missing:
        raise ValueError(
            f"primary: declared contrasts {sorted(map(str, missing))} are in no row; report every declared "
            "endpoint (or fix the key)"
        )
    return out


def _number(value: float | None, digits: int = 3) -> str:
    """A number as ``bs_ref.stats.format_number`` writes it (``–`` for None/NaN)."""
    if value is None or math.isnan(value):
        return MISSING
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    if value != 0 and (abs(value) < 10 ** (-digits) or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def primary_table_markdown(rows: Sequence[PrimaryRow], digits: int = 3) -> str:
    """The primary-contrast table in Markdown: estimate [simultaneous interval], raw and Holm p, MDE, margin and
    TOST, verdict (with the note where the interval and Holm disagree), and n items / seeds / pairs."""
    if not rows:
        return ""
    level = rows[0].ci_level
    header = (
        f"| primary contrast | A \u2212 B [{100 * level:.4g} % simultaneous] | p | p (Holm) | MDE | \u03b4 | TOST "
        "interval | verdict | n items / seeds / pairs |"
    )
    lines = [header, "|" + "---|" * 9]
    for row in rows:
        interval = f"{_number(row.estimate, digits)} [{_number(row.ci_low, digits)}, {_number(row.ci_high, digits)}]"
        tost_cell = MISSING
        if row.equivalence is not None:
            e = row.equivalence
            tost_cell = f"[{_number(e.ci_low, digits)}, {_number(e.ci_high, digits)}]"
        verdict = row.verdict + (f" ({row.note})" if row.note else "")
        lines.append(
            f"| {row.name} | {interval} | {_number(row.p_raw, 4)} | {_number(row.p_holm, 4)} | "
            f"{_number(row.mde, digits)} | {_number(row.margin, digits)} | {tost_cell} | {verdict} | "
            f"{row.n_items} / {row.n_seeds} / {row.n_pairs} |"
        )
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------- stopping rule
@dataclass(frozen=True)
class StopAtLevel:
    """Stop unlearning when a measure reaches a level declared before the run, or at a step budget
    (docs/theory.md §19).

    ``level`` is the declared value of the measure (e.g. the forget target's mean log-prob); ``direction`` is
    ``"decrease"`` when unlearning lowers the measure (reached when value ≤ level) or ``"increase"`` (value ≥
    level); ``max_steps`` the budget. ``from_fraction`` declares the level as a fraction f of the way from the
    original model's value to the retain model's, level = original + f · (retain − original), and records f and
    the two values. A run that stops at the budget without reaching the level is censored."""

    level: float
    max_steps: int
    direction: str
    fraction: float | None = None
    original: float | None = None
    retain: float | None = None

    def __post_init__(self) -> None:
        if not _is_number(self.level) or not math.isfinite(float(self.level)):
            raise ValueError(f"level must be a finite number (the declared value of the measure), got {self.level!r}")
        _check_count(self.max_steps, "max_steps", hint="; the step budget of every run")
        if self.direction not in DIRECTIONS:
            raise ValueError(
                f'direction must be one of {DIRECTIONS} ("decrease" when unlearning lowers the measure, e.g. the '
                f"target log-prob), got {self.direction!r}"
            )
        given = [v is not None for v in (self.fraction, self.original, self.retain)]
        if any(given) and not all(given):
            raise ValueError("fraction, original and retain go together: use StopAtLevel.from_fraction(...)")
        if all(given):
            if self.direction != ("decrease" if self.retain < self.original else "increase"):
                raise ValueError(
                    f"direction {self.direction!r} does not lead from original {self.original!r} to retain "
                    f"{self.retain!r}; use StopAtLevel.from_fraction(...), which infers it"
                )
            expected = self.original + self.fraction * (self.retain - self.original)
            if not math.isclose(self.level, expected, rel_tol=1e-12, abs_tol=1e-12):
                raise ValueError(
                    f"level {self.level!r} is not original + fraction * (retain - original) = {expected!r}; use "
                    "StopAtLevel.from_fraction(...)"
                )

    @classmethod
    def from_fraction(cls, original: float, retain: float, fraction: float, max_steps: int) -> StopAtLevel:
        """The level a fraction ``fraction`` ∈ (0, 1] of the way from the original model's value to the retain
        model's (1: the retain model's value); the direction is the one from original to retain."""
        for name, value in (("original", original), ("retain", retain)):
            if not _is_number(value) or not math.isfinite(float(value)):
                raise ValueError(f"{name} must be the {name} model's finite value of the measure, got {value!r}")
        if not _is_number(fraction) or not 0 < float(fraction) <= 1:
            raise ValueError(
                f"fraction must be in (0, 1] (1: the retain model's value; 0.5: half way), got {fraction!r}"
            )
        if float(original) == float(retain):
            raise ValueError(
                f"original and retain are equal ({original!r}): the measure does not separate the two models, so "
                "no level between them can be declared; choose another measure or declare the level directly"
            )
        original, retain, fraction = float(original), float(retain), float(fraction)
        return cls(
            level=original + fraction * (retain - original),
            max_steps=max_steps,
            direction="decrease" if retain < original else "increase",
            fraction=fraction,
            original=original,
            retain=retain,
        )

    def reached(self, value: float) -> bool:
        """Whether ``value`` is at or past the level (≤ for ``decrease``, ≥ for ``increase``; −inf reaches a
        decreasing level). A NaN value raises: the measure is undefined, and the run failed rather than was
        censored."""
        if not _is_number(value):
            raise ValueError(f"value must be a number (the measure at this step), got {value!r}")
        if math.isnan(float(value)):
            raise ValueError(
                "value is NaN: the measure is undefined at this step; record the run as failed, not censored"
            )
        return float(value) <= self.level if self.direction == "decrease" else float(value) >= self.level

    def should_stop(self, step: int, value: float) -> bool:
        """Whether to stop after ``step`` optimiser steps (0: before the first) with the measure at ``value``:
        the level is reached, or the budget is spent (step = max_steps)."""
        step = _check_count(step, "step", minimum=0, hint="; the number of optimiser steps taken")
        if step > self.max_steps:
            raise ValueError(
                f"step {step} is past max_steps {self.max_steps}: the run should have stopped at the budget"
            )
        return self.reached(value) or step == self.max_steps

    def to_dict(self) -> dict[str, Any]:
        """The rule as recorded with the run (config.json)."""
        return {
            "level": float(self.level),
            "max_steps": int(self.max_steps),
            "direction": self.direction,
            "fraction": self.fraction,
            "original": self.original,
            "retain": self.retain,
        }


# --------------------------------------------------------------------------------------------- censoring
@dataclass(frozen=True, eq=False)
class StoppedRun:
    """One run at its stopping point: ``reached`` the level after ``steps`` steps, or censored at its budget
    (``reached`` False, ``steps`` = the budget); ``measures`` are its values at that step."""

    method: str
    seed: Hashable
    reached: bool
    steps: int
    measures: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class MethodCensoring:
    """Per method: runs, reached, censored; the median steps-to-level with censored runs counted at their budget
    (``median_is_lower_bound`` where censoring affects it; ``median_cell`` prints ``≥ x`` then); and the mean of
    each measure at the stopping point over ALL runs, censored ones at their budget."""

    method: str
    n_runs: int
    n_reached: int
    n_censored: int
    median_steps: float
    median_is_lower_bound: bool
    median_cell: str
    measures: dict[str, float]


@dataclass(frozen=True)
class StepsComparison:
    """Steps-to-level of A against B on paired seeds: per seed, A first, B first, a tie (both reached at the same
    step), both censored, or indeterminate; ``score`` = a_first − b_first (> 0: A reaches the level sooner) and the
    two-sided exact sign-test p-value on the decisive seeds (NaN when none)."""

    method_a: str
    method_b: str
    n_pairs: int
    a_first: int
    b_first: int
    ties: int
    both_censored: int
    indeterminate: int
    score: int
    p_value: float


@dataclass(frozen=True)
class CensoringTable:
    """``methods``: one ``MethodCensoring`` per method (in order of first appearance); ``comparisons``: one
    ``StepsComparison`` per requested pair."""

    methods: tuple[MethodCensoring, ...]
    comparisons: tuple[StepsComparison, ...]


def _as_run(record: Any) -> StoppedRun:
    if isinstance(record, StoppedRun):
        run = record
    elif isinstance(record, Mapping):
        missing = [k for k in ("method", "seed", "reached", "steps") if k not in record]
        if missing:
            raise ValueError(f"runs: a record lacks {missing}; give method, seed, reached, steps (and measures)")
        run = StoppedRun(
            record["method"], record["seed"], record["reached"], record["steps"], record.get("measures") or {}
        )
    else:
        raise ValueError(f"runs: a record must be a StoppedRun or a mapping, got {type(record).__name__}")
    where = f"runs: the run ({run.method!r}, seed {run.seed!r})"
    if not isinstance(run.method, str) or not run.method:
        raise ValueError(f"runs: method must be a non-empty string, got {run.method!r}")
    if not isinstance(run.reached, (bool, np.bool_)):
        raise ValueError(f"{where} has reached={run.reached!r}; it must be True or False")
    _check_count(run.steps, f"{where}: steps", minimum=0)
    if not isinstance(run.measures, Mapping):
        raise ValueError(f"{where} has measures of type {type(run.measures).__name__}; give a mapping name -> value")
    return run


def _runs_by_method(runs: Iterable[Any], max_steps: int | None) -> dict[str, list[StoppedRun]]:
    by_method: dict[str, list[StoppedRun]] = {}
    for record in runs:
        run = _as_run(record)
        if max_steps is not None:
            if run.steps > max_steps:
                raise ValueError(
                    f"runs: the run ({run.method!r}, seed {run.seed!r}) took {run.steps} steps, past max_steps "
                    f"{max_steps}"
                )
            if not run.reached and run.steps != max_steps:
                raise ValueError(
                    f"runs: the run ({run.method!r}, seed {run.seed!r}) is censored at step {run.steps}, before the "
                    f"budget {max_steps}: a run that stops early without reaching the level failed; fix or rerun it"
                )
        by_method.setdefault(run.method, []).append(run)
    for method, method_runs in by_method.items():
        seeds = [r.seed for r in method_runs]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"runs: method {method!r} has a seed twice ({seeds}); give one record per (method, seed)")
    if not by_method:
        raise ValueError("runs: no run records; give one per (method, seed), censored runs included")
    return by_method


def _median_steps(runs: Sequence[StoppedRun]) -> tuple[float, bool]:
    """The median of steps, censored runs at their budget, and whether censoring can move it (a lower bound).

    Sorted by steps (censored after reached runs at the same step), the median reads positions (n − 1) // 2 and
    n // 2. A censored run's true steps-to-level is above its budget, so raising it can only move order
    statistics at or after its position: the median is exact when every censored run sits after position n // 2,
    and a lower bound otherwise. With one budget for all runs this is the Kaplan–Meier median when it is defined."""
    ordered = sorted(runs, key=lambda r: (r.steps, not r.reached))
    n = len(ordered)
    median = (ordered[(n - 1) // 2].steps + ordered[n // 2].steps) / 2
    lower_bound = any(not r.reached for r in ordered[: n // 2 + 1])
    return float(median), lower_bound


def censoring_summary(runs: Iterable[Any], max_steps: int | None = None) -> list[MethodCensoring]:
    """Per method, every run counted: reached and censored, the median steps-to-level (a lower bound where
    censoring affects it) and the mean of each measure at the stopping point over all runs (NaN where a run lacks
    it) (docs/theory.md §19). Given ``max_steps``, a censored run must have stopped at it."""
    summary = []
    for method, method_runs in _runs_by_method(runs, max_steps).items():
        median, bound = _median_steps(method_runs)
        names = list(dict.fromkeys(k for r in method_runs for k in r.measures))
        measures = {k: float(np.mean([float(r.measures.get(k, math.nan)) for r in method_runs])) for k in names}
        n_reached = sum(bool(r.reached) for r in method_runs)
        cell = f"\u2265 {median:g}" if bound else f"{median:g}"
        summary.append(
            MethodCensoring(
                method, len(method_runs), n_reached, len(method_runs) - n_reached, median, bound, cell, measures
            )
        )
    return summary


def _first(x: StoppedRun, y: StoppedRun) -> bool:
    """Whether x surely reached the level before y: x reached at t, and y reached later or was censored at ≥ t."""
    return bool(x.reached) and (x.steps < y.steps or (x.steps == y.steps and not y.reached))


def compare_steps_to_level(
    runs: Iterable[Any], method_a: str, method_b: str, max_steps: int | None = None
) -> StepsComparison:
    """Which of two methods reaches the level sooner, seed by seed, censored runs kept (docs/theory.md §19).

    A Gehan-type pairwise score on paired seeds: for each seed, A is first when A reached the level at step t and
    B reached it after t or was censored at a budget ≥ t (B's steps-to-level exceed its budget); B first
    symmetrically; a tie when both reached at the same step; both censored gives no order (counted, not
    dropped); indeterminate when one was censored before the other reached (only with unequal budgets). The score
    is a_first − b_first, tested by a two-sided exact sign test on the decisive seeds (scipy ``binomtest``, p =
    0.5); with s decisive seeds p ≥ 2 · 0.5^s, so 3 seeds can show a direction but never p < 0.05."""
    by_method = _runs_by_method(runs, max_steps)
    for name, method in (("method_a", method_a), ("method_b", method_b)):
        if method not in by_method:
            raise ValueError(f"{name}: no runs of {method!r}; the methods are {sorted(by_method)}")
    a = {r.seed: r for r in by_method[method_a]}
    b = {r.seed: r for r in by_method[method_b]}
    if set(a) != set(b):
        raise ValueError(
            f"runs: {method_a!r} and {method_b!r} ran different seeds ({sorted(map(str, a))} vs "
            f"{sorted(map(str, b))}); the comparison is paired: run every method on every seed"
        )
    a_first = b_first = ties = both_censored = indeterminate = 0
    for seed in a:
        x, y = a[seed], b[seed]
        if _first(x, y):
            a_first += 1
        elif _first(y, x):
            b_first += 1
        elif x.reached and y.reached:
            ties += 1
        elif not x.reached and not y.reached:
            both_censored += 1
        else:
            indeterminate += 1
    decisive = a_first + b_first
    p = float(binomtest(a_first, decisive, 0.5).pvalue) if decisive else math.nan
    return StepsComparison(
        method_a, method_b, len(a), a_first, b_first, ties, both_censored, indeterminate, a_first - b_first, p
    )


def censoring_table(
    runs: Iterable[Any], comparisons: Sequence[tuple[str, str]] = (), max_steps: int | None = None
) -> CensoringTable:
    """The censoring-aware table of a run: ``censoring_summary`` of every method and ``compare_steps_to_level``
    of each (method A, method B) pair in ``comparisons``. No run is dropped (docs/theory.md §19)."""
    runs = list(runs)
    methods = tuple(censoring_summary(runs, max_steps))
    pairs = []
    for pair in comparisons:
        if not (isinstance(pair, tuple) and len(pair) == 2):
            raise ValueError(f"comparisons: each entry must be a (method_a, method_b) tuple, got {pair!r}")
        pairs.append(compare_steps_to_level(runs, pair[0], pair[1], max_steps))
    return CensoringTable(methods, tuple(pairs))
