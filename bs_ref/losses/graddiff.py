"""Gradient difference (GradDiff) and the two retain terms.

Paper: Li et al., ICLR 2026 (arXiv 2510.19422), Eq. (2):

    L_GD(θ) = γ · L_GA(θ; D_u) + α · L_retain(θ; D_r)

with L_retain either the answer NLL on a retain batch, or KL(π_θ ‖ π_ref) averaged over the retain
batch's **answer positions only** (OpenUnlearning averages the KL over prompt and padding positions too,
docs/theory.md §8; we do not).

``graddiff_loss_paper`` is Eq. (2) on the paper's forms of both terms (dense log-softmax; for reading and tests).

Shapes: forget/retain logits [B, T, V], labels [B, T] (HF-aligned, -100 on prompt/padding) → scalar.
"""

from __future__ import annotations

import torch

from ._common import (
    IGNORE_INDEX,
    answer_mean,
    answer_tokens,
    check_logits_labels,
    check_reduction,
    compute_dtype,
    dense_answers,
    reduce_tokens,
)
from .ga import ga_loss, ga_loss_paper, nll_loss


def retain_nll_loss(logits: torch.Tensor, labels: torch.Tensor, reduction: str = "row") -> torch.Tensor:
    """Retain term: answer NLL on the retain batch (minimised)."""
    return nll_loss(logits, labels, reduction)


def retain_kl_loss(
    logits: torch.Tensor, ref_logits: torch.Tensor, labels: torch.Tensor, reduction: str = "row"
) -> torch.Tensor:
    """Retain term: KL(π_θ ‖ π_ref) = Σ_v p_θ[v] (log p_θ[v] − log p_ref[v]) at answer positions.

    ``ref_logits`` come from the frozen reference model on the same batch (no gradient flows into them).
    """
    check_reduction(reduction)
    check_logits_labels(ref_logits, labels, "ref_logits")
    if ref_logits.shape != logits.shape:
        raise ValueError(f"ref_logits {tuple(ref_logits.shape)} must match logits {tuple(logits.shape)}")
    at = answer_tokens(logits, labels)
    mask = labels[:, 1:] != IGNORE_INDEX
    ref = ref_logits[:, :-1, :][mask].detach().to(compute_dtype(logits))
    logp = at.logits - at.logz[:, None]
    logp_ref = torch.log_softmax(ref, dim=-1)
    kl = (logp.exp() * (logp - logp_ref)).sum(-1)
    return reduce_tokens(kl, at, reduction)


def retain_loss(
    retain_logits: torch.Tensor,
    retain_labels: torch.Tensor,
    kind: str = "nll",
    retain_ref_logits: torch.Tensor | None = None,
    reduction: str = "row",
) -> torch.Tensor:
    """L_retain of Eq. (2): ``kind="nll"`` (answer NLL) or ``"kl"`` (KL(π_θ‖π_ref) on answer positions; needs
    ``retain_ref_logits`` from the frozen reference model)."""
    if kind == "nll":
        return retain_nll_loss(retain_logits, retain_labels, reduction)
    if kind == "kl":
        if retain_ref_logits is None:
            raise ValueError("retain='kl' needs retain_ref_logits from the frozen reference model")
        return retain_kl_loss(retain_logits, retain_ref_logits, retain_labels, reduction)
    raise ValueError(f"retain must be 'nll' or 'kl', got {kind!r}")


def regularised_loss(
    forget_term: torch.Tensor, retain_term: torch.Tensor | None, gamma: float = 1.0, alpha: float = 1.0
) -> torch.Tensor:
    """Eq. (2)'s composition L = γ·L_forget + α·L_retain, for any forget term (every method but GA carries the
    retain term; ``retain_term=None`` leaves γ·L_forget). This is the line the unlearning loop runs."""
    total = gamma * forget_term
    if retain_term is None:
        return total
    return total + alpha * retain_term  # Eq. (2)


def graddiff_loss(
    forget_logits: torch.Tensor,
    forget_labels: torch.Tensor,
    retain_logits: torch.Tensor,
    retain_labels: torch.Tensor,
    gamma: float = 1.0,
    alpha: float = 1.0,
    retain: str = "nll",
    retain_ref_logits: torch.Tensor | None = None,
    reduction: str = "row",
) -> torch.Tensor:
    """Eq. (2): γ·GA(forget) + α·retain, with ``retain`` ∈ {"nll", "kl"} (kl needs ``retain_ref_logits``)."""
    retain_term = retain_loss(retain_logits, retain_labels, retain, retain_ref_logits, reduction)
    return regularised_loss(ga_loss(forget_logits, forget_labels, reduction), retain_term, gamma, alpha)  # Eq. (2)


def graddiff_loss_paper(
    forget_logits: torch.Tensor,
    forget_labels: torch.Tensor,
    retain_logits: torch.Tensor,
    retain_labels: torch.Tensor,
    gamma: float = 1.0,
    alpha: float = 1.0,
    retain: str = "nll",
    retain_ref_logits: torch.Tensor | None = None,
) -> torch.Tensor:
    """Eq. (2) as the paper prints it: L_GD = γ·L_GA(D_u) + α·L_retain(D_r), every term from the dense
    log-softmax over the vocabulary.

    L_GA is ``ga_loss_paper`` (Eq. 1); L_retain is the answer NLL ℓ̄ on D_r (``retain="nll"``), or
    KL(π_θ ‖ π_ref) = Σ_v p_θ[v]·(log p_θ[v] − log p_ref[v]) at the retain batch's answer positions
    (``retain="kl"``, needs ``retain_ref_logits``; docs/theory.md §2). Both E_{D} mean_{i∈A}.

    Reading/test form, O(N·|V|) memory. The fast form ``graddiff_loss`` computes the GA and NLL terms by a
    gather minus the log-normaliser (the KL term is dense in both forms) and offers the other reductions.
    """
    forget_term = ga_loss_paper(forget_logits, forget_labels)  # L_GA(D_u), Eq. (1)
    if retain == "nll":
        retain_term = -ga_loss_paper(retain_logits, retain_labels)  # ℓ̄ on D_r
    elif retain == "kl":
        if retain_ref_logits is None:
            raise ValueError("retain='kl' needs retain_ref_logits from the frozen reference model")
        if retain_ref_logits.shape != retain_logits.shape:
            raise ValueError(
                f"ref_logits {tuple(retain_ref_logits.shape)} must match logits {tuple(retain_logits.shape)}"
            )
        da = dense_answers(retain_logits, retain_labels)
        logp_ref = dense_answers(retain_ref_logits.detach(), retain_labels, "ref_logits").logp.to(da.logp.dtype)
        kl = (da.logp.exp() * (da.logp - logp_ref)).sum(dim=-1)  # KL(π_θ ‖ π_ref) at each answer position
        retain_term = answer_mean(kl, da)
    else:
        raise ValueError(f"retain must be 'nll' or 'kl', got {retain!r}")
    return gamma * forget_term + alpha * retain_term  # Eq. (2)
