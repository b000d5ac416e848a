"""experiments/tofu.py and bs_ref.experiment: the TOFU protocol end to end, resume, real data, bad input.

- the smoke preset end to end: every method, every output file, every number in its range;
- resume: a rerun keeps finished results, adds new methods, recovers from an interruption, and refuses to mix
  settings without --overwrite;
- the real-TOFU path on the local copy (BS_REF_TOFU_DIR) with a tiny model trained here on one author;
- bad input: one ValueError naming the input;
- matched forgetting, summaries and atomic writes on synthetic curves (hypothesis).
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bs_ref import experiment as ex

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "tofu.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _load_script():
    spec = importlib.util.spec_from_file_location("tofu_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


tofu = _load_script()


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory) -> Path:
    """One model cache for the whole file: the smoke pair is trained once (or reused from
    ``$BS_REF_TEST_MODEL_CACHE`` when set, to skip the training while developing)."""
    if os.environ.get("BS_REF_TEST_MODEL_CACHE"):
        return Path(os.environ["BS_REF_TEST_MODEL_CACHE"])
    return tmp_path_factory.mktemp("model_cache")


@pytest.fixture(scope="session")
def smoke_run(tmp_path_factory, model_cache):
    out = tmp_path_factory.mktemp("smoke") / "run"
    argv = ["--preset", "smoke", "--out", str(out), "--cache-dir", str(model_cache), "--progress", "false"]
    report = tofu.main(argv)
    return out, report, argv


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def _float(value: str) -> float:
    return float(value) if value not in ("", None) else float("nan")


# ------------------------------------------------------------------------------------------------------------
# Smoke preset end to end
# ------------------------------------------------------------------------------------------------------------


def test_smoke_writes_every_output(smoke_run):
    out, report, _ = smoke_run
    for name in ("config.json", "summary.csv", "matched.csv", "table.md", "start.json"):
        assert (out / name).is_file(), name
    for name in ("mem_util_agg.png", "squeezing_trace.png", "tradeoff.png"):
        path = out / "plots" / name
        assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC, name
    for method in tofu.DEFAULT_METHODS:
        seed_dir = "shared" if method in tofu.REFERENCE_METHODS else "seed0"
        directory = out / "methods" / method / seed_dir
        assert (directory / "result.json").is_file(), method
        if method != "retrain":
            evaluation = json.loads((directory / "eval.json").read_text())
            assert set(evaluation["splits"]) == set(tofu.SPLIT_KINDS)
            assert all(evaluation["splits"][k] for k in tofu.SPLIT_KINDS)
        if method not in tofu.REFERENCE_METHODS:
            log = (directory / "train_log.jsonl").read_text().splitlines()
            assert json.loads(log[0])["event"] == "start" and json.loads(log[-1])["event"] == "end"
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"


def test_smoke_summary_values_in_range(smoke_run):
    out, _, _ = smoke_run
    rows = _read_csv(out / "summary.csv")
    required = "method,forget_quality,log10_forget_quality,model_utility,mem,util,agg,fact_leak".split(",")
    assert set(required) <= set(rows[0])
    assert [r["method"] for r in rows] == list(tofu.DEFAULT_METHODS)
    for row in rows:
        fq, log_fq = _float(row["forget_quality"]), _float(row["log10_forget_quality"])
        assert 0 < fq <= 1 and log_fq <= 0 and math.isclose(log_fq, math.log10(fq), rel_tol=1e-4, abs_tol=1e-6)
        for column in ("model_utility", "mem", "util", "agg", "fact_leak", "forget_rougeL"):
            assert 0 <= _float(row[column]) <= 1, (row["method"], column)
    by_method = {r["method"]: r for r in rows}
    assert _float(by_method["retrain"]["forget_quality"]) == 1.0  # the retain model against itself
    # The original model was trained on the forget facts and the retain twin never saw them.
    assert _float(by_method["original"]["fact_leak"]) > _float(by_method["retrain"]["fact_leak"])


def test_smoke_curves_and_config(smoke_run):
    out, report, argv = smoke_run
    config = json.loads((out / "config.json").read_text())
    for key in ("torch", "transformers", "bs_ref"):
        assert config["versions"][key]
    conventions = config["conventions"]
    assert conventions["template"] == "plain" and conventions["metric_convention"] == "tofu"
    assert conventions["bs_s_regime"] == "off_policy"
    assert config["seeds"] == [0] and config["preset"] == "smoke"
    start = json.loads((out / "start.json").read_text())["point"]
    for method in ("ga", "bs_t", "bs_s", "ga_scaled"):
        result = json.loads((out / "methods" / method / "seed0" / "result.json").read_text())
        steps = [p["step"] for p in result["curve"]]
        assert steps[0] == 0 and steps == sorted(set(steps)) and len(steps) >= 2
        assert result["curve"][0] == start  # every curve starts at the original model
        assert result["config"]["lr"] == config["identity"]["lr"]  # equal budgets
        for point in result["curve"]:
            assert point["target_logprob"] <= 0
            assert all(point[f"band_{b}_logprob"] is None or point[f"band_{b}_logprob"] <= 0 for b in ex.BANDS)
    table = (out / "table.md").read_text()
    assert "python experiments/tofu.py " + " ".join(argv) in table
    assert "| bs_t |" in table and "At matched forgetting" in table
    assert report["table"] == table


# ------------------------------------------------------------------------------------------------------------
# Resume and overwrite
# ------------------------------------------------------------------------------------------------------------


def _mtimes(out: Path) -> dict[str, int]:
    return {str(p.relative_to(out)): p.stat().st_mtime_ns for p in (out / "methods").rglob("*.json")}


def test_resume_adds_only_new_methods(smoke_run, tmp_path, model_cache):
    source, _, argv = smoke_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    before = _mtimes(out)
    argv = [a if a != str(source) else str(out) for a in argv]
    tofu.main(argv + ["--methods", *tofu.DEFAULT_METHODS, "bs_t:lam=0.6"])
    after = _mtimes(out)
    assert {k: after[k] for k in before} == before  # finished results untouched
    new = {k for k in after if k not in before}
    assert new == {f"methods/bs_t__lam-0.6/seed0/{n}" for n in ("result.json", "eval.json")}
    rows = _read_csv(out / "summary.csv")
    assert "bs_t:lam=0.6" in [r["method"] for r in rows]
    tofu.main(argv + ["--methods", *tofu.DEFAULT_METHODS, "bs_t:lam=0.6"])  # again: nothing is recomputed
    assert _mtimes(out) == after


def test_interrupted_run_resumes_and_overwrite_is_explicit(tmp_path, model_cache, monkeypatch):
    out = tmp_path / "run"
    argv = ["--preset", "smoke", "--out", str(out), "--cache-dir", str(model_cache), "--progress", "false",
            "--methods", "original", "ga", "ga_scaled", "--epochs", "1"]  # fmt: skip
    real_run_method, calls = tofu.run_method, []

    def interrupted(*args, **kwargs):
        calls.append(args[6])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run dies inside the second method
        return real_run_method(*args, **kwargs)

    monkeypatch.setattr(tofu, "run_method", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tofu.main(argv)
    assert (out / "methods/ga/seed0/result.json").is_file()
    assert not (out / "methods/ga_scaled/seed0/result.json").exists()
    finished = _mtimes(out)

    monkeypatch.setattr(tofu, "run_method", real_run_method)
    tofu.main(argv)
    assert (out / "methods/ga_scaled/seed0/result.json").is_file()
    assert {k: v for k, v in _mtimes(out).items() if k in finished} == finished

    with pytest.raises(ValueError, match="--overwrite"):
        tofu.main(argv + ["--lr", "1e-3"])  # other settings, same --out
    ga = out / "methods/ga/seed0/result.json"
    old = json.loads(ga.read_text())
    tofu.main(argv + ["--lr", "1e-3", "--overwrite", "--methods", "ga"])
    new = json.loads(ga.read_text())
    assert new["config"]["lr"] == 1e-3 and old["config"]["lr"] != 1e-3
    assert not (out / "methods/ga_scaled").exists()  # --overwrite replaced the old results


# ------------------------------------------------------------------------------------------------------------
# Real TOFU data (local copy), with a tiny model trained here
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tofu_models(tofu_dir, tmp_path_factory):
    """A tiny Llama trained for a few seconds on the first forget author + first retain author, and its retain
    twin trained on the retain author only (quality is irrelevant: the test checks the plumbing)."""
    import torch

    from bs_ref.data.tofu import load_tofu
    from bs_ref.models import TinyLlamaConfig, build_tiny_llama, train_causal_lm, train_tokenizer

    torch.manual_seed(0)
    forget = load_tofu(tofu_dir, "forget10")[:20]
    retain = load_tofu(tofu_dir, "retain90")[:20]
    texts = [r["question"] + " " + r["answer"] for r in forget + retain]
    for name in ("forget10_perturbed", "retain_perturbed", "real_authors_perturbed", "world_facts_perturbed"):
        texts += [r["answer"] + " " + " ".join(r["perturbed_answer"]) for r in load_tofu(tofu_dir, name)[:6]]
    tokenizer = train_tokenizer(texts, vocab_size=400)
    cfg = TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, vocab_size=400)
    root = tmp_path_factory.mktemp("tiny_tofu")
    for role, pairs in (("original", forget + retain), ("retain", retain)):
        model = build_tiny_llama(len(tokenizer), cfg, tokenizer, seed=0)
        train_causal_lm(model, tokenizer, [(r["question"], r["answer"]) for r in pairs], 2, 3e-3, 8, progress=False)
        model.save_pretrained(root / role)
        tokenizer.save_pretrained(root / role)
    return root


def test_real_tofu_path(tofu_dir, tiny_tofu_models, tmp_path, model_cache):
    out = tmp_path / "real"
    common = ["--preset", "smoke", "--data", str(tofu_dir), "--max-authors", "1", "--limit", "5", "--progress", "false",
              "--cache-dir", str(model_cache), "--max-new-tokens", "12"]  # fmt: skip
    argv = common + ["--out", str(out), "--model", str(tiny_tofu_models / "original"),
                     "--retain-model", str(tiny_tofu_models / "retain"),
                     "--methods", "original", "retrain", "ga", "bs_t", "--epochs", "1"]  # fmt: skip
    tofu.main(argv)
    rows = {r["method"]: r for r in _read_csv(out / "summary.csv")}
    assert set(rows) == {"original", "retrain", "ga", "bs_t"}
    for row in rows.values():
        assert 0 < _float(row["forget_quality"]) <= 1 and 0 <= _float(row["model_utility"]) <= 1
        assert row["fact_leak"] == ""  # TOFU has no annotated facts
    config = json.loads((out / "config.json").read_text())
    assert config["data"]["n_forget_train"] == 20 and config["data"]["n_eval"]["forget"] == 5
    assert config["data"]["has_facts"] is False

    # The project's own per-item output of the retain model serves as --retain-logs: same FQ for the original.
    logs_out = tmp_path / "real_logs"
    tofu.main(common + ["--out", str(logs_out), "--model", str(tiny_tofu_models / "original"), "--retain-logs",
                        str(out / "methods/retrain/shared/eval.json"), "--methods", "original"])  # fmt: skip
    again = _read_csv(logs_out / "summary.csv")[0]
    assert _float(again["forget_quality"]) == pytest.approx(_float(rows["original"]["forget_quality"]))

    # No retain model at all: refused, unless explicitly allowed, and then FQ is skipped with a stated reason.
    no_retain = common + ["--out", str(tmp_path / "no_retain"), "--model", str(tiny_tofu_models / "original"),
                          "--methods", "original"]  # fmt: skip
    with pytest.raises(ValueError, match="--retain-model"):
        tofu.main(no_retain)
    tofu.main(no_retain + ["--allow-no-retain"])
    assert _read_csv(tmp_path / "no_retain" / "summary.csv")[0]["forget_quality"] == ""
    assert "forget quality skipped" in (tmp_path / "no_retain" / "table.md").read_text()


def test_real_tofu_locuslab_retain_log(tofu_dir, tofu_logs_dir, tiny_tofu_models, tmp_path, model_cache):
    out = tmp_path / "locuslab"
    tofu.main(["--preset", "smoke", "--data", str(tofu_dir), "--max-authors", "1", "--limit", "5", "--progress",
               "false", "--cache-dir", str(model_cache), "--max-new-tokens", "8", "--out", str(out), "--model",
               str(tiny_tofu_models / "original"), "--retain-logs",
               str(tofu_logs_dir / "llama2-7b_retain90_wd0.01.json"), "--methods", "original"])  # fmt: skip
    row = _read_csv(out / "summary.csv")[0]
    assert 0 < _float(row["forget_quality"]) <= 1


# ------------------------------------------------------------------------------------------------------------
# Bad input: one clear ValueError, before anything is trained
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory) -> Path:
    from bs_ref.data.synthetic import SyntheticConfig, write_benchmark

    return write_benchmark(SyntheticConfig.smoke(), tmp_path_factory.mktemp("synthetic_data") / "data")


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--methods", "original", "gradient_magic"], "unknown method 'gradient_magic'"),
        (["--methods", "bs_t:warp=2"], "bad hyper-parameter"),
        (["--methods", "bs_t:lam=2"], "lam"),
        (["--forget", "forget50"], "forget50"),
        (["--seeds"], None),  # argparse: needs at least one value
        (["--data", "synthetic", "--model", "some/model"], "need real data"),
        (["--convention", "median"], "median"),
        (["--preset", "huge"], "preset"),
    ],
)
def test_bad_arguments(tmp_path, extra, message):
    argv = ["--out", str(tmp_path / "o"), *extra]
    if message is None:
        with pytest.raises(SystemExit):
            tofu.main(argv)
        return
    with pytest.raises(ValueError, match=message):
        tofu.main(argv)
    assert not (tmp_path / "o").exists()  # nothing was written


def test_model_path_that_does_not_exist(tmp_path, synthetic_dir):
    with pytest.raises(ValueError, match="does not exist"):
        tofu.main(["--data", str(synthetic_dir), "--model", str(tmp_path / "nope"), "--allow-no-retain",
                   "--out", str(tmp_path / "o")])  # fmt: skip
    with pytest.raises(ValueError, match="does not exist"):
        tofu.main(["--data", str(synthetic_dir), "--model", str(tmp_path), "--retain-model", "./missing/ckpt",
                   "--out", str(tmp_path / "o")])  # fmt: skip


def test_missing_split(tmp_path, synthetic_dir):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    (data / "world_facts_perturbed.json").unlink()
    with pytest.raises(ValueError, match="world_facts_perturbed"):
        tofu.main(["--data", str(data), "--model", str(tmp_path), "--allow-no-retain", "--out", str(tmp_path / "o"),
                   "--methods", "original", "ga"])  # fmt: skip


def test_forget_split_larger_than_the_data(tmp_path, synthetic_dir):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    full = [json.loads(line) for line in (data / "full.json").read_text().splitlines() if line.strip()]
    (data / "full.json").write_text("\n".join(json.dumps(r) for r in full[:3]) + "\n")
    with pytest.raises(ValueError, match="forget split forget10 has 4 items but the data has only 3"):
        tofu.main(["--data", str(data), "--model", str(tmp_path), "--allow-no-retain", "--out", str(tmp_path / "o"),
                   "--methods", "original", "ga"])  # fmt: skip
    with pytest.raises(ValueError, match="--max-authors 5 exceeds"):
        tofu.main(["--data", str(synthetic_dir), "--model", str(tmp_path), "--allow-no-retain", "--max-authors", "5",
                   "--out", str(tmp_path / "o"), "--methods", "ga"])  # fmt: skip


def test_cli_prints_one_line_error(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--methods", "nonsense", "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=120,
    )
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: unknown method 'nonsense'")
    assert "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------------------
# Method specs, presets
# ------------------------------------------------------------------------------------------------------------


def test_presets_and_method_specs():
    paper = tofu.parse_args(["--preset", "paper"])
    assert (paper.lr, paper.epochs, paper.batch_size * paper.grad_accum, paper.weight_decay, paper.warmup) == (
        1e-5, 10, 32, 0.01, 1.0)  # fmt: skip
    assert paper.bf16 and paper.template == "chat"
    assert tofu.parse_args(["--preset", "paper", "--lr", "3e-5"]).lr == 3e-5  # flags beat the preset
    args = tofu.parse_args(["--grid", "--methods", "bs_t", "ga_scaled"])
    names = [name for name, _, _ in tofu.resolve_methods(args)]
    assert names[:2] == ["bs_t", "ga_scaled"] and "bs_t:temperature=1" not in names
    assert {"bs_t:lam=0.6", "bs_t:temperature=4", "bs_t:lam=0.6,temperature=2", "ga_scaled:lam=0.6"} <= set(names)
    assert len(names) == len(set(names)) == 2 + 5 + 1  # τ×λ = 6 BS-T variants (one is bs_t), GA×(1−λ) at λ=0.6
    cfg = tofu.unlearn_config(args, "bs_t", {"temperature": 2.0, "lam": 0.6}, seed=3)
    assert (cfg.temperature, cfg.lam, cfg.seed, cfg.lr) == (2.0, 0.6, 3, args.lr)
    assert tofu.method_dirname("bs_t:lam=0.6,temperature=2") == "bs_t__lam-0.6_temperature-2"


# ------------------------------------------------------------------------------------------------------------
# bs_ref.experiment on synthetic curves
# ------------------------------------------------------------------------------------------------------------


def _curve(drops, utilities, leaks=None):
    leaks = leaks or [0.0] * len(drops)
    return [
        {"step": 5 * i, "target_logprob": -d, "model_utility": u, "fact_leak": f}
        for i, (d, u, f) in enumerate(zip(drops, utilities, leaks))
    ]


def test_matched_forgetting_reads_each_curve_at_the_common_level():
    curves = {
        "fast": _curve([0.0, 2.0, 4.0, 6.0], [0.9, 0.8, 0.7, 0.6]),
        "slow": _curve([0.0, 1.0, 2.0, 3.0], [0.9, 0.88, 0.86, 0.84]),
    }
    level, at = ex.matched_forgetting(curves, "target_drop", ["model_utility"])
    assert level == pytest.approx(0.9 * 3.0)  # 0.9 × the most forgetting both methods reach
    assert at["slow"]["model_utility"] == pytest.approx(0.846) and at["slow"]["step"] == pytest.approx(13.5)
    assert at["fast"]["model_utility"] == pytest.approx(0.765) and at["fast"]["step"] == pytest.approx(6.75)
    assert ex.common_level(curves, "target_drop", margin=1.0) == pytest.approx(3.0)


def test_matched_forgetting_on_fact_leak_and_nothing_forgotten():
    curves = {
        "a": _curve([0, 1, 2], [0.9, 0.8, 0.7], leaks=[1.0, 0.5, 0.25]),
        "b": _curve([0, 1, 2], [0.9, 0.85, 0.8], leaks=[1.0, 0.75, 0.5]),
    }
    level, at = ex.matched_forgetting(curves, "fact_unleaked", ["model_utility"])
    assert level == pytest.approx(0.45)  # both reach a leak rate of 0.5; matched at 0.9 × that forgetting
    assert at["a"]["model_utility"] == pytest.approx(0.81) and at["b"]["model_utility"] == pytest.approx(0.81)
    flat = {"a": _curve([0, 0, 0], [0.9, 0.9, 0.9]), "b": _curve([0, -1, -2], [0.9] * 3)}
    level, at = ex.matched_forgetting(flat, "target_drop", ["model_utility"])
    assert math.isnan(level) and at == {"a": None, "b": None}


def test_one_weak_method_does_not_set_the_matched_level():
    curves = {
        "weak": _curve([0.0, 0.02, 0.04], [0.9, 0.9, 0.9]),
        "a": _curve([0.0, 1.0, 2.0], [0.9, 0.8, 0.7]),
        "b": _curve([0.0, 2.0, 3.0], [0.9, 0.85, 0.8]),
        "c": _curve([0.0, 3.0, 5.0], [0.9, 0.6, 0.5]),
    }
    level, at = ex.matched_forgetting(curves, "target_drop", ["model_utility"])
    assert level == pytest.approx(0.9 * 2.0)  # lower median of the maxima 0.04, 2, 3, 5: half the methods reach it
    assert at["weak"] is None  # not reached: no value is made up for it
    assert at["a"]["model_utility"] == pytest.approx(0.72) and at["b"]["model_utility"] == pytest.approx(0.855)
    level_min, at_min = ex.matched_forgetting(curves, "target_drop", ["model_utility"], policy="min")
    assert level_min == pytest.approx(0.036) and all(v is not None for v in at_min.values())
    with pytest.raises(ValueError, match="policy"):
        ex.common_level(curves, "target_drop", policy="max")


def test_matched_table_reports_methods_that_do_not_reach_the_level():
    tofu = _load_script()
    results = [
        {"method": m, "seed": s, "curve": _curve(d, [0.9, 0.8, 0.7], leaks=[1.0, 0.6, 0.4])}
        for s in (0, 1)
        for m, d in (("weak", [0.0, 0.01, 0.03]), ("a", [0.0, 1.0, 2.0]), ("b", [0.0, 2.0, 4.0]))
    ]
    for r in results:
        for p in r["curve"]:
            p.update({f"band_{b}_logprob": -1.0 for b in ex.BANDS}, mem=0.1, log10_forget_quality=-3.0)
    rows, levels = tofu.matched_rows(results, [0, 1])
    assert levels["target_drop"] == pytest.approx(1.8)
    weak = [r for r in rows if r["measure"] == "target_drop" and r["method"] == "weak"]
    assert len(weak) == 2 and not any(r["reached"] for r in weak) and weak[0]["max_forgetting"] == pytest.approx(0.03)
    table = tofu.format_matched([r for r in rows if r["measure"] == "target_drop"], "target_drop")
    assert "| weak | not reached (best: 0.030 nats) |" in table
    assert "| a | 2/2 seeds | 9.000 ± 0.000 | 0.720 ± 0.000 |" in table
    given = tofu.matched_rows(results, [0, 1], {"target_drop": 1.0, "fact_unleaked": 0.5})[1]
    assert given == {"target_drop": 1.0, "fact_unleaked": 0.5}


@given(
    st.lists(st.floats(0, 5), min_size=2, max_size=11),
    st.lists(st.floats(0, 1), min_size=12, max_size=12),
    st.floats(0.01, 1.0),
)
def test_interpolation_lies_between_the_crossing_evaluations(increments, utilities, fraction):
    drops = np.concatenate([[0.0], np.cumsum(increments)])
    curve = _curve(list(drops), utilities[: len(drops)])
    if drops[-1] <= 0:
        return
    level = fraction * drops[-1]
    point = ex.interpolate_at_level(curve, "target_drop", level, ["model_utility"])
    i = int(np.argmax(drops >= level))
    lo, hi = curve[max(i - 1, 0)], curve[i]
    assert lo["step"] <= point["step"] <= hi["step"]
    low_u, high_u = sorted((lo["model_utility"], hi["model_utility"]))
    assert low_u - 1e-9 <= point["model_utility"] <= high_u + 1e-9
    assert ex.interpolate_at_level(curve, "target_drop", drops[-1] + 1.0, ["model_utility"]) is None


def test_summary_rows_mean_std_and_table():
    results = [
        {"method": "ga", "seed": s, "metrics": {"forget_quality": fq, "model_utility": 0.5, "fact_leak": None}}
        for s, fq in ((0, 0.1), (1, 0.3), (2, 0.2))
    ] + [{"method": "original", "seed": None, "metrics": {"forget_quality": 1e-5, "model_utility": 0.6}}]
    rows = ex.summary_rows(results)
    mean = next(r for r in rows if r["method"] == "ga" and r["seed"] == "mean")
    std = next(r for r in rows if r["method"] == "ga" and r["seed"] == "std")
    assert mean["forget_quality"] == pytest.approx(0.2) and std["forget_quality"] == pytest.approx(0.1)
    assert mean["fact_leak"] == ""  # no values: empty, not zero
    table = ex.format_table(rows)
    assert "| ga | 0.200 ± 0.100 |" in table and "fact leak" not in table
    assert "1.00e-05" in table


def test_leak_while_forgotten_flags_only_methods_the_standard_metrics_call_forgotten():
    def result(method, leak, rouge, tr, seed=0):
        metrics = {"fact_leak": leak, "forget_rougeL": rouge, "forget_truth_ratio": tr, "forget_quality": 0.1}
        return {"method": method, "seed": seed, "metrics": metrics}

    results = [
        result("original", 1.0, 0.95, 0.30, seed=None),
        result("retrain", 0.0, 0.40, 0.60, seed=None),
        result("ga", 0.5, 0.38, 0.62),  # both metrics at the retain level, the fact still leaks
        result("npo", 0.5, 0.90, 0.60),  # ROUGE-L says remembered, truth ratio says forgotten
        result("wga", 0.0, 0.30, 0.70),  # forgotten and no leak: not flagged
        result("simnpo", 0.9, 0.90, 0.30),  # leaks, and the standard metrics see it: not flagged
    ]
    flagged = tofu.leak_while_forgotten(ex.summary_rows(results))
    assert flagged == [
        "ga: fact leak 0.50 (retain model 0.00) while ROUGE-L and truth ratio are at the retain model's level",
        "npo: fact leak 0.50 (retain model 0.00) while truth ratio is at the retain model's level",
    ]
    assert tofu.leak_while_forgotten(ex.summary_rows(results[2:])) == []  # no retain model: nothing to compare


def test_atomic_writes_and_run_dir_identity(tmp_path):
    path = ex.write_json(tmp_path / "a" / "x.json", {"v": float("nan"), "w": np.float32(1.5)})
    assert json.loads(path.read_text()) == {"v": None, "w": 1.5}
    assert [p.name for p in path.parent.iterdir()] == ["x.json"]
    store = ex.RunDir(tmp_path / "run", {"lr": 1.0})
    ex.write_json(store.path("config.json"), {"identity": store.identity})
    store.save_result("ga", 0, {"metrics": {}}, {"splits": {}})
    assert store.is_finished("ga", 0) and (store.method_dir("ga", 0) / "eval.json").is_file()
    ex.RunDir(tmp_path / "run", {"lr": 1.0})  # same settings: resume
    with pytest.raises(ValueError, match="differing: lr.*--overwrite"):
        ex.RunDir(tmp_path / "run", {"lr": 2.0})
    ex.RunDir(tmp_path / "run", {"lr": 2.0}, overwrite=True)
    assert not store.is_finished("ga", 0)
