"""The fair tier (docs/theory.md §20): every method stopped at a declared depth, the declared primary contrasts
with Holm, the positive control, and the censoring table.

- **Stopping** (``--stop-at-fraction F``): per model pair, ``stop_rule`` declares the level of the light
  evaluation's ``target_logprob`` (the curve forget answers' mean token log-prob) a fraction F of the way from the
  original model's value (the step-0 point) to the retain model's (its per-item forget results), both measured
  before any method unlearns; the budget is the run's step count (``--max-steps``, or the epochs' steps when
  fewer). A job's ``Stopper`` checks the rule at every light evaluation and tells ``bs_ref.unlearn.unlearn`` to stop;
  the final evaluation then runs on the model of that step. result.json records ``stopping`` and
  ``stopping.csv`` lists one row per method run, censored runs (the level not reached within the budget) included.
- **Primary contrasts** (``PRIMARY``, at most four): per-item paired differences A − B at each run's stopping point,
  read from the run directory — the high band's after-fork log-prob (§16) per band question from the curve items
  of result.json (``instruments.per_question``, the reader of squeeze.csv), and leak@k at the largest k (§15) per
  annotated item from eval.json's ``leak_k`` counts — bootstrapped over runs and items
  (``endpoints.bootstrap_mean_difference``) and judged together by ``endpoints.primary_contrast_table`` (Holm at
  α = 0.05, simultaneous intervals, MDE, TOST against the declared δ). A contrast whose methods or items are missing
  is reported ``n/a`` and still counts in Holm's m. ``primary.csv`` holds the rows, ``verdict.csv`` gains them
  (label ``primary``) and a ``label`` column (every other row ``exploratory``), and table.md opens with the section.
- **Positive control**: does GA or NPO squeeze after the fork at the stopping point (the high band's after-fork
  change above 0 while the target's falls, 95 % intervals over runs and band questions)? If neither does, the
  section says first that the squeeze is absent and the method comparison is uninformative.
- **Along the trajectory** (exploratory; where the light evaluations scored the bands at more than step 0 and the
  stop: ``--light-eval bands`` or ``answers``): the same two changes at every checked step, pooled over the runs
  that reached that step (``trajectory.csv``; table.md shows GA and NPO). A rise before the stop that is gone at
  it is a transient squeeze, which the stopping-point endpoint cannot see; each step's interval is pointwise.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bs_ref.metrics.sampling import ks_for, pass_at_k
from bs_ref.protocol import endpoints, stats
from bs_ref.protocol.endpoints import Contrast, PrimaryRow, StopAtLevel
from bs_ref.protocol.instruments import per_question
from bs_ref.protocol.recovery_table import rows_csv
from bs_ref.protocol.store import RunDir, write_text
from bs_ref.timing import timed
from bs_ref.unlearn import NonFiniteLossError, StepPlan, UnlearnConfig

STOP_MEASURE = "target_logprob"
"""The light evaluation's measure the stopping rule reads (``Evaluator.curve_point``)."""
BAND = "high"
"""The band whose after-fork change the squeeze endpoints read (docs/theory.md §16)."""


@dataclass(frozen=True)
class Endpoint:
    """A declared primary contrast: ``method_a`` − ``method_b`` on ``measure`` (``after_fork``: the high band's
    after-fork log-prob change, nats; ``leak_at_k``: leak@k at the largest k) at the stopping point, judged against
    the equivalence margin ``margin``; lower is better for both (less squeeze, less leak)."""

    name: str
    method_a: str
    method_b: str
    measure: str
    margin: float
    higher_is_better: bool = False


