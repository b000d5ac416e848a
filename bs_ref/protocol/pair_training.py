"""The original model and its retain twin that the TOFU experiment starts from: their presets, their training
and their on-disk cache.

The TOFU protocol (Maini et al. 2024, arXiv 2401.06121) needs two models: the **original** model, fine-tuned on
every fictitious author, and its **retain twin**, fine-tuned on the retain authors only — the reference that
forget quality compares against (docs/theory.md §6). On a CPU both are trained here (``bs_ref.finetune``):

* ``get_or_train_pair``: original + retain twin on the synthetic benchmark, cached on disk by a hash of everything
  that changes the weights (the corpora, the model and training configs, the package version), written
  atomically, with a checksum of every file;
* ``get_or_train_tofu_pair``: the same for real TOFU records: a pretrained model (``fine_tunable`` presets)
  fine-tuned on the kept forget + retain authors (the original) and on the retain authors only (the twin).

The two models of a from-scratch pair are independent, so on a CPU with two or more usable cores they train side
by side, each in a worker process with one torch thread (``train_pair(side_by_side=...)``; ``$BS_REF_PAIR_PROCESSES``
= 1 turns it off): the same weights bit for bit as one after the other, about half the wall time on an idle
2-core machine. A pretrained pair (SmolLM2: two 135M models, each using every core) trains one after the other.

Presets (``PRESETS``; their cost is in docs/usage.md):

    default       ~0.5M-parameter Llama from scratch, 30 epochs; the original recalls every forget fact (greedy)
    smoke         ~0.13M parameters, for CI with ``SyntheticConfig.smoke()`` (seconds)
    smollm2       fine-tunes the pretrained SmolLM2-135M-Instruct on a small synthetic world
    smollm2_tofu  fine-tunes SmolLM2-135M-Instruct on a few real TOFU authors (``--max-authors``)
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import multiprocessing
import multiprocessing.connection
import os
import pickle
import shutil
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as hf_logging

from bs_ref import __version__, files
from bs_ref.data.qa import PLAIN_TEMPLATE, forget_retain_configs
from bs_ref.data.synthetic import benchmark_texts, build_benchmark, training_corpus
from bs_ref.finetune import FineTuning, fine_tune
from bs_ref.models import (
    TinyLlamaConfig,
    build_tiny_llama,
    count_parameters,
    default_cache_dir,
    load_model,
    save_plain,
    train_tokenizer,
    with_precision,
)


@dataclass(frozen=True)
class PretrainedSpec:
    """Start from a pretrained checkpoint instead of a from-scratch model: ``"smollm2"`` (offline, see the
    module docstring) or a local path / hub id loaded by ``load_model``. Its own tokenizer is kept."""

    name: str = "smollm2"


@dataclass(frozen=True)
class TrainConfig:
    """Finetuning of the original model and its retain twin (plain AdamW on the answer-only NLL). The
    defaults are the ``default`` preset."""

    epochs: int = 30
    """Passes over the corpus. From scratch a fact needs many repetitions before greedy decoding recalls it
    (default benchmark: ~70 % of forget facts after 10 epochs, 97.5 % after 20, 100 % after 25)."""
    lr: float = 6e-3
    """Peak learning rate; high, because the model is small and trained from scratch."""
    batch_size: int = 16
    weight_decay: float = 0.0
    """No decay: the goal is memorisation of the corpus, as in TOFU finetuning."""
    warmup_ratio: float = 0.05
    """Fraction of the steps with a linear warm-up, then linear decay to 0."""
    max_length: int | None = None
    """Truncate prompt + answer to this many tokens (None: no truncation)."""
    template: str = "plain"
    """Prompt template of ``bs_ref.data.qa`` ("plain" or "chat"); evaluation must use the same one."""
    seed: int = 0
    """Seed of the initial weights (from scratch) and of the batch order: the model-pair seed of an experiment
    (``--pair-seeds``); 0 is the pair every earlier version trained."""
    precision: str = "fp32"
    """Numerics of the forward passes: ``fp32`` or ``bf16`` (autocast, ``with_precision``). Part of the cache key
    only when it is not fp32, so an fp32 pair keeps the key it always had."""

    def fine_tuning(self) -> FineTuning:
        """The optimisation settings of ``bs_ref.finetune.fine_tune`` (the template and seed go beside them)."""
        return FineTuning(
            lr=self.lr,
            epochs=self.epochs,
            batch_size=self.batch_size,
            weight_decay=self.weight_decay,
            warmup_ratio=self.warmup_ratio,
            max_length=self.max_length,
        )


PRESETS: dict[str, tuple[TinyLlamaConfig | PretrainedSpec, TrainConfig]] = {
    "default": (TinyLlamaConfig(), TrainConfig()),
    "smoke": (
        TinyLlamaConfig(hidden_size=64, intermediate_size=168, num_layers=2, num_heads=2, vocab_size=512),
        TrainConfig(epochs=30, lr=1e-2, batch_size=8),
    ),
    "smollm2": (PretrainedSpec("smollm2"), TrainConfig(epochs=5, lr=2e-4, batch_size=8, weight_decay=0.01)),
    "smollm2_tofu": (PretrainedSpec("smollm2"), TrainConfig(epochs=4, lr=4e-4, batch_size=8, weight_decay=0.01)),
}
"""Named (model, training) configurations; see the module docstring, and docs/usage.md ("Why the presets are
sized as they are") for the reasons behind their numbers."""


def fine_tunable(preset: str) -> bool:
    """Whether preset ``preset`` starts from a pretrained checkpoint (``PretrainedSpec``), so that it can be
    fine-tuned on real TOFU records; a from-scratch preset needs a tokenizer and a world built for it."""
    entry = PRESETS.get(preset)
    return entry is not None and isinstance(entry[0], PretrainedSpec)


def fine_tunable_presets() -> list[str]:
    """The names of the presets ``fine_tunable`` accepts."""
    return [name for name in PRESETS if fine_tunable(name)]


def resolve_preset(
    model_cfg: str | TinyLlamaConfig | PretrainedSpec, train_cfg: TrainConfig | None = None
) -> tuple[TinyLlamaConfig | PretrainedSpec, TrainConfig]:
    """A preset name, or a model config with an optional training config, as (model_cfg, train_cfg)."""
    if isinstance(model_cfg, str):
        if model_cfg not in PRESETS:
            raise ValueError(f"unknown model preset {model_cfg!r}; choose one of {sorted(PRESETS)}")
        preset_model, preset_train = PRESETS[model_cfg]
        return preset_model, train_cfg or preset_train
    if not isinstance(model_cfg, TinyLlamaConfig | PretrainedSpec):
        raise ValueError(
            f"model_cfg must be a preset name, TinyLlamaConfig or PretrainedSpec, got {type(model_cfg).__name__}"
        )
    return model_cfg, train_cfg or TrainConfig()


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__name__, **_to_jsonable(dataclasses.asdict(value))}
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def pair_cache_key(
    original_pairs: Sequence[tuple[str, str]],
    retain_pairs: Sequence[tuple[str, str]],
    model_cfg: TinyLlamaConfig | PretrainedSpec,
    train_cfg: TrainConfig,
    tokenizer_texts: Sequence[str] = (),
) -> str:
    """Hash of everything that changes the trained weights: both corpora (so a change to the benchmark
    generator is noticed even under the same config), the tokenizer's extra texts, the model and training
    configs, the package version."""
    train = _to_jsonable(train_cfg)
    if train.get("precision", "fp32") == "fp32":  # fp32 is what every earlier key was computed with
        train.pop("precision", None)
    payload = {
        "original": [list(p) for p in original_pairs],
        "retain": [list(p) for p in retain_pairs],
        "tokenizer_texts": list(tokenizer_texts),
        "model": _to_jsonable(model_cfg),
        "train": train,
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _corpus_texts(pairs: Sequence[tuple[str, str]], template: str) -> list[str]:
    if template == "plain":
        return [PLAIN_TEMPLATE.format(question=q) + a for q, a in pairs]
    return [f"{q}\n{a}" for q, a in pairs]


def _fresh_model(model_cfg, tokenizer, seed: int, cache_dir):
    if isinstance(model_cfg, PretrainedSpec):
        model, _ = load_model(model_cfg.name, cache_dir=cache_dir)
        return model
    return build_tiny_llama(len(tokenizer), model_cfg, tokenizer, seed=seed)


def train_pair(
    original_pairs: Sequence[tuple[str, str]],
    retain_pairs: Sequence[tuple[str, str]],
    model_cfg: str | TinyLlamaConfig | PretrainedSpec = "default",
    train_cfg: TrainConfig | None = None,
    *,
    tokenizer_texts: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    progress: bool = True,
    side_by_side: bool | None = None,
):
    """Train (original, retain twin, tokenizer) from two corpora without caching; returns them and a dict
    of training facts (seconds, per-epoch losses, parameter count). The tokenizer of a from-scratch model is
    trained on the original corpus plus ``tokenizer_texts`` (e.g. the held-out and perturbed phrasings the
    models are evaluated on); both models share it.

    ``side_by_side``: train the two models at once in two worker processes (one torch thread each; the same
    weights bit for bit). None decides (``side_by_side_default``): yes for a from-scratch model on a CPU with two
    or more usable cores, unless ``$BS_REF_PAIR_PROCESSES`` is 1. An error in a worker is raised here as the
    worker raised it (naming the model); Ctrl-C stops both workers."""
    model_cfg, train_cfg = resolve_preset(model_cfg, train_cfg)
    if not original_pairs or not retain_pairs:
        raise ValueError("both corpora must be non-empty (original: the full split, retain: the retain split)")
    if isinstance(model_cfg, PretrainedSpec):
        _, tokenizer = load_model(model_cfg.name, cache_dir=cache_dir)
    else:
        texts = _corpus_texts(original_pairs, train_cfg.template) + list(tokenizer_texts)
        tokenizer = train_tokenizer(texts, model_cfg.vocab_size)
    jobs = [
        _RoleJob(role, pairs, model_cfg, train_cfg, tokenizer, cache_dir)
        for role, pairs in (("original", original_pairs), ("retain", retain_pairs))
    ]
    if side_by_side is None:
        side_by_side = side_by_side_default(model_cfg)
    if side_by_side:
        trained = _train_side_by_side(jobs, progress)
    else:
        trained = [job.run(progress=progress) for job in jobs]
    info: dict[str, Any] = {job.role: role_info for job, (_, role_info) in zip(jobs, trained)}
    models = [model for model, _ in trained]
    info["n_parameters"] = count_parameters(models[0])
    info["side_by_side"] = bool(side_by_side)
    return models[0], models[1], tokenizer, info


PAIR_PROCESSES_ENV = "BS_REF_PAIR_PROCESSES"
"""Environment variable: 1 trains a from-scratch pair's two models one after the other, 2 side by side in two
worker processes; unset, ``side_by_side_default`` decides."""


def usable_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the OS has one, else ``os.cpu_count()``)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def side_by_side_default(model_cfg: TinyLlamaConfig | PretrainedSpec) -> bool:
    """Whether ``train_pair`` trains the two models side by side when not told: ``$BS_REF_PAIR_PROCESSES`` (1 or
    2) if set, else yes for a from-scratch model on a machine without CUDA and with two or more usable CPUs."""
    setting = os.environ.get(PAIR_PROCESSES_ENV, "").strip()
    if setting:
        if setting not in ("1", "2"):
            raise ValueError(f"${PAIR_PROCESSES_ENV} must be 1 (one model after the other) or 2, got {setting!r}")
        return setting == "2"
    return isinstance(model_cfg, TinyLlamaConfig) and not torch.cuda.is_available() and usable_cpus() >= 2


