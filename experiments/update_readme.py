"""Rewrite the generated blocks of README.md from the outputs of the commands that produce them.

    python -m proofs_check --format markdown > ledger.md
    python experiments/update_readme.py --block ledger --from-file ledger.md \
        --command "python -m proofs_check --format markdown"
    python experiments/update_readme.py --block bench_losses --from-file bench.txt \
        --command "python experiments/bench.py losses"

A block is the text between ``<!-- begin:NAME -->`` and ``<!-- end:NAME -->`` in README.md. The script never
invents a number: it copies the command's output and writes the command and the date next to it, so every figure
in the README can be reproduced by the command printed beside it. The ledger block takes the output of
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

README = Path(__file__).resolve().parent.parent / "README.md"
sys.path.insert(0, str(README.parent))  # proofs_check, when run from a checkout without installing it


def ledger_table(text: str) -> str:
    """The ledger block: ``--format markdown`` output as it is, ``--format json`` output rendered as that table."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError:
        data = None
    if data is None:
        if not text.lstrip().startswith("| ID |"):
            raise SystemExit("the ledger block takes the output of `python -m proofs_check --format markdown` or "
                             "`--format json`; this file is neither")  # fmt: skip
        return text.strip()
    from proofs_check.ledger import markdown

    return markdown(data["claims"])


def render(block: str, text: str, command: str, markdown: bool = False) -> str:
    stamp = f"{dt.date.today().isoformat()}, {platform.machine()}, {os.cpu_count()} CPU cores"
    if block == "ledger":
        body = ledger_table(text)
    elif markdown:  # a markdown report: keep it, its headings nested below the README's own
        body = re.sub(r"^(#+) ", lambda m: "#" * (len(m.group(1)) + 3) + " ", text.strip(), flags=re.M)
    elif text.lstrip().startswith("|"):  # already a markdown table
        body = text.strip()
    else:
        body = "```\n" + text.strip() + "\n```"
    return f"Produced by `{command}` ({stamp}):\n\n{body}\n"


def replace_block(readme: str, block: str, content: str) -> str:
    pattern = re.compile(rf"(<!-- begin:{re.escape(block)} -->\n).*?(<!-- end:{re.escape(block)} -->)", re.S)
    if not pattern.search(readme):
        raise SystemExit(f"README.md has no block '{block}': add <!-- begin:{block} --> and <!-- end:{block} -->")
    return pattern.sub(lambda m: m.group(1) + content + m.group(2), readme)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--block", required=True, help="block name in README.md")
    ap.add_argument("--from-file", required=True, help="the command's saved output ('-' for stdin)")
    ap.add_argument("--command", required=True, help="the exact command that produced the output")
    ap.add_argument("--markdown", action="store_true", help="the output is a markdown report: include it as is")
    ap.add_argument("--readme", default=str(README))
    args = ap.parse_args(argv)
    text = sys.stdin.read() if args.from_file == "-" else Path(args.from_file).read_text()
    path = Path(args.readme)
    new = replace_block(path.read_text(), args.block, render(args.block, text, args.command, args.markdown))
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as f:
        f.write(new)
    os.replace(f.name, path)
    print(f"updated block '{args.block}' of {path.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
