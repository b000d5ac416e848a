"""Global beliefs, the belief cache and the BS-S step (bs_ref.beliefs) on a tiny randomly initialised Llama with
word-level tokenizers built here: stop handling for two chat templates, batch invariance, the confidence
filter, cache regimes and pairing, the loop's chunked BS-S gradient against the full-batch Eq. (7), and errors."""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from bs_ref.beliefs import BeliefCache, BeliefSampling, sample_beliefs, topk_mass
from bs_ref.generation import right_pad
from bs_ref.losses import IGNORE_INDEX, bs_s_loss, bs_t_loss, sequence_logprob
from bs_ref.methods import make_method
from bs_ref.runner import forget_backward

WORDS = [f"w{i}" for i in range(48)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """The models here are tiny: extra threads only add contention on a shared machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


CHATML = (
    "{% for m in messages %}<|im_start|> {{ m['role'] }} {{ m['content'] }} <|im_end|> {% endfor %}"
    "{% if add_generation_prompt %}<|im_start|> assistant {% endif %}"
)
TURNS = (
    "{% for m in messages %}<start_of_turn> {{ m['role'] }} {{ m['content'] }} <end_of_turn> {% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn> assistant {% endif %}"
)
CHAT_TOKENS = ["<|im_start|>", "<|im_end|>", "<start_of_turn>", "<end_of_turn>"]


def make_tokenizer(chat_template=None, eos=True, specials=("<|im_start|>", "<|im_end|>")):
    """Word-level tokenizer over WORDS + role names; the chat tokens are in the vocabulary either way, but only
    ``specials`` are registered as special tokens."""
    names = ["<pad>", "<eos>", "<unk>", *CHAT_TOKENS, "user", "assistant", *WORDS]
    backend = Tokenizer(models.WordLevel(vocab={t: i for i, t in enumerate(names)}, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    kwargs = dict(pad_token="<pad>", unk_token="<unk>", additional_special_tokens=list(specials))
    if eos:
        kwargs["eos_token"] = "<eos>"
    return PreTrainedTokenizerFast(tokenizer_object=backend, chat_template=chat_template, **kwargs)


TOK = make_tokenizer(CHATML)
VOCAB = len(TOK)


def make_model(seed=0, dtype=torch.float32):
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    return LlamaForCausalLM(cfg).to(dtype)


def with_stop_bias(model, token_id, bias):
    """Same model with +bias on one token's logit (an lm_head with a bias vector)."""
    model = copy.deepcopy(model)
    head = torch.nn.Linear(model.lm_head.in_features, model.lm_head.out_features, bias=True)
    head.weight.data.copy_(model.lm_head.weight.data)
    head.bias.data.zero_()
    head.bias.data[token_id] = bias
    model.lm_head = head
    return model


MODEL = make_model()
PROMPTS = [TOK(" ".join(WORDS[(5 * i + j) % 48] for j in range(2 + i % 4)))["input_ids"] for i in range(6)]


def im_end():
    return TOK.convert_tokens_to_ids("<|im_end|>")


# ----------------------------------------------------------------------------------------------------------
# Stop tokens (the rule itself, and that sampling and evaluation cut alike: tests/test_generation.py)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "template,specials,stop",
    [
        (CHATML, ("<|im_start|>", "<|im_end|>"), "<|im_end|>"),
        (TURNS, ("<start_of_turn>", "<end_of_turn>"), "<end_of_turn>"),
    ],
)
def test_answers_end_at_the_first_stop_token(template, specials, stop):
    tok = make_tokenizer(template, specials=specials)
    stop_id = tok.convert_tokens_to_ids(stop)
    model = with_stop_bias(MODEL, stop_id, 3.0)  # the end-of-turn token is likely but not certain
    b = sample_beliefs(model, tok, PROMPTS, BeliefSampling(n=4, max_new_tokens=12), seed=1, template="chat")
    stops = {stop_id, tok.eos_token_id}
    lengths, ended_by_turn = set(), 0
    for i in range(len(b)):
        answer = b.input_ids[i][len(PROMPTS[b.prompt_index[i]]) :]
        assert not stops & set(answer[:-1])  # nothing generated after a stop token
        assert b.stopped[i] == (answer[-1] in stops)
        assert b.stopped[i] or len(answer) == 12
        lengths.add(len(answer))
        ended_by_turn += answer[-1] == stop_id
    assert ended_by_turn > 0 and len(lengths) > 2


