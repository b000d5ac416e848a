"""Loss library: every fast form against its paper form (``*_loss_paper``, written as the paper prints it) and the
paper forms against naive loop-based dense float64 references written here (value and gradient), the gradient
identities of docs/theory.md §2–3, invariances, reductions, and input validation."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import bs_ref.losses
from bs_ref.losses import (
    BASE_LOSSES,
    BASE_LOSSES_PAPER,
    bs_s_loss,
    bs_s_loss_paper,
    bs_t_loss,
    bs_t_loss_paper,
    ga_loss,
    ga_loss_paper,
    ga_scaled_loss,
    ga_scaled_loss_paper,
    graddiff_loss,
    graddiff_loss_paper,
    local_beliefs,
    nll_loss,
    npo_loss,
    npo_loss_paper,
    npo_weight,
    retain_kl_loss,
    retain_nll_loss,
    sequence_logprob,
    simnpo_loss,
    simnpo_loss_paper,
    wga_loss,
    wga_loss_paper,
)

IGN = -100


# ----------------------------------------------------------------------------------------------------------
# Instances
# ----------------------------------------------------------------------------------------------------------


@st.composite
def batches(draw, min_vocab=2, max_vocab=40, allow_empty_rows=True):
    """logits [B,T,V] float64 (scale up to 1e4) and HF-aligned labels with prompt/padding patterns."""
    b = draw(st.integers(1, 4))
    t = draw(st.integers(2, 7))
    v = draw(st.integers(min_vocab, max_vocab))
    scale = draw(st.sampled_from([1e-3, 1.0, 5.0, 1e2, 1e4]))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(b, t, v, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, v, (b, t), generator=g)
    for r in range(b):
        prompt = draw(st.integers(0, t))  # labels[:prompt] are prompt (-100)
        pad = draw(st.integers(0, t - prompt))  # right padding (-100)
        labels[r, :prompt] = IGN
        if pad:
            labels[r, t - pad :] = IGN
    if not allow_empty_rows and not (labels[:, 1:] != IGN).any():
        labels[0, -1] = 0
    return logits, labels


def answer_positions(labels):
    """(row, position-in-logits, target) for every answer token (position t predicts labels[t+1])."""
    out = []
    for r in range(labels.shape[0]):
        for t in range(labels.shape[1] - 1):
            y = int(labels[r, t + 1])
            if y != IGN:
                out.append((r, t, y))
    return out


def dense_row_reduce(per_token, labels):
    """Row-mean then mean over rows with answers (naive loops)."""
    rows = {}
    for (r, _, _), val in per_token:
        rows.setdefault(r, []).append(val)
    if not rows:
        return torch.zeros((), dtype=torch.float64)
    return sum(sum(v) / len(v) for v in rows.values()) / len(rows)


def ref_ga(logits, labels):
    logp = torch.log_softmax(logits, -1)
    per = [((r, t, y), -logp[r, t, y]) for r, t, y in answer_positions(labels)]
    return -dense_row_reduce(per, labels)


def ref_bs_t(logits, labels, lam, k, tau, detach=True):
    """The authors' dense formulation: top-k mask, softmax, soft target, full-vocabulary cross-entropy."""
    logp = torch.log_softmax(logits, -1)
    top_idx = logits.topk(k, dim=-1).indices
    mask = torch.zeros_like(logits, dtype=torch.bool).scatter_(-1, top_idx, True)
    masked = ((logits.detach() if detach else logits) / tau).masked_fill(~mask, float("-inf"))
    belief = torch.softmax(masked, -1)
    one_hot = F.one_hot(labels.clamp(min=0), logits.shape[-1]).to(logits.dtype)
    target = torch.zeros_like(logits)
    target[:, :-1] = lam * belief[:, :-1] + (1 - lam) * one_hot[:, 1:]
    ce = -(target * logp).sum(-1)  # [B, T]
    per = [((r, t, y), ce[r, t]) for r, t, y in answer_positions(labels)]
    return -dense_row_reduce(per, labels)


def ref_seq_nll(logits, labels):
    logp = torch.log_softmax(logits, -1)
    out = [torch.zeros((), dtype=logits.dtype) for _ in range(labels.shape[0])]
    counts = [0] * labels.shape[0]
    for r, t, y in answer_positions(labels):
        out[r] = out[r] - logp[r, t, y]
        counts[r] += 1
    return torch.stack(out), counts


def ref_npo(logits, labels, ref_logprobs, beta):
    nll, counts = ref_seq_nll(logits, labels)
    vals = [-(2 / beta) * F.logsigmoid(beta * (nll[r] + ref_logprobs[r])) for r in range(len(counts)) if counts[r]]
    return sum(vals) / len(vals) if vals else torch.zeros((), dtype=logits.dtype)