PRIMARY = (
    Endpoint("bs_t − ga_target_matched: after-fork band change", "bs_t", "ga_target_matched", "after_fork", 0.5),
    Endpoint("bs_s − npo: after-fork band change", "bs_s", "npo", "after_fork", 0.5),
    Endpoint("bs_t − ga_target_matched: leak@k", "bs_t", "ga_target_matched", "leak_at_k", 0.10),
    Endpoint("bs_s − npo: leak@k", "bs_s", "npo", "leak_at_k", 0.10),
)
"""The primary contrasts of docs/theory.md §20, in its order, with their margins δ."""
POSITIVE_CONTROLS = ("ga", "npo")
SETTING = "stopping point"
STOPPING_COLUMNS = ("method", "seed", "pair_seed", "level", "reached", "steps", "value_at_stop", "max_steps")
TRAJECTORY_COLUMNS = (
    "method", "step", "n_runs", "target_change", "target_ci_low", "target_ci_high",
    "after_fork_change", "after_fork_ci_low", "after_fork_ci_high", "squeezes",
)  # fmt: skip
PRIMARY_COLUMNS = (
    "name",
    "label",
    "method_a",
    "method_b",
    "measure",
    "setting",
    "estimate",
    "ci_low",
    "ci_high",
    "ci_level",
    "p_raw",
    "p_holm",
    "reject",
    "se",
    "mde",
    "margin",
    "tost_low",
    "tost_high",
    "equivalent",
    "verdict",
    "note",
    "n_items",
    "n_seeds",
    "n_pairs",
)


# ------------------------------------------------------------------------------------------------ stopping
def problems(fraction: float | None, cfg: UnlearnConfig, has_retain_model: bool) -> list[str]:
    """Problems of ``--stop-at-fraction`` with the run's other settings (none when it is off)."""
    if fraction is None:
        return []
    out = []
    if not (isinstance(fraction, (int, float)) and math.isfinite(fraction) and 0 < fraction <= 1):
        out.append(
            f"--stop-at-fraction {fraction} must lie in (0, 1] (1: the retain model's target log-prob; 0.5: half "
            "way there)"
        )
    if not cfg.eval_every:
        out.append(
            "--stop-at-fraction needs --eval-every >= 1: the light evaluation every --eval-every steps checks the "
            "level (e.g. --eval-every 5)"
        )
    if not has_retain_model:
        out.append(
            "--stop-at-fraction needs the retain model's target log-prob: give --retain-model (or --retain-logs "
            "with per-item losses), or leave --stop-at-fraction out"
        )
    return out


def budget(cfg: UnlearnConfig, n_forget: int) -> int:
    """The step budget of every run: the optimiser steps ``bs_ref.unlearn`` takes without an early stop
    (``--epochs`` of them, at most ``--max-steps``)."""
    return StepPlan.of(cfg, math.ceil(n_forget / cfg.batch_size)).total_steps


def stop_rule(fraction: float | None, original: float, retain: float | None, max_steps: int) -> StopAtLevel | None:
    """The declared stopping rule of one model pair (None without ``--stop-at-fraction``): ``original`` is the
    original model's ``target_logprob`` (its step-0 point), ``retain`` the retain model's
    (``Evaluator.retain_target_logprob``)."""
    if fraction is None:
        return None
    if retain is None:
        raise ValueError(
            "--stop-at-fraction: the retain model's per-item forget results lack the answer losses (nll_answer), so "
            "its target log-prob is unknown; give --retain-model, or leave --stop-at-fraction out"
        )
    return StopAtLevel.from_fraction(original, retain, fraction, max_steps)


class Stopper:
    """One job's stopping rule (None: never stops early): ``check`` reads each light-evaluation point and says
    whether to stop; ``record`` is what result.json keeps (``stopping``; {} without a rule)."""

    def __init__(self, rule: StopAtLevel | None):
        self.rule, self.step, self.value = rule, 0, math.nan

    def check(self, point: Mapping[str, Any]) -> bool:
        if self.rule is None:
            return False
        self.step, self.value = int(point["step"]), float(point[STOP_MEASURE])
        if not math.isfinite(self.value):
            raise NonFiniteLossError(f"the {STOP_MEASURE} is {self.value} at step {self.step} (lower --lr)")
        return self.rule.should_stop(self.step, self.value)

    def record(self) -> dict[str, Any]:
        if self.rule is None:
            return {}
        reached = self.rule.reached(self.value) if math.isfinite(self.value) else False
        return {
            "stopping": self.rule.to_dict()
            | {"measure": STOP_MEASURE, "reached": reached, "steps": self.step, "value_at_stop": self.value}
        }