def test_a_token_that_is_not_this_templates_end_of_turn_does_not_stop():
    tok = make_tokenizer(TURNS, specials=("<start_of_turn>", "<end_of_turn>"))
    model = with_stop_bias(MODEL, tok.convert_tokens_to_ids("<|im_end|>"), 50.0)  # always <|im_end|>
    b = sample_beliefs(model, tok, PROMPTS[:2], BeliefSampling(n=1, temperature=0.0, max_new_tokens=5), template="chat")
    assert b.stopped == [False, False] and all(len(b.answer_ids(i)) == 5 for i in range(2))


def test_empty_answers_are_counted_and_kept_out_of_the_loss():
    model = with_stop_bias(MODEL, TOK.eos_token_id, 50.0)  # immediate EOS
    b = sample_beliefs(model, TOK, PROMPTS, BeliefSampling(n=2, max_new_tokens=6))
    assert b.n_empty == len(b) == 12 and all(b.stopped)
    assert all(y == IGNORE_INDEX for labels in b.labels for y in labels)
    cache = BeliefCache(BeliefSampling(n=2, max_new_tokens=6))
    cache.refresh(model, TOK, dict(enumerate(PROMPTS)))
    assert cache.stats()["empty_cached"] == 12 and cache.stats()["empty_sampled_total"] == 12
    belief_batch = cache.batch([0, 1], TOK.pad_token_id)
    assert belief_batch["input_ids"].shape[0] == 0
    forget = forget_batch([0, 1])
    model = copy.deepcopy(MODEL)
    out = forget_backward(make_method("bs_s"), model, forget, belief_batch)
    with torch.no_grad():  # no usable belief: Eq. (7) is the forget term alone
        alone = bs_t_loss(model(input_ids=forget["input_ids"]).logits, forget["labels"])
    assert math.isfinite(out["forget"]) and out["forget"] == pytest.approx(float(alone), rel=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Sampling modes, reproducibility, batching
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("mode", [dict(n=1, temperature=0.0), dict(n=3, select="beam"), dict(n=2, m=4, select="beam")])
def test_batching_does_not_change_greedy_or_beam_answers(mode):
    batched = sample_beliefs(MODEL, TOK, PROMPTS, BeliefSampling(max_new_tokens=10, **mode), batch_size=6)
    one_by_one = sample_beliefs(MODEL, TOK, PROMPTS, BeliefSampling(max_new_tokens=10, **mode), batch_size=1)
    assert batched.input_ids == one_by_one.input_ids
    assert batched.prompt_index == [i for i in range(6) for _ in range(mode["n"])]
    assert batched.mean_logprob == pytest.approx(one_by_one.mean_logprob, abs=1e-5)


def test_beams_come_best_first_and_beat_samples():
    beams = sample_beliefs(MODEL, TOK, PROMPTS, BeliefSampling(n=3, select="beam", m=6, max_new_tokens=8))
    samples = sample_beliefs(MODEL, TOK, PROMPTS, BeliefSampling(n=3, max_new_tokens=8))
    assert sum(beams.mean_logprob) > sum(samples.mean_logprob)


def test_sampling_is_reproducible_under_a_seed_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = sample_beliefs(MODEL, TOK, PROMPTS, BeliefSampling(n=3, max_new_tokens=8), seed=7)
    after = torch.rand(1)
    b = sample_beliefs(MODEL, TOK, PROMPTS, BeliefSampling(n=3, max_new_tokens=8), seed=7)
    c = sample_beliefs(MODEL, TOK, PROMPTS, BeliefSampling(n=3, max_new_tokens=8), seed=8)
    assert a.input_ids == b.input_ids and a.input_ids != c.input_ids
    assert torch.equal(before, after)


def test_mean_logprob_is_the_teacher_forced_mean_over_answer_tokens():
    b = sample_beliefs(MODEL, TOK, PROMPTS[:2], BeliefSampling(n=2, max_new_tokens=6), seed=3)
    for i in range(len(b)):
        ids = torch.tensor([b.input_ids[i]])
        with torch.no_grad():
            logp = torch.log_softmax(MODEL(input_ids=ids).logits[0].double(), -1)
        start = len(PROMPTS[b.prompt_index[i]])
        naive = [float(logp[t - 1, ids[0, t]]) for t in range(start, ids.shape[1])]
        assert b.mean_logprob[i] == pytest.approx(sum(naive) / len(naive), abs=1e-5)


def test_filter_draws_twice_n_candidates_by_default():
    default = sample_beliefs(MODEL, TOK, PROMPTS[:2], BeliefSampling(n=2, select="filter", max_new_tokens=6), seed=4)
    explicit = sample_beliefs(
        MODEL, TOK, PROMPTS[:2], BeliefSampling(n=2, m=4, select="filter", max_new_tokens=6), seed=4
    )
    assert default.input_ids == explicit.input_ids and len(default) == 4
    assert default.settings["candidates_per_prompt"] == 4


def test_filter_keeps_the_most_likely_candidates():
    n, m = 2, 6
    kept = sample_beliefs(MODEL, TOK, PROMPTS, BeliefSampling(n=n, m=m, select="filter", max_new_tokens=8), seed=5)
    drawn = sample_beliefs(MODEL, TOK, PROMPTS, BeliefSampling(n=m, max_new_tokens=8), seed=5)  # the same m draws
    for i in range(len(PROMPTS)):
        cand = sorted(drawn.mean_logprob[i * m : (i + 1) * m], reverse=True)
        got = kept.mean_logprob[i * n : (i + 1) * n]
        assert sorted(got, reverse=True) == pytest.approx(cand[:n], abs=1e-6)
        assert set(map(tuple, kept.input_ids[i * n : (i + 1) * n])) <= set(
            map(tuple, drawn.input_ids[i * m : (i + 1) * m])
        )


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(n=0), "n \\(beliefs per prompt\\)"),
        (dict(n=3, m=2, select="filter"), "m \\(candidates"),
        (dict(select="top"), "select must be one of"),
        (dict(temperature=-1.0), "temperature"),
        (dict(n=2, temperature=0.0), "greedy"),
        (dict(n=1, temperature=0.0, select="filter"), "greedy"),
        (dict(top_p=0.0), "top_p"),
        (dict(max_new_tokens=0), "max_new_tokens"),
    ],
)
def test_bad_sampling_arguments_raise_clear_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        sample_beliefs(MODEL, TOK, PROMPTS, BeliefSampling(**kwargs))
    if "n" in kwargs or "m" in kwargs or "select" in kwargs:
        with pytest.raises(ValueError, match=match):
            BeliefCache(BeliefSampling(**kwargs))


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="no EOS token"):
        sample_beliefs(MODEL, make_tokenizer(CHATML, eos=False), PROMPTS)
    with pytest.raises(ValueError, match="non-empty list"):
        sample_beliefs(MODEL, TOK, [])
    with pytest.raises(ValueError, match="prompt 1 is empty"):
        sample_beliefs(MODEL, TOK, [PROMPTS[0], []])
    with pytest.raises(ValueError, match="regime"):
        BeliefCache(BeliefSampling(regime="sometimes"))
    with pytest.raises(ValueError, match="refresh_epochs"):
        BeliefCache(BeliefSampling(refresh_epochs=-1))
    cache = BeliefCache(BeliefSampling(n=1, max_new_tokens=4))
    cache.refresh(MODEL, TOK, {0: PROMPTS[0]})
    with pytest.raises(ValueError, match="dataset index 3"):
        cache.batch([0, 3], TOK.pad_token_id)
    with pytest.raises(ValueError, match="off-policy beliefs are missing"):
        cache.maybe_refresh(MODEL, TOK, epoch=0.5, step=1, prompts_by_index={5: PROMPTS[5]})
    with pytest.raises(ValueError, match="bs_s:base='dpo'"):
        make_method("bs_s", base="dpo")
    with pytest.raises(ValueError, match="ref_model"):
        forget_backward(make_method("bs_s", base="npo"), MODEL, forget_batch([0]), None)
    with pytest.raises(ValueError, match="belief_microbatch"):
        make_method("bs_s", belief_microbatch=0)
    with pytest.raises(ValueError, match="lam_bss"):
        make_method("bs_s", lam_bss=1.5)


