"""Matched forgetting: methods compared at the same amount of forgetting instead of at their last step.

Every method is evaluated every few steps (``bs_ref.protocol.evaluate``), which gives a curve of points
(step, forgetting, utility, belief bands, ...). For a forgetting measure f (larger = more forgotten: the drop
of the forget answers' mean token log-prob, or 1 − fact-leak rate; ``FORGETTING_MEASURES``) the common level
f* is by default ``MATCH_MARGIN`` × the lower median over methods of max f along each curve (averaged over
seeds) — a level at least half of the methods reach, so one weak method cannot pull the comparison down to
almost no forgetting (``policy="min"``: × the most forgetting every method reaches). Every other quantity is
read off each curve at the first evaluation where f reaches f*, interpolating linearly between the two
evaluations around it; a method whose curve never reaches f* is "not reached", with its own best, never a
made-up value (docs/theory.md §11 item 17, §12).

A quantity a curve lacks (a belief band without candidates, FQ without a retain model) is NaN at the level:
an empty cell in ``matched.csv`` and "n/a" in the table.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from bs_ref.metrics.leakage import BANDS
from bs_ref.protocol.tables import mean_std, method_statistics, number, with_interval

FORGETTING_MEASURES = {
    "target_drop": "drop of the forget answers' mean token log-prob",
    "fact_unleaked": "1 − fact-leak rate",
}
"""Measures of forgetting used for matched comparisons (larger = more forgotten)."""

MATCH_POLICIES = ("median", "min")
MATCH_MARGIN = 0.9
"""The common level is this fraction of the chosen maximum, so the method that sets it is read inside its
curve rather than at its last evaluation (and a near-tie such as BS-T vs GA×(1−λ) does not split at the level)."""

MATCHED_KEYS = (
    "model_utility",
    "mem",
    "fact_leak",
    "log10_forget_quality",
    "target_logprob",
    *(f"band_{b}_logprob" for b in BANDS),
)
"""Curve quantities read off at the level."""
MATCHED_COLUMNS = (
    "measure",
    "level",
    "method",
    "seed",
    "reached",
    "max_forgetting",
    "step",
    "model_utility",
    "mem",
    "fact_leak",
    "log10_forget_quality",
    "target_change",
    "high_band_change",
    "mid_band_change",
    "low_band_change",
    "pair_seed",
)
"""Columns of ``matched.csv`` (``pair_seed`` appended after the columns of earlier versions; the report appends
``<column>_ci_low`` / ``<column>_ci_high`` for ``MATCHED_CI_COLUMNS``)."""
MATCHED_CI_COLUMNS = (
    "model_utility",
    "mem",
    "fact_leak",
    "log10_forget_quality",
    "target_change",
    "high_band_change",
    "mid_band_change",
    "low_band_change",
)
"""The matched values that get a 95 % interval (item resampling of the per-item values read off the curve)."""
MATCHED_TABLE = (
    ("step", "step"),
    ("model_utility", "MU"),
    ("mem", "Mem"),
    ("fact_leak", "fact leak"),
    ("log10_forget_quality", "log10 FQ"),
    ("target_change", "Δ target"),
    ("high_band_change", "Δ high band"),
    ("mid_band_change", "Δ mid band"),
    ("low_band_change", "Δ low band"),
)


# --------------------------------------------------------------------------------------------- one curve
def forgetting_value(point: dict, measure: str, start: dict) -> float:
    """Forgetting of one curve point (larger = more forgotten), relative to the curve's first point."""
    if measure == "target_drop":
        return number(start.get("target_logprob")) - number(point.get("target_logprob"))
    if measure == "fact_unleaked":
        return 1.0 - number(point.get("fact_leak"))
    raise ValueError(f"unknown forgetting measure {measure!r}; choose one of {sorted(FORGETTING_MEASURES)}")


def crossing(curve: Sequence[dict], measure: str, level: float) -> tuple[int, int, float] | None:
    """(index of the evaluation before, index of the evaluation at or past, weight) where the curve's forgetting
    first reaches ``level``: the value there is ``lo + weight · (hi − lo)`` (weight 1: the evaluation itself).
    None when the curve never reaches the level. The weight is found on the curve's aggregate forgetting (all
    items), so every per-item value is read off with the same weight (``bs_ref.protocol.uncertainty``)."""
    if not curve or not math.isfinite(level):
        return None
    values = [forgetting_value(p, measure, curve[0]) for p in curve]
    for i, value in enumerate(values):
        if not math.isfinite(value) or value < level:
            continue
        if i == 0 or not math.isfinite(values[i - 1]) or values[i] == values[i - 1]:
            weight = 1.0
        else:
            weight = (level - values[i - 1]) / (values[i] - values[i - 1])
        return max(i - 1, 0), i, weight
    return None


