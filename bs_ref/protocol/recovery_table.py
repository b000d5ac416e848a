"""Recovery gaps (docs/theory.md §9): how much an attack gives back, and how much more than the retain model shows.

Per item i of one method, attack and seed cell, with ``leak`` any per-item measure (fact leak first, 0/1; the
target or fact-token log-prob as the graded signal)::

    recovered_i    = leak_after_attack_i − leak_after_unlearning_i          (same model, attack vs none)
    spurious_gap_i = leak_after_attack_i − leak_of_retain_model_after_the_same_attack_i

Real forgetting has a spurious gap ≈ 0. The arrays are per item, aligned by the item's ``index``, so
``stats.interval`` gives intervals over items and seed cells, and ``stats.compare`` paired
verdicts between methods (``recovery_runs``). ``recovery_rows`` gives one row of ``recovery.csv`` per
(method, seed, pair seed, attack, setting); its ``ci_low`` / ``ci_high`` are the 95 % interval of the
**spurious gap** of that row (a paired item bootstrap of after − retain-after, ``bs_ref.protocol.stats.compare``).
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bs_ref.attacks import AttackResult
from bs_ref.protocol import stats

RECOVERY_COLUMNS = (
    "method",
    "seed",
    "pair_seed",
    "attack",
    "setting",
    "fact_leak_before",
    "fact_leak_after",
    "recovered",
    "spurious_gap",
    "target_logprob_before",
    "target_logprob_after",
    "ci_low",
    "ci_high",
    "measure",
    "informative",
)
"""Columns of ``recovery.csv``. ``recovered``, ``spurious_gap`` and the interval are of ``measure`` (fact_leak
unless the data have no facts), the ``fact_leak_*`` and ``target_logprob_*`` columns always of those two;
``informative`` (docs/theory.md §18): False when the original model leaks no item under the attack, so the attack
cannot show recovery (empty when unknown)."""
REFERENCE = "retrain"
"""The experiment's label of the retain model (the control of the spurious gap)."""

CellKey = tuple[str, int | None, int, str, str]
"""(method, seed, pair_seed, attack, setting); the references ``original`` / ``retrain`` may carry seed None."""


def _by_index(items: Sequence[dict], measure: str) -> dict[int, float]:
    values = stats.item_values(items, measure)
    return {int(it["index"]): float(v) for it, v in zip(items, values)}


def recovery_per_item(
    result: AttackResult, reference: AttackResult | None = None, measure: str = "fact_leak"
) -> dict[str, np.ndarray]:
    """Per-item arrays over ``result``'s items (ordered by ``index``): ``index``, ``before``, ``after``,
    ``reference_after`` (NaN without a reference), ``recovered`` = after − before and ``spurious_gap`` = after −
    reference_after. Booleans count as 0/1; a missing value (an item the attack has no prompt for, a record
    without a fact) is NaN, which ``stats`` drops. The reference must have been attacked on the same items
    (the same relearning split)."""
    after = _by_index(result.after, measure)
    index = np.array(sorted(after), dtype=int)
    before = _by_index(result.before, measure)
    if result.before and set(before) != set(after):
        raise ValueError(f"{result.attack}: the items before and after the attack differ; evaluate the same records")
    ref = _by_index(reference.after, measure) if reference is not None else {}
    if reference is not None and set(ref) != set(after):
        raise ValueError(
            f"{result.attack}: the reference was attacked on other items ({len(ref)} vs {len(after)}); run the "
            "attack on both models with the same records and the same relearning split (relearn_models)"
        )
    out = {
        "index": index,
        "before": np.array([before.get(i, math.nan) for i in index]),
        "after": np.array([after[i] for i in index]),
        "reference_after": np.array([ref.get(i, math.nan) for i in index]),
    }
    with np.errstate(invalid="ignore"):
        out["recovered"] = out["after"] - out["before"]
        out["spurious_gap"] = out["after"] - out["reference_after"]
    return out


