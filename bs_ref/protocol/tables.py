"""Result tables: one row per method and run (``summary.csv``), per-method statistics, Markdown tables.

``summary_rows`` turns finished results into rows of ``SUMMARY_COLUMNS`` (docs/theory.md §6 metrics;
``fact_leak`` empty where the data has no facts) plus ``mean`` and ``std`` rows for a method with several
runs — a run is one (unlearning seed, model-pair seed) cell; ``method_statistics`` gives (mean, std, n) per
method and column (std with ddof 1, over runs: docs/theory.md §10); ``write_csv`` writes rows with 6
significant digits and empty cells for missing numbers; ``format_table`` is the Table-1-style Markdown of
``table.md``, each cell ``value [95 % interval]`` from the ``<column>_ci_low`` / ``<column>_ci_high`` cells
that ``bs_ref.protocol.uncertainty`` fills in. A missing number is never zero: it is an empty cell in a CSV
and "n/a" (or "–" next to finite values) in a table.

``summary.csv`` keeps the columns (and values) of earlier versions first, then appends ``SUMMARY_EXTRA``
(the model-pair seed, the high-band drop, the number of runs) and the interval columns (``SUMMARY_CSV_COLUMNS``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bs_ref.protocol.stats import format_interval
from bs_ref.protocol.store import write_text

SUMMARY_COLUMNS = (
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
)
"""Columns of ``summary.csv``; the first nine are the fixed contract, the rest are extra diagnostics."""
SUMMARY_EXTRA = ("pair_seed", "high_band_drop", "n_runs")
"""Appended after ``SUMMARY_COLUMNS``: the model-pair seed of a run (empty in mean/std rows), the drop of the
original model's high-likelihood belief band from step 0 to the end (start − end; positive = fell), and the
number of runs behind a row (1 for a run, n for its method's mean/std rows)."""
SUMMARY_CI_MEASURES = (
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
    "high_band_drop",
)
"""The summary numbers that get a 95 % interval (``bs_ref.protocol.uncertainty.MEASURES``)."""


def ci_columns(measures: Iterable[str]) -> tuple[str, ...]:
    """``<measure>_ci_low``, ``<measure>_ci_high`` for every measure, in order."""
    return tuple(f"{m}_ci_{side}" for m in measures for side in ("low", "high"))


SUMMARY_CSV_COLUMNS = (*SUMMARY_COLUMNS, *SUMMARY_EXTRA, *ci_columns(SUMMARY_CI_MEASURES))
"""Every column of ``summary.csv``."""

TABLE_COLUMNS = (
    ("forget_quality", "FQ"),
    ("log10_forget_quality", "log10 FQ"),
    ("model_utility", "MU"),
    ("mem", "Mem"),
    ("util", "Util"),
    ("agg", "Agg"),
    ("fact_leak", "fact leak"),
    ("fact_leak_paraphrased_question", "leak (para. Q)"),
    ("fact_leak_any_of_n", "leak (any of N)"),
    ("forget_rougeL", "forget ROUGE-L"),
    ("forget_truth_ratio", "forget TR"),
)
"""Columns of the end-of-training table in ``table.md`` (column, header)."""

MISSING = "n/a"
"""What a table shows where a number does not exist (e.g. a belief band without candidates)."""


def number(value: Any) -> float:
    """``value`` as a float; None, "" and anything unparsable become NaN."""
    if value is None or value == "":
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def fmt(value: float, digits: int = 3) -> str:
    """A table cell: fixed point, scientific for very small or large numbers, "–" for NaN/inf."""
    if not math.isfinite(value):
        return "–"
    if value != 0 and (abs(value) < 10 ** (-digits) or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def high_band_drop(result: dict) -> float | None:
    """The high band's pooled mean log-prob at the start of the curve minus at its end (None without it)."""
    curve = result.get("curve") or []
    if len(curve) < 2:
        return None
    start, end = number(curve[0].get("band_high_logprob")), number(curve[-1].get("band_high_logprob"))
    drop = start - end
    return drop if math.isfinite(drop) else None


def summary_rows(results: Sequence[dict]) -> list[dict]:
    """One row per result (keys of ``SUMMARY_COLUMNS`` and ``SUMMARY_EXTRA``), then ``mean`` and ``std`` rows
    per method with several runs. Each result is ``{"method", "seed", "pair_seed", "metrics": {...}, "curve"}``
    (``pair_seed`` absent: 0); missing numbers stay empty."""
    rows, by_method = [], {}
    for result in results:
        metrics = result.get("metrics", {})
        row = {"method": result["method"], "seed": "" if result.get("seed") is None else result["seed"]}
        for column in SUMMARY_COLUMNS[2:]:
            value = metrics.get(column, result.get(column))
            row[column] = value if value is not None else ""
        row["pair_seed"] = result.get("pair_seed") or 0
        drop = high_band_drop(result)
        row["high_band_drop"] = "" if drop is None else drop
        row["n_runs"] = 1
        rows.append(row)
        by_method.setdefault(result["method"], []).append(row)
    for method, method_rows in by_method.items():
        if len(method_rows) < 2:
            continue
        for statistic in ("mean", "std"):
            row = {"method": method, "seed": statistic, "pair_seed": "", "n_runs": len(method_rows)}
            for column in (*SUMMARY_COLUMNS[2:], "high_band_drop"):
                values = np.array([number(r[column]) for r in method_rows], dtype=float)
                values = values[np.isfinite(values)]
                if values.size == 0:
                    row[column] = ""
                elif statistic == "mean":
                    row[column] = float(values.mean())
                else:
                    row[column] = float(values.std(ddof=1)) if values.size > 1 else 0.0
            rows.append(row)
    return rows


def write_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str] = SUMMARY_CSV_COLUMNS) -> Path:
    """Write rows as CSV atomically (numbers with 6 significant digits, empty cells for missing values)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _format_cell(row.get(k, "")) for k in columns})
    return write_text(path, buffer.getvalue())


def _format_cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if not math.isfinite(float(value)) else f"{float(value):.6g}"
    return value


def method_statistics(rows: Sequence[dict], columns: Iterable[str]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per method and column: (mean, std, n) over the per-seed rows of ``summary_rows`` (n = 0: no value)."""
    columns = list(columns)
    stats: dict[str, dict[str, tuple[float, float, int]]] = {}
    for row in rows:
        if row["seed"] not in ("mean", "std"):
            stats.setdefault(row["method"], {})
    for method in stats:
        method_rows = [r for r in rows if r["method"] == method and r["seed"] not in ("mean", "std")]
        for column in columns:
            values = np.array([number(r.get(column)) for r in method_rows], dtype=float)
            values = values[np.isfinite(values)]
            if values.size == 0:
                stats[method][column] = (float("nan"), float("nan"), 0)
            else:
                std = float(values.std(ddof=1)) if values.size > 1 else 0.0
                stats[method][column] = (float(values.mean()), std, int(values.size))
    return stats


