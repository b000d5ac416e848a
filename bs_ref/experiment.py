"""Reusable parts of the TOFU experiment: the run directory, result tables, matched forgetting, plots.

``experiments/tofu.py`` runs the protocol; this module holds what does not depend on how a model was
trained, so other experiment scripts (and tests) can use it:

- ``RunDir``: the output directory of one run — atomic writes (temp file + ``os.replace``), one folder per
  method and seed, a method counts as finished only once its ``result.json`` exists, and a rerun on a
  directory made with different settings stops with a clear error instead of mixing results.
- ``summary_rows`` / ``write_summary_csv`` / ``format_table``: one row per method and seed, plus mean and
  std rows when there are several seeds (SPEC §6 metrics; ``fact_leak`` empty where the data has no facts).
- ``matched_forgetting``: compares methods at the same amount of forgetting instead of at the last step.
  Every method is evaluated every few steps, which gives a curve of (forgetting, utility) points. For a
  forgetting measure f (larger = more forgotten: the drop of the target log-prob, or 1 − fact-leak rate)
  the common level f* is by default 0.9 × the lower median over methods of max f along the method's curve —
  a level at least half of the methods reach, so one weak method cannot pull the comparison down to almost
  no forgetting (``policy="min"``: 0.9 × the most forgetting every method reaches). Every other quantity is read
  off each curve at the first step where f reaches f*, interpolating linearly between the two evaluations
  around it; a method whose curve never reaches f* gets None ("not reached"), never a made-up value.
- Plots (matplotlib, optional extra ``[plots]``): Mem/Util/Agg per method, the squeezing trace (target vs
  high/mid/low belief-band log-prob over training; the paper's Fig. 2/4, SPEC SEQ1/SEQ2) and the
  trade-off curves (forgetting vs model utility).

Reference: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), Table 1, Fig. 2, 4.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

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

BANDS = ("high", "mid", "low")
"""Belief bands of the squeezing trace: the original model's high/mid/low-likelihood candidate answers."""

FORGETTING_MEASURES = {
    "target_drop": "drop of the forget answers' mean token log-prob",
    "fact_unleaked": "1 − fact-leak rate",
}
"""Measures of forgetting used for matched comparisons (larger = more forgotten)."""