@dataclass(frozen=True)
class _RoleJob:
    """One model of a pair: its role, its corpus and everything it is built and trained from."""

    role: str
    pairs: Sequence[tuple[str, str]]
    model_cfg: TinyLlamaConfig | PretrainedSpec
    train_cfg: TrainConfig
    tokenizer: Any
    cache_dir: str | Path | None

    def fresh_model(self):
        model = _fresh_model(self.model_cfg, self.tokenizer, self.train_cfg.seed, self.cache_dir)
        return with_precision(model, self.train_cfg.precision)

    def run(self, *, progress: bool = True, on_step=None):
        """Build the model and train it: (the model on the CPU, its info: seconds, CPU seconds, epoch losses)."""
        model = self.fresh_model()
        if torch.cuda.is_available():
            model = model.to("cuda")
        # A from-scratch model this small gains nothing from intra-op threads, and when other processes share
        # the cores the extra threads spin: two threads ran ~50x slower than one on a busy 2-core machine.
        threads = 1 if isinstance(self.model_cfg, TinyLlamaConfig) and not torch.cuda.is_available() else None
        history: list[float] = []
        start, cpu_start = time.perf_counter(), time.process_time()
        fine_tune(
            model,
            self.tokenizer,
            self.pairs,
            dataclasses.replace(self.train_cfg.fine_tuning(), num_threads=threads),
            template=self.train_cfg.template,
            seed=self.train_cfg.seed,
            progress=progress,
            desc=f"train {self.role}",
            history=history,
            on_step=on_step,
        )
        info = {
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start,
            "epoch_loss": history,
            "n_pairs": len(self.pairs),
        }
        return model.to("cpu"), info

    def steps(self) -> int:
        batches = -(-len(self.pairs) // self.train_cfg.batch_size)
        return self.train_cfg.epochs * batches


class PairWorkerError(RuntimeError):
    """A pair's worker process ended without a result (killed, out of memory) or with an error that could not be
    passed back as it was: one line naming the model."""


_WORKER_BOOT = (
    "import sys\n"
    "from multiprocessing.connection import Connection\n"
    "jobs, reports = Connection(int(sys.argv[1]), writable=False), Connection(int(sys.argv[2]), readable=False)\n"
    "sys.path[:] = jobs.recv()\n"
    "from bs_ref.protocol.pair_training import _pair_worker\n"
    "_pair_worker(reports, jobs.recv(), int(sys.argv[3]))\n"
)
"""What a worker process runs (``python -c``): the parent's ``sys.path``, then its job, from one pipe; its reports
go back on another. A fresh interpreter that imports only this package (not the caller's main script, as
``multiprocessing``'s spawn would: a script without an ``if __name__ == "__main__"`` guard would run again)."""


def _start_worker(job: _RoleJob) -> tuple[subprocess.Popen, multiprocessing.connection.Connection]:
    """Start the worker process of ``job`` and send it its job; (the process, the end its reports arrive on)."""
    job_read, job_write = os.pipe()
    report_read, report_write = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-c", _WORKER_BOOT, str(job_read), str(report_write), str(os.getpid())],
            pass_fds=(job_read, report_write),
        )
    finally:
        os.close(job_read)
        os.close(report_write)
    reports = multiprocessing.connection.Connection(report_read, writable=False)
    with multiprocessing.connection.Connection(job_write, readable=False) as jobs:
        jobs.send(list(sys.path))
        jobs.send(job)
    return process, reports