def mean_std(stat: tuple[float, float, int], digits: int = 3) -> str:
    """``mean ± std`` of one (mean, std, n) statistic; the mean alone for n = 1; ``MISSING`` for n = 0."""
    mean, std, n = stat
    if n == 0:
        return MISSING
    return fmt(mean, digits) + (f" ± {fmt(std, digits)}" if n > 1 else "")


def with_interval(stat: tuple[float, float, int], low: Any = None, high: Any = None, digits: int = 3) -> str:
    """``value [low, high]`` of one (mean, std, n) statistic and its 95 % interval; ``value [–, –]`` where the
    interval is missing; ``MISSING`` for n = 0."""

    mean, _, n = stat
    if n == 0:
        return MISSING
    return format_interval(mean, number(low), number(high), digits)


def method_rows(rows: Sequence[dict]) -> dict[str, dict]:
    """Per method, the row that carries its method-level values: its ``mean`` row, or its one run's row."""
    out: dict[str, dict] = {}
    for row in rows:
        if row["seed"] == "std":
            continue
        if row["seed"] == "mean" or row["method"] not in out:
            out[row["method"]] = row
    return out


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS, digits: int = 3) -> str:
    """Markdown table (Table-1 style): one line per method, ``value [low, high]`` — the mean over its runs and
    the 95 % interval of the method's row (``<column>_ci_low``/``_ci_high``) — and ``n``, the number of runs.
    Columns that are empty for every method (e.g. fact leak on data without facts) are left out."""
    stats = method_statistics(rows, [c for c, _ in columns])
    carriers = method_rows(rows)
    kept = [(c, h) for c, h in columns if any(stats[m][c][2] > 0 for m in stats)]
    lines = ["| method | n | " + " | ".join(h for _, h in kept) + " |", "|---|---:|" + "---:|" * len(kept)]
    for method, by_column in stats.items():
        row = carriers.get(method, {})
        n = sum(1 for r in rows if r["method"] == method and r["seed"] not in ("mean", "std"))
        cells = [with_interval(by_column[c], row.get(f"{c}_ci_low"), row.get(f"{c}_ci_high"), digits) for c, _ in kept]
        lines.append(f"| {method} | {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
