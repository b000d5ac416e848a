"""Rewrite the generated blocks of the documentation pages from the outputs of the commands that produce them.

    python -m proofs_check --format markdown > ledger.md
    python experiments/update_readme.py --block ledger --from-file ledger.md \
        --command "python -m proofs_check --format markdown"
    python experiments/tofu.py --seeds 0 1 2 --pair-seeds 0 1 2 --out runs/default_3x3 --no-progress
    python experiments/update_readme.py --block tofu --from-file runs/default_3x3/table.md --markdown \
        --command "python experiments/tofu.py --seeds 0 1 2 --pair-seeds 0 1 2 --out runs/default_3x3 --no-progress"
    python experiments/update_readme.py --block bench_losses --from-file bench.txt \
        --command "python experiments/bench.py losses"

A block is the text between ``<!-- begin:NAME -->`` and ``<!-- end:NAME -->`` of the page that holds it
(``PAGES``: the results of each tier in ``docs/results/<tier>.md``, the benchmarks in ``docs/bench.md``, the
claims ledger in ``docs/ledger.md``; ``--page`` names another). The script never invents a number: it copies the
command's output and writes the command, the date, the CPU, the CPU kernel path, the core count and the versions
next to it, so every figure in the documentation can be reproduced by the command printed beside it. Run it on
the machine that ran the command: the stamp describes the machine it runs on. A markdown report (``--markdown``,
e.g. a run's ``table.md``) keeps its headings, moved so that its top headings sit at the block's level (``PAGES``,
or ``--level``); a page whose headings would jump a level, go past six ``#`` or hold a block without its command
is refused (``page_problems``, also run by ``tests/test_docs.py``). The ledger block takes the output of
``python -m proofs_check --format markdown`` as it is, or of ``--format json`` rendered by the same function
(``proofs_check.ledger.markdown``), so both give the table the command line prints.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # proofs_check, when run from a checkout without installing it

PAGES: dict[str, tuple[str, int]] = {
    "ledger": ("docs/ledger.md", 3),
    "tofu": ("docs/results/default.md", 3),
    "tofu_controls": ("docs/results/default.md", 3),
    "tofu_smollm2": ("docs/results/smollm2.md", 3),
    "tofu_smollm2_tofu": ("docs/results/smollm2_tofu.md", 3),
    "tofu_fair": ("docs/results/tofu_fair.md", 3),
    "tofu_fair_trajectory": ("docs/results/tofu_fair.md", 3),
    "ablation_refresh": ("docs/results/ablations.md", 3),
    "ablation_sensitivity": ("docs/results/ablations.md", 3),
    "bench_losses": ("docs/bench.md", 3),
    "bench_bs_s": ("docs/bench.md", 3),
    "bench_bs_s_smollm2": ("docs/bench.md", 3),
    "bench_evaluation": ("docs/bench.md", 3),
    "bench_precision": ("docs/bench.md", 3),
}
"""Block name → (the page that holds it, relative to the repository root; the heading level its report's top
headings take)."""
PRODUCED_BY = re.compile(r"^Produced by `[^`]+` \(")
"""How every generated block starts: the command that produced it, then its stamp."""
BLOCK = re.compile(r"<!-- begin:([\w-]+) -->\n(.*?)<!-- end:\1 -->", re.S)
HEADING = re.compile(r"^(#+)(\s|$)")


def ledger_table(text: str) -> str:
    """The ledger block: ``--format markdown`` output as it is, ``--format json`` output rendered as that table."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if data is None:
        if not text.lstrip().startswith("| ID |"):
            raise SystemExit(
                "the ledger block takes the output of `python -m proofs_check --format markdown` or "
                "`--format json`; this file is neither"
            )
        return text.strip()
    from proofs_check.ledger import markdown

    return markdown(data["claims"])


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else ``platform.processor()``, else the architecture)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def kernel_path() -> str:
    """torch's CPU kernel path (``torch.backends.cpu.get_cpu_capability()``) and whether ATEN_CPU_CAPABILITY
    pinned it."""
    try:
        import torch

        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # noqa: BLE001 - the stamp says so instead of failing
        capability = "unknown"
    pinned = os.environ.get("ATEN_CPU_CAPABILITY")
    return f"{capability} (ATEN_CPU_CAPABILITY={pinned})" if pinned else capability


