"""experiments/tofu.py end to end: the protocol, resume, Ctrl-C, divergence, collapse, real data, bad input.

- the smoke preset end to end: every method, every output file, every number in its range, the versions;
- resume: a rerun keeps finished results, adds new methods, recovers from Ctrl-C (exit 130, one line saying what
  is kept), and refuses to mix settings without --overwrite;
- a NaN run stops with one line naming the method, the seed and the fix, every other result kept; a collapsed
  model (huge learning rate) is a result, reported like any other;
- the real-TOFU path on the local copy (BS_REF_TOFU_DIR, else the committed excerpt) with a tiny model trained here;
- bad input: one ValueError naming every bad input, before anything is written;
- model-pair seeds: each pair trained and cached on its own, results under pair<p>/ (pair 0 keeps the old layout, so
  a run directory of an earlier version resumes), verdicts over (seed, pair seed) runs; one pair on real data;
- verdicts that survive a new machine: the smoke preset with 2 seeds x 2 pair seeds on the default CPU kernel path
  and on ATEN_CPU_CAPABILITY=avx2 (each training its own pairs) gives the same verdict wherever both intervals
  exclude zero (slow: two such runs take ~4 min on 2 busy cores).

The parts of the protocol have their own tests: tests/test_protocol_*.py.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bs_ref.metrics.leakage import BANDS
from bs_ref.protocol.stats import VERDICT_COLUMNS, VERDICTS
from bs_ref.protocol.store import REFERENCE_METHODS
from bs_ref.protocol.tables import SUMMARY_COLUMNS
from bs_ref.unlearn import NonFiniteLossError

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "tofu.py"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SPLIT_KINDS = ("forget", "retain", "real_authors", "world_facts")


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
    argv = ["--preset", "smoke", "--out", str(out), "--cache-dir", str(model_cache), "--no-progress"]
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
    for name in ("config.json", "summary.csv", "matched.csv", "verdict.csv", "table.md", "start.json"):
        assert (out / name).is_file(), name
    verdicts = (out / "verdict.csv").read_text().splitlines()
    assert verdicts[0] == ",".join(VERDICT_COLUMNS) and len(verdicts) > 1
    for name in ("mem_util_agg.png", "squeezing_trace.png", "tradeoff.png"):
        path = out / "plots" / name
        assert path.is_file() and path.read_bytes()[:8] == PNG_MAGIC, name
    for method in tofu.DEFAULT_METHODS:
        seed_dir = "shared" if method in REFERENCE_METHODS else "seed0"
        directory = out / "methods" / method / seed_dir
        assert (directory / "result.json").is_file(), method
        if method != "retrain":
            evaluation = json.loads((directory / "eval.json").read_text())
            assert set(evaluation["splits"]) == set(SPLIT_KINDS)
            assert all(evaluation["splits"][k] for k in SPLIT_KINDS)
        if method not in REFERENCE_METHODS:
            log = (directory / "train_log.jsonl").read_text().splitlines()
            assert json.loads(log[0])["event"] == "start" and json.loads(log[-1])["event"] == "end"
    assert not list(out.rglob("*.tmp")), "a temporary file was left behind"


def test_smoke_terminal_summary_fits_one_screen(smoke_run):
    """The main command ends with a summary of at most 25 lines (what ran, the primary contrasts with their
    intervals, the time by part, the path of table.md); the full tables go to table.md only."""
    out, report, _ = smoke_run
    summary = tofu.terminal_summary(report)
    lines = summary.splitlines()
    assert 5 <= len(lines) <= 25, summary
    assert str(out / "table.md") in summary and "bs_t − ga_scaled" in summary and "bs_s − npo" in summary
    assert "[" in summary and "at the end of training" in summary  # contrasts come with their intervals
    assert set(report["parts_s"]) >= {"models and references", "unlearning, evaluation and attacks"}
    timed = json.loads((out / "timing.json").read_text())  # the time by part, one summary line
    assert {"pair", "unlearning: bs_s", "beliefs (BS-S)", "evaluation: final", "report"} <= set(timed["by_part_s"])
    assert "Time (s): " in summary and "by part: timing.json" in summary
    assert summary.count("\n") < report["table"].count("\n") and "| A − B |" not in summary
    assert "print(terminal_summary(report))" in SCRIPT.read_text()  # what the command line prints


def test_smoke_summary_values_in_range(smoke_run):
    out, _, _ = smoke_run
    rows = _read_csv(out / "summary.csv")
    required = "method,forget_quality,log10_forget_quality,model_utility,mem,util,agg,fact_leak".split(",")
    assert set(required) <= set(rows[0])
    assert list(rows[0])[: len(SUMMARY_COLUMNS)] == list(SUMMARY_COLUMNS)  # earlier columns first, in order
    assert [r["method"] for r in rows] == list(tofu.DEFAULT_METHODS)
    for row in rows:  # every number with its interval; an item mean's (fact leak) holds the value
        for column in ("model_utility", "agg", "fact_leak", "log10_forget_quality"):
            assert _float(row[f"{column}_ci_low"]) <= _float(row[f"{column}_ci_high"]), (row["method"], column)
        leak = _float(row["fact_leak"])
        assert _float(row["fact_leak_ci_low"]) <= leak <= _float(row["fact_leak_ci_high"]), row["method"]
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
    for key in ("torch", "transformers", "tokenizers", "numpy", "scipy", "accelerate", "rouge_score", "bs_ref"):
        assert config["versions"][key], key
    assert config["versions"]["cpu_capability"] and "ATEN_CPU_CAPABILITY" in config["versions"]
    conventions = config["conventions"]
    assert conventions["template"] == "plain" and conventions["metric_convention"] == "tofu"
    assert conventions["bs_s_regime"] == "off_policy"
    assert config["seeds"] == [0] and config["preset"] == "smoke" and config["pair_seeds"] == [0]
    assert config["precision"] == config["identity"]["precision"] == "fp32" and "bf16" not in config["identity"]
    start = json.loads((out / "start.json").read_text())["point"]
    for method in ("ga", "bs_t", "bs_s", "ga_scaled"):
        result = json.loads((out / "methods" / method / "seed0" / "result.json").read_text())
        steps = [p["step"] for p in result["curve"]]
        assert steps[0] == 0 and steps == sorted(set(steps)) and len(steps) >= 2
        assert result["curve"][0] == start  # every curve starts at the original model
        assert result["config"]["lr"] == config["identity"]["lr"]  # equal budgets
        for point in result["curve"]:  # a band may be missing (no candidates on this kernel path) or empty (None)
            assert point["target_logprob"] <= 0
            assert all(point.get(f"band_{b}_logprob") is None or point[f"band_{b}_logprob"] <= 0 for b in BANDS)
            forget = point["items"]["forget"]  # the per-item values the intervals resample
            assert -sum(forget["nll_answer"]) / len(forget["nll_answer"]) == pytest.approx(point["target_logprob"])
            for band in BANDS:  # per-question band sums pool to the band's mean log-prob, as before
                if point.get(f"band_{band}_logprob") is not None:
                    pooled = sum(forget[f"band_{band}_sum"]) / sum(forget[f"band_{band}_count"])
                    assert pooled == pytest.approx(point[f"band_{band}_logprob"], rel=1e-9, abs=1e-12)
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
    # the new method's result and the attacks on its end model; no attack of a finished method is rerun
    assert new == {f"methods/bs_t__lam-0.6/seed0/{n}" for n in ("result.json", "eval.json", "attacks_end.json")}
    rows = _read_csv(out / "summary.csv")
    assert "bs_t:lam=0.6" in [r["method"] for r in rows]
    tofu.main(argv + ["--methods", *tofu.DEFAULT_METHODS, "bs_t:lam=0.6"])  # again: nothing is recomputed
    assert _mtimes(out) == after


def test_interrupted_run_resumes_and_overwrite_is_explicit(tmp_path, model_cache, monkeypatch, capsys):
    out = tmp_path / "run"
    argv = [
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--cache-dir",
        str(model_cache),
        "--no-progress",
        "--methods",
        "original",
        "ga",
        "ga_scaled",
        "--epochs",
        "1",
        "--attacks",
        "none",
    ]
    real_unlearn, calls = tofu.unlearn, []

    def interrupted(*args, **kwargs):
        calls.append(args[4].method.name)
        if len(calls) == 2:
            raise KeyboardInterrupt  # Ctrl-C inside the second method
        return real_unlearn(*args, **kwargs)

    monkeypatch.setattr(tofu, "unlearn", interrupted)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        tofu.main(argv)
    assert stopped.value.code == 130
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"interrupted: kept 2 finished result(s) in {out} (original, ga seed 0); the same command")
    assert last.endswith("python experiments/tofu.py " + " ".join(argv))
    assert (out / "methods/ga/seed0/result.json").is_file()
    assert not (out / "methods/ga_scaled/seed0/result.json").exists()
    finished = _mtimes(out)

    monkeypatch.setattr(tofu, "unlearn", real_unlearn)
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
    assert new["config"]["method"] == {"name": "ga", "gamma": 1.0}
    assert not (out / "methods/ga_scaled").exists()  # --overwrite replaced the old results


def test_pair_seeds_train_their_own_pair_and_resume_a_run_dir_of_an_earlier_version(smoke_run, tmp_path):
    source, _, argv = smoke_run
    out = tmp_path / "run"
    shutil.copytree(source, out)
    config_path = out / "config.json"
    config = json.loads(config_path.read_text())  # as an earlier version wrote it: bf16, no precision
    identity = {k: v for k, v in config["identity"].items() if k != "precision"} | {"bf16": False}
    config_path.write_text(json.dumps(config | {"identity": identity}))
    before = _mtimes(out)
    argv = [a if a != str(source) else str(out) for a in argv]
    methods = ["original", "retrain", "ga", "ga_scaled", "bs_t"]
    report = tofu.main(argv + ["--pair-seeds", "0", "1", "--methods", *methods, "--attacks", "none"])
    after = _mtimes(out)
    assert {k: after[k] for k in before} == before  # pair 0 is the old run directory, untouched
    new = {k for k in after if k not in before}
    expected = {
        f"methods/{m}/pair1/{'shared' if m in REFERENCE_METHODS else 'seed0'}/{f}"
        for m in methods
        for f in ("result.json", "eval.json")
    }
    assert new == expected and (out / "start_pair1.json").is_file()
    config = json.loads(config_path.read_text())
    assert config["pair_seeds"] == [0, 1] and config["identity"]["precision"] == "fp32"
    keys = {p: config["models_by_pair_seed"][str(p)]["pair"]["key"] for p in (0, 1)}
    assert keys[0] != keys[1] and config["models"]["pair"]["key"] == keys[0]
    assert config["models_by_pair_seed"]["1"]["pair"]["train_cfg"]["seed"] == 1
    rows = _read_csv(out / "summary.csv")
    ga = [r for r in rows if r["method"] == "ga"]
    assert [(r["seed"], r["pair_seed"], r["n_runs"]) for r in ga] == [
        ("0", "0", "1"),
        ("0", "1", "1"),
        ("mean", "", "2"),
        ("std", "", "2"),
    ]
    verdicts = _read_csv(out / "verdict.csv")
    end = {(r["comparison"], r["measure"]): r for r in verdicts if r["setting"] == "end"}
    assert end[("bs_t \u2212 ga_scaled", "fact_leak")]["n_seeds"] == "2"
    assert {r["verdict"] for r in verdicts} <= set(VERDICTS)
    assert report["table"].index("## Verdicts") < report["table"].index("## At the end of training")


def test_real_data_takes_one_model_pair(tmp_path, synthetic_dir):
    with pytest.raises(ValueError, match=r"--pair-seeds 0 1: a real-data run \(--model\) has one model pair"):
        tofu.main(
            [
                "--data",
                str(synthetic_dir),
                "--model",
                str(tmp_path),
                "--allow-no-retain",
                "--pair-seeds",
                "0",
                "1",
                "--out",
                str(tmp_path / "o"),
            ]
        )
    with pytest.raises(ValueError, match="--pair-seeds 2 2 must name distinct seeds"):
        tofu.main(["--pair-seeds", "2", "2", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


@pytest.mark.slow
def test_verdicts_agree_on_both_cpu_kernel_paths(tmp_path):
    """The issue "Verdicts that survive a new machine": the smoke preset with 2 unlearning seeds x 2 model-pair seeds
    on the machine's default kernel path and on ATEN_CPU_CAPABILITY=avx2, each training its own pairs (its own
    cache), the two runs at once. Floating point differs (the numbers move), but wherever both runs' intervals
    exclude zero the verdicts must agree."""
    outs, procs = {}, {}
    for name, capability in (("default", None), ("avx2", "avx2")):
        env = {k: v for k, v in os.environ.items() if k != "ATEN_CPU_CAPABILITY"} | {"PYTHONPATH": str(ROOT)}
        if capability:
            env["ATEN_CPU_CAPABILITY"] = capability
        outs[name] = tmp_path / name / "run"
        log = open(tmp_path / f"{name}.log", "w")  # noqa: SIM115 — closed below
        command = [
            sys.executable,
            str(SCRIPT),
            "--preset",
            "smoke",
            "--seeds",
            "0",
            "1",
            "--pair-seeds",
            "0",
            "1",
            "--no-progress",
            "--out",
            str(outs[name]),
            "--cache-dir",
            str(tmp_path / name),
            "--attacks",
            "none",
        ]
        procs[name] = (subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT), log)
    for name, (proc, log) in procs.items():
        code = proc.wait(timeout=1500)
        log.close()
        assert code == 0, (tmp_path / f"{name}.log").read_text()[-3000:]
    rows = {}
    for name, out in outs.items():
        text = (out / "verdict.csv").read_text()
        assert text.splitlines()[0] == ",".join(VERDICT_COLUMNS)
        parsed = _read_csv(out / "verdict.csv")
        for row in parsed:  # every column filled (the numbers are empty only for n/a)
            assert all(row[c] != "" for c in ("comparison", "measure", "setting", "n_items", "n_seeds", "verdict"))
            assert row["verdict"] in VERDICTS and (row["verdict"] == "n/a" or row["difference"] != "")
        # every (seed, pair seed) run is paired; the high band only where the pair's original model gave candidates
        assert {r["n_seeds"] for r in parsed if r["setting"] == "end" and r["measure"] != "high_band_drop"} == {"4"}
        rows[name] = {(r["comparison"], r["measure"], r["setting"].split("@")[0]): r for r in parsed}
    capability = json.loads((outs["avx2"] / "config.json").read_text())["versions"]["cpu_capability"]
    assert capability == "AVX2"
    common = set(rows["default"]) & set(rows["avx2"])
    assert common
    both = [k for k in common if {rows["default"][k]["verdict"], rows["avx2"][k]["verdict"]} <= {"better", "worse"}]
    disagree = [
        (k, rows["default"][k]["verdict"], rows["avx2"][k]["verdict"])
        for k in both
        if rows["default"][k]["verdict"] != rows["avx2"][k]["verdict"]
    ]
    assert not disagree, f"{len(disagree)} of {len(both)} verdicts significant on both paths disagree: {disagree}"


# ------------------------------------------------------------------------------------------------------------
# A NaN run stops with one line; a collapsed model is a result
# ------------------------------------------------------------------------------------------------------------


def test_a_diverged_method_is_one_line_and_every_other_result_is_kept(tmp_path, model_cache, monkeypatch, capsys):
    out = tmp_path / "nan"
    argv = [
        "--preset",
        "smoke",
        "--out",
        str(out),
        "--cache-dir",
        str(model_cache),
        "--no-progress",
        "--methods",
        "original",
        "ga",
        "npo",
        "--epochs",
        "1",
        "--attacks",
        "none",
    ]
    real_unlearn = tofu.unlearn
    message = (
        "unlearning diverged: the forget loss is nan at step 1 (epoch 0.50) of method 'ga' with lr=0.003; "
        "lower the learning rate (or keep max_grad_norm set)"
    )  # the loop's own error when the loss is NaN

    def diverging(model, tokenizer, forget, retain, cfg, *args, **kwargs):
        if cfg.method.name == "ga":
            raise NonFiniteLossError(message)
        return real_unlearn(model, tokenizer, forget, retain, cfg, *args, **kwargs)

    monkeypatch.setattr(tofu, "unlearn", diverging)
    capsys.readouterr()
    report = tofu.main(argv)
    lines = [x for x in capsys.readouterr().err.splitlines() if "ga seed 0 stopped" in x]
    assert len(lines) == 1 and "lower --lr" in lines[0] and lines[0].endswith(message)
    assert report["diverged"] == [f"ga seed 0: {message}"]
    assert [r["method"] for r in _read_csv(out / "summary.csv")] == ["original", "npo"]
    assert "## Diverged" in report["table"] and "- ga seed 0: unlearning diverged" in report["table"]


def test_a_collapsed_model_is_a_result(tmp_path, model_cache):
    out = tmp_path / "collapse"
    report = tofu.main(
        [
            "--preset",
            "smoke",
            "--out",
            str(out),
            "--cache-dir",
            str(model_cache),
            "--no-progress",
            "--methods",
            "original",
            "retrain",
            "ga",
            "bs_s",
            "--epochs",
            "2",
            "--lr",
            "5",
            "--attacks",
            "none",
        ]
    )
    rows = {r["method"]: r for r in _read_csv(out / "summary.csv")}
    assert set(rows) == {"original", "retrain", "ga", "bs_s"} or report["diverged"]
    for method in set(rows) - set(REFERENCE_METHODS):
        assert 0 <= _float(rows[method]["model_utility"]) <= 1 or rows[method]["model_utility"] == ""
    assert (out / "table.md").is_file()


# ------------------------------------------------------------------------------------------------------------
# Real TOFU data (local copy), with a tiny model trained here
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_tofu_models(tofu_dir, tmp_path_factory):
    """A tiny Llama trained for a few seconds on the first forget author + first retain author, and its retain
    twin trained on the retain author only (quality is irrelevant: the test checks the plumbing)."""
    import torch

    from bs_ref.data.qa import load_tofu
    from bs_ref.finetune import train_causal_lm
    from bs_ref.models import TinyLlamaConfig, build_tiny_llama, train_tokenizer

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
    common = [
        "--preset",
        "smoke",
        "--data",
        str(tofu_dir),
        "--max-authors",
        "1",
        "--limit",
        "5",
        "--no-progress",
        "--cache-dir",
        str(model_cache),
        "--max-new-tokens",
        "12",
        "--attacks",
        "none",
    ]
    argv = common + [
        "--out",
        str(out),
        "--model",
        str(tiny_tofu_models / "original"),
        "--retain-model",
        str(tiny_tofu_models / "retain"),
        "--methods",
        "original",
        "retrain",
        "ga",
        "bs_t",
        "--epochs",
        "1",
    ]
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
    tofu.main(
        common
        + [
            "--out",
            str(logs_out),
            "--model",
            str(tiny_tofu_models / "original"),
            "--retain-logs",
            str(out / "methods/retrain/shared/eval.json"),
            "--methods",
            "original",
        ]
    )
    again = _read_csv(logs_out / "summary.csv")[0]
    assert _float(again["forget_quality"]) == pytest.approx(_float(rows["original"]["forget_quality"]))

    # No retain model at all: refused, unless explicitly allowed, and then FQ is skipped with a stated reason.
    no_retain = common + [
        "--out",
        str(tmp_path / "no_retain"),
        "--model",
        str(tiny_tofu_models / "original"),
        "--methods",
        "original",
    ]
    with pytest.raises(ValueError, match="--retain-model"):
        tofu.main(no_retain)
    tofu.main(no_retain + ["--allow-no-retain"])
    assert _read_csv(tmp_path / "no_retain" / "summary.csv")[0]["forget_quality"] == ""
    assert "forget quality skipped" in (tmp_path / "no_retain" / "table.md").read_text()


def test_real_tofu_recovery_is_read_and_drawn_on_the_target_logprob(tofu_dir, tiny_tofu_models, tmp_path, model_cache):
    """TOFU records carry no fact: recovery.csv, its verdicts and plots/recovery.png use the target log-prob."""
    out = tmp_path / "attacked"
    tofu.main(
        [
            "--preset",
            "smoke",
            "--data",
            str(tofu_dir),
            "--max-authors",
            "1",
            "--limit",
            "5",
            "--no-progress",
            "--cache-dir",
            str(model_cache),
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
            "--model",
            str(tiny_tofu_models / "original"),
            "--retain-model",
            str(tiny_tofu_models / "retain"),
            "--methods",
            "original",
            "retrain",
            "ga",
            "--epochs",
            "1",
            "--attacks",
            "prompt:affirmative",
        ]
    )
    rows = _read_csv(out / "recovery.csv")
    assert rows and {r["measure"] for r in rows} == {"target_logprob"}
    assert {r["method"] for r in rows} == {"original", "retrain", "ga"}
    assert (out / "plots" / "recovery.png").stat().st_size > 0
    assert "plots/recovery.png" in (out / "table.md").read_text()


def test_real_tofu_locuslab_retain_log(tofu_dir, tofu_logs_dir, tiny_tofu_models, tmp_path, model_cache):
    out = tmp_path / "locuslab"
    tofu.main(
        [
            "--preset",
            "smoke",
            "--data",
            str(tofu_dir),
            "--max-authors",
            "1",
            "--limit",
            "5",
            "--progress",
            "false",
            "--attacks",
            "none",
            "--cache-dir",
            str(model_cache),
            "--max-new-tokens",
            "8",
            "--out",
            str(out),
            "--model",
            str(tiny_tofu_models / "original"),
            "--retain-logs",
            str(tofu_logs_dir / "llama2-7b_retain90_wd0.01.json"),
            "--methods",
            "original",
        ]
    )
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
        (["--lr", "-1"], r"^--lr -1.0 is invalid: must be a positive number"),
        (["--lam", "1.5"], r"^--lam 1.5 is invalid: must lie in \[0, 1\]"),
        (["--methods", "bs_t:lam=1.5"], r"^bs_t:lam=1.5 is invalid"),
        (["--npo-beta", "0.2"], None),  # gone: npo:beta=0.2 in --methods
        (["--data", "/nonexistent", "--lr", "0"], r"^5 problems with the arguments:\n  - --data /nonexistent does not"),
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
        tofu.main(
            [
                "--data",
                str(synthetic_dir),
                "--model",
                str(tmp_path / "nope"),
                "--allow-no-retain",
                "--out",
                str(tmp_path / "o"),
            ]
        )
    with pytest.raises(ValueError, match="does not exist"):
        tofu.main(
            [
                "--data",
                str(synthetic_dir),
                "--model",
                str(tmp_path),
                "--retain-model",
                "./missing/ckpt",
                "--out",
                str(tmp_path / "o"),
            ]
        )


def test_missing_split(tmp_path, synthetic_dir):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    (data / "world_facts_perturbed.json").unlink()
    with pytest.raises(ValueError, match="world_facts_perturbed"):
        tofu.main(
            [
                "--data",
                str(data),
                "--model",
                str(tmp_path),
                "--allow-no-retain",
                "--out",
                str(tmp_path / "o"),
                "--methods",
                "original",
                "ga",
            ]
        )


def test_forget_split_larger_than_the_data(tmp_path, synthetic_dir):
    data = tmp_path / "data"
    shutil.copytree(synthetic_dir, data)
    full = [json.loads(line) for line in (data / "full.json").read_text().splitlines() if line.strip()]
    (data / "full.json").write_text("\n".join(json.dumps(r) for r in full[:3]) + "\n")
    with pytest.raises(ValueError, match="forget split forget10 has 4 items but the data has only 3"):
        tofu.main(
            [
                "--data",
                str(data),
                "--model",
                str(tmp_path),
                "--allow-no-retain",
                "--out",
                str(tmp_path / "o"),
                "--methods",
                "original",
                "ga",
            ]
        )
    with pytest.raises(ValueError, match="--max-authors 5 exceeds"):
        tofu.main(
            [
                "--data",
                str(synthetic_dir),
                "--model",
                str(tmp_path),
                "--allow-no-retain",
                "--max-authors",
                "5",
                "--out",
                str(tmp_path / "o"),
                "--methods",
                "ga",
            ]
        )


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


# ------------------------------------------------------------------------------------------------ recovery attacks
def test_smoke_attacks_write_recovery_csv_with_every_column_and_a_row_per_method_and_attack(smoke_run):
    """The smoke run attacks every model at the end (the default ``--attacks all``): recovery.csv has the
    contract's columns, one row per method × attack (references included), and its numbers are what they say:
    recovered = after − before, spurious gap = after − the retain model's after on the same items."""
    from bs_ref.attacks import ATTACKS, bitsandbytes_available, expand_attacks
    from bs_ref.protocol.recovery_table import RECOVERY_COLUMNS

    out, report, _ = smoke_run
    with open(out / "recovery.csv", newline="") as handle:
        assert tuple(csv.DictReader(handle).fieldnames) == RECOVERY_COLUMNS
    rows = _read_csv(out / "recovery.csv")
    runs = [r for r in rows if r["seed"] != "mean"]
    wanted = expand_attacks([a for a in ATTACKS if bitsandbytes_available()[0] or not a.startswith("quant")])
    assert {(r["method"], r["attack"]) for r in runs} == {(m, a) for m in tofu.DEFAULT_METHODS for a in wanted}
    assert {r["setting"] for r in rows} == {"end"} and {r["measure"] for r in rows} == {"fact_leak"}
    retrain_after = {r["attack"]: float(r["fact_leak_after"]) for r in runs if r["method"] == "retrain"}
    for r in runs:
        before, after = float(r["fact_leak_before"]), float(r["fact_leak_after"])
        assert 0 <= before <= 1 and 0 <= after <= 1
        assert float(r["recovered"]) == pytest.approx(after - before, abs=1e-5)
        assert float(r["spurious_gap"]) == pytest.approx(after - retrain_after[r["attack"]], abs=1e-5)
        assert float(r["ci_low"]) <= float(r["spurious_gap"]) + 1e-9 <= float(r["ci_high"]) + 2e-9
    # the original model holds every fact of the smoke pair: nothing to recover, and its gap is its leak
    original = {r["attack"]: r for r in runs if r["method"] == "original"}
    assert float(original["relearn"]["fact_leak_before"]) == 1.0
    means = [r for r in rows if r["seed"] == "mean"]
    assert {(r["method"], r["attack"]) for r in means} == {(m, a) for m in tofu.DEFAULT_METHODS for a in wanted}
    verdicts = _read_csv(out / "verdict.csv")
    gap_rows = {(v["comparison"], v["measure"]) for v in verdicts if v["measure"].startswith("spurious_gap[")}
    for comparison in ("bs_t − ga_scaled", "bs_s − npo", "bs_t − npo"):
        assert (comparison, "spurious_gap[relearn]") in gap_rows
    table = (out / "table.md").read_text()
    assert "## Recovery attacks: does the forgetting survive?" in table and "| bs_s − npo |" in table
    if tofu_plots_available():
        assert (out / "plots" / "recovery.png").stat().st_size > 0
    stored = json.loads((out / "methods" / "ga" / "seed0" / "attacks_end.json").read_text())
    assert stored["identity"]["attacks"] == wanted and stored["step"] == report["rows"][2]["steps"]


