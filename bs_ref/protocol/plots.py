"""The report's figures (matplotlib, the optional extra ``[plots]``: ``pip install -e '.[plots]'``).

- ``plot_metric_bars``: Mem / Util / Agg per method (the mean over runs; the paper's Table 1 metrics), with
  the 95 % interval of the summary's mean row as an error bar where a method has n > 1 runs (n in its label);
- ``plot_squeezing_traces``: per method, the change from step 0 of the forget targets' mean token log-prob and
  of the original model's high/mid/low belief bands over training (the paper's Fig. 2/4; docs/theory.md
  SEQ1, SEQ2). Squeezing shows as a band that rises while the target falls; a band a curve lacks is not drawn.
  With n > 1 runs: the mean over runs and a shaded 95 % interval (items and runs resampled at every step);
- ``plot_tradeoff_curves``: forgetting (target drop, fact-leak rate, log10 FQ, Mem) against model utility;
  with n > 1 runs the means over runs with 95 % error bars in both directions;
- ``plot_relearn_dose``: relearning as a dose–response (docs/theory.md §9): per setting, the fact leak of the
  held-out half and the conditional recovery against the number of relearning steps, one line per method, the
  retain model (the control) dashed, 95 % intervals shaded.

The intervals come from ``bs_ref.protocol.uncertainty`` (``bs_ref.protocol.stats``); one run is drawn as a plain line
(its item-only interval is in the tables).

matplotlib is imported inside ``pyplot()`` only, so the package works without it: every function then
returns None and ``PLOTS_SKIPPED`` says how to get the figures.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bs_ref.metrics.leakage import BANDS
from bs_ref.protocol.matched import forgetting_value
from bs_ref.protocol.store import write_bytes
from bs_ref.protocol.tables import method_rows, method_statistics, number

PLOTS_SKIPPED = "skipped: matplotlib is not installed (pip install -e '.[plots]' brings the plots)"
PAPER_COLUMNS = (("mem", "Mem"), ("util", "Util"), ("agg", "Agg"))


def pyplot():
    """``matplotlib.pyplot`` with the non-interactive Agg backend, or None when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return write_bytes(path, buffer.getvalue())


