"""The fair tier (docs/theory.md §20): stopping at a declared depth, the declared primary contrasts, the positive
control, censoring kept, and the flags that make it.

- the smoke preset with ``--stop-at-fraction 0.5 --eval-every 1`` (a budget of 16 steps): each run stops at the
  first light evaluation at or past the level and is fully evaluated there; SimNPO, which does not get there, is
  censored at the budget and stays in stopping.csv, the censoring table and the primary contrasts; primary.csv has
  the four declared rows with Holm-adjusted p ≥ raw p; verdict.csv gains a ``label`` column;
- the pieces on hand-made numbers: ``Stopper``, the per-item differences, the positive control, the labelled
  verdict.csv, ``--author-offset``;
- bad flags: one line naming the flag and the fix, before anything is written.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from bs_ref.protocol import data, fair
from bs_ref.protocol.endpoints import StopAtLevel
from bs_ref.protocol.stats import VERDICT_COLUMNS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "tofu.py"
METHODS = ["original", "retrain", "ga", "npo", "simnpo", "ga_target_matched", "bs_t", "bs_s"]


def _load():
    spec = importlib.util.spec_from_file_location("tofu_fair_script", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


tofu = _load()


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    if os.environ.get("BS_REF_TEST_MODEL_CACHE"):
        return Path(os.environ["BS_REF_TEST_MODEL_CACHE"])
    return tmp_path_factory.mktemp("fair_cache")


@pytest.fixture(scope="module")
def stopped(tmp_path_factory, cache) -> tuple[Path, dict]:
    """(run directory, report) of a smoke run stopped at a declared depth, light evaluations as the tier's."""
    out = tmp_path_factory.mktemp("fair") / "run"
    argv = ["--preset", "smoke", "--stop-at-fraction", "0.5", "--eval-every", "1", "--epochs", "8"]
    argv += ["--light-eval", "logprob", "--methods", *METHODS, "--attacks", "none"]
    # the smoke model is sure of its answers: at T = 2 its samples differ from the target on some questions on every
    # CPU kernel path, so the bands have candidates (at the preset's 4 samples at T = 1 they had none on one path)
    argv += ["--band-samples", "9", "--band-temperature", "2.0"]
    report = tofu.main([*argv, "--out", str(out), "--cache-dir", str(cache), "--no-progress"])
    return out, report


@pytest.fixture(scope="module")
def stopped_run(stopped) -> Path:
    return stopped[0]


# ------------------------------------------------------------------------------------------------ end to end
def test_each_run_stops_at_the_first_light_evaluation_past_the_level_and_is_evaluated_there(stopped_run):
    rows = _csv(stopped_run / "stopping.csv")
    assert [r["method"] for r in rows] == [m for m in METHODS if m not in ("original", "retrain")]
    config = json.loads((stopped_run / "config.json").read_text())
    rule = config["stopping"]["pair0"]
    assert rule["fraction"] == 0.5 and rule["max_steps"] == 16 and rule["measure"] == "target_logprob"
    assert math.isclose(rule["level"], rule["original"] + 0.5 * (rule["retain"] - rule["original"]))
    for row in rows:
        result = json.loads((stopped_run / "methods" / row["method"] / "seed0" / "result.json").read_text())
        curve = result["curve"]
        values = [p["target_logprob"] for p in curve[1:]]
        steps = [p["step"] for p in curve[1:]]
        assert steps == list(range(1, len(steps) + 1))  # --eval-every 1: a light evaluation after every step
        reached_at = [s for s, v in zip(steps, values) if v <= rule["level"]]
        stop = result["stopping"]
        if row["reached"] == "True":
            assert stop["reached"] and stop["steps"] == reached_at[0] == steps[-1]
        else:  # censored: the level never reached, the budget spent
            assert not stop["reached"] and not reached_at and stop["steps"] == 16 == steps[-1]
        assert int(row["steps"]) == stop["steps"] == result["steps"]  # the full evaluation ran at the stop
        assert math.isclose(float(row["value_at_stop"]), values[-1], rel_tol=1e-5)
        log = (stopped_run / "methods" / row["method"] / "seed0" / "train_log.jsonl").read_text().splitlines()
        end = json.loads(log[-1])
        assert end["event"] == "end" and end["step"] == stop["steps"]
        assert end.get("stopped_early", False) == (stop["steps"] < 16)
        assert (stopped_run / "methods" / row["method"] / "seed0" / "eval.json").is_file()
    censored = [r for r in rows if r["reached"] == "False"]
    assert "simnpo" in {r["method"] for r in censored}, rows  # the case this test needs: a censored run
    assert any(r["reached"] == "True" and int(r["steps"]) < 16 for r in rows)