def stopping_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Rows of ``stopping.csv``: one per method run that recorded a stopping rule (censored runs included)."""
    rows = []
    for result in results:
        stop = result.get("stopping")
        if not stop:
            continue
        rows.append(
            {
                "method": result["method"],
                "seed": result["seed"],
                "pair_seed": result.get("pair_seed", 0),
                "level": stop["level"],
                "reached": stop["reached"],
                "steps": stop["steps"],
                "value_at_stop": stop["value_at_stop"],
                "max_steps": stop["max_steps"],
            }
        )
    return rows


# ------------------------------------------------------------------------------------------------ per-item values
def _after_fork(result: Mapping[str, Any]) -> np.ndarray | None:
    """Per band question: the high band's after-fork log-prob at the run's stopping point (its last curve point)."""
    curve = result.get("curve") or []
    if len(curve) < 2:
        return None
    return per_question((curve[-1].get("items") or {}).get("forget") or {}, BAND, "fork_")


def _change(result: Mapping[str, Any], at: int = -1) -> dict[str, np.ndarray | None]:
    """Per item, from step 0 (the curve's first point, the original model's) to the stopping point (its last; or
    curve point ``at``): the target's mean token log-prob and the high band's after-fork log-prob."""
    curve = result.get("curve") or []
    first = (curve[0].get("items") or {}).get("forget") or {} if len(curve) > 1 else {}
    last = (curve[at].get("items") or {}).get("forget") or {} if len(curve) > 1 else {}
    out: dict[str, np.ndarray | None] = {"target": None, "after_fork": None}
    if "nll_answer" in first and "nll_answer" in last:
        out["target"] = np.asarray(first["nll_answer"], dtype=float) - np.asarray(last["nll_answer"], dtype=float)
    fork0, fork = per_question(first, BAND, "fork_"), per_question(last, BAND, "fork_")
    if fork0 is not None and fork is not None:
        out["after_fork"] = fork - fork0
    return out


def _leak_at_k(per_split: Mapping[str, list] | None) -> tuple[dict[int, float], int | None]:
    """({forget position: leak@k at the largest k}, k) from eval.json's ``leak_k`` counts."""
    counts = {i: it["leak_k"] for i, it in enumerate((per_split or {}).get("forget", [])) if it.get("leak_k")}
    if not counts:
        return {}, None
    n = min(int(c["n"]) for c in counts.values())
    k = ks_for(n)[-1]
    return {i: pass_at_k(int(c["n"]), int(c["c"]), k) for i, c in counts.items()}, k


@dataclass
class RunValues:
    """What the fair section reads of one finished method run."""

    result: dict
    after_fork: np.ndarray | None
    leak: dict[int, float]
    k: int | None


def load_values(store: RunDir, labels: Sequence[str], seeds: Sequence[int], pairs: Sequence[int]) -> dict:
    """{(label, seed, pair): RunValues} of every finished method run (references excluded)."""
    out = {}
    for label in labels:
        for pair in pairs:
            for seed in seeds:
                if not store.is_finished(label, seed, pair):
                    continue
                result = store.load_result(label, seed, pair)
                leak, k = _leak_at_k(store.read_eval(label, seed, pair))
                out[(label, seed, pair)] = RunValues(result, _after_fork(result), leak, k)
    return out


