"""The ledger's data model and registry.

Every claim of the ledger (docs/theory.md §5) has a ``Claim`` (ID, statement, source, assumptions) and one
checker per tier. A checker is a function ``check(**options) -> Evidence`` registered with
``@checker(claim_id, tier)``; it computes both sides of the claim (predicted vs measured) on one tier and says
whether the claim held, with the numbers and the instance. A claim that fails is *evidence*, not an exception:
the checker finds the counterexample and reports it. ``run_claims`` runs the checkers and turns their evidence into one
``ClaimResult`` per claim with an honest status, and with the tiers (or cases of a tier) that could not run
here, so that a status resting on fewer tiers than a full run says so (``ClaimResult.skipped``).
"""

from __future__ import annotations

import functools
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

TIERS = ("toy_softmax", "toy_autoregressive", "llm_cpu", "llm_gpu")
STATUSES = ("holds", "fails", "conditional", "skipped", "error")


@dataclass
class Claim:
    id: str
    statement: str
    source: str
    assumptions: str = ""


@dataclass
class Evidence:
    """What one checker found on one tier.

    holds: the claim's statement as written held on every instance checked.
    numbers: the key measured/predicted quantities (floats, small lists).
    instance: what was checked (model, sizes, seed, step size ...).
    counterexample: where the statement failed, the instance that shows it (None if it held).
    correction: when the statement as printed is wrong (an erratum, not a condition), the corrected
        statement that the same evidence confirms; the status stays ``fails``.
    condition: when the statement only holds under a condition, that condition (and whether it held
        under it, in ``holds_under_condition``).
    """

    tier: str
    holds: bool
    numbers: dict[str, Any] = field(default_factory=dict)
    instance: str = ""
    counterexample: str | None = None
    condition: str | None = None
    holds_under_condition: bool | None = None
    skipped: str | None = None  # reason, when the tier could not run here (no CUDA, package missing)
    skipped_parts: dict[str, str] = field(default_factory=dict)  # cases of the tier that could not run: {case: why}
    correction: str | None = None  # when the printed statement is wrong: the corrected one (held, see numbers)
    seconds: float = 0.0


@dataclass
class ClaimResult:
    id: str
    statement: str
    status: str
    tiers: list[str]
    evidence: list[Evidence]
    source: str = ""

    @property
    def skipped(self) -> list[dict[str, str]]:
        """What a full run would have checked and this one could not: ``{"tier", "why"}`` per skipped tier and
        ``{"tier", "case", "why"}`` per skipped case of a tier that ran (e.g. SmolLM2 without its package)."""
        out = []
        for e in self.evidence:
            if e.skipped is not None:
                out.append({"tier": e.tier, "why": e.skipped})
            else:
                out += [{"tier": e.tier, "case": case, "why": why} for case, why in e.skipped_parts.items()]
        return out

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["evidence"] = [asdict(e) for e in self.evidence]
        d["skipped"] = self.skipped
        return d


CLAIMS: dict[str, Claim] = {}
CHECKERS: dict[str, dict[str, Callable[..., Evidence]]] = {}


def claim(id: str, statement: str, source: str, assumptions: str = "") -> Claim:
    """Declare a claim (once, in the module that owns it)."""
    c = Claim(id, statement, source, assumptions)
    CLAIMS[id] = c
    CHECKERS.setdefault(id, {})
    return c


def single_threaded(fn: Callable[..., Evidence]) -> Callable[..., Evidence]:
    """Run ``fn`` with one torch thread: the toy tiers work on tensors of a few dozen numbers, where
    intra-op threads only add synchronisation (several times slower on a loaded machine)."""

    @functools.wraps(fn)
    def run(**options: Any) -> Evidence:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn(**options)
        finally:
            torch.set_num_threads(threads)

    return run


def checker(claim_id: str, tier: str) -> Callable[[Callable[..., Evidence]], Callable[..., Evidence]]:
    """Register ``fn`` as the checker of ``claim_id`` on ``tier``."""
    if tier not in TIERS:
        raise ValueError(f"tier must be one of {TIERS}, got {tier!r}")

    def register(fn: Callable[..., Evidence]) -> Callable[..., Evidence]:
        CHECKERS.setdefault(claim_id, {})[tier] = single_threaded(fn) if tier.startswith("toy_") else fn
        return fn

    return register


def status_of(evidence: list[Evidence]) -> str:
    """holds: held everywhere it ran; conditional: failed somewhere but held under a stated condition;
    fails: failed with no condition that rescues it; skipped: nothing ran; error: a checker crashed."""
    ran = [e for e in evidence if e.skipped is None]
    if any(e.numbers.get("error") for e in ran):
        return "error"
    if not ran:
        return "skipped"
    if all(e.holds for e in ran):
        return "holds"
    if all(e.holds or (e.condition and e.holds_under_condition) for e in ran):
        return "conditional"
    return "fails"


Progress = Callable[..., None]
"""``progress(event, **info)``: ``("claim_start", claim=, index=, total=)``, ``("tier_start", claim=, tier=)``,
``("tier_end", claim=, tier=, evidence=)``, ``("claim_end", result=, seconds=)``."""


def run_claims(
    ids: list[str] | None = None, tiers: list[str] | None = None, progress: Progress | None = None, **options: Any
) -> list[ClaimResult]:
    """Run every registered checker (optionally only some claims/tiers) and collect the results; ``progress`` is
    told when each claim and each of its tiers starts and ends."""
    results = []
    unknown = [cid for cid in ids or [] if cid not in CLAIMS]
    if unknown:
        raise ValueError(f"unknown claim(s) {unknown}; known: {sorted(CLAIMS, key=_claim_order)}")
    tell = progress or (lambda event, **info: None)
    chosen = sorted(ids or CLAIMS, key=_claim_order)
    for index, cid in enumerate(chosen, 1):
        tell("claim_start", claim=cid, index=index, total=len(chosen))
        t_claim = time.perf_counter()
        evidence = []
        for tier, fn in sorted(CHECKERS[cid].items(), key=lambda item: TIERS.index(item[0])):
            if tiers and tier not in tiers:
                continue
            tell("tier_start", claim=cid, tier=tier)
            t0 = time.perf_counter()
            try:
                ev = fn(**options)
            except Exception as exc:  # a crash is reported, and makes the CLI exit non-zero
                ev = Evidence(tier, False, {"error": f"{type(exc).__name__}: {exc}"}, traceback.format_exc(limit=3))
            ev.seconds = round(time.perf_counter() - t0, 3)
            evidence.append(ev)
            tell("tier_end", claim=cid, tier=tier, evidence=ev)
        c = CLAIMS[cid]
        ran = [e.tier for e in evidence if e.skipped is None]
        results.append(ClaimResult(cid, c.statement, status_of(evidence), ran, evidence, c.source))
        tell("claim_end", result=results[-1], seconds=time.perf_counter() - t_claim)
    return results


_ORDER = ["SQ1", "SQ2", "SQ3", "SQ4", "SQ5", "L5.1", "T5.2", "T5.3", "D1", "D2", "D3", "D4", "SEQ1", "SEQ2"]


def _claim_order(cid: str) -> tuple[int, str]:
    return (_ORDER.index(cid) if cid in _ORDER else len(_ORDER), cid)