def test_the_primary_table_the_labels_and_the_censored_method_kept(stopped_run):
    primary = _csv(stopped_run / "primary.csv")
    assert 1 <= len(primary) <= 4 and [r["name"] for r in primary] == [e.name for e in fair.PRIMARY]
    for row in primary:
        assert row["label"] == "primary" and row["setting"] == "stopping point"
        if row["p_raw"]:
            assert float(row["p_holm"]) >= float(row["p_raw"])
            assert float(row["ci_level"]) == pytest.approx(1 - 0.05 / len(primary))
    verdicts = _csv(stopped_run / "verdict.csv")
    header = (stopped_run / "verdict.csv").read_text().splitlines()[0]
    assert header == ",".join([*VERDICT_COLUMNS, "label"])
    assert {r["label"] for r in verdicts} == {"primary", "exploratory"}
    assert sum(r["label"] == "primary" for r in verdicts) == len(primary)
    table = (stopped_run / "table.md").read_text()
    assert table.splitlines()[2] == "## Primary contrasts"  # at the top, under the title
    assert "| simnpo | 1 | 0 | 1 | ≥ 16 |" in table  # censored, counted, never dropped
    assert "Positive control" in table and "squeeze" in table


def test_the_bands_are_scored_at_step_0_and_at_the_stopping_point_only(stopped_run):
    for label in ("ga", "bs_t"):
        curve = json.loads((stopped_run / "methods" / label / "seed0" / "result.json").read_text())["curve"]
        assert len(curve) > 2
        assert curve[0].get("band_high_after_fork") is not None, "the original model gave no band candidates"
        with_bands = [p["step"] for p in curve if "band_high_after_fork" in p]
        assert with_bands == [0, curve[-1]["step"]]  # --light-eval logprob: where the endpoints read them
        assert "band_high_fork_sum" in curve[-1]["items"]["forget"] and curve[1]["model_utility"] is None


def test_the_terminal_summary_of_a_fair_run_gives_the_declared_contrasts(stopped):
    out, report = stopped
    text = tofu.terminal_summary(report)
    primary = _csv(out / "primary.csv")
    assert "Primary contrasts (declared: docs/theory.md §20" in text
    assert "positive control" in text or "the squeeze is absent on this tier" in text
    for row in primary:
        line = next(x for x in text.splitlines() if x.strip().startswith(row["name"] + ":"))
        assert f"δ {float(row['margin']):g}" in line and row["verdict"] in line
    assert "at the end of training" not in text  # the default comparisons give way to the declared ones
    assert "run(s) censored at the budget" in text  # simnpo never reaches the level


def test_a_run_without_the_flag_writes_no_fair_files(tmp_path, cache):
    out = tmp_path / "run"
    argv = ["--preset", "smoke", "--methods", "original", "retrain", "ga", "--epochs", "1", "--attacks", "none"]
    tofu.main([*argv, "--out", str(out), "--cache-dir", str(cache), "--no-progress"])
    assert not (out / "stopping.csv").exists() and not (out / "primary.csv").exists()
    assert (out / "verdict.csv").read_text().splitlines()[0] == ",".join(VERDICT_COLUMNS)
    result = json.loads((out / "methods/ga/seed0/result.json").read_text())
    assert "stopping" not in result and "stopping" not in json.loads((out / "config.json").read_text())


