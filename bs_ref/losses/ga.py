"""Gradient ascent (GA) and its rescaled control GA×(1−λ).

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), Eq. (1):

    L_GA(θ) = −E_{(x,y)∈D_u} ℓ̄(x, y),     ℓ̄ = mean_{i∈A} −log π_θ(y_i | x, y_<i)

Minimising L_GA ascends the answer's NLL. The control ``ga_scaled_loss`` = (1−λ)·L_GA is the plain
rescaling that BS-T reduces to when the belief term carries no information (docs/theory.md D2): any effect BS-T
has beyond it is the belief effect.

``ga_loss_paper`` / ``ga_scaled_loss_paper`` are the same objectives written as the paper prints them, with
the dense log-softmax over the vocabulary (for reading and for the tests).

Shapes: logits [B, T, V], labels [B, T] (HF-aligned, -100 on prompt/padding) → scalar.
"""

from __future__ import annotations

import torch

from ._common import answer_mean, answer_tokens, check_fraction, check_reduction, dense_answers, reduce_tokens


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
    """Control GA×(1−λ) (docs/theory.md §2): GA with its step shrunk by the BS-T weight λ on the target."""
    check_fraction(lam, "lam")
    return (1.0 - lam) * ga_loss(logits, labels, reduction)


def ga_loss_paper(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Eq. (1) as the paper prints it: L_GA = −E_{D_u} mean_{i∈A} −log π_θ(y_i | x, y_<i).

    Reading/test form, O(N·|V|) memory for N answer tokens: it materialises the dense log-distribution
    log p_i = log_softmax(z_i) over the whole vocabulary and reads the label's entry from it. The fast form
    ``ga_loss`` gathers z_i[y_i] and subtracts the log-normaliser logsumexp(z_i) instead, so no [N, V]
    log-distribution is built. Row reduction only (mean per answer, then over rows; docs/theory.md §11.1).
    """
    da = dense_answers(logits, labels)
    nll = -da.target_logprob()  # −log π_θ(y_i | x, y_<i), read from the dense log p_i
    return -answer_mean(nll, da)  # Eq. (1): L_GA = −E_{D_u} ℓ̄(x, y)


def ga_scaled_loss_paper(logits: torch.Tensor, labels: torch.Tensor, lam: float = 0.2) -> torch.Tensor:
    """The control GA×(1−λ) (docs/theory.md §2) on the paper's form of Eq. (1): (1 − λ)·``ga_loss_paper``.

    Reading/test form (O(N·|V|) memory); the fast form ``ga_scaled_loss`` rescales ``ga_loss``."""
    check_fraction(lam, "lam")
    return (1.0 - lam) * ga_loss_paper(logits, labels)  # (1 − λ)·L_GA, Eq. (1)
