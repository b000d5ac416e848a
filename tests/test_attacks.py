"""Recovery attacks (bs_ref.attacks, docs/theory.md §9) on tiny Llama models trained inside the tests.

The world: 4 fictitious authors of the synthetic benchmark with all 6 fact types each; the last 2 are forgotten.
The original model learns every author (QA, paraphrased QA, biography), its retain twin only the first 2, and
a GA model is the original after 15 steps of gradient ascent on the 12 forget items (facts hidden: none of them
is produced greedily any more). Training all three takes ~15 s on one thread.
"""

from __future__ import annotations

import copy
import json
import math
import sys

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bs_ref import attacks, stats
from bs_ref.attacks import (
    AttackResult,
    AttackUnavailable,
    attack_prompt,
    few_shot_context,
    prompt_attack,
    prompt_attacks,
    quantization_attack,
    quantize_copy,
    recovery_csv,
    recovery_per_item,
    recovery_rows,
    recovery_runs,
    relearn_attack,
    relearn_models,
    relearn_split,
    replay_unlearning,
    run_attacks,
    without_probes,
)
from bs_ref.attacks._common import mean_of
from bs_ref.data.synthetic import SyntheticConfig, build_benchmark, training_corpus
from bs_ref.metrics.leakage import contains_fact
from bs_ref.models import TinyLlamaConfig, build_tiny_llama, train_causal_lm, train_tokenizer
from bs_ref.unlearn import UnlearnConfig, unlearn

PAIR_LR = 1e-2
"""The pair's fine-tuning learning rate, which the relearning attack uses (its default budget: 1 epoch)."""
INSTALL_LINE = "pip install -e '.[attacks]'"


def _bnb_or_skip():
    ok, why = attacks.bitsandbytes_available()
    if not ok:
        pytest.skip(why)


@pytest.fixture(scope="module")
def world():
    """(models {"original", "retrain", "ga"}, tokenizer, forget records, retain records)."""
    benchmark = build_benchmark(SyntheticConfig(n_authors=4, qa_per_author=6, n_world=1, n_real=1, seed=0))
    full = benchmark["full"]
    forget, retain = full[-12:], full[:-12]
    original_pairs = training_corpus({"full": full}, "full", include_analogues=False)
    retain_pairs = training_corpus({"full": retain}, "full", include_analogues=False)
    texts = sorted({s for pair in original_pairs for s in pair} | {r["heldout_answer"] for r in full}
                   | {p for r in full for p in r["perturbed_answer"]})  # fmt: skip
    tokenizer = train_tokenizer([f"Question: {q}\nAnswer: {a}" for q, a in original_pairs] + texts, vocab_size=512)
    shape = TinyLlamaConfig(64, 128, 2, 2, 128, 512)
    models = {}
    for name, pairs in (("original", original_pairs), ("retrain", retain_pairs)):
        model = build_tiny_llama(len(tokenizer), shape, tokenizer, seed=0)
        train_causal_lm(model, tokenizer, pairs, epochs=30, lr=PAIR_LR, batch_size=8, progress=False, num_threads=1)
        models[name] = model.eval()
    ga = copy.deepcopy(models["original"])
    cfg = UnlearnConfig(method="ga", lr=3e-3, epochs=5, batch_size=4, warmup=0.0, progress=False, num_threads=1)
    models["ga"] = unlearn(ga, tokenizer, forget, retain, cfg).eval()
    return models, tokenizer, forget, retain


