"""bs_ref.protocol.executor: jobs run here, in worker processes or as Ray tasks give the same results in job order;
caught errors are results, others name their job; functions from files the workers cannot import run in processes
and under Ray; the workers get the environment and torch thread count of the driver; an error or Ctrl-C stops the
jobs left; the command-line checks of --executor, --ray-address and --workers."""

from __future__ import annotations

import importlib.util
import logging
import os
import sys
import textwrap
import time
import uuid
from pathlib import Path

import pytest
import torch

from bs_ref.protocol.executor import EXECUTORS, executor_problems, run_jobs

HELPER = textwrap.dedent(
    '''
    """A job function in a file that is not on any worker's import path."""

    import os
    from dataclasses import dataclass

    SCALE = 3


    @dataclass
    class Job:
        x: int


    @dataclass
    class Out:
        y: int
        pid: int


    def scaled(x):
        return x * SCALE


    def work(job):
        return Out(scaled(job.x), os.getpid())
    '''
)


@pytest.fixture(scope="module")
def ray_module():
    """Ray, or skip; a local Ray (2 CPUs) started at the first test that needs it and stopped after the file."""
    ray = pytest.importorskip("ray")
    yield ray
    if ray.is_initialized():
        ray.shutdown()


@pytest.fixture
def ray(ray_module):
    """A local Ray that is already running when the test starts (run_jobs then leaves it running)."""
    if not ray_module.is_initialized():
        ray_module.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.ERROR)
    return ray_module


class Diverged(FloatingPointError):
    """A job's own error type, as NonFiniteLossError is the experiment's (importing bs_ref.unlearn in every worker
    would cost seconds here)."""


def double(x: int) -> int:
    return 2 * x


def pid_and_double(x: int) -> tuple[int, int]:
    return 2 * x, os.getpid()


def last_first(job: tuple[int, str]) -> tuple[int, int]:
    """Job 0 finishes after every other job's result has reached the driver (it waits for the ``<k>.delivered``
    files that ``delivered`` writes there), the others as they come: no race between a finished job and its
    result's way back, whatever the machine's load."""
    x, folder = job
    others = [Path(folder) / f"{k}.delivered" for k in range(len(list(Path(folder).glob("*.job")))) if k != 0]
    for _ in range(6000 if x == 0 else 0):
        if all(p.exists() for p in others):
            break
        time.sleep(0.05)
    return pid_and_double(x)


def delivered(folder: Path, done: list):
    """An ``on_done`` for ``last_first``: record the job and tell job 0 its result has arrived."""

    def on_done(job, _result) -> None:
        done.append(job[0])
        (folder / f"{job[0]}.delivered").touch()

    return on_done


def diverge_at_one(x: int) -> int:
    if x == 1:
        raise Diverged("the loss became nan at step 3")
    return x


def fail_at_one(x: int) -> int:
    if x == 1:
        raise ValueError("boom")
    return x


def environment(_: object) -> dict[str, str | None]:
    return {name: os.environ.get(name) for name in ("BS_REF_CACHE", "ATEN_CPU_CAPABILITY", "OMP_NUM_THREADS")}


def threads(own: int | None) -> int:
    if own is not None:
        torch.set_num_threads(own)
    return torch.get_num_threads()


def test_local_runs_the_jobs_in_order_in_this_process() -> None:
    done = []
    results = run_jobs([0, 1, 2], pid_and_double, on_done=lambda job, result: done.append((job, result)))
    assert results == [(0, os.getpid()), (2, os.getpid()), (4, os.getpid())]
    assert done == list(zip([0, 1, 2], results))
    assert run_jobs([], double) == []


def test_ray_starts_a_local_ray_and_stops_it(ray_module, monkeypatch) -> None:
    """Without an address run_jobs starts its own local Ray, whose workers run in this environment, and stops it."""
    if ray_module.is_initialized():  # another test started one: this test is about run_jobs starting its own
        ray_module.shutdown()
    monkeypatch.setenv("BS_REF_CACHE", "model-cache")
    monkeypatch.setenv("ATEN_CPU_CAPABILITY", "default")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    results = run_jobs([0, 1], environment, executor="ray")
    assert results == [{"BS_REF_CACHE": "model-cache", "ATEN_CPU_CAPABILITY": "default", "OMP_NUM_THREADS": "1"}] * 2
    assert not ray_module.is_initialized()


