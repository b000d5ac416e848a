"""The instruments that look where spurious forgetting hides (docs/theory.md §15–§18), read off a run directory.

After the report, ``write_instruments`` writes four CSVs under ``--out`` and a section of ``table.md``:

    leak_at_k.csv             leak@k (§15) of every model — the retain model (the control), the original model and
                              every method — from the ``leak_k`` counts of its final evaluation (eval.json): one row
                              per run and k ∈ {1, 4, 16, n} (those ≤ n), with a 95 % interval over items; a ``mean``
                              row per method and k when it has several runs (items within runs, runs across seeds)
    squeeze.csv               the squeeze after the fork (§16) along each method's curve: per evaluation step the
                              change from step 0 of the target log-prob, of each band's whole-answer mean token
                              log-prob and of its continuation after the fork from the target, with 95 % intervals
                              over the band questions; ``squeezes`` = the after-fork change's interval is above 0
                              while the target's is below 0
    facts.csv                 the fact leak of the greedy answers (§17) on the items that have a fact — TOFU's
                              through the committed annotations (``bs_ref.metrics.tofu_facts``) — per split
    conditional_recovery.csv  per attack cell (§18): the share of items that did not leak before the attack and
                              leak after it, with the original model's leak under the same attack; an attack under
                              which the original model leaks no item is ``informative = False``

and, where the attacks recorded them (``bs_ref.protocol.recovery``; docs/theory.md §9, "Recovery against dose, and
quantization's regime"), two more, with a section of ``table.md`` each and ``plots/relearn_dose.png``:

    relearn_dose.csv          relearning as a dose–response (``--relearn-steps``): per method × seed × pair × setting
                              × step count, the fact leak of the held-out half before / after, the recovered amount,
                              the spurious gap against the retain model after the same number of steps, the target
                              log-prob before / after, conditional recovery and ``informative`` (the original model
                              leaks at that step); then a ``mean`` row per method × setting × step whose intervals
                              cover items and runs. No verdict rows
    nf4_bins.csv              the unlearning update against the NF4 bin width of the pair's original model, per
                              unlearned model and Linear layer, and the ``all`` row (``bs_ref.attacks.nf4``)

Everything here reads stored per-item results (eval.json, start/curve items, attacks_*.json), so it adds no model
call to a run beyond the leak@k samples of the final evaluation and the after-fork scores of the curve points,
which ``bs_ref.protocol.evaluate`` records from the same forward pass as the whole-answer bands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from bs_ref.attacks import NF4_BIN_COLUMNS, AttackResult, DoseResponse
from bs_ref.metrics.leakage import BANDS, contains_fact
from bs_ref.metrics.sampling import ks_for, pass_at_k
from bs_ref.metrics.tofu_facts import fact_table
from bs_ref.protocol import plots, stats
from bs_ref.protocol.recovery_table import REFERENCE, find_reference, rows_csv
from bs_ref.protocol.store import RunDir, read_json, write_text
from bs_ref.protocol.uncertainty import design_of
from bs_ref.timing import timed

ORIGINAL = "original"
LEAK_AT_K_COLUMNS = ("method", "seed", "pair_seed", "k", "leak_at_k", "ci_low", "ci_high", "n_items", "n_samples")
SQUEEZE_COLUMNS = (
    "method",
    "seed",
    "pair_seed",
    "step",
    "band",
    "n_questions",
    "target_change",
    "target_ci_low",
    "target_ci_high",
    "band_change",
    "band_ci_low",
    "band_ci_high",
    "after_fork_change",
    "after_fork_ci_low",
    "after_fork_ci_high",
    "squeezes",
)
FACTS_COLUMNS = ("method", "seed", "pair_seed", "split", "n_items", "n_annotated", "fact_leak", "ci_low", "ci_high")
CONDITIONAL_COLUMNS = (
    "method",
    "seed",
    "pair_seed",
    "attack",
    "setting",
    "n_items",
    "n_not_leaked_before",
    "n_recovered",
    "conditional_recovery",
    "ci_low",
    "ci_high",
    "original_leak_after",
    "informative",
)
DOSE_COLUMNS = (
    "method",
    "seed",
    "pair_seed",
    "setting",
    "step",
    "lr",
    "n_items",
    "fact_leak_before",
    "fact_leak_after",
    "recovered",
    "spurious_gap",
    "ci_low",
    "ci_high",
    "target_logprob_before",
    "target_logprob_after",
    "n_not_leaked_before",
    "n_recovered",
    "conditional_recovery",
    "conditional_ci_low",
    "conditional_ci_high",
    "informative",
)
"""Columns of ``relearn_dose.csv``: every leak is the greedy answer's fact leak on the held-out half (``leaks``);
``ci_low`` / ``ci_high`` are the spurious gap's 95 % interval, ``conditional_ci_*`` conditional recovery's (items
resampled within runs, the share recomputed; runs across seeds and pairs in the ``mean`` rows)."""
NF4_COLUMNS = ("method", "seed", "pair_seed", "setting", *NF4_BIN_COLUMNS)
"""Columns of ``nf4_bins.csv``."""


# ------------------------------------------------------------------------------------------------ measures
def leaks(items: Sequence[dict], facts: Mapping[str, str], field: str = "generation") -> np.ndarray:
    """Per item: 1.0 when its ``field`` (the greedy answer) contains the fact of its question, 0.0 when not, NaN
    when the question has no fact or the item no answer."""
    out = np.full(len(items), np.nan)
    for i, item in enumerate(items):
        fact, text = facts.get(item.get("question")), item.get(field)
        if fact and isinstance(text, str):
            out[i] = float(contains_fact(text, fact))
    return out


def conditional_recovery(before: Sequence[float], after: Sequence[float]) -> dict[str, Any]:
    """Among the items that did not leak before the attack (``before`` = 0; NaN items skipped), the share that
    leak after it: ``n_not_leaked_before``, ``n_recovered``, ``conditional_recovery`` (NaN when no item qualifies)
    and ``per_item`` (the 0/1 outcome of each qualifying item, for an interval)."""
    before, after = np.asarray(before, dtype=float), np.asarray(after, dtype=float)
    if before.shape != after.shape:
        raise ValueError(f"before and after need one value per item, got {before.shape} and {after.shape}")
    keep = (before == 0) & ~np.isnan(after)
    outcome = (after[keep] > 0).astype(float)
    return {
        "n_not_leaked_before": int(keep.sum()),
        "n_recovered": int(outcome.sum()),
        "conditional_recovery": float(outcome.mean()) if outcome.size else math.nan,
        "per_item": outcome,
    }


def _interval(values: np.ndarray | Mapping, ctx_seed: int = 0) -> tuple[float, float, float]:
    """(value, ci_low, ci_high) of the item mean (NaN items dropped); NaNs when nothing is left."""
    if isinstance(values, Mapping):
        values = {k: np.asarray(v, dtype=float) for k, v in values.items() if np.isfinite(v).any()}
        if not values:
            return math.nan, math.nan, math.nan
        iv = stats.interval(values, seed=ctx_seed)
        return iv.value, iv.ci_low, iv.ci_high
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if not values.size:
        return math.nan, math.nan, math.nan
    iv = stats.interval(values, seed=ctx_seed)
    return iv.value, iv.ci_low, iv.ci_high


def leak_at_k_rows(per_run: Mapping[tuple, list[dict]], method: str) -> list[dict]:
    """Rows of ``leak_at_k.csv`` for one method: ``per_run`` maps (seed, pair) to the ``leak_k`` counts of its
    items ({"n", "c"}); runs must share n. A ``mean`` row per k when there are several runs."""
    rows, by_k = [], {}
    for (seed, pair), counts in per_run.items():
        if not counts:
            continue
        n = min(int(c["n"]) for c in counts)
        if any(int(c["n"]) != n for c in counts):
            raise ValueError(f"{method}: leak@k items were sampled with different n")
        for k in ks_for(n):
            per_item = np.array([pass_at_k(n, int(c["c"]), k) for c in counts])
            value, low, high = _interval(per_item)
            rows.append(
                {
                    "method": method,
                    "seed": "" if seed is None else seed,
                    "pair_seed": pair,
                    "k": k,
                    "leak_at_k": value,
                    "ci_low": low,
                    "ci_high": high,
                    "n_items": len(counts),
                    "n_samples": n,
                }
            )
            by_k.setdefault(k, {})[(seed, pair)] = per_item
    if len(per_run) > 1:
        for k, runs in by_k.items():
            if len(runs) < 2 or len({len(v) for v in runs.values()}) != 1:
                continue
            value, low, high = _interval(runs)
            rows.append(
                {
                    "method": method,
                    "seed": "mean",
                    "pair_seed": "",
                    "k": k,
                    "leak_at_k": value,
                    "ci_low": low,
                    "ci_high": high,
                    "n_items": len(next(iter(runs.values()))),
                    "n_samples": rows[-1]["n_samples"],
                }
            )
    return rows


def per_question(items: Mapping[str, list], band: str, kind: str) -> np.ndarray | None:
    """Per band question: the mean over its ``band`` candidates (``band`` = "all": every band) of the whole-answer
    mean token log-prob (``kind`` = "") or the after-fork log-prob (``kind`` = "fork_"); NaN without candidates;
    None when the point lacks the columns (recorded before after-fork bands existed)."""
    names = BANDS if band == "all" else (band,)
    if any(f"band_{b}_{kind}sum" not in items for b in names):
        return None
    sums = sum(np.asarray(items[f"band_{b}_{kind}sum"], dtype=float) for b in names)
    counts = sum(np.asarray(items[f"band_{b}_{kind}count"], dtype=float) for b in names)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.where(counts > 0, counts, 1), np.nan)


def squeeze_rows(curve: Sequence[dict], method: str, seed, pair: int) -> list[dict]:
    """Rows of ``squeeze.csv`` for one run's curve (points after step 0), per band (high, mid, low, all)."""
    if len(curve) < 2:
        return []
    start = (curve[0].get("items") or {}).get("forget") or {}
    if "nll_answer" not in start:
        return []
    target0 = -np.asarray(start["nll_answer"], dtype=float)
    rows = []
    for point in curve[1:]:
        items = (point.get("items") or {}).get("forget") or {}
        if "nll_answer" not in items:
            continue
        target = _interval(-np.asarray(items["nll_answer"], dtype=float) - target0)
        for band in (*BANDS, "all"):
            whole0, whole = per_question(start, band, ""), per_question(items, band, "")
            fork0, fork = per_question(start, band, "fork_"), per_question(items, band, "fork_")
            if fork0 is None or fork is None or whole0 is None or whole is None:
                continue
            change = _interval(whole - whole0)
            after = _interval(fork - fork0)
            squeezes = bool(after[1] > 0 and target[2] < 0) if not math.isnan(after[1]) else ""
            rows.append(
                {
                    "method": method,
                    "seed": "" if seed is None else seed,
                    "pair_seed": pair,
                    "step": point.get("step"),
                    "band": band,
                    "n_questions": int(np.isfinite(fork - fork0).sum()),
                    "target_change": target[0],
                    "target_ci_low": target[1],
                    "target_ci_high": target[2],
                    "band_change": change[0],
                    "band_ci_low": change[1],
                    "band_ci_high": change[2],
                    "after_fork_change": after[0],
                    "after_fork_ci_low": after[1],
                    "after_fork_ci_high": after[2],
                    "squeezes": squeezes,
                }
            )
    return rows


