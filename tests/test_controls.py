"""BS-T's two exact controls (``bs_ref/losses/controls.py``) and the run-wide reduction convention.

The controls: each fast form equals its dense paper form (value and gradient, float64), and the logit gradients
satisfy the identities of docs/theory.md D2 — BS-T minus each control is exactly the part of the belief term that
control removes. The reduction: ``token`` reproduces the authors' batch token mean (their GA on the issue's case),
and the loop passes the run's reduction to the forget, retain and belief terms alike (docs/theory.md §11).
"""

from __future__ import annotations

import types

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st

from bs_ref.losses import (
    belief_counts,
    bs_s_loss,
    bs_t_loss,
    ga_loss,
    ga_scaled_loss,
    ga_target_matched_loss,
    ga_target_matched_loss_paper,
    nll_loss,
    sga_loss,
    sga_loss_paper,
)
from bs_ref.methods import BSS, GA, GradDiff, make_method
from bs_ref.runner import micro_step
from bs_ref.unlearn import UnlearnConfig

IGN = -100


@st.composite
def batches(draw, vocab_range=(2, 12)):
    """float64 logits [B, T, V] and HF-aligned labels with prompt/padding, at least one answer token."""
    vocab = draw(st.integers(*vocab_range))
    b, t = draw(st.integers(1, 3)), draw(st.integers(2, 6))
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31 - 1)))
    logits = torch.randn(b, t, vocab, generator=g, dtype=torch.float64) * draw(st.sampled_from([0.1, 1.0, 4.0]))
    labels = torch.randint(0, vocab, (b, t), generator=g)
    for r in range(b):
        prompt = draw(st.integers(0, t - 1))
        labels[r, :prompt] = IGN
    labels[0, -1] = int(labels[0, -1].clamp(min=0))  # the first row keeps an answer token
    return logits, labels


def grad_of(fn, logits):
    x = logits.clone().requires_grad_(True)
    value = fn(x)
    return value.detach(), torch.autograd.grad(value, x)[0]


def dense_q(z, top_k, temperature):
    """BS-T's belief q over the whole vocabulary (zero outside H_k), [..., V]."""
    support = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, z.topk(top_k, dim=-1).indices, True)
    q = torch.softmax(z / temperature, dim=-1) * support
    return q / q.sum(dim=-1, keepdim=True)


def positions(labels):
    """(row, position) of every answer token (the shifted label is not -100) and 1/(B_eff·n_row) of each."""
    mask = labels[:, 1:] != IGN
    rows_with = int(mask.any(dim=1).sum())
    out = []
    for r, t in mask.nonzero().tolist():
        out.append((r, t, 1.0 / (rows_with * int(mask[r].sum()))))
    return out


# ---------------------------------------------------------------------------------------------- fast = dense
@settings(max_examples=40, deadline=None)
@given(batches(), st.floats(0.0, 1.0), st.data())
def test_controls_fast_forms_equal_their_dense_paper_forms(batch, lam, data):
    logits, labels = batch
    top_k = data.draw(st.integers(1, logits.shape[-1]))
    tau = data.draw(st.sampled_from([0.5, 1.0, 3.0]))
    for fast, paper in (
        (
            lambda x: ga_target_matched_loss(x, labels, lam, top_k, tau),
            lambda x: ga_target_matched_loss_paper(x, labels, lam, top_k, tau),
        ),
        (lambda x: sga_loss(x, labels, lam), lambda x: sga_loss_paper(x, labels, lam)),
    ):
        (va, ga), (vb, gb) = grad_of(fast, logits), grad_of(paper, logits)
        assert abs(float(va - vb)) <= 1e-10 * max(1.0, abs(float(vb)))
        assert float((ga - gb).abs().max()) <= 1e-10


