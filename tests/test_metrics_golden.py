"""Golden values of docs/theory.md §6 from locuslab/tofu's own evaluation logs (Llama-2-7b, ds_size 300).

The logs (``BS_REF_TOFU_LOGS``) hold per-item losses, truth ratios, ROUGE and generations of the model
finetuned on all of TOFU ("full") and of its retain90 twin. Every number below is recomputed from the
per-item fields by bs_ref.metrics; the expected constants are the published ones. The golden values need the
logs themselves (no excerpt of them is committed): those tests skip, saying so, when BS_REF_TOFU_LOGS is unset.
"""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bs_ref.metrics import scores as tofu

METRICS_CLI = Path(__file__).resolve().parent.parent / "experiments" / "metrics_cli.py"


def cli_main(argv: list[str]) -> int:
    """``main`` of experiments/metrics_cli.py (the metrics command line), called in-process."""
    spec = importlib.util.spec_from_file_location("metrics_cli", METRICS_CLI)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv)


FULL = "llama2-7b_full_wd0.01.json"
RETAIN = "llama2-7b_retain90_wd0.01.json"


@pytest.fixture(scope="module")
def logs(tofu_logs_dir):
    return tofu.load_locuslab_log(tofu_logs_dir / FULL), tofu.load_locuslab_log(tofu_logs_dir / RETAIN)


def test_forget_quality_full_vs_retain90(logs):
    full, retain = logs
    out = tofu.aggregate(full, retain["forget"], convention="tofu")
    assert out["forget_quality"] == pytest.approx(1.834e-21, rel=1e-3)
    assert out["log10_forget_quality"] == pytest.approx(np.log10(1.834e-21), abs=1e-3)
    assert out["n"] == 300 and out["n_retain_model"] == 300
    # Same p-value when R is inverted (min(R, 1/R) conventions) or logged: KS sees only the ordering.
    r_full = tofu.item_ratios(full["forget"], "tofu")
    r_retain = tofu.item_ratios(retain["forget"], "tofu")
    for transform in (lambda r: 1.0 / r, np.log):
        fq = tofu.forget_quality(transform(r_full), transform(r_retain))
        assert fq["forget_quality"] == pytest.approx(out["forget_quality"], rel=1e-9)


def test_model_utility_geometric_and_arithmetic(logs):
    full, _ = logs
    assert tofu.aggregate(full, convention="tofu")["model_utility"] == pytest.approx(0.6227, abs=5e-5)
    assert tofu.aggregate(full, convention="arithmetic")["model_utility"] == pytest.approx(0.5859, abs=5e-5)
    # The logs hold 300 items per split, so the legacy convention (first 300) gives the same number.
    assert tofu.aggregate(full, convention="tofu-legacy")["model_utility"] == pytest.approx(0.6227, abs=5e-5)


def test_logged_truth_ratio_is_our_geometric_ratio(logs, tofu_logs_dir):
    """locuslab's per-item ``truth_ratio`` field equals R = geomean P(perturbed) / P(paraphrased)."""
    raw = json.loads((tofu_logs_dir / FULL).read_text())
    full, _ = logs
    for key, kind in tofu.LOCUSLAB_FILES.items():
        logged = np.array([raw[key]["truth_ratio"][str(it["index"])] for it in full[kind]])
        ours = tofu.item_ratios(full[kind], "tofu")
        np.testing.assert_allclose(ours, logged, rtol=1e-5)


def test_rouge_l_recall_recomputed_from_logged_generations(tofu_logs_dir):
    """Every logged rougeL_recall (2 logs x 4 splits = 1634 items) is reproduced exactly."""
    n_items, worst = 0, 0.0
    for name in (FULL, RETAIN):
        raw = json.loads((tofu_logs_dir / name).read_text())
        for key in tofu.LOCUSLAB_FILES:
            generated = raw[key]["generated_text"]  # index -> [prompt, generation, ground truth]
            indices = sorted(generated, key=int)
            ours = tofu.rouge_l_recall([generated[i][1] for i in indices], [generated[i][2] for i in indices])
            logged = np.array([raw[key]["rougeL_recall"][i] for i in indices])
            worst = max(worst, float(np.abs(ours - logged).max()))
            n_items += len(indices)
    assert n_items == 1634
    assert worst == 0.0


def test_own_format_round_trip(logs, tmp_path):
    full, retain = logs
    path = tofu.write_eval_log(tmp_path / "full.json", full, convention="tofu", model="llama2-7b full")
    again = tofu.read_eval_log(path)
    for convention in tofu.CONVENTIONS:
        assert tofu.aggregate(again, retain["forget"], convention) == tofu.aggregate(full, retain["forget"], convention)


def test_cli_aggregate_prints_the_golden_json(tofu_logs_dir):
    cmd = [sys.executable, str(METRICS_CLI), "aggregate", "--log", str(tofu_logs_dir / FULL)]
    cmd += ["--retain-log", str(tofu_logs_dir / RETAIN), "--convention", "tofu"]
    out = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    assert out["forget_quality"] == pytest.approx(1.834e-21, rel=1e-3)
    assert out["model_utility"] == pytest.approx(0.6227, abs=5e-5)
    assert out["convention"] == "tofu" and out["n"] == 300
    components = [f"{s}_{m}" for s in tofu.UTILITY_SPLITS for m in tofu.UTILITY_METRICS]
    assert all(0.0 <= out[c] <= 1.0 for c in components)
    assert out["real_authors_rouge"] == pytest.approx(0.933, abs=1e-9)


def test_cli_rejects_bad_input(tmp_path, capsys):
    """Needs no logs: a file that is no log, and a missing file."""
    bad = tmp_path / "bad.json"
    bad.write_text('{"something": 1}')
    assert cli_main(["aggregate", "--log", str(bad)]) == 2
    assert "neither" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # a path problem is a usage error, found before any work
        cli_main(["aggregate", "--log", str(tmp_path / "missing.json")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "--log" in err and "does not exist" in err and "Traceback" not in err


def test_cli_rejects_a_retain_log_without_forget_split(tmp_path, tofu_logs_dir, capsys):
    only_retain = tofu.write_eval_log(
        tmp_path / "r.json", {"retain": tofu.load_locuslab_log(tofu_logs_dir / FULL)["retain"]}
    )
    assert cli_main(["aggregate", "--log", str(tofu_logs_dir / FULL), "--retain-log", str(only_retain)]) == 2
    assert "no forget split" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown convention"):
        tofu.aggregate(tofu.load_locuslab_log(tofu_logs_dir / FULL), convention="geometric")