def tofu_plots_available() -> bool:
    from bs_ref.protocol import plots

    return plots.pyplot() is not None


def test_attacks_of_a_resumed_run_replay_the_same_weights_and_matched_attacks_replay_to_the_level(
    tmp_path, model_cache
):
    """A finished run without attacks, resumed with ``--attacks relearn``, replays each method to its last step:
    the attack then sees the same weights as an attack right after training (per-item numbers equal). With
    ``--attack-at matched`` the replay stops at the first evaluation past the run's matched target drop."""
    common = [
        "--preset",
        "smoke",
        "--cache-dir",
        str(model_cache),
        "--no-progress",
        "--methods",
        "original",
        "retrain",
        "ga",
        "npo",
    ]
    direct, resumed = tmp_path / "direct", tmp_path / "resumed"
    tofu.main(common + ["--out", str(direct), "--attacks", "relearn"])
    tofu.main(common + ["--out", str(resumed), "--attacks", "none"])
    assert not list(resumed.glob("methods/*/seed0/attacks_*.json"))
    report = tofu.main(common + ["--out", str(resumed), "--attacks", "relearn", "--attack-at", "both"])
    for method in ("ga", "npo"):
        a = json.loads((direct / "methods" / method / "seed0" / "attacks_end.json").read_text())
        b = json.loads((resumed / "methods" / method / "seed0" / "attacks_end.json").read_text())
        for when in ("before", "after"):
            got = [it["target_logprob"] for it in b["results"]["relearn"][when]]
            assert got == pytest.approx([it["target_logprob"] for it in a["results"]["relearn"][when]], abs=1e-5)
    level = next(r["level"] for r in report["matched"] if r["measure"] == "target_drop")
    for method in ("ga", "npo"):
        result = json.loads((resumed / "methods" / method / "seed0" / "result.json").read_text())
        path = resumed / "methods" / method / "seed0" / "attacks_matched.json"
        reached = [
            p["step"] for p in result["curve"] if result["curve"][0]["target_logprob"] - p["target_logprob"] >= level
        ]
        if not reached:
            assert not path.exists()
            continue
        stored = json.loads(path.read_text())
        assert stored["step"] == reached[0] <= result["steps"] and stored["identity"]["level"] == pytest.approx(level)
    rows = _read_csv(resumed / "recovery.csv")
    assert {r["setting"] for r in rows} <= {"end", "matched"} and any(r["setting"] == "matched" for r in rows)