# ---------------------------------------------------------------------------------------------- D2 identities
@settings(max_examples=40, deadline=None)
@given(batches(), st.floats(0.0, 1.0), st.data())
def test_bs_t_minus_each_control_is_the_part_of_the_belief_term_it_removes(batch, lam, data):
    """At an answer position with p = softmax(z), t = (1 − λ)·e_y + λ·q (docs/theory.md D2), the minimised losses
    have ∂L/∂z = −(p − target)/(B·n), so BS-T minus each control is −1/(B·n) times:
    GA×(1−λ): λ·(p − q);  target-matched: λ·((1 − q_y)·p − q + q_y·e_y);  SGA: λ·(u − q)."""
    logits, labels = batch
    vocab = logits.shape[-1]
    top_k = data.draw(st.integers(1, vocab))
    tau = data.draw(st.sampled_from([0.5, 1.0, 3.0]))
    _, g_bst = grad_of(lambda x: bs_t_loss(x, labels, lam, top_k, tau), logits)
    _, g_scaled = grad_of(lambda x: ga_scaled_loss(x, labels, lam), logits)
    _, g_matched = grad_of(lambda x: ga_target_matched_loss(x, labels, lam, top_k, tau), logits)
    _, g_sga = grad_of(lambda x: sga_loss(x, labels, lam), logits)
    for r, t, scale in positions(labels):
        z, y = logits[r, t], int(labels[r, t + 1])
        p, q, e_y = torch.softmax(z, -1), dense_q(z, top_k, tau), F.one_hot(torch.tensor(y), vocab).double()
        u = torch.full_like(p, 1.0 / vocab)
        expected = {
            "ga_scaled": lam * (p - q),
            "ga_target_matched": lam * ((1 - q[y]) * p - q + q[y] * e_y),
            "sga": lam * (u - q),
        }
        for name, g in (("ga_scaled", g_scaled), ("ga_target_matched", g_matched), ("sga", g_sga)):
            got = (g_bst[r, t] - g[r, t]) / -scale
            assert float((got - expected[name]).abs().max()) <= 1e-10, name
        # the target-matched control puts BS-T's own weight on the target: the remainder has no e_y share beyond
        # what p carries, and it sums to zero like every residual difference
        assert abs(float(expected["ga_target_matched"].sum())) <= 1e-12
    # no gradient off the answer positions
    mask = torch.zeros(labels.shape, dtype=torch.bool)
    for r, t, _ in positions(labels):
        mask[r, t] = True
    assert float(g_matched[~mask].abs().sum()) == 0.0 and float(g_sga[~mask].abs().sum()) == 0.0


def test_controls_reduce_to_ga_and_to_bs_t_where_they_should():
    g = torch.Generator().manual_seed(3)
    logits, labels = torch.randn(2, 5, 7, generator=g, dtype=torch.float64), torch.randint(0, 7, (2, 5), generator=g)
    labels[:, 0] = IGN
    assert torch.allclose(ga_target_matched_loss(logits, labels, lam=0.0, top_k=3), ga_loss(logits, labels))
    assert torch.allclose(sga_loss(logits, labels, lam=0.0), ga_loss(logits, labels))
    # k = 1 with the target on top: q = e_y, the weight is 1 and BS-T, the control and GA coincide
    top = logits.argmax(-1)
    labels_top = torch.cat([torch.full((2, 1), IGN), top[:, :-1]], dim=1)
    for lam in (0.3, 0.9):
        assert torch.allclose(ga_target_matched_loss(logits, labels_top, lam, top_k=1), ga_loss(logits, labels_top))
        assert torch.allclose(bs_t_loss(logits, labels_top, lam, top_k=1), ga_loss(logits, labels_top))


# ---------------------------------------------------------------------------------------------- the reduction
def issue_case():
    """V = 2, logits all 0 except logits[1, 1, 0] = 2, labels [[-100, 1, -100], [-100, 1, 1]]."""
    logits = torch.zeros(2, 3, 2, dtype=torch.float64)
    logits[1, 1, 0] = 2.0
    return logits, torch.tensor([[IGN, 1, IGN], [IGN, 1, 1]])


AUTHORS_GA = -1.1710741241  # the authors' GA: one token mean over the batch
ROW_GA = -1.0515923882  # bs_ref's row mean: per answer, then over answers


class FixedLogits(torch.nn.Module):
    """A stand-in model whose logits are a parameter (the loop's forward is ``model(input_ids=..., ...).logits``)."""

    def __init__(self, logits):
        super().__init__()
        self.z = torch.nn.Parameter(logits.clone())

    def forward(self, input_ids=None, attention_mask=None, **_):
        return types.SimpleNamespace(logits=self.z)