def plot_metric_bars(rows: Sequence[dict], path: str | Path, columns=PAPER_COLUMNS):
    """Grouped bars of Mem/Util/Agg per method (mean over runs), 95 % error bars where n > 1 runs (the
    ``_ci_`` cells of the method's mean row). None when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return None
    stats = method_statistics(rows, [c for c, _ in columns])
    carriers = method_rows(rows)
    methods = list(stats)
    if not methods:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(methods) + 2), 3.6))
    width = 0.8 / len(columns)
    x = np.arange(len(methods))
    n_runs = {m: max(stats[m][c][2] for c, _ in columns) for m in methods}
    for j, (column, label) in enumerate(columns):
        means = np.array([stats[m][column][0] for m in methods])
        errors = np.zeros((2, len(methods)))
        for i, m in enumerate(methods):
            low = number(carriers[m].get(f"{column}_ci_low"))
            high = number(carriers[m].get(f"{column}_ci_high"))
            if stats[m][column][2] > 1 and math.isfinite(low) and math.isfinite(high):
                errors[:, i] = [max(means[i] - low, 0.0), max(high - means[i], 0.0)]
        ax.bar(
            x + (j - (len(columns) - 1) / 2) * width, np.nan_to_num(means), width, yerr=errors, label=label, capsize=2
        )
    ax.set_xticks(x, [f"{m} (n={n_runs[m]})" for m in methods], rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (higher is better)")
    ax.set_title("Mem / Util / Agg per method: mean over n runs, 95 % interval where n > 1")
    ax.legend(ncol=len(columns), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_squeezing_traces(curves: dict[str, Sequence[dict]], path: str | Path, bands: dict | None = None):
    """One panel per method: change (from step 0) of the mean token log-prob of the forget targets and of the
    original model's high/mid/low-likelihood belief bands over training steps (paper Fig. 2/4). A band that
    a curve lacks (no candidates) is left out of the panel. ``bands``: {method: {"target_change" |
    "<band>_band_change": [(step, Interval)]}} for the methods with n > 1 runs: their mean and a shaded 95 %
    interval replace the one curve."""
    bands = bands or {}
    plt = pyplot()
    if plt is None:
        return None
    methods = [m for m, c in curves.items() if len(c) > 1] or list(curves)
    if not methods:
        return None
    cols = min(4, max(1, len(methods)))
    rows_n = math.ceil(len(methods) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.4 * cols, 2.9 * rows_n), squeeze=False, sharey=True)
    styles = {"target_logprob": ("target", "k", "-")}
    colors = ("tab:red", "tab:orange", "tab:blue")
    styles.update({f"band_{b}_logprob": (f"{b} band", c, "--") for b, c in zip(BANDS, colors)})
    # the high band's continuation after its fork from the target (summed log-prob, docs/theory.md §16)
    styles["band_high_after_fork"] = ("high band after fork", colors[0], ":")
    interval_key = {
        "target_logprob": "target_change",
        **{f"band_{b}_logprob": f"{b}_band_change" for b in BANDS},
        "band_high_after_fork": "high_after_fork_change",
    }
    for ax, method in zip(axes.flat, methods):
        curve = curves[method]
        steps = [number(p.get("step")) for p in curve]
        n = None
        for key, (label, color, style) in styles.items():
            trace = bands.get(method, {}).get(interval_key[key]) or []
            if trace:
                xs = [step for step, _ in trace]
                ax.plot(xs, [iv.value for _, iv in trace], style, color=color, label=label, marker=".", markersize=3)
                ax.fill_between(
                    xs,
                    [iv.ci_low for _, iv in trace],
                    [iv.ci_high for _, iv in trace],
                    color=color,
                    alpha=0.15,
                    linewidth=0,
                )
                n = trace[0][1].n_runs
                continue
            values = np.array([number(p.get(key)) for p in curve])
            if np.isfinite(values).any():
                ax.plot(steps, values - values[0], style, color=color, label=label, marker=".", markersize=3)
        ax.axhline(0.0, color="0.6", linewidth=0.6)
        ax.set_title(method + (f" (n={n}, 95 % band)" if n else " (n=1)"), fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(methods) :]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("step", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("Δ mean token log-prob", fontsize=8)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    if handles:
        fig.legend(handles, labels, loc="upper center", ncol=4, fontsize=8, bbox_to_anchor=(0.5, 1.0))
    fig.suptitle("Squeezing trace: forget target vs the original model's belief bands", y=1.04, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.95))
    return save_figure(fig, path)


def plot_tradeoff_curves(curves: dict[str, Sequence[dict]], path: str | Path, bands: dict | None = None):
    """Forgetting (target log-prob drop, fact-leak rate, log10 FQ, Mem) against model utility over training,
    one line per method (markers at every evaluation, a star at the end). ``bands`` (as for
    ``plot_squeezing_traces``, with ``model_utility``, ``fact_leak``, ``log10_forget_quality``, ``mem``): a
    method with n > 1 runs is drawn as the means over runs with 95 % error bars in both directions."""
    bands = bands or {}
    plt = pyplot()
    if plt is None:
        return None
    panels = [
        ("target_drop", "drop of target log-prob (→ more forgotten)"),
        ("fact_leak", "fact-leak rate (← more forgotten)"),
        ("log10_forget_quality", "log10 forget quality (→ closer to retain)"),
        ("mem", "Mem (→ more forgotten)"),
    ]
    panels = [(k, label) for k, label in panels if _curves_have(curves, k)]
    if not panels or not curves:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(3.6 * len(panels), 3.2), squeeze=False)
    cmap = plt.get_cmap("tab10" if len(curves) <= 10 else "tab20")  # one distinct colour per method
    for (key, label), ax in zip(panels, axes[0]):
        for i, (method, curve) in enumerate(curves.items()):
            if not curve:
                continue
            color = cmap(i % cmap.N)
            x_trace = bands.get(method, {}).get("target_change" if key == "target_drop" else key) or []
            y_trace = bands.get(method, {}).get("model_utility") or []
            common = sorted({s for s, _ in x_trace} & {s for s, _ in y_trace})
            if common:
                xi, yi = dict(x_trace), dict(y_trace)
                sign = -1.0 if key == "target_drop" else 1.0  # the drop is the negative change
                xs = [sign * xi[s].value for s in common]
                ys = [yi[s].value for s in common]
                x_err = _errors([xi[s] for s in common], xs, sign)
                y_err = _errors([yi[s] for s in common], ys, 1.0)
                n = xi[common[0]].n_runs
                ax.errorbar(
                    xs,
                    ys,
                    xerr=x_err,
                    yerr=y_err,
                    fmt="-",
                    marker=".",
                    markersize=3,
                    color=color,
                    label=f"{method} (n={n})",
                    alpha=0.85,
                    elinewidth=0.6,
                    capsize=1.5,
                )
                ax.plot(xs[-1:], ys[-1:], "*", color=color, markersize=9)
                continue
            if key == "target_drop":
                xs = [forgetting_value(p, "target_drop", curve[0]) for p in curve]
            else:
                xs = [number(p.get(key)) for p in curve]
            ys = [number(p.get("model_utility")) for p in curve]
            ax.plot(xs, ys, "-", marker=".", markersize=3, color=color, label=method, alpha=0.85)
            ax.plot(xs[-1:], ys[-1:], "*", color=color, markersize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("model utility (MU)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), fontsize=8, bbox_to_anchor=(0.5, 1.1))
    title = "Trade-off over training (★ = end of training)"
    if bands:
        title += "; (n=k): mean over k runs, 95 % error bars"
    fig.suptitle(title, y=1.16, fontsize=10)
    return save_figure(fig, path)


def _errors(intervals: Sequence, values: Sequence[float], sign: float) -> np.ndarray:
    """Asymmetric error bars (2, n) of intervals around the plotted values (``sign`` −1: the axis shows the
    negated measure); 0 where an interval is missing."""
    out = np.zeros((2, len(values)))
    for i, (iv, v) in enumerate(zip(intervals, values)):
        low, high = sorted((sign * iv.ci_low, sign * iv.ci_high))
        if math.isfinite(low) and math.isfinite(high):
            out[:, i] = [max(v - low, 0.0), max(high - v, 0.0)]
    return out


def _curves_have(curves: dict[str, Sequence[dict]], key: str) -> bool:
    source = "target_logprob" if key == "target_drop" else key
    return any(math.isfinite(number(p.get(source))) for c in curves.values() for p in c)


def plot_relearn_dose(rows: Sequence[dict], path: str | Path, reference: str = "retrain"):
    """Per setting two panels, the fact leak after k relearning steps and the conditional recovery, against k
    (evenly spaced, labelled with k), one line per method with its 95 % interval shaded, the ``reference``
    (retain) model dashed; ``rows``: the ``mean`` rows of ``relearn_dose.csv``. None when matplotlib is missing or
    there is nothing to draw."""
    plt = pyplot()
    if plt is None or not rows:
        return None
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    steps = sorted({int(r["step"]) for r in rows})
    panels = (
        ("fact_leak_after", None, None, "fact leak after k steps"),  # its CSV interval is the gap's, not drawn
        ("conditional_recovery", "conditional_ci_low", "conditional_ci_high", "conditional recovery"),
    )
    fig, axes = plt.subplots(len(settings), 2, figsize=(9.0, 3.2 * len(settings)), squeeze=False, sharex=True)
    cmap = plt.get_cmap("tab10" if len(methods) <= 10 else "tab20")
    for s_i, setting in enumerate(settings):
        for p_i, (column, low, high, label) in enumerate(panels):
            ax = axes[s_i][p_i]
            for m_i, method in enumerate(methods):
                mine = sorted((r for r in rows if r["setting"] == setting and r["method"] == method), key=_step)
                if not mine:
                    continue
                xs = [steps.index(_step(r)) for r in mine]
                ys = np.array([number(r.get(column)) for r in mine])
                ref = method == reference
                color = "k" if ref else cmap(m_i % cmap.N)
                ax.plot(xs, ys, "--" if ref else "-", color=color, marker=".", label=method)
                if low is not None:
                    lows = np.array([number(r.get(low)) for r in mine])
                    highs = np.array([number(r.get(high)) for r in mine])
                    if np.isfinite(lows).any():
                        ax.fill_between(xs, lows, highs, color=color, alpha=0.12, linewidth=0)
            ax.set_xticks(range(len(steps)), [str(k) for k in steps])
            ax.set_ylim(-0.02, 1.02)
            ax.set_title(f"{label} ({setting})", fontsize=9)
            ax.grid(alpha=0.3)
        axes[s_i][0].set_ylabel("share of held-out items", fontsize=8)
    for ax in axes[-1]:
        ax.set_xlabel("relearning steps k", fontsize=8)
    handles, labels = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), fontsize=8, bbox_to_anchor=(0.5, 1.06))
    fig.suptitle(
        f"Relearning against dose (mean over runs; {reference} dashed; 95 % interval shaded)", y=1.11, fontsize=10
    )
    return save_figure(fig, path)


def _step(row: dict) -> int:
    return int(row["step"])