def test_attack_flags_fail_with_one_clear_message(tmp_path, monkeypatch):
    from bs_ref.protocol import recovery

    out = ["--out", str(tmp_path / "o")]
    with pytest.raises(ValueError, match=r"--attacks quant5 unknown; choose from relearn, quant4"):
        tofu.main(["--attacks", "quant5", *out])
    with pytest.raises(ValueError, match="'none' and 'all' stand alone"):
        tofu.main(["--attacks", "none", "relearn", *out])
    with pytest.raises(ValueError, match=r"--attack-at middle is unknown; choose one of end \| matched \| both"):
        tofu.main(["--attack-at", "middle", *out])
    with pytest.raises(ValueError, match="--attack-epochs must be >= 1"):
        tofu.main(["--attack-epochs", "0", *out])
    monkeypatch.setattr(recovery, "bitsandbytes_available", lambda: (False, "bitsandbytes is not installed"))
    with pytest.raises(ValueError, match=r"--attacks quant4 needs bitsandbytes.*pip install -e '\.\[attacks\]'"):
        tofu.main(["--attacks", "quant4", "relearn", *out])
    labels, notes = recovery.AttackConfig(["all"]).labels()
    assert "relearn" in labels and not any(a.startswith("quant") for a in labels)
    assert notes and "quantization attacks skipped" in notes[0]
    assert not (tmp_path / "o").exists()  # every problem is found before anything is written