def _train_side_by_side(jobs: Sequence[_RoleJob], progress: bool) -> list[tuple[Any, dict]]:
    """Each job in its own worker process (SIGINT ignored: the parent stops them), at the same time; (model, info)
    per job, in order. The parent shows one progress bar per model from the workers' reports."""
    workers, results = {}, {}
    bars = {
        job.role: tqdm(total=job.steps(), desc=f"train {job.role}", disable=not progress, leave=False, position=i)
        for i, job in enumerate(jobs)
    }
    # The workers inherit an ignored SIGINT, so Ctrl-C interrupts the parent only, which then stops them (no
    # traceback from each worker). Only the main thread may set a handler.
    main_thread = threading.current_thread() is threading.main_thread()
    try:
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN) if main_thread else None
        try:
            for job in jobs:
                workers[job.role] = _start_worker(job)
        finally:
            if main_thread:
                signal.signal(signal.SIGINT, previous)
        while len(results) < len(jobs):
            waiting = {reports: role for role, (_, reports) in workers.items() if role not in results}
            for reports in multiprocessing.connection.wait(list(waiting), timeout=1.0):
                role = waiting[reports]
                try:
                    kind, *payload = reports.recv()
                except EOFError:  # the worker died without a word
                    process = workers[role][0]
                    with contextlib.suppress(subprocess.TimeoutExpired):
                        process.wait(timeout=5)
                    raise PairWorkerError(
                        f"the worker process training the {role} model ended without a result (exit code "
                        f"{process.returncode}); set {PAIR_PROCESSES_ENV}=1 to train the pair in this process"
                    ) from None
                bar = bars[role]
                if kind == "step":
                    step, loss, epoch = payload
                    bar.set_postfix(epoch=epoch, loss=f"{loss:.3f}", refresh=False)
                    bar.update(step - bar.n)
                elif kind == "done":
                    state, info = payload
                    bar.update(bar.total - bar.n)
                    results[role] = (state, info)
                else:  # "error"
                    error, text = payload
                    if isinstance(error, BaseException):
                        error.add_note(f"(raised in the worker process training the {role} model)")
                        raise error
                    raise PairWorkerError(f"training the {role} model failed in its worker process: {text}")
    finally:
        for bar in bars.values():
            bar.close()
        for process, reports in workers.values():
            if process.poll() is None:
                process.terminate()
            process.wait()
            reports.close()
    trained = []
    for job in jobs:
        state, info = results[job.role]
        model = job.fresh_model()
        model.load_state_dict(torch.load(io.BytesIO(state), weights_only=True))
        trained.append((model.eval(), info))
    return trained


