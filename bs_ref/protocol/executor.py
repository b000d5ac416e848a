"""Run a list of independent jobs here, one after the other, or as Ray tasks on this machine or a cluster.

An experiment's jobs (one unlearning method, seed and model-pair seed each) share nothing while they run: each one
writes its own results into the run directory with atomic writes. ``run_jobs(jobs, work)`` calls ``work(job)`` for
every job and returns the results in job order:

- ``executor="local"`` (the default) runs the jobs in order in this process;
- ``executor="processes"`` runs them in ``workers`` worker processes of this machine (``spawn``), as many at a time,
  each with this process's torch thread count (a job may set its own). A worker keeps the job function it was
  given for all its jobs, so what a job caches in it (a model pair loaded once) serves the worker's next jobs;
- ``executor="ray"`` runs every job as a Ray task, ``cpus_per_job`` CPUs and ``gpus_per_job`` GPUs each, as many
  at a time as the cluster has room for. Without an address it starts a local Ray on this machine's CPUs and
  shuts it down at the end; with one it connects to that cluster (and leaves it running).

A sweep on a cluster: start Ray on one machine with ``ray start --head`` and on every other machine with
``ray start --address <head>:6379``, then run the experiment on the head (or any machine that reaches it) with
``--executor ray --ray-address <head>:6379`` (``--ray-address auto`` finds a cluster started on this machine). Every
machine needs this package installed in the same environment, and the run directory on a shared filesystem. A job
that needs a trained model pair reads it from the model cache (``--cache-dir``, or ``BS_REF_CACHE``): put the cache
on the shared filesystem too, or every job on a machine without it trains its own pair first. Set ``cpus_per_job``
to the threads a job uses (``--threads``), so that Ray never runs more jobs on a machine than it has cores for, and
``gpus_per_job`` to 1 (or a fraction, to share a GPU) for jobs on a GPU: only then does Ray count the GPUs, and a
job sees just its own, as ``cuda:0``.

What a job sees under Ray is what it sees here. The function and the jobs are shipped to the workers (a function
from a file the workers cannot import by name, such as ``experiments/tofu.py``, travels by value, with the classes
of its file). Every job starts with this process's torch thread count and may set its own. A local Ray started by
``run_jobs`` runs its workers in this process's environment; on any other Ray the environment variables of
``FORWARDED_ENV`` that are set here go with every task. An error that stops the run, or Ctrl-C, stops the jobs
still running or waiting (their workers are killed); every finished job's files are already written.

The worker processes see the same: the function and the jobs are pickled here; a module of theirs that a worker
cannot import by name (a file loaded with importlib) is loaded there from its file first, and a function of the
``__main__`` script is found there as ``spawn`` runs the script under another name. The workers ignore SIGINT:
Ctrl-C at a terminal reaches the whole process group, and this process alone decides what stops (it kills the
workers and cancels the jobs waiting).
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.metadata
import importlib.util
import logging
import os
import pickle
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from functools import partial
from types import ModuleType
from typing import Any, TypeVar

from bs_ref.protocol.cli import arg

J = TypeVar("J")
R = TypeVar("R")

EXECUTORS = ("local", "processes", "ray")
"""The values of ``--executor``."""

FORWARDED_ENV = (
    "ATEN_CPU_CAPABILITY",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "CUBLAS_WORKSPACE_CONFIG",
    "TOKENIZERS_PARALLELISM",
    "TQDM_DISABLE",
    "BS_REF_CACHE",
)
"""Environment variables passed to every Ray task when they are set here: the CPU kernels torch picks, thread
counts, deterministic cuBLAS, tokenizer threads, progress bars and the model cache."""

RAY_MISSING = "--executor ray needs Ray, which is not installed: pip install -e '.[ray]'"


@dataclasses.dataclass
class ExecutionConfig:
    """Where the experiment's jobs run (``run_jobs``): none of these settings changes a number."""

    executor: str = arg(
        "local",
        "where the unlearning jobs run: local (this process, one after the other) | processes (--workers processes "
        "of this machine, one job at a time each, --threads threads each) | ray (one Ray task per method, seed and "
        "model pair; pip install -e '.[ray]')",
        identity=False,
    )
    workers: int = arg(2, "with --executor processes: how many worker processes", identity=False)
    ray_address: str | None = arg(
        None,
        "with --executor ray: the cluster to join (head:6379, or auto); default: a local Ray on this machine's CPUs",
        identity=False,
    )

    def run(self, jobs: Sequence[J], work: Callable[[J], R], **options: Any) -> list[R | BaseException]:
        """``run_jobs(jobs, work, **options)`` where these settings say."""
        return run_jobs(jobs, work, executor=self.executor, address=self.ray_address, workers=self.workers, **options)


