"""Model-facing metrics on a tiny randomly initialised Llama: batching invariance, ES/EM, end to end."""

from __future__ import annotations

import copy
import math

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bs_ref.generation import Decoding, encode_pair, generate, score_answers, stop_token_ids
from bs_ref.losses import sequence_logprob
from bs_ref.metrics import leakage, paper
from bs_ref.metrics import scores as tofu

WORDS = (
    "question answer : the author was born in paris rome 1990 1985 and wrote books about cats dogs war "
    "where is who what when did , . ? - her his name jean luc marie novel city year"
).split()

RECORDS = [
    {
        "question": "where was the author born ?",
        "answer": "the author was born in paris .",
        "paraphrased_answer": "paris , the author was born in .",
        "paraphrased_question": "what city was the author born in ?",
        "perturbed_answer": ["the author was born in rome .", "the author was born in 1990 ."],
        "fact": "paris",
        "fact_span": [23, 28],
    },
    {
        "question": "when did jean luc write the novel ?",
        "answer": "1985",
        "paraphrased_answer": "in 1985 .",
        "paraphrased_question": "what year did jean luc write the novel ?",
        "perturbed_answer": ["1990", "in 1990 .", "the year 1990"],
        "fact": "1985",
        "fact_span": [0, 4],
    },
    {
        "question": "who wrote books about cats ?",
        "answer": "her name was marie and she wrote books about cats and dogs .",
        "paraphrased_answer": "marie wrote books about cats .",
        "paraphrased_question": "what is the name of the author who wrote about cats ?",
        "perturbed_answer": ["jean wrote books about war .", "luc wrote about dogs ."],
        "fact": "marie",
        "fact_span": [13, 18],
    },
]


@pytest.fixture(scope="module")
def tokenizer():
    vocab = {tok: i for i, tok in enumerate(["<pad>", "<s>", "</s>", "<unk>", *WORDS])}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>"
    )


@pytest.fixture(scope="module")
def model(tokenizer):
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    m = LlamaForCausalLM(config).eval()
    with torch.no_grad():  # larger weights than the default init: sharper, more varied predictions
        for p in m.parameters():
            p.mul_(8.0) if p.dim() == 2 else None
    return m


def random_pairs(rng, vocab, n):
    return [
        (
            rng.integers(4, vocab, size=rng.integers(1, 9)).tolist(),
            rng.integers(3, vocab, size=rng.integers(1, 12)).tolist(),
        )
        for _ in range(n)
    ]


def test_batched_logprobs_equal_one_at_a_time(model, tokenizer):
    pairs = random_pairs(np.random.default_rng(0), len(tokenizer), 10)
    prompts, answers = [p for p, _ in pairs], [a for _, a in pairs]
    batched = score_answers(model, prompts, answers, tokenizer.pad_token_id, batch_size=6)
    for (p, a), scores in zip(pairs, batched):
        single = score_answers(model, [p], [a], tokenizer.pad_token_id, batch_size=1)[0]
        np.testing.assert_allclose(scores.token_logprobs, single.token_logprobs, atol=1e-5)
        np.testing.assert_array_equal(scores.argmax_matches, single.argmax_matches)
        # Reference: the loss library's sequence log-prob on the unpadded sequence.
        ids = torch.tensor([p + a])
        labels = torch.tensor([[-100] * len(p) + a])
        with torch.no_grad():
            ref = sequence_logprob(model(input_ids=ids).logits, labels).item()
        assert scores.sum_logprob == pytest.approx(ref, abs=1e-4)
        assert scores.n_tokens == len(a)


def test_answer_logprobs_matches_encode_qa(model, tokenizer):
    from bs_ref.data.qa import encode_qa

    questions = [r["question"] for r in RECORDS]
    answers = [r["answer"] for r in RECORDS]
    total, counts = tofu.answer_logprobs(model, tokenizer, questions, answers, batch_size=2)
    for q, a, s, n in zip(questions, answers, total, counts):
        enc = encode_qa(tokenizer, q, a)
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([enc["input_ids"]])).logits
        assert s == pytest.approx(sequence_logprob(logits, torch.tensor([enc["labels"]])).item(), abs=1e-4)
        assert n == sum(label != -100 for label in enc["labels"])


def test_batched_greedy_generation_equals_unbatched(model, tokenizer):
    rng = np.random.default_rng(1)
    prompts = [rng.integers(4, len(tokenizer), size=rng.integers(1, 10)).tolist() for _ in range(9)]
    stop = [tokenizer.eos_token_id]
    batched = generate(model, prompts, tokenizer.pad_token_id, stop, max_new_tokens=12, batch_size=4)
    for p, out in zip(prompts, batched):
        single = generate(model, [p], tokenizer.pad_token_id, stop, max_new_tokens=12, batch_size=1)[0]
        assert out == single
        assert tokenizer.eos_token_id not in out[0].tokens and len(out[0].tokens) <= 12
    texts = tofu.generate_answers(model, tokenizer, [r["question"] for r in RECORDS], max_new_tokens=8, batch_size=2)
    assert texts == [tofu.generate_answers(model, tokenizer, [r["question"]], max_new_tokens=8)[0] for r in RECORDS]


