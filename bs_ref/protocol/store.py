"""The run directory of an experiment: what is written where, atomically, and when a rerun may resume.

Layout under ``--out`` (``RunDir``)::

    config.json                          settings (``identity``), conventions, library versions
    start.json                           the original model's step-0 curve point and belief bands
    methods/<method>/seed<k>/            one folder per method label and seed (``shared/`` for the references)
        train_log.jsonl  eval.json  result.json      result.json is written last: it marks the cell finished
    start_pair<p>.json                   the same for model pair p ≠ 0 (``--pair-seeds``)
    methods/<method>/pair<p>/seed<k>/    (``pair<p>/shared/``) the cells of model pair p ≠ 0
    summary.csv  matched.csv  verdict.csv  table.md  plots/*.png

Model pair 0 keeps the layout every earlier version wrote (no ``pair0/`` level), so a run directory made
before pair seeds existed is the pair-0 part of a run with ``--pair-seeds 0 ...`` and resumes as it is; a
pair p ≠ 0 adds a ``pair<p>/`` level inside each method's folder (next to ``seed<k>/``, never inside it).

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so an
interrupted run never leaves a half-written result. ``identity`` is the part of the settings that decides
the numbers; a directory made with another identity is refused unless ``overwrite`` (results of different
settings are never mixed), while a rerun with the same identity skips every finished cell and adds new
methods or seeds.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import shutil
import sys
import tempfile
from collections.abc import Iterable
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import accelerate
import numpy as np
import scipy
import tokenizers
import torch
import transformers

import bs_ref

REFERENCE_METHODS = ("original", "retrain")
"""Methods that are evaluated, not trained: the model before unlearning and its retain-only twin."""


# --------------------------------------------------------------------------------------------- atomic writes
def write_bytes(path: str | Path, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically (temporary file in the same folder, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as JSON atomically; NaN/inf become null so the file is valid JSON everywhere."""
    return write_text(path, json.dumps(json_safe(obj), indent=1, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def json_safe(obj: Any) -> Any:
    """``obj`` with numpy scalars/arrays as Python values, non-finite floats as None and paths as strings."""
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (np.floating, float)):
        value = float(obj)
        return value if math.isfinite(value) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def method_dirname(label: str) -> str:
    """A file-system safe folder name for a method label: ``bs_t:lam=0.6,temperature=2`` ->
    ``bs_t__lam-0.6_temperature-2``."""
    return label.replace(":", "__").replace("=", "-").replace(",", "_").replace("/", "-")


# --------------------------------------------------------------------------------------------- run directory
class RunDir:
    """The output directory of one run, with its resume and overwrite rules (see the module docstring).

    Methods are addressed by their label (``bs_t:lam=0.6``), seed and model-pair seed (``pair``, default 0);
    ``seed=None`` is the shared folder of a reference method (``original``, ``retrain``) of that pair."""

    def __init__(self, root: str | Path, identity: dict, overwrite: bool = False):
        self.root = Path(root)
        self.overwrite = overwrite
        self.identity = json_safe(identity)
        config_path = self.root / "config.json"
        if config_path.is_file() and not overwrite:
            try:
                previous = upgrade_identity(read_json(config_path).get("identity", {}), self.identity)
            except (OSError, json.JSONDecodeError):
                previous = None
            if previous != self.identity:
                changed = sorted(_diff_keys(previous or {}, self.identity))
                raise ValueError(
                    f"--out {self.root} holds results of a run with different settings "
                    f"(differing: {', '.join(changed) or 'unreadable config.json'}); pass --overwrite to replace "
                    "them, or choose another --out"
                )
        if overwrite and (self.root / "methods").is_dir():
            shutil.rmtree(self.root / "methods")
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    def method_dir(self, label: str, seed: int | None, pair: int = 0) -> Path:
        folder = self.root / "methods" / method_dirname(label)
        if pair:
            folder = folder / f"pair{pair}"
        return folder / ("shared" if seed is None else f"seed{seed}")

    def start_path(self, pair: int = 0) -> Path:
        """The step-0 point and belief bands of model pair ``pair`` (``start.json`` for pair 0)."""
        return self.path("start.json" if not pair else f"start_pair{pair}.json")

    def result_path(self, label: str, seed: int | None, pair: int = 0) -> Path:
        return self.method_dir(label, seed, pair) / "result.json"

    def is_finished(self, label: str, seed: int | None, pair: int = 0) -> bool:
        return self.result_path(label, seed, pair).is_file()

    def load_result(self, label: str, seed: int | None, pair: int = 0) -> dict:
        """A finished result, with its ``method`` label and ``pair_seed`` set (older results lack the latter)."""
        result = read_json(self.result_path(label, seed, pair))
        result["method"] = label
        result["pair_seed"] = pair
        return result

    def save_result(self, label: str, seed: int | None, result: dict, per_item: dict | None = None,
                    pair: int = 0) -> Path:  # fmt: skip
        """Write the per-item evaluation (``eval.json``) first, then ``result.json`` (which marks it done)."""
        directory = self.method_dir(label, seed, pair)
        if per_item is not None:
            write_json(directory / "eval.json", per_item)
        return write_json(directory / "result.json", result)

    def cells(self, labels: Iterable[str], seeds: Iterable[int],
              pairs: Iterable[int] = (0,)) -> list[tuple[str, int | None, int]]:  # fmt: skip
        """(label, seed, pair) of every cell of a run, in run order: pair by pair, a reference method once per
        pair, the others per seed."""
        labels, seeds = list(labels), list(seeds)
        return [
            cell
            for p in pairs
            for cell in [(m, None, p) for m in labels if m in REFERENCE_METHODS]
            + [(m, s, p) for s in seeds for m in labels if m not in REFERENCE_METHODS]
        ]

    def results(self, labels: Iterable[str], seeds: Iterable[int], pairs: Iterable[int] = (0,)) -> list[dict]:
        """The finished results of these methods, seeds and model pairs (method by method, references first
        where the labels list them first; within a method pair by pair, then seed by seed)."""
        labels, seeds, pairs = list(labels), list(seeds), list(pairs)
        order = [(m, s, p) for m in labels for p in pairs
                 for s in ([None] if m in REFERENCE_METHODS else seeds)]  # fmt: skip
        return [self.load_result(m, s, p) for m, s, p in order if self.is_finished(m, s, p)]

    @contextlib.contextmanager
    def resumable(self, labels: Iterable[str], seeds: Iterable[int], command: str, pairs: Iterable[int] = (0,)):
        """Ctrl-C inside the block prints ``interrupted(...)``, one line, and exits with status 130."""
        try:
            yield self
        except KeyboardInterrupt:
            print(self.interrupted(labels, seeds, command, pairs), file=sys.stderr, flush=True)
            raise SystemExit(130) from None

    def interrupted(self, labels: Iterable[str], seeds: Iterable[int], command: str,
                    pairs: Iterable[int] = (0,)) -> str:  # fmt: skip
        """One line for an interrupted run: which results are kept, where, and the command that resumes."""
        done = [cell_name(m, s, p) for m, s, p in self.cells(labels, seeds, pairs) if self.is_finished(m, s, p)]
        kept = f"kept {len(done)} finished result(s) in {self.root} ({', '.join(done)})" if done else (
            f"no result had finished (nothing kept in {self.root})")  # fmt: skip
        return f"interrupted: {kept}; the same command resumes where it stopped: {command}"


def cell_name(label: str, seed: int | None, pair: int = 0) -> str:
    """``ga seed 0`` (pair 0, as before pair seeds existed), ``ga seed 0 pair 1``, ``original pair 1``."""
    name = label if seed is None else f"{label} seed {seed}"
    return name if not pair else f"{name} pair {pair}"


def upgrade_identity(identity: dict, current: dict | None = None) -> dict:
    """An identity written by an earlier version, in today's terms, so its run directory still resumes:
    ``bf16: false`` (fp32 on every device) is ``precision: fp32``; ``bf16: true`` meant bf16 on CUDA and fp32
    on CPU, which the identity cannot tell apart, so it matches no precision (the directory is refused). A run
    written before ``--lora`` existed trained every weight: ``lora: null`` (added where the ``current`` identity,
    the one it is compared with, has ``lora``)."""
    identity = dict(identity)
    if "bf16" in identity and "precision" not in identity:
        identity["precision"] = "legacy --bf16 (bf16 on CUDA only)" if identity["bf16"] else "fp32"
    identity.pop("bf16", None)
    if current is not None and "lora" in current:
        identity.setdefault("lora", None)  # before LoRA existed every run trained all weights
    return identity


def _diff_keys(a: dict, b: dict, prefix: str = "") -> set[str]:
    keys = set()
    for key in set(a) | set(b):
        va, vb = a.get(key, "<missing>"), b.get(key, "<missing>")
        if isinstance(va, dict) and isinstance(vb, dict):
            keys |= _diff_keys(va, vb, f"{prefix}{key}.")
        elif va != vb:
            keys.add(prefix + key)
    return keys


# --------------------------------------------------------------------------------------------- provenance
def versions() -> dict[str, Any]:
    """Every library that touches a number, and the CPU kernel path (floating point differs between kernel
    paths: docs/theory.md §10), for ``config.json``."""
    return {
        "bs_ref": bs_ref.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "tokenizers": tokenizers.__version__,
        "accelerate": accelerate.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "rouge_score": _distribution_version("rouge_score"),
        "cuda": torch.version.cuda,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "ATEN_CPU_CAPABILITY": os.environ.get("ATEN_CPU_CAPABILITY"),
        "machine": platform.machine(),
    }


def _distribution_version(name: str) -> str | None:
    try:
        return version(name)
    except PackageNotFoundError:  # pragma: no cover - installed without metadata
        return None