def executor_problems(executor: str, address: str | None, workers: int = 2) -> list[str]:
    """What is wrong with ``--executor``, ``--ray-address`` and ``--workers``, one message each (empty when nothing
    is)."""
    if executor not in EXECUTORS:
        return [f"--executor {executor!r} is not one of: {', '.join(EXECUTORS)}"]
    problems = []
    if workers < 1:
        problems.append(f"--workers must be >= 1, got {workers}")
    if address is not None and executor != "ray":
        problems.append(f"--ray-address {address} is given without --executor ray (add --executor ray)")
    if executor == "ray" and _import_ray() is None:
        problems.append(RAY_MISSING)
    return problems


def run_jobs(
    jobs: Sequence[J],
    work: Callable[[J], R],
    *,
    executor: str = "local",
    address: str | None = None,
    cpus_per_job: float = 1,
    gpus_per_job: float = 0,
    catch: tuple[type[BaseException], ...] = (),
    on_done: Callable[[J, R | BaseException], None] | None = None,
    workers: int = 2,
    describe: Callable[[J], str] = repr,
) -> list[R | BaseException]:
    """``work(job)`` for every job, in job order. An exception of a type in ``catch`` is that job's result (the
    other jobs go on); any other stops the run (under Ray or in processes: stops the jobs not finished) and is raised
    with the job named in a note (``describe(job)``; in processes also one line on stderr). ``on_done(job,
    result)`` runs here as each job finishes (under Ray and in processes: in finishing order). ``address`` (Ray
    only): a cluster to connect to; None starts a local Ray for this call. A Ray this process has already
    initialised is used as it is. ``workers`` (processes only): how many worker processes."""
    problems = executor_problems(executor, address, workers)
    if problems:
        raise ValueError("; ".join(problems))
    if executor == "local":
        return _run_local(jobs, work, catch, on_done, describe)
    if executor == "processes":
        return _run_processes(jobs, work, workers, catch, on_done, describe)
    return _run_ray(jobs, work, address, cpus_per_job, gpus_per_job, catch, on_done, describe)


def _run_local(
    jobs: Sequence[J],
    work: Callable[[J], R],
    catch: tuple[type[BaseException], ...],
    on_done: Callable[[J, R | BaseException], None] | None,
    describe: Callable[[J], str],
) -> list[R | BaseException]:
    results: list[R | BaseException] = []
    for i, job in enumerate(jobs):
        try:
            result: R | BaseException = work(job)
        except catch as error:
            result = error
        except Exception as error:
            _name_job(error, i, len(jobs), job, describe)
            raise
        results.append(result)
        if on_done is not None:
            on_done(job, result)
    return results