class BigramLM(torch.nn.Module):
    """A 'model' whose greedy next token after token t is t + 1: ES/EM can be checked by hand."""

    def __init__(self, vocab: int = 12):
        super().__init__()
        self.table = torch.nn.Parameter(torch.eye(vocab).roll(1, dims=1) * 5.0)

    def forward(self, input_ids, attention_mask=None):
        return type("Out", (), {"logits": self.table[input_ids]})()


def test_es_em_hand_checkable():
    lm = BigramLM()
    # prompt [2]; answer 3 4 5 9: predictions after 2,3,4,5 are 3,4,5,6 -> matches T T T F.
    # answer 7 8 4 5: predictions 3,8,9,5 -> F T F T.   answer 3 4 5 6: all match.
    scores = score_answers(lm, [[2], [2], [2]], [[3, 4, 5, 9], [7, 8, 4, 5], [3, 4, 5, 6]], pad_token_id=0)
    assert [s.argmax_matches.tolist() for s in scores] == [
        [True, True, True, False],
        [False, True, False, True],
        [True, True, True, True],
    ]
    assert [paper.extraction_strength(s.argmax_matches) for s in scores] == [0.0, 0.25, 1.0]  # k* = 4, 3, 0
    assert [paper.exact_memorisation(s.argmax_matches) for s in scores] == [0.75, 0.5, 1.0]


