"""The run directory of an experiment: what is written where, atomically, and when a rerun may resume.

Layout under ``--out`` (``RunDir``)::

    config.json                          settings (``identity``), conventions, library versions
    start.json                           the original model's step-0 curve point and belief bands
    methods/<method>/seed<k>/            one folder per method label and seed (``shared/`` for the references)
        train_log.jsonl  eval.json  result.json      result.json is written last: it marks the cell finished
    start_pair<p>.json                   the same for model pair p ≠ 0 (``--pair-seeds``)
    methods/<method>/pair<p>/seed<k>/    (``pair<p>/shared/``) the cells of model pair p ≠ 0
    summary.csv  matched.csv  verdict.csv  table.md  plots/*.png
    timing.json                          wall time by part (``bs_ref.timing``; a resumed cell's as recorded)

Model pair 0 keeps the layout every earlier version wrote (no ``pair0/`` level), so a run directory made
before pair seeds existed is the pair-0 part of a run with ``--pair-seeds 0 ...`` and resumes as it is; a
pair p ≠ 0 adds a ``pair<p>/`` level inside each method's folder (next to ``seed<k>/``, never inside it).

Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so an
interrupted run never leaves a half-written result. ``identity`` is the part of the settings that decides
the numbers; a directory made with another identity is refused unless ``overwrite`` (results of different
settings are never mixed), while a rerun with the same identity skips every finished cell and adds new
methods or seeds.

A run directory cannot mix runs:

- one process at a time: ``RunDir`` takes an exclusive lock on ``.run.lock`` (``flock``; released when the
  process ends, however it ends) and a second process on the same ``--out`` is refused with one line naming
  the holder (pid, host, start time, command);
- ``overwrite`` removes everything derived from the old settings (``DERIVED``: config.json, the start files,
  methods/, the CSVs, table.md, the plots, models.json) and nothing else in the folder;
- the identity is checked again each time a result is written (``save_result``), against config.json as it
  is on disk then;
- ``bind_models``: the checksum of each model pair the results were computed from (``models.json``, and in
  every result.json as ``models_sha256``); a resume with another pair (a retrained or different cache entry)
  is refused with one line, and so is reading a result computed from another pair;
- ``eval.json`` is checksummed into its ``result.json``; every file is read back through
  ``bs_ref.files``, so a damaged file is one line naming it and the fix, never a missing value.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import platform
import shutil
import socket
import sys
import tempfile
import time
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
from bs_ref import files

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no lock (the rest works)
    fcntl = None

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
    return write_bytes(path, _json_bytes(obj))


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(json_safe(obj), indent=1, sort_keys=False) + "\n").encode("utf-8")


def read_json(path: str | Path, fix: str = files.RECOMPUTE) -> Any:
    """The JSON in ``path``, or one line naming the file and ``fix`` (``bs_ref.files.UnreadableFile``)."""
    return files.read_json(path, fix)


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
        self.models: dict[int, str] = {}
        """{model pair: checksum of the pair the results are computed from} (``bind_models``)."""
        if self.root.exists() and not self.root.is_dir():
            raise ValueError(f"--out {self.root} is a file, not a directory; choose another --out")
        self.root.mkdir(parents=True, exist_ok=True)
        self._lock = RunLock.acquire(self.root)
        try:
            if overwrite:
                remove_derived(self.root)
            else:
                self._check_identity()
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Release this object's hold on the directory's lock (the process keeps it while another holds it)."""
        lock, self._lock = getattr(self, "_lock", None), None
        if lock is not None:
            lock.release()

    def __del__(self):
        with contextlib.suppress(Exception):  # at interpreter exit the lock table may be gone: the OS releases it
            self.close()

    def __getstate__(self) -> dict:  # a Ray task gets the directory without the driver's lock
        return {k: v for k, v in self.__dict__.items() if k != "_lock"} | {"_lock": None}

    def _config_identity(self) -> dict | None:
        """The identity in config.json as it is on disk (None without config.json); a damaged config.json is one
        line that says how to recover (never "every setting differs")."""
        path = self.root / "config.json"
        if not path.exists():
            return None
        fix = (
            f"restore it from a copy; or pass --overwrite to recompute every result in {self.root} (they are "
            "deleted), or choose another --out"
        )
        config = files.read_json_object(path, fix, keys=("identity",))
        return files.expect(config["identity"], path, fix=fix)

    def _check_identity(self) -> None:
        found = self._config_identity()
        if found is None:
            derived = [
                p.name
                for p in self.root.iterdir()
                if _is_derived(p) and p.name not in ("config.json", "models.json") and p.suffix != ".tmp"
            ]
            if derived:
                raise ValueError(
                    f"--out {self.root} holds results ({', '.join(sorted(derived))}) but no config.json, so their "
                    "settings are unknown; restore config.json, or pass --overwrite to replace them, or choose "
                    "another --out"
                )
            return
        previous = upgrade_identity(found, self.identity)
        if previous != self.identity:
            changed = sorted(_diff_keys(previous, self.identity))
            raise ValueError(
                f"--out {self.root} holds results of a run with different settings "
                f"(differing: {', '.join(changed)}); pass --overwrite to replace them, or choose another --out"
            )

    def check_identity(self) -> None:
        """Raise (one line) unless config.json still records this run's identity (or is not written yet)."""
        found = self._config_identity()
        if found is not None and upgrade_identity(found, self.identity) != self.identity:
            changed = sorted(_diff_keys(upgrade_identity(found, self.identity), self.identity))
            raise ValueError(
                f"{self.root / 'config.json'} changed while this run was writing to --out {self.root} (it now "
                f"records other settings: {', '.join(changed)}); no result was written. Was the file replaced by "
                "hand or by a process that ignores the lock? Rerun with another --out"
            )

    # ---- the models the results are computed from
    def bind_models(self, pair: int, info: dict | None) -> str | None:
        """Record (or check) the checksum of model pair ``pair`` (``info`` from ``protocol.models.load_models``;
        None or no checksum: nothing to bind). A run directory whose results came from another pair is refused."""
        checksum = models_checksum(info)
        if checksum is None:
            return None
        path = self.root / "models.json"
        fix = f"restore it, or pass --overwrite to recompute every result in {self.root} (they are deleted)"
        recorded = files.read_json_object(path, fix) if path.exists() else {}
        before = recorded.get(str(pair), {}).get("sha256") if isinstance(recorded.get(str(pair)), dict) else None
        if before is None:
            finished = [r for r in self._pair_results(pair) if r.get("models_sha256") not in (None, checksum)]
            before = finished[0]["models_sha256"] if finished else None
        if before is not None and before != checksum:
            raise ValueError(
                f"--out {self.root}: its results of model pair {pair} were computed from weights with sha256 "
                f"{before[:12]}…, but the pair loaded now ({(info or {}).get('pair', {}).get('path', 'given')}) has "
                f"{checksum[:12]}…; point --cache-dir at the cache those results came from, or pass --overwrite to "
                "recompute every result with this pair, or choose another --out"
            )
        self.models[pair] = checksum
        if recorded.get(str(pair), {}).get("sha256") != checksum:
            entry = {"sha256": checksum, "entry": (info or {}).get("pair", {}).get("path")}
            write_json(path, {**recorded, str(pair): entry})
        return checksum

    def _pair_results(self, pair: int) -> list[dict]:
        folder = self.root / "methods"
        if not folder.is_dir():
            return []
        pattern = f"*/pair{pair}/*/result.json" if pair else "*/*/result.json"
        return [
            read_json(p)
            for p in sorted(folder.glob(pattern))
            if p.parent.name == "shared" or p.parent.name.startswith("seed")
        ]

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
        """A finished result, with its ``method`` label and ``pair_seed`` set (older results lack the latter). A
        damaged result.json, or one computed from another model pair than the one bound, is one line."""
        path = self.result_path(label, seed, pair)
        fix = f"delete {path.parent} and rerun the same command to recompute this result"
        result = files.read_json_object(path, fix, keys=("metrics",))
        recorded, bound = result.get("models_sha256"), self.models.get(pair)
        if recorded is not None and bound is not None and recorded != bound:
            raise ValueError(
                f"{path} was computed from model pair {pair} with sha256 {recorded[:12]}…, not the "
                f"{bound[:12]}… of this run; {fix}"
            )
        result["method"] = label
        result["pair_seed"] = pair
        return result

    def eval_path(self, label: str, seed: int | None, pair: int = 0) -> Path:
        return self.method_dir(label, seed, pair) / "eval.json"

    def read_eval(self, label: str, seed: int | None, pair: int = 0) -> dict[str, list[dict]] | None:
        """The per-item evaluation of a cell (``eval.json``; None when the cell has none), checked against the
        checksum its result.json recorded; a damaged or replaced file is one line naming it and the fix."""
        from bs_ref.metrics.scores import read_eval_log

        path = self.eval_path(label, seed, pair)
        if not path.exists():
            return None
        fix = f"delete {path.parent} and rerun the same command to recompute this result"
        result_path = self.result_path(label, seed, pair)
        recorded = files.read_json(result_path, fix).get("eval_sha256") if result_path.exists() else None
        if recorded is not None and files.sha256_file(path, fix) != recorded:
            raise files.UnreadableFile(path, "does not hold what its result.json recorded (sha256 differs)", fix)
        try:
            return read_eval_log(path)
        except ValueError as error:
            raise files.UnreadableFile(
                path, f"cannot be read ({str(error).replace(str(path), '').strip()})", fix
            ) from None

    def save_result(
        self, label: str, seed: int | None, result: dict, per_item: dict | None = None, pair: int = 0
    ) -> Path:
        """Write the per-item evaluation (``eval.json``) first, then ``result.json`` (which marks it done)."""
        self.check_identity()
        directory = self.method_dir(label, seed, pair)
        result = dict(result)
        if per_item is not None:
            payload = _json_bytes(per_item)
            write_bytes(directory / "eval.json", payload)
            result["eval_sha256"] = hashlib.sha256(payload).hexdigest()
        if self.models.get(pair) is not None:
            result["models_sha256"] = self.models[pair]
        return write_json(directory / "result.json", result)

    def cells(
        self, labels: Iterable[str], seeds: Iterable[int], pairs: Iterable[int] = (0,)
    ) -> list[tuple[str, int | None, int]]:
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
        order = [(m, s, p) for m in labels for p in pairs for s in ([None] if m in REFERENCE_METHODS else seeds)]
        return [self.load_result(m, s, p) for m, s, p in order if self.is_finished(m, s, p)]

    @contextlib.contextmanager
    def resumable(self, labels: Iterable[str], seeds: Iterable[int], command: str, pairs: Iterable[int] = (0,)):
        """Ctrl-C inside the block prints ``interrupted(...)``, one line, and exits with status 130. The
        directory's lock is released when the block ends."""
        try:
            yield self
        except KeyboardInterrupt:
            print(self.interrupted(labels, seeds, command, pairs), file=sys.stderr, flush=True)
            raise SystemExit(130) from None
        finally:
            self.close()

    def interrupted(
        self, labels: Iterable[str], seeds: Iterable[int], command: str, pairs: Iterable[int] = (0,)
    ) -> str:
        """One line for an interrupted run: which results are kept, where, and the command that resumes."""
        done = [cell_name(m, s, p) for m, s, p in self.cells(labels, seeds, pairs) if self.is_finished(m, s, p)]
        kept = (
            f"kept {len(done)} finished result(s) in {self.root} ({', '.join(done)})"
            if done
            else (f"no result had finished (nothing kept in {self.root})")
        )
        return f"interrupted: {kept}; the same command resumes where it stopped: {command}"


