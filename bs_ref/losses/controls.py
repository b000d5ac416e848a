"""Two controls of BS-T that each remove one part of its belief term (docs/theory.md D2, §3).

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), Eq. (5)–(6). BS-T's soft
cross-entropy at an answer position splits into the target and the rest of the top-k support H_k:

    CE_i = w_i·(−log p_i[y_i]) + λ·Σ_{v∈H_k, v≠y_i} q_i[v]·(−log p_i[v]),     w_i = 1 − λ + λ·q_i[y_i]

* ``ga_target_matched_loss``: GA with every token weighted by BS-T's own target weight ``sg(w_i)`` (q from the
  same top-k softmax at temperature τ, detached). BS-T minus it is the push on the non-target top-k alone.
* ``sga_loss``: label smoothing towards the uniform distribution u over the vocabulary with the same λ, the soft
  target ``(1 − λ)·e_y + λ·u`` (gradient ascent with smoothing, "SGA", arXiv 2510.22376). BS-T minus it is
  λ·(u − q) in the logit residual: whether the *model's own* top-k matters, or only that the target is softened.

Both are ascended (the scalar returned is −mean CE, minimised) and reduced like every loss (``reduction``). The
``*_paper`` forms build the dense [N, V] target, as ``bs_t_loss_paper`` does, for reading and for the tests.

Shapes: logits [B, T, V], labels [B, T] (HF-aligned, -100 on prompt/padding) → scalar.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import (
    AnswerTokens,
    answer_mean,
    answer_tokens,
    check_fraction,
    check_positive,
    check_reduction,
    dense_answers,
    reduce_tokens,
)
from .bs_t import check_top_k, token_beliefs


@torch.no_grad()
def bst_target_weight(at: AnswerTokens, lam: float, top_k: int = 20, temperature: float = 1.0) -> torch.Tensor:
    """sg(w_i) = 1 − λ + λ·q_i[y_i] at every answer token, shape [N] (q_i[y_i] = 0 where y_i ∉ H_k(i))."""
    tb = token_beliefs(at.logits, at.logz, top_k, temperature)
    q_y = (tb.belief * (tb.indices == at.targets[:, None])).sum(dim=-1)
    return 1.0 - lam + lam * q_y


def ga_target_matched_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    lam: float = 0.2,
    top_k: int = 20,
    temperature: float = 1.0,
    reduction: str = "row",
) -> torch.Tensor:
    """−mean_i sg(w_i)·(−log p_i[y_i]): GA weighted per token by BS-T's target weight (docs/theory.md D2)."""
    check_reduction(reduction)
    check_fraction(lam, "lam")
    check_positive(temperature, "temperature")
    at = answer_tokens(logits, labels)
    check_top_k(top_k, logits.shape[-1])
    weight = bst_target_weight(at, float(lam), top_k, temperature)
    return -reduce_tokens(weight * -at.target_logprob(), at, reduction)


def sga_loss(logits: torch.Tensor, labels: torch.Tensor, lam: float = 0.2, reduction: str = "row") -> torch.Tensor:
    """−mean_i CE(t_i, p_i) with t_i = (1 − λ)·e_{y_i} + λ·u: ascent of the label-smoothed cross-entropy.

    The uniform part needs no [N, V] target: Σ_v u_v·(−log p_i[v]) = logsumexp(z_i) − mean_v z_i[v]."""
    check_reduction(reduction)
    check_fraction(lam, "lam")
    at = answer_tokens(logits, labels)
    uniform_ce = at.logz - at.logits.mean(dim=-1)  # Σ_v (1/V)·(−log p_i[v])
    ce = (1.0 - lam) * -at.target_logprob() + lam * uniform_ce
    return -reduce_tokens(ce, at, reduction)


def ga_target_matched_loss_paper(
    logits: torch.Tensor, labels: torch.Tensor, lam: float = 0.2, top_k: int = 20, temperature: float = 1.0
) -> torch.Tensor:
    """The target-matched control with BS-T's dense belief q_i (as ``bs_t_loss_paper`` builds it): the weight
    w_i = 1 − λ + λ·q_i[y_i] read off the dense q, times the dense log p_i[y_i]; row reduction. Reading/test form."""
    check_fraction(lam, "lam")
    check_positive(temperature, "temperature")
    da = dense_answers(logits, labels)
    check_top_k(top_k, logits.shape[-1])
    z = da.logits
    with torch.no_grad():  # q_i = sg(·), as in BS-T
        support = torch.zeros_like(z, dtype=torch.bool).scatter_(-1, z.topk(top_k, dim=-1).indices, True)
        q = torch.softmax(z / temperature, dim=-1) * support
        q = q / q.sum(dim=-1, keepdim=True)
        w = 1.0 - lam + lam * q.gather(-1, da.targets[:, None]).squeeze(-1)  # BS-T's weight t_i[y_i]
    return -answer_mean(w * -da.target_logprob(), da)


def sga_loss_paper(logits: torch.Tensor, labels: torch.Tensor, lam: float = 0.2) -> torch.Tensor:
    """Label-smoothed ascent with the dense target t_i = (1 − λ)·e_{y_i} + λ/|V| and CE_i = −Σ_v t_i[v]·log p_i[v];
    row reduction. Reading/test form, O(N·|V|) memory."""
    check_fraction(lam, "lam")
    da = dense_answers(logits, labels)
    vocab = da.logits.shape[-1]
    t = (1.0 - lam) * F.one_hot(da.targets, vocab).to(da.logp.dtype) + lam / vocab  # the smoothed target
    return -answer_mean(-(t * da.logp).sum(dim=-1), da)
