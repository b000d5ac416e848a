"""bs_ref.losses — one readable file per unlearning objective; pure functions of logits and labels.

Every loss takes HF-aligned ``logits [B, T, V]`` and ``labels [B, T]`` (prompt/padding = -100; the loss
shifts internally) and returns the **scalar to minimise**, so ``loss.backward()`` unlearns.
"""

from ._common import IGNORE_INDEX, REDUCTIONS, mean_token_logprob, sequence_logprob
from .bs_s import BASE_LOSSES, base_loss, belief_counts, belief_piece, bs_s_combine, bs_s_loss
from .bs_t import TokenBeliefs, bs_t_loss, local_beliefs, token_beliefs
from .ga import ga_loss, ga_scaled_loss, nll_loss
from .graddiff import graddiff_loss, regularised_loss, retain_kl_loss, retain_loss, retain_nll_loss
from .npo import npo_loss, npo_weight
from .simnpo import simnpo_loss
from .wga import wga_loss

__all__ = [
    "IGNORE_INDEX",
    "REDUCTIONS",
    "BASE_LOSSES",
    "TokenBeliefs",
    "base_loss",
    "belief_counts",
    "belief_piece",
    "bs_s_combine",
    "bs_s_loss",
    "bs_t_loss",
    "ga_loss",
    "ga_scaled_loss",
    "graddiff_loss",
    "local_beliefs",
    "mean_token_logprob",
    "nll_loss",
    "npo_loss",
    "npo_weight",
    "regularised_loss",
    "retain_kl_loss",
    "retain_loss",
    "retain_nll_loss",
    "sequence_logprob",
    "simnpo_loss",
    "token_beliefs",
    "wga_loss",
]