def ref_simnpo(logits, labels, beta, delta):
    nll, counts = ref_seq_nll(logits, labels)
    vals = [-(2 / beta) * F.logsigmoid(beta * (nll[r] / counts[r] - delta)) for r in range(len(counts)) if counts[r]]
    return sum(vals) / len(vals) if vals else torch.zeros((), dtype=logits.dtype)


def ref_wga(logits, labels, beta):
    logp = torch.log_softmax(logits, -1)
    per = [((r, t, y), (beta * logp[r, t, y].detach()).exp() * -logp[r, t, y]) for r, t, y in answer_positions(labels)]
    return -dense_row_reduce(per, labels)


def ref_kl(logits, ref_logits, labels):
    logp = torch.log_softmax(logits, -1)
    logq = torch.log_softmax(ref_logits, -1)
    per = [((r, t, y), (logp[r, t].exp() * (logp[r, t] - logq[r, t])).sum()) for r, t, y in answer_positions(labels)]
    return dense_row_reduce(per, labels)


def value_and_grad(fn, logits):
    x = logits.clone().requires_grad_(True)
    val = fn(x)
    if not val.requires_grad:  # a reference with no answer token returns a constant 0
        return val.detach(), torch.zeros_like(x)
    (grad,) = torch.autograd.grad(val, x, allow_unused=True)
    return val.detach(), (grad if grad is not None else torch.zeros_like(x))


def assert_matches(ours, ref, logits):
    v1, g1 = value_and_grad(ours, logits)
    v2, g2 = value_and_grad(ref, logits)
    scale = max(1.0, float(logits.abs().max()))
    assert torch.allclose(v1, v2, rtol=1e-6, atol=1e-6 * scale), (v1, v2)
    assert torch.allclose(g1, g2, rtol=1e-6, atol=1e-8), (g1 - g2).abs().max()


# ----------------------------------------------------------------------------------------------------------
# Each loss equals its dense float64 reference, value and gradient
# ----------------------------------------------------------------------------------------------------------


@given(batches())
def test_ga_matches_dense_reference(batch):
    logits, labels = batch
    assert_matches(lambda x: ga_loss(x, labels), lambda x: ref_ga(x, labels), logits)


@given(batches(), st.floats(0.0, 1.0), st.floats(0.0, 1.0))
def test_bs_t_matches_authors_dense_formulation(batch, lam, k_frac):
    logits, labels = batch
    k = max(1, round(k_frac * logits.shape[-1]))
    for tau in (1.0, 2.5):
        assert_matches(
            lambda x, tau=tau: bs_t_loss(x, labels, lam=lam, top_k=k, temperature=tau),
            lambda x, tau=tau: ref_bs_t(x, labels, lam, k, tau),
            logits,
        )


@given(batches(), st.floats(0.05, 1.0))
def test_bs_t_undetached_ablation_matches_dense_formulation(batch, lam):
    logits, labels = batch
    k = min(3, logits.shape[-1])
    assert_matches(
        lambda x: bs_t_loss(x, labels, lam=lam, top_k=k, detach=False),
        lambda x: ref_bs_t(x, labels, lam, k, 1.0, detach=False),
        logits,
    )


@given(batches(), st.floats(0.01, 5.0), st.floats(-3.0, 3.0))
def test_npo_matches_dense_reference(batch, beta, offset):
    logits, labels = batch
    ref_lp = sequence_logprob(logits, labels) + offset
    assert_matches(lambda x: npo_loss(x, labels, ref_lp, beta=beta), lambda x: ref_npo(x, labels, ref_lp, beta), logits)


@given(batches(), st.floats(0.1, 8.0), st.floats(-1.0, 3.0))
def test_simnpo_matches_dense_reference(batch, beta, delta):
    logits, labels = batch
    assert_matches(
        lambda x: simnpo_loss(x, labels, beta=beta, delta=delta), lambda x: ref_simnpo(x, labels, beta, delta), logits
    )


@given(batches(), st.floats(0.0, 3.0))
def test_wga_matches_dense_reference(batch, beta):
    logits, labels = batch
    assert_matches(lambda x: wga_loss(x, labels, beta=beta), lambda x: ref_wga(x, labels, beta), logits)


@given(batches())
def test_retain_kl_matches_dense_reference_on_answer_positions(batch):
    logits, labels = batch
    ref_logits = logits + torch.randn_like(logits)
    assert_matches(lambda x: retain_kl_loss(x, ref_logits, labels), lambda x: ref_kl(x, ref_logits, labels), logits)
    # prompt/padding positions of the reference never matter (OpenUnlearning's defect, docs/theory.md §8)
    noisy_ref = ref_logits.clone()
    noisy_ref[:, :-1][labels[:, 1:] == IGN] += 50 * torch.randn_like(noisy_ref[:, :-1][labels[:, 1:] == IGN])
    assert torch.allclose(retain_kl_loss(logits, noisy_ref, labels), retain_kl_loss(logits, ref_logits, labels))


