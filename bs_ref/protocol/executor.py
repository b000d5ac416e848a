"""Run a list of independent jobs here, one after the other, or as Ray tasks on this machine or a cluster.

An experiment's jobs (one unlearning method, seed and model-pair seed each) share nothing while they run: each one
writes its own results into the run directory with atomic writes. ``run_jobs(jobs, work)`` calls ``work(job)`` for
every job and returns the results in job order:

- ``executor="local"`` (the default) runs the jobs in order in this process;
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
"""

from __future__ import annotations

import importlib.metadata
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from types import ModuleType
from typing import Any, TypeVar

J = TypeVar("J")
R = TypeVar("R")

EXECUTORS = ("local", "ray")
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


def executor_problems(executor: str, address: str | None) -> list[str]:
    """What is wrong with ``--executor`` and ``--ray-address``, one message each (empty when nothing is)."""
    if executor not in EXECUTORS:
        return [f"--executor {executor!r} is not one of: {', '.join(EXECUTORS)}"]
    problems = []
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
) -> list[R | BaseException]:
    """``work(job)`` for every job, in job order. An exception of a type in ``catch`` is that job's result (the
    other jobs go on); any other stops the run (under Ray: cancels the jobs not finished) and is raised with the job
    named in a note. ``on_done(job, result)`` runs here as each job finishes (under Ray: in finishing order).
    ``address`` (Ray only): a cluster to connect to; None starts a local Ray for this call. A Ray this process
    has already initialised is used as it is."""
    problems = executor_problems(executor, address)
    if problems:
        raise ValueError("; ".join(problems))
    if executor == "local":
        return _run_local(jobs, work, catch, on_done)
    return _run_ray(jobs, work, address, cpus_per_job, gpus_per_job, catch, on_done)


def _run_local(jobs: Sequence[J], work: Callable[[J], R], catch: tuple[type[BaseException], ...],
               on_done: Callable[[J, R | BaseException], None] | None) -> list[R | BaseException]:  # fmt: skip
    results: list[R | BaseException] = []
    for i, job in enumerate(jobs):
        try:
            result: R | BaseException = work(job)
        except catch as error:
            result = error
        except Exception as error:
            _name_job(error, i, len(jobs), job)
            raise
        results.append(result)
        if on_done is not None:
            on_done(job, result)
    return results


def _run_ray(jobs: Sequence[J], work: Callable[[J], R], address: str | None, cpus_per_job: float,
             gpus_per_job: float, catch: tuple[type[BaseException], ...],
             on_done: Callable[[J, R | BaseException], None] | None) -> list[R | BaseException]:  # fmt: skip
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
                    _name_job(error, i, len(jobs), jobs[i])
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


def _name_job(error: BaseException, i: int, n: int, job: object) -> None:
    text = repr(job)
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
