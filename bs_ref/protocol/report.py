"""The report of a run: ``summary.csv``, ``matched.csv``, ``verdict.csv``, ``table.md`` and ``plots/*.png``.

``write_report`` reads every finished result of the run directory and writes

- ``summary.csv``: one row per method and run (seed, model-pair seed) at the end of training, and mean/std rows
  over a method's runs (``bs_ref.protocol.tables``), every number with its 95 % interval
  (``bs_ref.protocol.uncertainty``);
- ``matched.csv``: the methods at matched forgetting (``bs_ref.protocol.matched``), with intervals;
- ``verdict.csv``: paired comparisons (BS-T − GA×(1−λ), BS-S − its base, BS-S − NPO, BS-T − NPO, each method −
  GA) on the leakage, forgetting and utility measures, at the end of training and at each matched level,
  with better / worse / no difference at 95 % (``bs_ref.protocol.stats``);
- ``recovery.csv`` and ``plots/recovery.png`` when the run attacked its models (``bs_ref.protocol.recovery``);
- ``table.md``: the verdicts first, then the command, the settings, the end-of-training table, one
  matched-forgetting table per measure, the methods whose facts leak while ROUGE-L / the truth ratio call them
  forgotten (``leak_while_forgotten``, docs/theory.md §6), the methods that diverged, and the plots (or why
  they were skipped: matplotlib is the optional extra ``[plots]``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bs_ref import timing
from bs_ref.protocol import fair, plots, recovery_table, stats, uncertainty
from bs_ref.protocol.matched import (
    MATCH_MARGIN,
    MATCHED_CI_COLUMNS,
    MATCHED_COLUMNS,
    format_matched,
    in_units,
    matched_rows,
)
from bs_ref.protocol.store import REFERENCE_METHODS, RunDir, cell_name, read_json, write_json, write_text
from bs_ref.protocol.tables import (
    SUMMARY_CI_MEASURES,
    ci_columns,
    format_table,
    method_statistics,
    summary_rows,
    write_csv,
)
from bs_ref.protocol.uncertainty import Context

MATCHED_CSV_COLUMNS = (*MATCHED_COLUMNS, *ci_columns(MATCHED_CI_COLUMNS))
"""Every column of ``matched.csv``."""
VERDICT_HEADERS = {
    "fact_leak": "fact leak ↓",
    "fact_leak_paraphrased_question": "leak (para. Q) ↓",
    "fact_leak_any_of_n": "leak (any of N) ↓",
    "target_logprob_drop": "target drop ↑",
    "high_band_drop": "high-band drop ↑",
    "model_utility": "MU ↑",
    "agg": "Agg ↑",
    "log10_forget_quality": "log10 FQ ↑",
}
"""Verdict-table column headers (the arrow: the direction that counts as better)."""


def describe(info: dict, settings: dict[str, Any], seeds: Sequence[int], pair_seeds: Sequence[int] = (0,)) -> str:
    """The paragraph of table.md that states the data (``Data.info``) and the settings ({flag name: value})."""
    s = settings
    precision = "bf16" if s.get("bf16") else s.get("precision", "fp32")
    return (
        f"Data: {info['source']} {info['forget']} ({info['n_forget_train']} forget / {info['n_retain_train']} retain "
        f"training items; evaluated on {info['n_eval']}); template {s['template']}; metric convention "
        f"{s['convention']}; seeds {list(seeds)}; model-pair seeds {list(pair_seeds)}; precision {precision}; "
        f"equal budget: lr {s['lr']}, {s['epochs']} epochs, batch "
        f"{s['batch_size']}×{s['grad_accum']}; BS-T λ={s['lam']}, k={s['top_k']}, τ={s['temperature']}; BS-S "
        f"{s['regime']}, N={s['n_beliefs']}, λ_BSS={s['lam_bss']}, base {s['base']}."
    )


def leak_while_forgotten(rows: Sequence[dict]) -> list[str]:
    """Methods whose fact-leak rate stays above the retain model's (by more than 0.05) while ROUGE-L or the
    truth ratio of the forget split are at or past the retain model's level (within 0.05) — the failure the
    standard metrics miss (docs/theory.md §6)."""
    stats = method_statistics(rows, ["fact_leak", "forget_rougeL", "forget_truth_ratio", "forget_quality"])
    if "retrain" not in stats:
        return []
    ref = stats["retrain"]
    flagged = []
    for method, values in stats.items():
        if method in REFERENCE_METHODS or values["fact_leak"][2] == 0:
            continue
        leak, ref_leak = values["fact_leak"][0], ref["fact_leak"][0]
        rouge_forgotten = values["forget_rougeL"][0] <= ref["forget_rougeL"][0] + 0.05
        tr_forgotten = values["forget_truth_ratio"][0] >= ref["forget_truth_ratio"][0] - 0.05
        if leak > ref_leak + 0.05 and (rouge_forgotten or tr_forgotten):
            why = " and ".join(n for n, ok in (("ROUGE-L", rouge_forgotten), ("truth ratio", tr_forgotten)) if ok)
            verb = "are" if rouge_forgotten and tr_forgotten else "is"
            flagged.append(
                f"{method}: fact leak {leak:.2f} (retain model {ref_leak:.2f}) while {why} {verb} at "
                "the retain model's level"
            )
    return flagged


@dataclass
class RunInfo:
    """What table.md states about a run besides its results: the ``command``, the ``settings`` paragraph
    (``describe``), whether the data has annotated facts (``has_facts``: without them the fact-leak column is
    empty), the matched levels given on the command line (``given``, ``matched.given_levels``), notes for under the
    end-of-training table and one line per method/seed that stopped with NaN/inf (``diverged``)."""

    command: str
    settings: str
    has_facts: bool
    given: dict[str, float | None]
    notes: Sequence[str] = ()
    diverged: Sequence[str] = ()


@timing.timed("report")
def write_report(
    store: RunDir,
    results: list[dict],
    seeds: Sequence[int],
    info: RunInfo,
    context: Context | None = None,
    recovery: dict | None = None,
) -> dict:
    """Write summary.csv, matched.csv, verdict.csv, table.md and the plots for ``results`` (finished results,
    in table order); ``info``: what table.md states about the run (``RunInfo``); ``context``: what the intervals and
    verdicts need besides the results (``uncertainty.Context``; default: convention tofu, no retain items, the
    declarations read from the labels); ``recovery``: the attacks' part (``bs_ref.protocol.recovery.recovery_report``:
    its rows go to recovery.csv, its verdicts to verdict.csv, its lines to table.md, and plots/recovery.png).
    Returns what was written."""
    ctx = context or Context()
    runs = uncertainty.load_runs(store, results, ctx)
    rows = summary_rows(results)
    if not info.has_facts:
        for row in rows:
            row["fact_leak"] = ""
    uncertainty.summary_intervals(rows, runs, ctx, SUMMARY_CI_MEASURES)
    write_csv(store.path("summary.csv"), rows)
    matched, levels = matched_rows(results, seeds, info.given)
    uncertainty.matched_intervals(matched, runs, levels, ctx)
    write_csv(store.path("matched.csv"), matched, MATCHED_CSV_COLUMNS)
    labels = list(dict.fromkeys(r["method"] for r in results))
    verdicts = uncertainty.verdict_rows(runs, labels, levels, ctx)
    all_verdicts = verdicts + (recovery["verdicts"] if recovery is not None else [])
    if recovery is not None:
        write_text(store.path("recovery.csv"), recovery_table.recovery_csv(recovery["rows"]))
    write_text(store.path("verdict.csv"), stats.verdict_csv(all_verdicts))

    compared = bool(uncertainty.comparisons([label for label in labels if label in runs], ctx))
    lines = [
        "# TOFU unlearning results",
        "",
        *format_verdicts(verdicts, levels, compared),
        f"Command: `{info.command}`",
        "",
        info.settings,
        "",
        "## At the end of training",
        "",
        "Each cell: the mean over the method's runs (n = unlearning seeds × model pairs) [95 % interval: items "
        "resampled within runs, runs resampled across seeds and model pairs; bs_ref.protocol.stats].",
        "",
        format_table(rows),
        "",
    ]
    lines += [x for note in info.notes for x in (f"Note: {note}.", "")]
    if info.diverged:
        lines += ["## Diverged (no result; every other result is kept)", "", *(f"- {d}" for d in info.diverged), ""]
    curves = _curves_for_plot(results, seeds[0])
    lines += _matched_sections(matched, levels, info.given, curves, runs, ctx)
    if recovery is not None:
        lines += recovery["lines"]
    flagged = leak_while_forgotten(rows)
    if info.has_facts:
        lines += ["## Facts that leak while ROUGE / truth ratio call them forgotten", ""]
        lines += [f"- {f}" for f in flagged] or ["- none"]
        lines.append("")
    figures = _plots(store.path("plots"), rows, curves, runs, ctx, recovery)
    written = [f"plots/{Path(p).name}" for p in figures.values() if p]
    if plots.pyplot() is None:
        lines += [f"Plots: {plots.PLOTS_SKIPPED}.", ""]
    else:
        lines += ["Plots: " + (", ".join(written) or "none (no finished result to plot)"), ""]
    table = "\n".join(lines)
    write_text(store.path("table.md"), table)
    return {
        "out": str(store.root),
        "rows": rows,
        "matched": matched,
        "verdicts": all_verdicts,
        "table": table,
        "plots": figures,
        "leak_while_forgotten": flagged,
        "diverged": list(info.diverged),
    }


def _matched_sections(matched: list[dict], levels: dict, given: dict, curves: dict, runs: dict, ctx: Context) -> list:
    """The lines of table.md's matched-forgetting tables, one per measure with a level."""
    has_bands = any(k.startswith("band_") and v is not None for c in curves.values() for p in c for k, v in p.items())
    bands = (
        "Band changes are vs the start (negative = fell; a rising high band while the target falls is squeezing)."
        if has_bands
        else "Belief bands: n/a (the original model gave no band candidates)."
    )
    lines = []
    for measure, level in levels.items():
        sub = [r for r in matched if r["measure"] == measure]
        if not sub:
            continue
        how = (
            "given on the command line"
            if given.get(measure) is not None
            else f"{MATCH_MARGIN:g} × the lower median of the methods' best forgetting: at least half of them reach it"
        )
        lines += [
            f"## At matched forgetting: {in_units(measure, level)}"
            + (" of target log-prob drop" if measure == "target_drop" else ""),
            "",
            f"Level: {how}. Each method is read off its own curve at the first evaluation where it reaches the "
            "level (linear interpolation between evaluations); values are the mean over the runs that reach it "
            "[95 % interval over those runs and the curve items, each item read off with the run's own "
            "interpolation weight: conditional on the level]. " + bands,
            "",
            format_matched(sub, measure, uncertainty.method_intervals(runs, measure, level, ctx)),
            "",
        ]
    return lines