def differences(values: Mapping[tuple, RunValues], endpoint: Endpoint) -> tuple[np.ndarray | None, int, int | None]:
    """(per-item A − B, (runs, items); model pairs; k for leak@k) over the (seed, pair) runs both methods finished."""
    rows, pairs, k = [], set(), None
    cells = sorted({(s, p) for (label, s, p) in values if label == endpoint.method_a}, key=str)
    for seed, pair in cells:
        a, b = values.get((endpoint.method_a, seed, pair)), values.get((endpoint.method_b, seed, pair))
        if a is None or b is None:
            continue
        if endpoint.measure == "after_fork":
            if a.after_fork is None or b.after_fork is None or a.after_fork.shape != b.after_fork.shape:
                continue
            rows.append(a.after_fork - b.after_fork)
        else:
            if not a.leak or a.k != b.k or set(a.leak) != set(b.leak):
                continue
            k = a.k
            rows.append(np.array([a.leak[i] - b.leak[i] for i in sorted(a.leak)]))
        pairs.add(pair)
    if not rows or len({r.shape for r in rows}) != 1:
        return None, len(pairs), k
    return np.vstack(rows), len(pairs), k


# ------------------------------------------------------------------------------------------------ primary table
def primary_rows(values: Mapping[tuple, RunValues]) -> tuple[list[PrimaryRow], dict[str, int | None]]:
    """The declared primary contrasts (``PRIMARY``) as ``endpoints.PrimaryRow`` (Holm over all four; a contrast
    without data is ``n/a`` with 0 items and still counts), and the k of each leak@k contrast."""
    contrasts, empty, ks = [], set(), {}
    for endpoint in PRIMARY:
        diffs, n_pairs, k = differences(values, endpoint)
        ks[endpoint.name] = k
        try:
            if diffs is None:
                raise ValueError("no run of both methods")
            estimate, replicates, n_items, n_runs = endpoints.bootstrap_mean_difference(diffs)
        except ValueError:  # no paired run, or fewer than 2 items without NaN: n/a, still counted in Holm's m
            estimate, replicates, n_items, n_runs = math.nan, np.full(endpoints.N_RESAMPLES, np.nan), 1, 1
            empty.add(endpoint.name)
        contrasts.append(
            Contrast(
                endpoint.name,
                endpoint.higher_is_better,
                replicates=replicates,
                estimate=estimate,
                margin=endpoint.margin,
                n_items=n_items,
                n_seeds=n_runs,
                n_pairs=max(n_pairs, 1),
            )
        )
    rows = endpoints.primary_contrast_table(contrasts)
    rows = [replace(r, n_items=0, n_seeds=0, n_pairs=0) if r.name in empty else r for r in rows]
    return rows, ks


def _measure_name(endpoint: Endpoint, k: int | None) -> str:
    return f"after_fork_change:{BAND}" if endpoint.measure == "after_fork" else f"leak_at_k@{k if k else 'n'}"


def primary_csv_rows(rows: Sequence[PrimaryRow], ks: Mapping[str, int | None]) -> list[dict[str, Any]]:
    """Rows of ``primary.csv`` (``PRIMARY_COLUMNS``)."""
    declared = {e.name: e for e in PRIMARY}
    out = []
    for row in rows:
        endpoint, eq = declared[row.name], row.equivalence
        out.append(
            {
                "name": row.name,
                "label": row.label,
                "method_a": endpoint.method_a,
                "method_b": endpoint.method_b,
                "measure": _measure_name(endpoint, ks.get(row.name)),
                "setting": SETTING,
                "estimate": row.estimate,
                "ci_low": row.ci_low,
                "ci_high": row.ci_high,
                "ci_level": row.ci_level,
                "p_raw": row.p_raw,
                "p_holm": row.p_holm,
                "reject": "" if row.reject is None else row.reject,
                "se": row.se,
                "mde": row.mde,
                "margin": row.margin,
                "tost_low": math.nan if eq is None else eq.ci_low,
                "tost_high": math.nan if eq is None else eq.ci_high,
                "equivalent": "" if eq is None else eq.equivalent,
                "verdict": row.verdict,
                "note": row.note,
                "n_items": row.n_items,
                "n_seeds": row.n_seeds,
                "n_pairs": row.n_pairs,
            }
        )
    return out


