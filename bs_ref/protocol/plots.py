"""The report's figures (matplotlib, the optional extra ``[plots]``: ``pip install -e '.[plots]'``).

- ``plot_metric_bars``: Mem / Util / Agg per method (mean ± std over seeds; the paper's Table 1 metrics);
- ``plot_squeezing_traces``: per method, the change from step 0 of the forget targets' mean token log-prob and
  of the original model's high/mid/low belief bands over training (the paper's Fig. 2/4; docs/theory.md
  SEQ1, SEQ2). Squeezing shows as a band that rises while the target falls; a band a curve lacks is not drawn;
- ``plot_tradeoff_curves``: forgetting (target drop, fact-leak rate, log10 FQ, Mem) against model utility.

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
from bs_ref.protocol.tables import method_statistics, number

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
    """Grouped bars of Mem/Util/Agg per method (mean ± std over seeds). None when matplotlib is missing."""
    plt = pyplot()
    if plt is None:
        return None
    stats = method_statistics(rows, [c for c, _ in columns])
    methods = list(stats)
    if not methods:
        return None
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(methods) + 2), 3.6))
    width = 0.8 / len(columns)
    x = np.arange(len(methods))
    for j, (column, label) in enumerate(columns):
        means = [stats[m][column][0] for m in methods]
        stds = [stats[m][column][1] if stats[m][column][2] > 1 else 0.0 for m in methods]
        ax.bar(x + (j - (len(columns) - 1) / 2) * width, np.nan_to_num(means), width, yerr=stds, label=label, capsize=2)
    ax.set_xticks(x, methods, rotation=30, ha="right")
    ax.set_ylim(0, 1)
    ax.set_ylabel("score (higher is better)")
    ax.set_title("Mem / Util / Agg per method (paper Table 1 metrics)")
    ax.legend(ncol=len(columns), fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_squeezing_traces(curves: dict[str, Sequence[dict]], path: str | Path):
    """One panel per method: change (from step 0) of the mean token log-prob of the forget targets and of the
    original model's high/mid/low-likelihood belief bands over training steps (paper Fig. 2/4). A band that
    a curve lacks (no candidates) is left out of the panel."""
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
    for ax, method in zip(axes.flat, methods):
        curve = curves[method]
        steps = [number(p.get("step")) for p in curve]
        for key, (label, color, style) in styles.items():
            values = np.array([number(p.get(key)) for p in curve])
            if np.isfinite(values).any():
                ax.plot(steps, values - values[0], style, color=color, label=label, marker=".", markersize=3)
        ax.axhline(0.0, color="0.6", linewidth=0.6)
        ax.set_title(method, fontsize=9)
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


def plot_tradeoff_curves(curves: dict[str, Sequence[dict]], path: str | Path):
    """Forgetting (target log-prob drop, fact-leak rate, log10 FQ, Mem) against model utility over training,
    one line per method (markers at every evaluation, a star at the end)."""
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
            if key == "target_drop":
                xs = [forgetting_value(p, "target_drop", curve[0]) for p in curve]
            else:
                xs = [number(p.get(key)) for p in curve]
            ys = [number(p.get("model_utility")) for p in curve]
            color = cmap(i % cmap.N)
            ax.plot(xs, ys, "-", marker=".", markersize=3, color=color, label=method, alpha=0.85)
            ax.plot(xs[-1:], ys[-1:], "*", color=color, markersize=9)
        ax.set_xlabel(label, fontsize=8)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("model utility (MU)")
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="upper center", ncol=min(6, len(labels)), fontsize=8, bbox_to_anchor=(0.5, 1.1))
    fig.suptitle("Trade-off over training (★ = end of training)", y=1.16, fontsize=10)
    return save_figure(fig, path)


def _curves_have(curves: dict[str, Sequence[dict]], key: str) -> bool:
    source = "target_logprob" if key == "target_drop" else key
    return any(math.isfinite(number(p.get(source))) for c in curves.values() for p in c)