DERIVED = (
    "config.json",
    "models.json",
    "start.json",
    "start_pair*.json",
    "methods",
    "summary.csv",
    "matched.csv",
    "verdict.csv",
    "recovery.csv",
    "conditional_recovery.csv",
    "leak_at_k.csv",
    "squeeze.csv",
    "stopping.csv",
    "primary.csv",
    "trajectory.csv",
    "facts.csv",
    "ablation_*.csv",
    "table.md",
    "timing.json",
    "plots",
    ".*.tmp",
)
"""What a run writes under ``--out`` from its settings (``--overwrite`` removes these, and nothing else)."""


def _is_derived(path: Path) -> bool:
    return any(path.match(pattern) for pattern in DERIVED)


def remove_derived(root: Path) -> list[str]:
    """Remove everything a run derived from its settings under ``root`` (``DERIVED``); other files stay. In
    ``plots/`` only the figures (``*.png``) go, and the folder when nothing else is left in it."""
    removed = []
    for path in sorted(root.iterdir()):
        if not _is_derived(path):
            continue
        if path.name == "plots" and path.is_dir():
            for figure in path.glob("*.png"):
                figure.unlink()
            with contextlib.suppress(OSError):
                path.rmdir()
        elif path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink()
        removed.append(path.name)
    return removed


