"""Fault injection: damaged files, killed and racing runs, bad flags — identical results or one clear line.

Every case starts from one finished run of the smoke preset (three methods, two epochs, no attacks; the
session's ``finished`` fixture), copied per case, and asserts one of two outcomes: the rerun gives the same
numbers as the untouched run (summary.csv, matched.csv, verdict.csv byte for byte), or it stops with one line
that names the file or the flag and the fix. Never exit status 0 with other numbers.

- every kind of file a run reads back: eval.json, result.json, config.json, start.json, models.json (truncated,
  overwritten in the middle, deleted); a cached model.safetensors overwritten and a cache info.json cut short
  (the entry is rebuilt once, and the run resumes to the same numbers);
- a resume against another model pair (another checksum) is refused;
- ``--overwrite`` removes every file derived from the old settings and nothing else (the same numbers as a fresh
  directory; new data is not stuck on the old start.json);
- one process per ``--out``: a second is refused with one line naming the holder; the settings are checked again
  when a result is written;
- SIGKILL at a point, then the same command: the same numbers;
- the six command lines with bad values: exit status 2 (1 for tofu.py), no traceback, a line naming each flag.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from bs_ref.protocol import pair_training as P
from bs_ref.protocol.store import RunDir

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "tofu.py"
COMPARED = ("summary.csv", "matched.csv", "verdict.csv")
"""The report files whose numbers must equal the untouched run's (all but the seconds; table.md names --out)."""
SMALL = [
    "--preset",
    "smoke",
    "--methods",
    "original",
    "retrain",
    "ga",
    "--attacks",
    "none",
    "--epochs",
    "2",
    "--no-progress",
]
"""The cheapest complete run: the smoke pair, a reference of each kind and one unlearning method."""


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


tofu = _load(SCRIPT, "tofu_faults_script")


@pytest.fixture(scope="session")
def cache(tmp_path_factory) -> Path:
    """The smoke pair's model cache, trained once (``$BS_REF_TEST_MODEL_CACHE`` reuses one)."""
    if os.environ.get("BS_REF_TEST_MODEL_CACHE"):
        return Path(os.environ["BS_REF_TEST_MODEL_CACHE"])
    return tmp_path_factory.mktemp("faults_cache")


@pytest.fixture(scope="session")
def finished(tmp_path_factory, cache) -> Path:
    """One finished run (never changed: each case copies it)."""
    out = tmp_path_factory.mktemp("faults") / "run"
    tofu.main(_argv(out, cache))
    return out


def _argv(out: Path, cache: Path, *extra: str) -> list[str]:
    return [*SMALL, "--out", str(out), "--cache-dir", str(cache), *extra]


def _copy(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out, ignore=shutil.ignore_patterns(".run.lock"))
    return out


def _numbers(path: Path) -> list[dict]:
    """The rows of a report CSV without its timing columns (seconds differ between any two runs)."""
    with open(path, newline="") as handle:
        return [{k: v for k, v in row.items() if not k.endswith("_s")} for row in csv.DictReader(handle)]


def _same_numbers(a: Path, b: Path) -> None:
    for name in COMPARED:
        assert _numbers(a / name) == _numbers(b / name), name