def find_reference(cells: Mapping[CellKey, AttackResult], key: CellKey, reference: str = REFERENCE):
    """The reference model's result for the same attack and pair seed: the same seed and setting if present,
    else the same seed at ``end``, else the seedless one, else any seed of the pair (None when there is none)."""
    method, seed, pair, attack, setting = key
    for candidate in (
        (reference, seed, pair, attack, setting),
        (reference, seed, pair, attack, "end"),
        (reference, None, pair, attack, setting),
        (reference, None, pair, attack, "end"),
    ):
        if candidate in cells:
            return cells[candidate]
    same = [k for k in cells if k[0] == reference and k[2] == pair and k[3] == attack]
    return cells[sorted(same, key=repr)[0]] if same else None


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def recovery_rows(
    cells: Mapping[CellKey, AttackResult],
    *,
    reference: str = REFERENCE,
    measure: str = "fact_leak",
    n_resamples: int = stats.N_RESAMPLES,
    ci_seed: int = 0,
) -> list[dict[str, Any]]:
    """Rows of ``recovery.csv`` (``RECOVERY_COLUMNS``), one per cell, in the order of ``cells``.

    ``cells``: {(method, seed, pair_seed, attack, setting): AttackResult}, the references ``original`` and
    ``retrain`` included (setting ``end``; seed None when they are attacked once per pair). ``measure``: the
    per-item measure of ``recovered``, ``spurious_gap`` and the interval (``target_logprob`` for data without
    facts). The interval is the spurious gap's (``bs_ref.protocol.stats.compare`` of the method's after-attack values
    against the reference's on the same items, ``n_resamples`` replicates seeded by ``ci_seed``); NaN (an empty
    cell) without a reference, and [0, 0] for the reference itself."""
    rows = []
    for key, result in cells.items():
        method, seed, pair, attack, setting = key
        ref = find_reference(cells, key, reference)
        per = recovery_per_item(result, ref, measure)
        leak = recovery_per_item(result, None, "fact_leak")
        logprob = recovery_per_item(result, None, "target_logprob")
        low = high = math.nan
        if ref is not None:
            pair_diff = stats.compare(
                per["after"], per["reference_after"], higher_is_better=False, n_resamples=n_resamples, seed=ci_seed
            )
            low, high = pair_diff.ci_low, pair_diff.ci_high
        rows.append(
            {
                "method": method,
                "seed": seed,
                "pair_seed": pair,
                "attack": attack,
                "setting": setting,
                "fact_leak_before": _nanmean(leak["before"]),
                "fact_leak_after": _nanmean(leak["after"]),
                "recovered": _nanmean(per["recovered"]),
                "spurious_gap": _nanmean(per["spurious_gap"]),
                "target_logprob_before": _nanmean(logprob["before"]),
                "target_logprob_after": _nanmean(logprob["after"]),
                "ci_low": low,
                "ci_high": high,
                "measure": measure,
                "informative": None,
            }
        )
    return rows


def recovery_csv(rows: Sequence[Mapping[str, Any]]) -> str:
    """The text of ``recovery.csv``: header ``RECOVERY_COLUMNS``, numbers with 6 significant digits, empty cells
    for NaN / None (as ``bs_ref.protocol.stats.verdict_csv``)."""
    return rows_csv(rows, RECOVERY_COLUMNS)