def test_retain_kl_is_zero_against_itself_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 9, generator=g, dtype=torch.float64)
    labels = torch.randint(0, 9, (2, 5), generator=g)
    assert float(retain_kl_loss(logits, logits, labels)) == pytest.approx(0.0, abs=1e-12)
    assert float(retain_kl_loss(logits, logits + torch.randn_like(logits), labels)) > 0


# ----------------------------------------------------------------------------------------------------------
# Each fast form equals its paper form (value and gradient); the paper forms equal the naive loop references
# ----------------------------------------------------------------------------------------------------------


def assert_matches_many(ours, ref, tensors, scale=None):
    """``assert_matches`` for a function of several logits tensors: value, and the gradient w.r.t. each."""
    xs1 = [t.clone().requires_grad_(True) for t in tensors]
    xs2 = [t.clone().requires_grad_(True) for t in tensors]
    v1, v2 = ours(*xs1), ref(*xs2)
    g1 = torch.autograd.grad(v1, xs1, allow_unused=True) if v1.requires_grad else [None] * len(xs1)
    g2 = torch.autograd.grad(v2, xs2, allow_unused=True) if v2.requires_grad else [None] * len(xs2)
    scale = max(1.0, *(float(t.abs().max()) for t in tensors)) if scale is None else scale
    assert torch.allclose(v1.detach(), v2.detach(), rtol=1e-6, atol=1e-6 * scale), (v1, v2)
    for t, a, b in zip(tensors, g1, g2):
        a = torch.zeros_like(t) if a is None else a
        b = torch.zeros_like(t) if b is None else b
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-8), (a - b).abs().max()


@given(batches())
def test_ga_fast_form_equals_paper_form(batch):
    logits, labels = batch
    assert_matches(lambda x: ga_loss(x, labels), lambda x: ga_loss_paper(x, labels), logits)
    assert_matches(lambda x: ga_loss_paper(x, labels), lambda x: ref_ga(x, labels), logits)


@given(batches(), st.floats(0.0, 1.0))
def test_ga_scaled_fast_form_equals_paper_form(batch, lam):
    logits, labels = batch
    assert_matches(
        lambda x: ga_scaled_loss(x, labels, lam=lam), lambda x: ga_scaled_loss_paper(x, labels, lam=lam), logits
    )


@given(batches(), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.sampled_from([0.3, 1.0, 2.5]))
def test_bs_t_fast_form_equals_paper_form(batch, lam, k_frac, tau):
    """The gather over {y_i} ∪ H_k(i) (fast) equals the dense soft target t_i of Eq. (5) (paper)."""
    logits, labels = batch
    k = max(1, round(k_frac * logits.shape[-1]))
    assert_matches(
        lambda x: bs_t_loss(x, labels, lam=lam, top_k=k, temperature=tau),
        lambda x: bs_t_loss_paper(x, labels, lam=lam, top_k=k, temperature=tau),
        logits,
    )


@given(batches(), st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.sampled_from([0.3, 1.0, 2.5]))
def test_bs_t_paper_form_matches_authors_dense_formulation(batch, lam, k_frac, tau):
    """An independent check of the paper form: the loop-based reference (the authors' masked-softmax target)."""
    logits, labels = batch
    k = max(1, round(k_frac * logits.shape[-1]))
    assert_matches(
        lambda x: bs_t_loss_paper(x, labels, lam=lam, top_k=k, temperature=tau),
        lambda x: ref_bs_t(x, labels, lam, k, tau),
        logits,
    )


@given(batches(), st.floats(0.01, 5.0), st.floats(-30.0, 30.0))
def test_npo_fast_form_equals_paper_form(batch, beta, offset):
    """−(2/β)·log σ(β(ℓ − ℓ_ref)) (fast) equals (2/β)·log(1 + (π_θ/π_ref)^β) of Eq. (3) as printed (paper)."""
    logits, labels = batch
    ref_lp = sequence_logprob(logits, labels) + offset
    assert_matches(
        lambda x: npo_loss(x, labels, ref_lp, beta=beta), lambda x: npo_loss_paper(x, labels, ref_lp, beta=beta), logits
    )


@given(batches(), st.floats(0.01, 5.0), st.floats(-30.0, 30.0))
def test_npo_paper_form_matches_dense_reference(batch, beta, offset):
    logits, labels = batch
    ref_lp = sequence_logprob(logits, labels) + offset
    assert_matches(
        lambda x: npo_loss_paper(x, labels, ref_lp, beta=beta), lambda x: ref_npo(x, labels, ref_lp, beta), logits
    )