def models_checksum(info: dict | None) -> str | None:
    """The checksum of the model pair described by ``info`` (``protocol.models.load_models``'s), or None."""
    pair = (info or {}).get("pair")
    return pair.get("sha256") if isinstance(pair, dict) else None


class RunLock:
    """An exclusive ``flock`` on ``<root>/.run.lock`` held by this process (re-entrant within it), so that two
    processes never write one run directory. The file records the holder (pid, host, start, command), which
    the refusal names; the lock itself ends with the process, so a killed run never leaves a stale lock."""

    NAME = ".run.lock"
    _held: dict[str, list] = {}  # realpath -> [file descriptor, holders in this process]

    def __init__(self, key: str):
        self.key = key

    @classmethod
    def acquire(cls, root: Path) -> RunLock:
        key = os.path.realpath(root)
        if key in cls._held:
            cls._held[key][1] += 1
            return cls(key)
        path = Path(key) / cls.NAME
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        if fcntl is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise ValueError(
                    f"--out {root} is in use by another run ({holder}); wait for it to finish, or choose another "
                    "--out (two runs never share one)"
                ) from None
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "command": " ".join([os.path.basename(sys.argv[0] or "python"), *sys.argv[1:]]),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        cls._held[key] = [fd, 1]
        return cls(key)

    def release(self) -> None:
        entry = self._held.get(self.key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] <= 0:
            del self._held[self.key]
            os.close(entry[0])  # closing the descriptor releases the flock