def labelled_verdicts(verdicts: Sequence[Mapping[str, Any]], primary: Sequence[Mapping[str, Any]]) -> str:
    """verdict.csv with a ``label`` column: its rows unchanged and ``exploratory``, then the primary contrasts
    (``primary.csv`` rows; their interval is the simultaneous one, their verdict Holm's) labelled ``primary``."""
    extra = [
        {
            "comparison": f"{p['method_a']} − {p['method_b']}",
            "measure": p["measure"],
            "setting": p["setting"],
            "difference": p["estimate"],
            "ci_low": p["ci_low"],
            "ci_high": p["ci_high"],
            "n_items": p["n_items"],
            "n_seeds": p["n_seeds"],
            "verdict": p["verdict"],
        }
        for p in primary
    ]
    table = list(csv.reader(io.StringIO(stats.verdict_csv([*verdicts, *extra]))))
    labels = ["label"] + ["exploratory"] * len(verdicts) + ["primary"] * len(extra)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerows([*row, label] for row, label in zip(table, labels))
    return buffer.getvalue()


# ------------------------------------------------------------------------------------------------ positive control
def positive_control(values: Mapping[tuple, RunValues]) -> list[dict[str, Any]]:
    """Per control method (GA, NPO) that ran: the target's and the high band's after-fork change from step 0 to
    the stopping point, each a mean over runs and items with its 95 % interval (items resampled within runs, runs
    across seeds), and whether it squeezes (after-fork interval above 0, target interval below 0)."""
    out = []
    for method in POSITIVE_CONTROLS:
        runs = [(key, v) for key, v in values.items() if key[0] == method]
        if not runs:
            continue
        row: dict[str, Any] = {"method": method, "n_runs": len(runs)}
        for name in ("target", "after_fork"):
            changes = [_change(v.result)[name] for _, v in runs]
            row[name] = _mean_interval(changes)
        target, fork = row["target"], row["after_fork"]
        row["squeezes"] = None if fork is None or target is None else bool(fork[1] > 0 and target[2] < 0)
        out.append(row)
    return out


def trajectory_rows(values: Mapping[tuple, RunValues]) -> list[dict[str, Any]]:
    """Per method and checked step (after 0) at which a run's curve point has the bands: the target's and the
    high band's after-fork change from step 0, pooled as in ``positive_control`` over the runs with that point
    (``n_runs``), and whether it squeezes there. Empty when only step 0 and the stops have bands."""
    points: dict[tuple[str, int], list[dict]] = {}
    for key, v in values.items():
        curve = v.result.get("curve") or []
        for at, point in enumerate(curve[1:-1], start=1):  # the stops are the positive control's
            if per_question((point.get("items") or {}).get("forget") or {}, BAND, "fork_") is not None:
                points.setdefault((key[0], int(point["step"])), []).append(_change(v.result, at))
    if not points:
        return []
    for key, v in values.items():  # the stops, once some step before them has bands
        curve = v.result.get("curve") or []
        if len(curve) > 1:
            points.setdefault((key[0], int(curve[-1]["step"])), []).append(_change(v.result))
    rows = []
    for (method, step), changes in sorted(points.items()):
        target = _mean_interval([c["target"] for c in changes])
        fork = _mean_interval([c["after_fork"] for c in changes])
        row: dict[str, Any] = {"method": method, "step": step, "n_runs": len(changes)}
        for name, interval in (("target", target), ("after_fork", fork)):
            for suffix, value in zip(("change", "ci_low", "ci_high"), interval or (None, None, None)):
                row[f"{name}_{suffix}"] = value
        row["squeezes"] = "" if fork is None or target is None else bool(fork[1] > 0 and target[2] < 0)
        rows.append(row)
    return rows


