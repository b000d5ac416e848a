"""bs_ref.protocol.store, tables and report: the run directory, summary tables, table.md, plots.

- atomic writes, the identity check, the one-line message of an interrupted run, the library versions;
- the model-pair level of the layout (none for pair 0, as before pair seeds), and identities of earlier versions
  (``bf16``) read as today's (``precision``) so their run directories resume;
- summary rows with mean ± std, tables with "n/a" for a missing number;
- the leak-while-forgotten lines;
- the report of results whose curves lack belief bands, and without matplotlib (plots skipped, with the
  install line).
"""

from __future__ import annotations

import csv
import json
import sys

import numpy as np
import pytest

from bs_ref.protocol import plots, report, tables
from bs_ref.protocol.matched import given_levels
from bs_ref.protocol.store import RunDir, cell_name, upgrade_identity, versions, write_json

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def test_atomic_writes_and_run_dir_identity(tmp_path):
    path = write_json(tmp_path / "a" / "x.json", {"v": float("nan"), "w": np.float32(1.5)})
    assert json.loads(path.read_text()) == {"v": None, "w": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
    store = RunDir(tmp_path / "run", {"lr": 1.0})
    write_json(store.path("config.json"), {"identity": store.identity})
    store.save_result("bs_t:lam=0.6", 0, {"metrics": {}}, {"splits": {}})
    assert store.method_dir("bs_t:lam=0.6", 0) == tmp_path / "run/methods/bs_t__lam-0.6/seed0"
    assert store.is_finished("bs_t:lam=0.6", 0) and (store.method_dir("bs_t:lam=0.6", 0) / "eval.json").is_file()
    assert store.load_result("bs_t:lam=0.6", 0)["method"] == "bs_t:lam=0.6"
    RunDir(tmp_path / "run", {"lr": 1.0})  # same settings: resume
    with pytest.raises(ValueError, match="differing: lr.*--overwrite"):
        RunDir(tmp_path / "run", {"lr": 2.0})
    RunDir(tmp_path / "run", {"lr": 2.0}, overwrite=True)
    assert not store.is_finished("bs_t:lam=0.6", 0)


def test_pair_seeds_add_a_level_only_for_pairs_other_than_0_and_old_identities_resume(tmp_path):
    store = RunDir(tmp_path / "run", {"lr": 1.0, "precision": "fp32"})
    assert store.method_dir("ga", 1) == tmp_path / "run/methods/ga/seed1"  # pair 0: the layout of earlier versions
    assert store.method_dir("ga", 1, 2) == tmp_path / "run/methods/ga/pair2/seed1"
    assert store.method_dir("original", None, 2) == tmp_path / "run/methods/original/pair2/shared"
    assert store.start_path() == store.path("start.json") and store.start_path(3) == store.path("start_pair3.json")
    store.save_result("ga", 0, {"metrics": {}}, pair=1)
    assert store.is_finished("ga", 0, 1) and not store.is_finished("ga", 0)
    assert store.load_result("ga", 0, 1)["pair_seed"] == 1
    assert store.cells(["original", "ga"], [0], [0, 1]) == [
        ("original", None, 0),
        ("ga", 0, 0),
        ("original", None, 1),
        ("ga", 0, 1),
    ]
    assert "ga seed 0 pair 1" in store.interrupted(["ga"], [0], "cmd", [0, 1])
    assert cell_name("ga", 0) == "ga seed 0" and cell_name("original", None, 1) == "original pair 1"
    # a run directory written before --precision existed: bf16 false is fp32 and resumes; bf16 true is refused
    write_json(store.path("config.json"), {"identity": {"lr": 1.0, "bf16": False}})
    RunDir(tmp_path / "run", {"lr": 1.0, "precision": "fp32"})
    with pytest.raises(ValueError, match="differing: precision"):
        RunDir(tmp_path / "run", {"lr": 1.0, "precision": "bf16"})
    write_json(store.path("config.json"), {"identity": {"lr": 1.0, "bf16": True}})
    for precision in ("fp32", "bf16"):
        with pytest.raises(ValueError, match="differing: precision"):
            RunDir(tmp_path / "run", {"lr": 1.0, "precision": precision})
    assert upgrade_identity({"bf16": False, "lr": 1}) == {"lr": 1, "precision": "fp32"}


def test_settings_added_later_take_the_value_earlier_runs_had():
    """A run directory written before --reduction, RMU's settings and leak@k existed: the row reduction and
    any RMU setting match (no earlier run has an rmu row); it sampled no leak@k, so it resumes with
    --leak-k-samples 0 and is refused, naming that setting, with the default."""
    old = {"lr": 1.0, "precision": "fp32"}
    rmu = {"retain_scale": 1000.0, "steer_layer": None, "steering_coeff": None, "train_layers": 3}
    current = old | rmu | {"reduction": "row", "leak_k_samples": 0, "leak_k_items": 8}
    assert upgrade_identity(old, current) == current
    assert upgrade_identity(old, current | {"reduction": "token"})["reduction"] == "row"
    assert upgrade_identity(old, current | {"leak_k_samples": 32})["leak_k_samples"] == 0
    assert upgrade_identity(old) == old  # nothing to compare with: nothing added
    # before --light-eval and --utility-limit: answers at every light evaluation, every utility item
    later = old | {"light_eval": "answers", "utility_limit": None}
    assert upgrade_identity(old, later) == later
    assert upgrade_identity(old, later | {"utility_limit": 20})["utility_limit"] is None  # refused: 20 != None
    assert upgrade_identity(old, later | {"light_eval": "logprob"})["light_eval"] == "answers"


def test_interrupted_message_says_what_is_kept_and_how_to_resume(tmp_path):
    store = RunDir(tmp_path / "run", {})
    store.save_result("original", None, {"metrics": {}})
    store.save_result("ga", 0, {"metrics": {}})
    line = store.interrupted(["original", "retrain", "ga", "npo"], [0, 1], "python experiments/tofu.py --seeds 0 1")
    assert "\n" not in line
    assert line == (
        f"interrupted: kept 2 finished result(s) in {store.root} (original, ga seed 0); the same "
        "command resumes where it stopped: python experiments/tofu.py --seeds 0 1"
    )
    assert "no result had finished" in RunDir(tmp_path / "empty", {}).interrupted(["ga"], [0], "cmd")


def test_versions_record_every_library_that_touches_numbers(monkeypatch):
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "avx2")
    recorded = versions()
    for key in ("torch", "transformers", "tokenizers", "numpy", "scipy", "accelerate", "rouge_score", "bs_ref"):
        assert recorded[key], key
    assert recorded["ATEN_CPU_CAPABILITY"] == "avx2" and recorded["cpu_capability"]