def _read_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "its details are not written yet"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}: {holder.get('command')}"


def cell_name(label: str, seed: int | None, pair: int = 0) -> str:
    """``ga seed 0`` (pair 0, as before pair seeds existed), ``ga seed 0 pair 1``, ``original pair 1``."""
    name = label if seed is None else f"{label} seed {seed}"
    return name if not pair else f"{name} pair {pair}"


FROM_CURRENT = object()
ADDED_LATER = {
    # the reduction every earlier run used (docs/theory.md §11)
    "reduction": "row",
    # RMU's settings reach only rmu rows, which no run written before RMU existed has
    "retain_scale": FROM_CURRENT,
    "steer_layer": FROM_CURRENT,
    "steering_coeff": FROM_CURRENT,
    "train_layers": FROM_CURRENT,
    # earlier runs sampled no leak@k: such a directory resumes with --leak-k-samples 0, or is refused naming it
    "leak_k_samples": 0,
    "leak_k_items": FROM_CURRENT,
    # earlier runs kept the first forget authors and unlearned for the whole budget (docs/theory.md §20)
    "author_offset": 0,
    "stop_at_fraction": None,
    # earlier runs generated answers at every light evaluation and kept every utility item
    "light_eval": "answers",
    "utility_limit": None,
    "share_prompts": False,
    "leak_k_tokens": "longest",
}
"""Settings added to the identity after run directories were written without them, with the value those runs
implicitly had (``FROM_CURRENT``: a setting that cannot have touched their numbers)."""


def upgrade_identity(identity: dict, current: dict | None = None) -> dict:
    """An identity written by an earlier version, in today's terms, so its run directory still resumes:
    ``bf16: false`` (fp32 on every device) is ``precision: fp32``; ``bf16: true`` meant bf16 on CUDA and fp32
    on CPU, which the identity cannot tell apart, so it matches no precision (the directory is refused). A run
    written before ``--lora`` existed trained every weight: ``lora: null`` (added where the ``current`` identity,
    the one it is compared with, has ``lora``). Settings added later (``ADDED_LATER``) take the value the
    earlier run implicitly had."""
    identity = dict(identity)
    if current is not None:
        for key, value in ADDED_LATER.items():
            if key in current and key not in identity:
                identity[key] = current[key] if value is FROM_CURRENT else value
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