def trajectory_lines(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    """The table.md subsection of ``trajectory_rows`` for the positive-control methods (every method:
    trajectory.csv)."""
    shown = [r for r in rows if r["method"] in POSITIVE_CONTROLS]
    if not shown:
        return []
    lines = [
        "",
        "Along the trajectory (exploratory; pointwise 95 % intervals, runs that reached the step): the change from "
        "step 0 at every checked step, the stopping points included; a rise that is gone at the stop is a transient "
        "squeeze.",
        "",
        "| method | step | runs | target log-prob | high band after the fork | squeezes |",
        "|---|---:|---:|---|---|---|",
    ]
    for r in shown:
        cells = [
            stats.format_interval(r[f"{k}_change"], r[f"{k}_ci_low"], r[f"{k}_ci_high"])
            if r[f"{k}_change"] is not None
            else "–"
            for k in ("target", "after_fork")
        ]
        flag = {True: "**yes**", False: "no"}.get(r["squeezes"], "–")
        lines.append(f"| {r['method']} | {r['step']} | {r['n_runs']} | {cells[0]} | {cells[1]} | {flag} |")
    return lines


def _mean_interval(changes: list[np.ndarray | None]) -> tuple[float, float, float] | None:
    """(mean, 95 % low, high) of per-item changes over runs; None when fewer than 2 items are usable."""
    if any(c is None for c in changes) or len({c.shape for c in changes}) != 1:
        return None
    try:
        estimate, replicates, _, _ = endpoints.bootstrap_mean_difference(np.vstack(changes))
    except ValueError:
        return None
    low, high = endpoints.percentile_interval(replicates)
    return estimate, low, high


# ------------------------------------------------------------------------------------------------ table.md
def section_lines(
    rows: Sequence[PrimaryRow], control: Sequence[Mapping[str, Any]], stopping: Sequence[Mapping[str, Any]]
) -> list[str]:
    """The ``## Primary contrasts`` section of table.md: the positive control first, then the declared contrasts
    (docs/theory.md §20), then the stopping point of every run with censoring."""
    lines = ["## Primary contrasts", ""]
    squeezing = [c["method"] for c in control if c["squeezes"]]
    if not squeezing:
        shown = " nor ".join(m.upper() for m in POSITIVE_CONTROLS)
        lines += [
            f"**The squeeze is absent on this tier** (neither {shown} shows an after-fork rise whose interval "
            "excludes 0 while its target falls, at the stopping point), so the method comparison below is "
            "uninformative.",
            "",
        ]
    lines += [
        "Declared in docs/theory.md §20 before the run: A − B at each run's stopping point, α = 0.05 Holm over "
        "the four, simultaneous intervals, MDE at power 0.8, TOST against δ. Every other verdict (verdict.csv "
        "`label` = exploratory) is exploratory.",
        "",
        endpoints.primary_table_markdown(rows),
        "Positive control: the change from step 0 to the stopping point (mean over runs and items [95 % "
        "interval]); **squeezes**: the high band's after-fork interval above 0 while the target's is below 0.",
        "",
        "| method | runs | target log-prob | high band after the fork | squeezes |",
        "|---|---:|---|---|---|",
    ]
    for c in control:
        cells = [stats.format_interval(*c[k]) if c[k] else "– (fewer than 2 items)" for k in ("target", "after_fork")]
        flag = {True: "**yes**", False: "no"}.get(c["squeezes"], "–")
        lines.append(f"| {c['method']} | {c['n_runs']} | {cells[0]} | {cells[1]} | {flag} |")
    if not control:
        lines.append("| – | 0 | – | – | – (GA and NPO did not run) |")
    return [*lines, "", *censoring_lines(stopping), ""]


def summary_lines(fair_report: Mapping[str, Any]) -> list[str]:
    """The terminal's block for a fair run (``write_fair``'s return): the positive control first, in one line, then
    each declared contrast with its simultaneous interval, MDE, margin and Holm's verdict, and the censored runs."""
    control = fair_report.get("control", [])
    squeezing = [c["method"] for c in control if c["squeezes"]]
    lines = ["Primary contrasts (declared: docs/theory.md §20; Holm over 4, simultaneous intervals; primary.csv):"]
    if squeezing:
        lines.append(f"  positive control: {' and '.join(m.upper() for m in squeezing)} squeeze after the fork")
    else:
        lines.append("  the squeeze is absent on this tier (positive control): the method comparison is uninformative")
    for p in fair_report.get("primary", []):
        interval = stats.format_interval(p["estimate"], p["ci_low"], p["ci_high"])
        mde = stats.format_number(p["mde"])
        lines.append(
            f"    {p['name']}: {interval} {p['verdict']} (MDE {mde}, δ {p['margin']:g}; "
            f"n = {p['n_seeds']} runs, {p['n_items']} items)"
        )
    censored = sum(1 for r in fair_report.get("stopping", []) if not r["reached"])
    if censored:
        lines.append(f"  {censored} run(s) censored at the budget (kept in every comparison; stopping.csv)")
    return lines


def censoring_lines(stopping: Sequence[Mapping[str, Any]]) -> list[str]:
    """Each method's runs at the stopping rule: reached, censored at the budget (kept in every comparison), the
    median steps to the level (``≥``: a lower bound) and the mean target log-prob at the stop (stopping.csv)."""
    if not stopping:
        return []
    runs = [
        {
            "method": r["method"],
            "seed": (r["seed"], r["pair_seed"]),
            "reached": bool(r["reached"]),
            "steps": int(r["steps"]),
            "measures": {"value": float(r["value_at_stop"])},
        }
        for r in stopping
    ]
    labels = {r["method"] for r in runs}
    pairs = [(e.method_a, e.method_b) for e in PRIMARY if {e.method_a, e.method_b} <= labels]
    table = endpoints.censoring_table(runs, list(dict.fromkeys(pairs)))
    first = stopping[0]
    lines = [
        f"Stopping: target log-prob level {first['level']:.4g} (pair {first['pair_seed']}), budget "
        f"{first['max_steps']} steps; a censored run stopped at the budget and stays in every comparison.",
        "",
        "| method | runs | reached | censored | median steps to the level | target log-prob at the stop |",
        "|---|---:|---:|---:|---|---|",
    ]
    lines += [
        f"| {m.method} | {m.n_runs} | {m.n_reached} | {m.n_censored} | {m.median_cell} | "
        f"{stats.format_number(m.measures.get('value'))} |"
        for m in table.methods
    ]
    for c in table.comparisons:
        lines.append(
            f"\nSteps to the level, {c.method_a} vs {c.method_b} (paired seeds): {c.a_first} first / {c.b_first} "
            f"first / {c.ties} ties / {c.both_censored} both censored; sign test p = {stats.format_number(c.p_value)}"
        )
    return lines


# ------------------------------------------------------------------------------------------------ the run's files
@timed("report")
def write_fair(
    store: RunDir,
    labels: Sequence[str],
    seeds: Sequence[int],
    pairs: Sequence[int],
    verdicts: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """stopping.csv, primary.csv and verdict.csv with labels (``labelled_verdicts``); returns their rows and the
    table.md section (``lines``)."""
    results = store.results(labels, seeds, pairs)
    stopping = stopping_rows(results)
    write_text(store.path("stopping.csv"), rows_csv(stopping, STOPPING_COLUMNS))
    values = load_values(store, labels, seeds, pairs)
    rows, ks = primary_rows(values)
    primary = primary_csv_rows(rows, ks)
    write_text(store.path("primary.csv"), rows_csv(primary, PRIMARY_COLUMNS))
    write_text(store.path("verdict.csv"), labelled_verdicts(verdicts, primary))
    control = positive_control(values)
    trajectory = trajectory_rows(values)
    if trajectory:
        write_text(store.path("trajectory.csv"), rows_csv(trajectory, TRAJECTORY_COLUMNS))
    lines = section_lines(rows, control, stopping)
    lines[-1:-1] = trajectory_lines(trajectory)  # before the section's closing blank line
    return {"stopping": stopping, "primary": primary, "control": control, "trajectory": trajectory, "lines": lines}