# ------------------------------------------------------------------------------------------------ flags
@pytest.mark.parametrize(
    "extra, message",
    [
        (["--stop-at-fraction", "1.5"], r"--stop-at-fraction 1.5 must lie in \(0, 1\]"),
        (["--stop-at-fraction", "0"], r"--stop-at-fraction 0.0 must lie in \(0, 1\]"),
        (["--stop-at-fraction", "0.5", "--eval-every", "0"], r"needs --eval-every >= 1"),
        (["--author-offset", "-1"], r"--author-offset must be an integer >= 0"),
        (["--preset", "tofu_fair"], r"--preset tofu_fair fine-tunes SmolLM2 on real TOFU text: pass --data"),
    ],
)
def test_bad_fair_flags_are_one_line_naming_the_flag(tmp_path, extra, message):
    with pytest.raises(ValueError, match=message) as error:
        tofu.main(["--preset", "smoke", "--out", str(tmp_path / "o"), *extra])
    assert "Traceback" not in str(error.value)
    assert not (tmp_path / "o").exists()


def test_the_tofu_fair_preset_declares_the_tier():
    preset = tofu.PRESETS["tofu_fair"]
    assert preset["stop_at_fraction"] == 1.0 and preset["max_steps"] and preset["seeds"] == [0, 1, 2]
    assert {"ga", "npo", "ga_target_matched", "bs_t", "bs_s", "original", "retrain"} == set(preset["methods"])
    assert preset["max_authors"] * data.QA_PER_AUTHOR_TOFU >= 100 and preset["utility_limit"] >= 20
    assert preset["light_eval"] == "logprob"  # the stopping rule and the after-fork endpoint need no answer
    assert preset["precision"] == "fp32" and preset["attack_at"] == "end"
    assert preset["eval_every"] == 1  # every run stops at the first step past the level: no overshoot between checks
    args = tofu.parse_args(["--preset", "tofu_fair"])  # every declared setting reaches the run's settings
    assert args.evaluation.share_prompts and args.evaluation.leak_k_tokens == "answer"
    assert args.hyper["share_prefix"] is True  # BS-S's exact loss, its prompt run once per item


def test_utility_limit_trims_the_utility_splits_only(tofu_dir):
    full = data.load_data(data.DataConfig(data=str(tofu_dir), max_authors=1))
    trimmed = data.load_data(data.DataConfig(data=str(tofu_dir), max_authors=1, utility_limit=3))
    assert trimmed.evaluation["forget"] == full.evaluation["forget"] and len(full.evaluation["forget"]) > 3
    for split in ("retain", "real_authors", "world_facts"):
        assert trimmed.evaluation[split] == full.evaluation[split][:3]
    assert data.problems(data.DataConfig(utility_limit=0)) == ["--utility-limit must be >= 1, got 0"]


def test_a_list_flag_given_without_a_value_turns_the_presets_list_off():
    from bs_ref.protocol import recovery

    preset = tofu.parse_args(["--preset", "tofu_fair", "--attacks", "none"])
    assert preset.attacks.relearn_steps == [0, 2, 4, 8]
    assert any("give --relearn-steps with no value" in p for p in recovery.problems(preset.attacks))
    cleared = tofu.parse_args(["--preset", "tofu_fair", "--attacks", "none", "--relearn-steps"])
    assert cleared.attacks.relearn_steps == [] and recovery.problems(cleared.attacks) == []
    with pytest.raises(SystemExit):  # a list without an empty default still needs a value
        tofu.parse_args(["--seeds"])


def test_author_offset_keeps_the_next_authors():
    records = [{"question": f"q{i}", "answer": "a"} for i in range(100)]  # 5 authors by position
    assert data.author_positions(records, 0, 2, "forget10") == list(range(40))
    assert data.author_positions(records, 2, 2, "forget10") == list(range(40, 80))
    assert data.author_positions(records, 3, None, "forget10") == list(range(60, 100))
    with pytest.raises(ValueError, match=r"--author-offset 4 --max-authors 2 asks for authors 5–6 of the 5"):
        data.author_positions(records, 4, 2, "forget10")
    with pytest.raises(ValueError, match=r"--max-authors 6 exceeds the 5 authors"):
        data.author_positions(records, 0, 6, "forget10")