def _one_line(error: BaseException) -> str:
    text = str(error)
    assert "\n" not in text and "Traceback" not in text, text
    return text


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _overwrite_middle(path: Path, size: int = 4096) -> None:
    data = bytearray(path.read_bytes())
    start = len(data) // 3
    size = min(size, len(data) // 3)
    data[start : start + size] = b"\x00" * size
    path.write_bytes(bytes(data))


DAMAGE = {"truncated": _truncate, "overwritten": _overwrite_middle, "deleted": Path.unlink}


# ------------------------------------------------------------------------------------------------ run directory
@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
@pytest.mark.parametrize(
    "name",
    ["methods/ga/seed0/eval.json", "methods/ga/seed0/result.json", "start.json", "methods/original/shared/eval.json"],
)
def test_a_damaged_file_of_a_finished_run_is_one_line_and_its_fix_gives_the_same_numbers(
    finished, cache, tmp_path, name, damage
):
    out = _copy(finished, tmp_path)
    path = out / name
    DAMAGE[damage](path)
    with pytest.raises(ValueError) as error:
        tofu.main(_argv(out, cache))
    line = _one_line(error.value)
    assert str(path) in line and "delete" in line and "rerun the same command" in line, line
    # the fix the line gives: delete it (a result: its folder) and rerun
    shutil.rmtree(path.parent) if path.parent.name in ("seed0", "shared") else path.unlink()
    tofu.main(_argv(out, cache))
    _same_numbers(out, finished)


def test_an_eval_json_replaced_by_other_valid_numbers_is_caught_by_its_checksum(finished, cache, tmp_path):
    out = _copy(finished, tmp_path)
    path = out / "methods/ga/seed0/eval.json"
    payload = json.loads(path.read_text())
    item = payload["splits"]["forget"][0]
    item["nll_answer"] = item["nll_answer"] + 1.0  # still valid JSON, other numbers
    path.write_text(json.dumps(payload))
    with pytest.raises(ValueError, match=r"eval.json does not hold what its result.json recorded"):
        tofu.main(_argv(out, cache))


@pytest.mark.parametrize("damage", ["truncated", "overwritten"])
def test_a_damaged_config_json_says_restore_it_never_that_every_setting_differs(finished, cache, tmp_path, damage):
    out = _copy(finished, tmp_path)
    DAMAGE[damage](out / "config.json")
    with pytest.raises(ValueError) as error:
        tofu.main(_argv(out, cache))
    line = _one_line(error.value)
    assert str(out / "config.json") in line and "restore it" in line and "differing" not in line, line
    assert (out / "methods/ga/seed0/result.json").is_file()  # nothing was deleted


def test_results_without_config_json_are_refused(finished, cache, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "config.json").unlink()
    with pytest.raises(ValueError, match=r"holds results .* but no config.json, so their settings are unknown"):
        tofu.main(_argv(out, cache))


def test_a_damaged_or_deleted_models_json_is_one_line_or_the_same_numbers(finished, cache, tmp_path):
    out = _copy(finished, tmp_path)
    _truncate(out / "models.json")
    with pytest.raises(ValueError, match=r"models.json is truncated or damaged.*restore it, or pass --overwrite"):
        tofu.main(_argv(out, cache))
    (out / "models.json").unlink()  # the results still record their pair's checksum
    tofu.main(_argv(out, cache))
    _same_numbers(out, finished)


def test_a_resume_against_another_model_pair_is_refused(finished, cache, tmp_path):
    out = _copy(finished, tmp_path)
    models = json.loads((out / "models.json").read_text())
    models["0"]["sha256"] = "0" * 64  # the results came from another pair
    (out / "models.json").write_text(json.dumps(models))
    with pytest.raises(ValueError) as error:
        tofu.main(_argv(out, cache, "--methods", "original", "retrain", "ga", "npo"))
    line = _one_line(error.value)
    assert "were computed from weights with sha256 000000000000" in line and "--cache-dir" in line, line
    assert not (out / "methods/npo").exists()
    # the same without models.json: the checksum each result records refuses it too
    (out / "models.json").unlink()
    result = out / "methods/ga/seed0/result.json"
    result.write_text(json.dumps(json.loads(result.read_text()) | {"models_sha256": "1" * 64}))
    with pytest.raises(ValueError, match="computed from weights with sha256 111111111111"):
        tofu.main(_argv(out, cache))


# ------------------------------------------------------------------------------------------------ model cache
def _entry(cache: Path, finished: Path) -> Path:
    """The cache entry of the finished run's pair in ``cache`` (other cases may have added entries)."""
    return cache / "pairs" / Path(json.loads((finished / "models.json").read_text())["0"]["entry"]).name


@pytest.mark.parametrize(
    "damage",
    ["weights overwritten", pytest.param("info.json truncated", marks=pytest.mark.slow), "info.json deleted"],
)
def test_a_damaged_cache_entry_is_rebuilt_once_and_the_run_resumes_to_the_same_numbers(
    finished, cache, tmp_path, capsys, damage
):
    own_cache = tmp_path / "cache"
    shutil.copytree(cache, own_cache)
    entry = _entry(own_cache, finished)
    info = json.loads((entry / "info.json").read_text())
    assert len(info["sha256"]) == 64 and "original/model.safetensors" in info["files_sha256"]
    if damage == "weights overwritten":
        _overwrite_middle(entry / "original" / "model.safetensors")
    elif damage == "info.json truncated":
        _truncate(entry / "info.json")
    else:
        (entry / "info.json").unlink()
    out = _copy(finished, tmp_path)
    capsys.readouterr()
    tofu.main(_argv(out, own_cache, "--methods", "original", "retrain", "ga", "ga_scaled"))  # resume, one method more
    said = capsys.readouterr().err
    assert f"model cache entry {entry} is damaged" in said and "rebuilding it once" in said, said
    assert json.loads((entry / "info.json").read_text())["sha256"] == info["sha256"]  # the same weights again
    old = [r for r in _numbers(finished / "summary.csv")]  # the finished methods' rows are the untouched run's
    assert [r for r in _numbers(out / "summary.csv") if r["method"] != "ga_scaled"] == old


def test_a_cache_entry_that_stays_damaged_is_one_line(tmp_path, monkeypatch):

    calls = []

    def train_entry(entry, *args, **kwargs):  # writes an entry whose weights never match its checksums
        calls.append(entry)
        (entry / "original").mkdir(parents=True)
        (entry / "info.json").write_text(json.dumps({"files_sha256": {"original/model.safetensors": "0" * 64}}))

    monkeypatch.setattr(P, "_train_entry", train_entry)
    from bs_ref.data.synthetic import SyntheticConfig

    with pytest.raises(P.CacheEntryError) as error:
        P.get_or_train_pair(SyntheticConfig.smoke(), "smoke", tmp_path, progress=False)
    line = _one_line(error.value)
    assert len(calls) == 2 and "damaged even after rebuilding it" in line and "rm -r" in line, line


# ------------------------------------------------------------------------------------------------ --overwrite
def test_overwrite_removes_what_the_old_settings_made_and_nothing_else(finished, cache, tmp_path):
    out = _copy(finished, tmp_path)
    (out / "notes.txt").write_text("mine")
    (out / "recovery.csv").write_text("stale")  # as an earlier run with attacks left it
    (out / "plots" / "recovery.png").write_bytes(b"stale")
    (out / "plots" / "mine.txt").write_text("mine")
    tofu.main(_argv(out, cache, "--lr", "1e-3", "--overwrite"))
    assert (out / "notes.txt").read_text() == "mine" and (out / "plots" / "mine.txt").read_text() == "mine"
    assert not (out / "recovery.csv").exists() and not (out / "plots" / "recovery.png").exists()
    fresh = tmp_path / "fresh"
    tofu.main(_argv(fresh, cache, "--lr", "1e-3"))
    _same_numbers(out, fresh)  # as in a fresh directory: no old start.json reused
    starts = [json.loads((d / "start.json").read_text()) for d in (out, fresh)]
    for start in starts:
        start["point"].pop("eval_s")  # seconds
    assert starts[0] == starts[1]


def test_overwrite_with_other_data_is_not_stuck_on_the_old_start_file(finished, cache, tmp_path):
    out = _copy(finished, tmp_path)
    with pytest.raises(ValueError, match="differing: n_authors"):
        tofu.main(_argv(out, cache, "--n-authors", "10"))
    report = tofu.main(_argv(out, cache, "--n-authors", "10", "--overwrite"))
    assert report["rows"] and json.loads((out / "config.json").read_text())["identity"]["n_authors"] == 10


# ------------------------------------------------------------------------------------------------ processes
def _command(out: Path, cache: Path, *extra: str) -> list[str]:
    return [sys.executable, str(SCRIPT), *_argv(out, cache, *extra)]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "TOKENIZERS_PARALLELISM": "false"}


