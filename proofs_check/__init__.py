"""proofs_check — the claims of docs/theory.md §5, checked: ``python -m proofs_check`` prints the ledger.

Each claim module declares its claims (``_core.claim``) and registers one checker per tier
(``_core.checker``): ``squeezing_claims`` (SQ1–SQ5), ``dynamics_claims`` (L5.1, T5.2, T5.3), ``derived``
(D1–D4), ``sequence_claims`` (SEQ1, SEQ2) on the toy tiers (models in ``toy``); ``llm_claims`` adds the
real-LLM tiers (models in ``bs_ref.analysis.cases``, the stepping harness ``analysis.stepping``). ``ledger`` renders
the results (terminal table, Markdown, JSON).
"""

from __future__ import annotations

import importlib

from . import squeezing_claims  # noqa: F401  (registers SQ1–SQ5)
from ._core import CHECKERS, CLAIMS, STATUSES, TIERS, Claim, ClaimResult, Evidence, checker, claim, run_claims

IMPORT_ERRORS: dict[str, str] = {}
"""Claim modules that exist but failed to import (the CLI reports them and exits non-zero)."""

for _name in ("dynamics_claims", "derived", "sequence_claims", "llm_claims"):
    try:
        importlib.import_module(f"{__name__}.{_name}")
    except ModuleNotFoundError as exc:  # an optional tier module that is absent
        if exc.name != f"{__name__}.{_name}":
            IMPORT_ERRORS[_name] = f"{type(exc).__name__}: {exc}"
    except Exception as exc:  # a broken module must not take the other tiers down with it
        IMPORT_ERRORS[_name] = f"{type(exc).__name__}: {exc}"

__all__ = [
    "IMPORT_ERRORS",
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
