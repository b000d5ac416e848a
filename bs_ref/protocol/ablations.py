"""The experiment's two ablations: BS-S's belief refresh period and the sensitivity of BS-T and BS-S to their
hyper-parameters (docs/theory.md §13).

- ``ABLATIONS``: {name: method specs}, the strings ``--methods`` accepts (``bs_ref.protocol.cli.resolve_methods``
  gives each a distinct label); ``ablation_specs`` joins the specs of several ablations, ``ablation_problems``
  names an unknown ``--ablation``, ``vocab_problems`` a BS-T support ``k`` larger than the vocabulary;
- ``refresh_rows`` and ``sensitivity_rows``: one table row per spec from the run's summary rows (``summary.csv``
  with its ``_ci_`` cells) and its results (``result.json``: ``train_s``, ``steps``, ``curve``); in the
  sensitivity ablation, each BS-T spec also carries its difference to each of its three controls (GA×(1−λ), GA
  weighted by its target weight, SGA: docs/theory.md D2);
- ``ablation_markdown``: those rows as Markdown tables; ``plot_refresh``, ``plot_sensitivity_bs_t`` and
  ``plot_sensitivity_bs_s``: the figures (None without matplotlib); ``write_ablations``: tables, CSVs and plots
  of a run, returning the lines for table.md;
- the no-tuning temperature of BS-T (docs/theory.md §13, from D4's sign rule): ``runner_up_thresholds`` per
  answer token, ``no_tuning_temperature`` for a set of tokens, ``sign_fractions`` to check a chosen τ.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bs_ref.losses import answer_tokens
from bs_ref.losses.bs_t import check_top_k
from bs_ref.methods import Method, method_from_spec
from bs_ref.protocol import plots
from bs_ref.protocol.cli import resolve_methods
from bs_ref.protocol.stats import format_interval
from bs_ref.protocol.tables import MISSING, fmt, method_rows, number, write_csv

# --------------------------------------------------------------------------------------------- the specs
REFRESH_PERIODS: tuple[float | None, ...] = (None, 2, 1, 0)
"""BS-S regimes of the refresh ablation: None = off-policy (beliefs sampled once from θ_o), else on-policy with
the refresh period R in epochs (0: every step)."""
REFRESH_N = (1, 3, 5)
"""Global beliefs N per forget prompt in the refresh ablation."""
SENSITIVITY_LAMS = (0.1, 0.2, 0.4, 0.6, 0.8)
SENSITIVITY_TOP_K = (1, 5, 20, 100)
SENSITIVITY_TAUS = (1, 2, 4)
SENSITIVITY_LAM_BSS = (0.25, 0.5, 0.75)
SMALLEST_SYNTHETIC_VOCAB = 263
"""The fewest tokens the synthetic benchmark's byte-level BPE tokenizer can have (256 byte symbols and the
special tokens, before any merge: ``bs_ref.models.train_tokenizer``): every k of the grid fits."""


def refresh_spec(period: float | None, n: int) -> str:
    """The BS-S spec of one refresh setting (``period`` None: off-policy)."""
    if period is None:
        return f"bs_s:regime=off_policy,n_beliefs={n}"
    return f"bs_s:regime=on_policy,refresh_epochs={period},n_beliefs={n}"


def _ablation_table() -> dict[str, list[str]]:
    refresh = [refresh_spec(period, n) for period in REFRESH_PERIODS for n in REFRESH_N]
    sensitivity = []
    for lam in SENSITIVITY_LAMS:
        sensitivity += [f"ga_scaled:lam={lam}", f"sga:lam={lam}"]  # BS-T's controls at this λ (docs/theory.md D2)
        for k in SENSITIVITY_TOP_K:
            for tau in SENSITIVITY_TAUS:
                sensitivity += [
                    f"bs_t:lam={lam},top_k={k},temperature={tau}",  # and its target-matched control
                    f"ga_target_matched:lam={lam},top_k={k},temperature={tau}",
                ]
    sensitivity += [f"bs_s:lam_bss={lam_bss}" for lam_bss in SENSITIVITY_LAM_BSS]
    return {"refresh": refresh, "sensitivity": sensitivity}


ABLATIONS: dict[str, list[str]] = _ablation_table()
"""``--ablation`` name -> method specs. ``refresh``: BS-S off-policy and on-policy every 2 epochs, every epoch and
every step × N ∈ {1, 3, 5} (12 specs). ``sensitivity``: BS-T over λ ∈ {0.1, 0.2, 0.4, 0.6, 0.8} × k ∈ {1, 5, 20,
100} × τ ∈ {1, 2, 4} (60), its controls — GA×(1−λ) and SGA at every λ (10), GA weighted by BS-T's target weight at
every (λ, k, τ) (60) — and BS-S over λ_BSS ∈ {0.25, 0.5, 0.75} (3)."""
CONTROLS = {"ga_scaled": ("lam",), "ga_target_matched": ("lam", "top_k", "temperature"), "sga": ("lam",)}
"""BS-T's controls in the sensitivity ablation and the fields each must share with a BS-T row (docs/theory.md D2)."""
CONTROL_NAMES = {"ga_scaled": "GA×(1−λ)", "ga_target_matched": "GA×(1−λ+λ·q_y)", "sga": "SGA"}
CONTROL_SUFFIX = {"ga_scaled": "", "ga_target_matched": "_target_matched", "sga": "_sga"}
"""Suffix of a BS-T row's ``control`` / ``<measure>_vs_control`` cells for each control (GA×(1−λ): none, as before)."""
TITLES = {
    "refresh": "BS-S belief refresh period and number of beliefs",
    "sensitivity": "sensitivity of BS-T (λ, k, τ) and BS-S (λ_BSS)",
}
MEASURES = ("fact_leak", "forget_rougeL", "target_logprob_drop", "high_band_drop", "model_utility")
"""The measures of the ablation tables (summary.csv columns with their 95 % intervals)."""
HEADERS = {
    "fact_leak": "fact leak ↓",
    "forget_rougeL": "forget ROUGE-L ↓",
    "target_logprob_drop": "target drop ↑",
    "high_band_drop": "high-band drop ↑",
    "model_utility": "MU ↑",
}