# ------------------------------------------------------------------------------------------------ ablations
def test_ablation_flag_adds_its_specs_and_rejects_unknown_names(tmp_path):
    plan = tofu.check(tofu.parse_args(["--ablation", "refresh", "--methods", "original", "npo"]))
    labels = [label for label, _ in plan]
    bs_s = [m for label, m in plan if label.startswith("bs_s")]
    assert len(bs_s) == 12 and len(set(labels)) == len(labels) == 14
    assert {(m.regime, m.refresh_epochs if m.regime == "on_policy" else None, m.n_beliefs) for m in bs_s} == {
        (regime, period, n)
        for regime, period in (("off_policy", None), ("on_policy", 2), ("on_policy", 1), ("on_policy", 0))
        for n in (1, 3, 5)
    }
    both = tofu.check(tofu.parse_args(["--ablation", "refresh", "sensitivity"]))
    assert sum(label.startswith("bs_t") for label, _ in both) == 60  # the default BS-T is one point of the grid
    with pytest.raises(ValueError, match=r"unknown --ablation 'often'; choose from refresh, sensitivity"):
        tofu.main(["--ablation", "often", "--out", str(tmp_path / "o")])
    assert not (tmp_path / "o").exists()


def test_refresh_ablation_runs_end_to_end_on_the_smoke_preset(tmp_path, model_cache):
    out = tmp_path / "refresh"
    report = tofu.main(
        [
            "--preset",
            "smoke",
            "--out",
            str(out),
            "--cache-dir",
            str(model_cache),
            "--no-progress",
            "--methods",
            "original",
            "retrain",
            "--ablation",
            "refresh",
            "--epochs",
            "1",
            "--attacks",
            "none",
        ]
    )
    rows = _read_csv(out / "ablation_refresh.csv")
    assert len(rows) == 12 and all(float(r["seconds_per_step"]) > 0 for r in rows)
    from bs_ref.protocol.ablations import TITLES

    assert f"## Ablation: {TITLES['refresh']}" in report["table"]
    assert f"## Ablation: {TITLES['refresh']}" in (out / "table.md").read_text()
    if tofu_plots_available():
        assert (out / "plots" / "ablation_refresh.png").stat().st_size > 0


