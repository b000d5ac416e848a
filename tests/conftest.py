"""Shared test configuration: hypothesis profiles and data locations.

Real TOFU data: ``tofu_dir`` is the full copy named by ``BS_REF_TOFU_DIR`` when set, else the committed excerpt
``tests/fixtures/tofu_excerpt`` (3 authors); ``tofu_full_dir`` skips unless the full copy is set;
``tofu_logs_dir`` (locuslab/tofu evaluation logs, ``BS_REF_TOFU_LOGS``) skips when unset.

Hypothesis profiles: ``dev`` (fast, random), ``ci`` (derandomised, more examples) and ``explore`` (random, many
examples). Select with ``HYPOTHESIS_PROFILE=dev|ci|explore``; the default is ``ci`` when the ``CI`` variable is
set, else ``dev``.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from _tiny import train_tiny
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
# ``explore``: random and 20x ``ci``'s examples, to search for counterexamples the fixed profiles do not draw (run it
# before trusting a tolerance: HYPOTHESIS_PROFILE=explore pytest tests/test_claims_toy.py).
settings.register_profile(
    "explore",
    max_examples=1200,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))

# One torch thread: the suite's models are tiny, and on a shared 2-core machine extra threads spin-wait (measured
# up to ~50x slower with 2 threads under load). BS_REF_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("BS_REF_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny():
    """(state_dict, tokenizer, config): the tiny Llama of tests/_tiny.py, trained once for the session (~1 s)."""
    return train_tiny()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip_gpu = pytest.mark.skip(reason="needs CUDA (tests marked 'gpu' run only where torch.cuda.is_available())")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip_gpu)


# A committed excerpt of real TOFU (3 authors; tests/fixtures/tofu_excerpt/README.md): the real-data tests run on it
# when BS_REF_TOFU_DIR does not name the full copy.
TOFU_EXCERPT_DIR = Path(__file__).resolve().parent / "fixtures" / "tofu_excerpt"


def tofu_full_copy() -> Path | None:
    """The full local copy of locuslab/TOFU named by BS_REF_TOFU_DIR, or None when the variable is unset."""
    value = os.environ.get("BS_REF_TOFU_DIR")
    if not value:
        return None
    path = Path(value)
    if not path.is_dir():
        pytest.fail(
            f"BS_REF_TOFU_DIR={value} is not a directory: point it at the TOFU JSON files, or unset it to run the "
            "real-data tests on the committed excerpt tests/fixtures/tofu_excerpt",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def tofu_dir() -> Path:
    """Real TOFU: the full copy named by BS_REF_TOFU_DIR when set, else the committed excerpt (3 authors).

    For tests that hold on any real TOFU directory (schema, structure, plumbing); tests of the full copy's
    sizes use ``tofu_full_dir``."""
    return tofu_full_copy() or TOFU_EXCERPT_DIR


@pytest.fixture(scope="session")
def tofu_is_excerpt(tofu_dir) -> bool:
    """Whether ``tofu_dir`` is the committed excerpt (BS_REF_TOFU_DIR unset)."""
    return tofu_dir == TOFU_EXCERPT_DIR


@pytest.fixture(scope="session")
def tofu_full_dir() -> Path:
    """The full local copy of locuslab/TOFU named by BS_REF_TOFU_DIR (skip when unset)."""
    path = tofu_full_copy()
    if path is None:
        pytest.skip(
            "needs the full TOFU copy (the committed excerpt has 3 authors): set BS_REF_TOFU_DIR to a local "
            "directory of the TOFU JSON files"
        )
    return path


@pytest.fixture(scope="session")
def tofu_logs_dir() -> Path:
    """The locuslab/tofu aggregated evaluation logs named by BS_REF_TOFU_LOGS (skip when unset)."""
    value = os.environ.get("BS_REF_TOFU_LOGS")
    if not value:
        pytest.skip(
            "needs the locuslab/tofu evaluation logs (golden values; no excerpt is committed): set BS_REF_TOFU_LOGS "
            "to their directory"
        )
    path = Path(value)
    if not path.is_dir():
        pytest.skip(f"BS_REF_TOFU_LOGS={value} is not a directory")
    return path
