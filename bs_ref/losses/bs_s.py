"""BS-S: sequence-level bootstrapping with the model's global beliefs.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), Eq. (7):

    D̂_u   = {(x_u, ŷ_u^(j)) : j = 1..N},  ŷ_u^(j) ~ π_θ(·|x_u) with high confidence   (global beliefs)
    L_BSS = (1 − λ_BSS) · L_base(D_u) + λ_BSS · L_base(D̂_u)

``L_base`` ∈ {GA, NPO, WGA, BS-T}; default BS-T (the paper's best base). The authors' released class uses
GA and λ_BSS = 0.5. Sampling and caching of the beliefs live in ``bs_ref.beliefs``; this file is the
objective only.

Shapes: forget logits [B, T, V] with labels [B, T]; belief logits [B·N, T', V'] with labels [B·N, T']
(belief rows of the same forget items) → scalar. For large N the belief term is evaluated in row chunks:
``belief_piece`` is one chunk's share of L_base(D̂_u), so the pieces of all chunks add up to it exactly.

What the unlearning loop runs (``bs_ref.methods.BSS.forget_terms``, ``bs_ref.runner.run_rows``): the base loss on
the forget rows with weight 1 − λ_BSS, and ``belief_piece`` on each chunk of belief rows with weight λ_BSS,
backwarded chunk by chunk; with prefix sharing or belief subsampling, ``weighted_row_piece`` on rows that carry
their own weights. ``bs_s_loss`` is the same Eq. (7) in one call (one chunk of belief rows, one backward).

``bs_s_loss_paper`` writes Eq. (7) as printed, on the paper's forms of the base losses and with L_base(D̂_u)
taken over all belief rows at once (for reading and for the tests).
"""

from __future__ import annotations

from typing import Any

import torch

from ._common import IGNORE_INDEX, check_fraction
from .bs_t import bs_t_loss, bs_t_loss_paper
from .ga import ga_loss, ga_loss_paper
from .npo import npo_loss, npo_loss_paper
from .wga import wga_loss, wga_loss_paper

BASE_LOSSES = {"bs_t": bs_t_loss, "ga": ga_loss, "npo": npo_loss, "wga": wga_loss}
"""Base losses BS-S can wrap. NPO additionally needs ``ref_logprobs`` for each set of rows."""

BASE_LOSSES_PAPER = {"bs_t": bs_t_loss_paper, "ga": ga_loss_paper, "npo": npo_loss_paper, "wga": wga_loss_paper}
"""The paper's forms of the same base losses (``bs_s_loss_paper``; reading/test forms, row reduction only)."""


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


def belief_piece(
    logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    base: str,
    rows_with_answer: int,
    answer_tokens: int,
    reduction: str = "row",
    **kwargs: Any,
) -> torch.Tensor:
    """One row chunk's share of L_base(D̂_u): the pieces of disjoint chunks add up to L_base on all belief rows.
    This is what the unlearning loop runs on each chunk of belief rows (``bs_ref.methods.BSS.forget_terms``).

    ``rows_with_answer`` / ``answer_tokens`` count the belief rows with at least one answer token / all answer
    tokens of the WHOLE belief batch (the normalisers of the "row" and "token" reductions). NPO's "token"
    reduction is its row mean (it is a per-sequence loss).
    """
    if reduction == "sum":
        return base_loss(base, logits, labels, reduction="sum", **kwargs)
    if reduction == "token" and base != "npo":  # token mean over the whole belief batch
        chunk_tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
        return base_loss(base, logits, labels, reduction="token", **kwargs) * (chunk_tokens / answer_tokens)
    if reduction not in ("row", "token"):
        raise ValueError(f"reduction must be 'row', 'token' or 'sum' for BS-S, got {reduction!r}")
    return base_loss(base, logits, labels, reduction="sum", **kwargs) / rows_with_answer  # row mean