@given(batches(), st.floats(0.1, 8.0), st.floats(-1.0, 3.0))
def test_simnpo_fast_form_equals_paper_form(batch, beta, delta):
    logits, labels = batch
    assert_matches(
        lambda x: simnpo_loss(x, labels, beta=beta, delta=delta),
        lambda x: simnpo_loss_paper(x, labels, beta=beta, delta=delta),
        logits,
    )
    assert_matches(
        lambda x: simnpo_loss_paper(x, labels, beta=beta, delta=delta),
        lambda x: ref_simnpo(x, labels, beta, delta),
        logits,
    )


@given(batches(), st.floats(0.0, 3.0))
def test_wga_fast_form_equals_paper_form(batch, beta):
    logits, labels = batch
    assert_matches(lambda x: wga_loss(x, labels, beta=beta), lambda x: wga_loss_paper(x, labels, beta=beta), logits)
    assert_matches(lambda x: wga_loss_paper(x, labels, beta=beta), lambda x: ref_wga(x, labels, beta), logits)


@given(st.data(), st.floats(0.1, 3.0), st.floats(0.0, 3.0), st.sampled_from(["nll", "kl"]))
def test_graddiff_fast_form_equals_paper_form(data, gamma, alpha, retain):
    forget_logits, forget_labels = data.draw(batches())
    vocab = forget_logits.shape[-1]
    retain_logits, retain_labels = data.draw(batches(min_vocab=vocab, max_vocab=vocab))
    ref = (retain_logits + torch.randn_like(retain_logits)) if retain == "kl" else None
    kw = dict(gamma=gamma, alpha=alpha, retain=retain, retain_ref_logits=ref)
    assert_matches_many(
        lambda f, r: graddiff_loss(f, forget_labels, r, retain_labels, **kw),
        lambda f, r: graddiff_loss_paper(f, forget_labels, r, retain_labels, **kw),
        (forget_logits, retain_logits),
    )
    if retain == "kl":  # the paper form's KL term against the loop reference, on its own
        assert_matches(
            lambda x: graddiff_loss_paper(forget_logits, forget_labels, x, retain_labels, 0.0, 1.0, "kl", ref),
            lambda x: ref_kl(x, ref, retain_labels),
            retain_logits,
        )


@given(st.data(), st.floats(0.0, 1.0), st.sampled_from(["bs_t", "ga", "npo", "wga"]))
def test_bs_s_fast_form_equals_paper_form(data, lam_bss, base):
    """bs_s_loss (fast bases, belief term as one ``belief_piece``) equals Eq. (7) as printed on the paper forms."""
    forget_logits, forget_labels = data.draw(batches())
    vocab = forget_logits.shape[-1]
    belief_logits, belief_labels = data.draw(batches(min_vocab=vocab, max_vocab=vocab))
    kw = {}
    if base == "bs_t":
        kw = {"lam": data.draw(st.floats(0.0, 1.0)), "top_k": data.draw(st.integers(1, vocab))}
    elif base in ("npo", "wga"):
        kw = {"beta": data.draw(st.floats(0.05, 2.0))}
    fk = {"ref_logprobs": sequence_logprob(forget_logits, forget_labels) - 1} if base == "npo" else {}
    bk = {"ref_logprobs": sequence_logprob(belief_logits, belief_labels) + 1} if base == "npo" else {}
    args = dict(lam_bss=lam_bss, base=base, base_kwargs=kw, forget_kwargs=fk, belief_kwargs=bk)
    assert_matches_many(
        lambda f, b: bs_s_loss(f, forget_labels, b, belief_labels, **args),
        lambda f, b: bs_s_loss_paper(f, forget_labels, b, belief_labels, **args),
        (forget_logits, belief_logits),
    )


def _fast_and_paper(labels, ref_lp):
    return {
        "ga": (lambda x: ga_loss(x, labels), lambda x: ga_loss_paper(x, labels)),
        "ga_scaled": (lambda x: ga_scaled_loss(x, labels, lam=0.3), lambda x: ga_scaled_loss_paper(x, labels, lam=0.3)),
        "bs_t": (
            lambda x: bs_t_loss(x, labels, lam=0.4, top_k=5, temperature=0.5),
            lambda x: bs_t_loss_paper(x, labels, lam=0.4, top_k=5, temperature=0.5),
        ),
        "npo": (lambda x: npo_loss(x, labels, ref_lp, beta=0.1), lambda x: npo_loss_paper(x, labels, ref_lp, beta=0.1)),
        "simnpo": (lambda x: simnpo_loss(x, labels), lambda x: simnpo_loss_paper(x, labels)),
        "wga": (lambda x: wga_loss(x, labels, beta=0.5), lambda x: wga_loss_paper(x, labels, beta=0.5)),
    }


