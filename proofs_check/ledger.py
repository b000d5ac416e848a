"""Rendering the claims ledger (docs/theory.md §5): a terminal table, a Markdown table, the JSON record.

Every renderer works on the JSON form of the results (``ClaimResult.to_json()``: what ``python -m proofs_check
--format json`` prints), so the README's ledger block (``experiments/update_readme.py``) and the command line show
the same thing from the same data. A status that rests on fewer tiers than a full run carries, where it stands,
what was skipped and why (``status_text``): e.g. ``holds — SmolLM2 skipped (llm_cpu): …``.
"""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from typing import Any

Record = dict[str, Any]
"""One claim in its JSON form: id, statement, status, tiers, evidence [...], source, skipped [...]."""

WIDTH = 100
"""Columns of the terminal table."""


# --------------------------------------------------------------------------------------------------------------
# Pieces of one row
# --------------------------------------------------------------------------------------------------------------


def skip_notes(record: Record) -> list[str]:
    """One note per skipped tier, and per skipped case of a tier that ran (the same case and reason grouped)."""
    notes, cases = [], {}
    for s in record.get("skipped", []):
        if "case" in s:
            cases.setdefault((s["case"], s["why"]), []).append(s["tier"])
        else:
            notes.append(f"{s['tier']} tier skipped: {s['why']}")
    notes += [f"{case} skipped ({', '.join(tiers)}): {why}" for (case, why), tiers in cases.items()]
    return notes


def status_text(record: Record, bold: bool = False) -> str:
    """The status, followed by what it does not rest on: ``holds — llm_gpu tier skipped: needs CUDA …``."""
    status = f"**{record['status']}**" if bold else record["status"]
    notes = skip_notes(record)
    return status + (" — " + "; ".join(notes) if notes else "")


def _scalar_numbers(numbers: dict[str, Any], limit: int = 3) -> list[str]:
    out = []
    for key, value in numbers.items():
        if key in ("instances", "failed", "condition_checked", "condition_failed", "error"):
            continue
        if isinstance(value, bool | int | float | str) and len(str(value)) < 40:
            out.append(f"{key} = {value}")
        if len(out) >= limit:
            break
    return out


def key_numbers(record: Record) -> str:
    """Per tier that ran: held / failed k of n, and its first few scalar numbers."""
    parts = []
    for ev in record["evidence"]:
        if ev.get("skipped"):
            continue
        numbers = ev.get("numbers") or {}
        if numbers.get("error"):
            parts.append(f"{ev['tier']}: ERROR {numbers['error']}")
            continue
        n, failed = numbers.get("instances"), numbers.get("failed")
        head = f"{ev['tier']}: " + (f"failed {failed}/{n}" if n is not None else ("held" if ev["holds"] else "failed"))
        extra = _scalar_numbers(numbers)
        parts.append(head + ("; " + "; ".join(extra) if extra else ""))
    return " · ".join(parts)


def counterexample_or_condition(record: Record, sep: str = " ") -> str:
    """The first failing tier's correction, counterexample and condition ('' when every tier held)."""
    for ev in record["evidence"]:
        if ev.get("skipped") or ev["holds"]:
            continue
        parts = []
        if ev.get("correction"):
            parts.append(f"corrected: {ev['correction']}")
        if ev.get("counterexample"):
            parts.append(f"counterexample ({ev['tier']}): {ev['counterexample']}")
        if ev.get("condition"):
            verdict = {True: "holds under it", False: "fails even under it", None: "not checked"}[
                ev.get("holds_under_condition")
            ]
            parts.append(f"condition ({ev['tier']}, {verdict}): {ev['condition']}")
        return sep.join(parts)  # the first failing tier says it; the JSON has every tier
    return ""


def counts(records: Sequence[Record]) -> str:
    """``3 holds, 6 conditional, 4 fails`` (statuses that occur, in the ledger's order)."""
    n = {s: sum(r["status"] == s for r in records) for s in ("holds", "conditional", "fails", "skipped", "error")}
    return ", ".join(f"{k} {s}" for s, k in n.items() if k)


def _shorten(text: str, limit: int) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --------------------------------------------------------------------------------------------------------------
# The three formats
# --------------------------------------------------------------------------------------------------------------


def markdown(records: Sequence[Record]) -> str:
    """The Markdown table (one row per claim; the README's ledger block), then the status counts."""

    def cell(text: str, limit: int) -> str:
        return _shorten(text, limit).replace("|", "\\|")

    lines = [
        "| ID | statement | tiers run | status | key numbers | counterexample or condition |",
        "|---|---|---|---|---|---|",
    ]
    for r in records:
        row = [
            r["id"],
            cell(r["statement"], 200),
            ", ".join(r["tiers"]) or "—",
            cell(status_text(r, bold=True), 400),
            cell(key_numbers(r), 400),
            cell(counterexample_or_condition(r), 400) or "—",
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n\n" + counts(records)


def table(records: Sequence[Record], header: str = "", width: int = WIDTH, evidence_lines: int = 3) -> str:
    """The terminal view, ``width`` columns: per claim its ID and status (with what the status does not rest on),
    its statement (one line), the tiers that ran, and one short evidence line (the counterexample or condition
    where the statement failed somewhere, else the key numbers), wrapped."""
    indent = " " * 6
    out = [*textwrap.wrap(header, width, break_on_hyphens=False), ""] if header else []
    for r in records:
        head = textwrap.wrap(f"{r['id']:<5} {status_text(r)}", width, subsequent_indent=indent, break_on_hyphens=False)
        out += head
        out.append(indent + _shorten(r["statement"], width - len(indent)))
        out += textwrap.wrap(
            "tiers run: " + (", ".join(r["tiers"]) or "none"), width, initial_indent=indent, subsequent_indent=indent
        )
        evidence = counterexample_or_condition(r, " · ") or key_numbers(r)
        if evidence:
            budget = evidence_lines * (width - len(indent)) - 8
            out += textwrap.wrap(
                _shorten(evidence, budget),
                width,
                initial_indent=indent,
                subsequent_indent=indent,
                break_on_hyphens=False,
            )
    out += ["", counts(records), "(all numbers: --format json; the README's table: --format markdown)"]
    return "\n".join(line.rstrip() for line in out)


__all__ = [
    "WIDTH",
    "counterexample_or_condition",
    "counts",
    "key_numbers",
    "markdown",
    "skip_notes",
    "status_text",
    "table",
]