def ablation_problems(names: Sequence[str]) -> list[str]:
    """One line per unknown ablation name, naming ``--ablation`` and the choices."""
    return [
        f"unknown --ablation {name!r}; choose from {', '.join(ABLATIONS)} (several may be given)"
        for name in dict.fromkeys(names)
        if name not in ABLATIONS
    ]


def ablation_specs(names: Sequence[str]) -> list[str]:
    """The method specs of the named ablations, in order, each once. Raises ValueError for an unknown name."""
    problems = ablation_problems(names)
    if problems:
        raise ValueError("; ".join(problems))
    return list(dict.fromkeys(spec for name in names for spec in ABLATIONS[name]))


def vocab_problems(specs: Sequence[str], vocab_size: int, settings: dict[str, Any] | None = None) -> list[str]:
    """One line per spec whose BS-T support k exceeds the vocabulary. ``top_k > V`` passes the method's own check
    (which does not know V) but BS-T's loss raises a ValueError at the first step; nothing is clamped."""
    out = []
    for spec in specs:
        try:
            method = method_from_spec(spec, **(settings or {}))
        except ValueError:
            continue  # resolve_methods reports it
        k = getattr(method, "top_k", None)
        if k is not None and k > vocab_size:
            out.append(
                f"{spec}: top_k={k} exceeds the vocabulary ({vocab_size} tokens); {method.title} would stop at "
                f"its first step — use top_k <= {vocab_size}"
            )
    return out


def members(name: str, settings: dict[str, Any] | None = None) -> list[tuple[str, Method]]:
    """[(label, declaration)] of an ablation's specs as the experiment labels them with these run-wide method
    ``settings`` (``bs_ref.protocol.cli.resolve_methods``)."""
    plan, problems = resolve_methods(ABLATIONS[name], settings)
    if problems:
        raise ValueError("; ".join(problems))
    return [(label, method) for label, method in plan if method is not None]


# --------------------------------------------------------------------------------------------- analysis
def seconds_per_step(result: dict) -> float:
    """Training seconds per optimiser step of one result: ``train_s`` less the light evaluations during training
    (``eval_s`` of the curve points after step 0), over ``steps``; NaN without them. Belief sampling counts."""
    steps = number(result.get("steps"))
    curve = result.get("curve") or []
    if not math.isfinite(steps) and curve:
        steps = number(curve[-1].get("step"))
    evals = sum(number(p.get("eval_s")) for p in curve if number(p.get("step")) > 0 and "eval_s" in p)
    seconds = number(result.get("train_s")) - (evals if math.isfinite(evals) else 0.0)
    return seconds / steps if steps > 0 and math.isfinite(seconds) else float("nan")


