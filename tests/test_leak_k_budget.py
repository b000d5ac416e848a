"""``--leak-k-tokens answer``: leak@k samples each annotated forget item on its own, within its own reference answer
+ 8 tokens (at most the greedy budget), seeded by the item's index; ``longest`` (the default) keeps one batched call
at the greedy budget."""

from __future__ import annotations

from _tiny import FORGET, RETAIN, eval_records, fresh

from bs_ref.metrics.scores import max_answer_tokens
from bs_ref.protocol import evaluate
from bs_ref.protocol.data import Data

LONG = {"question": "What is written on the gate of house 99?", "answer": " ".join(["a long answer"] * 12) + "."}


def _evaluator(tiny, leak_k_tokens: str, items: int = 0) -> evaluate.Evaluator:
    _, tokenizer = fresh(tiny)
    forget = eval_records(FORGET) + [{**LONG, "paraphrased_answer": LONG["answer"], "perturbed_answer": ["no."]}]
    data = Data(
        forget_train=FORGET,
        retain_train=RETAIN,
        evaluation={"forget": forget, "retain": eval_records(RETAIN[:3])},
        has_facts=False,
        info={},
    )
    cfg = evaluate.EvalConfig(leak_k_samples=5, leak_k_items=items, leak_k_tokens=leak_k_tokens, eval_batch_size=4)
    evaluator = evaluate.Evaluator(cfg, data, tokenizer)
    evaluator.facts = {r["question"]: r["answer"].split()[-1].rstrip(".") for r in forget}  # the colour; "answer"
    return evaluator


def _record_generation(monkeypatch) -> list[tuple]:
    """Every generate_answers call of the evaluator from now on: (questions, budget, seed, samples)."""
    calls, original = [], evaluate.generate_answers

    def recorded(model, tokenizer, questions, template, **kwargs):
        calls.append((list(questions), kwargs["max_new_tokens"], kwargs["seed"], kwargs["num_samples"]))
        return original(model, tokenizer, questions, template, **kwargs)

    monkeypatch.setattr(evaluate, "generate_answers", recorded)
    return calls


def test_each_item_is_sampled_alone_within_its_own_answer_budget(tiny, monkeypatch):
    model, tokenizer = fresh(tiny)
    evaluator = _evaluator(tiny, "answer")
    calls = _record_generation(monkeypatch)
    counts = evaluator.leak_at_k_counts(model, seed=3)
    forget = evaluator.data.evaluation["forget"]
    assert sorted(counts) == list(range(len(forget))) and all(c["n"] == 5 for c in counts.values())
    assert [q for q, *_ in calls] == [[r["question"]] for r in forget]  # one call per item, in order
    for (_, budget, seed, n), index in zip(calls, range(len(forget))):
        own = max_answer_tokens(tokenizer, [forget[index]])
        assert budget == min(own, evaluator.max_new_tokens) and n == 5
        assert seed == 3 + evaluate.LEAK_K_SEED + 1 + index
    budgets = [b for _, b, *_ in calls]
    assert budgets[-1] == evaluator.max_new_tokens > max(budgets[:-1])  # the longest answer sets the greedy budget
    # an item's samples do not depend on which other items are sampled
    alone = _evaluator(tiny, "answer", items=2)
    chosen = alone.leak_at_k_items()
    assert len(chosen) == 2 and {i: counts[i] for i in chosen} == alone.leak_at_k_counts(model, seed=3)


def test_the_default_budget_is_one_call_at_the_greedy_budget(tiny, monkeypatch):
    model, _ = fresh(tiny)
    evaluator = _evaluator(tiny, "longest")
    calls = _record_generation(monkeypatch)
    evaluator.leak_at_k_counts(model, seed=3)
    questions = [r["question"] for r in evaluator.data.evaluation["forget"]]
    assert calls == [(questions, evaluator.max_new_tokens, 3 + evaluate.LEAK_K_SEED, 5)]


def test_an_unknown_budget_is_named_with_its_choices():
    problems = evaluate.problems(evaluate.EvalConfig(leak_k_tokens="short"))
    assert problems == ["--leak-k-tokens short is unknown; choose one of longest | answer"]
