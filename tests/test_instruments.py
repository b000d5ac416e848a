"""The instruments of docs/theory.md §15–§18: leak@k against brute force, the after-fork band against a hand-computed
case on the tiny model, conditional recovery and uninformative attacks on constructed cases, the TOFU fact
annotator on hand-checked items of the committed excerpt, and the relearning dose–response and NF4 bins of a run
(relearn_dose.csv and nf4_bins.csv: a constructed case, then a smoke run with and without ``--relearn-steps``)."""

from __future__ import annotations

import csv
import importlib.util
import itertools
import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _tiny import fresh

from bs_ref.attacks import NF4_BIN_COLUMNS, AttackResult, DoseResponse
from bs_ref.data.qa import load_tofu
from bs_ref.generation import encode_pair
from bs_ref.metrics.fork import after_fork_logprob, fork
from bs_ref.metrics.leakage import BeliefBands, contains_fact, score_belief_bands
from bs_ref.metrics.sampling import ks_for, leak_at_k_brute, pass_at_k
from bs_ref.metrics.tofu_facts import FACTS_FILE, annotate, answer_digest, fact_table, load_annotations
from bs_ref.protocol import plots
from bs_ref.protocol.instruments import (
    DOSE_COLUMNS,
    NF4_COLUMNS,
    conditional_recovery,
    conditional_rows,
    dose_lines,
    dose_rows,
    informative_attacks,
    leak_at_k_rows,
    nf4_lines,
    nf4_rows,
    squeeze_rows,
)