def _exit_with_parent(parent: int, poll_s: float = 1.0) -> None:
    """End this worker process when its parent (process id ``parent``, passed on the command line because a worker
    under load can spend many seconds importing before it gets here) has gone: a parent killed outright (SIGTERM,
    SIGKILL) stops no worker through the pipes before the worker's next report. A daemon thread checks the
    parent's process id every ``poll_s`` seconds and exits at once once the worker has been re-parented."""
    if os.getppid() != parent:
        os._exit(1)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(poll_s)
        os._exit(1)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def _pair_worker(connection, job: _RoleJob, parent: int) -> None:
    """A worker process: train ``job``'s model and send ("done", its state_dict as bytes, its info), or ("error",
    the exception or None where it does not pickle, its one-line text); ("step", step, loss, epoch) at most every
    0.2 s on the way. A parent that has gone ends the worker within a second (``_exit_with_parent``), whether it
    was stopped cleanly or killed."""
    _exit_with_parent(parent)
    steps_per_epoch = max(1, job.steps() // job.train_cfg.epochs)
    last = [0.0]

    def report(step: int, loss: float) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.2:
            last[0] = now
            connection.send(("step", step, loss, (step - 1) // steps_per_epoch))

    try:
        model, info = job.run(progress=False, on_step=report)
        buffer = io.BytesIO()
        torch.save(model.state_dict(), buffer)
        connection.send(("done", buffer.getvalue(), info))
    except (BrokenPipeError, KeyboardInterrupt):
        return
    except BaseException as error:  # everything goes back to the parent, which raises it
        text = "".join(traceback.format_exception_only(type(error), error)).strip()
        try:
            pickle.loads(pickle.dumps(error))
        except Exception:  # an exception that does not travel: its text does
            error = None
        with contextlib.suppress(BrokenPipeError):
            connection.send(("error", error, text))
    finally:
        connection.close()


def get_or_train_models(
    original_pairs: Sequence[tuple[str, str]],
    retain_pairs: Sequence[tuple[str, str]],
    model_cfg: str | TinyLlamaConfig | PretrainedSpec = "default",
    train_cfg: TrainConfig | None = None,
    cache_dir: str | Path | None = None,
    *,
    tokenizer_texts: Sequence[str] = (),
    progress: bool = True,
    extra_info: dict | None = None,
    announce: Callable[[str], None] | None = None,
    side_by_side: bool | None = None,
):
    """``train_pair`` behind an on-disk cache keyed by ``pair_cache_key``: (original, retain twin, tokenizer, info).
    ``announce(message)`` is told
    whether the pair is trained (and how long that took) or loaded, so a caller can say so without bars.
    ``side_by_side`` is ``train_pair``'s (where the two models train; not part of the key: the weights are the same).

    Layout: ``<cache_dir>/pairs/<key>/{original,retain,tokenizer}/`` + ``info.json``. The directory is
    written under a temporary name and renamed when complete, so an interrupted run never leaves a
    half-written cache entry, and a second run loads in seconds. ``info.json`` records the SHA-256 of every
    file of the entry (``files_sha256``) and one digest of them (``sha256``: the pair's identity, which a run
    records with its results); each load checks them, and an entry that is partial (no ``info.json``), damaged
    (a file missing or changed) or unloadable is rebuilt once, saying so (``CacheEntryError`` if that fails
    too). An entry of an earlier version (no checksums) gets them recorded on its first load.
    """

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:  # also silence transformers' own save/load bars
        hf_logging.disable_progress_bar()
    try:
        job = _PairJob(original_pairs, retain_pairs, *resolve_preset(model_cfg, train_cfg), tuple(tokenizer_texts))
        cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
        original, retain, tokenizer, info = _get_or_train_models(
            job, cache, progress, extra_info, announce or (lambda message: None), side_by_side
        )
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    return original, retain, tokenizer, info


@dataclass(frozen=True)
class _PairJob:
    """What one pair is trained from: both corpora, the tokenizer's extra texts, the model and training configs
    (everything ``pair_cache_key`` hashes)."""

    original_pairs: Sequence[tuple[str, str]]
    retain_pairs: Sequence[tuple[str, str]]
    model_cfg: TinyLlamaConfig | PretrainedSpec
    train_cfg: TrainConfig
    tokenizer_texts: Sequence[str] = ()

    def key(self) -> str:
        return pair_cache_key(
            self.original_pairs, self.retain_pairs, self.model_cfg, self.train_cfg, self.tokenizer_texts
        )


def _get_or_train_models(job: _PairJob, cache: Path, progress, extra_info, announce, side_by_side=None):
    key = job.key()
    entry = cache / "pairs" / key
    for attempt in range(2):  # a damaged entry is rebuilt once
        if not entry.exists():
            _train_entry(entry, key, job, cache, progress, extra_info, announce, side_by_side=side_by_side)
        else:
            announce(f"model pair loaded from the cache ({entry})")
        try:
            info = verify_pair_entry(entry)
            tokenizer = AutoTokenizer.from_pretrained(entry / "tokenizer")
            original = AutoModelForCausalLM.from_pretrained(entry / "original").eval()
            retain = AutoModelForCausalLM.from_pretrained(entry / "retain").eval()
        except Exception as error:  # damaged: a checksum differs, a file is missing, the weights do not load
            problem = str(error).splitlines()[0] if str(error) else type(error).__name__
            if attempt or not entry.exists():
                raise CacheEntryError(
                    f"model cache entry {entry} is damaged even after rebuilding it ({problem}); delete it "
                    f"(rm -r {entry}) and check the disk, or point --cache-dir elsewhere"
                ) from None
            announce(
                f"model cache entry {entry} is damaged ({problem}): rebuilding it once (training the pair again; "
                "a deterministic run gives the same weights)"
            )
            shutil.rmtree(entry, ignore_errors=True)
            continue
        if "sha256" not in info:  # an entry of an earlier version, loaded fine: record its checksums now
            info = record_pair_checksums(entry, info)
        info["path"] = str(entry)
        return original, retain, tokenizer, info
    raise AssertionError("unreachable")


class CacheEntryError(ValueError):
    """A model-cache entry that is damaged and could not be rebuilt: one line naming it and what to do."""


PAIR_PARTS = ("original", "retain", "tokenizer")
"""The folders of a pair cache entry; ``info.json`` records the SHA-256 of every file in them."""


def pair_entry_checksums(entry: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file of a pair entry's weights, configs and tokenizer."""
    checksums = {}
    for part in PAIR_PARTS:
        if not (entry / part).is_dir():
            raise ValueError(f"{part}/ is missing")
        checksums |= {f"{part}/{name}": digest for name, digest in files.sha256_tree(entry / part).items()}
    return checksums


def record_pair_checksums(entry: Path, info: dict) -> dict:
    """``info`` with the entry's checksums (``sha256``: the files, ``files.digest_of`` of them), written back to
    ``info.json`` atomically."""
    checksums = pair_entry_checksums(entry)
    kept = {k: v for k, v in info.items() if k != "path"}
    info = kept | {"sha256": files.digest_of(checksums), "files_sha256": checksums}
    tmp = entry / f".info.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, entry / "info.json")
    return info


def verify_pair_entry(entry: Path) -> dict:
    """The ``info.json`` of a pair cache entry, after checking every file against the checksums it records
    (an entry of an earlier version records none: it is returned as it is). ``ValueError`` (one line: what is
    missing or differs) for a partial or damaged entry."""
    if not (entry / "info.json").is_file():
        raise ValueError("info.json is missing (an interrupted or partial entry)")
    info = files.read_json_object(entry / "info.json", "the entry is rebuilt")
    recorded = info.get("files_sha256")
    if recorded is None:
        return info
    found = pair_entry_checksums(entry)
    missing = sorted(set(recorded) - set(found))
    changed = sorted(k for k in recorded if k in found and found[k] != recorded[k])
    if missing or changed:
        what = [f"missing: {', '.join(missing)}"] if missing else []
        what += [f"sha256 differs: {', '.join(changed)}"] if changed else []
        raise ValueError("; ".join(what))
    return info


def _train_entry(
    entry: Path, key: str, job: _PairJob, cache: Path, progress, extra_info, announce, side_by_side=None
) -> None:
    """Train the pair and write its cache entry (with checksums) under a temporary name, then rename it."""
    started = time.perf_counter()
    model_cfg, train_cfg = job.model_cfg, job.train_cfg
    announce(
        f"training the original model ({len(job.original_pairs)} examples) and its retain twin "
        f"({len(job.retain_pairs)}), {train_cfg.epochs} epochs each; cached afterwards under {entry}"
    )
    original, retain, tokenizer, info = train_pair(
        job.original_pairs,
        job.retain_pairs,
        model_cfg,
        train_cfg,
        tokenizer_texts=job.tokenizer_texts,
        cache_dir=cache,
        progress=progress,
        side_by_side=side_by_side,
    )
    info.update(
        key=key,
        model_cfg=_to_jsonable(model_cfg),
        train_cfg=_to_jsonable(train_cfg),
        template=train_cfg.template,
        **(extra_info or {}),
    )
    tmp = entry.with_name(f"{key}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for role, model in (("original", original), ("retain", retain)):
        if isinstance(model_cfg, PretrainedSpec):
            save_plain(model, tmp / role)
        else:
            model.save_pretrained(tmp / role)
    tokenizer.save_pretrained(tmp / "tokenizer")
    record_pair_checksums(tmp, info)
    try:
        tmp.rename(entry)
    except OSError:  # another process finished the same entry first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    announce(f"model pair trained in {time.perf_counter() - started:.0f} s")


def get_or_train_pair(
    benchmark_cfg,
    model_cfg: str | TinyLlamaConfig | PretrainedSpec = "default",
    cache_dir: str | Path | None = None,
    *,
    train_cfg: TrainConfig | None = None,
    forget: str = "forget10",
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
    side_by_side: bool | None = None,
):
    """(original, retain_twin, tokenizer, info) for a synthetic benchmark, trained once and cached.

    ``benchmark_cfg`` is a ``bs_ref.data.synthetic.SyntheticConfig`` (or an already built benchmark dict).
    The original trains on ``training_corpus(benchmark, "full")``, the twin on the retain split of
    ``forget`` (``forget10`` → ``retain90``), same tokenizer, seed and config. ``model_cfg`` is a preset
    name (``PRESETS``) or a config; ``train_cfg`` overrides the preset's training config. The fourth value,
    the info, carries the cache path, the template and the training times/losses.
    ``side_by_side``: see ``train_pair`` (None: two worker processes where that pays).
    """
    benchmark = benchmark_cfg if isinstance(benchmark_cfg, dict) else build_benchmark(benchmark_cfg)
    _, retain_split, _ = forget_retain_configs(forget)
    if retain_split not in benchmark:
        raise ValueError(f"the benchmark has no split {retain_split!r} (needed for forget={forget!r})")
    extra = {"forget": forget, "retain_split": retain_split}
    if not isinstance(benchmark_cfg, dict):
        extra["benchmark_cfg"] = _to_jsonable(benchmark_cfg)
    return get_or_train_models(
        training_corpus(benchmark, "full"),
        training_corpus(benchmark, retain_split),
        model_cfg,
        train_cfg,
        cache_dir,
        tokenizer_texts=benchmark_texts(benchmark),
        progress=progress,
        extra_info=extra,
        announce=announce,
        side_by_side=side_by_side,
    )


def tofu_corpus(records: Sequence[dict]) -> list[tuple[str, str]]:
    """The (question, answer) training pairs of TOFU records, in order."""
    return [(r["question"], r["answer"]) for r in records]


def corpus_sha256(pairs: Sequence[tuple[str, str]]) -> str:
    """SHA-256 of a training corpus (its pairs as JSON): the data content a cached pair was trained on."""
    return hashlib.sha256(json.dumps([list(p) for p in pairs]).encode()).hexdigest()


def get_or_train_tofu_pair(
    forget_records: Sequence[dict],
    retain_records: Sequence[dict],
    model_cfg: str | TinyLlamaConfig | PretrainedSpec = "smollm2",
    cache_dir: str | Path | None = None,
    *,
    train_cfg: TrainConfig | None = None,
    tokenizer_texts: Sequence[str] = (),
    progress: bool = True,
    extra_info: dict | None = None,
    announce: Callable[[str], None] | None = None,
):
    """(original, retain_twin, tokenizer, info) fine-tuned on real TOFU records, trained once and cached.

    The original trains on the retain records followed by the forget records (TOFU's ``full`` split lists
    the retain authors first), the twin on the retain records only: same starting weights, tokenizer, seed,
    template and schedule. The cache entry is ``get_or_train_models``'s, keyed by ``pair_cache_key``: both
    corpora in full (so the data content and the authors kept), the model and training configs (preset,
    schedule, template, seed, precision) and the package version; a rerun with the same records loads it.
    ``model_cfg`` is a preset name or a config (a pretrained one in practice: a from-scratch model would
    train its tokenizer on these records plus ``tokenizer_texts``). The info records
    the items and the SHA-256 of each corpus besides the training times and per-epoch losses."""
    forget_pairs, retain_pairs = tofu_corpus(forget_records), tofu_corpus(retain_records)
    if not forget_pairs or not retain_pairs:
        raise ValueError(
            f"fine-tuning needs forget and retain records, got {len(forget_pairs)} forget and {len(retain_pairs)} "
            "retain; check the splits and --max-authors"
        )
    original_pairs = retain_pairs + forget_pairs
    extra = {
        "data": "tofu",
        "trained_on": {
            "original": {"forget_items": len(forget_pairs), "retain_items": len(retain_pairs)},
            "retain": {"forget_items": 0, "retain_items": len(retain_pairs)},
        },
        "data_sha256": {"forget": corpus_sha256(forget_pairs), "retain": corpus_sha256(retain_pairs)},
        **(extra_info or {}),
    }
    return get_or_train_models(
        original_pairs,
        retain_pairs,
        model_cfg,
        train_cfg,
        cache_dir,
        tokenizer_texts=tokenizer_texts,
        progress=progress,
        extra_info=extra,
        announce=announce,
        side_by_side=False,  # SmolLM2-sized models use every core each, and two of them double the memory
    )
