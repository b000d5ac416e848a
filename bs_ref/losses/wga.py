"""Weighted gradient ascent (WGA).

Paper: Li et al., ICLR 2026 (arXiv 2510.19422), Eq. (4), after Wang et al. 2025 ("Rethinking LLM
Unlearning Objectives"):

    L_WGA(θ) = −E_{D_u} mean_{i∈A} [ sg(p_i[y_i])^β · (−log p_i[y_i]) ]

The weight sg(p^β) is detached (no gradient flows through it): tokens the model already finds unlikely
are pushed less. β = 1 by default.

``wga_loss_paper`` writes Eq. (4) with the dense softmax over the vocabulary (for reading and for the tests).

Shapes: logits [B, T, V], labels [B, T] → scalar.
"""

from __future__ import annotations

import torch

from ._common import answer_mean, answer_tokens, check_reduction, dense_answers, reduce_tokens


def wga_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float = 1.0, reduction: str = "row") -> torch.Tensor:
    """Eq. (4): −mean[sg(p_y)^β · NLL_y]."""
    check_reduction(reduction)
    if not float(beta) >= 0.0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    at = answer_tokens(logits, labels)
    logp = at.target_logprob()
    weight = (beta * logp.detach()).exp()  # sg(p_i[y_i])^β
    return -reduce_tokens(weight * (-logp), at, reduction)  # Eq. (4)


def wga_loss_paper(logits: torch.Tensor, labels: torch.Tensor, beta: float = 1.0) -> torch.Tensor:
    """Eq. (4) as the paper prints it: L_WGA = −E_{D_u} mean_{i∈A} [ sg(p_i[y_i])^β · (−log p_i[y_i]) ].

    Reading/test form, O(N·|V|) memory: log p_i is the dense [N, V] log-softmax. The weight sg(p_i[y_i])^β is
    taken as exp(β·sg(log p_i[y_i])): p_i[y_i] itself underflows to 0 at large logit scales, where 0^β would drop
    a token whose weight is small but not negligible against its NLL. The fast form ``wga_loss`` gathers the
    label logit and subtracts the log-normaliser instead of building log p_i, and offers the other reductions.
    Row reduction (mean per answer, then over rows).
    """
    if not float(beta) >= 0.0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    da = dense_answers(logits, labels)
    logp_y = da.target_logprob()  # log p_i[y_i], read from the dense log p_i
    weight = torch.exp(beta * logp_y.detach())  # sg(p_i[y_i])^β, in log space
    nll = -logp_y  # −log p_i[y_i]
    return -answer_mean(weight * nll, da)  # Eq. (4)