# ------------------------------------------------------------------------------------------------ executors
EXECUTOR_RUN = [
    "--preset",
    "smoke",
    "--no-progress",
    "--methods",
    "original",
    "retrain",
    "ga",
    "bs_t",
    "ga_scaled",
    "--seeds",
    "0",
    "1",
    "--attacks",
    "relearn",
]
EVERY_CSV = (
    "summary.csv",
    "matched.csv",
    "verdict.csv",
    "recovery.csv",
    "leak_at_k.csv",
    "squeeze.csv",
    "facts.csv",
    "conditional_recovery.csv",
)


@pytest.fixture(scope="module")
def local_executor_run(tmp_path_factory, model_cache) -> Path:
    """The run every other executor is compared with: EXECUTOR_RUN with --executor local."""
    out = tmp_path_factory.mktemp("executors") / "local"
    tofu.main(EXECUTOR_RUN + ["--cache-dir", str(model_cache), "--out", str(out)])
    return out


def _assert_same_results(expected: Path, out: Path, names=EVERY_CSV) -> None:
    """The CSVs ``names`` of two runs hold the same rows, wall-clock columns aside; so do the runs' identities."""
    for name in names:
        assert (expected / name).is_file() == (out / name).is_file(), name
        if not (expected / name).is_file():
            continue
        a, b = _read_csv(expected / name), _read_csv(out / name)
        assert len(a) == len(b) > 0, name
        for row_a, row_b in zip(a, b):
            assert {k: v for k, v in row_a.items() if not k.startswith("wall_s")} == {
                k: v for k, v in row_b.items() if not k.startswith("wall_s")
            }, name
    assert (
        json.loads((out / "config.json").read_text())["identity"]
        == json.loads((expected / "config.json").read_text())["identity"]
    )


