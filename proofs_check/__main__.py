"""The claims ledger of SPEC §5: ``python -m proofs_check [--json] [--tier T ...] [--claim ID ...]``.

Runs every registered checker on every selected tier and prints one row per claim: ID, statement, tiers
run, status (holds / fails / conditional), key numbers, and the counterexample or condition. ``--json``
prints ``{"claims": [{"id", "statement", "status", "tiers", "evidence", ...}]}`` instead. The exit code is
non-zero only when a checker crashed (status ``error``); a claim that fails is a result, not an error.

    python -m proofs_check                       # everything available here (toy tiers + LLM tiers)
    python -m proofs_check --tier toy_softmax toy_autoregressive
    python -m proofs_check --claim T5.2 --json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from . import CLAIMS, IMPORT_ERRORS, TIERS, run_claims
from ._core import ClaimResult, Evidence

MAX_CELL = 260


def _cell(text: str, limit: int = MAX_CELL) -> str:
    text = " ".join(str(text).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    return text.replace("|", "\\|")


def _scalar_numbers(ev: Evidence, limit: int = 3) -> list[str]:
    out = []
    for key, value in ev.numbers.items():
        if key in ("instances", "failed", "condition_checked", "condition_failed", "error"):
            continue
        if isinstance(value, bool | int | float | str) and len(str(value)) < 40:
            out.append(f"{key} = {value}")
        if len(out) >= limit:
            break
    return out


def key_numbers(result: ClaimResult) -> str:
    parts = []
    for ev in result.evidence:
        if ev.skipped:
            parts.append(f"{ev.tier}: skipped ({ev.skipped})")
            continue
        if ev.numbers.get("error"):
            parts.append(f"{ev.tier}: ERROR {ev.numbers['error']}")
            continue
        n, failed = ev.numbers.get("instances"), ev.numbers.get("failed")
        head = f"{ev.tier}: " + (f"failed {failed}/{n}" if n is not None else ("held" if ev.holds else "failed"))
        extra = _scalar_numbers(ev)
        parts.append(head + ("; " + "; ".join(extra) if extra else ""))
    return " · ".join(parts)


def counterexample_or_condition(result: ClaimResult) -> str:
    parts = []
    for ev in result.evidence:
        if ev.skipped or ev.holds:
            continue
        if ev.correction:
            parts.append(f"corrected: {ev.correction}")
        if ev.counterexample:
            parts.append(f"counterexample ({ev.tier}): {ev.counterexample}")
        if ev.condition:
            verdict = {True: "holds under it", False: "fails even under it", None: "not checked"}[
                ev.holds_under_condition
            ]
            parts.append(f"condition ({ev.tier}, {verdict}): {ev.condition}")
        break  # the first failing tier says it; --json has every tier
    return " ".join(parts)


def ledger_markdown(results: list[ClaimResult]) -> str:
    lines = [
        "| ID | statement | tiers run | status | key numbers | counterexample or condition |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(
            "| "
            + " | ".join(
                [
                    r.id,
                    _cell(r.statement, 200),
                    ", ".join(r.tiers) or "—",
                    f"**{r.status}**",
                    _cell(key_numbers(r), 400),
                    _cell(counterexample_or_condition(r), 400) or "—",
                ]
            )
            + " |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m proofs_check", description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print the ledger as JSON")
    parser.add_argument("--tier", nargs="+", action="extend", choices=TIERS, help="only these tiers (repeatable)")
    parser.add_argument("--claim", nargs="+", action="extend", metavar="ID", help="only these claims (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args(argv)
    unknown = [c for c in args.claim or [] if c not in CLAIMS]
    if unknown:
        parser.error(f"unknown claim(s) {unknown}; known: {', '.join(CLAIMS)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = run_claims(args.claim, args.tier)
    seconds = time.perf_counter() - t0
    crashed = [r.id for r in results if r.status == "error"]
    if args.json:
        payload: dict[str, Any] = {
            "claims": [r.to_json() for r in results],
            "tiers": args.tier or list(TIERS),
            "seconds": round(seconds, 1),
        }
        print(json.dumps(payload, indent=1, ensure_ascii=False, default=str))
    else:
        command = (
            "python -m proofs_check"
            + "".join(f" --tier {t}" for t in args.tier or [])
            + "".join(f" --claim {c}" for c in args.claim or [])
        )
        print(f"Claims ledger (SPEC §5), produced by `{command}` in {seconds:.0f} s\n")
        print(ledger_markdown(results))
        counts = {s: sum(r.status == s for r in results) for s in ("holds", "conditional", "fails", "skipped", "error")}
        print("\n" + ", ".join(f"{n} {s}" for s, n in counts.items() if n))
    for module, error in IMPORT_ERRORS.items():
        print(f"proofs_check.{module} failed to import, its checkers did not run: {error}", file=sys.stderr)
    if crashed:
        print(f"checker crashed for: {', '.join(crashed)} (see --json for the traceback)", file=sys.stderr)
    if crashed or IMPORT_ERRORS:
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