def test_ray_matches_local_in_job_order(ray, tmp_path) -> None:
    for x in range(4):
        (tmp_path / f"{x}.job").touch()
    local = run_jobs(range(4), double)
    done = []
    jobs = [(x, str(tmp_path)) for x in range(4)]
    remote = run_jobs(jobs, last_first, executor="ray", on_done=delivered(tmp_path, done))
    assert [y for y, _ in remote] == local == [0, 2, 4, 6]
    assert os.getpid() not in {pid for _, pid in remote}
    assert sorted(done) == [0, 1, 2, 3] and done[-1] == 0  # on_done as the jobs finish, job 0 last
    assert ray.is_initialized()  # not started by run_jobs: left running
    assert run_jobs([], double, executor="ray") == []


def test_processes_match_local_in_job_order(tmp_path) -> None:
    """Two worker processes: job 0 finishes last, the results come in job order, on_done in finishing order, and a
    worker runs with the driver's torch thread count."""
    for x in range(4):
        (tmp_path / f"{x}.job").touch()
    done = []
    jobs = [(x, str(tmp_path)) for x in range(4)]
    remote = run_jobs(jobs, last_first, executor="processes", workers=2, on_done=delivered(tmp_path, done))
    assert [y for y, _ in remote] == run_jobs(range(4), double) == [0, 2, 4, 6]
    pids = {pid for _, pid in remote}
    assert os.getpid() not in pids and len(pids) == 2
    assert sorted(done) == [0, 1, 2, 3] and done[-1] == 0
    assert run_jobs([None], threads, executor="processes") == [torch.get_num_threads()]
    assert run_jobs([], double, executor="processes") == []


@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_caught_error_is_the_result_of_its_job(executor: str, request) -> None:
    if executor == "ray":
        request.getfixturevalue("ray")
    done = {}
    results = run_jobs([0, 1, 2], diverge_at_one, executor=executor, catch=(Diverged,), on_done=done.__setitem__)
    assert results[0] == 0 and results[2] == 2
    assert isinstance(results[1], Diverged) and "nan at step 3" in str(results[1])
    assert isinstance(done[1], Diverged)
    assert sorted(done) == [0, 1, 2]


@pytest.mark.parametrize("executor", EXECUTORS)
def test_an_uncaught_error_names_its_job(executor: str, request, capsys) -> None:
    if executor == "ray":
        request.getfixturevalue("ray")
    with pytest.raises(ValueError, match="boom") as raised:
        run_jobs([0, 1, 2], fail_at_one, executor=executor, catch=(Diverged,), describe=lambda x: f"cell {x}")
    assert "in job 1 of 3: cell 1" in raised.value.__notes__
    if executor == "processes":  # and one line on stderr
        assert "run_jobs: job 1 of 3 (cell 1) failed in a worker process: ValueError: boom;" in capsys.readouterr().err


def stop_or_write(job: tuple[int, str]) -> None:
    """Job 0 waits until job 1 runs, then fails (``x == 0``) or finishes (``x < 0``); job 1 writes its file after
    10 s unless it is stopped first. The waits are generous so that a loaded machine (slow worker start, slow
    cancel) does not decide the outcome."""
    x, folder = job
    started, late = Path(folder) / "started", Path(folder) / "late.txt"
    if x <= 0:
        for _ in range(6000):
            if started.exists():
                break
            time.sleep(0.05)
        if x == 0:
            raise ValueError("boom")
        return
    started.touch()
    time.sleep(10.0)
    late.write_text("finished")


def interrupt(job: tuple[int, str], result: object) -> None:
    raise KeyboardInterrupt  # as Ctrl-C does while the driver waits


@pytest.mark.parametrize("stop", ["error", "ctrl-c"])
def test_ray_cancels_the_jobs_left(ray, tmp_path, stop: str) -> None:
    """An uncaught error in one job, or Ctrl-C in the driver, stops the job still running: it writes nothing."""
    jobs = [(0 if stop == "error" else -1, str(tmp_path)), (1, str(tmp_path))]
    with pytest.raises(ValueError if stop == "error" else KeyboardInterrupt):
        run_jobs(jobs, stop_or_write, executor="ray", on_done=interrupt)
    assert (tmp_path / "started").exists()
    time.sleep(10.5)
    assert not (tmp_path / "late.txt").exists()


