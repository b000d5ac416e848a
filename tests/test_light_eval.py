"""``--light-eval logprob|bands``: the light evaluation without generation (docs/theory.md §20). Its target log-prob
and belief bands (logprob: at step 0 and at the run's last point; bands: at every check) are the ones the full light
evaluation computes, it generates nothing, and it records no metric that needs an answer. ``--share-prompts``: the
evaluations score from one run of each prompt and give the row-by-row numbers to floating point."""

from __future__ import annotations

import pytest
from _tiny import FORGET, RETAIN, eval_records, fresh

from bs_ref.metrics import scores
from bs_ref.metrics.leakage import build_belief_bands
from bs_ref.protocol import evaluate
from bs_ref.protocol.data import Data


def _evaluator(tiny, light_eval: str, share_prompts: bool = False) -> evaluate.Evaluator:
    _, tokenizer = fresh(tiny)
    utility = eval_records(RETAIN[:4])
    data = Data(
        forget_train=FORGET,
        retain_train=RETAIN,
        evaluation={"forget": eval_records(FORGET), "retain": utility, "real_authors": utility},
        has_facts=False,
        info={},
    )
    cfg = evaluate.EvalConfig(
        light_eval=light_eval, curve_items=2, max_new_tokens=8, eval_batch_size=3, share_prompts=share_prompts
    )
    return evaluate.Evaluator(cfg, data, tokenizer)


def test_the_logprob_light_evaluation_scores_the_same_targets_and_bands_and_generates_nothing(tiny, monkeypatch):
    model, tokenizer = fresh(tiny)
    answers, logprob = _evaluator(tiny, "answers"), _evaluator(tiny, "logprob")
    questions = [r["question"] for r in FORGET]
    others = [[a for a in r["perturbed_answer"]] for r in eval_records(FORGET)]  # the model's other answers
    bands = build_belief_bands(model, tokenizer, questions, others, batch_size=3)
    answers.bands = logprob.bands = bands
    full = answers.curve_point(3, model)

    def no_generation(*args, **kwargs):
        raise AssertionError("--light-eval logprob generated an answer")

    monkeypatch.setattr(scores, "generate_answers", no_generation)
    light = logprob.curve_point(3, model)
    assert "band_high_after_fork" not in light  # along the run: the target only
    assert "band_high_after_fork" in logprob.curve_point(0, model)  # step 0: the bands every change starts from
    logprob.finish_curve(light, model)  # the stopping point: its bands
    assert light["target_logprob"] == pytest.approx(full["target_logprob"], abs=1e-12)
    assert light["items"]["forget"]["nll_answer"] == pytest.approx(full["items"]["forget"]["nll_answer"], abs=1e-12)
    for key in ("band_high_logprob", "band_high_after_fork", "band_low_after_fork"):
        assert light[key] is not None and light[key] == full[key]
    for column in ("band_high_fork_sum", "band_high_fork_count"):
        assert light["items"]["forget"][column] == full["items"]["forget"][column]
    for key in evaluate.CURVE_METRICS:  # nothing that needs an answer (or the utility items) is recorded
        assert light[key] is None
    assert set(light["items"]) == {"forget"}
    assert full["forget_rouge"] is not None and set(full["items"]) == {"forget", "retain", "real_authors"}


def test_the_bands_light_evaluation_scores_the_bands_at_every_check_and_generates_nothing(tiny, monkeypatch):
    model, tokenizer = fresh(tiny)
    answers, banded = _evaluator(tiny, "answers"), _evaluator(tiny, "bands")
    questions = [r["question"] for r in FORGET]
    others = [[a for a in r["perturbed_answer"]] for r in eval_records(FORGET)]
    answers.bands = banded.bands = build_belief_bands(model, tokenizer, questions, others, batch_size=3)
    full = answers.curve_point(2, model)

    def no_generation(*args, **kwargs):
        raise AssertionError("--light-eval bands generated an answer")

    monkeypatch.setattr(scores, "generate_answers", no_generation)
    light = banded.curve_point(2, model)  # a check along the run, not step 0 or the stop
    assert light["target_logprob"] == pytest.approx(full["target_logprob"], abs=1e-12)
    for key in ("band_high_logprob", "band_high_after_fork", "band_mid_after_fork", "band_low_after_fork"):
        assert light[key] is not None and light[key] == full[key]
    for column in ("band_high_fork_sum", "band_high_fork_count", "band_low_sum"):
        assert light["items"]["forget"][column] == full["items"]["forget"][column]
    before = dict(light)
    banded.finish_curve(light, model)  # the point has its bands already: nothing is scored twice
    assert light["eval_s"] == before["eval_s"]
    assert all(light[key] is None for key in evaluate.CURVE_METRICS) and set(light["items"]) == {"forget"}


def test_an_unknown_light_evaluation_is_named_with_its_choices():
    problems = evaluate.problems(evaluate.EvalConfig(light_eval="greedy"))
    assert problems == ["--light-eval greedy is unknown; choose one of answers | logprob | bands"]


def test_shared_prompts_give_the_same_evaluation(tiny):
    """The full evaluation and a light one with bands, scored from one run of each prompt, against row by row:
    every per-item number within 1e-5 (absolute, or relative for the large ones: a truth ratio of 1261 moves in its
    7th digit), the same greedy answers (generation does not change)."""
    model, tokenizer = fresh(tiny)
    rows, shared = _evaluator(tiny, "bands"), _evaluator(tiny, "bands", share_prompts=True)
    questions = [r["question"] for r in FORGET]
    others = [[a for a in r["perturbed_answer"]] for r in eval_records(FORGET)]
    rows.bands = shared.bands = build_belief_bands(model, tokenizer, questions, others, batch_size=3)
    a, b = rows.full(model), shared.full(model)
    assert set(a) == set(b)
    for split in a:
        for x, y in zip(a[split], b[split]):
            assert x["generation"] == y["generation"]
            for key, value in x.items():
                if isinstance(value, float) and key != "generation":
                    assert y[key] == pytest.approx(value, rel=1e-5, abs=1e-5, nan_ok=True), (split, key)
    p, q = rows.curve_point(2, model), shared.curve_point(2, model)
    for key in ("target_logprob", "band_high_logprob", "band_high_after_fork", "band_low_after_fork"):
        assert q[key] == pytest.approx(p[key], abs=1e-5)