def interpolate_at_level(curve: Sequence[dict], measure: str, level: float, keys: Iterable[str]) -> dict | None:
    """Values of ``keys`` where the curve's forgetting first reaches ``level`` (linear interpolation between
    the two evaluations around the crossing; NaN for a key the points lack); None when it never reaches it."""
    found = crossing(curve, measure, level)
    if found is None:
        return None
    lo, hi = curve[found[0]], curve[found[1]]
    weight = found[2]
    out = {"forgetting": level, "step": lerp(number(lo.get("step")), number(hi.get("step")), weight)}
    for key in keys:
        out[key] = lerp(number(lo.get(key)), number(hi.get(key)), weight)
    return out


def lerp(a, b, weight: float):
    """``a + weight · (b − a)``, and exactly ``b`` at weight >= 1 (numbers or numpy arrays alike)."""
    if weight >= 1.0:
        return b
    return a + weight * (b - a)


def max_forgetting(curve: Sequence[dict], measure: str) -> float:
    """The most forgetting along one curve (NaN for a curve with fewer than two points or no finite value)."""
    if len(curve) < 2:
        return float("nan")
    values = np.array([forgetting_value(p, measure, curve[0]) for p in curve], dtype=float)
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else float("nan")


# --------------------------------------------------------------------------------------------- the level
def level_from_maxima(maxima: Iterable[float], policy: str = "median", margin: float = MATCH_MARGIN) -> float:
    """The common level from each method's maximum forgetting: ``margin`` × the lower median (at least half
    of the methods reach it) or × the minimum (every method reaches it); NaN when no maximum is finite."""
    if policy not in MATCH_POLICIES:
        raise ValueError(f"unknown matching policy {policy!r}; choose one of {MATCH_POLICIES}")
    if not 0 < margin <= 1:
        raise ValueError(f"margin must be in (0, 1], got {margin}")
    finite = sorted(m for m in maxima if math.isfinite(m))
    if not finite:
        return float("nan")
    return margin * (finite[0] if policy == "min" else finite[(len(finite) - 1) // 2])


def common_level(
    curves: dict[str, Sequence[dict]], measure: str, policy: str = "median", margin: float = MATCH_MARGIN
) -> float:
    """f* from the methods' curves: ``level_from_maxima`` of their maximum forgetting."""
    return level_from_maxima((max_forgetting(c, measure) for c in curves.values()), policy, margin)


def matched_forgetting(
    curves: dict[str, Sequence[dict]],
    measure: str,
    keys: Iterable[str],
    level: float | None = None,
    policy: str = "median",
) -> tuple[float, dict[str, dict | None]]:
    """(level, {method: values of ``keys`` at that level, or None where the curve never reaches it}).

    ``curves[method]`` is the list of evaluation points over training (dicts with ``step`` and the keys) of
    one seed, the first one at step 0. The level defaults to ``common_level(curves, measure, policy)``; a
    level at or below the start (nothing forgotten) is not a comparison, so the result is then NaN and every
    method gets None.
    """
    if level is None:
        level = common_level(curves, measure, policy)
    if not math.isfinite(level) or level <= 0:
        return float("nan"), {m: None for m in curves}
    return level, {m: interpolate_at_level(c, measure, level, keys) for m, c in curves.items()}


# --------------------------------------------------------------------------------------------- matched.csv
def given_levels(target_drop: float | None, fact_leak: float | None) -> dict[str, float | None]:
    """Levels given on the command line (``--match-target-drop``, ``--match-fact-leak``) in forgetting units;
    None: chosen from the curves."""
    return {"target_drop": target_drop, "fact_unleaked": None if fact_leak is None else 1.0 - fact_leak}


def level_problems(target_drop: float | None, fact_leak: float | None) -> list[str]:
    """Problems of the levels given on the command line."""
    out = []
    if target_drop is not None and not (math.isfinite(target_drop) and target_drop > 0):
        out.append(f"--match-target-drop must be a positive number of nats, got {target_drop}")
    if fact_leak is not None and not 0 <= fact_leak < 1:
        out.append(f"--match-fact-leak must be a fact-leak rate in [0, 1), got {fact_leak}")
    return out


def run_key(result: dict) -> tuple[int | None, int]:
    """(unlearning seed, model-pair seed) of a result; results written before pair seeds existed are pair 0."""
    return result.get("seed"), result.get("pair_seed") or 0


def matched_rows(results: list[dict], seeds, given: dict[str, float | None] | None = None) -> tuple[list[dict], dict]:
    """Rows of ``matched.csv``: per forgetting measure, run (seed, pair seed) and unlearning method, the values at
    one level.

    The level of a measure is the one given (``given_levels``) or ``MATCH_MARGIN`` × the lower median over
    methods of their maximum forgetting (averaged over runs), so at least half of the methods reach it and
    every run is read at the same level. A method that never reaches it gets a row with ``reached`` False and
    its own maximum. Returns (rows, {measure: level}).
    """
    given = given or {}
    pairs = list(dict.fromkeys(run_key(r)[1] for r in results))
    by_run = {}
    for pair in pairs:
        for seed in seeds:
            curves = {
                r["method"]: r["curve"] for r in results if run_key(r) == (seed, pair) and len(r.get("curve", [])) > 1
            }
            if curves:
                by_run[(seed, pair)] = curves
    rows, levels = [], {}
    for measure in FORGETTING_MEASURES:
        maxima: dict[str, list[float]] = {}
        for curves in by_run.values():
            for method, curve in curves.items():
                maxima.setdefault(method, []).append(max_forgetting(curve, measure))
        level = given.get(measure)
        if level is None:
            level = level_from_maxima(
                float(np.nanmean(v)) if np.isfinite(v).any() else float("nan") for v in maxima.values()
            )
        levels[measure] = level
        if not (math.isfinite(level) and level > 0):
            continue
        for (seed, pair), curves in by_run.items():
            _, at = matched_forgetting(curves, measure, MATCHED_KEYS, level=level)
            for method, values in at.items():
                start = curves[method][0]
                row = {
                    "measure": measure,
                    "level": level,
                    "method": method,
                    "seed": seed,
                    "reached": values is not None,
                    "max_forgetting": max_forgetting(curves[method], measure),
                    "pair_seed": pair,
                }
                if values is not None:
                    row.update(
                        {
                            k: values.get(k)
                            for k in ("step", "model_utility", "mem", "fact_leak", "log10_forget_quality")
                        }
                    )
                    row["target_change"] = values["target_logprob"] - number(start.get("target_logprob"))
                    for band in BANDS:  # NaN (n/a) where the curve has no such band
                        key = f"band_{band}_logprob"
                        row[f"{band}_band_change"] = values[key] - number(start.get(key))
                rows.append(row)
    return rows, levels


def in_units(measure: str, forgetting: float) -> str:
    """A forgetting level as the table states it: nats of target drop, or the fact-leak rate."""
    return f"{forgetting:.3f} nats" if measure == "target_drop" else f"fact leak {1 - forgetting:.3f}"


def format_matched(rows: list[dict], measure: str, intervals: dict[str, dict[str, tuple]] | None = None) -> str:
    """Markdown table of one measure: per method, how many runs reach the level and the values there (the mean
    over the runs that reach it, ``[low, high]`` its 95 % interval from ``intervals`` {method: {column: (low,
    high)}} — ``[–, –]`` where there is none; "n/a" where no run has the value, e.g. a missing belief band);
    "not reached" with the method's own best otherwise."""
    intervals = intervals or {}
    methods = list(dict.fromkeys(r["method"] for r in rows))
    reached = [dict(r) for r in rows if r["reached"]]
    stats = method_statistics(reached, [c for c, _ in MATCHED_TABLE])
    lines = [
        "| method | reached | " + " | ".join(h for _, h in MATCHED_TABLE) + " |",
        "|---|---|" + "---:|" * len(MATCHED_TABLE),
    ]
    for method in methods:
        own = [r for r in rows if r["method"] == method]
        n = sum(r["reached"] for r in own)
        if n == 0:
            best = float(np.nanmean([number(r["max_forgetting"]) for r in own]))
            lines.append(f"| {method} | not reached (best: {in_units(measure, best)}) |" + " – |" * len(MATCHED_TABLE))
            continue
        bounds = intervals.get(method, {})
        cells = [
            with_interval(stats[method][column], *bounds.get(column, (None, None)))
            if column != "step"
            else mean_std(stats[method][column])
            for column, _ in MATCHED_TABLE
        ]
        lines.append(f"| {method} | {n}/{len(own)} runs | " + " | ".join(cells) + " |")
    return "\n".join(lines)