def test_a_second_process_on_the_same_out_is_refused_naming_the_holder(finished, cache, tmp_path):
    out = _copy(finished, tmp_path)
    holder = RunDir(out, json.loads((out / "config.json").read_text())["identity"])  # this process holds --out
    try:
        proc = subprocess.run(
            _command(out, cache, "--lr", "1e-3", "--overwrite"),
            capture_output=True,
            text=True,
            cwd=ROOT,
            env=_env(),
            timeout=300,
        )
    finally:
        holder.close()
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: --out {out} is in use by another run (pid {os.getpid()} on "), last
    assert (out / "methods/ga/seed0/result.json").is_file()  # --overwrite deleted nothing
    _same_numbers(out, finished)
    RunDir(out, {}, overwrite=True).close()  # released: the directory is free again


def test_settings_are_checked_again_when_a_result_is_written(finished, cache, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_unlearn = tofu.unlearn

    def unlearn_while_config_changes(*args, **kwargs):
        config = json.loads((out / "config.json").read_text())
        config["identity"]["lr"] = 0.5  # another writer that ignored the lock
        (out / "config.json").write_text(json.dumps(config))
        return real_unlearn(*args, **kwargs)

    monkeypatch.setattr(tofu, "unlearn", unlearn_while_config_changes)
    with pytest.raises(ValueError) as error:
        tofu.main(_argv(out, cache))
    line = _one_line(error.value)
    assert "config.json changed while this run was writing" in line and "lr" in line, line
    assert not (out / "methods/ga/seed0/result.json").exists()


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None and time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.05)


def test_sigkill_after_the_first_result_then_the_same_command_gives_the_same_numbers(finished, cache, tmp_path):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _command(out, cache), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_for(out / "methods/retrain/shared/result.json", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not list(out.rglob("summary.csv"))
    tofu.main(_argv(out, cache))  # the lock died with the process
    _same_numbers(out, finished)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["config.json", "start.json", "methods/ga/seed0/eval.json", "summary.csv"])
def test_sigkill_at_more_points(finished, cache, tmp_path, point):
    out = tmp_path / "run"
    proc = subprocess.Popen(
        _command(out, cache), cwd=ROOT, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    _wait_for(out / point, proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    tofu.main(_argv(out, cache))
    _same_numbers(out, finished)


@pytest.mark.slow
def test_two_processes_started_together_on_one_out_never_mix_their_settings(cache, tmp_path):
    out = tmp_path / "run"
    procs = [
        subprocess.Popen(
            _command(out, cache, "--lr", lr),
            cwd=ROOT,
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        for lr in ("1e-3", "2e-3")
    ]
    outcomes = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in outcomes) == [0, 1], outcomes
    for code, err in outcomes:
        assert "Traceback" not in err
        if code:
            last = err.strip().splitlines()[-1]
            assert "is in use by another run" in last or "differing: lr" in last, last
    lr = json.loads((out / "config.json").read_text())["identity"]["lr"]
    result = json.loads((out / "methods/ga/seed0/result.json").read_text())
    assert result["config"]["lr"] == lr


# ------------------------------------------------------------------------------------------------ command lines
def test_tofu_reports_every_bad_path_and_value_at_once_before_any_compute(tmp_path, capsys):
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argv = ["--out", str(a_file), "--cache-dir", str(a_file), "--seeds", "-1", "--threads", "0"]
    if not torch.cuda.is_available():
        argv += ["--device", "cuda"]
    with pytest.raises(ValueError) as error:
        tofu.main(argv)
    message = str(error.value)
    for flag in ("--out", "--cache-dir", "--seeds", "--threads", *([] if torch.cuda.is_available() else ["--device"])):
        assert f"  - {flag}" in message, (flag, message)
    assert f"--cache-dir {a_file} is a file, not a directory" in message


def _run_main(module_path: Path, name: str, argv: list[str], capsys) -> tuple[int, str]:
    module = _load(module_path, name)
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        module.main(argv)
    return stopped.value.code, capsys.readouterr().err


CLI_CASES = {
    "bench losses": (
        "bench.py",
        ["losses", "--dtype", "foo", "--repeats", "0", "--vocab", "8"],
        ["--dtype foo", "--repeats 0", "--vocab 8"],
    ),
    "bench bs_s": (
        "bench.py",
        ["bs_s", "--threads", "0", "--items", "0", "--seed", "-1", "--model", "./nowhere"],
        ["--threads 0", "--items 0", "--seed -1", "--model ./nowhere"],
    ),
    "bench precision": ("bench.py", ["precision", "--steps", "0", "--batch", "-2"], ["--steps 0", "--batch -2"]),
    "metrics_cli aggregate": ("metrics_cli.py", ["aggregate", "--log", "nowhere.json"], ["--log nowhere.json"]),
    "metrics_cli speed": (
        "metrics_cli.py",
        ["speed", "--threads", "0", "--hidden-size", "7"],
        ["--threads 0", "--hidden-size 7"],
    ),
    "train_pair": (
        "train_pair.py",
        ["--forget", "forget99", "--cache-dir", "{file}"],
        ["--forget forget99", "--cache-dir {file}"],
    ),
    "squeezing": (
        "squeezing.py",
        ["--steps", "0", "--out", "{file}", "--threads", "-1"],
        ["--steps 0", "--out {file}", "--threads -1"],
    ),
}


@pytest.mark.parametrize("case", sorted(CLI_CASES))
def test_each_command_line_names_every_bad_flag_with_exit_status_2(case, tmp_path, capsys, monkeypatch):
    script, argv, expected = CLI_CASES[case]
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    argv = [a.format(file=a_file) for a in argv]
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    code, err = _run_main(ROOT / "experiments" / script, f"faults_{script[:-3]}", argv, capsys)
    assert code == 2 and "Traceback" not in err, err
    for text in expected:
        assert text.format(file=a_file) in err, (text, err)


def test_bench_losses_device_cuda_without_cuda(capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    code, err = _run_main(ROOT / "experiments" / "bench.py", "faults_bench", ["losses", "--device", "cuda"], capsys)
    assert code == 2 and "--device cuda was asked for but CUDA is not available" in err, err


def test_proofs_check_threads(capsys):
    from proofs_check.__main__ import main

    for value in ("-1", "0"):
        with pytest.raises(SystemExit) as stopped:
            main(["--threads", value, "--claim", "T5.2"])
        assert stopped.value.code == 2 and f"--threads {value} is invalid" in capsys.readouterr().err


def test_an_os_error_in_a_command_is_one_line_naming_the_path(tmp_path, capsys):
    from bs_ref.files import one_line_errors

    with pytest.raises(SystemExit) as stopped, one_line_errors("tool"):
        open(tmp_path / "missing" / "x.json")  # noqa: SIM115
    assert stopped.value.code == 1
    assert (
        capsys.readouterr().err.strip() == f"tool: error: {tmp_path / 'missing' / 'x.json'}: No such file or directory"
    )
    with pytest.raises(SystemExit), one_line_errors("tool"):
        import ray_that_is_not_there  # noqa: F401
    assert "install it: pip install ray_that_is_not_there" in capsys.readouterr().err