# --------------------------------------------------------------------------------------------- atomic writes
def _atomic_replace(path: Path, write) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (temp file in the same folder + rename)."""
    return _atomic_replace(Path(path), lambda h: h.write(text.encode("utf-8")))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically; NaN/inf become null so the file is valid JSON everywhere."""
    return write_text(path, json.dumps(_json_safe(obj), indent=1, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def save_figure(fig, path: str | Path) -> Path:
    """Save a matplotlib figure as PNG atomically and close it."""
    import matplotlib.pyplot as plt

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return _atomic_replace(Path(path), lambda h: h.write(buffer.getvalue()))


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _json_safe(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


# --------------------------------------------------------------------------------------------- run directory
class RunDir:
    """The output directory of one run, with resume and overwrite rules.

    ``config.json`` records the settings; ``identity`` is the part of them that determines results (data,
    models, hyper-parameters, conventions — not the list of methods or seeds, which a rerun may extend).
    A directory whose identity differs from the new run's is refused unless ``overwrite`` is set, so results
    of different settings are never mixed. Each method/seed lives in ``methods/<method>/seed<k>/`` and is
    finished once ``result.json`` exists (it is written last, atomically).
    """

    def __init__(self, root: str | Path, identity: dict, overwrite: bool = False):
        self.root = Path(root)
        self.overwrite = overwrite
        self.identity = _json_safe(identity)
        config_path = self.root / "config.json"
        if config_path.is_file() and not overwrite:
            try:
                previous = read_json(config_path).get("identity", {})
            except (OSError, json.JSONDecodeError):
                previous = None
            if previous != self.identity:
                changed = sorted(_diff_keys(previous or {}, self.identity))
                raise ValueError(
                    f"--out {self.root} holds results of a run with different settings "
                    f"(differing: {', '.join(changed) or 'unreadable config.json'}); pass --overwrite to replace "
                    "them, or choose another --out"
                )
        if overwrite and (self.root / "methods").is_dir():
            shutil.rmtree(self.root / "methods")
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def method_dir(self, method: str, seed: int | None) -> Path:
        return self.root / "methods" / method / ("shared" if seed is None else f"seed{seed}")

    def result_path(self, method: str, seed: int | None) -> Path:
        return self.method_dir(method, seed) / "result.json"

    def is_finished(self, method: str, seed: int | None) -> bool:
        return self.result_path(method, seed).is_file()

    def load_result(self, method: str, seed: int | None) -> dict:
        return read_json(self.result_path(method, seed))

    def save_result(self, method: str, seed: int | None, result: dict, per_item: dict | None = None) -> Path:
        """Write the per-item evaluation (``eval.json``) first, then ``result.json`` (which marks it done)."""
        directory = self.method_dir(method, seed)
        if per_item is not None:
            write_json(directory / "eval.json", per_item)
        return write_json(directory / "result.json", result)


def _diff_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key in set(a) | set(b):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            keys |= _diff_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            keys.add(prefix + key)
    return keys


# --------------------------------------------------------------------------------------------- summaries
def _number(value: Any) -> float:
    if value is None or value == "":
        return float("nan")
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


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
                values = np.array([_number(r[column]) for r in method_rows], dtype=float)
                values = values[np.isfinite(values)]
                if values.size == 0:
                    row[column] = ""
                elif statistic == "mean":
                    row[column] = float(values.mean())
                else:
                    row[column] = float(values.std(ddof=1)) if values.size > 1 else 0.0
            rows.append(row)
    return rows


def write_summary_csv(path: str | Path, rows: Sequence[dict], columns: Sequence[str] = SUMMARY_COLUMNS) -> Path:
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


def _fmt(value: float, digits: int = 3) -> str:
    if not math.isfinite(value):
        return "–"
    if value != 0 and (abs(value) < 10 ** (-digits) or abs(value) >= 1e5):
        return f"{value:.2e}"
    return f"{value:.{digits}f}"


def method_statistics(rows: Sequence[dict], columns: Iterable[str]) -> dict[str, dict[str, tuple[float, float, int]]]:
    """Per method and column: (mean, std, n) over the per-seed rows of ``summary_rows``."""
    stats: dict[str, dict[str, tuple[float, float, int]]] = {}
    for row in rows:
        if row["seed"] in ("mean", "std"):
            continue
        stats.setdefault(row["method"], {})
    for method in stats:
        method_rows = [r for r in rows if r["method"] == method and r["seed"] not in ("mean", "std")]
        for column in columns:
            values = np.array([_number(r.get(column)) for r in method_rows], dtype=float)
            values = values[np.isfinite(values)]
            if values.size == 0:
                stats[method][column] = (float("nan"), float("nan"), 0)
            else:
                std = float(values.std(ddof=1)) if values.size > 1 else 0.0
                stats[method][column] = (float(values.mean()), std, int(values.size))
    return stats


def format_table(rows: Sequence[dict], columns: Sequence[tuple[str, str]] = TABLE_COLUMNS, digits: int = 3) -> str:
    """Markdown table (Table-1 style): one line per method, ``mean ± std`` where there are several seeds.
    Columns that are empty for every method (e.g. fact leak on data without facts) are left out."""
    stats = method_statistics(rows, [c for c, _ in columns])
    kept = [(c, h) for c, h in columns if any(stats[m][c][2] > 0 for m in stats)]
    lines = ["| method | " + " | ".join(h for _, h in kept) + " |", "|---|" + "---:|" * len(kept)]
    for method, by_column in stats.items():
        cells = []
        for column, _ in kept:
            mean, std, n = by_column[column]
            cells.append(_fmt(mean, digits) + (f" ± {_fmt(std, digits)}" if n > 1 else ""))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------- matched forgetting
def forgetting_value(point: dict, measure: str, start: dict) -> float:
    """Forgetting of one curve point (larger = more forgotten), relative to the curve's first point."""
    if measure == "target_drop":
        return _number(start.get("target_logprob")) - _number(point.get("target_logprob"))
    if measure == "fact_unleaked":
        return 1.0 - _number(point.get("fact_leak"))
    raise ValueError(f"unknown forgetting measure {measure!r}; choose one of {sorted(FORGETTING_MEASURES)}")


def interpolate_at_level(curve: Sequence[dict], measure: str, level: float, keys: Iterable[str]) -> dict | None:
    """Values of ``keys`` where the curve's forgetting first reaches ``level`` (linear interpolation between
    the two evaluations around the crossing); None when the curve never reaches it."""
    if not curve or not math.isfinite(level):
        return None
    keys = list(keys)
    values = [forgetting_value(p, measure, curve[0]) for p in curve]
    for i, value in enumerate(values):
        if not math.isfinite(value) or value < level:
            continue
        if i == 0 or not math.isfinite(values[i - 1]) or values[i] == values[i - 1]:
            weight = 1.0
        else:
            weight = (level - values[i - 1]) / (values[i] - values[i - 1])
        lo, hi = curve[max(i - 1, 0)], curve[i]
        out = {"forgetting": level, "step": _lerp(_number(lo.get("step")), _number(hi.get("step")), weight)}
        for key in keys:
            out[key] = _lerp(_number(lo.get(key)), _number(hi.get(key)), weight)
        return out
    return None


def _lerp(a: float, b: float, weight: float) -> float:
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


MATCH_POLICIES = ("median", "min")
MATCH_MARGIN = 0.9
"""The common level is this fraction of the chosen maximum, so the method that sets it is read inside its
curve rather than at its last evaluation (and a near-tie such as BS-T vs GA×(1−λ) does not split at the level)."""


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


# --------------------------------------------------------------------------------------------- retain-model logs
def read_retain_forget_items(path: str | Path) -> list[dict]:
    """Per-item forget-split records of a retain model, from either

    - an ``eval.json`` written by this project (``{"per_split": {"forget": [...]}}``), or
    - a locuslab/tofu evaluation log: the aggregated file (key ``eval_log_forget.json``) or a single
      ``eval_log_forget.json``; per item it keeps ``truth_ratio`` as stored there and adds ``R`` recomputed
      from the logged losses, ``R = exp(mean_j(−avg perturbed loss_j)) / exp(−avg paraphrased loss)``.

    Returns a list of dicts with at least ``truth_ratio``. Raises ValueError naming the file when it is
    neither format.
    """
    path = Path(path)
    if not path.is_file():
        raise ValueError(
            f"--retain-logs {path} does not exist; give an eval.json of the retain model or a locuslab/tofu eval log"
        )
    try:
        data = read_json(path)
    except json.JSONDecodeError as error:
        raise ValueError(f"--retain-logs {path} is not valid JSON ({error})") from None
    if isinstance(data, dict) and isinstance(data.get("per_split"), dict) and "forget" in data["per_split"]:
        items = data["per_split"]["forget"]
    elif isinstance(data, dict) and ("eval_log_forget.json" in data or "truth_ratio" in data):
        log = data.get("eval_log_forget.json", data)
        items = _locuslab_items(log, path)
    else:
        raise ValueError(
            f"--retain-logs {path}: expected a project eval.json (with per_split.forget) or a locuslab/tofu "
            "eval log (with eval_log_forget.json or truth_ratio)"
        )
    if not items or any("truth_ratio" not in item for item in items):
        raise ValueError(f"--retain-logs {path}: forget items without a truth_ratio field")
    return items


def _locuslab_items(log: dict, path: Path) -> list[dict]:
    if "truth_ratio" not in log:
        raise ValueError(f"--retain-logs {path}: the forget log has no truth_ratio field")
    keys = sorted(log["truth_ratio"], key=lambda k: int(k))
    items = []
    for key in keys:
        item = {"index": int(key), "truth_ratio": float(log["truth_ratio"][key])}
        if key in log.get("avg_paraphrased_loss", {}) and key in log.get("average_perturb_loss", {}):
            perturbed = np.asarray(log["average_perturb_loss"][key], dtype=float)
            paraphrased = float(log["avg_paraphrased_loss"][key])
            item["R"] = float(np.exp(np.mean(-perturbed) + paraphrased))
        items.append(item)
    return items


# --------------------------------------------------------------------------------------------- plots
def _pyplot():
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:  # pragma: no cover - depends on the environment
        return None
    return plt


PAPER_COLUMNS = (("mem", "Mem"), ("util", "Util"), ("agg", "Agg"))


def plot_metric_bars(rows: Sequence[dict], path: str | Path, columns=PAPER_COLUMNS):
    """Grouped bars of Mem/Util/Agg per method (mean ± std over seeds). None when matplotlib is missing."""
    plt = _pyplot()
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
    original model's high/mid/low-likelihood belief bands over training steps (paper Fig. 2/4). Squeezing
    shows as a band that rises while the target falls."""
    plt = _pyplot()
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
        steps = [_number(p.get("step")) for p in curve]
        for key, (label, color, style) in styles.items():
            values = np.array([_number(p.get(key)) for p in curve])
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
    plt = _pyplot()
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
                xs = [_number(p.get(key)) for p in curve]
            ys = [_number(p.get("model_utility")) for p in curve]
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
    return any(math.isfinite(_number(p.get(source))) for c in curves.values() for p in c)