# ----------------------------------------------------------------------------------------------------------
# Belief cache: pairing and regimes
# ----------------------------------------------------------------------------------------------------------


def forget_batch(indices):
    """Forget rows: prompt PROMPTS[i] + a fixed answer, with the dataset index."""
    ids = [
        PROMPTS[i] + [TOK.convert_tokens_to_ids(w) for w in ("w1", "w2", "w3")] + [TOK.eos_token_id] for i in indices
    ]
    labels = [[IGNORE_INDEX] * len(PROMPTS[i]) + x[len(PROMPTS[i]) :] for i, x in zip(indices, ids)]
    out = right_pad(ids, labels, TOK.pad_token_id)
    out["index"] = torch.tensor(indices)
    return out


def test_batch_returns_exactly_the_forget_items_own_beliefs():
    cache = BeliefCache(BeliefSampling(n=3, max_new_tokens=6))
    cache.refresh(MODEL, TOK, dict(enumerate(PROMPTS)))
    forget = forget_batch([4, 1, 2])
    beliefs = cache.batch(forget["index"], TOK.pad_token_id)
    assert beliefs["owner_index"].tolist() == [4, 4, 4, 1, 1, 1, 2, 2, 2]
    for row, owner in enumerate(beliefs["owner_index"].tolist()):
        prompt = PROMPTS[owner]
        assert beliefs["input_ids"][row, : len(prompt)].tolist() == prompt  # the owner's own question
        assert (beliefs["labels"][row, : len(prompt)] == IGNORE_INDEX).all()
        length = int(beliefs["attention_mask"][row].sum())
        assert (beliefs["labels"][row, length:] == IGNORE_INDEX).all()  # right padding
    assert set(beliefs["owner_index"].tolist()) == set(forget["index"].tolist())