def test_fact_token_mask(tokenizer):
    rec = RECORDS[0]
    ids = tokenizer(rec["answer"], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    mask = leakage.fact_token_mask(tokenizer, rec["answer"], rec["fact_span"], ids)
    assert mask.tolist() == [False, False, False, False, False, True, False, False]
    assert leakage.fact_token_logprob(np.arange(8.0), mask) == 5.0
    with pytest.raises(ValueError, match="differ"):
        leakage.fact_token_mask(tokenizer, rec["answer"], rec["fact_span"], ids[1:])


def test_evaluate_split_and_aggregate(model, tokenizer, tmp_path):
    retain = [{k: v for k, v in r.items() if not k.startswith("fact")} for r in RECORDS]
    analogue = [
        {"question": r["question"], "answer": r["answer"], "perturbed_answer": r["perturbed_answer"]} for r in RECORDS
    ]
    splits = {"forget": RECORDS, "retain": retain, "real_authors": analogue, "world_facts": analogue}
    per_split = tofu.evaluate(model, tokenizer, splits, max_new_tokens=10, batch_size=4, num_samples=3)
    forget = per_split["forget"]
    total, counts = tofu.answer_logprobs(
        model, tokenizer, [r["question"] for r in RECORDS], [r["answer"] for r in RECORDS]
    )
    for it, s, n in zip(forget, total, counts):
        assert it["nll_answer"] == pytest.approx(-s / n, rel=1e-9)
        assert it["prob"] == pytest.approx(math.exp(-it["nll_answer"]))
        assert 0 <= it["es"] <= it["em"] <= 1 and 0 < it["tr_mod"] < 1
        assert isinstance(it["fact_leak"], bool) and it["fact_logprob"] < 0 and it["fact_n_tokens"] == 1
        assert len(it["samples"]) == 3 and isinstance(it["fact_leak_any_of_n"], bool)
    assert "fact_leak" not in per_split["retain"][0]
    # real authors: Prob is the answer's share among answer + perturbed options
    ra = per_split["real_authors"][0]
    assert ra["prob"] == pytest.approx(tofu.answer_prob(ra["nll_answer"], ra["nll_perturbed"], "real_authors"))
    assert ra["nll_paraphrased"] == ra["nll_answer"]

    retain_model_forget = tofu.evaluate_split(model, tokenizer, retain, "forget", max_new_tokens=4)
    out = tofu.aggregate(per_split, retain_model_forget, "tofu")
    assert out["forget_quality"] == pytest.approx(1.0)  # same model, same truth ratios
    assert 0 <= out["model_utility"] <= 1 and 0 < out["mem"] <= 1 and out["agg"] is not None
    assert out["fact_leak_rate"] is not None and out["fact_leak_rate_any_of_n"] >= out["fact_leak_rate"] - 1.0
    assert out["convention"] == "tofu" and out["n"] == 3
    path = tofu.write_eval_log(tmp_path / "eval.json", per_split)
    assert tofu.aggregate(tofu.read_eval_log(path), retain_model_forget) == out


def test_evaluate_split_rejects_bad_records(model, tokenizer):
    with pytest.raises(ValueError, match="paraphrased_answer"):
        tofu.evaluate_split(model, tokenizer, [{"question": "q", "answer": "a", "perturbed_answer": ["b"]}], "forget")
    with pytest.raises(ValueError, match="unknown split kind"):
        tofu.evaluate_split(model, tokenizer, RECORDS, "holdout")
    with pytest.raises(ValueError, match="empty"):
        tofu.evaluate_split(model, tokenizer, [], "retain")


def test_belief_bands(model, tokenizer):
    questions = [r["question"] for r in RECORDS]
    candidates = [[r["answer"], r["paraphrased_answer"], *r["perturbed_answer"][:2], "the city ."] for r in RECORDS]
    bands = leakage.build_belief_bands(model, tokenizer, questions, candidates)
    for lp, band in zip(bands.original_logprob, bands.band):
        assert lp == sorted(lp, reverse=True) and band == ["high", "high", "mid", "mid", "low"]
    scored = leakage.score_belief_bands(model, tokenizer, bands, answers=[r["answer"] for r in RECORDS])
    assert scored["high"] >= scored["mid"] >= scored["low"]  # same model: the ranking it was built from
    assert scored["n_high"] == 6 and scored["n_low"] == 3 and scored["n_target"] == 3
    sampled = leakage.build_belief_bands(model, tokenizer, questions[:1], num_samples=4, max_new_tokens=6)
    assert 1 <= len(sampled.candidates[0]) <= 4


def test_semantic_similarity():
    ok, why = leakage.semantic_model_available()
    if not ok:
        pytest.skip(why)
    sim = leakage.semantic_similarity(
        ["The author was born in Paris.", "The author was born in Paris."],
        ["The author was born in Paris.", "Cats eat fish every morning."],
    )
    assert sim[0] == pytest.approx(1.0, abs=1e-4) and sim[1] < 0.5


def test_synthetic_benchmark_end_to_end():
    """The synthetic benchmark (annotated facts, BPE tokenizer) through evaluate_split and aggregate."""
    from bs_ref.data.synthetic import SyntheticConfig, benchmark_texts, build_benchmark
    from bs_ref.models import TinyLlamaConfig, build_tiny_llama, train_tokenizer

    bench = build_benchmark(SyntheticConfig.smoke())
    tok = train_tokenizer(benchmark_texts(bench), vocab_size=512)
    lm = build_tiny_llama(
        len(tok), TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2), tok
    )
    forget = bench["forget10_perturbed"]
    items = tofu.evaluate_split(lm, tok, forget, "forget", max_new_tokens=6, num_samples=2)
    for rec, it in zip(forget, items):
        mask = leakage.fact_token_mask(tok, rec["answer"], rec["fact_span"], encode_pair(tok, "q", rec["answer"])[1])
        covered = tok.decode([t for t, m in zip(encode_pair(tok, "q", rec["answer"])[1], mask) if m])
        assert rec["fact"] in covered  # the masked tokens spell the fact (plus at most a boundary character)
        assert it["fact_n_tokens"] == int(mask.sum()) and it["fact_logprob"] < 0
        assert isinstance(it["fact_leak_paraphrased_question"], bool)
        assert it["fact_logprob_paraphrased"] < 0 and it["fact_logprob_heldout"] < 0 and it["nll_heldout"] > 0
    out = tofu.aggregate({"forget": items}, items)
    assert out["forget_quality"] == pytest.approx(1.0) and out["model_utility"] is None
    assert out["fact_leak_rate"] is not None and out["fact_leak_rate_any_of_n"] is not None
    assert 0 < out["heldout_prob"] < 1 and out["fact_logprob_heldout"] < 0
    assert tok.eos_token_id in stop_token_ids(tok, lm, template="chat")


def test_real_tofu_records_evaluate(tofu_dir, model, tokenizer):
    """Real TOFU records (schema of locuslab/TOFU) go through the same evaluation code."""
    from bs_ref.data.qa import load_tofu

    forget = load_tofu(tofu_dir, "forget01_perturbed")[:4]
    real = load_tofu(tofu_dir, "real_authors_perturbed")[:4]
    items = tofu.evaluate(model, tokenizer, {"forget": forget, "real_authors": real}, max_new_tokens=4)
    assert len(items["forget"][0]["nll_perturbed"]) == 5 and len(items["real_authors"][0]["nll_perturbed"]) == 3
    assert "fact_leak" not in items["forget"][0]
    out = tofu.aggregate(items)
    assert 0 < out["forget_truth_ratio"] <= 1 and 0 < out["real_authors_prob"] < 1