def test_summary_rows_mean_std_and_table():
    results = [
        {"method": "ga", "seed": s, "metrics": {"forget_quality": fq, "model_utility": 0.5, "fact_leak": None}}
        for s, fq in ((0, 0.1), (1, 0.3), (2, 0.2))
    ] + [{"method": "original", "seed": None, "metrics": {"forget_quality": 1e-5, "model_utility": 0.6}}]
    rows = tables.summary_rows(results)
    mean = next(r for r in rows if r["method"] == "ga" and r["seed"] == "mean")
    std = next(r for r in rows if r["method"] == "ga" and r["seed"] == "std")
    assert mean["forget_quality"] == pytest.approx(0.2) and std["forget_quality"] == pytest.approx(0.1)
    assert mean["fact_leak"] == ""  # no values: empty, not zero
    table = tables.format_table(rows)
    assert "| ga | 3 | 0.200 [–, –] |" in table and "fact leak" not in table  # no interval cells: [–, –]
    assert "1.00e-05" in table
    mean.update(forget_quality_ci_low=0.15, forget_quality_ci_high=0.26)
    assert "| ga | 3 | 0.200 [0.150, 0.260] |" in tables.format_table(rows)
    assert [r["n_runs"] for r in rows if r["method"] == "ga"] == [1, 1, 1, 3, 3]
    assert list(tables.SUMMARY_CSV_COLUMNS[: len(tables.SUMMARY_COLUMNS)]) == list(tables.SUMMARY_COLUMNS)
    rows[0]["model_utility"] = ""
    assert "| original | 1.00e-05 | n/a |" not in tables.format_table(rows)  # the MU column still has values
    assert tables.mean_std((float("nan"), float("nan"), 0)) == "n/a"


def test_leak_while_forgotten_flags_only_methods_the_standard_metrics_call_forgotten():
    def result(method, leak, rouge, tr, seed=0):
        metrics = {"fact_leak": leak, "forget_rougeL": rouge, "forget_truth_ratio": tr, "forget_quality": 0.1}
        return {"method": method, "seed": seed, "metrics": metrics}

    results = [
        result("original", 1.0, 0.95, 0.30, seed=None),
        result("retrain", 0.0, 0.40, 0.60, seed=None),
        result("ga", 0.5, 0.38, 0.62),  # both metrics at the retain level, the fact still leaks
        result("npo", 0.5, 0.90, 0.60),  # ROUGE-L says remembered, truth ratio says forgotten
        result("wga", 0.0, 0.30, 0.70),  # forgotten and no leak: not flagged
        result("simnpo", 0.9, 0.90, 0.30),  # leaks, and the standard metrics see it: not flagged
    ]
    flagged = report.leak_while_forgotten(tables.summary_rows(results))
    assert flagged == [
        "ga: fact leak 0.50 (retain model 0.00) while ROUGE-L and truth ratio are at the retain model's level",
        "npo: fact leak 0.50 (retain model 0.00) while truth ratio is at the retain model's level",
    ]
    assert report.leak_while_forgotten(tables.summary_rows(results[2:])) == []  # no retain model: nothing to compare


