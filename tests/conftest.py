"""Shared test configuration: hypothesis profiles and data locations.

Hypothesis profiles: ``dev`` (fast, random) and ``ci`` (derandomised, more examples). Select with
``HYPOTHESIS_PROFILE=dev|ci``; the default is ``ci`` when the ``CI`` variable is set, else ``dev``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "dev", max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large]
)
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# One torch thread: the suite's models are tiny, and on a shared 2-core machine extra threads spin-wait (measured
# up to ~50x slower with 2 threads under load). BS_REF_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("BS_REF_TEST_THREADS", "1")))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (tests marked 'gpu' run only where torch.cuda.is_available())")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def tofu_dir() -> Path:
    """The local copy of locuslab/TOFU named by BS_REF_TOFU_DIR (skip when unset)."""
    value = os.environ.get("BS_REF_TOFU_DIR")
    if not value:
        pytest.skip("BS_REF_TOFU_DIR is not set: point it at a local directory of the TOFU JSON files")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"BS_REF_TOFU_DIR={value} is not a directory")
    return path


@pytest.fixture(scope="session")
def tofu_logs_dir() -> Path:
    """The locuslab/tofu aggregated evaluation logs named by BS_REF_TOFU_LOGS (skip when unset)."""
    value = os.environ.get("BS_REF_TOFU_LOGS")
    if not value:
        pytest.skip("BS_REF_TOFU_LOGS is not set: point it at the directory of locuslab/tofu eval logs")
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"BS_REF_TOFU_LOGS={value} is not a directory")
    return path
