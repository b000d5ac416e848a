"""Every reported number with its 95 % interval, and the paired verdicts (docs/theory.md §10; ``stats``).

A *run* is one (unlearning seed, model-pair seed) cell of a method. Its per-item values are what a run
directory already stores: ``eval.json`` (the full evaluation at the end of training) and the ``items`` of every
curve point (the light evaluations during training: ``bs_ref.protocol.evaluate.CURVE_ITEM_COLUMNS``, the belief
bands per forget question, the retain model's truth ratios at step 0). From them every run gets *tables*
``{split: {column: per-item array}}`` (``bs_ref.protocol.stats.tofu_columns``), in two settings:

- ``end``: the end of training. The four evaluation splits of ``eval.json``, plus ``curve_forget``: the curve's
  forget questions with the target log-prob drop (last point − step 0, per question) and the belief bands'
  per-question sums (start − end), so the band drop is resampled with the questions;
- ``matched``: at matched forgetting. Each per-item column is read off the run's curve with the weight
  ``bs_ref.protocol.matched.crossing`` finds on the run's aggregate curve (all items), so the level is held
  fixed: intervals at matched forgetting are conditional on the level (and on where each curve crosses it).

``MEASURES`` says how each reported number is recomputed from the tables: an item mean (fact leak, ROUGE-L, the
target drop, ...) or a statistic (MU, log10 FQ, Mem, Util, Agg; a band drop is a ratio of per-question sums).
``bs_ref.protocol.stats`` then resamples items within runs and runs across (seed, pair seed) cells — the crossed design
(seeds and pair seeds resampled separately) when every seed ran on every pair and there are several of each,
else runs as independent cells.

Outputs: ``summary_intervals`` (the ``_ci_`` cells of ``summary.csv``), ``matched_intervals`` (those of
``matched.csv``) and ``method_intervals`` (the method-level cells of the matched tables), ``verdict_rows``
(``verdict.csv``: the comparisons of ``comparisons``), ``curve_intervals`` (the plots' bands). A number whose
per-item values are missing (a run directory from before they were stored, a retain model given only as logs)
keeps its value and gets empty bounds; nothing is made up.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bs_ref import files
from bs_ref.methods import method_from_spec
from bs_ref.metrics.leakage import BANDS
from bs_ref.metrics.paper import prob_from_nll
from bs_ref.protocol import stats
from bs_ref.protocol.matched import FORGETTING_MEASURES, crossing, lerp, run_key
from bs_ref.protocol.store import REFERENCE_METHODS, RunDir
from bs_ref.protocol.tables import number

UTILITY = ("retain", "real_authors", "world_facts")
SPLITS = ("forget", *UTILITY)


@dataclass(frozen=True)
class Measure:
    """How one number is recomputed from a run's tables: the mean of ``table[column]`` over items, or
    ``statistic`` of the tables ``splits``; ``power10``: the number is 10 ** the statistic (FQ from log10 FQ)."""

    table: str | None = None
    column: str | None = None
    statistic: stats.Statistic | None = None
    splits: tuple[str, ...] = ()
    power10: bool = False


MEASURES: dict[str, Measure] = {
    "forget_quality": Measure(statistic=stats.log10_forget_quality_statistic, splits=("forget",), power10=True),
    "log10_forget_quality": Measure(statistic=stats.log10_forget_quality_statistic, splits=("forget",)),
    "model_utility": Measure(statistic=stats.model_utility_statistic, splits=UTILITY),
    "mem": Measure(statistic=stats.mem_statistic, splits=("forget",)),
    "util": Measure(statistic=stats.util_statistic, splits=SPLITS),
    "agg": Measure(statistic=stats.agg_statistic, splits=SPLITS),
    "fact_leak": Measure("forget", "fact_leak"),
    "fact_leak_paraphrased_question": Measure("forget", "fact_leak_paraphrased_question"),
    "fact_leak_any_of_n": Measure("forget", "fact_leak_any_of_n"),
    "fact_logprob": Measure("forget", "fact_logprob"),
    "heldout_prob": Measure("forget", "heldout_prob"),
    "forget_prob": Measure("forget", "prob"),
    "forget_rougeL": Measure("forget", "rouge"),
    "forget_truth_ratio": Measure("forget", "tr_score"),
    "target_logprob_drop": Measure("curve_forget", "target_drop"),
    "target_change": Measure("curve_forget", "target_change"),
    "high_band_drop": Measure(statistic=stats.band_drop_statistic("high", "curve_forget"), splits=("curve_forget",)),
    **{
        f"{b}_band_change": Measure(
            statistic=stats.ratio_statistic(f"band_{b}_change_sum", f"band_{b}_count", "curve_forget"),
            splits=("curve_forget",),
        )
        for b in BANDS
    },
}
"""Every number that gets an interval, by its column name in summary.csv / matched.csv / verdict.csv."""

VERDICT_MEASURES = (
    "fact_leak",
    "fact_leak_paraphrased_question",
    "fact_leak_any_of_n",
    "target_logprob_drop",
    "high_band_drop",
    "model_utility",
    "agg",
    "log10_forget_quality",
)
"""The measures every comparison is made on (``bs_ref.protocol.stats.HIGHER_IS_BETTER`` gives their direction)."""
DEFINES_LEVEL = {"target_drop": "target_logprob_drop", "fact_unleaked": "fact_leak"}
"""At matched forgetting the measure that defines the level is the same for every method by construction: it is
not compared."""
MATCHED_MEASURE_OF = {
    "model_utility": "model_utility",
    "mem": "mem",
    "fact_leak": "fact_leak",
    "log10_forget_quality": "log10_forget_quality",
    "target_change": "target_change",
    **{f"{b}_band_change": f"{b}_band_change" for b in BANDS},
}
"""matched.csv columns with an interval -> their measure."""


@dataclass
class Context:
    """What the report needs besides the results: the metric convention and Fluency source (to recompute the
    statistics as the run computed them), the retain model's forget items per model pair (for FQ; None where
    there is none), the method declarations by label (to pair BS-T with GA×(1−λ) of its λ, BS-S with its base),
    the model-pair seeds, and the bootstrap's size and seed."""

    convention: str = "tofu"
    fluency_classifier: str | None = None
    retain_forget: dict[int, list[dict] | None] = field(default_factory=dict)
    methods: dict[str, Any] = field(default_factory=dict)
    pair_seeds: Sequence[int] = (0,)
    n_resamples: int = stats.N_RESAMPLES
    seed: int = 0