@pytest.mark.parametrize("scale", [1e-6, 1e-3, 1e2, 1e4, 1e6])
@pytest.mark.parametrize("name", ["ga", "ga_scaled", "bs_t", "npo", "simnpo", "wga"])
def test_fast_and_paper_forms_agree_at_extreme_logit_scales(name, scale):
    """Near-uniform (1e-6) to saturated (1e6) logits, deterministically (hypothesis may not draw every scale)."""
    g = torch.Generator().manual_seed(11)
    logits = torch.randn(3, 6, 17, generator=g, dtype=torch.float64) * scale
    labels = torch.randint(0, 17, (3, 6), generator=g)
    labels[:, :2] = IGN
    labels[2] = IGN  # a row without answer tokens
    ref_lp = sequence_logprob(logits, labels) + 0.5 * scale
    fast, paper = _fast_and_paper(labels, ref_lp)[name]
    assert_matches(fast, paper, logits)


def test_paper_forms_are_exported_beside_their_fast_forms():
    pairs = {
        ga_loss: ga_loss_paper,
        ga_scaled_loss: ga_scaled_loss_paper,
        bs_t_loss: bs_t_loss_paper,
        npo_loss: npo_loss_paper,
        simnpo_loss: simnpo_loss_paper,
        wga_loss: wga_loss_paper,
        graddiff_loss: graddiff_loss_paper,
        bs_s_loss: bs_s_loss_paper,
    }
    for fast, paper in pairs.items():
        assert paper.__name__ == fast.__name__ + "_paper"
        assert paper.__module__ == fast.__module__  # in the same loss file
        assert paper.__name__ in bs_ref.losses.__all__
        assert "O(N·|V|)" in paper.__doc__  # says it is the reading/test form and what it costs
    assert set(BASE_LOSSES_PAPER) == set(BASE_LOSSES)
    assert {name: fn.__name__ for name, fn in BASE_LOSSES_PAPER.items()} == {
        name: fn.__name__ + "_paper" for name, fn in BASE_LOSSES.items()
    }


# ----------------------------------------------------------------------------------------------------------
# Gradient identities (docs/theory.md §2–3)
# ----------------------------------------------------------------------------------------------------------


@given(st.integers(2, 30), st.floats(0.0, 1.0), st.integers(0, 10_000), st.sampled_from([1.0, 2.0, 4.0]))
def test_bs_t_logit_residual_is_p_minus_soft_target(vocab, lam, seed, tau):
    """docs/theory.md T5.2: ∂CE/∂z = p − t with t = λq + (1−λ)e_y; for v ≠ y that is G_GA[v] − λ q[v] (the paper
    prints +)."""
    g = torch.Generator().manual_seed(seed)
    k = int(torch.randint(1, vocab + 1, (1,), generator=g))
    z = torch.randn(1, 2, vocab, generator=g, dtype=torch.float64, requires_grad=True)
    y = int(torch.randint(0, vocab, (1,), generator=g))
    labels = torch.tensor([[IGN, y]])
    (grad,) = torch.autograd.grad(-bs_t_loss(z, labels, lam=lam, top_k=k, temperature=tau), z)  # +CE
    zi = z[0, 0].detach()
    p = torch.softmax(zi, -1)
    idx = zi.topk(k).indices
    q = torch.zeros_like(zi)
    q[idx] = torch.softmax(zi[idx] / tau, -1)
    e_y = F.one_hot(torch.tensor(y), vocab).to(zi.dtype)
    t = lam * q + (1 - lam) * e_y
    assert torch.allclose(grad[0, 0], p - t, atol=1e-12)
    g_ga = p - e_y
    others = torch.arange(vocab) != y
    assert torch.allclose(grad[0, 0][others], (g_ga - lam * q)[others], atol=1e-12)


@given(batches())
def test_bs_t_with_lambda_zero_is_ga_exactly(batch):
    logits, labels = batch
    v1, g1 = value_and_grad(lambda x: bs_t_loss(x, labels, lam=0.0, top_k=1), logits)
    v2, g2 = value_and_grad(lambda x: ga_loss(x, labels), logits)
    assert torch.equal(v1, v2) and torch.equal(g1, g2)
    for dtype in (torch.float32, torch.bfloat16):
        x = logits.to(dtype)
        assert torch.equal(bs_t_loss(x, labels, lam=0.0, top_k=1), ga_loss(x, labels))
    # and the general code path (λ > 0) tends to GA as λ → 0
    assert torch.allclose(bs_t_loss(logits, labels, lam=1e-9, top_k=1), ga_loss(logits, labels), atol=1e-6)


@given(batches(allow_empty_rows=False), st.floats(0.01, 2.0), st.floats(-4.0, 4.0))
def test_npo_gradient_is_weighted_ga(batch, beta, offset):
    """∇L_NPO = −mean_rows w·∇ℓ with w = 2σ(β(ℓ_ref − ℓ)) ∈ (0, 2); w = 1 at θ = θ_ref."""
    logits, labels = batch
    ref_lp = sequence_logprob(logits, labels) + offset
    has = (labels[:, 1:] != IGN).any(1)
    _, g_npo = value_and_grad(lambda x: npo_loss(x, labels, ref_lp, beta=beta), logits)
    w = npo_weight(sequence_logprob(logits, labels), ref_lp, beta)
    assert bool(((w > 0) & (w < 2)).all())
    x = logits.clone().requires_grad_(True)
    seq_nll = -sequence_logprob(x, labels)
    (g_expected,) = torch.autograd.grad(-(w * seq_nll)[has].sum() / has.sum(), x)
    assert torch.allclose(g_npo, g_expected, atol=1e-10)
    w_at_ref = npo_weight(sequence_logprob(logits, labels), sequence_logprob(logits, labels), beta)
    assert torch.allclose(w_at_ref, torch.ones_like(w_at_ref))


