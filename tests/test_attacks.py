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

from bs_ref import attacks
from bs_ref.attacks import (
    NF4_BIN_COLUMNS,
    NF4_LEVELS,
    AttackResult,
    AttackUnavailable,
    Decoding,
    DoseResponse,
    RelearnDose,
    Relearning,
    attack_prompt,
    dose_batches,
    evaluate_items,
    few_shot_context,
    nf4_bin_table,
    nf4_codes,
    nf4_half_bins,
    nf4_layer_bins,
    nf4_round,
    prompt_attack,
    prompt_attacks,
    quantization_attack,
    quantize_copy,
    relearn_attack,
    relearn_dose,
    relearn_dose_models,
    relearn_models,
    relearn_split,
    replay_unlearning,
    run_attacks,
    without_probes,
)
from bs_ref.attacks._common import mean_of
from bs_ref.data.synthetic import SyntheticConfig, build_benchmark, training_corpus
from bs_ref.finetune import FineTuning, fine_tune, train_causal_lm
from bs_ref.metrics.leakage import contains_fact
from bs_ref.models import TinyLlamaConfig, build_tiny_llama, train_tokenizer
from bs_ref.protocol import recovery_table, stats
from bs_ref.protocol.recovery_table import recovery_csv, recovery_per_item, recovery_rows, recovery_runs
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
    texts = sorted(
        {s for pair in original_pairs for s in pair}
        | {r["heldout_answer"] for r in full}
        | {p for r in full for p in r["perturbed_answer"]}
    )
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
    records = [
        {"question": f"{a}-{j}", "answer": "x", "author": f"A{a}"} for a, n in enumerate(sizes) for j in range(n)
    ]
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(records):
        groups.setdefault(r["author"], []).append(i)
    split = relearn_split(records, seed)
    _check_split(split, records, groups)
    # an author's split depends on (seed, author) only: dropping the other authors does not move it
    first = [r for r in records if r["author"] == "A0"]
    alone = relearn_split(first, seed)
    assert [first[i]["question"] for i in alone.attack] == [
        records[i]["question"] for i in split.attack if records[i]["author"] == "A0"
    ]


# ----------------------------------------------------------------------------------------------- copies
def test_every_attack_leaves_the_unlearned_weights_bit_identical(world):
    models, tokenizer, forget, _ = world
    model = models["ga"]
    before = _state(model)
    relearn_attack(model, tokenizer, forget, Relearning(PAIR_LR, batch_size=8), seed=0)
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
    fine_tune(twin, tokenizer, retain_pairs, FineTuning(PAIR_LR, 30, 8, num_threads=1), seed=1, progress=False)
    relearning = Relearning(PAIR_LR, epochs=1, batch_size=8)
    results = relearn_models({**models, "retain_seed1": twin.eval()}, tokenizer, forget, relearning, seed=0)
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
        relearn_attack(models["ga"], tokenizer, forget, Relearning(PAIR_LR), split=relearn_split(forget[:6], 0))


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
    tofu = [
        {"question": f"Who is author {i}?", "answer": f"Author {i} writes.", "paraphrased_question": f"Q {i}?"}
        for i in range(3)
    ]
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
    results, skipped = run_attacks(
        models, tokenizer, forget, wanted, seed=0, relearning=Relearning(PAIR_LR, batch_size=8)
    )
    assert list(results) == wanted and not skipped
    assert all(list(by_model) == ["original", "retrain", "ga"] for by_model in results.values())
    cells = {
        (name, None if name in ("original", "retrain") else 0, 0, attack, "end"): result
        for attack, by_model in results.items()
        for name, result in by_model.items()
    }
    rows = recovery_rows(cells, n_resamples=100)
    assert len(rows) == 3 * len(wanted)
    for row in rows:
        assert set(recovery_table.RECOVERY_COLUMNS) == set(row)
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
        return [
            {"index": i, "fact_leak": (bool(v) if fact_leak else None), "target_logprob": -1.0 - i + v}
            for i, v in enumerate(values)
        ]

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
    assert text.splitlines()[0] == ",".join(recovery_table.RECOVERY_COLUMNS)
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
    path = recovery_table.plot_recovery(recovery_rows(cells, n_resamples=50), tmp_path / "plots" / "recovery.png")
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
    cfg = UnlearnConfig(
        method="graddiff",
        lr=3e-3,
        epochs=2,
        batch_size=4,
        warmup=0.5,
        eval_every=3,
        progress=False,
        num_threads=1,
        seed=1,
    )
    seen: dict[int, dict] = {}
    run = unlearn(
        copy.deepcopy(original), tokenizer, forget, retain, cfg, lambda step, m: seen.update({step: _state(m)})
    )
    assert sorted(seen) == [0, 3, 6]
    kept = replay_unlearning(original, tokenizer, forget, retain, cfg, steps=[3, 6])
    assert _identical(_state(kept[3]), seen[3]) and _identical(_state(kept[6]), _state(run))
    assert not _identical(seen[3], seen[6])
    assert _identical(before, _state(original))
    calls = []
    stopped = replay_unlearning(
        original, tokenizer, forget, retain, cfg, until=lambda step, m: calls.append(step) or step >= 2
    )
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

    def counting(model, prompts, pad, stops, decoding, *args, **kwargs):
        calls.append((len(prompts), decoding.returns))
        return real(model, prompts, pad, stops, decoding, *args, **kwargs)

    monkeypatch.setattr(_common, "generate", counting)
    no_fact = [{k: v for k, v in r.items() if k != "fact"} for r in forget[:3]]
    items = _common.evaluate_items(
        models["original"], tokenizer, no_fact + forget[3:5], probes=True, decoding=Decoding(None, num_samples=2)
    )
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
    results, _ = run_attacks(model, tokenizer, forget, [*quant, "prompt:affirmative"], seed=0)
    alone = prompt_attack(models["ga"], tokenizer, forget, "affirmative", seed=0)
    assert results["prompt:affirmative"]["ga"].before == alone.before
    assert results["prompt:affirmative"]["ga"].after == alone.after
    if quant:
        own = quantization_attack(models["ga"], tokenizer, forget, 8, seed=0)
        assert results["quant8"]["ga"].before == own.before and results["quant8"]["ga"].after == own.after
        assert without_probes(own.before) == alone.before