# --------------------------------------------------------------------------------------------- per-run tables
def _array(values: Any) -> np.ndarray:
    """A stored column as float64 (JSON null -> NaN)."""
    return np.array([np.nan if v is None else v for v in values], dtype=float)


def _items(point: Mapping[str, Any] | None) -> dict[str, dict[str, np.ndarray]] | None:
    items = (point or {}).get("items")
    if not items:
        return None
    return {split: {c: _array(v) for c, v in table.items()} for split, table in items.items()}


def curve_forget_table(start: Mapping[str, np.ndarray], now: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per curve forget question: the target log-prob drop (now − start of the mean token NLL) and its change
    (the negative), and per band the sums of start − now and now − start over the question's candidates with
    their count."""
    out = {}
    if "nll_answer" in start and "nll_answer" in now:
        out["target_drop"] = now["nll_answer"] - start["nll_answer"]
        out["target_change"] = -out["target_drop"]
    for band in BANDS:
        s, c = f"band_{band}_sum", f"band_{band}_count"
        if s in start and s in now and c in now:
            out[f"band_{band}_drop_sum"] = start[s] - now[s]
            out[f"band_{band}_change_sum"] = now[s] - start[s]
            out[f"band_{band}_count"] = now[c]
    return out


class Run:
    """One finished result and the tables it gives (computed on first use, then kept)."""

    def __init__(self, store: RunDir | None, result: dict, ctx: Context):
        self.store, self.result, self.ctx = store, result, ctx
        self.label = result["method"]
        self.key = run_key(result)
        self._end: dict | None = None
        self._end_done = False
        self._matched: dict[tuple[str, float], dict | None] = {}

    @property
    def curve(self) -> list[dict]:
        return self.result.get("curve") or []

    def end(self) -> dict | None:
        """Tables at the end of training (None when neither eval.json nor curve items exist)."""
        if not self._end_done:
            self._end_done = True
            tables: dict[str, dict[str, np.ndarray]] = {}
            per_split = self._eval()
            if per_split:
                pair = self.key[1]
                retain = self.ctx.retain_forget.get(pair)
                try:  # a file that reads but does not hold this run's items is damaged: one line, never no columns
                    tables = stats.tofu_columns(
                        per_split,
                        self.ctx.convention,
                        retain_forget=retain,
                        fluency_classifier=self.ctx.fluency_classifier,
                    )
                except (ValueError, KeyError, TypeError) as error:
                    path = self.store.eval_path(self.label, *self.key) if self.store else "eval.json"
                    problem = f"lacks {error}" if isinstance(error, KeyError) else str(error)
                    raise files.UnreadableFile(
                        path,
                        f"does not hold this run's per-item values ({problem})",
                        "delete its folder and rerun the same command to recompute it",
                    ) from None
                if "forget" in tables:
                    forget_items = per_split["forget"]
                    tables["forget"]["heldout_prob"] = np.array(
                        [
                            np.nan if it.get("nll_heldout") is None else prob_from_nll(it["nll_heldout"])
                            for it in forget_items[: len(tables["forget"]["prob"])]
                        ]
                    )
            start, last = _items(self.curve[0] if self.curve else None), _items(self.curve[-1] if self.curve else None)
            if len(self.curve) > 1 and start and last and "forget" in start and "forget" in last:
                table = curve_forget_table(start["forget"], last["forget"])
                if table:
                    tables["curve_forget"] = table
            self._end = tables or None
        return self._end

    def _eval(self) -> dict[str, list[dict]] | None:
        """The cell's eval.json (None when it has none); a damaged one is one line naming it and the fix
        (``RunDir.read_eval``), never a row without its interval columns."""
        if self.store is None:
            return None
        seed, pair = self.key
        return self.store.read_eval(self.label, seed, pair)

    def matched(self, measure: str, level: float) -> dict | None:
        """Tables at matched forgetting: every per-item column read off the curve with the weight found on the
        aggregate curve (None when the curve does not reach the level or lacks per-item values)."""
        cache_key = (measure, level)
        if cache_key not in self._matched:
            self._matched[cache_key] = self._read_off(measure, level)
        return self._matched[cache_key]

    def _read_off(self, measure: str, level: float) -> dict | None:
        found = crossing(self.curve, measure, level) if len(self.curve) > 1 else None
        if found is None:
            return None
        lo_i, hi_i, weight = found
        start, lo, hi = _items(self.curve[0]), _items(self.curve[lo_i]), _items(self.curve[hi_i])
        if not (start and lo and hi):
            return None
        tables = {}
        for split in SPLITS:
            if split not in lo or split not in hi:
                continue
            tables[split] = {c: lerp(lo[split][c], hi[split][c], weight) for c in hi[split] if c in lo[split]}
        if "forget" in tables:
            if "retain_truth_ratio" in start.get("forget", {}):
                tables["forget"]["retain_truth_ratio"] = start["forget"]["retain_truth_ratio"]
            table = curve_forget_table(start["forget"], tables["forget"])
            if table:
                tables["curve_forget"] = table
        return tables or None


def load_runs(store: RunDir | None, results: Sequence[dict], ctx: Context) -> dict[str, dict[tuple, Run]]:
    """{method label: {(seed, pair seed): Run}} for the finished results."""
    out: dict[str, dict[tuple, Run]] = {}
    for result in results:
        run = Run(store, result, ctx)
        out.setdefault(run.label, {})[run.key] = run
    return out


# --------------------------------------------------------------------------------------------- intervals
def measure_data(tables: Mapping[str, Any] | None, name: str) -> Any:
    """What ``bs_ref.protocol.stats`` takes for measure ``name`` from one run's tables: the item vector of an item mean,
    ``{split: table}`` for a statistic; None when the run lacks the values (a column absent, or every item NaN)."""
    if not tables:
        return None
    measure = MEASURES[name]
    if measure.statistic is None:
        column = tables.get(measure.table, {}).get(measure.column)
        if column is None or np.all(np.isnan(column)):
            return None
        return column
    if not all(s in tables for s in measure.splits):
        return None
    data = {s: tables[s] for s in measure.splits}
    try:  # a column the statistic needs is missing (no belief bands in this pair, no retain model, ...)
        value = measure.statistic(data)
    except (KeyError, ValueError):
        return None
    return None if math.isnan(value) else data


def design_of(keys: Iterable[tuple]) -> str:
    """``crossed`` when every unlearning seed ran on every model pair and there are several of each (seeds and
    pair seeds are then resampled separately), else ``runs`` (cells resampled as independent runs)."""
    keys = list(keys)
    seeds, pairs = {k[0] for k in keys}, {k[1] for k in keys}
    complete = len(set(keys)) == len(keys) == len(seeds) * len(pairs)
    return "crossed" if complete and len(seeds) > 1 and len(pairs) > 1 else "runs"


def interval(tables_by_key: Mapping[tuple, Any], name: str, ctx: Context) -> stats.Interval | None:
    """The 95 % interval of measure ``name`` over these runs ({(seed, pair seed): tables}); None without data."""
    measure = MEASURES[name]
    data = {k: d for k, t in tables_by_key.items() if (d := measure_data(t, name)) is not None}
    if not data:
        return None
    kwargs = dict(design=design_of(data), n_resamples=ctx.n_resamples, seed=ctx.seed)
    try:
        result = stats.interval(data, measure.statistic, **kwargs)
    except ValueError:
        return None
    if measure.power10:
        result = dataclasses.replace(
            result, value=10**result.value, ci_low=10**result.ci_low, ci_high=10**result.ci_high, run_std=float("nan")
        )
    return result


def compare(a: Mapping[tuple, Any], b: Mapping[tuple, Any], name: str, ctx: Context) -> stats.Comparison | None:
    """Paired A − B of measure ``name`` over the runs both have data for (by (seed, pair seed)); None without."""
    measure = MEASURES[name]
    da, db = {}, {}
    for key, tables in a.items():
        if key not in b:
            continue
        x, y = measure_data(tables, name), measure_data(b[key], name)
        if x is not None and y is not None:
            da[key], db[key] = x, y
    if not da:
        return None
    try:
        result = stats.compare(
            da,
            db,
            measure.statistic,
            higher_is_better=stats.HIGHER_IS_BETTER[name],
            design=design_of(da),
            n_resamples=ctx.n_resamples,
            seed=ctx.seed,
        )
    except ValueError:
        return None
    return None if result.n_items == 0 else result


def _bounds(result: stats.Interval | None) -> tuple[Any, Any]:
    """(low, high) for a CSV row: empty cells where there is no interval."""
    if result is None:
        return "", ""
    return ("" if math.isnan(result.ci_low) else result.ci_low, "" if math.isnan(result.ci_high) else result.ci_high)


def summary_intervals(
    rows: list[dict], runs: Mapping[str, Mapping[tuple, Run]], ctx: Context, measures: Sequence[str]
) -> None:
    """Fill ``<measure>_ci_low``/``_ci_high`` of the summary rows: a run's row gets its items' interval (one
    run), a method's ``mean`` row the interval over its runs; ``std`` rows and missing values stay empty."""
    for row in rows:
        if row["seed"] == "std":
            continue
        by_key = runs.get(row["method"], {})
        if row["seed"] == "mean":
            group = {k: r.end() for k, r in by_key.items()}
        else:
            key = (None if row["seed"] == "" else row["seed"], row.get("pair_seed") or 0)
            group = {key: by_key[key].end()} if key in by_key else {}
        for name in measures:
            if not math.isfinite(number(row.get(name))):  # no value, no interval
                row[f"{name}_ci_low"] = row[f"{name}_ci_high"] = ""
                continue
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = _bounds(interval(group, name, ctx))


def matched_intervals(
    rows: list[dict], runs: Mapping[str, Mapping[tuple, Run]], levels: Mapping[str, float], ctx: Context
) -> None:
    """Fill the ``_ci_`` cells of the matched.csv rows that reached the level (one run's items each)."""
    for row in rows:
        run = runs.get(row["method"], {}).get((row["seed"], row.get("pair_seed") or 0))
        tables = run.matched(row["measure"], levels[row["measure"]]) if run is not None and row["reached"] else None
        for column, name in MATCHED_MEASURE_OF.items():
            value = number(row.get(column))
            if tables is None or not math.isfinite(value):
                row[f"{column}_ci_low"] = row[f"{column}_ci_high"] = ""
                continue
            row[f"{column}_ci_low"], row[f"{column}_ci_high"] = _bounds(interval({run.key: tables}, name, ctx))


def method_intervals(
    runs: Mapping[str, Mapping[tuple, Run]], measure: str, level: float, ctx: Context
) -> dict[str, dict[str, tuple[Any, Any]]]:
    """{method: {matched.csv column: (low, high)}}: the interval over the runs of each method that reach the
    level (for the matched tables)."""
    out: dict[str, dict[str, tuple[Any, Any]]] = {}
    for label, by_key in runs.items():
        group = {k: t for k, r in by_key.items() if (t := r.matched(measure, level)) is not None}
        if group:
            out[label] = {column: _bounds(interval(group, name, ctx)) for column, name in MATCHED_MEASURE_OF.items()}
    return out


# --------------------------------------------------------------------------------------------- comparisons
def _declaration(label: str, ctx: Context):
    method = ctx.methods.get(label)
    if method is not None:
        return method

    try:
        return method_from_spec(label)
    except ValueError:
        return None


def _pick(candidates: list[str], ctx: Context, name: str, like=None) -> str | None:
    """The label among ``candidates`` to compare against: one whose declaration equals ``like``, else the
    plain method name, else the first."""
    if not candidates:
        return None
    if like is not None:
        for label in candidates:
            if _declaration(label, ctx) == like:
                return label
    return name if name in candidates else candidates[0]


def _values(method, fields: Sequence[str]) -> list:
    return [getattr(method, f, None) for f in fields]


BS_T_CONTROLS = {"ga_scaled": ("lam",), "ga_target_matched": ("lam", "top_k", "temperature"), "sga": ("lam",)}
"""BS-T's controls (docs/theory.md D2) and the fields each shares with the BS-T it is compared with: GA×(1−λ) (the
target's weight without the belief's share q_y), GA weighted by BS-T's own target weight 1 − λ + λ·q_y (all but
the push on the non-target top-k) and SGA (the soft target smoothed towards uniform instead of the model's top-k)."""


def comparisons(labels: Sequence[str], ctx: Context) -> list[tuple[str, str]]:
    """(A, B) pairs for A − B, in this order, each once: BS-T − each of its controls (``BS_T_CONTROLS``: GA×(1−λ)
    and SGA of the same λ, GA weighted by the target weight of the same λ, k and τ; every BS-T label, grid labels
    included), BS-S − its base loss alone, every other BS-S label − the plain ``bs_s``, BS-S − NPO,
    BS-T − NPO, every method − GA. A comparison
    whose methods are not both in the run is left out."""
    trained = [x for x in labels if x not in REFERENCE_METHODS]
    by_name: dict[str, list[str]] = {}
    for label in trained:
        by_name.setdefault(label.partition(":")[0], []).append(label)
    pairs: list[tuple[str, str]] = []
    for label in by_name.get("bs_t", []):
        method = _declaration(label, ctx)
        for control, fields in BS_T_CONTROLS.items():  # the control with BS-T's own values of its fields
            own = _values(method, fields)
            same = [g for g in by_name.get(control, []) if _values(_declaration(g, ctx), fields) == own]
            like = dataclasses.replace(_declaration(same[0], ctx), gamma=method.gamma) if same else None
            if (b := _pick(same, ctx, control, like)) is not None:
                pairs.append((label, b))
    for label in by_name.get("bs_s", []):
        base = getattr(_declaration(label, ctx), "base_method", None)
        if base is not None and (b := _pick(by_name.get(base.name, []), ctx, base.name, base)) is not None:
            pairs.append((label, b))
    # a BS-S variant against the plain BS-S of the run (belief subsampling, prefix sharing, a refresh period: the
    # same objective, or an ablation of it, at another cost)
    pairs += [(label, "bs_s") for label in by_name.get("bs_s", []) if label != "bs_s" and "bs_s" in by_name["bs_s"]]
    npo = _pick(by_name.get("npo", []), ctx, "npo")
    for name in ("bs_s", "bs_t"):
        pairs += [(label, npo) for label in by_name.get(name, []) if npo is not None]
    ga = _pick(by_name.get("ga", []), ctx, "ga")
    pairs += [(label, ga) for label in trained if ga is not None and label != ga]
    return list(dict.fromkeys(p for p in pairs if p[0] != p[1]))


def verdict_rows(
    runs: Mapping[str, Mapping[tuple, Run]], labels: Sequence[str], levels: Mapping[str, float], ctx: Context
) -> list[dict]:
    """Rows of ``verdict.csv``: every comparison on every measure at the end of training, then at each matched
    level (where the measure exists there: the any-of-N leak is not in the light evaluation, and the measure
    defining the level is equal by construction). A comparison at a level that one of the two methods never
    reaches in any shared run gets rows with the verdict ``n/a``."""
    present = [label for label in labels if label in runs]
    pairs = comparisons(present, ctx)
    rows = []
    for a, b in pairs:
        label = stats.comparison_label(a, b)
        end_a = {k: r.end() for k, r in runs[a].items()}
        end_b = {k: r.end() for k, r in runs[b].items()}
        for name in VERDICT_MEASURES:
            result = compare(end_a, end_b, name, ctx)
            if result is not None:
                rows.append(stats.verdict_row(label, name, stats.setting_label(), result))
    for measure in FORGETTING_MEASURES:
        level = levels.get(measure, float("nan"))
        if not (math.isfinite(level) and level > 0):
            continue
        setting = stats.setting_label(measure, level)
        for a, b in pairs:
            label = stats.comparison_label(a, b)
            at_a = {k: t for k, r in runs[a].items() if (t := r.matched(measure, level)) is not None}
            at_b = {k: t for k, r in runs[b].items() if (t := r.matched(measure, level)) is not None}
            for name in VERDICT_MEASURES:
                if name == DEFINES_LEVEL[measure] or name == "fact_leak_any_of_n":
                    continue
                if not any(measure_data(t, name) is not None for t in runs_tables(runs[a], measure, level)):
                    continue  # the measure does not exist for A (e.g. no belief bands, no facts)
                result = compare(at_a, at_b, name, ctx)
                if result is None:
                    result = stats.Comparison(float("nan"), float("nan"), float("nan"), 0, 0, "n/a")
                rows.append(stats.verdict_row(label, name, setting, result))
    return rows


def runs_tables(by_key: Mapping[tuple, Run], measure: str, level: float) -> list[dict]:
    """The matched tables of a method's runs, and its end tables where a run never reaches the level (to tell
    whether a measure exists for the method at all)."""
    out = []
    for run in by_key.values():
        tables = run.matched(measure, level) or run.end()
        if tables:
            out.append(tables)
    return out


# --------------------------------------------------------------------------------------------- curves
def curve_intervals(by_key: Mapping[tuple, Run], name: str, ctx: Context) -> list[tuple[float, stats.Interval]]:
    """Per evaluation step shared by every run of a method: the interval over runs and items of measure
    ``name`` at that step (``target_change``, ``<band>_band_change``, ``model_utility``, ``fact_leak``,
    ``log10_forget_quality``, ``mem``; a change is from step 0). Empty when a run lacks per-item values."""
    runs = list(by_key.values())
    if not runs or any(len(r.curve) < 2 for r in runs):
        return []
    steps = [p.get("step") for p in runs[0].curve]
    steps = [s for s in steps if all(any(p.get("step") == s for p in r.curve) for r in runs)]
    out = []
    for step in steps:
        group = {}
        for run in runs:
            point = next(p for p in run.curve if p.get("step") == step)
            start, now = _items(run.curve[0]), _items(point)
            if not (start and now):
                return []
            tables = dict(now)
            if "forget" in now and "forget" in start:
                forget = dict(now["forget"])
                if "retain_truth_ratio" in start["forget"]:
                    forget["retain_truth_ratio"] = start["forget"]["retain_truth_ratio"]
                tables["forget"] = forget
                tables["curve_forget"] = curve_forget_table(start["forget"], now["forget"])
            group[run.key] = tables
        result = interval(group, name, ctx)
        if result is not None:
            out.append((float(step), result))
    return out
