"""SimNPO: reference-free, length-normalised NPO.

Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning"
(arXiv 2410.07163); used as a baseline in Li et al., ICLR 2026 (arXiv 2510.19422):

    L_SimNPO(θ) = E_{D_u} −(2/β) · log σ(β · (ℓ̄ − δ))

with ℓ̄ the **mean** answer NLL of a row (from log-probabilities, never raw logits — docs/theory.md §8). Defaults
β = 4.5, δ = 0 (docs/theory.md §2); the SimNPO paper writes the margin as γ_SimNPO = β·δ. The forget weight
γ = 0.125 of the combined objective is applied by the caller (``bs_ref.unlearn``), not here.

``simnpo_loss_paper`` writes it as Fan et al. print it, from the dense log-softmax (for reading and tests).

Shapes: logits [B, T, V], labels [B, T] → scalar (mean over rows with answer tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import (
    answer_tokens,
    check_positive,
    check_reduction,
    dense_answers,
    mean_over_rows,
    per_row_sum,
    reduce_rows,
)


def simnpo_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    beta: float = 4.5,
    delta: float = 0.0,
    reduction: str = "row",
) -> torch.Tensor:
    """−(2/β)·log σ(β(ℓ̄ − δ)) per row, averaged over the rows that have answer tokens."""
    check_reduction(reduction)
    check_positive(beta, "beta")
    at = answer_tokens(logits, labels)
    mean_nll = -per_row_sum(at.target_logprob(), at) / at.counts.clamp(min=1)  # ℓ̄ from log-probs
    per_row = -(2.0 / beta) * F.logsigmoid(beta * (mean_nll - delta))
    return reduce_rows(per_row, at.counts > 0, reduction)


def simnpo_loss_paper(
    logits: torch.Tensor, labels: torch.Tensor, beta: float = 4.5, delta: float = 0.0
) -> torch.Tensor:
    """SimNPO as Fan et al. 2024 print it: E_{D_u} −(2/β)·log σ(−(β/|y|)·log π_θ(y|x) − γ_SimNPO), with their
    margin γ_SimNPO = β·δ (docs/theory.md §2); −log π_θ(y|x)/|y| is the mean answer NLL ℓ̄.

    Reading/test form, O(N·|V|) memory: log π_θ(y|x) = Σ_{i∈A} log p_i[y_i] is read from the dense [N, V]
    log-softmax. The fast form ``simnpo_loss`` gathers the label logits and subtracts the log-normaliser, writes
    the argument as β·(ℓ̄ − δ), and offers the other reductions. Mean over the rows that have answer tokens.
    """
    check_positive(beta, "beta")
    da = dense_answers(logits, labels)
    logpi = da.row_sum(da.target_logprob())  # log π_θ(y|x) = Σ_{i∈A} log p_i[y_i]
    length = da.counts.clamp(min=1).to(logpi.dtype)  # |y| (rows without answers are left out below)
    per_row = -(2.0 / beta) * F.logsigmoid(-(beta / length) * logpi - beta * delta)  # Fan et al., γ_SimNPO = β·δ
    return mean_over_rows(per_row, da.counts > 0)  # E_{D_u}