# ----------------------------------------------------------------------------------------------- relearning dose
DOSE_LR = 1e-3
"""A small relearning lr (a tenth of the pair's) for the dose–response."""


def _dose(steps=(0, 1, 2, 4), **kw) -> RelearnDose:
    return RelearnDose(DOSE_LR, steps=steps, batch_size=4, **kw)


def test_dose_response_at_step_0_is_the_unattacked_evaluation(world):
    """Step count 0 is the model as given: the items equal a plain evaluation of the held-out half, both when they
    are read off ``before`` and when the untrained copy is evaluated (``evaluate_before=False``)."""
    models, tokenizer, forget, _ = world
    model = models["ga"]
    state = _state(model)
    split = relearn_split(forget, 0)
    heldout = [forget[i] for i in split.heldout]
    plain = evaluate_items(model, tokenizer, heldout, indices=list(split.heldout), probes=True, seed=0)
    reused = relearn_dose(model, tokenizer, forget, _dose((0, 1)), seed=0)
    fresh = relearn_dose(model, tokenizer, forget, _dose((1, 0)), seed=0, evaluate_before=False)
    assert reused.after[0] == reused.before == plain
    assert fresh.after[0] == plain and fresh.before == []
    assert fresh.steps == (0, 1) and fresh.after[1] == reused.after[1]
    assert _identical(state, _state(model)) and not model.training


def test_dose_response_gives_every_model_the_same_steps_and_batches(world):
    """Equal optimizer steps for every model, the same split and the same batches in the same order (the retain model
    is the control), each epoch of batches a permutation of the attack half."""
    models, tokenizer, forget, _ = world
    dose = _dose((0, 1, 2, 4))
    results = relearn_dose_models(models, tokenizer, forget, dose, seed=0)
    assert list(results) == ["original", "retrain", "ga"]
    first = results["ga"]
    for name, result in results.items():
        assert result.split == first.split and result.steps == (0, 1, 2, 4), name
        assert result.info["batches"] == first.info["batches"], name
        assert len(result.info["loss"]) == result.info["n_steps"] == 4, name
        assert all(math.isfinite(v) for v in result.info["loss"]), name
    batches = first.info["batches"]
    assert [len(b) for b in batches] == [4, 2, 4, 2]  # 6 attack items in batches of 4: 2 steps per epoch
    for epoch in (batches[0] + batches[1], batches[2] + batches[3]):
        assert sorted(epoch) == sorted(first.split.attack)
    assert batches[:2] != batches[2:]  # each epoch is reshuffled
    assert batches == [[first.split.attack[i] for i in b] for b in dose_batches(6, 4, 4, 0)]
    assert relearn_dose_models(models, tokenizer, forget, dose, seed=1)["ga"].info["batches"] != batches