def rows_csv(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """CSV text of ``rows`` with header ``columns``: numbers with 6 significant digits, empty cells for NaN / None."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(columns), extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _csv_cell(row.get(k)) for k in columns})
    return buffer.getvalue()


def recovery_runs(
    cells: Mapping[CellKey, AttackResult],
    method: str,
    attack: str,
    setting: str = "end",
    *,
    which: str = "spurious_gap",
    reference: str = REFERENCE,
    measure: str = "fact_leak",
) -> dict[tuple[int | None, int], np.ndarray]:
    """{(seed, pair_seed): per-item ``which`` ("recovered", "spurious_gap", "after", ...)} of one method, attack
    and setting: the runs ``stats.interval`` takes (``design="crossed"`` on a complete seed × pair grid),
    and, for two methods with the same keys, ``stats.compare`` (``higher_is_better=False``: less
    recovery is better)."""
    out = {}
    for key, result in cells.items():
        if key[0] == method and key[3] == attack and key[4] == setting:
            out[(key[1], key[2])] = recovery_per_item(result, find_reference(cells, key, reference), measure)[which]
    if not out:
        raise ValueError(f"no cell of method {method!r}, attack {attack!r}, setting {setting!r}")
    return out


# ------------------------------------------------------------------------------------------------ plot
def plot_recovery(
    rows: Sequence[Mapping[str, Any]],
    path: str | Path,
    *,
    before: str = "fact_leak_before",
    after: str = "fact_leak_after",
    reference: str = REFERENCE,
    title: str | None = None,
) -> Path | None:
    """One panel per (setting, attack): per method, its level before → after the attack (mean over seed cells),
    an arrow between them, and the retain model's after-attack level as a dashed line. Needs matplotlib
    (imported here; ``pip install -e '.[plots]'``): without it, returns None and draws nothing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    rows = [r for r in rows if _finite(r.get(before)) or _finite(r.get(after))]
    if not rows:
        return None
    settings = list(dict.fromkeys(r["setting"] for r in rows))
    attacks = list(dict.fromkeys(r["attack"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    n_cols = min(4, len(attacks))  # at most 4 panels a row: a setting's attacks wrap onto several rows
    per_setting = -(-len(attacks) // n_cols)
    width = max(3.2, 0.55 * len(methods) + 1.2) * n_cols
    fig, axes = plt.subplots(
        len(settings) * per_setting,
        n_cols,
        squeeze=False,
        sharey=True,
        figsize=(width, 3.0 * len(settings) * per_setting),
    )
    for r_i, setting in enumerate(settings):
        for ax in axes[r_i * per_setting : (r_i + 1) * per_setting].flat[len(attacks) :]:
            ax.set_visible(False)
        for a_i, attack in enumerate(attacks):
            ax = axes[r_i * per_setting + a_i // n_cols][a_i % n_cols]
            cell = [r for r in rows if r["setting"] == setting and r["attack"] == attack]
            for x, method in enumerate(methods):
                mine = [r for r in cell if r["method"] == method]
                if not mine:
                    continue
                y0, y1 = _mean(mine, before), _mean(mine, after)
                ax.plot([x], [y0], "o", mfc="white", mec="C0", label="before" if x == 0 else None)
                ax.plot([x], [y1], "o", color="C3", label="after attack" if x == 0 else None)
                if _finite(y0) and _finite(y1) and y0 != y1:
                    ax.annotate("", xy=(x, y1), xytext=(x, y0), arrowprops={"arrowstyle": "->", "color": "0.4"})
            level = _mean([r for r in cell if r["method"] == reference], after)
            if _finite(level):
                ax.axhline(level, ls="--", color="0.5", lw=1, label=f"{reference} after attack")
            ax.set_xticks(range(len(methods)), methods, rotation=45, ha="right", fontsize=8)
            ax.set_title(f"{attack} ({setting})", fontsize=9)
            if a_i % n_cols == 0:
                ax.set_ylabel(before.replace("_before", "").replace("_", " "))
    axes[0][0].legend(fontsize=7, loc="best")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _csv_cell(value: Any) -> Any:
    if isinstance(value, (float, np.floating)):
        return "" if math.isnan(float(value)) else f"{float(value):.6g}"
    return "" if value is None else value


def _finite(value) -> bool:
    return value is not None and isinstance(value, (int, float, np.floating)) and math.isfinite(float(value))


def _mean(rows: Sequence[Mapping[str, Any]], column: str) -> float:
    values = [float(r[column]) for r in rows if _finite(r.get(column))]
    return float(np.mean(values)) if values else math.nan