def test_a_diverged_model_is_evaluated_not_crashed(model, tokenizer):
    """Logits blown up as by a diverged GA run (``--preset smoke --lr 5``): mean NLLs in the thousands, where
    exp(NLL) overflows. Every metric is still a number in its range."""
    diverged = copy.deepcopy(model)
    with torch.no_grad():
        diverged.lm_head.weight.mul_(1e4)
    retain = [{k: v for k, v in r.items() if not k.startswith("fact")} for r in RECORDS]
    analogue = [
        {"question": r["question"], "answer": r["answer"], "perturbed_answer": r["perturbed_answer"]} for r in RECORDS
    ]
    splits = {"forget": RECORDS, "retain": retain, "real_authors": analogue, "world_facts": analogue}
    per_split = tofu.evaluate(diverged, tokenizer, splits, max_new_tokens=4)
    nlls = [it["nll_answer"] for it in per_split["forget"]] + [it["nll_paraphrased"] for it in per_split["forget"]]
    assert max(nlls) > 710  # exp(-NLL) underflows, and exp(NLL) would overflow
    log_ratios = [tofu.log_truth_ratio(it["nll_paraphrased"], it["nll_perturbed"]) for it in per_split["retain"]]
    assert max(log_ratios) > 710  # R = exp(log R) overflowed here before the log-space rewrite
    out = tofu.aggregate(per_split, per_split["forget"])
    for name in ("model_utility", "forget_quality", "mem", "util", "agg", "para_prob", "tr_mod", "forget_truth_ratio"):
        assert 0.0 <= out[name] <= 1.0, name
    for it in per_split["forget"]:
        assert 0.0 <= it["truth_ratio"] <= math.inf and 0.0 <= it["tr_mod"] <= 1.0 and 0.0 <= it["prob"] <= 1.0


def test_fluency_classifier_from_a_local_checkpoint(tokenizer, tmp_path):
    """The hook for a real fluency classifier: any local text-classification checkpoint, never downloaded."""
    from transformers import LlamaForSequenceClassification

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        pad_token_id=tokenizer.pad_token_id,
        id2label={0: "clean", 1: "noise"},
        label2id={"clean": 0, "noise": 1},
    )
    torch.manual_seed(0)
    LlamaForSequenceClassification(config).save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    scores, source = paper.fluency_scores(["the author was born in paris .", "cats cats cats", ""], tmp_path)
    assert source == f"classifier:{tmp_path.name}"
    assert scores.shape == (3,) and np.all((scores[:2] > 0) & (scores[:2] < 1)) and scores[2] == 0.0
    with pytest.raises(ValueError, match="labels are"):
        paper.load_fluency_classifier(tmp_path, clean_label="fluent")
    with pytest.raises(ValueError, match="not a directory"):
        paper.load_fluency_classifier(tmp_path / "missing")


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(model, tokenizer):
    prompts = [[5, 6, 7], [8, 9]]
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    three_samples = Decoding(max_new_tokens=6, num_samples=3)
    a = generate(model, prompts, tokenizer.pad_token_id, [tokenizer.eos_token_id], three_samples)
    after = torch.rand(1)
    b = generate(model, prompts, tokenizer.pad_token_id, [tokenizer.eos_token_id], three_samples)
    assert torch.equal(before, after) and a == b and all(len(row) == 3 for row in a)


@pytest.mark.parametrize("seed", [0, 3])
def test_any_of_n_samples_are_drawn_with_the_decoding_and_the_seed_given(monkeypatch, seed):
    """The any-of-N samples use the run's seed and the decoding's own nucleus mass. (Before this was fixed the seed
    went into top_p: at seed 0 the N samples were N copies of the greedy answer, and every seed drew stream 0.)"""
    from bs_ref.data.synthetic import SyntheticConfig, benchmark_texts, build_benchmark
    from bs_ref.models import TinyLlamaConfig, build_tiny_llama, train_tokenizer

    bench = build_benchmark(SyntheticConfig.smoke())
    tok = train_tokenizer(benchmark_texts(bench), vocab_size=512)
    lm = build_tiny_llama(len(tok), TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_layers=2, num_heads=2))
    calls, real = [], tofu.generate_answers

    def spy(model, tokenizer, questions, template, decoding, *rest):
        calls.append((decoding, rest))
        return real(model, tokenizer, questions, template, decoding, *rest)

    monkeypatch.setattr(tofu, "generate_answers", spy)
    forget = bench["forget10_perturbed"][:3]
    tofu.evaluate_split(lm, tok, forget, "forget", max_new_tokens=6, num_samples=4, seed=seed)
    sampled = [(d, rest) for d, rest in calls if d.num_samples > 0]
    assert len(sampled) == 1
    decoding, rest = sampled[0]
    assert decoding.num_samples == 4 and decoding.top_p == 1.0 and decoding.temperature == 1.0
    assert rest == (seed,)