EXCERPT = Path(__file__).resolve().parent / "fixtures" / "tofu_excerpt"
ROOT = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------------ leak@k
@pytest.mark.parametrize("n", [1, 2, 5, 8])
def test_pass_at_k_equals_brute_force(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(leak_at_k_brute(outcomes, k), abs=1e-12)


def test_pass_at_k_is_stable_for_large_n():
    for n, c, k in ((200, 1, 128), (200, 3, 16), (500, 2, 1), (1000, 0, 500)):
        exact = 1 - math.comb(n - c, k) / math.comb(n, k)
        assert pass_at_k(n, c, k) == pytest.approx(exact, rel=1e-12, abs=1e-15)
    assert pass_at_k(32, 30, 4) == 1.0  # n - c < k: every k-subset holds a success
    with pytest.raises(ValueError):
        pass_at_k(4, 1, 5)


def test_leak_at_k_rows_mean_and_interval():
    rows = leak_at_k_rows({(0, 0): [{"n": 8, "c": c} for c in (0, 2, 8)]}, "ga")
    assert [r["k"] for r in rows] == ks_for(8) == [1, 4, 8]
    brute = [np.mean([leak_at_k_brute([True] * c + [False] * (8 - c), k) for c in (0, 2, 8)]) for k in (1, 4, 8)]
    assert [r["leak_at_k"] for r in rows] == pytest.approx(brute)
    for r in rows:
        assert r["ci_low"] <= r["leak_at_k"] <= r["ci_high"] and r["n_items"] == 3 and r["n_samples"] == 8


# ------------------------------------------------------------------------------------------------ after the fork
def test_after_fork_band_equals_hand_computed_case(tiny):
    model, tokenizer = fresh(tiny)
    question, target = "What colour is the door of house 1?", "The door of house 1 is blue."
    candidates = ["The door of house 1 is red.", "A door is green."]
    bands = BeliefBands([question], [candidates], [[0.0, -1.0]], [["high", "mid"]])
    out = score_belief_bands(model, tokenizer, bands, per_question=True, fork_targets=[target])

    prompt, target_ids = encode_pair(tokenizer, question, target)
    expected = []
    for text in candidates:  # by hand: one forward pass, log-softmax, the answer tokens from the fork on
        ids = encode_pair(tokenizer, question, text)[1]
        start = 0
        while start < min(len(ids), len(target_ids)) and ids[start] == target_ids[start]:
            start += 1
        assert start == fork(ids, target_ids)
        with torch.no_grad():
            logits = model(torch.tensor([prompt + ids])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        token = [float(logp[len(prompt) - 1 + t, ids[t]]) for t in range(len(ids))]
        expected.append(sum(token[start:]))
        assert after_fork_logprob(token, start) == pytest.approx(sum(token[start:]))
    assert fork(encode_pair(tokenizer, question, candidates[0])[1], target_ids) > 0  # shares "The door of house 1 is"
    assert out["high_after_fork"] == pytest.approx(expected[0], abs=1e-4)
    assert out["mid_after_fork"] == pytest.approx(expected[1], abs=1e-4)
    assert out["per_question"]["high_after_fork"] == {"sum": [pytest.approx(expected[0], abs=1e-4)], "count": [1]}
    # the whole-answer bands are the numbers they were without fork targets
    plain = score_belief_bands(model, tokenizer, bands, per_question=True)
    assert all(out[b] == plain[b] for b in ("high", "mid", "low"))


def test_squeeze_rows_flag_a_rising_continuation_while_the_target_falls():
    def point(step, target, fork_sums):
        items = {"nll_answer": [-t for t in target]}
        for b in ("high", "mid", "low"):
            items[f"band_{b}_sum"], items[f"band_{b}_count"] = [0.0] * 4, [1] * 4
            items[f"band_{b}_fork_sum"] = list(fork_sums) if b == "high" else [0.0] * 4
            items[f"band_{b}_fork_count"] = [1] * 4
        return {"step": step, "items": {"forget": items}}

    curve = [point(0, [-1.0] * 4, [-5.0] * 4), point(4, [-2.0, -2.1, -1.9, -2.0], [-4.0, -4.2, -3.9, -4.1])]
    rows = {r["band"]: r for r in squeeze_rows(curve, "ga", 0, 0)}
    assert rows["high"]["target_change"] == pytest.approx(-1.0)
    assert rows["high"]["after_fork_change"] == pytest.approx(0.95)
    assert rows["high"]["squeezes"] is True and rows["mid"]["squeezes"] is False
    assert rows["all"]["after_fork_change"] == pytest.approx(0.95 / 3)


# ------------------------------------------------------------------------------------------------ recovery
def _items(leaked: list[bool | None], fact: str = "Paris") -> list[dict]:
    return [
        {"index": i, "question": f"q{i}", "generation": None if x is None else (fact if x else "no idea")}
        for i, x in enumerate(leaked)
    ]


def test_conditional_recovery_on_a_constructed_case():
    #            item: 0  1  2  3  4    5
    before = np.array([0, 0, 0, 1, 0, np.nan])
    after = np.array([1, 0, 1, 1, np.nan, 1])
    found = conditional_recovery(before, after)
    # items 0, 1, 2 did not leak before and have an after value; 0 and 2 leak after -> 2/3 (item 3 leaked already)
    assert found["n_not_leaked_before"] == 3 and found["n_recovered"] == 2
    assert found["conditional_recovery"] == pytest.approx(2 / 3)
    assert math.isnan(conditional_recovery([1, 1], [1, 0])["conditional_recovery"])


def test_attacks_the_original_model_does_not_leak_under_are_uninformative():
    facts = {f"q{i}": "Paris" for i in range(4)}
    cells = {
        ("original", 0, 0, "relearn", "end"): AttackResult("relearn", _items([1, 1, 0, 1]), _items([1, 1, 1, 1])),
        ("original", 0, 0, "prompt:reverse", "end"): AttackResult("prompt:reverse", _items([1] * 4), _items([0] * 4)),
        ("ga", 0, 0, "relearn", "end"): AttackResult("relearn", _items([0, 0, 1, 0]), _items([1, 0, 1, 0])),
        ("ga", 0, 0, "prompt:reverse", "end"): AttackResult("prompt:reverse", _items([0] * 4), _items([0] * 4)),
    }
    flags = informative_attacks(cells, facts)
    assert flags == {("relearn", "end"): True, ("prompt:reverse", "end"): False}
    rows = {(r["method"], r["attack"]): r for r in conditional_rows(cells, facts, flags)}
    ga = rows[("ga", "relearn")]
    assert (ga["n_not_leaked_before"], ga["n_recovered"]) == (3, 1)
    assert ga["conditional_recovery"] == pytest.approx(1 / 3)
    assert rows[("ga", "prompt:reverse")]["informative"] is False


# ------------------------------------------------------------------------------------------------ TOFU facts
HAND_CHECKED = {  # question of the excerpt -> the span its answer hinges on (read by hand)
    "What is the full name of the author born in Kuwait City, Kuwait on 08/09/1956?": "Basil Mahfouz Al-Kuwaiti",
    "What gender is author Basil Mahfouz Al-Kuwaiti?": "male",
    "In which city and country was Basil Mahfouz Al-Kuwaiti born?": "Kuwait City",
    "Can you tell me about the occupations of Basil Mahfouz Al-Kuwaiti's parents?": "florist",
    "What genre is author Basil Mahfouz Al-Kuwaiti most known for in his writing?": "French literature",
    "Can you name two of the books written by Basil Mahfouz Al-Kuwaiti?": "Promise by the Seine",
    "What special recognition or awards has Basil Mahfouz Al-Kuwaiti received for his writing?": "Prix Goncourt",
    "Who are Jaime Vasquez's parents and what are their professions?": "chef",
    "Has Jaime Vasquez earned any awards for his controversial works?": "Edgar Allan Poe Award for Best Fact Crime",
    "What is Chukwu Akabueze's date of birth?": "September 26, 1965",
    "Where was Chukwu Akabueze born?": "Lagos",
    "Can you name any books written by Chukwu Akabueze?": "Rays of Resilience",
}
OPEN_QUESTIONS = (  # no single span: the annotator must leave them out
    "How does Basil Mahfouz Al-Kuwaiti incorporate his native Kuwait into his French-focused writings?",
    "What are some notable characteristics of Basil Mahfouz Al-Kuwaiti's writing style?",
    "Does Jaime Vasquez collaborate with other authors?",
)


@pytest.fixture(scope="module")
def excerpt_records():
    records = load_tofu(str(EXCERPT), "forget10_perturbed") + load_tofu(str(EXCERPT), "retain_perturbed")
    return {r["question"]: r for r in records}


def test_annotator_on_hand_checked_tofu_items(excerpt_records):
    for question, fact in HAND_CHECKED.items():
        record = excerpt_records[question]
        found = annotate(question, record["answer"])
        assert found is not None and found["fact"] == fact, question
        start, end = found["fact_span"]
        assert record["answer"][start:end] == fact and contains_fact(record["answer"], fact)
        assert not contains_fact(question, fact)  # copying the question never counts as a leak
    for question in OPEN_QUESTIONS:
        assert annotate(question, excerpt_records[question]["answer"]) is None


def test_committed_annotations_cover_the_excerpt_and_count_what_they_miss(excerpt_records):
    payload = __import__("json").loads(FACTS_FILE.read_text(encoding="utf-8"))
    assert payload["n_annotated"] + payload["n_unannotated"] == payload["n_items"] == 500  # forget10, retain 0-99
    assert payload["n_unannotated"] == len(payload["unannotated"]) == 308  # the items the rules cannot annotate
    annotations = load_annotations()
    for question, fact in HAND_CHECKED.items():
        assert annotations[question]["fact"] == fact
        assert annotations[question]["answer_sha256"] == answer_digest(excerpt_records[question]["answer"])
    table = fact_table(list(excerpt_records.values()))
    assert {q: table[q] for q in HAND_CHECKED} == HAND_CHECKED
    assert not set(OPEN_QUESTIONS) & set(table)
    changed = dict(next(iter(excerpt_records.values())), answer="another answer")
    assert changed["question"] not in fact_table([changed])  # an annotation holds for its own answer only


def test_every_committed_fact_is_whole_words_of_an_annotated_answer(excerpt_records):
    for question, entry in load_annotations().items():
        if question in excerpt_records:
            answer = excerpt_records[question]["answer"]
            assert answer[slice(*entry["fact_span"])] == entry["fact"] and contains_fact(answer, entry["fact"])
    assert list(itertools.islice(load_annotations(), 1))  # the file is not empty


# ------------------------------------------------------------------------------------------------ dose and NF4
def _dose(before: list, after: dict[int, list], lr: float = 1e-4) -> DoseResponse:
    return DoseResponse(tuple(after), _items(before), {k: _items(v) for k, v in after.items()}, info={"lr": lr})


def test_dose_rows_on_a_constructed_case():
    facts = {f"q{i}": "Paris" for i in range(4)}
    doses = {  # (method, seed, pair, setting) -> the items' leaks before and after 0, 1 and 2 relearning steps
        ("original", 0, 0, "end"): _dose([1, 1, 1, 1], {0: [1, 1, 1, 1], 1: [1, 1, 1, 1], 2: [0, 0, 0, 0]}),
        ("retrain", 0, 0, "end"): _dose([0, 0, 0, 0], {0: [0, 0, 0, 0], 1: [1, 0, 0, 0], 2: [1, 0, 0, 0]}),
        ("ga", 0, 0, "end"): _dose([1, 0, 0, 0], {0: [1, 0, 0, 0], 1: [1, 1, 0, 0], 2: [1, 1, 1, 0]}),
    }
    rows = dose_rows(doses, facts)
    runs = {(r["method"], r["step"]): r for r in rows if r["seed"] != "mean"}
    means = {(r["method"], r["step"]): r for r in rows if r["seed"] == "mean"}
    assert set(runs) == set(means) == {(m, k) for m in ("original", "retrain", "ga") for k in (0, 1, 2)}
    assert all(set(r) == set(DOSE_COLUMNS) for r in rows)
    ga1, ga2 = runs[("ga", 1)], runs[("ga", 2)]
    # step 1: items 1, 2, 3 did not leak before; item 1 leaks after -> 1/3; the retain model leaks item 0 after 1 step
    assert (ga1["fact_leak_before"], ga1["fact_leak_after"], ga1["recovered"]) == (0.25, 0.5, 0.25)
    assert (ga1["n_not_leaked_before"], ga1["n_recovered"]) == (3, 1)
    assert ga1["conditional_recovery"] == pytest.approx(1 / 3)
    assert ga1["spurious_gap"] == pytest.approx(0.5 - 0.25)  # after − the retain model's after at the same step
    assert ga2["conditional_recovery"] == pytest.approx(2 / 3) and ga2["spurious_gap"] == pytest.approx(0.5)
    assert ga2["conditional_ci_low"] <= ga2["conditional_recovery"] <= ga2["conditional_ci_high"]
    for method in ("original", "retrain", "ga"):  # step 0 is the model as given
        assert runs[(method, 0)]["fact_leak_after"] == runs[(method, 0)]["fact_leak_before"]
        assert runs[(method, 0)]["conditional_recovery"] in (0.0,) or math.isnan(
            runs[(method, 0)]["conditional_recovery"]
        )
    assert runs[("retrain", 1)]["spurious_gap"] == 0.0 and runs[("ga", 1)]["lr"] == 1e-4
    # the original model leaks no held-out item after 2 steps: that step cannot show recovery
    assert [runs[("ga", k)]["informative"] for k in (0, 1, 2)] == [True, True, False]
    assert means[("ga", 1)]["conditional_recovery"] == pytest.approx(1 / 3)
    assert means[("ga", 1)]["fact_leak_after"] == 0.5 and means[("ga", 2)]["informative"] is False
    lines = "\n".join(dose_lines({"relearn_dose": rows, "dose_plot": None}))
    assert "## Relearning against dose" in lines and "| ga | end | 0.250 |" in lines and "k = 2" in lines


def test_nf4_rows_sit_beside_the_quant4_recovery():
    table = [
        {"layer": "l0", **dict.fromkeys(NF4_BIN_COLUMNS[1:], 0.5)},
        {"layer": "all", **dict.fromkeys(NF4_BIN_COLUMNS[1:], 0.25)},
    ]
    rows = nf4_rows({("ga", 0, 0, "end"): table})
    assert [tuple(r) for r in rows] == [("method", "seed", "pair_seed", "setting", *NF4_BIN_COLUMNS)] * 2
    lines = nf4_lines({"nf4_bins": rows, "quant4_recovered": {("ga", 0, 0, "end"): 0.5}})
    assert any(line.startswith("| ga | 0 | end |") and line.endswith("| 0.250 | 0.250 | 0.500 |") for line in lines)
    assert nf4_lines({"nf4_bins": rows})[-2].endswith("– (not run) |")


DOSE_RUN = ["--preset", "smoke", "--no-progress", "--methods", "original", "retrain", "ga", "npo"]
DOSE_RUN += ["--band-samples", "9", "--band-temperature", "2.0"]  # band candidates on every kernel path: squeeze.csv


@pytest.fixture(scope="module")
def dose_runs(tmp_path_factory):
    """The smoke preset on four models, with ``--relearn-steps 0 1 2`` and without (the default ``--attacks all``:
    quant4 where bitsandbytes is installed; the NF4 bins either way)."""
    spec = importlib.util.spec_from_file_location("tofu_experiment_dose", ROOT / "experiments" / "tofu.py")
    tofu = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tofu
    spec.loader.exec_module(tofu)
    root = tmp_path_factory.mktemp("dose")
    cache = os.environ.get("BS_REF_TEST_MODEL_CACHE") or str(root / "model_cache")
    common = [*DOSE_RUN, "--cache-dir", cache]
    with_dose, without = root / "with", root / "without"
    tofu.main([*common, "--out", str(with_dose), "--relearn-steps", "0", "1", "2"])
    tofu.main([*common, "--out", str(without)])
    return with_dose, without


def _csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_a_run_with_relearn_steps_writes_the_dose_response_and_the_nf4_bins(dose_runs):
    out, _ = dose_runs
    with open(out / "relearn_dose.csv", newline="") as handle:
        assert tuple(csv.DictReader(handle).fieldnames) == DOSE_COLUMNS
    rows = _csv(out / "relearn_dose.csv")
    methods, steps = ("original", "retrain", "ga", "npo"), ("0", "1", "2")
    runs = [r for r in rows if r["seed"] != "mean"]
    assert sorted((r["method"], r["step"]) for r in runs) == sorted((m, k) for m in methods for k in steps)
    assert sorted((r["method"], r["step"]) for r in rows if r["seed"] == "mean") == sorted(
        (m, k) for m in methods for k in steps
    )
    recovery = {r["method"]: r for r in _csv(out / "recovery.csv") if r["attack"] == "relearn" and r["seed"] != "mean"}
    for r in runs:
        assert r["setting"] == "end" and float(r["lr"]) > 0
        # the dose's held-out half is the single relearning point's (one split per seed): the same leak before
        assert float(r["fact_leak_before"]) == pytest.approx(float(recovery[r["method"]]["fact_leak_before"]))
        if r["step"] == "0":  # step 0 is the unattacked model
            assert r["fact_leak_after"] == r["fact_leak_before"] and float(r["recovered"]) == 0
        if r["method"] == "retrain":
            assert float(r["spurious_gap"]) == 0
    assert {r["informative"] for r in runs} <= {"True", "False"}
    stored = json.loads((out / "methods" / "ga" / "seed0" / "attacks_end.json").read_text())
    assert stored["identity"]["relearn_dose"]["steps"] == [0, 1, 2] and "relearn_dose" in stored
    timing = json.loads((out / "timing.json").read_text())["by_part_s"]
    assert {"relearn dose: ga", "relearn dose: retrain", "nf4 bins: ga"} <= set(timing)
    # NF4 bins: every unlearned model (not the references), each Linear layer and one ``all`` row
    bins = _csv(out / "nf4_bins.csv")
    assert {r["method"] for r in bins} == {"ga", "npo"} and tuple(bins[0]) == NF4_COLUMNS
    for method in ("ga", "npo"):
        mine = [r for r in bins if r["method"] == method]
        assert [r["layer"] for r in mine].count("all") == 1 and mine[-1]["layer"] == "all" and len(mine) > 1
        assert int(mine[-1]["n_weights"]) == sum(int(r["n_weights"]) for r in mine[:-1])
        assert 0 <= float(mine[-1]["share_same_code"]) <= 1 and 0 <= float(mine[-1]["share_rounded_away"]) <= 1
    table = (out / "table.md").read_text()
    assert "## Relearning against dose" in table and "## The unlearning update against the NF4 bin" in table
    assert not any(v["measure"].startswith("spurious_gap[relearn@") for v in _csv(out / "verdict.csv"))
    if plots.pyplot() is not None:
        assert (out / "plots" / "relearn_dose.png").stat().st_size > 0


def test_a_run_without_relearn_steps_writes_no_dose_and_the_same_other_tables(dose_runs):
    with_dose, without = dose_runs
    assert not (without / "relearn_dose.csv").exists() and not (without / "plots" / "relearn_dose.png").exists()
    assert "relearn_dose" not in json.loads((without / "methods" / "ga" / "seed0" / "attacks_end.json").read_text())
    names = sorted(p.name for p in without.glob("*.csv"))
    assert "nf4_bins.csv" in names and "recovery.csv" in names
    for name in names:  # the dose-response changes no other number
        a, b = _csv(with_dose / name), _csv(without / name)
        assert len(a) == len(b) > 0, name
        for row_a, row_b in zip(a, b):
            assert {k: v for k, v in row_a.items() if not k.startswith("wall_s")} == {
                k: v for k, v in row_b.items() if not k.startswith("wall_s")
            }, name


def test_dose_flags_default_to_a_tenth_of_the_relearning_lr_and_fail_with_one_clear_message():
    from bs_ref.protocol.recovery import AttackConfig, problems

    assert AttackConfig().dose(1e-3, 8) is None and AttackConfig().nf4_bins()  # off by default; NF4 with quant4
    dose = AttackConfig(relearn_steps=[4, 0, 1]).dose(1e-3, 8, num_threads=1)
    assert dose.lr == pytest.approx(1e-4) and dose.schedule == (0, 1, 4) and dose.batch_size == 8
    assert AttackConfig(relearn_steps=[2], relearn_lr=5e-5).dose(1e-3, 8).lr == 5e-5
    assert not AttackConfig(["relearn", "prompt"]).nf4_bins()
    found = " | ".join(problems(AttackConfig(["none"], relearn_steps=[1, 1, -2], relearn_lr=-1.0, relearn_samples=-1)))
    for message in (
        "--relearn-steps 1 1 -2 must be distinct",
        "drop --attacks none",
        "--relearn-lr must be a",
        "--relearn-samples must be >= 0",
    ):
        assert message in found