def train_with_cache(cache, steps=6, steps_per_epoch=2, lr=0.5):
    """A few BS-S SGD steps on the forget items (two per batch); returns the cache entries after every step."""
    model = make_model(seed=1)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    prompts = dict(enumerate(PROMPTS[:4]))
    snapshots = []
    for step in range(steps):
        batch_items = [(2 * step) % 4, (2 * step + 1) % 4]
        wanted = {i: prompts[i] for i in batch_items} if cache.refresh_epochs == 0 else prompts
        cache.maybe_refresh(model, TOK, epoch=step / steps_per_epoch, step=step, prompts_by_index=wanted)
        forget = forget_batch(batch_items)
        opt.zero_grad()
        beliefs = cache.batch(forget["index"], TOK.pad_token_id)
        forget_backward(make_method("bs_s", belief_microbatch=2), model, forget, beliefs)
        opt.step()
        snapshots.append({i: [b.input_ids for b in bs] for i, bs in cache.entries.items()})
    return model, snapshots


def test_off_policy_beliefs_never_change_during_training():
    original = make_model(seed=1)
    cache = BeliefCache(BeliefSampling(regime="off_policy", n=2, max_new_tokens=6))
    model, snapshots = train_with_cache(cache)
    assert cache.refreshes == 1 and cache.last_refresh_step == 0
    assert all(s == snapshots[0] for s in snapshots)
    expected = sample_beliefs(original, TOK, PROMPTS[:4], BeliefSampling(n=2, max_new_tokens=6), seed=0)
    assert [b.input_ids for i in range(4) for b in cache.entries[i]] == expected.input_ids  # from θ_o
    moved = cache.stats(model)
    assert moved["mean_logprob_current"] < moved["mean_logprob_at_sampling"] - 0.05  # training moved the model


@pytest.mark.parametrize("refresh_epochs,expected_steps", [(1.0, [0, 2, 4]), (2.0, [0, 4]), (0.5, list(range(6)))])
def test_on_policy_beliefs_refresh_on_schedule(refresh_epochs, expected_steps):
    cache = BeliefCache(BeliefSampling(regime="on_policy", refresh_epochs=refresh_epochs, n=2, max_new_tokens=6))
    refreshed_at = []
    original_refresh = cache.refresh

    def spy(*args, **kwargs):
        refreshed_at.append(kwargs["step"])
        return original_refresh(*args, **kwargs)

    cache.refresh = spy
    _, snapshots = train_with_cache(cache)
    assert refreshed_at == expected_steps and cache.refreshes == len(expected_steps)
    changed = [s for s in range(1, 6) if snapshots[s] != snapshots[s - 1]]
    assert set(changed) <= set(expected_steps) and len(changed) >= len(expected_steps) - 2
    assert cache.stats()["items_covered"] == 4


