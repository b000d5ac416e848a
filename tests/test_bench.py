"""The benchmark script keeps working (tiny sizes); its figures are measured by running it, not asserted here."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent


def test_bench_losses_prints_ratios_and_the_dense_formulation_is_bs_t():
    sys.path.insert(0, str(ROOT / "experiments"))
    try:
        import bench
    finally:
        sys.path.pop(0)
    logits, labels = bench.make_inputs(2, 16, 64, "cpu", torch.float64)
    # the dense formulation the benchmark compares against is the same objective
    assert torch.allclose(bench.dense_bs_t_loss(logits, labels), bench.VARIANTS["bs_t"](logits, labels), atol=1e-10)
    out = subprocess.run(
        [sys.executable, str(ROOT / "experiments" / "bench.py"), "losses", "--quick", "--vocab", "2048", "--seq", "32"],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    ).stdout
    ratio = re.search(r"V=2048 bs_t/ga time ratio: ([0-9.]+)", out)
    assert ratio and float(ratio.group(1)) > 0
    assert re.search(r"V=2048 dense extra memory over ga MiB: [0-9.]+", out)