def test_dose_response_items_are_well_formed_and_a_trajectory_prefix(world):
    """Per step count: the held-out items in split order with every measure in range; ``at`` gives the recovery
    tables' ``AttackResult``; the JSON form reads back; and with a constant lr the model after k steps does not
    depend on the larger counts of the schedule (one trajectory, evaluated along the way)."""
    models, tokenizer, forget, _ = world
    dose = relearn_dose(models["ga"], tokenizer, forget, _dose((0, 1, 2, 4)), seed=0)
    heldout = list(dose.split.heldout)
    for k in dose.steps:
        items = dose.after[k]
        assert [it["index"] for it in items] == heldout, k
        for it in items:
            assert isinstance(it["fact_leak"], bool) and isinstance(it["fact_leak_paraphrased_question"], bool)
            assert math.isfinite(it["target_logprob"]) and it["target_logprob"] <= 0
            assert 0 <= it["rougeL_recall"] <= 1
    result = dose.at(2)
    assert isinstance(result, AttackResult) and result.attack == "relearn@2" and result.info["step"] == 2
    assert result.before == dose.before and result.after == dose.after[2] and len(result.info["loss"]) == 2
    assert [row["step"] for row in dose.summary()] == [0, 1, 2, 4]
    assert dose.summary()[0]["target_logprob_after"] == dose.summary()[0]["target_logprob_before"]
    assert dose.summary()[-1]["target_logprob_after"] != dose.summary()[0]["target_logprob_after"]
    back = DoseResponse.from_dict(json.loads(json.dumps(dose.as_dict())))
    assert back.after == dose.after and back.steps == dose.steps and back.info == dose.info
    short = relearn_dose(models["ga"], tokenizer, forget, _dose((2,)), seed=0, evaluate_before=False)
    assert short.after[2] == dose.after[2] and short.info["loss"] == dose.info["loss"][:2]
    with pytest.raises(KeyError, match="schedule"):
        dose.at(3)


@pytest.mark.parametrize(
    ("settings", "match"),
    [
        (dict(steps=()), "steps"),
        (dict(steps=(0, -1)), "steps"),
        (dict(steps=(1, 1)), "distinct"),
        (dict(steps=(1.5,)), "steps"),
        (dict(lr=0.0), "lr"),
        (dict(batch_size=0), "batch_size"),
    ],
)
def test_relearn_dose_rejects_bad_settings(settings, match):
    with pytest.raises(ValueError, match=match):
        RelearnDose(**{"lr": DOSE_LR, **settings}).check()


def test_single_point_relearn_is_unchanged(world):
    """``relearn_attack`` is today's composition, bit for bit: the seed's split, one deep copy fine-tuned by
    ``fine_tune`` under the same settings and seed, the held-out half evaluated with the probes. A dose–response run
    in between changes nothing of it (no global state moves)."""
    models, tokenizer, forget, _ = world
    model, relearning = models["ga"], Relearning(PAIR_LR, batch_size=4)
    first = relearn_attack(model, tokenizer, forget, relearning, seed=3)
    relearn_dose(model, tokenizer, forget, _dose((0, 2)), seed=3)
    second = relearn_attack(model, tokenizer, forget, relearning, seed=3)
    split = relearn_split(forget, 3)
    heldout = [forget[i] for i in split.heldout]
    evaluation = dict(indices=list(split.heldout), probes=True, seed=3)
    copy_ = copy.deepcopy(model).requires_grad_(True)
    pairs = [(forget[i]["question"], forget[i]["answer"]) for i in split.attack]
    fine_tune(copy_, tokenizer, pairs, relearning, seed=3, progress=False)
    reference = evaluate_items(copy_, tokenizer, heldout, **evaluation)
    assert first.split == split and first.before == evaluate_items(model, tokenizer, heldout, **evaluation)
    assert first.after == reference and second.after == reference and second.before == first.before
    assert first.info["steps"] == 2 and first.info["lr"] == PAIR_LR


# ----------------------------------------------------------------------------------------------- NF4 bins
def test_nf4_levels_are_bitsandbytes_table():
    _bnb_or_skip()
    import bitsandbytes.functional as F

    assert torch.equal(F.get_4bit_type("nf4", device="cpu"), torch.tensor(NF4_LEVELS, dtype=torch.float32))


def test_nf4_rounding_matches_bitsandbytes():
    """``nf4_round`` is bitsandbytes' NF4 quantize + dequantize (blocks of 64, a shape off the block size)."""
    _bnb_or_skip()
    import bitsandbytes.functional as F

    weight = torch.randn(7, 100, generator=torch.Generator().manual_seed(0)) * 0.05
    q, state = F.quantize_4bit(weight, blocksize=64, quant_type="nf4")
    reference = F.dequantize_4bit(q, state).to(torch.float32)
    assert torch.equal(nf4_round(weight), reference)
    codes, absmax = nf4_codes(weight)
    assert torch.equal(absmax, state.absmax.float()) and codes.numel() == 700
    levels = torch.tensor(NF4_LEVELS)
    ties = torch.cat([torch.ones(1), (levels[1:] + levels[:-1]) / 2, torch.zeros(48)]).reshape(1, 64)
    q, state = F.quantize_4bit(ties, blocksize=64, quant_type="nf4")  # every midpoint: ties go to the lower level
    assert torch.equal(nf4_round(ties), F.dequantize_4bit(q, state).to(torch.float32))
    assert torch.equal(nf4_round(ties)[0, 1:16], levels[:-1])