def _numbers(
    label: str, carriers: dict[str, dict], summary_rows: Sequence[dict], results: Sequence[dict]
) -> dict[str, Any]:
    """A label's measures (mean over runs and the 95 % interval of its summary row), runs and seconds per step."""
    row = carriers.get(label, {})
    out: dict[str, Any] = {"label": label}
    out["n_runs"] = sum(1 for r in summary_rows if r["method"] == label and r["seed"] not in ("mean", "std"))
    for m in MEASURES:
        out[m] = number(row.get(m))
        out[f"{m}_ci_low"], out[f"{m}_ci_high"] = number(row.get(f"{m}_ci_low")), number(row.get(f"{m}_ci_high"))
    seconds = np.array([seconds_per_step(r) for r in results if r.get("method") == label], dtype=float)
    seconds = seconds[np.isfinite(seconds)]
    mean, low, high = (
        (float(seconds.mean()), float(seconds.min()), float(seconds.max()))
        if seconds.size
        else (float("nan"), float("nan"), float("nan"))
    )
    out |= {"seconds_per_step": mean, "seconds_per_step_min": low, "seconds_per_step_max": high}
    return out


def period_name(method: Method) -> str:
    """``off-policy (once)``, ``every 2 epochs``, ``every epoch`` or ``every step`` for a BS-S declaration."""
    if method.regime == "off_policy":
        return "off-policy (once)"
    r = method.refresh_epochs
    if r == 0:
        return "every step"
    return "every epoch" if r == 1 else f"every {fmt(r, 3).rstrip('0').rstrip('.')} epochs"


def refresh_rows(
    summary_rows: Sequence[dict], results: Sequence[dict], settings: dict[str, Any] | None = None
) -> list[dict]:
    """One row per refresh spec with results: ``label``, ``regime``, ``refresh_epochs`` (None off-policy),
    ``period``, ``n_beliefs``, ``n_runs``, ``seconds_per_step`` (mean over runs, and ``_min``/``_max``) and every
    measure of ``MEASURES`` with ``_ci_low``/``_ci_high``. ``settings``: the run's run-wide method settings."""
    carriers, out = method_rows(summary_rows), []
    for label, method in members("refresh", settings):
        if label not in carriers:
            continue
        on = method.regime == "on_policy"
        out.append(
            {
                **_numbers(label, carriers, summary_rows, results),
                "regime": method.regime,
                "refresh_epochs": method.refresh_epochs if on else None,
                "period": period_name(method),
                "n_beliefs": method.n_beliefs,
            }
        )
    return out


def sensitivity_rows(
    summary_rows: Sequence[dict], results: Sequence[dict], settings: dict[str, Any] | None = None
) -> list[dict]:
    """One row per sensitivity spec with results, ``family`` ``bs_t`` or ``ga_target_matched`` (``lam``,
    ``top_k``, ``temperature``), ``ga_scaled`` or ``sga`` (``lam``) or ``bs_s`` (``lam_bss``), with the numbers of
    ``refresh_rows``. A BS-T row also has, for each control (``CONTROLS``), ``control<suffix>`` (the label of the
    control with its values, or None) and ``<measure>_vs_control<suffix>`` for the target and high-band drops:
    BS-T minus the control, a difference of means (the paired verdicts are in verdict.csv); the suffix is empty for
    GA×(1−λ), ``_target_matched`` and ``_sga`` for the other two."""
    carriers, out = method_rows(summary_rows), []
    for label, method in members("sensitivity", settings):
        if label not in carriers:
            continue
        row = {**_numbers(label, carriers, summary_rows, results), "family": method.name}
        if method.name in ("bs_t", *CONTROLS):
            row["lam"] = method.lam
        if method.name in ("bs_t", "ga_target_matched"):
            row |= {"top_k": method.top_k, "temperature": method.temperature}
        if method.name == "bs_s":
            row["lam_bss"] = method.lam_bss
        out.append(row)
    for row in out:
        if row["family"] != "bs_t":
            continue
        for name, fields in CONTROLS.items():
            control = next(
                (c for c in out if c["family"] == name and all(math.isclose(c[f], row[f]) for f in fields)), None
            )
            suffix = CONTROL_SUFFIX[name]
            row[f"control{suffix}"] = None if control is None else control["label"]
            for m in ("target_logprob_drop", "high_band_drop"):
                row[f"{m}_vs_control{suffix}"] = row[m] - control[m] if control is not None else float("nan")
    return out


