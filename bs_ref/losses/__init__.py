"""bs_ref.losses — one readable file per unlearning objective; pure functions of logits and labels (RMU's of the
hidden states of one layer, ``rmu.py``).

Every loss takes HF-aligned ``logits [B, T, V]`` and ``labels [B, T]`` (prompt/padding = -100; the loss
shifts internally) and returns the **scalar to minimise**, so ``loss.backward()`` unlearns.

``answer_tokens`` (the answer positions of a batch, gathered once: ``AnswerTokens``) and ``per_row_sum`` are the
shared pieces the losses are built from, public for the code that logs per-row numbers beside them.

Each file keeps the fast form (``bs_t_loss``, ``npo_loss``, …: gathers over the few indices that matter, several
reductions) beside the paper's form written as the paper prints it (``bs_t_loss_paper``, ``npo_loss_paper``, …:
dense over the vocabulary, O(N·|V|) memory, row reduction), which is for reading and for the tests.
"""

from ._common import (
    IGNORE_INDEX,
    REDUCTIONS,
    AnswerTokens,
    answer_tokens,
    mean_token_logprob,
    per_row_sum,
    sequence_logprob,
)
from .bs_s import (
    BASE_LOSSES,
    BASE_LOSSES_PAPER,
    base_loss,
    belief_counts,
    belief_piece,
    bs_s_combine,
    bs_s_loss,
    bs_s_loss_paper,
    weighted_row_piece,
)
from .bs_t import TokenBeliefs, bs_t_loss, bs_t_loss_paper, local_beliefs, token_beliefs
from .controls import (
    bst_target_weight,
    ga_target_matched_loss,
    ga_target_matched_loss_paper,
    sga_loss,
    sga_loss_paper,
)
from .ga import ga_loss, ga_loss_paper, ga_scaled_loss, ga_scaled_loss_paper, nll_loss
from .graddiff import (
    graddiff_loss,
    graddiff_loss_paper,
    regularised_loss,
    retain_kl_loss,
    retain_loss,
    retain_nll_loss,
)
from .npo import npo_loss, npo_loss_paper, npo_weight
from .rmu import (
    default_coefficient,
    rmu_loss,
    rmu_loss_paper,
    rmu_retain_loss,
    rmu_retain_loss_paper,
    steering_direction,
)
from .simnpo import simnpo_loss, simnpo_loss_paper
from .wga import wga_loss, wga_loss_paper

__all__ = [
    "IGNORE_INDEX",
    "REDUCTIONS",
    "BASE_LOSSES",
    "BASE_LOSSES_PAPER",
    "AnswerTokens",
    "TokenBeliefs",
    "answer_tokens",
    "base_loss",
    "belief_counts",
    "belief_piece",
    "bs_s_combine",
    "bs_s_loss",
    "bs_s_loss_paper",
    "bs_t_loss",
    "bs_t_loss_paper",
    "bst_target_weight",
    "default_coefficient",
    "ga_loss",
    "ga_loss_paper",
    "ga_scaled_loss",
    "ga_scaled_loss_paper",
    "ga_target_matched_loss",
    "ga_target_matched_loss_paper",
    "graddiff_loss",
    "graddiff_loss_paper",
    "local_beliefs",
    "mean_token_logprob",
    "nll_loss",
    "npo_loss",
    "npo_loss_paper",
    "npo_weight",
    "per_row_sum",
    "regularised_loss",
    "retain_kl_loss",
    "retain_loss",
    "retain_nll_loss",
    "rmu_loss",
    "rmu_loss_paper",
    "rmu_retain_loss",
    "rmu_retain_loss_paper",
    "sequence_logprob",
    "sga_loss",
    "sga_loss_paper",
    "simnpo_loss",
    "simnpo_loss_paper",
    "steering_direction",
    "token_beliefs",
    "wga_loss",
    "wga_loss_paper",
    "weighted_row_piece",
]
