"""The fork of a belief from the target answer (docs/theory.md §16; the definition SEQ1 reads, §5).

A belief sequence b and the target answer y share a prefix of tokens and then part: the fork is the first token
index where b departs from y (the shared prefix's length). The prefix's log-prob moves with the target's (it is
the target's own prefix), so squeezing shows on the **continuation after the fork**: log π(b_{f:} | x, b_{<f}) =
Σ_{t ≥ f} log π(b_t | x, b_{<t}), the summed token log-probs from the fork on. ``bs_ref.analysis.stepping`` (SEQ1, SEQ2)
and the experiment's belief bands (``bs_ref.metrics.leakage.score_belief_bands``) both use these two functions.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def fork(answer: Sequence[int], reference: Sequence[int]) -> int:
    """Index of the first token where ``answer`` leaves ``reference`` (its shared prefix length)."""
    n = 0
    while n < min(len(answer), len(reference)) and answer[n] == reference[n]:
        n += 1
    return n


def after_fork_logprob(token_logprobs: Sequence[float] | np.ndarray, start: int) -> float:
    """The continuation's log-prob: the sum of the token log-probs from index ``start`` (the fork) on."""
    return float(np.asarray(token_logprobs, dtype=np.float64)[int(start) :].sum())
