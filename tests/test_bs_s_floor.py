"""BS-S nearer its compute floor (bs_ref.prefix): prefix sharing is Eq. (7) exactly, belief subsampling is Eq. (7) in
expectation. A tiny Llama in float64; the references are the unshared rows and bs_ref.losses.bs_s_loss."""

from __future__ import annotations

import itertools

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM
from transformers.models.llama import modeling_llama

from bs_ref import prefix
from bs_ref.generation import right_pad
from bs_ref.losses import IGNORE_INDEX, bs_s_loss, mean_token_logprob, sequence_logprob
from bs_ref.methods import BSS, make_method
from bs_ref.runner import forget_backward


@pytest.fixture(autouse=True)
def float64_rmsnorm(monkeypatch):
    """HF's LlamaRMSNorm computes in float32 even in a float64 model. Where a shared prompt token receives the sum of
    its branches' gradients, one float32 rounding of the sum differs from the sum of per-row roundings (~1e-7
    relative), which would hide a real error of that size; here the same formula runs in the input's dtype."""

    def forward(self, hidden_states):
        variance = hidden_states.pow(2).mean(-1, keepdim=True)
        return self.weight * (hidden_states * torch.rsqrt(variance + self.variance_epsilon))

    monkeypatch.setattr(modeling_llama.LlamaRMSNorm, "forward", forward)


VOCAB = 48
BASES = ("bs_t", "ga", "npo", "wga")
BASE_KWARGS = {"bs_t": {"lam": 0.3, "top_k": 5}, "ga": {}, "npo": {}, "wga": {}}
# HF's eager attention takes its softmax in float32 (even in a float64 model): rows agree to ~1e-9 there
TOLERANCE = {"sdpa": dict(rtol=1e-10, atol=1e-12), "eager": dict(rtol=1e-6, atol=1e-8)}


def tiny_llama(attn: str = "sdpa", seed: int = 0) -> LlamaForCausalLM:
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
        attn_implementation=attn,
    )
    return LlamaForCausalLM(cfg).double()


def tokens(g, n):
    return torch.randint(2, VOCAB, (n,), generator=g).tolist()


def workload(seed=0, empty_belief=True):
    """Three forget items with prompts of 3/5/4 tokens and answers of 2–6 tokens; 3, 2 (+ one empty) and 1 belief
    rows of 1–7 tokens. Returns (forget batch with ``index``, belief batch with ``owner_index``)."""
    g = torch.Generator().manual_seed(seed)
    prompts = [tokens(g, n) for n in (3, 5, 4)]
    forget_ids, forget_labels, ids, labels, owners = [], [], [], [], []
    for i, (prompt, n_answer, n_beliefs) in enumerate(zip(prompts, (4, 2, 6), (3, 2, 1))):
        answer = tokens(g, n_answer)
        forget_ids.append(prompt + answer)
        forget_labels.append([IGNORE_INDEX] * len(prompt) + answer)
        for j in range(n_beliefs):
            belief = tokens(g, 1 + (3 * i + 2 * j) % 7)
            ids.append(prompt + belief)
            labels.append([IGNORE_INDEX] * len(prompt) + belief)
            owners.append(i)
        if i == 1 and empty_belief:  # an empty answer: no label, out of the exact normaliser
            ids.append(prompt + [1])
            labels.append([IGNORE_INDEX] * (len(prompt) + 1))
            owners.append(i)
    forget = right_pad(forget_ids, forget_labels, 0)
    forget["index"] = torch.arange(3)
    beliefs = right_pad(ids, labels, 0)
    beliefs["owner_index"] = torch.tensor(owners)
    return forget, beliefs


def eq7_gradient(model, forget, beliefs, base, lam_bss, ref_model=None):
    """(Eq. 7's value, its gradient) on the unshared rows, all at once (bs_s_loss)."""
    model.zero_grad()
    logits = model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits
    belief_logits = model(input_ids=beliefs["input_ids"], attention_mask=beliefs["attention_mask"]).logits
    fk, bk = {}, {}
    if ref_model is not None:
        with torch.no_grad():
            fk["ref_logprobs"] = sequence_logprob(
                ref_model(input_ids=forget["input_ids"], attention_mask=forget["attention_mask"]).logits,
                forget["labels"],
            )
            bk["ref_logprobs"] = sequence_logprob(
                ref_model(input_ids=beliefs["input_ids"], attention_mask=beliefs["attention_mask"]).logits,
                beliefs["labels"],
            )
    loss = bs_s_loss(
        logits, forget["labels"], belief_logits, beliefs["labels"], lam_bss, base, BASE_KWARGS[base], fk, bk
    )
    loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return float(loss.detach()), grads, logits.detach()