ANALYSES = {"refresh": refresh_rows, "sensitivity": sensitivity_rows}


# --------------------------------------------------------------------------------------------- tables
def _cell(row: dict, measure: str) -> str:
    value = row.get(measure, float("nan"))
    if not math.isfinite(number(value)):
        return MISSING
    return format_interval(value, row.get(f"{measure}_ci_low"), row.get(f"{measure}_ci_high"))


def _seconds(row: dict) -> str:
    mean, low, high = (row.get(f"seconds_per_step{s}", float("nan")) for s in ("", "_min", "_max"))
    if not math.isfinite(mean):
        return MISSING
    return fmt(mean) + (f" ({fmt(low)}–{fmt(high)})" if row.get("n_runs", 1) > 1 and high > low else "")


def _table(header: Sequence[str], lines: Sequence[Sequence[str]], right: int) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * (len(header) - right) + "---:|" * right]
    return out + ["| " + " | ".join(cells) + " |" for cells in lines]


def ablation_markdown(name: str, rows: Sequence[dict]) -> str:
    """The Markdown tables of one ablation's rows (``refresh_rows`` / ``sensitivity_rows``): each measure as
    ``mean [95 % interval]`` (n: runs), seconds per step as ``mean (min–max over runs)``."""
    measures = [m for m in MEASURES if any(math.isfinite(number(r.get(m))) for r in rows)] or list(MEASURES)
    heads = [HEADERS[m] for m in measures]
    if name not in ANALYSES:
        raise ValueError(ablation_problems([name])[0])
    if not rows:
        return f"No result of the {name} ablation in this run."
    if name == "refresh":
        lines = []
        for r in rows:
            lines.append([r["period"], str(r["n_beliefs"]), r["label"], str(r["n_runs"]), _seconds(r)])
            lines[-1] += [_cell(r, m) for m in measures]
        return "\n".join(_table(["BS-S beliefs", "N", "label", "n", "s / step", *heads], lines, 2 + len(heads)))
    parts = []
    bs_t = [r for r in rows if r["family"] == "bs_t"]
    if bs_t:
        present = [c for c in CONTROLS if any(r.get(f"control{CONTROL_SUFFIX[c]}") for r in bs_t)] or ["ga_scaled"]
        lines = [
            [
                fmt(r["lam"], 2),
                str(r["top_k"]),
                fmt(r["temperature"], 1),
                str(r["n_runs"]),
                *(_cell(r, m) for m in measures),
                *(
                    _diff(r, m + "_vs_control" + CONTROL_SUFFIX[c])
                    for c in present
                    for m in ("target_logprob_drop", "high_band_drop")
                ),
            ]
            for r in bs_t
        ]
        heads_t = [
            "λ",
            "k",
            "τ",
            "n",
            *heads,
            *(f"{what} − {CONTROL_NAMES[c]}" for c in present for what in ("target drop", "high-band drop")),
        ]
        parts += ["\n".join(_table(heads_t, lines, len(heads_t) - 3)), ""]
    for name in CONTROLS:
        controls = [r for r in rows if r["family"] == name]
        if not controls:
            continue
        keyed = name == "ga_target_matched"
        lines = [
            [
                fmt(r["lam"], 2),
                *([str(r["top_k"]), fmt(r["temperature"], 1)] if keyed else []),
                r["label"],
                str(r["n_runs"]),
                *(_cell(r, m) for m in measures),
            ]
            for r in controls
        ]
        head = ["λ", *(["k", "τ"] if keyed else []), "label", "n", *heads]
        parts += [f"Controls {CONTROL_NAMES[name]}:", "", "\n".join(_table(head, lines, 1 + len(heads))), ""]
    bs_s = [r for r in rows if r["family"] == "bs_s"]
    if bs_s:
        lines = [[fmt(r["lam_bss"], 2), r["label"], str(r["n_runs"]), *(_cell(r, m) for m in measures)] for r in bs_s]
        parts += ["BS-S:", "", "\n".join(_table(["λ_BSS", "label", "n", *heads], lines, 1 + len(heads))), ""]
    return "\n".join(parts).rstrip()


