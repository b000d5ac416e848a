"""bs_ref.losses — one readable file per unlearning objective; pure functions of logits and labels.

Every loss takes HF-aligned ``logits [B, T, V]`` and ``labels [B, T]`` (prompt/padding = -100; the loss
shifts internally) and returns the **scalar to minimise**, so ``loss.backward()`` unlearns.

Each file keeps the fast form (``bs_t_loss``, ``npo_loss``, …: gathers over the few indices that matter, several
reductions) beside the paper's form written as the paper prints it (``bs_t_loss_paper``, ``npo_loss_paper``, …:
dense over the vocabulary, O(N·|V|) memory, row reduction), which is for reading and for the tests.
"""

from ._common import IGNORE_INDEX, REDUCTIONS, mean_token_logprob, sequence_logprob
from .bs_s import (
    BASE_LOSSES,
    BASE_LOSSES_PAPER,
    base_loss,
    belief_counts,
    belief_piece,
    bs_s_combine,
    bs_s_loss,
    bs_s_loss_paper,
)
from .bs_t import TokenBeliefs, bs_t_loss, bs_t_loss_paper, local_beliefs, token_beliefs
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
from .simnpo import simnpo_loss, simnpo_loss_paper
from .wga import wga_loss, wga_loss_paper

__all__ = [
    "IGNORE_INDEX",
    "REDUCTIONS",
    "BASE_LOSSES",
    "BASE_LOSSES_PAPER",
    "TokenBeliefs",
    "base_loss",
    "belief_counts",
    "belief_piece",
    "bs_s_combine",
    "bs_s_loss",
    "bs_s_loss_paper",
    "bs_t_loss",
    "bs_t_loss_paper",
    "ga_loss",
    "ga_loss_paper",
    "ga_scaled_loss",
    "ga_scaled_loss_paper",
    "graddiff_loss",
    "graddiff_loss_paper",
    "local_beliefs",
    "mean_token_logprob",
    "nll_loss",
    "npo_loss",
    "npo_loss_paper",
    "npo_weight",
    "regularised_loss",
    "retain_kl_loss",
    "retain_loss",
    "retain_nll_loss",
    "sequence_logprob",
    "simnpo_loss",
    "simnpo_loss_paper",
    "token_beliefs",
    "wga_loss",
    "wga_loss_paper",
]
