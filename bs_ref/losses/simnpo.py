"""SimNPO: reference-free, length-normalised NPO.

Fan et al. 2024, "Simplicity Prevails: Rethinking Negative Preference Optimization for LLM Unlearning"
(arXiv 2410.07163); used as a baseline in Li et al., ICLR 2026 (arXiv 2510.19422):

    L_SimNPO(θ) = E_{D_u} −(2/β) · log σ(β · (ℓ̄ − δ))

with ℓ̄ the **mean** answer NLL of a row (from log-probabilities, never raw logits — SPEC §8). Defaults
β = 4.5, δ = 0 (SPEC §2); the SimNPO paper writes the margin as γ_SimNPO = β·δ. The forget weight
γ = 0.125 of the combined objective is applied by the caller (``bs_ref.unlearn``), not here.

Shapes: logits [B, T, V], labels [B, T] → scalar (mean over rows with answer tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._common import answer_tokens, check_positive, check_reduction, per_row_sum, reduce_rows


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
