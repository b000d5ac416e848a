"""Two processes (``accelerate launch``, CPU, gloo) against one: the unlearning loop and sharded evaluation.

How 2 processes × micro-batch b equal 1 process × 2b. ``accelerator.prepare`` shards a shuffled DataLoader by
batch (``BatchSamplerShard``): every process draws the same permutation (one generator, seeded with the run's seed
and synchronised from process 0 at every pass) and process i takes batches i, i + 2, ... of b rows. So optimiser
step k sees rows [2bk, 2bk + 2b) of the permutation split over the two processes, exactly the rows of step k of
one process with batch 2b (the permutation does not depend on the batch size). The retain loader is sharded the
same way (8 retain records: one retain pass per 2 steps in both runs). Every loss is a mean over rows (per-row
answer means, then the row mean; docs/theory.md §11), and the loop averages the gradients of the processes once
per step, so the mean of the two half-batch gradients is the full batch's gradient; the runs differ only by the
float rounding of differently padded batches. BS-S off-policy: every process samples the whole forget set with
the same seed, i.e. holds the one-process cache. BS-S refreshed every step (on-policy, refresh_epochs = 0)
samples only the process's own rows, from a per-process stream (``bs_ref.unlearn.belief_seed``: process 0 keeps
the seed, process 1 draws from seed + 1_000_003): the beliefs then differ from one process's, as they must.

The two-process run is ``tests/_two_process_worker.py`` under ``accelerate launch`` (about 30-60 s on 2 cores:
two interpreters importing torch; marked slow).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _tiny import max_abs_diff, train_tiny
from _two_process_worker import EVAL_SPLITS, FORGET, Recorder, run, scenarios
from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

from bs_ref.metrics.scores import evaluate
from bs_ref.protocol.distributed import gather_shards, shard_bounds, shard_records
from bs_ref.unlearn import PROCESS_SEED_STRIDE

pytestmark = pytest.mark.slow
WORKER = Path(__file__).resolve().parent / "_two_process_worker.py"
B = 2
"""Micro-batch per process of the two-process run (the one-process run uses 2B)."""
TOL = 1e-5
"""Largest |Δw| allowed between 2 × B and 1 × 2B after 4 steps at lr 3e-3 (measured: ~1e-7)."""


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """(model dir, two-process output dir): the tiny model saved, then the worker launched on 2 processes."""
    root = tmp_path_factory.mktemp("two_process")
    state, tokenizer, config = train_tiny()
    model = LlamaForCausalLM(config)
    model.load_state_dict(state)
    model.save_pretrained(root / "model")
    tokenizer.save_pretrained(root / "model")
    out = root / "out"
    env = {**os.environ, "ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(free_port()),
        str(WORKER),
        "--model",
        str(root / "model"),
        "--out",
        str(out),
        "--batch-size",
        str(B),
    ]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"accelerate launch failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-8000:]}"
    yield root / "model", out
    shutil.rmtree(root, ignore_errors=True)


def ranks(out: Path, name: str) -> list[dict]:
    return [json.loads((out / f"{name}.rank{i}.json").read_text()) for i in range(2)]


def step_lines(path) -> list[dict]:
    return [line for line in map(json.loads, open(path, encoding="utf-8")) if "lr" in line]


def one_process(model_dir: Path, name: str, tmp_path: Path) -> tuple[dict, Recorder, list[dict]]:
    recorder = Recorder()
    log = tmp_path / f"{name}.jsonl"
    model = run(name, str(model_dir), 2 * B, str(log), recorder)
    return model.state_dict(), recorder, step_lines(log)


@pytest.mark.parametrize("name", [n for n in scenarios() if n != "bs_s_per_step"])
def test_two_processes_of_b_give_the_weights_of_one_of_2b(runs, tmp_path, name):
    model_dir, out = runs
    single, recorder, single_log = one_process(model_dir, name, tmp_path)
    double = torch.load(out / f"{name}.pt")
    difference = max_abs_diff(single, double)
    print(f"{name}: max |Δw| between 2 processes × {B} and 1 × {2 * B} = {difference:.3g}")
    assert difference <= TOL, f"{name}: max |Δw| = {difference:.3g}"
    original = AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    assert max_abs_diff(original, double) > 1e-3  # the runs did move the weights
    # the rows: each step's 2B forget (and retain) rows are the two processes' B rows, and the processes differ
    per_rank = [r["micro_batches"] for r in ranks(out, name)]
    assert len(per_rank[0]) == len(per_rank[1]) == len(recorder.micro_batches) == 4
    for step, whole in enumerate(recorder.micro_batches):
        halves = [per_rank[0][step], per_rank[1][step]]
        assert sorted(halves[0]["forget"] + halves[1]["forget"]) == sorted(whole["forget"])
        assert not set(halves[0]["forget"]) & set(halves[1]["forget"])
        if whole["retain"] is not None:
            assert sorted(halves[0]["retain"] + halves[1]["retain"]) == sorted(whole["retain"])
            assert not set(halves[0]["retain"]) & set(halves[1]["retain"])
    # the log of the two-process run is the mean over both processes' rows: the one-process numbers
    double_log = step_lines(out / f"{name}.jsonl")
    for a, b in zip(single_log, double_log):
        for key in ("loss", "forget_loss", "retain_loss", "forget_logprob"):
            if a[key] is not None:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), (key, a, b)


def test_the_trainer_on_two_processes_gives_the_loops_weights_on_one(runs, tmp_path):
    model_dir, out = runs
    single, _, _ = one_process(model_dir, "npo", tmp_path)
    difference = max_abs_diff(single, torch.load(out / "trainer_npo.pt"))
    print(f"UnlearningTrainer npo: max |Δw| between 2 processes × {B} and the loop on 1 × {2 * B} = {difference:.3g}")
    assert difference <= TOL


def test_bs_s_off_policy_every_process_holds_the_one_process_cache(runs):
    _, out = runs
    refreshes = [r["refreshes"] for r in ranks(out, "bs_s")]
    assert [len(r) for r in refreshes] == [1, 1]  # sampled once, before unlearning
    assert refreshes[0][0]["seed"] == refreshes[1][0]["seed"] == 0
    assert refreshes[0][0]["indices"] == list(range(len(FORGET)))
    assert refreshes[0][0]["beliefs"] == refreshes[1][0]["beliefs"]


def test_bs_s_refreshed_every_step_draws_per_process_streams(runs, tmp_path):
    model_dir, out = runs
    per_rank = [r["refreshes"] for r in ranks(out, "bs_s_per_step")]
    assert len(per_rank[0]) == len(per_rank[1]) == 4  # one refresh per step, of the process's own rows
    for step in range(4):
        mine, theirs = per_rank[0][step], per_rank[1][step]
        assert mine["seed"] == 0 + step  # process 0 keeps the one-process seeds: seed + refresh
        assert theirs["seed"] == PROCESS_SEED_STRIDE + step
        assert not set(mine["indices"]) & set(theirs["indices"])
        assert mine["beliefs"] != theirs["beliefs"]
    seeds = {r["seed"] for rank in per_rank for r in rank}
    assert len(seeds) == 8  # no stream is used twice
    _, recorder, log = one_process(model_dir, "bs_s_per_step", tmp_path)
    assert [r["seed"] for r in recorder.refreshes] == [0, 1, 2, 3]
    assert all(math.isfinite(s["loss"]) for s in log)


def test_sharded_evaluation_gives_the_one_process_numbers(runs):
    model_dir, out = runs
    sharded = json.loads((out / "eval.json").read_text())
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    model.load_state_dict(torch.load(out / "npo.pt"))
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    whole = json.loads(json.dumps(evaluate(model, tokenizer, EVAL_SPLITS, max_new_tokens=16, batch_size=2)))
    assert sharded.keys() == whole.keys()
    worst = 0.0
    for kind in whole:
        assert [item["index"] for item in sharded[kind]] == list(range(len(EVAL_SPLITS[kind])))
        for a, b in zip(whole[kind], sharded[kind]):
            assert a.keys() == b.keys()
            for key, value in a.items():
                if isinstance(value, float) or (isinstance(value, list) and value and isinstance(value[0], float)):
                    x, y = torch.tensor(value, dtype=torch.float64), torch.tensor(b[key], dtype=torch.float64)
                    worst = max(worst, float(((x - y).abs() / x.abs().clamp_min(1.0)).max()))
                    assert b[key] == pytest.approx(value, rel=1e-6, abs=1e-6), (kind, a["index"], key)
                else:
                    assert value == b[key], (kind, a["index"], key)
    print(f"sharded evaluation: max |Δ|/max(1, |x|) of any per-item number = {worst:.3g}")


def test_shard_helpers_without_a_process_group():
    assert [shard_bounds(5, i, 2) for i in range(2)] == [(0, 3), (3, 5)]
    assert [shard_bounds(2, i, 3) for i in range(3)] == [(0, 1), (1, 2), (2, 2)]
    records = list(range(7))
    assert sum((shard_records(records, i, 3) for i in range(3)), []) == records
    assert shard_records(records) == records and gather_shards([1, 2]) == [1, 2]  # one process: identity
    with pytest.raises(ValueError, match="process_index"):
        shard_records(records, 2, 2)