def _diff(row: dict, column: str) -> str:
    value = number(row.get(column))
    return f"{value:+.3f}" if math.isfinite(value) else MISSING


# --------------------------------------------------------------------------------------------- plots
def _yerr(rows: Sequence[dict], measure: str) -> np.ndarray:
    """Asymmetric error bars (2, n) from the rows' 95 % intervals where a row has n > 1 runs; 0 elsewhere."""
    out = np.zeros((2, len(rows)))
    for i, r in enumerate(rows):
        value, low, high = (number(r.get(c)) for c in (measure, f"{measure}_ci_low", f"{measure}_ci_high"))
        if r.get("n_runs", 1) > 1 and all(math.isfinite(x) for x in (value, low, high)):
            out[:, i] = [max(value - low, 0.0), max(high - value, 0.0)]
    return out


def _n_title(rows: Sequence[dict], cost: bool = False) -> str:
    ns = sorted({int(r.get("n_runs", 1)) for r in rows})
    n = str(ns[0]) if len(ns) == 1 else f"{ns[0]}–{ns[-1]}"
    if ns[-1] <= 1:
        return f"n={n} run per setting; no error bars with one run"
    return f"n={n} runs per setting; error bars where n > 1: 95 % interval" + (
        " (y), min–max over runs (x)" if cost else ""
    )


