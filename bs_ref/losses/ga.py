"""Gradient ascent (GA) and its rescaled control GA×(1−λ).

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), Eq. (1):

    L_GA(θ) = −E_{(x,y)∈D_u} ℓ̄(x, y),     ℓ̄ = mean_{i∈A} −log π_θ(y_i | x, y_<i)

Minimising L_GA ascends the answer's NLL. The control ``ga_scaled_loss`` = (1−λ)·L_GA is the plain
rescaling that BS-T reduces to when the belief term carries no information (SPEC D2): any effect BS-T
has beyond it is the belief effect.

Shapes: logits [B, T, V], labels [B, T] (HF-aligned, -100 on prompt/padding) → scalar.
"""

from __future__ import annotations

import torch

from ._common import answer_tokens, check_fraction, check_reduction, reduce_tokens


def nll_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "row") -> torch.Tensor:
    """Answer NLL ℓ̄ (the finetuning / retain loss), reduced as ``reduction`` says."""
    check_reduction(reduction)
    at = answer_tokens(logits, labels)
    return reduce_tokens(-at.target_logprob(), at, reduction)


def ga_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "row") -> torch.Tensor:
    """Eq. (1): −ℓ̄, the scalar to minimise (``loss.backward()`` unlearns)."""
    return -nll_loss(logits, labels, reduction)  # Eq. (1)


def ga_scaled_loss(
    logits: torch.Tensor, labels: torch.Tensor, lam: float = 0.2, reduction: str = "row"
) -> torch.Tensor:
    """Control GA×(1−λ) (SPEC §2): GA with its step shrunk by the BS-T weight λ on the target."""
    check_fraction(lam, "lam")
    return (1.0 - lam) * ga_loss(logits, labels, reduction)