def versions() -> str:
    """bs_ref, Python, torch and transformers versions, as the stamp names them."""
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for name in ("bs_ref", "torch", "transformers"):
        try:
            out.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            out.append(f"{name} not installed")
    return ", ".join([*out, f"Python {platform.python_version()}"])


def stamp() -> str:
    """Date, CPU, core count, CPU kernel path and versions of the machine the script runs on."""
    return (
        f"{dt.date.today().isoformat()}, {cpu_model()}, {os.cpu_count()} CPU cores, kernel path {kernel_path()}; "
        f"{versions()}"
    )


def heading_levels(text: str) -> list[tuple[int, int]]:
    """(line number, level) of every Markdown heading outside fenced code blocks."""
    out, fenced = [], False
    for number, line in enumerate(text.splitlines(), 1):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if match:
            out.append((number, len(match.group(1))))
    return out


def shift_headings(text: str, level: int) -> str:
    """``text`` with every heading (outside code) moved by the same amount, so its top headings are at ``level``."""
    levels = [lv for _, lv in heading_levels(text)]
    if not levels:
        return text
    shift = level - min(levels)
    lines, fenced = text.splitlines(), False
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced and HEADING.match(line):
            lines[i] = "#" * (len(line) - len(line.lstrip("#")) + shift) + line.lstrip("#")
    return "\n".join(lines)


def page_problems(text: str) -> list[str]:
    """What makes a generated page invalid: a heading more than one level below the one before it (the first may
    be at most ``#``), a heading deeper than six ``#``, or a block that does not start with its command."""
    problems, previous = [], 0
    for number, level in heading_levels(text):
        if level > 6:
            problems.append(f"line {number}: heading of {level} '#' (Markdown has six levels)")
        if level > previous + 1:
            problems.append(f"line {number}: heading level {level} after level {previous} (a level skipped)")
        previous = level
    for match in BLOCK.finditer(text):
        if not PRODUCED_BY.match(match.group(2)):
            line = text[: match.start()].count("\n") + 1
            problems.append(f"line {line}: block '{match.group(1)}' does not start with 'Produced by `<command>` ('")
    return problems


def render(block: str, text: str, command: str, markdown: bool = False, level: int | None = None) -> str:
    if block == "ledger":
        body = ledger_table(text)
    elif markdown:  # a markdown report: keep it, its top headings at the block's level
        body = shift_headings(text.strip(), level or PAGES.get(block, ("", 3))[1])
    elif text.lstrip().startswith("|"):  # already a markdown table
        body = text.strip()
    else:
        body = "```\n" + text.strip() + "\n```"
    return f"Produced by `{command}` ({stamp()}):\n\n{body}\n"


def replace_block(page: str, block: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- begin:{re.escape(block)} -->\n).*?(<!-- end:{re.escape(block)} -->)", re.S)
    if not pattern.search(page):
        raise SystemExit(f"the page has no block '{block}': add <!-- begin:{block} --> and <!-- end:{block} -->")
    return pattern.sub(lambda m: m.group(1) + content + m.group(2), page)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--block", required=True, help="block name (PAGES says which page holds it)")
    ap.add_argument("--from-file", required=True, help="the command's saved output ('-' for stdin)")
    ap.add_argument("--command", required=True, help="the exact command that produced the output")
    ap.add_argument("--markdown", action="store_true", help="the output is a markdown report: include it as is")
    ap.add_argument(
        "--page",
        "--readme",
        dest="page",
        default=None,
        help="the page that holds the block (default: the block's page in PAGES)",
    )
    ap.add_argument("--level", type=int, default=None, help="heading level of a markdown report's top headings")
    args = ap.parse_args(argv)
    if args.page is None and args.block not in PAGES:
        raise SystemExit(f"no page is known for block '{args.block}': name it with --page")
    path = Path(args.page) if args.page else ROOT / PAGES[args.block][0]
    text = sys.stdin.read() if args.from_file == "-" else Path(args.from_file).read_text()
    new = replace_block(path.read_text(), args.block, render(args.block, text, args.command, args.markdown, args.level))
    problems = page_problems(new)
    if problems:
        raise SystemExit(f"{path.name} would be invalid, not written:\n  " + "\n  ".join(problems))
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(new)
    os.replace(f.name, path)
    print(f"updated block '{args.block}' of {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
