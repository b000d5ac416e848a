"""The claims ledger of docs/theory.md §5: ``python -m proofs_check [--format table|markdown|json] [--tier T ...]
[--claim ID ...]``.

Runs every registered checker on every selected tier and prints one entry per claim: ID, status (holds /
conditional / fails), the tiers that ran, and its evidence (key numbers, or the counterexample and condition).
A status that rests on fewer tiers than a full run says so beside it (a tier skipped without CUDA, the SmolLM2
case skipped without its package), in every format. Progress — one line when each claim and each of its tiers
starts and ends, with seconds — goes to stderr (``--quiet`` silences it). The exit code is non-zero only when a
checker crashed (status ``error``) or a claim module failed to import; a claim that fails is a result, not an
error.

Formats: ``table`` (default) fits a 100-column terminal; ``markdown`` is the README's table
(``experiments/update_readme.py --block ledger``); ``json`` (also ``--json``) prints
``{"claims": [{"id", "statement", "status", "tiers", "evidence", "source", "skipped"}], "tiers", "seconds"}``,
``skipped`` listing ``{"tier", "why"}`` per skipped tier and ``{"tier", "case", "why"}`` per skipped case.

    python -m proofs_check                       # everything available here (toy tiers + LLM tiers)
    python -m proofs_check --tier toy_softmax toy_autoregressive
    python -m proofs_check --claim T5.2 --format json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import torch

from . import CLAIMS, IMPORT_ERRORS, TIERS, ledger, run_claims

FORMATS = ("table", "markdown", "json")


def progress_printer(stream=None):
    """A ``run_claims`` progress callback that writes one line per start and end of each claim and tier."""
    state: dict[str, Any] = {}

    def tell(event: str, **info: Any) -> None:
        out = stream or sys.stderr
        if event == "claim_start":
            state["tag"] = f"[{info['index']:>{len(str(info['total']))}}/{info['total']}] {info['claim']}"
            line = f"{state['tag']} …"
        elif event == "tier_start":
            line = f"{state['tag']} · {info['tier']} …"
        elif event == "tier_end":
            ev = info["evidence"]
            if ev.skipped:
                what = f"skipped ({ev.skipped})"
            elif ev.numbers.get("error"):
                what = f"ERROR {ev.numbers['error']}"
            else:
                what = "held" if ev.holds else "did not hold"
                if ev.skipped_parts:
                    what += " (without " + ", ".join(ev.skipped_parts) + ")"
            line = f"{state['tag']} · {info['tier']}: {what} ({ev.seconds:.1f} s)"
        elif event == "claim_end":
            line = f"{state['tag']}: {info['result'].status} ({info['seconds']:.1f} s)"
        else:
            return
        print(line, file=out, flush=True)

    return tell


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m proofs_check",
        description="The claims ledger of docs/theory.md §5: run each claim's checkers and print their verdicts.",
    )
    parser.add_argument("--format", choices=FORMATS, default=None, help="output format (default: table)")
    parser.add_argument("--json", action="store_true", help="the same as --format json")
    parser.add_argument("--tier", nargs="+", action="extend", choices=TIERS, help="only these tiers (repeatable)")
    parser.add_argument("--claim", nargs="+", action="extend", metavar="ID", help="only these claims (repeatable)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("-q", "--quiet", action="store_true", help="no progress lines on stderr")
    args = parser.parse_args(argv)
    if args.json and args.format not in (None, "json"):
        parser.error(f"--json contradicts --format {args.format}")
    fmt = "json" if args.json else args.format or "table"
    unknown = [c for c in args.claim or [] if c not in CLAIMS]
    if unknown:
        parser.error(f"unknown claim(s) {unknown}; known: {', '.join(CLAIMS)}")
    if args.threads is not None and args.threads < 1:
        parser.error(f"--threads {args.threads} is invalid: must be >= 1 (or leave it out for torch's choice)")
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = run_claims(args.claim, args.tier, progress=None if args.quiet else progress_printer())
    seconds = time.perf_counter() - t0
    records = [r.to_json() for r in results]
    if fmt == "json":
        payload: dict[str, Any] = {"claims": records, "tiers": args.tier or list(TIERS), "seconds": round(seconds, 1)}
        print(json.dumps(payload, indent=1, ensure_ascii=False, default=str))
    elif fmt == "markdown":
        print(ledger.markdown(records))
    else:
        command = (
            "python -m proofs_check"
            + "".join(f" --tier {t}" for t in args.tier or [])
            + "".join(f" --claim {c}" for c in args.claim or [])
        )
        print(ledger.table(records, f"Claims ledger (docs/theory.md §5): `{command}`, {seconds:.0f} s"))
    if not args.quiet:
        print(f"proofs_check: {ledger.counts(records)} in {seconds:.0f} s", file=sys.stderr)
    for module, error in IMPORT_ERRORS.items():
        print(f"proofs_check.{module} failed to import, its checkers did not run: {error}", file=sys.stderr)
    crashed = [r.id for r in results if r.status == "error"]
    if crashed:
        print(f"checker crashed for: {', '.join(crashed)} (see --format json for the traceback)", file=sys.stderr)
    return 1 if crashed or IMPORT_ERRORS else 0


if __name__ == "__main__":
    sys.exit(main())