def loop_gradient(method, model, forget, beliefs, ref_model=None, loss_scale=1.0):
    """(stats, gradient) of the loop's BS-S backward (bs_ref.runner.forget_backward)."""
    model.zero_grad()
    stats = forget_backward(method, model, forget, beliefs, ref_model=ref_model, loss_scale=loss_scale)
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    return stats, grads


def bss(base, **kw):
    return make_method("bs_s", base=base, **{k: v for k, v in BASE_KWARGS[base].items()}, **kw)


# ----------------------------------------------------------------------------------------------------------
# The packed sequence: a custom 4D mask and per-branch positions give every branch its unshared row's logits
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn, mask", [("eager", torch.float64), ("sdpa", torch.float64), ("sdpa", torch.bool)])
def test_packed_branches_have_the_logits_of_their_unshared_rows(attn, mask):
    model = tiny_llama(attn)
    assert model.config._attn_implementation == attn
    g = torch.Generator().manual_seed(1)
    p1, p2 = tuple(tokens(g, 5)), tuple(tokens(g, 2))
    rows = [prefix.Row(p1, a, a, 1.0, True) for a in (tokens(g, 4), tokens(g, 1), tokens(g, 6))]
    rows += [prefix.Row(p2, a, a, 1.0, False) for a in (tokens(g, 3), tokens(g, 2))]
    (chunk,) = prefix.plan_chunks(rows, share_prefix=True, chunk_rows=8, mask_dtype=mask)
    attention = chunk.inputs["attention_mask"]
    assert attention.shape == (2, 1, 16, 16) and attention.dtype == mask  # [P, 1, L, L], L = 5 + 4 + 1 + 6
    assert chunk.inputs["logits_to_keep"] == 16 - 1  # from the earliest last-prompt position on
    with torch.no_grad():
        logits = model(**chunk.inputs).logits
        assert logits.shape[1] == 15
        view = chunk.rows(logits)
        for r, row in enumerate(rows):
            p, n = len(row.prompt), len(row.answer)
            alone = model(input_ids=torch.tensor([[*row.prompt, *row.answer]])).logits[0]
            # view row r: z at p−1 (predicts the first answer token; shared by the branches), then at each answer token
            torch.testing.assert_close(view[r, : n + 1], alone[p - 1 : p + n], **TOLERANCE[attn])


def test_flash_attention_is_refused_with_a_clear_error():
    model = tiny_llama("sdpa")
    model.config._attn_implementation = "flash_attention_2"
    forget, beliefs = workload()
    with pytest.raises(ValueError, match="share_prefix"):
        forget_backward(bss("ga", share_prefix=True), model, forget, beliefs)


# ----------------------------------------------------------------------------------------------------------
# Prefix sharing = Eq. (7): value, gradient and logged numbers, for every base, both attention kernels
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("microbatch", [1, 3, 8])
def test_prefix_sharing_has_eq7_value_and_gradient(base, attn, microbatch):
    """Rows of different lengths (prompts 3–5, answers 1–7, an empty belief); a micro-batch of 1 or 3 splits an
    item's branches over several packed sequences and forwards."""
    model = tiny_llama(attn)
    ref_model = tiny_llama(attn, seed=3) if base == "npo" else None
    forget, beliefs = workload()
    want, want_grads, logits = eq7_gradient(model, forget, beliefs, base, 0.4, ref_model)
    method = bss(base, lam_bss=0.4, share_prefix=True, belief_microbatch=microbatch)
    (term,) = method.forget_terms(forget, beliefs)
    assert term.share_prefix and isinstance(term.rows, list) and term.weight == 1.0
    stats, grads = loop_gradient(method, model, forget, beliefs, ref_model, loss_scale=0.5)
    tol = TOLERANCE[attn]
    assert stats["forget"] == pytest.approx(want, rel=tol["rtol"], abs=tol["atol"])
    for got, exact in zip(grads, want_grads):
        torch.testing.assert_close(got, 0.5 * exact, **tol)
    assert stats["forget_logprob"] == pytest.approx(
        float(mean_token_logprob(logits, forget["labels"]).mean()), rel=tol["rtol"], abs=tol["atol"]
    )
    unshared, _ = loop_gradient(bss(base, lam_bss=0.4), model, forget, beliefs, ref_model)
    assert stats["topk_mass"] == pytest.approx(unshared["topk_mass"], rel=1e-6)