@pytest.mark.parametrize("stop", ["error", "ctrl-c"])
def test_processes_stop_the_jobs_left(tmp_path, stop: str) -> None:
    """An uncaught error in one job, or Ctrl-C in the driver, kills the worker still running and cancels the job
    waiting: neither writes anything."""
    jobs = [(0 if stop == "error" else -1, str(tmp_path)), (1, str(tmp_path)), (2, str(tmp_path))]
    with pytest.raises(ValueError if stop == "error" else KeyboardInterrupt):
        run_jobs(jobs, stop_or_write, executor="processes", workers=2, on_done=interrupt)
    assert (tmp_path / "started").exists()
    time.sleep(10.5)
    assert not (tmp_path / "late.txt").exists()


def _load_helper(tmp_path: Path, in_sys_modules: bool):
    """HELPER as a module loaded from its file, under a name no worker can import (as tests load the experiment)."""
    file = tmp_path / "job_helper.py"
    file.write_text(HELPER)
    spec = importlib.util.spec_from_file_location(f"executor_helper_{uuid.uuid4().hex}", file)
    module = importlib.util.module_from_spec(spec)
    if in_sys_modules:
        sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("in_sys_modules", [True, False], ids=["in-sys-modules", "not-in-sys-modules"])
def test_a_function_from_a_file_runs_under_ray(ray, tmp_path, in_sys_modules: bool) -> None:
    module = _load_helper(tmp_path, in_sys_modules)
    try:
        if in_sys_modules:  # by reference, as Ray ships it by default, a worker cannot find the module
            with pytest.raises(Exception, match="No module named"):
                ray.get(ray.remote(lambda job: job).remote(module.Job(1)))
        jobs = [module.Job(1), module.Job(2)]
        results = run_jobs(jobs, module.work, executor="ray")
        assert [r.y for r in results] == [3, 6] and all(isinstance(r, module.Out) for r in results)
        assert [r.y for r in run_jobs(jobs, module.work)] == [3, 6]
        assert module.__name__ not in ray.cloudpickle.list_registry_pickle_by_value()  # unregistered at the end
    finally:
        sys.modules.pop(module.__name__, None)


def test_a_function_from_a_file_runs_in_processes(tmp_path) -> None:
    """As the tests load the experiment: a file loaded under a name no worker can import, in sys.modules."""
    module = _load_helper(tmp_path, True)
    try:
        results = run_jobs([module.Job(1), module.Job(2)], module.work, executor="processes", workers=1)
        assert [r.y for r in results] == [3, 6] and all(isinstance(r, module.Out) for r in results)
        assert len({r.pid for r in results}) == 1 and results[0].pid != os.getpid()  # one worker kept for both
    finally:
        sys.modules.pop(module.__name__, None)


def test_ray_jobs_run_with_the_driver_torch_threads(ray) -> None:
    """Ray would give a job as many threads as it has CPUs (OMP_NUM_THREADS); a job runs with the driver's count
    here, as it does locally, unless it sets its own."""
    driver = torch.get_num_threads()
    assert run_jobs([None], threads, executor="ray", cpus_per_job=2) == [driver] == run_jobs([None], threads)
    assert run_jobs([driver + 1], threads, executor="ray") == [driver + 1]


def test_environment_reaches_a_running_ray(ray, monkeypatch) -> None:
    """Variables set after Ray started (or set on a driver connecting to a cluster) travel with every task."""
    monkeypatch.setenv("BS_REF_CACHE", f"cache-{uuid.uuid4().hex[:6]}")
    assert run_jobs([0], environment, executor="ray")[0]["BS_REF_CACHE"] == os.environ["BS_REF_CACHE"]


def test_executor_problems() -> None:
    assert executor_problems("local", None) == []
    assert executor_problems("process", None) == ["--executor 'process' is not one of: local, processes, ray"]
    assert executor_problems("processes", None, workers=0) == ["--workers must be >= 1, got 0"]
    assert executor_problems("local", "head:6379") == [
        "--ray-address head:6379 is given without --executor ray (add --executor ray)"
    ]
    with pytest.raises(ValueError, match="not one of: local, processes, ray"):
        run_jobs([0], double, executor="process")


def test_missing_ray_says_how_to_install_it(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as it does where Ray is not installed
    expected = "--executor ray needs Ray, which is not installed: pip install -e '.[ray]'"
    assert executor_problems("ray", None) == [expected]
    assert executor_problems("ray", "head:6379") == [expected]
    with pytest.raises(ValueError, match=r"pip install -e '\.\[ray\]'"):
        run_jobs([0], double, executor="ray")
    assert run_jobs([0], double) == [0]