@given(batches(allow_empty_rows=False), st.floats(0.1, 3.0))
def test_wga_weight_carries_no_gradient(batch, beta):
    logits, labels = batch
    _, g = value_and_grad(lambda x: wga_loss(x, labels, beta=beta), logits)
    # with the weight treated as a constant, the gradient is that of −mean[w·NLL] with w fixed
    logp = torch.log_softmax(logits, -1)
    w = torch.zeros(labels.shape[0], labels.shape[1] - 1, dtype=logits.dtype)
    for r, t, y in answer_positions(labels):
        w[r, t] = (beta * logp[r, t, y]).exp()
    x = logits.clone().requires_grad_(True)
    lp = torch.log_softmax(x, -1)
    per = [((r, t, y), w[r, t] * -lp[r, t, y]) for r, t, y in answer_positions(labels)]
    (g_const,) = torch.autograd.grad(-dense_row_reduce(per, labels), x)
    assert torch.allclose(g, g_const, atol=1e-10)
    # ... and differs from letting the gradient through the weight (so the test can fail)
    y = x.detach().clone().requires_grad_(True)
    lp2 = torch.log_softmax(y, -1)
    per2 = [((r, t, yy), (beta * lp2[r, t, yy]).exp() * -lp2[r, t, yy]) for r, t, yy in answer_positions(labels)]
    (g_through,) = torch.autograd.grad(-dense_row_reduce(per2, labels), y)
    if beta > 0.5 and float(g_through.abs().max()) > 1e-3:
        assert not torch.allclose(g, g_through, atol=1e-6)


# ----------------------------------------------------------------------------------------------------------
# Invariances: constant shift per position, prompt/padding positions
# ----------------------------------------------------------------------------------------------------------


def all_losses(labels, ref_lp):
    return {
        "ga": lambda x: ga_loss(x, labels),
        "ga_scaled": lambda x: ga_scaled_loss(x, labels, lam=0.3),
        "nll": lambda x: nll_loss(x, labels),
        "npo": lambda x: npo_loss(x, labels, ref_lp),
        "simnpo": lambda x: simnpo_loss(x, labels),
        "wga": lambda x: wga_loss(x, labels),
        "bs_t": lambda x: bs_t_loss(x, labels, lam=0.4, top_k=2, temperature=2.0),
    }


@given(batches(min_vocab=3))
def test_adding_a_constant_to_a_position_changes_nothing(batch):
    """Every loss is a function of log-probabilities (SimNPO/NPO included — never raw logits, docs/theory.md §8)."""
    logits, labels = batch
    ref_lp = sequence_logprob(logits, labels) - 1.0
    shift = torch.randn(logits.shape[0], logits.shape[1], 1, dtype=logits.dtype) * 7
    for name, fn in all_losses(labels, ref_lp).items():
        a, b = fn(logits), fn(logits + shift)
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-9 * max(1.0, float(logits.abs().max()))), name


@given(batches(min_vocab=3))
def test_prompt_and_padding_positions_reach_neither_value_nor_gradient(batch):
    logits, labels = batch
    ref_lp = sequence_logprob(logits, labels) - 1.0
    masked = torch.ones(logits.shape[:2], dtype=torch.bool)
    masked[:, :-1] = labels[:, 1:] == IGN  # positions whose prediction is not an answer token
    noisy = logits.clone()
    noisy[masked] = torch.randn_like(noisy[masked]) * 1e3
    noisy[masked.nonzero()[:1].unbind(-1)] = float("nan") if masked.any() else noisy[masked]
    for name, fn in all_losses(labels, ref_lp).items():
        v1, g1 = value_and_grad(fn, logits)
        v2, g2 = value_and_grad(fn, noisy)
        assert torch.equal(v1, v2), name
        assert torch.equal(g1, g2), name
        assert not bool(g2[masked].any()), name


@given(batches())
def test_rows_without_answer_tokens_never_give_nan(batch):
    logits, labels = batch
    labels = labels.clone()
    labels[0] = IGN  # at least one empty row
    ref_lp = sequence_logprob(logits, labels)
    for name, fn in all_losses(labels, ref_lp).items():
        v, g = value_and_grad(fn, logits)
        assert torch.isfinite(v) and bool(torch.isfinite(g).all()), name
    empty = torch.full_like(labels, IGN)
    for name, fn in all_losses(empty, torch.zeros(labels.shape[0], dtype=torch.float64)).items():
        v, g = value_and_grad(fn, logits)
        assert float(v) == 0.0 and not bool(g.any()), name