def belief_counts(labels: torch.Tensor) -> tuple[int, int]:
    """(rows with at least one answer token, answer tokens) of a belief batch's labels [R, T]."""
    if labels.dim() != 2 or labels.numel() == 0:
        return 0, 0
    answer = labels[:, 1:] != IGNORE_INDEX
    return int(answer.any(dim=1).sum()), int(answer.sum())


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
    check_fraction(lam_bss, "lam_bss")
    base_kwargs = dict(base_kwargs or {})
    reduction = base_kwargs.pop("reduction", "row")
    forget_term = base_loss(
        base, forget_logits, forget_labels, reduction=reduction, **base_kwargs, **(forget_kwargs or {})
    )
    rows, tokens = belief_counts(belief_labels)
    belief_term = None
    if rows:  # L_base(D̂_u) as one chunk
        counts = dict(rows_with_answer=rows, answer_tokens=tokens, reduction=reduction)
        extra = belief_kwargs or {}
        belief_term = belief_piece(belief_logits, belief_labels, base=base, **counts, **base_kwargs, **extra)
    return bs_s_combine(forget_term, belief_term, lam_bss)  # Eq. (7)


def bs_s_loss_paper(
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
    """Eq. (7) as the paper prints it: (1 − λ_BSS)·L_base(D_u) + λ_BSS·L_base(D̂_u).

    L_base is the paper's form of the base loss (``BASE_LOSSES_PAPER``: ``bs_t_loss_paper``, ``ga_loss_paper``,
    ``npo_loss_paper``, ``wga_loss_paper``), and L_base(D̂_u) is its mean over all belief rows at once (the rows
    with at least one answer token), with no chunking. As in ``bs_s_loss``, a belief batch without any answer
    token leaves the forget term alone (docs/theory.md §4). ``base_kwargs`` go to both terms,
    ``forget_kwargs`` / ``belief_kwargs`` to one (NPO's ``ref_logprobs`` of each set of rows); there is no
    ``reduction`` (the paper forms take the per-row mean).

    Reading/test form, O(N·|V|) memory for N answer tokens of all rows. The fast form is ``bs_s_loss`` on the
    fast base losses; the unlearning loop evaluates L_base(D̂_u) in row chunks whose ``belief_piece``s add up
    to it, so its peak memory grows with the chunk, not with the number of beliefs.
    """
    check_fraction(lam_bss, "lam_bss")
    if base not in BASE_LOSSES_PAPER:
        raise ValueError(f"base must be one of {sorted(BASE_LOSSES_PAPER)}, got {base!r}")
    loss = BASE_LOSSES_PAPER[base]
    kwargs = dict(base_kwargs or {})
    forget_term = loss(forget_logits, forget_labels, **kwargs, **(forget_kwargs or {}))  # L_base(D_u)
    if not bool((belief_labels[:, 1:] != IGNORE_INDEX).any()):  # no usable belief: the forget term alone
        return forget_term
    belief_term = loss(belief_logits, belief_labels, **kwargs, **(belief_kwargs or {}))  # L_base(D̂_u), all rows
    return (1.0 - lam_bss) * forget_term + lam_bss * belief_term  # Eq. (7)


def weighted_row_piece(
    logits: torch.Tensor, labels: torch.Tensor, row_weights: torch.Tensor, *, base: str, **kwargs: Any
) -> torch.Tensor:
    """Σ_r w_r · L_base(row r): the "row" reduction with a weight per row instead of 1/(rows with an answer).

    With w_r = 1/R on every row of a belief batch (R: its rows with an answer) this is ``belief_piece``'s row
    mean. The loop runs it on rows that carry their own weights (``bs_ref.prefix``): forget and belief rows packed
    in one forward under prefix sharing ((1 − λ_BSS)/B and λ_BSS/R), and subsampled belief rows reweighted N_i/m_i
    (Horvitz–Thompson). A row without answer tokens contributes 0. ``kwargs``: the base loss's hyper-parameters
    and, for NPO, ``ref_logprobs`` of these rows."""
    per_row = base_loss(base, logits, labels, reduction="none", **kwargs)
    return (per_row * row_weights.to(per_row)).sum()