def test_prefix_sharing_pays_each_prompt_once():
    """The shared forwards hold each item's prompt once (N + 1 ≤ micro-batch) and every answer: fewer tokens than the
    unshared rows by (number of answered rows − items) × prompt."""
    forget, beliefs = workload()
    rows = prefix.forget_rows(forget, 0.5) + prefix.belief_rows(beliefs, 0.5)
    assert len(rows) == 3 + 6  # the empty belief is out
    shared = prefix.plan_chunks(rows, share_prefix=True, chunk_rows=8, mask_dtype=torch.float64)
    unshared = prefix.plan_chunks(rows, share_prefix=False, chunk_rows=8, mask_dtype=torch.float64)
    prompts = {r.prompt for r in rows}
    answers = sum(len(r.answer) for r in rows)
    assert sum(c.tokens for c in shared) == sum(len(p) for p in prompts) + answers
    assert sum(c.tokens for c in unshared) == sum(len(r.prompt) for r in rows) + answers
    for chunk_rows in (1, 2, 3):  # a forward holds no more tokens than chunk_rows unshared rows of the longest kind
        split = prefix.plan_chunks(rows, share_prefix=True, chunk_rows=chunk_rows, mask_dtype=torch.float64)
        longest = max(len(r.prompt) + len(r.answer) for r in rows)
        assert all(c.tokens <= chunk_rows * longest for c in split)
        assert sum(int(c.weights.numel()) for c in split) == len(rows)


# ----------------------------------------------------------------------------------------------------------
# Belief subsampling: the average over every subset is Eq. (7)'s gradient (Horvitz–Thompson, empty rows left out)
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("share", [False, True], ids=["unshared", "shared"])
@pytest.mark.parametrize("base", BASES)
@pytest.mark.parametrize("m", [1, 2])
def test_average_over_every_subset_is_the_exact_gradient(base, m, share, monkeypatch):
    """Items with 3, 2 (+ one empty) and 1 answered beliefs; every combination of m-subsets is enumerated (each equally
    likely under uniform draws without replacement, independent across items) and the estimator's gradient averaged."""
    model = tiny_llama("sdpa")
    ref_model = tiny_llama("sdpa", seed=3) if base == "npo" else None
    forget, beliefs = workload()
    _, exact, _ = eq7_gradient(model, forget, beliefs, base, 0.4, ref_model)
    sizes = [3, 2, 1]  # answered belief rows per item (the empty one is never drawn)
    combos = list(itertools.product(*[itertools.combinations(range(n), min(m, n)) for n in sizes]))
    assert len(combos) == {1: 6, 2: 3}[m]
    seen = []

    def enumerate_draw(got_sizes, got_m, generator):
        assert got_sizes == sizes and got_m == m and isinstance(generator, torch.Generator)
        seen.append(combos[len(seen)])
        return [list(c) for c in seen[-1]]

    monkeypatch.setattr(prefix, "draw_subsets", enumerate_draw)
    method = bss(base, lam_bss=0.4, belief_subsample=m, share_prefix=share, belief_microbatch=2)
    mean = [torch.zeros_like(g) for g in exact]
    for _ in combos:
        _, grads = loop_gradient(method, model, forget, beliefs, ref_model)
        mean = [a + b / len(combos) for a, b in zip(mean, grads)]
    assert len(seen) == len(combos)
    for got, want in zip(mean, exact):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-10)
    assert max(float((a - b).abs().max()) for a, b in zip(grads, exact)) > 1e-6  # one subset alone is not exact


def test_subsample_at_least_n_is_exact_and_draws_nothing(monkeypatch):
    model = tiny_llama("sdpa")
    forget, beliefs = workload()
    _, exact, _ = eq7_gradient(model, forget, beliefs, "bs_t", 0.5)
    for share in (False, True):
        _, grads = loop_gradient(bss("bs_t", belief_subsample=3, share_prefix=share), model, forget, beliefs)
        for got, want in zip(grads, exact):
            torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-11)