@pytest.mark.slow
def test_ray_executor_writes_the_same_results_as_the_local_executor(tmp_path, model_cache, local_executor_run):
    """``--executor ray`` (a local Ray, one task per method and seed) gives the summary.csv and recovery.csv of
    ``--executor local``, wall-clock columns aside: each task loads the pair from the cache and reads the pair's
    reference files, and the unlearning is deterministic."""
    pytest.importorskip("ray")
    ray_run = tmp_path / "ray"
    tofu.main(EXECUTOR_RUN + ["--cache-dir", str(model_cache), "--out", str(ray_run), "--executor", "ray"])
    _assert_same_results(local_executor_run, ray_run, ("summary.csv", "recovery.csv", "verdict.csv"))


@pytest.mark.slow
def test_processes_executor_writes_the_same_results_as_the_local_executor(tmp_path, model_cache, local_executor_run):
    """``--executor processes --workers 2``: every CSV of ``--executor local``, wall-clock columns aside (each worker
    loads the pair from the cache once and reads the pair's reference files)."""
    out = tmp_path / "processes"
    tofu.main(
        EXECUTOR_RUN + ["--cache-dir", str(model_cache), "--out", str(out), "--executor", "processes", "--workers", "2"]
    )
    _assert_same_results(local_executor_run, out)