# ------------------------------------------------------------------------------------------------ the pieces
def test_stopper_stops_at_the_level_or_the_budget_and_records_it():
    rule = StopAtLevel.from_fraction(-0.1, -2.1, 0.5, max_steps=4)  # level -1.1
    stopper = fair.Stopper(rule)
    assert not stopper.check({"step": 1, "target_logprob": -0.5})
    assert stopper.check({"step": 2, "target_logprob": -1.1})  # at the level counts as reached
    record = stopper.record()["stopping"]
    assert record["reached"] and record["steps"] == 2 and record["value_at_stop"] == -1.1
    censored = fair.Stopper(rule)
    assert not censored.check({"step": 3, "target_logprob": -1.0})
    assert censored.check({"step": 4, "target_logprob": -1.0})  # the budget
    assert censored.record()["stopping"]["reached"] is False
    assert fair.Stopper(None).check({"step": 1, "target_logprob": -9}) is False and fair.Stopper(None).record() == {}


def _values(after_fork: dict, leak: dict) -> dict:
    out = {}
    for (label, seed), fork in after_fork.items():
        result = {"curve": [{"step": 0}, {"step": 4}]}
        out[(label, seed, 0)] = fair.RunValues(result, np.asarray(fork, dtype=float), leak.get((label, seed), {}), 8)
    return out


def test_primary_rows_pair_items_within_runs_and_keep_a_missing_contrast_in_holm():
    rng = np.random.default_rng(0)
    base = rng.normal(size=(3, 12))
    forks = {}
    for seed in range(3):
        forks[("bs_t", seed)] = base[seed] - 2.0  # BS-T squeezes 2 nats less than its control, item by item
        forks[("ga_target_matched", seed)] = base[seed]
        forks[("bs_s", seed)] = base[seed] + rng.normal(scale=0.05, size=12)  # no difference beyond noise
        forks[("npo", seed)] = base[seed]
    leak = {(m, s): {i: float(i % 2) for i in range(6)} for m in ("bs_s", "npo") for s in range(3)}
    rows, ks = fair.primary_rows(_values(forks, leak))
    by_name = {r.name: r for r in rows}
    squeeze_t = by_name[fair.PRIMARY[0].name]
    assert squeeze_t.estimate == pytest.approx(-2.0) and squeeze_t.verdict == "better"
    assert squeeze_t.n_items == 12 and squeeze_t.n_seeds == 3 and squeeze_t.n_pairs == 1
    assert by_name[fair.PRIMARY[1].name].verdict.startswith("equivalent")  # 0.01 nats, δ = 0.5
    assert by_name[fair.PRIMARY[2].name].verdict == "n/a" and by_name[fair.PRIMARY[2].name].n_items == 0
    assert by_name[fair.PRIMARY[3].name].estimate == 0.0 and ks[fair.PRIMARY[3].name] == 8
    assert all(r.p_holm >= r.p_raw for r in rows if not math.isnan(r.p_raw))
    assert all(r.ci_level == pytest.approx(1 - 0.05 / 4) for r in rows)  # m = 4: the missing one counts


def test_positive_control_reads_the_squeeze_from_step_zero_to_the_stop():
    def result(target_drop: float, fork_rise: float) -> dict:
        items0 = {"nll_answer": [1.0, 1.2, 0.8, 1.1], "band_high_fork_sum": [-8.0, -6.0, -7.0, -9.0]}
        items0["band_high_fork_count"] = [1, 1, 1, 1]
        last = {"nll_answer": [x + target_drop + 0.1 * i for i, x in enumerate(items0["nll_answer"])]}
        last["band_high_fork_sum"] = [x + fork_rise + 0.1 * i for i, x in enumerate(items0["band_high_fork_sum"])]
        last["band_high_fork_count"] = [1, 1, 1, 1]
        return {"curve": [{"step": 0, "items": {"forget": items0}}, {"step": 5, "items": {"forget": last}}]}

    values = {
        ("ga", 0, 0): fair.RunValues(result(2.0, 1.5), None, {}, None),
        ("npo", 0, 0): fair.RunValues(result(2.0, -1.5), None, {}, None),
    }
    control = {c["method"]: c for c in fair.positive_control(values)}
    assert control["ga"]["squeezes"] is True and control["ga"]["target"][2] < 0 < control["ga"]["after_fork"][1]
    assert control["npo"]["squeezes"] is False
    lines = fair.section_lines([], list(control.values()), [])
    assert not any("absent" in line for line in lines)
    absent = fair.section_lines([], [control["npo"]], [])
    assert absent[2].startswith("**The squeeze is absent on this tier**")  # the first sentence of the section