def test_on_policy_every_step_refreshes_just_the_batch():
    cache = BeliefCache(BeliefSampling(regime="on_policy", refresh_epochs=0, n=2, max_new_tokens=6))
    _, snapshots = train_with_cache(cache, steps=4)
    assert cache.refreshes == 4 and cache.stats()["items_covered"] == 4
    assert snapshots[0].keys() == {0, 1} and snapshots[1].keys() == {0, 1, 2, 3}


def test_stats_and_state_round_trip():
    cache = BeliefCache(BeliefSampling(n=3, m=6, select="filter", max_new_tokens=6))
    cache.refresh(MODEL, TOK, dict(enumerate(PROMPTS)))
    stats = cache.stats(MODEL)
    assert stats["refreshes"] == 1 and stats["items_covered"] == 6 and stats["beliefs_cached"] == 18
    assert 1.0 <= stats["distinct_per_item"] <= 3.0
    assert stats["mean_logprob_current"] == pytest.approx(stats["mean_logprob_at_sampling"], abs=1e-5)
    clone = BeliefCache(BeliefSampling(n=3, m=6, select="filter", max_new_tokens=6))
    clone.load_state_dict(cache.state_dict())
    assert torch.equal(clone.batch(range(6), 0)["input_ids"], cache.batch(range(6), 0)["input_ids"])


def test_topk_mass_is_the_mean_top_k_probability_per_row():
    batch = forget_batch([0, 1])
    s = topk_mass(MODEL, batch, k=VOCAB)
    assert s.tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    s1 = topk_mass(MODEL, batch, k=1)
    assert (s1 > 1.0 / VOCAB).all() and (s1 < 1).all()


# ----------------------------------------------------------------------------------------------------------
# BS-S step: micro-batched gradient = gradient of Eq. (7) on the full batch
# ----------------------------------------------------------------------------------------------------------


MODEL64 = make_model(seed=2, dtype=torch.float64)


@functools.cache
def cached_beliefs() -> BeliefCache:
    cache = BeliefCache(BeliefSampling(n=3, max_new_tokens=7), seed=11)
    cache.refresh(MODEL64, TOK, dict(enumerate(PROMPTS)))
    return cache


def full_batch_gradient(model, forget, beliefs, lam_bss, base, base_kwargs, ref_model):
    model.zero_grad()
    logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    belief_logits = model(input_ids=beliefs["input_ids"], attention_mask=beliefs["attention_mask"]).logits
    fk, bk = {}, {}
    if base == "npo":
        with torch.no_grad():
            fk["ref_logprobs"] = sequence_logprob(ref_model(input_ids=forget["input_ids"]).logits, forget["labels"])
            bk["ref_logprobs"] = sequence_logprob(
                ref_model(input_ids=beliefs["input_ids"], attention_mask=beliefs["attention_mask"]).logits,
                beliefs["labels"],
            )
    loss = bs_s_loss(logits, forget["labels"], belief_logits, beliefs["labels"], lam_bss, base, base_kwargs, fk, bk)
    loss.backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


@settings(max_examples=12)
@given(
    base=st.sampled_from(["bs_t", "ga", "npo", "wga"]),
    microbatch=st.integers(1, 20),
    lam_bss=st.floats(0.0, 1.0),
    loss_scale=st.sampled_from([1.0, 0.25]),
    items=st.lists(st.integers(0, 5), min_size=1, max_size=4, unique=True),
)
def test_chunked_gradient_equals_full_batch_eq7(base, microbatch, lam_bss, loss_scale, items):
    """The loop's BS-S backward (declaration's row sets, belief rows in chunks) has Eq. (7)'s full-batch gradient."""
    model = MODEL64
    ref_model = make_model(seed=3, dtype=torch.float64) if base == "npo" else None
    forget = forget_batch(items)
    beliefs = cached_beliefs().batch(items, TOK.pad_token_id)
    base_kwargs = {"lam": 0.3, "top_k": 5} if base == "bs_t" else {}
    want_loss, want_grads = full_batch_gradient(model, forget, beliefs, lam_bss, base, base_kwargs, ref_model)
    model.zero_grad()
    method = make_method("bs_s", base=base, lam_bss=lam_bss, belief_microbatch=microbatch, lam=0.3, top_k=5)
    calls = []

    def backward(loss):
        calls.append(1)
        loss.backward()

    out = forget_backward(method, model, forget, beliefs, loss_scale=loss_scale, ref_model=ref_model, backward=backward)
    assert out["forget"] == pytest.approx(float(want_loss), rel=1e-9, abs=1e-9)
    assert len(calls) == 1 + math.ceil(beliefs["input_ids"].shape[0] / microbatch)  # forget rows + each chunk
    for p, want in zip(model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, loss_scale * want, rtol=1e-8, atol=1e-10)
    model.zero_grad()


