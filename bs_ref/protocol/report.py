"""The report of a run: ``summary.csv``, ``matched.csv``, ``table.md`` and ``plots/*.png``.

``write_report`` reads every finished result of the run directory and writes

- ``summary.csv``: one row per method and seed at the end of training (``bs_ref.protocol.tables``);
- ``matched.csv``: the methods at matched forgetting (``bs_ref.protocol.matched``);
- ``table.md``: the command, the settings, the end-of-training table, one matched-forgetting table per
  measure, the methods whose facts leak while ROUGE-L / the truth ratio call them forgotten
  (``leak_while_forgotten``, docs/theory.md §6), the methods that diverged, and the plots (or why they were
  skipped: matplotlib is the optional extra ``[plots]``).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bs_ref.protocol import plots
from bs_ref.protocol.matched import MATCH_MARGIN, MATCHED_COLUMNS, format_matched, in_units, matched_rows
from bs_ref.protocol.store import REFERENCE_METHODS, RunDir, write_text
from bs_ref.protocol.tables import format_table, method_statistics, summary_rows, write_csv


def describe(info: dict, settings: dict[str, Any], seeds: Sequence[int]) -> str:
    """The paragraph of table.md that states the data (``Data.info``) and the settings ({flag name: value})."""
    s = settings
    return (
        f"Data: {info['source']} {info['forget']} ({info['n_forget_train']} forget / {info['n_retain_train']} retain "
        f"training items; evaluated on {info['n_eval']}); template {s['template']}; metric convention "
        f"{s['convention']}; seeds {list(seeds)}; equal budget: lr {s['lr']}, {s['epochs']} epochs, batch "
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
            flagged.append(f"{method}: fact leak {leak:.2f} (retain model {ref_leak:.2f}) while {why} {verb} at "
                           "the retain model's level")  # fmt: skip
    return flagged


def write_report(store: RunDir, results: list[dict], *, seeds: Sequence[int], command: str, settings: str,
                 has_facts: bool, given: dict[str, float | None], notes: Sequence[str] = (),
                 diverged: Sequence[str] = ()) -> dict:  # fmt: skip
    """Write summary.csv, matched.csv, table.md and the plots for ``results`` (finished results, in table
    order); ``settings``: the paragraph that states the run's settings; ``given``: the matched levels given
    on the command line (``matched.given_levels``); ``notes``: lines under the end-of-training table;
    ``diverged``: one line per method/seed that stopped with NaN/inf. Returns what was written."""
    rows = summary_rows(results)
    if not has_facts:
        for row in rows:
            row["fact_leak"] = ""
    write_csv(store.path("summary.csv"), rows)
    matched, levels = matched_rows(results, seeds, given)
    write_csv(store.path("matched.csv"), matched, MATCHED_COLUMNS)

    lines = ["# TOFU unlearning results", "", f"Command: `{command}`", "", settings, "", "## At the end of training",
             "", format_table(rows), ""]  # fmt: skip
    lines += [x for note in notes for x in (f"Note: {note}.", "")]
    if diverged:
        lines += ["## Diverged (no result; every other result is kept)", "", *(f"- {d}" for d in diverged), ""]
    curves = _curves_for_plot(results, seeds[0])
    has_bands = any(k.startswith("band_") and v is not None for c in curves.values() for p in c for k, v in p.items())
    for measure, level in levels.items():
        sub = [r for r in matched if r["measure"] == measure]
        if not sub:
            continue
        how = ("given on the command line" if given.get(measure) is not None
               else f"{MATCH_MARGIN:g} × the lower median of the methods' best forgetting: at least half of them "
                    "reach it")  # fmt: skip
        bands = (
            "Band changes are vs the start (negative = fell; a rising high band while the target falls is squeezing)."
            if has_bands
            else "Belief bands: n/a (the original model gave no band candidates)."
        )
        lines += [
            f"## At matched forgetting: {in_units(measure, level)}"
            + (" of target log-prob drop" if measure == "target_drop" else ""),
            "",
            f"Level: {how}. Each method is read off its own curve at the first evaluation where it reaches the "
            "level (linear interpolation between evaluations); values are the mean ± std over the seeds that "
            f"reach it. {bands}",
            "",
            format_matched(sub, measure),
            "",
        ]
    flagged = leak_while_forgotten(rows)
    if has_facts:
        lines += ["## Facts that leak while ROUGE / truth ratio call them forgotten", ""]
        lines += [f"- {f}" for f in flagged] or ["- none"]
        lines.append("")
    plots_dir = store.path("plots")
    figures = {
        "metrics": plots.plot_metric_bars(rows, plots_dir / "mem_util_agg.png"),
        "squeezing": plots.plot_squeezing_traces(curves, plots_dir / "squeezing_trace.png"),
        "tradeoff": plots.plot_tradeoff_curves(curves, plots_dir / "tradeoff.png"),
    }
    written = [f"plots/{Path(p).name}" for p in figures.values() if p]
    if plots.pyplot() is None:
        lines += [f"Plots: {plots.PLOTS_SKIPPED}.", ""]
    else:
        lines += ["Plots: " + (", ".join(written) or "none (no finished result to plot)"), ""]
    table = "\n".join(lines)
    write_text(store.path("table.md"), table)
    return {"out": str(store.root), "rows": rows, "matched": matched, "table": table, "plots": figures,
            "leak_while_forgotten": flagged, "diverged": list(diverged)}  # fmt: skip


def _curves_for_plot(results: list[dict], seed: int) -> dict[str, list[dict]]:
    return {r["method"]: r["curve"] for r in results if r.get("seed") == seed and r.get("curve")}