def _results_without_bands() -> list[dict]:
    """Two methods whose curves lack the belief-band keys (the original model gave no band candidates)."""
    out = [{"method": "original", "seed": None, "metrics": {"mem": 0.1, "util": 0.9, "agg": 0.2}, "curve": []}]
    for method, drops in (("ga", (0.0, 1.0, 2.0)), ("bs_t", (0.0, 0.5, 1.5))):
        curve = [
            {
                "step": 3 * i,
                "target_logprob": -1.0 - d,
                "model_utility": 0.9 - 0.1 * i,
                "mem": 0.1 * i,
                "fact_leak": 1.0 - 0.4 * i,
                "log10_forget_quality": -2.0,
            }
            for i, d in enumerate(drops)
        ]
        out.append(
            {
                "method": method,
                "seed": 0,
                "metrics": {"mem": 0.3, "util": 0.8, "agg": 0.4, "fact_leak": 0.2},
                "curve": curve,
            }
        )
    return out


def _write(tmp_path, results, **extra):
    store = RunDir(tmp_path / "run", {})
    info = report.RunInfo("python experiments/tofu.py", "Data: test.", True, given_levels(None, None), **extra)
    return store, report.write_report(store, results, [0], info)


def test_report_of_curves_without_belief_bands(tmp_path):
    store, written = _write(tmp_path, _results_without_bands(), diverged=["npo seed 0: unlearning diverged: ..."])
    with open(store.path("matched.csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert rows and all(r["high_band_change"] == r["mid_band_change"] == r["low_band_change"] == "" for r in rows)
    table = store.path("table.md").read_text()
    assert "Belief bands: n/a" in table and "| n/a | n/a | n/a |" in table
    assert "## Diverged" in table and "- npo seed 0: unlearning diverged" in table
    if plots.pyplot() is not None:
        assert store.path("plots", "squeezing_trace.png").read_bytes()[:8] == PNG_MAGIC
        assert "Plots: plots/mem_util_agg.png, plots/squeezing_trace.png, plots/tradeoff.png" in table
    assert written["table"] == table


def test_report_without_matplotlib_says_plots_were_skipped_and_how_to_get_them(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    store, written = _write(tmp_path, _results_without_bands())
    table = store.path("table.md").read_text()
    assert "Plots: skipped: matplotlib is not installed (pip install -e '.[plots]' brings the plots)." in table
    assert not store.path("plots").exists() and written["plots"] == dict.fromkeys(written["plots"])


def test_terminal_summary_is_one_screen_and_says_where_the_tables_are(tmp_path):
    """report.terminal_summary: what ran, one line per primary contrast and setting with its interval, the time by
    part, table.md's path; a run with many contrasts is cut to the limit, never longer."""
    verdict = {
        "difference": 0.1,
        "ci_low": -0.05,
        "ci_high": 0.2,
        "n_items": 40,
        "n_seeds": 3,
        "verdict": "no difference",
    }
    verdicts = [
        verdict | {"comparison": c, "measure": m, "setting": s}
        for c in report.PRIMARY_COMPARISONS
        for m in ("fact_leak", "high_band_drop", "model_utility")
        for s in ("end", "matched:target_drop@0.7", "matched:fact_unleaked@0.6")
    ]
    rows = [
        {"method": m, "seed": s, "pair_seed": 0} for m in ("ga", "npo", "ga_scaled", "bs_t", "bs_s") for s in (0, 1, 2)
    ]
    (tmp_path / "verdict.csv").write_text("x\n")
    out = {
        "out": str(tmp_path),
        "rows": rows,
        "verdicts": verdicts,
        "wall_s": 12.0,
        "parts_s": {"models and references": 2.0, "unlearning, evaluation and attacks": 9.0},
    }
    summary = report.terminal_summary(out)
    lines = summary.splitlines()
    assert len(lines) <= report.SUMMARY_MAX_LINES
    assert "unlearning seeds [0, 1, 2]" in summary and "0.100 [-0.050, 0.200]" in summary
    assert "at matched forgetting" in summary and "fact_unleaked" not in summary  # the target-drop level only
    assert "models and references 2 s" in summary and str(tmp_path / "table.md") in summary
    assert len(report.terminal_summary(out, max_lines=8).splitlines()) == 8
    clock = report.PartClock()
    clock.part("a")
    clock.part("b")
    clock.part("a")
    assert list(clock.stop()) == ["a", "b"]