def test_draws_are_uniform_seeded_and_leave_the_global_rng_alone():
    state = torch.get_rng_state()
    g = torch.Generator().manual_seed(7)
    counts: dict[tuple, int] = {}
    draws = 6000
    for _ in range(draws):
        (subset,) = prefix.draw_subsets([4], 2, g)
        counts[tuple(subset)] = counts.get(tuple(subset), 0) + 1
    assert set(counts) == set(itertools.combinations(range(4), 2))
    expected = draws / 6  # binomial sd ≈ 29: 5 sd
    assert all(abs(c - expected) < 150 for c in counts.values()), counts
    assert prefix.draw_subsets([4, 1, 3], 2, torch.Generator().manual_seed(3)) == prefix.draw_subsets(
        [4, 1, 3], 2, torch.Generator().manual_seed(3)
    )
    assert prefix.draw_subsets([1, 2], 5, g) == [[0], [0, 1]]  # N_i ≤ m: every row
    assert torch.equal(torch.get_rng_state(), state)


def test_subsampled_steps_repeat_under_the_seed_and_never_touch_the_global_rng():
    model = tiny_llama("sdpa")
    forget, beliefs = workload()
    runs = []
    for seed in (5, 5, 6):
        method = bss("ga", belief_subsample=1)
        method.seed_subsample(seed)
        state = torch.get_rng_state()
        runs.append([loop_gradient(method, model, forget, beliefs)[1] for _ in range(3)])
        assert torch.equal(torch.get_rng_state(), state)
    same = all(torch.equal(a, b) for x, y in zip(runs[0], runs[1]) for a, b in zip(x, y))
    differ = any(not torch.equal(a, b) for x, y in zip(runs[0], runs[2]) for a, b in zip(x, y))
    assert same and differ


def test_the_loop_seeds_the_draws_with_seed_plus_process_index(monkeypatch):
    from _tiny import FORGET, RETAIN, fresh, train_tiny

    from bs_ref.unlearn import UnlearnConfig, unlearn

    seeds = []
    monkeypatch.setattr(
        BSS,
        "seed_subsample",
        lambda self, seed: (
            seeds.append(seed) or setattr(self, "_subsample_generator", torch.Generator().manual_seed(seed))
        ),
    )
    model, tok = fresh(train_tiny())
    method = make_method("bs_s", belief_subsample=1, share_prefix=True, n_beliefs=2, belief_max_new_tokens=4)
    unlearn(
        model,
        tok,
        FORGET,
        RETAIN,
        UnlearnConfig(method=method, epochs=1, batch_size=2, seed=13, progress=False, eval_at_start=False),
    )
    assert seeds == [13]  # one process: process_index 0


# ----------------------------------------------------------------------------------------------------------
# The declaration: defaults keep today's path; the new fields validate and round-trip
# ----------------------------------------------------------------------------------------------------------


def test_defaults_keep_todays_terms():
    forget, beliefs = workload()
    terms = BSS().forget_terms(forget, beliefs)
    assert [t.whole for t in terms] == [True, False] and terms[1].rows is beliefs
    assert BSS().spec() == "bs_s"


def test_new_fields_validate_and_round_trip():
    from bs_ref.methods import method_from_spec

    method = method_from_spec("bs_s:share_prefix=true,belief_subsample=1")
    assert method.share_prefix is True and method.belief_subsample == 1
    assert method_from_spec(method.spec()) == method
    for bad in ({"belief_subsample": 0}, {"share_prefix": "yes"}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            make_method("bs_s", **bad)


def test_unlearn_with_prefix_sharing_follows_the_unshared_run():
    """The loop end to end in float64: a few steps with share_prefix follow the unshared run's weights."""
    from _tiny import FORGET, RETAIN, fresh, max_abs_diff, train_tiny

    from bs_ref.unlearn import UnlearnConfig, unlearn

    tiny = train_tiny()
    out = []
    for share in (False, True):
        model, tok = fresh(tiny)
        model.double()
        method = make_method("bs_s", share_prefix=share, n_beliefs=2, belief_max_new_tokens=5, top_k=5)
        cfg = UnlearnConfig(
            method=method, epochs=2, batch_size=2, lr=1e-3, warmup=0.0, progress=False, eval_at_start=False, seed=3
        )
        out.append({k: v.clone() for k, v in unlearn(model, tok, FORGET, RETAIN, cfg).state_dict().items()})
    moved = max_abs_diff(out[0], fresh(tiny)[0].double().state_dict())
    assert moved > 1e-4 and max_abs_diff(out[0], out[1]) < 1e-9, (moved, max_abs_diff(out[0], out[1]))
