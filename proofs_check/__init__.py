"""proofs_check — the claims of SPEC §5, checked: ``python -m proofs_check`` prints the ledger.

Each claim module declares its claims (``_core.claim``) and registers one checker per tier
(``_core.checker``): ``squeezing_claims`` (SQ1–SQ5), ``dynamics_claims`` (L5.1, T5.2, T5.3), ``derived``
(D1–D4), ``sequence_claims`` (SEQ1, SEQ2) on the toy tiers (``toy``); ``llm`` adds the real-LLM tiers
when it is present.
"""

from __future__ import annotations

import importlib

from . import squeezing_claims  # noqa: F401  (registers SQ1–SQ5)
from ._core import CHECKERS, CLAIMS, STATUSES, TIERS, Claim, ClaimResult, Evidence, checker, claim, run_claims

for _name in ("dynamics_claims", "derived", "sequence_claims", "llm"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:  # a module not written yet / an optional tier absent
        if exc.name != f"{__name__}.{_name}":
            raise

__all__ = [
    "CHECKERS",
    "CLAIMS",
    "STATUSES",
    "TIERS",
    "Claim",
    "ClaimResult",
    "Evidence",
    "checker",
    "claim",
    "run_claims",
]
