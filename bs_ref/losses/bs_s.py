"""BS-S: sequence-level bootstrapping with the model's global beliefs.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), Eq. (7):

    D̂_u   = {(x_u, ŷ_u^(j)) : j = 1..N},  ŷ_u^(j) ~ π_θ(·|x_u) with high confidence   (global beliefs)
    L_BSS = (1 − λ_BSS) · L_base(D_u) + λ_BSS · L_base(D̂_u)

``L_base`` ∈ {GA, NPO, WGA, BS-T}; default BS-T (the paper's best base). The authors' released class uses
GA and λ_BSS = 0.5. Sampling and caching of the beliefs live in ``bs_ref.beliefs``; this file is the
objective only.

Shapes: forget logits [B, T, V] with labels [B, T]; belief logits [B·N, T', V'] with labels [B·N, T']
(belief rows of the same forget items) → scalar. For large N, evaluate the belief term in micro-batches
with ``base_loss`` and combine the pieces with ``bs_s_combine``.
"""

from __future__ import annotations

from typing import Any

import torch

from ._common import check_fraction
from .bs_t import bs_t_loss
from .ga import ga_loss
from .npo import npo_loss
from .wga import wga_loss

BASE_LOSSES = {"bs_t": bs_t_loss, "ga": ga_loss, "npo": npo_loss, "wga": wga_loss}
"""Base losses BS-S can wrap. NPO additionally needs ``ref_logprobs`` for each set of rows."""


def base_loss(name: str, logits: torch.Tensor, labels: torch.Tensor, **kwargs: Any) -> torch.Tensor:
    """L_base on one batch of rows, by name (see ``BASE_LOSSES``)."""
    if name not in BASE_LOSSES:
        raise ValueError(f"base must be one of {sorted(BASE_LOSSES)}, got {name!r}")
    return BASE_LOSSES[name](logits, labels, **kwargs)


def bs_s_combine(forget_term: torch.Tensor, belief_term: torch.Tensor | None, lam_bss: float = 0.5) -> torch.Tensor:
    """Eq. (7): (1 − λ_BSS)·L_base(D_u) + λ_BSS·L_base(D̂_u). ``belief_term=None`` (no usable belief,
    e.g. every sampled answer was empty) leaves the forget term alone rather than inventing a zero."""
    check_fraction(lam_bss, "lam_bss")
    if belief_term is None:
        return forget_term
    return (1.0 - lam_bss) * forget_term + lam_bss * belief_term  # Eq. (7)


def bs_s_loss(
    forget_logits: torch.Tensor,
    forget_labels: torch.Tensor,
    belief_logits: torch.Tensor,
    belief_labels: torch.Tensor,
    lam_bss: float = 0.5,
    base: str = "bs_t",
    base_kwargs: dict[str, Any] | None = None,
    forget_kwargs: dict[str, Any] | None = None,
    belief_kwargs: dict[str, Any] | None = None,
) -> torch.Tensor:
    """Eq. (7) on one forget batch and its own belief rows.

    ``base_kwargs`` go to both terms (e.g. ``{"lam": 0.2, "top_k": 20}`` for the BS-T base);
    ``forget_kwargs``/``belief_kwargs`` add per-term arguments, e.g. NPO's ``ref_logprobs`` of each set of
    rows. A belief batch without any answer token (every sampled answer empty) contributes nothing.
    """
    base_kwargs = base_kwargs or {}
    forget_term = base_loss(base, forget_logits, forget_labels, **base_kwargs, **(forget_kwargs or {}))
    has_belief = belief_labels.dim() == 2 and bool((belief_labels[:, 1:] != -100).any())
    belief_term = (
        base_loss(base, belief_logits, belief_labels, **base_kwargs, **(belief_kwargs or {})) if has_belief else None
    )
    return bs_s_combine(forget_term, belief_term, lam_bss)
