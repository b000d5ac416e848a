"""Result tables: one row per method and seed (``summary.csv``), per-method statistics, Markdown tables.

``summary_rows`` turns finished results into rows of ``SUMMARY_COLUMNS`` (docs/theory.md §6 metrics;
``fact_leak`` empty where the data has no facts) plus ``mean`` and ``std`` rows for a method with several
seeds; ``method_statistics`` gives (mean, std, n) per method and column (std with ddof 1, over unlearning
seeds: docs/theory.md §10); ``write_csv`` writes rows with 6 significant digits and empty cells for missing
numbers; ``format_table`` is the Table-1-style Markdown of ``table.md``. A missing number is never zero: it
is an empty cell in a CSV and "n/a" (or "–" next to finite values) in a table.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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


def summary_rows(results: Sequence[dict]) -> list[dict]:
    """One row per result (keys of ``SUMMARY_COLUMNS``), then ``mean`` and ``std`` rows per method with
    several seeds. Each result is ``{"method", "seed", "metrics": {...}}``; missing numbers stay empty."""
    rows, by_method = [], {}
    for result in results:
        metrics = result.get("metrics", {})
        row = {"method": result["method"], "seed": "" if result.get("seed") is None else result["seed"]}
        for column in SUMMARY_COLUMNS[2:]:
            value = metrics.get(column, result.get(column))
            row[column] = value if value is not None else ""
        rows.append(row)
        by_method.setdefault(result["method"], []).append(row)
    for method, method_rows in by_method.items():
        if len(method_rows) < 2:
            continue
        for statistic in ("mean", "std"):
            row = {"method": method, "seed": statistic}
            for column in SUMMARY_COLUMNS[2:]:
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


def write_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str] = SUMMARY_COLUMNS) -> Path:
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


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS, digits: int = 3) -> str:
    """Markdown table (Table-1 style): one line per method, ``mean ± std`` where there are several seeds.
    Columns that are empty for every method (e.g. fact leak on data without facts) are left out."""
    stats = method_statistics(rows, [c for c, _ in columns])
    kept = [(c, h) for c, h in columns if any(stats[m][c][2] > 0 for m in stats)]
    lines = ["| method | " + " | ".join(h for _, h in kept) + " |", "|---|" + "---:|" * len(kept)]
    for method, by_column in stats.items():
        cells = [mean_std(by_column[column], digits) for column, _ in kept]
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