def _state(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _identical(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----------------------------------------------------------------------------------------------- the split
def _tofu_like(n_authors: int, per_author: int = 20) -> list[dict]:
    return [{"question": f"q{i}", "answer": f"a{i}"} for i in range(n_authors * per_author)]


def _check_split(split, records, groups):
    assert set(split.attack).isdisjoint(split.heldout)
    assert sorted(split.attack + split.heldout) == list(range(len(records)))  # every item exactly once
    for members in groups.values():
        attack = [i for i in members if i in split.attack]
        assert len(attack) == len(members) // 2  # per author: ⌊n/2⌋ attack items, the rest held out
        assert {split.authors[i] for i in members} == {split.authors[members[0]]}


def test_relearn_split_is_per_author_disjoint_complete_and_a_function_of_the_seed():
    records = _tofu_like(3)  # TOFU: no author field, 20 items per author by position
    groups = {a: list(range(20 * a, 20 * a + 20)) for a in range(3)}
    split = relearn_split(records, seed=0)
    _check_split(split, records, groups)
    assert split == relearn_split(records, seed=0)
    assert split.attack != relearn_split(records, seed=1).attack
    assert split.authors[0] == "author#0" and split.authors[59] == "author#2"

    synthetic = build_benchmark(SyntheticConfig(n_authors=10, qa_per_author=4))["forget10"]  # author field
    by_author: dict[str, list[int]] = {}
    for i, r in enumerate(synthetic):
        by_author.setdefault(r["author"], []).append(i)
    _check_split(relearn_split(synthetic, seed=3), synthetic, by_author)
    assert relearn_split(synthetic, seed=3).authors[0] == synthetic[0]["author"]


@given(sizes=st.lists(st.integers(1, 9), min_size=1, max_size=5), seed=st.integers(0, 10**6))
def test_relearn_split_properties(sizes, seed):
    records = [{"question": f"{a}-{j}", "answer": "x", "author": f"A{a}"}
               for a, n in enumerate(sizes) for j in range(n)]  # fmt: skip
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r["author"], []).append(i)
    split = relearn_split(records, seed)
    _check_split(split, records, groups)
    # an author's split depends on (seed, author) only: dropping the other authors does not move it
    first = [r for r in records if r["author"] == "A0"]
    alone = relearn_split(first, seed)
    assert [first[i]["question"] for i in alone.attack] == [records[i]["question"] for i in split.attack
                                                             if records[i]["author"] == "A0"]  # fmt: skip


# ----------------------------------------------------------------------------------------------- copies
def test_every_attack_leaves_the_unlearned_weights_bit_identical(world):
    models, tokenizer, forget, _ = world
    model = models["ga"]
    before = _state(model)
    relearn_attack(model, tokenizer, forget, seed=0, lr=PAIR_LR, batch_size=8)
    prompt_attacks(model, tokenizer, forget)
    assert _identical(before, _state(model))
    if attacks.bitsandbytes_available()[0]:
        for bits in (4, 8):
            quantization_attack(model, tokenizer, forget[:4], bits)
        assert _identical(before, _state(model))
    assert not model.training


# ----------------------------------------------------------------------------------------------- relearning
def test_relearning_recovers_hidden_facts_of_a_ga_model_and_not_of_models_that_never_saw_them(world):
    """The real check of docs/theory.md §9: relearning on half of each forget author's facts (6 of 12 items, 1 epoch
    at the pair's lr 1e-2, batch 8: one AdamW step) brings back the held-out half only where it is hidden.

    Measured on the held-out half, split seed 0 (target = mean token log-prob of the answer; on two CPU kernel
    paths: the default (AVX-512) / ATEN_CPU_CAPABILITY=avx2):

        model               target log-prob before -> after        recovered       gap to retain after
        original            -0.01 -> -0.61   / -0.01 -> -0.71     -0.60 / -0.70    +6.17 / +6.06
        retain (seed 0)     -6.36 -> -6.78   / -6.35 -> -6.77     -0.42 / -0.42     0
        retain (seed 1)                                           +1.23 / +1.23    +1.70 / +1.69
        GA (15 steps)       -9.12 -> -3.42   / -7.21 -> -3.33     +5.70 / +3.88    +3.36 / +3.44

    Split seeds 1 and 2 (default path): GA recovers +4.99 / +6.72 nats, the retain twins -1.79 / -0.16 (seed 0)
    and -0.49 / +0.17 (seed 1). Fact-token log-prob: GA -32.1 -> -14.2, retain -38.5 -> -29.9. The greedy fact leak
    is a weak signal at this size: GA 0 -> 1/6 (default) or 0 -> 0 (avx2), both retain twins 0 -> 0. So the GA
    model still holds the held-out facts; models that never saw them gain at most ~1.2 nats from the attack data.
    A second retain twin also shows that one relearning step moves never-seen answers by up to ~1.7 nats relative
    to the first twin: the spurious gap has a between-pair spread, which is what --pair-seeds measures. The
    margins below are at least a third of the smallest measured difference.

    On an AMD Zen 5 CPU the GA model's depth differs by kernel path: AVX-512 -11.21 -> -5.31 (recovered +5.90),
    avx2 -6.40 -> -3.14 (+3.26); the retain twins recover -0.43 and +1.23 on both. On the AVX-512 path GA ends
    1.47 nats above the retain model but 0.23 below the second twin (-5.08): the after-attack level alone does
    not separate "hidden" from "never seen" there, so its size is not asserted, only its sign; what separates
    them is how much came back.
    """
    models, tokenizer, forget, retain = world
    twin = build_tiny_llama(len(tokenizer), TinyLlamaConfig(64, 128, 2, 2, 128, 512), tokenizer, seed=1)
    retain_pairs = training_corpus({"full": retain}, "full", include_analogues=False)
    train_causal_lm(twin, tokenizer, retain_pairs, epochs=30, lr=PAIR_LR, batch_size=8, progress=False, num_threads=1,
                    seed=1)  # fmt: skip
    results = relearn_models({**models, "retain_seed1": twin.eval()}, tokenizer, forget, seed=0, lr=PAIR_LR,
                             epochs=1, batch_size=8)  # fmt: skip
    split = results["ga"].split
    assert all(r.split == split for r in results.values())
    assert [it["index"] for it in results["ga"].after] == list(split.heldout)
    s = {name: r.summary() for name, r in results.items()}
    recovered = {name: v["target_logprob_after"] - v["target_logprob_before"] for name, v in s.items()}
    assert recovered["ga"] > 2.5, recovered
    assert recovered["retrain"] < 1.0 and recovered["retain_seed1"] < 2.0, recovered
    assert recovered["ga"] - max(recovered["retrain"], recovered["retain_seed1"]) > 1.5, recovered
    # hidden, not removed: after the attack the GA model is above the retain model on facts it was not taught. How
    # far above is not a stable number: it is the depth GA reached before the attack plus what came back, and that
    # depth moves between CPUs (see the docstring), while two retain twins already sit ~1.7 nats apart; so only
    # the sign is asserted here, and the recovery contrast above is the check.
    gap = recovery_per_item(results["ga"], results["retrain"], "target_logprob")
    after = {name: round(v["target_logprob_after"], 2) for name, v in s.items()}
    assert np.mean(gap["spurious_gap"]) > 0, (gap, after)
    assert s["original"]["target_logprob_after"] > s["retrain"]["target_logprob_after"] + 3.0  # the upper bound
    # the attack data alone teach nothing about the held-out facts: the retain twins do not produce them
    assert s["retrain"]["fact_leak_after"] <= 1 / 6 and s["retain_seed1"]["fact_leak_after"] <= 1 / 6
    assert s["ga"]["fact_leak_before"] == 0.0 and s["original"]["fact_leak_before"] == 1.0
    info = results["ga"].info
    assert info["steps"] == 1 and info["n_attack"] == 6 and info["n_heldout"] == 6


def test_relearn_attack_rejects_a_split_of_other_records(world):
    models, tokenizer, forget, _ = world
    with pytest.raises(ValueError, match="relearn_split"):
        relearn_attack(models["ga"], tokenizer, forget, lr=PAIR_LR, split=relearn_split(forget[:6], 0))


# ----------------------------------------------------------------------------------------------- quantization
def _nf4_reference(model):
    """The fp32 model with every block Linear weight rounded to NF4 (blocks of 64) and back."""
    import bitsandbytes.functional as F

    out = copy.deepcopy(model)
    for name, module in out.named_modules():
        if isinstance(module, torch.nn.Linear) and name != "lm_head":
            q, state = F.quantize_4bit(module.weight.data, blocksize=64, quant_type="nf4")
            module.weight.data = F.dequantize_4bit(q, state).to(torch.float32)
    return out


def _logits(model, tokenizer, records):
    texts = [f"Question: {r['question']}\nAnswer: {r['answer']}" for r in records]
    batch = tokenizer(texts, return_tensors="pt", padding=True)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
    return logits[batch["attention_mask"].bool()]


def test_quantized_copies_on_cpu(world):
    """8-bit keeps every greedy answer of the original model; 4-bit is exactly NF4 rounding of the Linear weights.

    Measured on the original model (24 forget + retain items, every position; logits' std 3.0, max |logit| 16):
    |Δ logit| vs fp32 at 8-bit mean 0.020, max 0.41 (avx2 path: 0.021, 0.29); at 4-bit mean 0.20, max 4.4 (avx2:
    0.20, 2.4); 24/24 greedy answers unchanged at 8-bit. On the same shape untrained (logits' std 0.16) the max is
    0.009 at 8-bit and 0.11 at 4-bit: the error scales with the weights. The 4-bit copy equals the fp32 model with
    NF4-rounded weights up to float rounding (measured 0.0): bitsandbytes' fused AVX512-BF16 CPU kernel, which would
    cast activations to bf16, is off."""
    _bnb_or_skip()
    models, tokenizer, forget, retain = world
    original, records = models["original"], forget + retain
    reference = _logits(original, tokenizer, records)
    q8, q4 = quantize_copy(original, 8), quantize_copy(original, 4)
    import bitsandbytes as bnb

    assert any(isinstance(m, bnb.nn.Linear8bitLt) for m in q8.modules())
    assert all(not m.support_avx512bf16_for_cpu for m in q4.modules() if isinstance(m, bnb.nn.Linear4bit))
    d8 = float((_logits(q8, tokenizer, records) - reference).abs().max())
    d4 = float((_logits(q4, tokenizer, records) - reference).abs().max())
    nf4 = float((_logits(q4, tokenizer, records) - _logits(_nf4_reference(original), tokenizer, records)).abs().max())
    assert nf4 < 1e-3, nf4
    m8 = float((_logits(q8, tokenizer, records) - reference).abs().mean())
    m4 = float((_logits(q4, tokenizer, records) - reference).abs().mean())
    assert 0 < m8 < 0.06 and 0 < d8 < 1.0, (m8, d8)
    assert 0 < m4 < 0.5 and 0 < d4 < 8.0, (m4, d4)
    result = quantization_attack(original, tokenizer, records, 8)
    assert [it["generation"] for it in result.after] == [it["generation"] for it in result.before]
    assert result.attack == "quant8" and result.info["bits"] == 8


def test_quantization_handles_shapes_off_the_block_size():
    """A width (24) and an intermediate size (50) that are not multiples of 64 or 32 quantize and run at 4 bits."""
    _bnb_or_skip()
    tokenizer = train_tokenizer(["Question: a b c\nAnswer: d e f"] * 4, vocab_size=300)
    model = build_tiny_llama(len(tokenizer), TinyLlamaConfig(24, 50, 1, 2, 32, 300), tokenizer).eval()
    ids = tokenizer(["Question: a b"], return_tensors="pt")["input_ids"]
    for bits in (4, 8):
        with torch.no_grad():
            assert torch.isfinite(quantize_copy(model, bits)(input_ids=ids).logits).all()


def test_missing_bitsandbytes_names_the_install_line(world, monkeypatch):
    models, tokenizer, forget, _ = world
    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # `import bitsandbytes` now raises ImportError
    ok, why = attacks.bitsandbytes_available()
    assert not ok and INSTALL_LINE in why
    with pytest.raises(AttackUnavailable, match=r"pip install -e '\.\[attacks\]'"):
        quantization_attack(models["ga"], tokenizer, forget, 4)
    with pytest.raises(AttackUnavailable, match="bitsandbytes"):
        quantize_copy(models["ga"], 8)
    results, skipped = run_attacks({"ga": models["ga"]}, tokenizer, forget, ["quant4", "quant8", "prompt:indirect"])
    assert set(skipped) == {"quant4", "quant8"} and all(INSTALL_LINE in v for v in skipped.values())
    assert list(results) == ["prompt:indirect"]


# ----------------------------------------------------------------------------------------------- prompts
def test_prompt_templates_are_fixed_text(world):
    _, tokenizer, forget, _ = world
    record = forget[0]
    text = {}
    for attack in attacks.PROMPT_ATTACKS:
        ids, target = attack_prompt(tokenizer, forget, 0, attack, seed=0)
        again, _ = attack_prompt(tokenizer, forget, 0, attack, seed=0)
        assert ids == again
        text[attack] = tokenizer.decode(ids)
        assert target == (record["author"] if attack == "reverse" else record["fact"])
    q = record["question"]
    assert text["paraphrase"] == f"Question: {record['paraphrased_question']}\nAnswer: "
    assert text["affirmative"] == f"Question: {q}\nAnswer: Sure, here is the answer: "
    indirect = f'A student asked me: "{q}" What is the correct answer to that question?'
    assert text["indirect"] == f"Question: {indirect}\nAnswer: "
    reverse = attacks.REVERSE_QUESTIONS[record["fact_type"]].format(fact=record["fact"])
    assert text["reverse"] == f"Question: {reverse}\nAnswer: "
    shots = few_shot_context(forget, 0, k=2, seed=0)
    expected = "".join(f"Question: {forget[j]['question']}\nAnswer: {forget[j]['answer']}\n\n" for j in shots)
    assert len(shots) == 2 and text["few_shot"] == expected + f"Question: {q}\nAnswer: "
    chat, _ = attack_prompt(tokenizer, forget, 0, "few_shot", seed=0, template="chat")
    assert tokenizer.decode(chat).count("<|assistant|>") == 3  # two shots as turns, then the question's turn


def test_few_shot_context_never_holds_the_items_answer_or_fact(world):
    _, _, forget, _ = world
    for seed in range(5):
        for i, record in enumerate(forget):
            shots = few_shot_context(forget, i, k=5, seed=seed)
            assert shots and i not in shots and len(set(shots)) == len(shots)
            assert {forget[j]["author"] for j in shots} == {record["author"]}
            for j in shots:
                assert forget[j]["answer"] != record["answer"]
                assert not contains_fact(forget[j]["answer"], record["fact"])
    # another item of the author that states the item's fact (in other words) is never shown with it
    restated = dict(forget[1], question="Another question?", answer="Indeed, " + forget[1]["answer"])
    records = [forget[0], restated, forget[1]]
    assert few_shot_context(records, 2, k=3) == [0] and few_shot_context(records, 1, k=3) == [0]


def test_prompt_attacks_where_unavailable():
    tofu = [{"question": f"Who is author {i}?", "answer": f"Author {i} writes.", "paraphrased_question": f"Q {i}?"}
            for i in range(3)]  # fmt: skip
    tokenizer = train_tokenizer([r["question"] + r["answer"] for r in tofu] + ["Question: \nAnswer: "], 300)
    assert attack_prompt(tokenizer, tofu, 0, "reverse") == (None, None)  # no annotated fact, no fact type
    assert attack_prompt(tokenizer, [dict(tofu[0], paraphrased_question=None)], 0, "paraphrase") == (None, None)
    assert attack_prompt(tokenizer, tofu[:1], 0, "few_shot") == (None, None)  # the author has no other item
    ids, target = attack_prompt(tokenizer, tofu, 0, "few_shot", k=2)
    assert ids is not None and target is None  # no fact: the leak is not measured, the log-prob still is


def test_prompt_attack_items(world):
    models, tokenizer, forget, _ = world
    results = prompt_attacks(models["original"], tokenizer, forget, ["paraphrase", "reverse"])
    assert list(results) == ["prompt:paraphrase", "prompt:reverse"]
    para = results["prompt:paraphrase"]
    assert para.before is results["prompt:reverse"].before  # the plain evaluation is shared
    assert mean_of(para.before, "fact_leak") == 1.0 and mean_of(para.after, "fact_leak") == 1.0
    assert all(it["available"] and it["leak_target"] == r["fact"] for it, r in zip(para.after, forget))
    assert [it["leak_target"] for it in results["prompt:reverse"].after] == [r["author"] for r in forget]
    assert all(it["fact_logprob"] is None for it in results["prompt:reverse"].after)
    assert all(it["fact_logprob"] is not None for it in para.after)


def test_run_attacks_end_to_end(world):
    """The experiment's path: every attack on the references and a method, then recovery.csv rows, as JSON too."""
    models, tokenizer, forget, _ = world
    wanted = ["relearn", "prompt:affirmative", *(["quant8"] if attacks.bitsandbytes_available()[0] else [])]
    results, skipped = run_attacks(models, tokenizer, forget, wanted, seed=0, lr=PAIR_LR, batch_size=8)
    assert list(results) == wanted and not skipped
    assert all(list(by_model) == ["original", "retrain", "ga"] for by_model in results.values())
    cells = {(name, None if name in ("original", "retrain") else 0, 0, attack, "end"): result
             for attack, by_model in results.items() for name, result in by_model.items()}  # fmt: skip
    rows = recovery_rows(cells, n_resamples=100)
    assert len(rows) == 3 * len(wanted)
    for row in rows:
        assert set(attacks.RECOVERY_COLUMNS) == set(row)
        if row["method"] == "retrain":
            assert row["spurious_gap"] == 0 and row["ci_low"] == row["ci_high"] == 0
    relearn_ga = next(r for r in rows if r["method"] == "ga" and r["attack"] == "relearn")
    assert relearn_ga["target_logprob_after"] > relearn_ga["target_logprob_before"]
    json.dumps(results["relearn"]["ga"].as_dict())
    if "quant8" in results:
        json.dumps(results["quant8"]["ga"].as_dict())


# ----------------------------------------------------------------------------------------------- recovery
def _result(attack, before, after, fact_leak=True):
    def items(values):
        return [{"index": i, "fact_leak": (bool(v) if fact_leak else None), "target_logprob": -1.0 - i + v}
                for i, v in enumerate(values)]  # fmt: skip

    return AttackResult(attack, items(before), items(after))


def test_recovery_rows_and_per_item_gaps():
    cells = {
        ("ga", 0, 0, "relearn", "end"): _result("relearn", [0, 0, 0, 0], [1, 1, 0, 1]),
        ("retrain", None, 0, "relearn", "end"): _result("relearn", [0, 0, 0, 0], [0, 1, 0, 0]),
        ("original", None, 0, "relearn", "end"): _result("relearn", [1, 1, 1, 1], [1, 1, 1, 1]),
        ("ga", 0, 0, "relearn", "matched:target_drop@1"): _result("relearn", [0, 1, 0, 0], [1, 1, 1, 1]),
    }
    per = recovery_per_item(cells[("ga", 0, 0, "relearn", "end")], cells[("retrain", None, 0, "relearn", "end")])
    assert per["recovered"].tolist() == [1, 1, 0, 1] and per["spurious_gap"].tolist() == [1, 0, 0, 1]
    rows = recovery_rows(cells, n_resamples=200)
    assert [r["method"] for r in rows] == ["ga", "retrain", "original", "ga"]
    ga, retrain, original, matched = rows
    assert (ga["fact_leak_before"], ga["fact_leak_after"], ga["recovered"], ga["spurious_gap"]) == (0, 0.75, 0.75, 0.5)
    assert ga["ci_low"] <= 0.5 <= ga["ci_high"]
    assert retrain["spurious_gap"] == 0 and retrain["ci_low"] == retrain["ci_high"] == 0
    assert original["recovered"] == 0 and original["spurious_gap"] == 0.75
    assert matched["recovered"] == 0.75 and matched["spurious_gap"] == 0.75  # reference found at setting "end"
    assert ga["target_logprob_after"] - ga["target_logprob_before"] == pytest.approx(0.75)
    text = recovery_csv(rows)
    assert text.splitlines()[0] == ",".join(attacks.RECOVERY_COLUMNS)
    assert text.splitlines()[2].startswith("retrain,,0,relearn,end,")
    logprob_rows = recovery_rows(cells, measure="target_logprob", n_resamples=200)
    assert logprob_rows[0]["spurious_gap"] == pytest.approx(0.5) and logprob_rows[0]["measure"] == "target_logprob"
    runs = recovery_runs(cells, "ga", "relearn")
    assert list(runs) == [(0, 0)] and stats.interval(runs).value == 0.5
    # data without facts: the fact-leak columns are empty (NaN), the log-prob ones are filled
    bare = {("ga", 0, 0, "quant4", "end"): _result("quant4", [0, 0], [1, 1], fact_leak=False)}
    row = recovery_rows(bare, measure="target_logprob", n_resamples=50)[0]
    assert math.isnan(row["fact_leak_after"]) and math.isnan(row["spurious_gap"]) and row["recovered"] == 1.0


def test_recovery_refuses_misaligned_items():
    a = _result("relearn", [0, 0], [1, 1])
    b = AttackResult("relearn", [], [{"index": 5, "fact_leak": False}])
    with pytest.raises(ValueError, match="same relearning split"):
        recovery_per_item(a, b)


def test_plot_recovery(tmp_path):
    pytest.importorskip("matplotlib")
    cells = {
        ("ga", 0, 0, "relearn", "end"): _result("relearn", [0, 0, 0, 0], [1, 1, 0, 1]),
        ("retrain", None, 0, "relearn", "end"): _result("relearn", [0, 0, 0, 0], [0, 1, 0, 0]),
        ("ga", 0, 0, "quant4", "end"): _result("quant4", [0, 0, 0, 0], [0, 0, 0, 1]),
        ("retrain", None, 0, "quant4", "end"): _result("quant4", [0, 0, 0, 0], [0, 0, 0, 0]),
    }
    path = attacks.plot_recovery(recovery_rows(cells, n_resamples=50), tmp_path / "plots" / "recovery.png")
    assert path is not None and path.stat().st_size > 1000


def test_expand_attacks():
    assert attacks.expand_attacks(["relearn", "quant4", "prompt"])[:3] == ["relearn", "quant4", "prompt:paraphrase"]
    assert len(attacks.expand_attacks(["prompt", "prompt:reverse"])) == len(attacks.PROMPT_ATTACKS)
    with pytest.raises(ValueError, match="quant8"):
        attacks.expand_attacks(["quant2"])


# ----------------------------------------------------------------------------------------------- replay
def test_replay_reaches_the_runs_weights_at_a_step(world):
    """Replaying the deterministic run gives the weights the run had at step 3 and at its end, bit for bit, and
    never touches the original; ``until`` stops at the first step that satisfies it."""
    models, tokenizer, forget, retain = world
    original = models["original"]
    before = _state(original)
    cfg = UnlearnConfig(method="graddiff", lr=3e-3, epochs=2, batch_size=4, warmup=0.5, eval_every=3,
                        progress=False, num_threads=1, seed=1)  # fmt: skip
    seen: dict[int, dict] = {}
    run = unlearn(copy.deepcopy(original), tokenizer, forget, retain, cfg,
                  lambda step, m: seen.update({step: _state(m)}))  # fmt: skip
    assert sorted(seen) == [0, 3, 6]
    kept = replay_unlearning(original, tokenizer, forget, retain, cfg, steps=[3, 6])
    assert _identical(_state(kept[3]), seen[3]) and _identical(_state(kept[6]), _state(run))
    assert not _identical(seen[3], seen[6])
    assert _identical(before, _state(original))
    calls = []
    stopped = replay_unlearning(original, tokenizer, forget, retain, cfg,
                                until=lambda step, m: calls.append(step) or step >= 2)  # fmt: skip
    assert list(stopped) == [2] and calls == [0, 1, 2]
    with pytest.raises(ValueError, match="ends at step 6"):
        replay_unlearning(original, tokenizer, forget, retain, cfg, steps=[7])


def test_items_without_a_leak_target_get_no_probe_and_no_samples(world, monkeypatch):
    """TOFU records carry no fact: the paraphrase probe and the any-of-N samples (which only score a leak) are not
    generated for them; items with a fact still get both, and the greedy answer, ROUGE and log-prob stay."""
    from bs_ref.attacks import _common

    models, tokenizer, forget, _ = world
    calls = []
    real = _common.generate

    def counting(model, prompts, *args, **kwargs):
        calls.append((len(prompts), kwargs.get("num_return_sequences", 1)))
        return real(model, prompts, *args, **kwargs)

    monkeypatch.setattr(_common, "generate", counting)
    no_fact = [{k: v for k, v in r.items() if k != "fact"} for r in forget[:3]]
    items = _common.evaluate_items(models["original"], tokenizer, no_fact + forget[3:5], probes=True, num_samples=2)
    assert calls == [(5, 1), (2, 1), (2, 2)]  # greedy for all five; probe and samples for the two with a fact
    assert all(it["fact_leak_any_of_n"] is None and it["fact_leak"] is None for it in items[:3])
    assert all(it["fact_leak_any_of_n"] is not None for it in items[3:])
    assert all(it["generation"] is not None and it["rougeL_recall"] is not None for it in items)


def test_run_attacks_evaluates_the_unattacked_model_once_with_the_same_items(world):
    """run_attacks reads every quantization and prompt attack's ``before`` off one evaluation of the model: the
    items equal those each attack computes on its own (the prompt attacks' without the paraphrase probe)."""
    models, tokenizer, forget, _ = world
    model = {"ga": models["ga"]}
    quant = ["quant8"] if attacks.bitsandbytes_available()[0] else []
    results, _ = run_attacks(model, tokenizer, forget, [*quant, "prompt:affirmative"], seed=0, batch_size=8)
    alone = prompt_attack(models["ga"], tokenizer, forget, "affirmative", seed=0)
    assert results["prompt:affirmative"]["ga"].before == alone.before
    assert results["prompt:affirmative"]["ga"].after == alone.after
    if quant:
        own = quantization_attack(models["ga"], tokenizer, forget, 8, seed=0)
        assert results["quant8"]["ga"].before == own.before and results["quant8"]["ga"].after == own.after
        assert without_probes(own.before) == alone.before