def plot_refresh(rows: Sequence[dict], path: str | Path):
    """Cost (training seconds per step, x) against forgetting (fact leak; target log-prob drop), one marker per
    refresh period, its size and label giving N. None when matplotlib is missing or there is no row."""
    plt = plots.pyplot()
    if plt is None or not rows:
        return None
    panels = [
        ("fact_leak", "fact-leak rate (↓ more forgotten)"),
        ("target_logprob_drop", "target log-prob drop, nats (↑ more forgotten)"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 3.8), squeeze=False)
    markers, colors = ("o", "s", "^", "D", "v", "P"), plt.get_cmap("tab10")
    periods = list(dict.fromkeys(r["period"] for r in rows))
    for ax, (measure, ylabel) in zip(axes[0], panels):
        if not any(math.isfinite(number(r.get(measure))) for r in rows):
            ax.text(0.5, 0.5, "n/a (no value in this run)", ha="center", va="center", transform=ax.transAxes)
        for j, period in enumerate(periods):
            sub = sorted((r for r in rows if r["period"] == period), key=lambda r: r["n_beliefs"])
            xs = np.array([number(r.get("seconds_per_step")) for r in sub])
            ys = np.array([number(r.get(measure)) for r in sub])
            several = np.array([r["n_runs"] > 1 for r in sub])  # min–max bars only where there are several runs
            low = np.array([number(r.get("seconds_per_step_min")) for r in sub])
            high = np.array([number(r.get("seconds_per_step_max")) for r in sub])
            xerr = np.where(several, np.maximum(np.stack([xs - low, high - xs]), 0.0), 0.0)
            color = colors(j % 10)
            ax.errorbar(
                xs,
                ys,
                xerr=np.nan_to_num(xerr),
                yerr=_yerr(sub, measure),
                fmt="-",
                color=color,
                alpha=0.5,
                elinewidth=0.7,
                capsize=2,
                label=period,
            )
            ax.scatter(
                xs,
                ys,
                s=[30 + 25 * r["n_beliefs"] for r in sub],
                marker=markers[j % len(markers)],
                color=color,
                zorder=3,
            )
            for x, y, r in zip(xs, ys, sub):
                if math.isfinite(x) and math.isfinite(y):
                    ax.annotate(f"N={r['n_beliefs']}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=7)
        ax.set_xlabel("training seconds per step (light evaluations excluded)", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].legend(fontsize=8, title="belief refresh", title_fontsize=8)
    fig.suptitle(f"BS-S refresh ablation: cost vs forgetting (marker size: N); {_n_title(rows, cost=True)}", fontsize=9)
    fig.tight_layout()
    return plots.save_figure(fig, path)


def plot_sensitivity_bs_t(rows: Sequence[dict], path: str | Path):
    """BS-T sensitivity: one panel per (measure, τ), x = λ, one line per k, GA×(1−λ) dashed as the reference.
    None when matplotlib is missing or there is no BS-T row."""
    plt = plots.pyplot()
    bs_t = [r for r in rows if r.get("family") == "bs_t"]
    if plt is None or not bs_t:
        return None
    controls = sorted((r for r in rows if r.get("family") == "ga_scaled"), key=lambda r: r["lam"])
    sga = sorted((r for r in rows if r.get("family") == "sga"), key=lambda r: r["lam"])
    taus = sorted({r["temperature"] for r in bs_t})
    ks = sorted({r["top_k"] for r in bs_t})
    panels = [("target_logprob_drop", "target log-prob drop (nats)"), ("high_band_drop", "high-band drop (nats)")]
    fig, axes = plt.subplots(
        len(panels), len(taus), figsize=(3.6 * len(taus), 3.0 * len(panels)), squeeze=False, sharey="row"
    )
    cmap = plt.get_cmap("viridis")
    for i, (measure, ylabel) in enumerate(panels):
        for j, tau in enumerate(taus):
            ax = axes[i, j]
            for c, k in enumerate(ks):
                sub = sorted((r for r in bs_t if r["temperature"] == tau and r["top_k"] == k), key=lambda r: r["lam"])
                ax.errorbar(
                    [r["lam"] for r in sub],
                    [number(r.get(measure)) for r in sub],
                    yerr=_yerr(sub, measure),
                    fmt="-o",
                    markersize=3,
                    capsize=2,
                    elinewidth=0.7,
                    label=f"k={k}",
                    color=cmap(0.85 * c / max(1, len(ks) - 1)),
                )
            if controls:
                ax.errorbar(
                    [r["lam"] for r in controls],
                    [number(r.get(measure)) for r in controls],
                    yerr=_yerr(controls, measure),
                    fmt="--",
                    color="k",
                    linewidth=1,
                    capsize=2,
                    elinewidth=0.7,
                    label="GA×(1−λ)",
                )
            if sga:
                ax.errorbar(
                    [r["lam"] for r in sga],
                    [number(r.get(measure)) for r in sga],
                    yerr=_yerr(sga, measure),
                    fmt=":",
                    color="tab:red",
                    linewidth=1,
                    capsize=2,
                    elinewidth=0.7,
                    label="SGA",
                )
            ax.set_title(f"τ = {fmt(tau, 1)}", fontsize=9)
            ax.grid(alpha=0.3)
            if i == len(panels) - 1:
                ax.set_xlabel("λ", fontsize=8)
            if j == 0:
                ax.set_ylabel(ylabel, fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=len(labels), fontsize=8, bbox_to_anchor=(0.5, 1.03))
    fig.suptitle(
        f"BS-T sensitivity over λ, k, τ (↑ more forgotten); {_n_title(bs_t + controls + sga)}", y=1.08, fontsize=9
    )
    fig.tight_layout()
    return plots.save_figure(fig, path)


def plot_sensitivity_bs_s(rows: Sequence[dict], path: str | Path):
    """BS-S sensitivity: x = λ_BSS; panels: target drop, high-band drop, fact leak, MU (those with values).
    None when matplotlib is missing or there is no BS-S row."""
    plt = plots.pyplot()
    bs_s = sorted((r for r in rows if r.get("family") == "bs_s"), key=lambda r: r["lam_bss"])
    if plt is None or not bs_s:
        return None
    panels = [
        ("target_logprob_drop", "target drop ↑"),
        ("high_band_drop", "high-band drop ↑"),
        ("fact_leak", "fact leak ↓"),
        ("model_utility", "MU ↑"),
    ]
    panels = [(m, h) for m, h in panels if any(math.isfinite(number(r.get(m))) for r in bs_s)] or panels[:1]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.0), squeeze=False)
    for ax, (measure, ylabel) in zip(axes[0], panels):
        ax.errorbar(
            [r["lam_bss"] for r in bs_s],
            [number(r.get(measure)) for r in bs_s],
            yerr=_yerr(bs_s, measure),
            fmt="-o",
            markersize=4,
            capsize=2,
            color="tab:purple",
        )
        ax.set_xlabel("λ_BSS", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle(f"BS-S sensitivity over λ_BSS; {_n_title(bs_s)}", fontsize=9)
    fig.tight_layout()
    return plots.save_figure(fig, path)


PLOTS = {
    "refresh": [("ablation_refresh.png", plot_refresh)],
    "sensitivity": [
        ("ablation_sensitivity_bs_t.png", plot_sensitivity_bs_t),
        ("ablation_sensitivity_bs_s.png", plot_sensitivity_bs_s),
    ],
}
DESCRIPTIONS = {
    "refresh": "BS-S with beliefs sampled once (off-policy) or resampled every 2 epochs, every epoch or every step "
    "(on-policy), each with N ∈ {1, 3, 5} beliefs per forget prompt (docs/theory.md §4, §13). s / step: training "
    "seconds per optimiser step, belief sampling included and light evaluations excluded, mean (min–max) over runs.",
    "sensitivity": "BS-T over λ × k × τ and BS-S over λ_BSS, all else at the run's settings; BS-T's controls are "
    "GA×(1−λ) and SGA at every λ and GA weighted by BS-T's own target weight 1 − λ + λ·q_y at every (λ, k, τ) "
    "(docs/theory.md D2, §13). The last BS-T columns are differences of means against each control present; the "
    "paired verdicts of BS-T against each control with their 95 % intervals are in verdict.csv.",
}
CSV_COLUMNS = (
    "label",
    "family",
    "regime",
    "refresh_epochs",
    "period",
    "n_beliefs",
    "lam",
    "top_k",
    "temperature",
    "lam_bss",
    "n_runs",
    "seconds_per_step",
    "seconds_per_step_min",
    "seconds_per_step_max",
    *(f"{m}{s}" for m in MEASURES for s in ("", "_ci_low", "_ci_high")),
    *(
        c
        for s in CONTROL_SUFFIX.values()
        for c in (f"control{s}", f"target_logprob_drop_vs_control{s}", f"high_band_drop_vs_control{s}")
    ),
)


def write_ablations(
    names: Sequence[str],
    summary_rows: Sequence[dict],
    results: Sequence[dict],
    out_dir: str | Path,
    settings: dict[str, Any] | None = None,
) -> list[str]:
    """For each named ablation: ``ablation_<name>.csv`` and its plots under ``out_dir/plots/``; returns the lines
    table.md gets (a section per ablation: what it varies, its tables, its plots).

    ``summary_rows``: the run's summary rows with their ``_ci_`` cells (``report.write_report(...)["rows"]``);
    ``results``: the finished results (``result.json`` dicts with ``method``, ``train_s``, ``steps``, ``curve``);
    ``settings``: the run's run-wide method settings (``TofuArgs.hyper``), so the labels match the run's."""
    out_dir = Path(out_dir)
    lines: list[str] = []
    for name in dict.fromkeys(names):
        if name not in ANALYSES:
            raise ValueError(ablation_problems([name])[0])
        rows = ANALYSES[name](summary_rows, results, settings)
        total = len(members(name, settings))
        write_csv(out_dir / f"ablation_{name}.csv", rows, CSV_COLUMNS)
        lines += [
            f"## Ablation: {TITLES[name]}",
            "",
            DESCRIPTIONS[name],
            f"Settings with results: {len(rows)} of {total} (every column: ablation_{name}.csv).",
            "",
            ablation_markdown(name, rows),
            "",
        ]
        if plots.pyplot() is None:
            lines += [f"Plots: {plots.PLOTS_SKIPPED}.", ""]
            continue
        written = [f"plots/{file}" for file, plot in PLOTS[name] if plot(rows, out_dir / "plots" / file)]
        lines += ["Plots: " + (", ".join(written) or "none (no result to plot)"), ""]
    return lines


# --------------------------------------------------------------------------------------------- no-tuning τ
def _runner_up(z: torch.Tensor, y: torch.Tensor, k: int) -> dict[str, torch.Tensor]:
    """Per row of logits ``z`` [N, V] with targets ``y`` [N]: log S_k, log p of the most likely non-target token
    v*, whether v* is in H_k, the top-k logits and the position of v* and y among them (-1: not in H_k)."""
    check_top_k(k, z.shape[-1])
    logp = torch.log_softmax(z.double(), dim=-1)
    top_logits, top_idx = z.double().topk(k, dim=-1)
    log_mass = torch.logsumexp(logp.gather(-1, top_idx), dim=-1)
    others = logp.scatter(-1, y[:, None], float("-inf"))
    log_p_star, v_star = others.max(dim=-1)

    def where(ids: torch.Tensor) -> torch.Tensor:
        hit = top_idx == ids[:, None]
        return torch.where(hit.any(-1), hit.float().argmax(-1), torch.full_like(ids, -1))

    return {
        "log_mass": log_mass,
        "log_p_star": log_p_star,
        "star_at": where(v_star),
        "y_at": where(y),
        "log_p_y": logp.gather(-1, y[:, None])[:, 0],
        "top_logits": top_logits,
    }


def _answer_rows(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    at = answer_tokens(logits.detach(), labels)
    return at.logits, at.targets


def runner_up_thresholds(logits: torch.Tensor, labels: torch.Tensor, lam: float, k: int) -> torch.Tensor:
    """Per answer token of an HF-aligned batch (logits [B, T, V], labels [B, T], -100 off the answers): the
    no-tuning threshold T ≥ 1 such that λ·q^(τ)[v*] > p[v*] for EVERY τ ≥ T, v* the most likely non-target token
    (BS-T then pushes z_{v*} down: docs/theory.md D4, §13); inf where no τ ≥ 1 guarantees it.

    With S = S_k and p* = p[v*] ∈ H_k: T = max(1, ln(S/(k·p*)) / ln(λ/(k·p*))), finite iff k·p* < λ (as τ → ∞,
    q → 1/k). A token with k·p* ≥ λ > S_k holds at τ = 1 (D4) but not at every larger τ: it gets inf."""
    z, y = _answer_rows(logits, labels)
    s = _runner_up(z, y, k)
    log_kp = math.log(k) + s["log_p_star"]
    log_lam = math.log(lam) if lam > 0 else float("-inf")
    feasible = (s["star_at"] >= 0) & (log_kp < log_lam)
    gap = torch.where(feasible, log_lam - log_kp, torch.ones_like(log_kp))
    tau = torch.clamp((s["log_mass"] - log_kp) / gap, min=1.0)
    return torch.where(feasible, tau, torch.full_like(tau, float("inf")))


def no_tuning_temperature(
    logits: torch.Tensor, labels: torch.Tensor, lam: float, k: int, coverage: float = 0.5
) -> float:
    """The smallest τ ≥ 1 whose guarantee (``runner_up_thresholds``) covers at least ``coverage`` of the answer
    tokens: at it, BS-T pushes the most likely non-target token down on that share of the tokens or more.
    inf when no τ covers that many (then lower k below λ/p* or raise λ)."""
    if not 0 < coverage <= 1:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage!r}")
    thresholds = runner_up_thresholds(logits, labels, lam, k).sort().values
    if thresholds.numel() == 0:
        return float("nan")
    return float(thresholds[math.ceil(coverage * thresholds.numel()) - 1])


def sign_fractions(logits: torch.Tensor, labels: torch.Tensor, lam: float, k: int, tau: float) -> dict[str, float]:
    """At belief temperature ``tau``, over the answer tokens: ``runner_up_down``, the share where λ·q^(τ)[v*] >
    p[v*] (z_{v*} pushed down; D4), ``target_logit_up``, the share where λ·(1 − q^(τ)[y]) > 1 − p[y] (D4's
    companion: ascent raises z_y), ``both_as_wanted``, the share with the first and not the second, and
    ``mean_topk_mass``, the mean S_k."""
    z, y = _answer_rows(logits, labels)
    s = _runner_up(z, y, k)
    log_q = torch.log_softmax(s["top_logits"] / tau, dim=-1)
    log_q_star = torch.where(
        s["star_at"] >= 0,
        log_q.gather(-1, s["star_at"].clamp(min=0)[:, None])[:, 0],
        torch.full_like(s["log_p_star"], float("-inf")),
    )
    q_y = torch.where(
        s["y_at"] >= 0, log_q.gather(-1, s["y_at"].clamp(min=0)[:, None])[:, 0].exp(), torch.zeros_like(s["log_p_y"])
    )
    down = lam * log_q_star.exp() > s["log_p_star"].exp()
    up = lam * (1 - q_y) > 1 - s["log_p_y"].exp()
    n = max(1, y.numel())
    return {
        "runner_up_down": float(down.sum()) / n,
        "target_logit_up": float(up.sum()) / n,
        "both_as_wanted": float((down & ~up).sum()) / n,
        "mean_topk_mass": float(s["log_mass"].exp().mean()) if y.numel() else float("nan"),
    }
