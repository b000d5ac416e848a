"""``--help`` of the benchmark scripts: exit 0, the sub-commands listed, every option with help and its default."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "experiments" / "bench.py"
BENCH_BS_S = ROOT / "experiments" / "bench_bs_s.py"
COMMANDS = ("losses", "bs_s", "precision", "evaluation")


def run_help(*args: str) -> str:
    env = {**os.environ, "COLUMNS": "100"}
    proc = subprocess.run(
        [sys.executable, *map(str, args), "--help"], capture_output=True, text=True, env=env, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def option_entries(text: str) -> dict[str, str]:
    """Option invocation -> its help text, from the ``options:`` section of argparse's help."""
    section = text.split("\noptions:\n", 1)[1]
    entries: dict[str, str] = {}
    current = None
    for line in section.splitlines():
        match = re.match(r"^  (-\S.*?)(?:\s{2,}(\S.*))?$", line)
        if match:
            current = match.group(1).rstrip()
            entries[current] = match.group(2) or ""
        elif current and line.startswith("   ") and line.strip():
            entries[current] += " " + line.strip()  # help wrapped, or put below a long invocation
        elif not line.strip():
            current = None
    return entries


def check_options(text: str) -> None:
    entries = option_entries(text)
    assert len(entries) > 1, text
    for invocation, help_text in entries.items():
        assert help_text.strip(), f"option {invocation!r} has no help text"
        if not invocation.startswith("-h"):
            assert "default" in help_text, f"option {invocation!r} does not state its default: {help_text!r}"


def test_bench_help_lists_the_sub_commands():
    text = run_help(BENCH)
    for command in COMMANDS:
        lines = [line for line in text.splitlines() if re.match(rf"^\s+{command}\s+\S", line)]
        assert len(lines) == 1, f"sub-command {command!r} is not listed with a one-line summary:\n{text}"


@pytest.mark.parametrize("command", COMMANDS)
def test_bench_sub_command_help(command):
    text = run_help(BENCH, command)
    assert text.startswith(f"usage: bench.py {command}")
    check_options(text)


def test_bench_bs_s_script_help():
    check_options(run_help(BENCH_BS_S))


def test_bench_without_a_command_is_a_usage_error():
    proc = subprocess.run([sys.executable, str(BENCH)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "COMMAND" in proc.stderr