def test_the_trajectory_shows_a_transient_squeeze_that_the_stopping_point_misses():
    """GA's after-fork band rises at steps 1 and 2 (the target falling) and is back below its start at steps 3 and
    4, the stop, in two runs: the trajectory flags steps 1 and 2, the positive control (the stop) does not; a third
    run that stopped at step 2 counts up to step 2. A curve with bands at step 0 and the stop alone has no
    trajectory."""
    base = {"nll_answer": [1.0, 1.2, 0.8, 1.1], "band_high_fork_sum": [-8.0, -6.0, -7.0, -9.0]}
    base["band_high_fork_count"] = [1, 1, 1, 1]

    def point(step: int, target_drop: float, fork_rise: float) -> dict:
        items = {"nll_answer": [x + target_drop + 0.1 * i for i, x in enumerate(base["nll_answer"])]}
        items["band_high_fork_sum"] = [x + fork_rise + 0.1 * i for i, x in enumerate(base["band_high_fork_sum"])]
        items["band_high_fork_count"] = [1, 1, 1, 1]
        return {"step": step, "items": {"forget": items}}

    start = {"step": 0, "items": {"forget": base}}
    long = {"curve": [start, point(1, 0.5, 0.2), point(2, 1.0, 1.5), point(3, 1.5, -0.5), point(4, 2.0, -1.0)]}
    short = {"curve": [start, point(1, 0.5, 0.2), point(2, 1.0, 1.5)]}
    values = {("ga", s, 0): fair.RunValues(long, None, {}, None) for s in (0, 1)}
    values[("ga", 2, 0)] = fair.RunValues(short, None, {}, None)
    rows = {r["step"]: r for r in fair.trajectory_rows(values)}
    assert sorted(rows) == [1, 2, 3, 4] and [rows[s]["n_runs"] for s in (1, 2, 3, 4)] == [3, 3, 2, 2]
    assert rows[2]["squeezes"] is True and rows[2]["after_fork_change"] == pytest.approx(1.5 + 0.15)
    assert rows[2]["target_change"] == pytest.approx(-(1.0 + 0.15))
    assert [rows[s]["squeezes"] for s in (1, 2, 3, 4)] == [True, True, False, False]
    assert rows[4]["after_fork_change"] == pytest.approx(-1.0 + 0.15)
    control = fair.positive_control({k: v for k, v in values.items() if k[1] < 2})
    assert control[0]["squeezes"] is False  # at the stop the band is below its start
    lines = fair.trajectory_lines(list(rows.values()))
    assert lines[0] == "" and lines[1].startswith("Along the trajectory")
    assert sum("**yes**" in line for line in lines) == 2
    two_points = {("ga", 0, 0): fair.RunValues({"curve": [start, point(4, 2.0, -1.0)]}, None, {}, None)}
    assert fair.trajectory_rows(two_points) == [] and fair.trajectory_lines([]) == []


def test_labelled_verdicts_keep_every_row_and_add_the_primary_ones():
    rows = [
        dict(comparison="bs_t − ga", measure="agg", setting="end", difference=0.1, ci_low=0.0, ci_high=0.2),
        dict(comparison="bs_s − npo", measure="agg", setting="end", difference=float("nan"), verdict="n/a"),
    ]
    primary = [
        dict(method_a="bs_t", method_b="ga_target_matched", measure="after_fork_change:high", setting="stopping point")
        | dict(estimate=-1.0, ci_low=-2.0, ci_high=-0.5, n_items=12, n_seeds=3, verdict="better")
    ]
    text = fair.labelled_verdicts(rows, primary)
    from bs_ref.protocol.stats import verdict_csv

    plain = verdict_csv(rows).splitlines()
    lines = text.splitlines()
    assert [line.rsplit(",", 1)[0] for line in lines[: len(plain)]] == plain  # the rows unchanged
    assert [line.rsplit(",", 1)[1] for line in lines] == ["label", "exploratory", "exploratory", "primary"]
