"""Weighted gradient ascent (WGA).

Paper: Li et al., ICLR 2026 (arXiv 2510.19422), Eq. (4), after Wang et al. 2025 ("Rethinking LLM
Unlearning Objectives"):

    L_WGA(θ) = −E_{D_u} mean_{i∈A} [ sg(p_i[y_i])^β · (−log p_i[y_i]) ]

The weight sg(p^β) is detached (no gradient flows through it): tokens the model already finds unlikely
are pushed less. β = 1 by default.

Shapes: logits [B, T, V], labels [B, T] → scalar.
"""

from __future__ import annotations

import torch

from ._common import answer_tokens, check_reduction, reduce_tokens


def wga_loss(logits: torch.Tensor, labels: torch.Tensor, beta: float = 1.0, reduction: str = "row") -> torch.Tensor:
    """Eq. (4): −mean[sg(p_y)^β · NLL_y]."""
    check_reduction(reduction)
    if not float(beta) >= 0.0:
        raise ValueError(f"beta must be >= 0, got {beta}")
    at = answer_tokens(logits, labels)
    logp = at.target_logprob()
    weight = (beta * logp.detach()).exp()  # sg(p_i[y_i])^β
    return -reduce_tokens(weight * (-logp), at, reduction)  # Eq. (4)