def _plots(plots_dir: Path, rows: list[dict], curves: dict, runs: dict, ctx: Context, recovery: dict | None) -> dict:
    """The run's figures: {name: path, or None where it was not drawn}."""
    bands_by_method = _curve_bands(runs, ctx) if plots.pyplot() is not None else {}
    figures = {
        "metrics": plots.plot_metric_bars(rows, plots_dir / "mem_util_agg.png"),
        "squeezing": plots.plot_squeezing_traces(curves, plots_dir / "squeezing_trace.png", bands_by_method),
        "tradeoff": plots.plot_tradeoff_curves(curves, plots_dir / "tradeoff.png", bands_by_method),
    }
    if recovery is not None and recovery["rows"]:
        per_run = [r for r in recovery["rows"] if r["seed"] != "mean"]
        measure = recovery.get("measure", "fact_leak")  # target_logprob on data without facts (TOFU records)
        figures["recovery"] = recovery_table.plot_recovery(
            per_run,
            plots_dir / "recovery.png",
            title="Recovery attacks: before → after (mean over runs)",
            before=f"{measure}_before",
            after=f"{measure}_after",
        )
    return figures


def format_verdicts(verdicts: Sequence[dict], levels: dict[str, float], compared: bool = True) -> list[str]:
    """The lines of table.md's verdict section: one table per setting (end of training, each matched level),
    a row per comparison and a column per measure; a cell is the verdict for the first method and the
    difference A − B [95 % interval]. ``compared``: whether the run has methods to compare at all."""
    lines = [
        "## Verdicts: paired comparisons at 95 %",
        "",
        "A − B on the same items and the same runs (seed × model pair), 95 % interval of the difference "
        "(bs_ref.protocol.stats: items resampled within runs, runs across seeds and model pairs). **better** / "
        "**worse**: the interval excludes 0 in A's favour / against A (↑: higher is better, ↓: lower is "
        "better); *no diff.*: it contains 0. n = runs paired. verdict.csv holds every number.",
        "",
    ]
    if not verdicts and not compared:
        return [*lines, "No comparison: the run lacks the methods compared (BS-T, BS-S, GA×(1−λ), NPO, GA).", ""]
    if not verdicts:
        return [
            *lines,
            "No verdict: the results lack their per-item values (a run directory written before they "
            "were stored); rerun into a new --out for the intervals and verdicts.",
            "",
        ]
    settings = list(dict.fromkeys(v["setting"] for v in verdicts))
    for setting in settings:
        sub = [v for v in verdicts if v["setting"] == setting]
        measures = [m for m in VERDICT_HEADERS if any(v["measure"] == m for v in sub)]
        if setting == "end":
            lines += ["### At the end of training", ""]
        else:
            measure = setting.split(":", 1)[1].split("@", 1)[0]
            level = levels.get(measure, float("nan"))
            lines += [
                f"### At matched forgetting: {in_units(measure, level)}",
                "",
                "Per-item values are read off each run's curve with the run's own interpolation weight, so "
                "the interval is conditional on the level (it does not include the uncertainty of where "
                "each curve crosses it). The measure that defines the level is equal by construction and "
                "not compared; the any-of-N leak is not in the light evaluations. n/a: one method does not "
                "reach the level in a shared run.",
                "",
            ]
        lines += [
            "| A − B | n | " + " | ".join(VERDICT_HEADERS[m] for m in measures) + " |",
            "|---|---:|" + "---|" * len(measures),
        ]
        for comparison in dict.fromkeys(v["comparison"] for v in sub):
            cells, n = [], 0
            for m in measures:
                v = next((x for x in sub if x["comparison"] == comparison and x["measure"] == m), None)
                if v is None:
                    cells.append("–")
                    continue
                n = max(n, v["n_seeds"])
                word = {"better": "**better**", "worse": "**worse**", "no difference": "*no diff.*"}.get(
                    v["verdict"], v["verdict"]
                )
                cells.append(
                    word
                    if v["verdict"] == "n/a"
                    else f"{word} {stats.format_interval(v['difference'], v['ci_low'], v['ci_high'])}"
                )
            lines.append(f"| {comparison} | {n} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def _curve_bands(runs: dict, ctx: Context) -> dict[str, dict[str, list]]:
    """{method: {measure: [(step, Interval)]}} for the methods with more than one run (the plots draw bands
    only there)."""
    keys = (
        "target_change",
        *(f"{b}_band_change" for b in uncertainty.BANDS),
        "model_utility",
        "fact_leak",
        "log10_forget_quality",
        "mem",
    )
    out = {}
    for label, by_key in runs.items():
        if label in REFERENCE_METHODS or len(by_key) < 2:
            continue
        out[label] = {k: uncertainty.curve_intervals(by_key, k, ctx) for k in keys}
    return out


def _curves_for_plot(results: list[dict], seed: int) -> dict[str, list[dict]]:
    return {r["method"]: r["curve"] for r in results if r.get("seed") == seed and r.get("curve")}


# ------------------------------------------------------------------------------------------- terminal summary
PRIMARY_COMPARISONS = ("bs_t − ga_scaled", "bs_s − npo", "bs_s − bs_t", "bs_t − npo")
"""The contrasts the terminal summary shows: BS-T against its control, BS-S against NPO (the paper's main
comparison), BS-S against BS-T, BS-T against NPO. Every other comparison is in verdict.csv and table.md."""
SUMMARY_MEASURES = ("fact_leak", "high_band_drop", "target_logprob_drop")
"""The measures a summary line shows, in order of preference: the first two a setting has."""
SUMMARY_MAX_LINES = 25
"""The terminal summary's length limit (one screen)."""
_SHORT = {"fact_leak": "fact leak ↓", "high_band_drop": "high-band drop ↑", "target_logprob_drop": "target drop ↑"}


class PartClock:
    """Wall time by part of a run: ``part(name)`` ends the running part and starts ``name`` (a name seen before
    adds to its total); ``stop()`` ends the running part and returns {part: seconds}, in first-seen order."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._running: tuple[str, float] | None = None

    def part(self, name: str) -> None:
        self.stop()
        self._running = (name, time.perf_counter())

    def stop(self) -> dict[str, float]:
        if self._running is not None:
            name, began = self._running
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - began
            self._running = None
        return dict(self.seconds)


def write_timing(
    store: RunDir, cells: Sequence[tuple[str, int | None, int]], wall_s: float, since: float = 0.0
) -> dict:
    """Write ``timing.json``: this run's seconds by part (``bs_ref.timing.LEDGER``, this process) and by
    category, the total, and each cell's recorded time — its result.json's ``timing`` (unlearning, belief
    sampling, its evaluations) and its attack files' — marked computed in this run (its result.json written at or
    after ``since``, seconds since the epoch) or resumed (a resumed cell keeps the time recorded when it was
    computed). Returns what it wrote."""
    parts = {k: round(v, 3) for k, v in timing.LEDGER.totals().items()}
    by_cell = {}
    for label, seed, pair in cells:
        if not store.is_finished(label, seed, pair):
            continue
        recorded = dict(read_json(store.result_path(label, seed, pair)).get("timing") or {})
        for path in sorted(store.method_dir(label, seed, pair).glob("attacks_*.json")):
            payload = read_json(path)
            for name, seconds in (payload.get("timing") or {}).items():
                recorded[f"{name} ({payload.get('setting', path.stem[8:])})"] = seconds
        fresh = store.result_path(label, seed, pair).stat().st_mtime >= since
        by_cell[cell_name(label, seed, pair)] = {"computed": "this run" if fresh else "resumed", "seconds": recorded}
    summed: dict[str, float] = {}  # every cell's parts added up: the jobs' cost by part, whichever process ran them
    for cell in by_cell.values():
        for name, seconds in cell["seconds"].items():
            if isinstance(seconds, (int, float)):
                summed[name] = summed.get(name, 0.0) + float(seconds)
    out = {
        "total_s": round(wall_s, 3),
        "by_category_s": {k: round(v, 3) for k, v in timing.by_category(parts).items()},
        "by_part_s": parts,
        "cells_by_category_s": {k: round(v, 3) for k, v in timing.by_category(summed).items()},
        "cells_by_part_s": {k: round(v, 3) for k, v in sorted(summed.items())},
        "cells": by_cell,
        "resumed": sorted(name for name, cell in by_cell.items() if cell["computed"] == "resumed"),
        "note": "by_part_s: seconds of wall time in this process, each part exclusive of the parts nested in it; "
        "cells_by_part_s / cells_by_category_s: the cells' recorded seconds summed by part / category (jobs run in "
        "worker processes included; a "
        "resumed cell's seconds are those recorded when it was computed)",
    }
    write_json(store.path("timing.json"), out)
    return out


def _setting_name(setting: str) -> str:
    if setting == "end":
        return "at the end of training"
    measure, _, level = setting.split(":", 1)[1].partition("@")
    return f"at matched forgetting, {in_units(measure, float(level))}"


def terminal_summary(report: dict, max_lines: int = SUMMARY_MAX_LINES) -> str:
    """What ``experiments/tofu.py`` prints when it ends (at most ``max_lines`` lines): what ran, the primary
    contrasts (``PRIMARY_COMPARISONS``) at the end of training and at the first matched level with their 95 %
    intervals and verdicts, the time by part (``report["parts_s"]``, when the run measured it) and where the
    files are. The full tables go to ``table.md`` only."""
    out = Path(report["out"])
    rows = report.get("rows", [])
    methods = list(dict.fromkeys(r["method"] for r in rows if r["method"] not in REFERENCE_METHODS))
    seeds = sorted({r["seed"] for r in rows if r.get("seed") not in ("", None, "mean", "std")}, key=str)
    pairs = sorted({r["pair_seed"] for r in rows if r.get("pair_seed") not in ("", None, "mean", "std")}, key=str)
    names = ", ".join(methods[:8]) + (f", … {len(methods) - 8} more" if len(methods) > 8 else "")
    lines = [
        f"bs_ref TOFU run: {len(methods)} methods ({names}) + the original and retain models",
        f"  unlearning seeds {seeds or '–'} × model-pair seeds {pairs or '–'}",
    ]
    verdicts = [v for v in report.get("verdicts", []) if not v["measure"].startswith("spurious_gap")]
    shown = [c for c in PRIMARY_COMPARISONS if any(v["comparison"] == c for v in verdicts)]
    settings = list(dict.fromkeys(v["setting"] for v in verdicts))
    settings = settings[:1] + [s for s in settings[1:] if "target_drop" in s][:1] or settings[:2]
    if report.get("fair"):  # a fair run: the declared contrasts replace the default comparisons
        lines += fair.summary_lines(report["fair"])
        shown, settings = [], []
    if shown:
        lines.append("Primary contrasts, A − B [95 % interval] (n = runs paired; every other one: verdict.csv):")
    for setting in settings:
        lines.append(f"  {_setting_name(setting)}")
        here = [v for v in verdicts if v["setting"] == setting and v["comparison"] in shown]
        measures = [m for m in SUMMARY_MEASURES if any(v["measure"] == m and v["verdict"] != "n/a" for v in here)]
        for comparison in shown:
            sub = {v["measure"]: v for v in here if v["comparison"] == comparison}
            cells, n = [], 0
            for measure in [m for m in measures if m in sub][:2]:
                v = sub[measure]
                n = max(n, v["n_seeds"])
                interval = stats.format_interval(v["difference"], v["ci_low"], v["ci_high"])
                text = "n/a" if v["verdict"] == "n/a" else f"{interval} {v['verdict']}"
                cells.append(f"{_SHORT[measure]} {text}")
            if cells:
                lines.append(f"    {comparison:<17} " + " | ".join(cells) + f" (n = {n})")
    if not shown and not report.get("fair"):
        lines.append("No primary contrast: the run lacks the methods compared (BS-T, BS-S, GA×(1−λ), NPO).")
    parts = report.get("parts_s") or {}
    if report.get("timing"):
        found = report["timing"]
        lines.append(timing.time_line(found["by_part_s"], found.get("total_s"), len(found.get("resumed", []))))
    elif parts:
        timed = [f"{name} {seconds:.0f} s" for name, seconds in parts.items() if seconds >= 0.5]
        total = [f"total {report['wall_s']:.0f} s"] if "wall_s" in report else []
        lines.append("Time: " + "; ".join(timed + total))
    elif "wall_s" in report:
        lines.append(f"Time: {report['wall_s']:.0f} s")
    if report.get("diverged"):
        lines.append(f"Diverged: {len(report['diverged'])} method/seed run(s) (NaN/inf; listed in table.md)")
    written = [n for n in ("verdict.csv", "summary.csv", "matched.csv", "recovery.csv") if (out / n).is_file()]
    written += sorted(p.name for p in out.glob("ablation_*.csv"))
    lines.append(f"Every table: {out / 'table.md'}")
    lines.append(f"  with {', '.join(written)}{', plots/' if (out / 'plots').is_dir() else ''} in {out}")
    if len(lines) > max_lines:  # never more than one screen: drop contrast lines from the end of the list
        keep = max_lines - 1
        lines = [*lines[: keep - 3], "  … (the rest in table.md)", *lines[-3:]]
    return "\n".join(lines)
