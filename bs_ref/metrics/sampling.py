"""Leak under sampling, leak@k (docs/theory.md §15): does a fact that greedy decoding hides come back when the
model is sampled k times?

For one forget question, n answers are sampled at T = 1 and c of them contain the annotated fact (the judge is
``bs_ref.metrics.leakage.contains_fact``). The probability that at least one of k answers drawn from the model
leaks is estimated without bias by the pass@k estimator (Chen et al., 2021; Leak@k, arXiv 2511.04934)::

    leak@k = 1 − C(n − c, k) / C(n, k) = 1 − Π_{i = n − c + 1}^{n} (1 − k / i)        (k ≤ n)

the product form avoids the huge binomials (and is exactly 1 when n − c < k). The split-level number is the mean
over items, with a 95 % interval that resamples items (``bs_ref.protocol.instruments.leak_at_k_rows``).
``leak_at_k_brute`` enumerates every k-subset of the n outcomes: the same number, for tests on small n.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import numpy as np

DEFAULT_KS = (1, 4, 16)
"""The k reported besides k = n (``ks_for``)."""


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimate of P(at least one of k samples succeeds) from c successes among n samples (k ≤ n)."""
    n, c, k = int(n), int(c), int(k)
    if not 0 <= c <= n or not 1 <= k <= n:
        raise ValueError(f"pass@k needs 0 <= c <= n and 1 <= k <= n, got n={n}, c={c}, k={k}")
    if n - c < k:
        return 1.0
    # 1 - C(n-c, k)/C(n, k) = 1 - prod_{i=n-c+1}^{n} (1 - k/i), summed in log space for stability
    return float(-math.expm1(sum(math.log1p(-k / i) for i in range(n - c + 1, n + 1))))


def leak_at_k_brute(outcomes: Sequence[bool], k: int) -> float:
    """The share of k-subsets of ``outcomes`` that contain a success: the definition pass@k estimates (small n)."""
    subsets = list(itertools.combinations(range(len(outcomes)), k))
    return float(np.mean([any(outcomes[i] for i in subset) for subset in subsets]))


def ks_for(n: int, ks: Sequence[int] = DEFAULT_KS) -> list[int]:
    """The k reported for n samples: ``ks`` that are ≤ n, then n itself."""
    return sorted({k for k in ks if k <= n} | ({n} if n >= 1 else set()))
