"""Negative preference optimisation (NPO).

Paper: Li et al., ICLR 2026 (arXiv 2510.19422), Eq. (3), after Zhang et al. 2024 (arXiv 2404.05868):

    L_NPO(θ) = E_{D_u} (2/β) · log(1 + (π_θ(y|x) / π_ref(y|x))^β)
             = E_{D_u} −(2/β) · log σ(β · (ℓ − ℓ_ref))

with ℓ = −log π_θ(y|x) the **summed** answer NLL of a row and ℓ_ref the same under the frozen reference.
Its gradient is ∇L = −w · ∇ℓ with w = 2σ(β(ℓ_ref − ℓ)) ∈ (0, 2): a GA step whose weight fades as the
answer becomes unlikely; w = 1 at θ = θ_ref. Computed from log-probabilities (never raw logits, docs/theory.md §8).

``npo_loss_paper`` writes Eq. (3) as printed, (2/β)·log(1 + (π_θ/π_ref)^β), from the dense log-softmax (for
reading and for the tests).

Shapes: logits [B, T, V], labels [B, T], ref_logprobs [B] (= ``sequence_logprob`` of the reference
model on the same batch, i.e. −ℓ_ref) → scalar (mean over rows with answer tokens).
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


def npo_weight(logprobs: torch.Tensor, ref_logprobs: torch.Tensor, beta: float = 0.1) -> torch.Tensor:
    """w = 2σ(β(ℓ_ref − ℓ)) = 2σ(β(log π_θ − log π_ref)): NPO's per-row multiplier of the GA gradient."""
    return 2 * torch.sigmoid(beta * (logprobs - ref_logprobs))


def npo_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    ref_logprobs: torch.Tensor,
    beta: float = 0.1,
    reduction: str = "row",
) -> torch.Tensor:
    """Eq. (3): −(2/β)·log σ(β(ℓ − ℓ_ref)) per row, averaged over the rows that have answer tokens."""
    check_reduction(reduction)
    check_positive(beta, "beta")
    at = answer_tokens(logits, labels)
    if not isinstance(ref_logprobs, torch.Tensor) or ref_logprobs.shape != (at.batch_size,):
        raise ValueError(
            f"ref_logprobs must be a tensor of shape [{at.batch_size}] (the reference model's summed answer "
            "log-probs, bs_ref.losses.sequence_logprob), got "
            f"{tuple(ref_logprobs.shape) if isinstance(ref_logprobs, torch.Tensor) else type(ref_logprobs)}"
        )
    seq_nll = -per_row_sum(at.target_logprob(), at)  # ℓ
    ref_nll = -ref_logprobs.detach().to(seq_nll.dtype)  # ℓ_ref
    per_row = -(2.0 / beta) * F.logsigmoid(beta * (seq_nll - ref_nll))  # Eq. (3)
    return reduce_rows(per_row, at.counts > 0, reduction)


def npo_loss_paper(
    logits: torch.Tensor, labels: torch.Tensor, ref_logprobs: torch.Tensor, beta: float = 0.1
) -> torch.Tensor:
    """Eq. (3) as the paper prints it: E_{D_u} (2/β)·log(1 + (π_θ(y|x)/π_ref(y|x))^β).

    Computed stably from log-probabilities: (π_θ/π_ref)^β = exp(β·(log π_θ(y|x) − log π_ref(y|x))), so
    log(1 + (π_θ/π_ref)^β) = logaddexp(0, β·(log π_θ − log π_ref)); log π_θ(y|x) = Σ_{i∈A} log p_i[y_i] is read
    from the dense log-softmax. ``ref_logprobs`` [B] is log π_ref(y|x) (``sequence_logprob`` of the frozen
    reference; no gradient).

    Reading/test form, O(N·|V|) memory (the dense [N, V] log-distribution). The fast form ``npo_loss`` gathers
    the label logits and subtracts the log-normaliser, and writes the same value as −(2/β)·log σ(β(ℓ − ℓ_ref));
    it also offers the other reductions. Mean over the rows that have answer tokens.
    """
    check_positive(beta, "beta")
    da = dense_answers(logits, labels)
    batch = labels.shape[0]
    if not isinstance(ref_logprobs, torch.Tensor) or ref_logprobs.shape != (batch,):
        raise ValueError(
            f"ref_logprobs must be a tensor of shape [{batch}] (the reference model's summed answer "
            "log-probs, bs_ref.losses.sequence_logprob), got "
            f"{tuple(ref_logprobs.shape) if isinstance(ref_logprobs, torch.Tensor) else type(ref_logprobs)}"
        )
    logpi = da.row_sum(da.target_logprob())  # log π_θ(y|x) = Σ_{i∈A} log p_i[y_i]
    log_ratio = logpi - ref_logprobs.detach().to(logpi.dtype)  # log(π_θ(y|x) / π_ref(y|x))
    per_row = (2.0 / beta) * torch.logaddexp(torch.zeros_like(log_ratio), beta * log_ratio)  # Eq. (3)
    return mean_over_rows(per_row, da.counts > 0)  # E_{D_u}