@pytest.mark.slow
def test_ctrl_c_stops_the_worker_processes_and_the_rerun_resumes(tmp_path, model_cache, local_executor_run):
    """Ctrl-C at a terminal (SIGINT to the whole process group) once the first job has finished: the run exits
    with 130 and its one line, the workers are gone, finished results are kept; the same command resumes them and
    ends with the CSVs of an uninterrupted run."""
    out = tmp_path / "run"
    argv = EXECUTOR_RUN + ["--cache-dir", str(model_cache), "--out", str(out), "--executor", "processes"]
    proc = subprocess.Popen(
        [sys.executable, str(SCRIPT), *argv],
        cwd=ROOT,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        start_new_session=True,
    )
    try:
        for _ in range(3000):
            if list(out.glob("methods/*/seed*/result.json")) or proc.poll() is not None:
                break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted: kept ") and f"finished result(s) in {out} (original, " in last, err
    assert "Traceback" not in err and "leaked" not in err
    kept = _mtimes(out)
    assert 0 < len(list(out.glob("methods/*/seed*/result.json"))) < 6
    for _ in range(300):  # no process of the run's group is left
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    else:
        raise AssertionError("a process of the interrupted run is still running")

    tofu.main(argv)
    assert {k: v for k, v in _mtimes(out).items() if k in kept and "result.json" in k} == {
        k: v for k, v in kept.items() if "result.json" in k
    }
    _assert_same_results(local_executor_run, out)


def test_executor_flags_fail_with_one_clear_message(tmp_path):
    out = ["--out", str(tmp_path / "o")]
    with pytest.raises(ValueError, match="--executor 'dask' is not one of: local, processes, ray"):
        tofu.main(["--executor", "dask", *out])
    with pytest.raises(ValueError, match=r"--ray-address auto is given without --executor ray"):
        tofu.main(["--ray-address", "auto", *out])
    assert not (tmp_path / "o").exists()


# ------------------------------------------------------------------------------------------------ LoRA
def test_lora_run_records_the_adapter_attacks_the_merged_model_and_resumes_old_run_dirs(
    smoke_run, tmp_path, model_cache
):
    """``--lora`` end to end: only an adapter trains (the spec is in config.json and every result), the attacks
    run on the model with the adapter merged, and a run directory written before ``--lora`` existed (no ``lora``
    in its identity) still resumes."""
    pytest.importorskip("peft")
    out = tmp_path / "lora"
    spec = "r=4,alpha=8,targets=q_proj,v_proj"
    report = tofu.main(
        [
            "--preset",
            "smoke",
            "--out",
            str(out),
            "--cache-dir",
            str(model_cache),
            "--no-progress",
            "--methods",
            "original",
            "retrain",
            "ga",
            "npo",
            "--lora",
            spec,
            "--attacks",
            "relearn",
        ]
    )
    config = json.loads((out / "config.json").read_text())
    assert config["identity"]["lora"] == spec
    result = json.loads((out / "methods" / "npo" / "seed0" / "result.json").read_text())
    assert result["config"]["lora"] == spec and result["metrics"]["target_logprob_drop"] > 0
    attacked = json.loads((out / "methods" / "npo" / "seed0" / "attacks_end.json").read_text())
    assert attacked["results"]["relearn"]["after"] and {r["method"] for r in report["rows"]} >= {"ga", "npo"}
    # an earlier version's run directory: its identity has no "lora"; resuming it recomputes nothing
    source, _, argv = smoke_run
    old = tmp_path / "old"
    shutil.copytree(source, old)
    config = json.loads((old / "config.json").read_text())
    config["identity"].pop("lora")
    (old / "config.json").write_text(json.dumps(config))
    before = _mtimes(old)
    tofu.main([a if a != str(source) else str(old) for a in argv])
    assert _mtimes(old) == before


def test_smollm2_tofu_preset_needs_real_data_and_fine_tunes_the_pretrained_pair(tmp_path):
    with pytest.raises(ValueError, match="--preset smollm2_tofu fine-tunes SmolLM2 on real TOFU text: pass --data"):
        tofu.main(["--preset", "smollm2_tofu", "--out", str(tmp_path / "o")])
    excerpt = Path(__file__).parent / "fixtures" / "tofu_excerpt"
    args = tofu.parse_args(["--preset", "smollm2_tofu", "--data", str(excerpt)])
    assert [label for label, _ in tofu.check(args)] == list(tofu.DEFAULT_METHODS)
    assert (args.models.model_preset, args.data.max_authors, args.models.precision) == ("smollm2_tofu", 2, "fp32")
    assert args.models.model is None and not (tmp_path / "o").exists()