# ----------------------------------------------------------------------------------------------------------
# Reductions, dtypes, composites
# ----------------------------------------------------------------------------------------------------------


@given(batches(allow_empty_rows=False))
def test_token_reduction_is_hugging_face_loss(batch):
    logits, labels = batch
    hf = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=IGN)
    assert torch.allclose(nll_loss(logits, labels, reduction="token"), hf, rtol=1e-10)
    assert torch.allclose(ga_loss(logits, labels, reduction="token"), -hf, rtol=1e-10)
    per_row = nll_loss(logits, labels, reduction="none")
    has = (labels[:, 1:] != IGN).any(1)
    assert torch.allclose(nll_loss(logits, labels), per_row[has].mean())
    assert torch.allclose(nll_loss(logits, labels, reduction="sum"), per_row[has].sum())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_is_computed_in_float32(dtype):
    g = torch.Generator().manual_seed(3)
    logits = (torch.randn(3, 6, 300, generator=g) * 4).to(dtype)
    labels = torch.randint(0, 300, (3, 6), generator=g)
    labels[:, :2] = IGN
    for name, fn in all_losses(labels, sequence_logprob(logits, labels) - 1).items():
        half = fn(logits)
        full = fn(logits.float())
        assert half.dtype == torch.float32, name
        assert torch.allclose(half, full, rtol=1e-6, atol=1e-6), name


def test_ga_scaled_is_rescaled_ga_and_graddiff_adds_the_retain_term():
    g = torch.Generator().manual_seed(1)
    f, r = torch.randn(2, 5, 11, generator=g), torch.randn(3, 4, 11, generator=g)
    fl, rl = torch.randint(0, 11, (2, 5), generator=g), torch.randint(0, 11, (3, 4), generator=g)
    assert torch.allclose(ga_scaled_loss(f, fl, lam=0.25), 0.75 * ga_loss(f, fl))
    gd = graddiff_loss(f, fl, r, rl, gamma=0.5, alpha=2.0)
    assert torch.allclose(gd, 0.5 * ga_loss(f, fl) + 2.0 * retain_nll_loss(r, rl))
    ref = r + 0.3 * torch.randn_like(r)
    gd_kl = graddiff_loss(f, fl, r, rl, retain="kl", retain_ref_logits=ref)
    assert torch.allclose(gd_kl, ga_loss(f, fl) + retain_kl_loss(r, ref, rl))


@given(batches(allow_empty_rows=False), st.floats(0.0, 1.0), st.sampled_from(["bs_t", "ga", "wga", "npo"]))
def test_bs_s_is_the_weighted_combination_of_eq7(batch, lam_bss, base):
    logits, labels = batch
    g = torch.Generator().manual_seed(7)
    belief_logits = torch.randn(5, 4, logits.shape[-1], generator=g, dtype=torch.float64)
    belief_labels = torch.randint(0, logits.shape[-1], (5, 4), generator=g)
    belief_labels[:, :1] = IGN
    fk = {"ref_logprobs": sequence_logprob(logits, labels) - 1} if base == "npo" else {}
    bk = {"ref_logprobs": sequence_logprob(belief_logits, belief_labels) - 1} if base == "npo" else {}
    kw = {"top_k": 2} if base == "bs_t" else {}
    got = bs_s_loss(
        logits,
        labels,
        belief_logits,
        belief_labels,
        lam_bss=lam_bss,
        base=base,
        base_kwargs=kw,
        forget_kwargs=fk,
        belief_kwargs=bk,
    )
    fn = BASE_LOSSES[base]
    expected = (1 - lam_bss) * fn(logits, labels, **kw, **fk) + lam_bss * fn(belief_logits, belief_labels, **kw, **bk)
    assert torch.allclose(got, expected, atol=1e-10)
    # no usable belief (every sampled answer empty): the forget term alone, never NaN
    empty = torch.full_like(belief_labels, IGN)
    alone = bs_s_loss(
        logits,
        labels,
        belief_logits,
        empty,
        lam_bss=lam_bss,
        base=base,
        base_kwargs=kw,
        forget_kwargs=fk,
        belief_kwargs=bk,
    )
    assert torch.allclose(alone, fn(logits, labels, **kw, **fk))


def test_local_beliefs_expose_support_belief_and_topk_mass():
    logits = torch.tensor([[[3.0, 1.0, 0.0, -1.0], [0.0, 0.0, 0.0, 0.0]]])  # position 0 predicts labels[1]
    labels = torch.tensor([[IGN, 0]])
    tb, at = local_beliefs(logits, labels, top_k=2)
    assert tb.indices.tolist() == [[0, 1]]
    p = torch.softmax(logits[0, 0], -1)
    assert torch.allclose(tb.topk_mass, p[:2].sum()[None])
    assert torch.allclose(tb.belief, (p[:2] / p[:2].sum())[None])
    assert at.counts.tolist() == [1]