def test_nf4_half_bins_and_rounded_away_share_on_a_constructed_case():
    """Two blocks of 64, hand-computed: block 0 has absmax 2 (its first weight), block 1 absmax 0.5 (a weight of
    -0.5). Half bins: a zero weight in block 0 sits on level 0 with the gap 0.0796 above it → 2 · 0.0796 / 2; the
    weight 2 · 0.5626 (level 13, next level 0.7230) → 2 · 0.1603 / 2; x = 1 takes the top gap 0.2770; in block 1
    a zero weight → 0.5 · 0.0796 / 2 = 0.0199, the weight -0.5 (x = -1) → 0.5 · 0.3038 / 2.

    Updates: +0.05 on block 0's zero weight (below its half bin 0.0796: rounded away, level unchanged), +0.2 on
    the level-13 weight (above its half bin 0.1603: kept, moves to level 14), +0.03 on a zero weight of block 1
    (above its half bin 0.0199: kept, moves to level 8). Both absmaxes stay."""
    levels = NF4_LEVELS
    original = torch.zeros(2, 64)
    original[0, 0], original[0, 2] = 2.0, 2.0 * levels[13]
    original[1, 0] = -0.5
    update = torch.zeros(2, 64)
    update[0, 1], update[0, 2], update[1, 1] = 0.05, 0.2, 0.03
    half = nf4_half_bins(original)
    expected = {
        0: 2.0 * (levels[15] - levels[14]) / 2,
        1: 2.0 * (levels[8] - levels[7]) / 2,
        2: 2.0 * (levels[14] - levels[13]) / 2,
        64: 0.5 * (levels[1] - levels[0]) / 2,
        65: 0.5 * (levels[8] - levels[7]) / 2,
    }
    for i, value in expected.items():
        assert float(half[i]) == pytest.approx(value, rel=1e-6), i
    assert float(half[1]) == pytest.approx(0.0795803, rel=1e-5) and float(half[65]) == pytest.approx(
        0.0198951, rel=1e-5
    )
    codes, absmax = nf4_codes(original)
    moved, _ = nf4_codes(original + update)
    assert absmax.tolist() == [2.0, 0.5]
    assert codes[[0, 1, 2, 64, 65]].tolist() == [15, 7, 13, 0, 7]
    assert moved[[0, 1, 2, 64, 65]].tolist() == [15, 7, 14, 0, 8]
    row = nf4_layer_bins(original, original + update)
    assert row["shape"] == "2x64" and row["n_weights"] == 128 and row["n_blocks"] == 2
    assert row["delta_max_abs"] == pytest.approx(0.2)
    assert row["delta_rms"] == pytest.approx(math.sqrt((0.05**2 + 0.2**2 + 0.03**2) / 128), rel=1e-6)
    assert row["share_rounded_away"] == 126 / 128  # every unchanged weight and the +0.05
    assert row["share_same_code"] == 126 / 128
    assert row["absmax_median"] == 0.5  # torch's median of two values is the lower one
    assert row["half_bin_min"] == pytest.approx(expected[65]) and row["half_bin_max"] == pytest.approx(expected[0])


def test_nf4_bin_table_on_the_world(world):
    """One row per quantised Linear (the layers 4-bit loading quantises, LM head excluded) and ``all``; a model
    against itself rounds everything away; the GA update is reported with shares in [0, 1]."""
    models, _, _, _ = world
    rows = nf4_bin_table(models["original"], models["ga"])
    names = [r["layer"] for r in rows]
    assert names[-1] == "all" and "lm_head" not in names and len(names) == 2 * 7 + 1
    assert all(set(r) == set(NF4_BIN_COLUMNS) for r in rows)
    layers, total = rows[:-1], rows[-1]
    assert total["n_weights"] == sum(r["n_weights"] for r in layers)
    assert total["delta_max_abs"] == max(r["delta_max_abs"] for r in layers) > 0
    assert all(0 <= r["share_rounded_away"] <= 1 and 0 <= r["share_same_code"] <= 1 for r in rows)
    same = nf4_bin_table(models["original"], models["original"])[-1]
    assert same["delta_max_abs"] == 0 and same["share_rounded_away"] == 1 and same["share_same_code"] == 1
    if attacks.bitsandbytes_available()[0]:
        import bitsandbytes as bnb

        q4 = quantize_copy(models["original"], 4)
        quantised = [n for n, m in q4.named_modules() if isinstance(m, bnb.nn.Linear4bit)]
        assert quantised == names[:-1]