def test_every_backward_goes_through_the_given_callable():
    """unlearn passes accelerator.backward; every piece must go through it (fp16 loss scaling, DDP hooks)."""
    forget, beliefs = forget_batch([0, 3]), cached_beliefs().batch([0, 3], TOK.pad_token_id)
    seen = []

    def backward(loss):
        seen.append(float(loss.detach()))
        loss.backward()

    method = make_method("bs_s", belief_microbatch=2, top_k=5)
    MODEL64.zero_grad()
    plain = forget_backward(method, MODEL64, forget, beliefs)
    want = [p.grad.clone() for p in MODEL64.parameters()]
    MODEL64.zero_grad()
    out = forget_backward(method, MODEL64, forget, beliefs, backward=backward)
    assert len(seen) == 1 + math.ceil(beliefs["input_ids"].shape[0] / 2)
    for p, w in zip(MODEL64.parameters(), want):
        torch.testing.assert_close(p.grad, w, rtol=0, atol=0)
    assert out["forget_logprob"] == pytest.approx(plain["forget_logprob"]) and out["forget_logprob"] < 0
    assert 0.0 < out["topk_mass"] <= 1.0 + 1e-9
    MODEL64.zero_grad()


def test_npo_base_at_the_reference_weights_is_ga_scaled_by_one():
    """At θ = θ_ref the NPO weight is 1, so BS-S(NPO) has the gradient of BS-S(GA) with summed NLLs."""
    forget, beliefs = forget_batch([0, 3]), cached_beliefs().batch([0, 3], TOK.pad_token_id)
    MODEL64.zero_grad()
    forget_backward(make_method("bs_s", base="npo", belief_microbatch=2), MODEL64, forget, beliefs, ref_model=MODEL64)
    npo = [p.grad.clone() for p in MODEL64.parameters()]
    MODEL64.zero_grad()
    logits = MODEL64(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    belief_logits = MODEL64(input_ids=beliefs["input_ids"], attention_mask=beliefs["attention_mask"]).logits
    seq_ll = sequence_logprob(logits, forget["labels"]).mean()
    belief_ll = sequence_logprob(belief_logits, beliefs["labels"]).mean()
    (0.5 * seq_ll + 0.5 * belief_ll).backward()  # −(−log π) per row: w = 1 GA on summed NLLs, Eq. (3)
    for p, want in zip(MODEL64.parameters(), npo):
        torch.testing.assert_close(p.grad, want, rtol=1e-8, atol=1e-10)
    MODEL64.zero_grad()


# ----------------------------------------------------------------------------------------------------------
# The benchmark runs end to end (its numbers are measured by `python experiments/bench.py bs_s`, not here)
# ----------------------------------------------------------------------------------------------------------


def test_bench_bs_s_smoke(capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "experiments" / "bench_bs_s.py"
    spec = importlib.util.spec_from_file_location("bench_bs_s", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    bench.main(["--quick", "--items", "8", "--answer-len", "4", "--prompt-len", "4", "--repeats", "1"])
    lines = dict(line.split(": ", 1) for line in capsys.readouterr().out.splitlines() if ": " in line)
    assert float(lines["bs_s/npo step-time ratio"]) > 0
    assert float(lines["batched/sequential generation speed-up"]) > 0
    per_microbatch = [
        float(lines[f"peak memory belief term N=3 belief_microbatch={mb} MiB (autograd saved activations)"])
        for mb in (1, 2, 4, 8)
    ]
    assert per_microbatch[3] == pytest.approx(8 * per_microbatch[0], rel=0.2)  # linear in the micro-batch
    unit = "MiB (autograd saved activations)"
    fixed = [float(lines[f"peak memory step N={n} belief_microbatch=8 {unit}"]) for n in (2, 8)]
    whole = [float(lines[f"peak memory step N={n} un-micro-batched {unit}"]) for n in (2, 8)]
    assert fixed[1] == pytest.approx(fixed[0], rel=0.05) and whole[1] == pytest.approx(4 * whole[0], rel=0.2)