def test_token_reduction_reproduces_the_authors_ga_and_the_loop_passes_it_to_every_term():
    logits, labels = issue_case()
    assert float(ga_loss(logits, labels, "token")) == pytest.approx(AUTHORS_GA, abs=1e-10)
    assert float(ga_loss(logits, labels, "row")) == pytest.approx(ROW_GA, abs=1e-10)
    batch = {"input_ids": torch.zeros(2, 3, dtype=torch.long), "attention_mask": torch.ones(2, 3), "labels": labels}
    for reduction, ga in (("token", AUTHORS_GA), ("row", ROW_GA)):
        stats = micro_step(UnlearnConfig(method=GA(), reduction=reduction), FixedLogits(logits), batch)
        assert stats["forget"] == pytest.approx(ga, abs=1e-10)
        # GradDiff: the retain term (here the same rows) is reduced the same way, −GA
        cfg = UnlearnConfig(method=GradDiff(), alpha=1.0, reduction=reduction)
        stats = micro_step(cfg, FixedLogits(logits), batch, batch)
        assert stats["retain"] == pytest.approx(-ga, abs=1e-10)
        assert stats["retain"] == pytest.approx(float(nll_loss(logits, labels, reduction)), abs=1e-12)


@settings(max_examples=25, deadline=None)
@given(batches(), batches(), st.sampled_from(["ga", "bs_t", "wga", "npo"]))
def test_bs_s_terms_take_the_runs_reduction_for_the_forget_and_the_belief_rows(forget, beliefs, base):
    """BS-S with ``reduction="token"``: a token mean over the forget rows, another over all belief rows (the authors'
    BS-S on a GA base), whatever the row chunks: the terms as the loop runs them equal ``bs_s_loss``."""
    (f, fl), (b, bl) = forget, beliefs
    if f.shape[-1] != b.shape[-1]:
        b = torch.randn(*b.shape[:2], f.shape[-1], dtype=torch.float64)
        bl = bl.clamp(max=f.shape[-1] - 1).where(bl != IGN, torch.tensor(IGN))
    method = BSS(base=base, top_k=1, belief_microbatch=1)
    terms = method.forget_terms({"labels": fl}, {"labels": bl}, reduction="token")
    if belief_counts(bl)[0] == 0:
        return
    fref = torch.zeros(fl.shape[0], dtype=torch.float64) - 1.0
    bref = torch.zeros(bl.shape[0], dtype=torch.float64) + 0.5
    total = terms[0].weight * terms[0].piece(f, fl, fref if base == "npo" else None)
    for i in range(bl.shape[0]):
        if bool((bl[i : i + 1, 1:] != IGN).any()):
            total = total + terms[1].weight * terms[1].piece(
                b[i : i + 1], bl[i : i + 1], bref[i : i + 1] if base == "npo" else None
            )
    kwargs = {
        "reduction": "token",
        **({"lam": method.lam, "top_k": 1, "temperature": 1.0} if base == "bs_t" else {}),
        **({"beta": 0.1 if base == "npo" else 1.0} if base in ("npo", "wga") else {}),
    }
    extra = ({"ref_logprobs": fref}, {"ref_logprobs": bref}) if base == "npo" else ({}, {})
    expected = bs_s_loss(f, fl, b, bl, method.lam_bss, base, kwargs, *extra)
    assert float(total) == pytest.approx(float(expected), rel=1e-9, abs=1e-12)


def test_reduction_is_a_checked_run_wide_setting():
    assert UnlearnConfig().reduction == "row"  # the default: the paper's Eq. (1) per-answer mean
    with pytest.raises(ValueError, match="reduction='sum' is invalid"):
        UnlearnConfig(reduction="sum").validate()
    with pytest.raises(ValueError, match="reduction='token' is invalid.*row"):
        UnlearnConfig(method=make_method("bs_s", share_prefix=True), reduction="token").validate()
    UnlearnConfig(method=make_method("bs_s"), reduction="token").validate()
    assert UnlearnConfig(reduction="token").as_dict()["reduction"] == "token"  # recorded with the run's config