# ----------------------------------------------------------------------------------------------------------
# Bad input: one clear ValueError naming the problem
# ----------------------------------------------------------------------------------------------------------


def _ok():
    return torch.randn(2, 5, 30), torch.randint(0, 30, (2, 5))


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda lg, lb: bs_t_loss(lg[:, :4], lb), "labels must have shape"),
        (lambda lg, lb: bs_t_loss(lg[0], lb), r"\[B, T, V\]"),
        (lambda lg, lb: bs_t_loss(lg, lb, top_k=0), "top_k"),
        (lambda lg, lb: bs_t_loss(lg, lb, top_k=31), "top_k"),
        (lambda lg, lb: bs_t_loss(lg, lb, lam=1.5), "lam"),
        (lambda lg, lb: bs_t_loss(lg, lb, lam=-0.1), "lam"),
        (lambda lg, lb: bs_t_loss(lg, lb, temperature=0.0), "temperature"),
        (lambda lg, lb: ga_loss(lg, lb + 30), "token ids"),
        (lambda lg, lb: ga_loss(lg, lb - 200), "token ids"),
        (lambda lg, lb: ga_loss(lg, lb.float()), "integer"),
        (lambda lg, lb: ga_loss(lg.long(), lb), "floating-point"),
        (lambda lg, lb: ga_loss(lg.index_fill(2, torch.tensor([1]), float("nan")), lb), "NaN"),
        (lambda lg, lb: bs_t_loss(lg.index_fill(2, torch.tensor([1]), float("inf")), lb), "NaN or \\+inf"),
        (lambda lg, lb: ga_loss(lg, lb, reduction="avg"), "reduction"),
        (lambda lg, lb: npo_loss(lg, lb, torch.zeros(3)), "ref_logprobs"),
        (lambda lg, lb: npo_loss(lg, lb, torch.zeros(2), beta=0), "beta"),
        (lambda lg, lb: simnpo_loss(lg, lb, beta=-1), "beta"),
        (lambda lg, lb: graddiff_loss(lg, lb, lg, lb, retain="kl"), "retain_ref_logits"),
        (lambda lg, lb: graddiff_loss(lg, lb, lg, lb, retain="l2"), "retain"),
        (lambda lg, lb: bs_s_loss(lg, lb, lg, lb, base="dpo"), "base"),
        (lambda lg, lb: bs_s_loss(lg, lb, lg, lb, lam_bss=2.0), "lam_bss"),
        (lambda lg, lb: bs_t_loss_paper(lg, lb, top_k=31), "top_k"),
        (lambda lg, lb: bs_t_loss_paper(lg, lb, lam=1.5), "lam"),
        (lambda lg, lb: bs_t_loss_paper(lg, lb, temperature=0.0), "temperature"),
        (lambda lg, lb: ga_loss_paper(lg[:, :4], lb), "labels must have shape"),
        (lambda lg, lb: ga_scaled_loss_paper(lg, lb, lam=-0.1), "lam"),
        (lambda lg, lb: npo_loss_paper(lg, lb, torch.zeros(3)), "ref_logprobs"),
        (lambda lg, lb: npo_loss_paper(lg, lb, torch.zeros(2), beta=0), "beta"),
        (lambda lg, lb: simnpo_loss_paper(lg, lb, beta=-1), "beta"),
        (lambda lg, lb: wga_loss_paper(lg, lb, beta=-1), "beta"),
        (lambda lg, lb: graddiff_loss_paper(lg, lb, lg, lb, retain="kl"), "retain_ref_logits"),
        (lambda lg, lb: graddiff_loss_paper(lg, lb, lg, lb, retain="l2"), "retain"),
        (lambda lg, lb: bs_s_loss_paper(lg, lb, lg, lb, base="dpo"), "base"),
        (lambda lg, lb: bs_s_loss_paper(lg, lb, lg, lb, lam_bss=2.0), "lam_bss"),
    ],
)
def test_bad_input_gives_one_clear_value_error(make, match):
    logits, labels = _ok()
    with pytest.raises(ValueError, match=match):
        make(logits, labels)


def test_neg_inf_logits_away_from_the_label_are_allowed():
    """-inf is a legitimate mask for unused vocabulary entries; only the label itself must be reachable."""
    logits, labels = _ok()
    logits[..., 29] = float("-inf")
    labels = labels.clamp(max=28)
    assert math.isfinite(float(ga_loss(logits, labels)))
    with pytest.raises(ValueError, match="probability 0"):
        ga_loss(logits, torch.full_like(labels, 29))