def _run_ray(
    jobs: Sequence[J],
    work: Callable[[J], R],
    address: str | None,
    cpus_per_job: float,
    gpus_per_job: float,
    catch: tuple[type[BaseException], ...],
    on_done: Callable[[J, R | BaseException], None] | None,
    describe: Callable[[J], str],
) -> list[R | BaseException]:
    if not jobs:
        return []
    ray = _import_ray()
    assert ray is not None  # executor_problems checked it
    started = not ray.is_initialized()
    if started:
        if address is None:  # "local": a new Ray even where one was started on this machine before
            ray.init(address="local", num_cpus=_cpu_count(), include_dashboard=False, **_QUIET)
        else:
            ray.init(address=address, **_QUIET)
    registered: list[ModuleType] = []
    pending: dict[Any, int] = {}
    try:
        registered = _pickle_by_value(ray, [work, *catch, *(type(job) for job in jobs)])
        # A local Ray started just now runs its workers in this environment; any other may not.
        env = {} if started and address is None else {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
        torch = sys.modules.get("torch")
        threads = torch.get_num_threads() if torch is not None else None
        task = ray.remote(_call)
        options = {"num_cpus": cpus_per_job, "num_gpus": gpus_per_job, "max_retries": 0}
        if env:
            options["runtime_env"] = {"env_vars": env}
        shipped = ray.put(work)  # once for every task
        for i, job in enumerate(jobs):
            ref = task.options(name=f"job {i}", **options).remote(shipped, job, catch, threads)
            pending[ref] = i
        results: list[Any] = [None] * len(jobs)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                i = pending.pop(ref)
                try:
                    results[i] = ray.get(ref)
                except Exception as error:  # the job's own error (its remote traceback in the message), or Ray's
                    _name_job(error, i, len(jobs), jobs[i], describe)
                    raise
                if on_done is not None:
                    on_done(jobs[i], results[i])
        return results
    finally:
        if pending:  # an error, or Ctrl-C here: stop what is still running or waiting
            _cancel(ray, list(pending))
        for module in registered:
            ray.cloudpickle.unregister_pickle_by_value(module)
        if started:
            ray.shutdown()


def _run_processes(
    jobs: Sequence[J],
    work: Callable[[J], R],
    workers: int,
    catch: tuple[type[BaseException], ...],
    on_done: Callable[[J, R | BaseException], None] | None,
    describe: Callable[[J], str],
) -> list[R | BaseException]:
    if not jobs:
        return []
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    torch = sys.modules.get("torch")
    threads = torch.get_num_threads() if torch is not None else None
    modules = _module_files([work, *catch, *(type(job) for job in jobs)])
    shipped = pickle.dumps((work, catch))  # unpickled in the worker once its modules are loaded
    pending: dict[Any, int] = {}
    with _sigint_ignored():  # the workers start with SIGINT ignored, so that no Ctrl-C interrupts their start-up
        pool = ProcessPoolExecutor(
            max_workers=min(workers, len(jobs)),
            initializer=_start_worker,
            mp_context=multiprocessing.get_context("spawn"),
            initargs=(modules, shipped, threads),
        )
        try:
            for i, job in enumerate(jobs):  # the first submit starts every worker
                pending[pool.submit(_call_in_worker, pickle.dumps(job))] = i
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise
    try:
        results: list[Any] = [None] * len(jobs)
        while pending:
            done, _ = wait(list(pending), return_when=FIRST_COMPLETED)
            for future in sorted(done, key=pending.__getitem__):
                i = pending.pop(future)
                try:
                    results[i] = future.result()
                except Exception as error:  # the job's own error (its traceback as its cause), or a dead worker
                    _name_job(error, i, len(jobs), jobs[i], describe)
                    print(
                        f"run_jobs: job {i} of {len(jobs)} ({describe(jobs[i])}) failed in a worker process: "
                        f"{type(error).__name__}: {error}; the jobs left are stopped, every finished job's results "
                        "are kept",
                        file=sys.stderr,
                        flush=True,
                    )
                    raise
                if on_done is not None:
                    on_done(jobs[i], results[i])
        return results
    finally:
        if pending:  # an error, or Ctrl-C here: cancel what waits, kill what runs (it may be half-way)
            for future in pending:
                future.cancel()
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.kill()
        pool.shutdown(wait=True, cancel_futures=True)


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored in this block (in the main thread; elsewhere signals cannot be set and are not delivered)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


_WORKER: dict[str, Any] = {}
"""In a worker process: the job function and the error types it returns, set once when the worker starts."""


def _start_worker(modules: list[tuple[str, str]], shipped: bytes, threads: int | None) -> None:
    """A worker process starts: Ctrl-C is its parent's to handle; the modules a job needs that cannot be imported
    by name are loaded from their files; then the job function, and the parent's torch thread count."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if importlib.util.find_spec("tqdm") is not None:  # its default lock is a named semaphore that a worker killed
        import tqdm  # mid-job leaves behind (one warning at exit); the bars of one process need a thread lock only

        tqdm.tqdm.set_lock(threading.RLock())
    for name, file in modules:
        if name in sys.modules:
            continue
        try:
            importlib.import_module(name)
        except ImportError:
            spec = importlib.util.spec_from_file_location(name, file)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # dataclasses look their module up while the file runs
            spec.loader.exec_module(module)
    _WORKER["work"], _WORKER["catch"] = pickle.loads(shipped)
    if threads is not None:
        import torch

        torch.set_num_threads(threads)


def _call_in_worker(job: bytes) -> Any:
    """One job in a worker process, with the function the worker was started with."""
    try:
        return _WORKER["work"](pickle.loads(job))
    except _WORKER["catch"] as error:
        return error


def _module_files(objects: list[object]) -> list[tuple[str, str]]:
    """(name, file) of every module defining one of ``objects`` or, for a ``functools.partial``, one of its
    arguments, except ``__main__`` (found by ``spawn`` itself) and modules without a file."""
    found: dict[str, str] = {}
    todo = list(objects)
    while todo:
        obj = todo.pop()
        if isinstance(obj, partial):
            todo += [obj.func, *obj.args, *obj.keywords.values()]
            continue
        name = getattr(obj, "__module__", None) or getattr(type(obj), "__module__", None)
        module = sys.modules.get(name) if isinstance(name, str) and name != "__main__" else None
        file = getattr(module, "__file__", None)
        if file and name not in found:
            found[name] = file
    return sorted(found.items())


_QUIET = {"log_to_driver": True, "logging_level": logging.ERROR}
"""A job's own output reaches this terminal; Ray's start-up messages do not."""


def _call(work: Callable[[Any], Any], job: Any, catch: tuple[type[BaseException], ...], threads: int | None) -> Any:
    """One job in a Ray worker: the driver's torch thread count first (the job may set its own), then the job."""
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    try:
        return work(job)
    except catch as error:
        return error


def _cancel(ray: ModuleType, refs: list[Any], patience: float = 10.0) -> None:
    """Stop the tasks of ``refs`` (their workers are killed: a job interrupted half-way could leave its worker
    unusable) and wait until none runs. Ray's cancellation is best effort: a task on its way to a worker can miss
    it, so it is asked again every half second, for at most ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while refs and time.monotonic() < deadline:
        for ref in refs:
            try:
                ray.cancel(ref, force=True)
            except Exception:  # finished meanwhile, or Ray is going down
                pass
        _, refs = ray.wait(refs, num_returns=len(refs), timeout=0.5)


def _import_ray() -> ModuleType | None:
    try:
        import ray
    except ImportError:
        return None
    return ray


def _cpu_count() -> int:
    """The CPUs this process may run on (its affinity), which can be fewer than the machine has."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _name_job(error: BaseException, i: int, n: int, job: Any, describe: Callable[[Any], str] = repr) -> None:
    text = describe(job)
    message = f"in job {i} of {n}: {text if len(text) <= 300 else text[:297] + '...'}"
    if hasattr(error, "add_note"):  # Python >= 3.11
        error.add_note(message)
    else:
        print(f"run_jobs: {message}", file=sys.stderr)


def _pickle_by_value(ray: ModuleType, objects: list[object]) -> list[ModuleType]:
    """Register for pickling by value every module defining one of ``objects`` that a worker cannot import by
    name: one outside the standard library and every installed package (a file loaded with importlib, a test
    module). Functions of ``__main__`` and of modules missing from ``sys.modules`` travel by value anyway. Returns
    the modules registered here, to unregister at the end."""
    names = set()
    for obj in objects:
        while isinstance(obj, partial):
            obj = obj.func
        name = getattr(obj, "__module__", None)
        if isinstance(name, str) and name != "__main__" and name in sys.modules:
            names.add(name)
    top = {name.partition(".")[0] for name in names}
    if not top - set(sys.stdlib_module_names) - set(sys.builtin_module_names):
        return []
    installed = set(importlib.metadata.packages_distributions())
    already = set(ray.cloudpickle.list_registry_pickle_by_value())
    registered = []
    for name in sorted(names):
        head = name.partition(".")[0]
        if head in installed or head in sys.stdlib_module_names or head in sys.builtin_module_names or name in already:
            continue
        module = sys.modules[name]
        ray.cloudpickle.register_pickle_by_value(module)
        registered.append(module)
    return registered