def informative_attacks(cells: Mapping[tuple, Any], facts: Mapping[str, str]) -> dict[tuple[str, str], bool | None]:
    """{(attack, setting): does the original model leak at least one item under the attack?} from the stored attack
    cells ((method, seed, pair, attack, setting) -> AttackResult); the original model is attacked at ``end`` only,
    which stands for every setting; None when the original model was not attacked or no item has a fact."""
    out: dict[tuple[str, str], bool | None] = {}
    for key in cells:
        attack, setting = key[3], key[4]
        found = [r for k, r in cells.items() if k[0] == ORIGINAL and k[3] == attack]
        values = np.concatenate([leaks(r.after, facts) for r in found]) if found else np.array([])
        values = values[~np.isnan(values)]
        out[(attack, setting)] = bool(values.sum() > 0) if values.size else None
    return out


def conditional_rows(
    cells: Mapping[tuple, Any], facts: Mapping[str, str], informative: Mapping[tuple[str, str], bool | None]
) -> list[dict]:
    """Rows of ``conditional_recovery.csv``: one per attack cell."""
    rows = []
    for key, result in cells.items():
        method, seed, pair, attack, setting = key
        before = {int(it["index"]): v for it, v in zip(result.before, leaks(result.before, facts))}
        after = {int(it["index"]): v for it, v in zip(result.after, leaks(result.after, facts))}
        index = sorted(after)
        found = conditional_recovery([before.get(i, math.nan) for i in index], [after[i] for i in index])
        _, low, high = _interval(found["per_item"]) if found["per_item"].size else (math.nan, math.nan, math.nan)
        original = [r for k, r in cells.items() if k[0] == ORIGINAL and k[2] == pair and k[3] == attack]
        original_leak = _interval(np.concatenate([leaks(r.after, facts) for r in original]))[0] if original else ""
        flag = informative.get((attack, setting))
        rows.append(
            {
                "method": method,
                "seed": "" if seed is None else seed,
                "pair_seed": pair,
                "attack": attack,
                "setting": setting,
                "n_items": len(index),
                "n_not_leaked_before": found["n_not_leaked_before"],
                "n_recovered": found["n_recovered"],
                "conditional_recovery": found["conditional_recovery"],
                "ci_low": low,
                "ci_high": high,
                "original_leak_after": original_leak,
                "informative": "" if flag is None else flag,
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------ dose and NF4
def load_measures(store: RunDir, cells: Mapping[tuple, Any]) -> tuple[dict[tuple, DoseResponse], dict[tuple, list]]:
    """({(method, seed, pair, setting): DoseResponse}, {(method, seed, pair, setting): NF4 bin rows}) stored beside
    the attack ``cells`` ((method, seed, pair, attack, setting) -> AttackResult) in their attacks_<setting>.json."""
    doses, bins = {}, {}
    for method, seed, pair, setting in dict.fromkeys((k[0], k[1], k[2], k[4]) for k in cells):
        payload = read_json(store.method_dir(method, seed, pair) / f"attacks_{setting}.json")
        if payload.get("relearn_dose"):
            doses[(method, seed, pair, setting)] = DoseResponse.from_dict(payload["relearn_dose"])
        if payload.get("nf4_bins"):
            bins[(method, seed, pair, setting)] = payload["nf4_bins"]
    return doses, bins


def dose_cells(doses: Mapping[tuple, DoseResponse]) -> dict[tuple, AttackResult]:
    """The dose–responses as attack cells, one per step count: (method, seed, pair, ``relearn@k``, setting) ->
    ``DoseResponse.at(k)``."""
    return {(m, s, p, f"relearn@{k}", setting): d.at(k) for (m, s, p, setting), d in doses.items() for k in d.steps}


def _conditional_share(run: Mapping[str, Any]) -> float:
    """A run's conditional recovery from its (resampled) held-out items {"before": leaks, "after": leaks}."""
    before = np.asarray(run["heldout"]["before"], dtype=float)
    after = np.asarray(run["heldout"]["after"], dtype=float)
    keep = (before == 0) & ~np.isnan(after)
    return float((after[keep] > 0).mean()) if keep.any() else math.nan


def _dose_per_item(result: AttackResult, reference: AttackResult | None, facts: Mapping[str, str]) -> dict:
    """Per held-out item (by ``index``): fact leak before / after, the reference's after (NaN without one), the
    target log-prob before / after."""
    after = {int(it["index"]): it for it in result.after}
    index = sorted(after)
    before = {int(it["index"]): it for it in result.before}
    ref = {int(it["index"]): it for it in reference.after} if reference is not None else {}

    def column(items: Mapping[int, dict], measure) -> np.ndarray:
        return np.array([measure(items[i]) if i in items else math.nan for i in index], dtype=float)

    leak = lambda it: leaks([it], facts)[0]  # noqa: E731
    logprob = lambda it: stats.item_values([it], "target_logprob")[0]  # noqa: E731
    return {
        "before": column(before, leak),
        "after": column(after, leak),
        "reference_after": column(ref, leak),
        "logprob_before": column(before, logprob),
        "logprob_after": column(after, logprob),
    }


def _nanmean(values: np.ndarray) -> float:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def _conditional_interval(runs: Mapping[tuple, dict]) -> tuple[float, float, float]:
    """(value, ci_low, ci_high) of conditional recovery over ``runs`` ({(seed, pair): per-item arrays}): the mean
    over runs of each run's share, items resampled within runs and runs across seeds and pairs."""
    data = {k: {"heldout": {"before": v["before"], "after": v["after"]}} for k, v in runs.items()}
    if not data or not any(np.any(v["heldout"]["before"] == 0) for v in data.values()):
        return math.nan, math.nan, math.nan
    try:
        iv = stats.interval(data, _conditional_share, design=design_of(data))
    except ValueError:  # runs with different numbers of held-out items: no joint item resampling
        return math.nan, math.nan, math.nan
    return iv.value, iv.ci_low, iv.ci_high


def dose_rows(doses: Mapping[tuple, DoseResponse], facts: Mapping[str, str]) -> list[dict]:
    """Rows of ``relearn_dose.csv``: one per method × seed × pair × setting × step count, then one ``mean`` row per
    method × setting × step count (``DOSE_COLUMNS``)."""
    cells = dose_cells(doses)
    informative = informative_attacks(cells, facts)
    rows, by_mean = [], {}
    for key, result in cells.items():
        method, seed, pair, attack, setting = key
        per = _dose_per_item(result, find_reference(cells, key, REFERENCE), facts)
        gap = _interval(per["after"] - per["reference_after"])
        share = _conditional_interval({(seed, pair): per})
        found = conditional_recovery(per["before"], per["after"])
        flag = informative.get((attack, setting))
        row = {
            "method": method,
            "seed": "" if seed is None else seed,
            "pair_seed": pair,
            "setting": setting,
            "step": int(attack.split("@", 1)[1]),
            "lr": result.info.get("lr"),
            "n_items": len(per["after"]),
            "fact_leak_before": _nanmean(per["before"]),
            "fact_leak_after": _nanmean(per["after"]),
            "recovered": _nanmean(per["after"] - per["before"]),
            "spurious_gap": gap[0],
            "ci_low": gap[1],
            "ci_high": gap[2],
            "target_logprob_before": _nanmean(per["logprob_before"]),
            "target_logprob_after": _nanmean(per["logprob_after"]),
            "n_not_leaked_before": found["n_not_leaked_before"],
            "n_recovered": found["n_recovered"],
            "conditional_recovery": share[0],
            "conditional_ci_low": share[1],
            "conditional_ci_high": share[2],
            "informative": "" if flag is None else flag,
        }
        rows.append(row)
        by_mean.setdefault((method, setting, row["step"]), []).append((row, per))
    return rows + [_dose_mean_row(runs) for runs in by_mean.values()]


def _dose_mean_row(runs: Sequence[tuple[dict, dict]]) -> dict:
    """The ``mean`` row of one method × setting × step count: means over its runs, intervals over items and
    runs."""
    first = runs[0][0]
    per_run = {(row["seed"], row["pair_seed"]): per for row, per in runs}
    gaps = {k: v["after"] - v["reference_after"] for k, v in per_run.items()}
    gaps = {k: v for k, v in gaps.items() if np.isfinite(v).any()}
    gap = (math.nan, math.nan, math.nan)
    if gaps and len({v.size for v in gaps.values()}) == 1:
        iv = stats.interval(gaps, design=design_of(gaps))
        gap = (iv.value, iv.ci_low, iv.ci_high)
    share = _conditional_interval(per_run)
    row = {k: first[k] for k in ("method", "setting", "step", "lr", "informative")}
    row |= {"seed": "mean", "pair_seed": "", "n_items": sum(r["n_items"] for r, _ in runs)}
    for column in ("fact_leak_before", "fact_leak_after", "recovered", "target_logprob_before", "target_logprob_after"):
        row[column] = _nanmean(np.array([r[column] for r, _ in runs], dtype=float))
    for column in ("n_not_leaked_before", "n_recovered"):
        row[column] = sum(r[column] for r, _ in runs)
    row |= {"spurious_gap": gap[0], "ci_low": gap[1], "ci_high": gap[2]}
    row |= {"conditional_recovery": share[0], "conditional_ci_low": share[1], "conditional_ci_high": share[2]}
    return row


def nf4_rows(bins: Mapping[tuple, list]) -> list[dict]:
    """Rows of ``nf4_bins.csv``: the stored ``nf4_bin_table`` of every unlearned model, keyed by its cell."""
    return [
        {"method": m, "seed": "" if s is None else s, "pair_seed": p, "setting": setting, **row}
        for (m, s, p, setting), table in bins.items()
        for row in table
    ]


def _quant4_recovered(cells: Mapping[tuple, Any], facts: Mapping[str, str]) -> dict[tuple, float]:
    """{(method, seed, pair, setting): the fact leak recovered under quant4 (after − before)}."""
    out = {}
    for (method, seed, pair, attack, setting), result in cells.items():
        if attack == "quant4":
            per = _dose_per_item(result, None, facts)
            out[(method, "" if seed is None else seed, pair, setting)] = _nanmean(per["after"] - per["before"])
    return out


def write_dose(store: RunDir, cells: Mapping[tuple, Any], facts: Mapping[str, str]) -> dict[str, Any]:
    """Write relearn_dose.csv and nf4_bins.csv from what the attacks stored beside ``cells`` (each only where there
    is something to write: a stale one from an earlier run in the directory is removed), and
    plots/relearn_dose.png; returns their rows and the quant4 recovery the NF4 table sits beside."""
    doses, bins = load_measures(store, cells)
    out = {"relearn_dose": dose_rows(doses, facts), "nf4_bins": nf4_rows(bins)}
    for name, columns in (("relearn_dose", DOSE_COLUMNS), ("nf4_bins", NF4_COLUMNS)):
        path = store.path(f"{name}.csv")
        if out[name]:
            write_text(path, rows_csv(out[name], columns))
        else:
            path.unlink(missing_ok=True)
    figure = store.path("plots") / "relearn_dose.png"
    figure.unlink(missing_ok=True)
    means = [r for r in out["relearn_dose"] if r["seed"] == "mean"]
    out["dose_plot"] = plots.plot_relearn_dose(means, figure, reference=REFERENCE) if means else None
    out["quant4_recovered"] = _quant4_recovered(cells, facts)
    return out


# ------------------------------------------------------------------------------------------------ the run's files
def run_facts(splits) -> dict[str, str]:
    """{question: fact} of the run's forget and retain evaluation items (records' own facts, else the committed
    TOFU annotations)."""
    records = [r for kind in ("forget", "retain") for r in splits.evaluation.get(kind, [])]
    return fact_table(records)


@timed("report")
def write_instruments(
    store: RunDir,
    labels: Sequence[str],
    seeds: Sequence[int],
    pairs: Sequence[int],
    facts: Mapping[str, str],
    cells: Mapping[tuple, Any] | None = None,
    informative: Mapping | None = None,
) -> dict[str, Any]:
    """Write leak_at_k.csv, squeeze.csv, facts.csv and (with attack ``cells``) conditional_recovery.csv, and
    relearn_dose.csv / nf4_bins.csv where the attacks recorded them (``write_dose``); returns their rows and the
    lines of the table.md sections (``lines``)."""
    leak_rows, squeeze, fact_rows = [], [], []
    for label in labels:
        runs: dict[tuple, list[dict]] = {}
        for pair in pairs:
            for seed in [None] if store.is_finished(label, None, pair) else seeds:
                if not store.is_finished(label, seed, pair):
                    continue
                per_split = store.read_eval(label, seed, pair) or {}
                runs[(seed, pair)] = [it["leak_k"] for it in per_split.get("forget", []) if it.get("leak_k")]
                for split in ("forget", "retain"):
                    items = per_split.get(split, [])
                    values = leaks(items, facts)
                    value, low, high = _interval(values)
                    fact_rows.append(
                        {
                            "method": label,
                            "seed": "" if seed is None else seed,
                            "pair_seed": pair,
                            "split": split,
                            "n_items": len(items),
                            "n_annotated": int(np.isfinite(values).sum()),
                            "fact_leak": value,
                            "ci_low": low,
                            "ci_high": high,
                        }
                    )
                squeeze += squeeze_rows(store.load_result(label, seed, pair).get("curve") or [], label, seed, pair)
        leak_rows += leak_at_k_rows(runs, label)
    out = {"leak_at_k": leak_rows, "squeeze": squeeze, "facts": fact_rows}
    write_text(store.path("leak_at_k.csv"), rows_csv(leak_rows, LEAK_AT_K_COLUMNS))
    write_text(store.path("squeeze.csv"), rows_csv(squeeze, SQUEEZE_COLUMNS))
    write_text(store.path("facts.csv"), rows_csv(fact_rows, FACTS_COLUMNS))
    if cells:
        informative = informative if informative is not None else informative_attacks(cells, facts)
        out["conditional_recovery"] = conditional_rows(cells, facts, informative)
        write_text(store.path("conditional_recovery.csv"), rows_csv(out["conditional_recovery"], CONDITIONAL_COLUMNS))
    out |= write_dose(store, cells or {}, facts)
    out["lines"] = table_lines(out) + dose_lines(out) + nf4_lines(out)
    return out


def _fmt(row: Mapping[str, Any], value: str, low: str, high: str) -> str:
    return stats.format_interval(row[value], row[low], row[high])


def table_lines(out: Mapping[str, Any]) -> list[str]:
    """The table.md section: leak@k per method, the after-fork squeeze at the last curve point, the fact leak on
    annotated items and conditional recovery (means over runs are in the CSVs)."""
    lines = [
        "## Instruments: leak@k, the squeeze after the fork, annotated facts, conditional recovery",
        "",
        "docs/theory.md §15–§18; every number with its 95 % interval over items (runs: the CSVs).",
    ]
    rows = [r for r in out["leak_at_k"] if r["seed"] != "mean"]
    if rows:
        ks = sorted({r["k"] for r in rows})
        lines += [
            "",
            f"Leak@k (n = {rows[0]['n_samples']} samples at T = 1 on {rows[0]['n_items']} forget items; "
            "the retain model is the control):",
            "",
            "| method | seed | " + " | ".join(f"k={k}" for k in ks) + " |",
            "|---|---|" + "---|" * len(ks),
        ]
        for key in dict.fromkeys((r["method"], r["seed"], r["pair_seed"]) for r in rows):
            mine = {r["k"]: r for r in rows if (r["method"], r["seed"], r["pair_seed"]) == key}
            cells = [_fmt(mine[k], "leak_at_k", "ci_low", "ci_high") if k in mine else "–" for k in ks]
            lines.append(f"| {key[0]} | {key[1]} | " + " | ".join(cells) + " |")
    last = {}
    for r in out["squeeze"]:
        if r["band"] in ("high", "all"):
            last[(r["method"], r["seed"], r["pair_seed"], r["band"])] = r
    if last:
        lines += [
            "",
            "The squeeze after the fork at the last curve point (change from step 0, nats; whole answers: "
            "mean token log-prob, after the fork: summed log-prob of the continuation; **squeezes**: the "
            "after-fork interval above 0 while the target's is below 0):",
            "",
            "| method | seed | band | target | whole band | after fork | squeezes |",
            "|---|---|---|---|---|---|---|",
        ]
        for (method, seed, _pair, band), r in last.items():
            lines.append(
                f"| {method} | {seed} | {band} | {_fmt(r, 'target_change', 'target_ci_low', 'target_ci_high')}"
                f" | {_fmt(r, 'band_change', 'band_ci_low', 'band_ci_high')} | "
                f"{_fmt(r, 'after_fork_change', 'after_fork_ci_low', 'after_fork_ci_high')} | "
                f"{ {True: '**yes**', False: 'no'}.get(r['squeezes'], '– (no interval)') } |"
            )
    forget = [r for r in out["facts"] if r["split"] == "forget" and r["n_annotated"]]
    if forget:
        lines += [
            "",
            "Fact leak of the greedy answer on the forget items that have a fact:",
            "",
            "| method | seed | annotated items | fact leak |",
            "|---|---|---:|---|",
        ]
        lines += [
            f"| {r['method']} | {r['seed']} | {r['n_annotated']}/{r['n_items']} | "
            f"{_fmt(r, 'fact_leak', 'ci_low', 'ci_high')} |"
            for r in forget
        ]
    cond = out.get("conditional_recovery") or []
    if cond:
        lines += [
            "",
            "Conditional recovery: of the items that did not leak before the attack, the share that leak "
            "after it; *uninformative*: the original model leaks no item under the attack, so it cannot show "
            "recovery (no verdict rows):",
            "",
            "| method | seed | attack | setting | not leaked before | recovered | informative |",
            "|---|---|---|---|---:|---|---|",
        ]
        for r in cond:
            flag = {True: "yes", False: "*uninformative*"}.get(r["informative"], "–")
            lines.append(
                f"| {r['method']} | {r['seed']} | {r['attack']} | {r['setting']} | "
                f"{r['n_not_leaked_before']} | {_fmt(r, 'conditional_recovery', 'ci_low', 'ci_high')} | "
                f"{flag} |"
            )
    return [*lines, ""]


def dose_lines(out: Mapping[str, Any]) -> list[str]:
    """The table.md section of the relearning dose–response: per method × setting (the ``mean`` rows), the fact
    leak after each step count with its spurious gap, then conditional recovery."""
    means = [r for r in out.get("relearn_dose") or [] if r["seed"] == "mean"]
    if not means:
        return []
    steps = sorted({r["step"] for r in means})
    keys = list(dict.fromkeys((r["method"], r["setting"]) for r in means))
    cell = {(r["method"], r["setting"], r["step"]): r for r in means}
    header = ["| method | setting | before | " + " | ".join(f"k={k}" for k in steps) + " |"]
    header.append("|---|---|---|" + "---|" * len(steps))
    lines = [
        "## Relearning against dose",
        "",
        f"Relearning at a constant lr of {means[0]['lr']:g} (docs/theory.md §9): every model, the retain model "
        "included, takes the same k optimizer steps on the same batches of the attack half; the held-out half is "
        "scored after each k. Means over runs; 95 % intervals over items and runs. Not verdict rows; "
        "relearn_dose.csv holds every run" + (", plots/relearn_dose.png the curves." if out.get("dose_plot") else "."),
        "",
        "Fact leak after k steps (gap: − the retain model's after the same k steps):",
        "",
        *header,
    ]
    for method, setting in keys:
        texts = []
        for k in steps:
            r = cell.get((method, setting, k))
            texts.append(
                "–"
                if r is None
                else f"{stats.format_number(r['fact_leak_after'])} (gap {_fmt(r, 'spurious_gap', 'ci_low', 'ci_high')})"
            )
        before = cell[(method, setting, next(k for k in steps if (method, setting, k) in cell))]["fact_leak_before"]
        lines.append(f"| {method} | {setting} | {stats.format_number(before)} | " + " | ".join(texts) + " |")
    lines += ["", "Conditional recovery after k steps (of the items not leaking before, the share leaking after):", ""]
    lines += header
    for method, setting in keys:
        texts = [
            _fmt(r, "conditional_recovery", "conditional_ci_low", "conditional_ci_high") if r else "–"
            for r in (cell.get((method, setting, k)) for k in steps)
        ]
        before = next(cell[(method, setting, k)] for k in steps if (method, setting, k) in cell)["n_not_leaked_before"]
        lines.append(f"| {method} | {setting} | {before} not leaking | " + " | ".join(texts) + " |")
    silent = sorted({r["step"] for r in means if r["informative"] is False})
    if silent:
        lines += ["", f"Uninformative (the original model leaks no held-out item): k = {', '.join(map(str, silent))}."]
    return [*lines, ""]


def nf4_lines(out: Mapping[str, Any]) -> list[str]:
    """The table.md section of the NF4 bins: the ``all`` row of every unlearned model beside the fact leak that the
    quant4 attack gives back to it."""
    rows = [r for r in out.get("nf4_bins") or [] if r["layer"] == "all"]
    if not rows:
        return []
    recovered = out.get("quant4_recovered") or {}
    lines = [
        "## The unlearning update against the NF4 bin",
        "",
        "Over every Linear layer 4-bit loading quantises (docs/theory.md §9): the RMS and the largest update "
        "|Δ| from the original model, the share of weights with |Δ| below half their NF4 bin, and the share whose "
        "NF4 code is the original's (near 1: quantization can undo the unlearning); beside it, the fact leak the "
        "quant4 attack gives back (after − before). nf4_bins.csv holds every layer.",
        "",
        "| method | seed | setting | Δ rms | Δ max | below half a bin | same NF4 code | quant4 recovered |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        back = recovered.get((r["method"], r["seed"], r["pair_seed"], r["setting"]))
        lines.append(
            f"| {r['method']} | {r['seed']} | {r['setting']} | {r['delta_rms']:.3g} | {r['delta_max_abs']:.3g} | "
            f"{r['share_rounded_away']:.3f} | {r['share_same_code']:.3f} | "
            f"{'– (not run)' if back is None else stats.format_number(back)} |"
        )
    return [*lines, ""]
