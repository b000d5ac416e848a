"""The from-scratch pair trained side by side (two worker processes) and the per-step host work of
``bs_ref.finetune``: the same weights bit for bit as one model after the other and as the DataLoader loop of
earlier versions; a failing or dying worker is one clear error; Ctrl-C stops both workers and writes no entry;
one usable CPU (or ``$BS_REF_PAIR_PROCESSES=1``) trains in the caller's process."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from transformers import get_scheduler

from bs_ref import finetune as F
from bs_ref.data.qa import collate_train, encode_qa
from bs_ref.data.synthetic import SyntheticConfig, benchmark_texts, build_benchmark, training_corpus
from bs_ref.protocol import pair_training as P

SMOKE_MODEL, SMOKE_TRAIN = P.PRESETS["smoke"]
SHORT = dataclasses.replace(SMOKE_TRAIN, epochs=3)
"""The smoke preset with 3 epochs instead of 30: the same model, corpora and schedule shape, in seconds."""


@pytest.fixture(scope="module")
def corpora():
    benchmark = build_benchmark(SyntheticConfig.smoke())
    return training_corpus(benchmark, "full"), training_corpus(benchmark, "retain90"), benchmark_texts(benchmark)


def _digests(model) -> dict[str, str]:
    return {k: hashlib.sha256(v.contiguous().numpy().tobytes()).hexdigest() for k, v in model.state_dict().items()}


def _train(corpora, side_by_side: bool, train_cfg=SHORT):
    original_pairs, retain_pairs, texts = corpora
    return P.train_pair(
        original_pairs,
        retain_pairs,
        SMOKE_MODEL,
        train_cfg,
        tokenizer_texts=texts,
        progress=False,
        side_by_side=side_by_side,
    )


def test_side_by_side_pair_equals_the_sequential_one_bit_for_bit(corpora):
    sequential = _train(corpora, side_by_side=False)
    parallel = _train(corpora, side_by_side=True)
    assert parallel[3]["side_by_side"] and not sequential[3]["side_by_side"]
    for one, other in zip(sequential[:2], parallel[:2]):
        assert _digests(one) == _digests(other)
        assert not other.training
    assert _digests(sequential[0]) != _digests(sequential[1])  # two different models
    for role, n in (("original", len(corpora[0])), ("retain", len(corpora[1]))):
        assert parallel[3][role]["epoch_loss"] == sequential[3][role]["epoch_loss"]
        assert parallel[3][role]["n_pairs"] == n and parallel[3][role]["seconds"] > 0
    assert sequential[2].get_vocab() == parallel[2].get_vocab()


def test_a_failing_worker_is_one_clear_error(corpora):
    bad = dataclasses.replace(SHORT, lr=math.nan)  # refused by FineTuning.check inside each worker
    with pytest.raises(ValueError, match="lr must be a positive finite number") as error:
        _train(corpora, side_by_side=True, train_cfg=bad)
    assert any("worker process training the" in note for note in error.value.__notes__)


def test_a_worker_that_dies_without_a_word_is_one_clear_error(corpora, monkeypatch):
    monkeypatch.setattr(P, "_WORKER_BOOT", "import os\nos._exit(3)\n")
    with pytest.raises(P.PairWorkerError, match=r"ended without a result \(exit code 3\).*BS_REF_PAIR_PROCESSES=1"):
        _train(corpora, side_by_side=True)


def test_ctrl_c_stops_both_workers_and_writes_no_entry(corpora, tmp_path, monkeypatch):
    started = []
    real_start = P._start_worker

    def start(job):
        started.append(real_start(job))
        return started[-1]

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(P, "_start_worker", start)
    monkeypatch.setattr(P.multiprocessing.connection, "wait", interrupted)
    original_pairs, retain_pairs, texts = corpora
    with pytest.raises(KeyboardInterrupt):
        P.get_or_train_models(
            original_pairs,
            retain_pairs,
            SMOKE_MODEL,
            SHORT,
            tmp_path,
            tokenizer_texts=texts,
            progress=False,
            side_by_side=True,
        )
    assert len(started) == 2 and all(process.poll() is not None for process, _ in started)
    assert not (tmp_path / "pairs").exists() or not any((tmp_path / "pairs").iterdir())


def test_where_the_pair_trains(monkeypatch):
    monkeypatch.delenv(P.PAIR_PROCESSES_ENV, raising=False)
    monkeypatch.setattr(P.torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(P, "usable_cpus", lambda: 2)
    assert P.side_by_side_default(SMOKE_MODEL)
    assert not P.side_by_side_default(P.PretrainedSpec("smollm2"))  # SmolLM2 uses every core on its own
    monkeypatch.setattr(P, "usable_cpus", lambda: 1)
    assert not P.side_by_side_default(SMOKE_MODEL)  # one CPU: one after the other
    monkeypatch.setenv(P.PAIR_PROCESSES_ENV, "2")
    assert P.side_by_side_default(SMOKE_MODEL)
    monkeypatch.setenv(P.PAIR_PROCESSES_ENV, "1")
    monkeypatch.setattr(P, "usable_cpus", lambda: 2)
    assert not P.side_by_side_default(SMOKE_MODEL)
    monkeypatch.setenv(P.PAIR_PROCESSES_ENV, "many")
    with pytest.raises(ValueError, match="BS_REF_PAIR_PROCESSES must be 1"):
        P.side_by_side_default(SMOKE_MODEL)


def test_sequential_fallback_trains_in_this_process(corpora, monkeypatch):
    monkeypatch.setenv(P.PAIR_PROCESSES_ENV, "1")
    monkeypatch.setattr(P, "_start_worker", lambda job: pytest.fail("a worker was started"))
    tiny = dataclasses.replace(SHORT, epochs=1)
    *_, info = _train(corpora, side_by_side=None, train_cfg=tiny)
    assert info["side_by_side"] is False


# ------------------------------------------------------------------------------------------------------------
# The per-step host work of fine_tune: the same batches and learning rates as the DataLoader + get_scheduler loop
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 3])
def test_batches_are_the_dataloader_batches(corpora, seed):
    tokenizer = P.train_tokenizer(P._corpus_texts(corpora[0], "plain"), 400)
    features = [encode_qa(tokenizer, q, a) for q, a in corpora[0][:37]]
    batches = F._Batches(features, tokenizer.pad_token_id, 8, seed, torch.device("cpu"))
    loader = torch.utils.data.DataLoader(
        features,
        batch_size=8,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        collate_fn=lambda batch: collate_train(batch, tokenizer.pad_token_id),
    )
    assert len(batches) == len(loader) == 5
    for _epoch in range(3):  # the generator advances across epochs the same way
        ours, theirs = list(batches), list(loader)
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            assert a.keys() == b.keys()
            for key in a:
                assert a[key].dtype == b[key].dtype and a[key].is_contiguous()
                assert torch.equal(a[key], b[key])


@pytest.mark.parametrize(("warmup", "total"), [(6, 120), (0, 100), (1, 1)])
def test_linear_schedule_is_transformers_linear_schedule(warmup, total):
    def rates(make):
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=6e-3)
        scheduler = make(optimizer, warmup, total)
        out = []
        for _ in range(130):
            out.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        return out

    assert rates(F.linear_schedule) == rates(lambda o, w, t: get_scheduler("linear", o, w, t))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads a process's children from /proc")
def test_a_killed_parent_takes_its_workers_with_it(tmp_path):
    """SIGKILL on the process training the pair (no Ctrl-C, no cleanup): both workers end within seconds instead of
    training on as orphans. Under load a worker can still be importing when its parent dies, and then learns of it
    from no pipe; it checks the parent's process id it was given instead."""
    script = (
        "import dataclasses\n"
        "from bs_ref.data.synthetic import SyntheticConfig, benchmark_texts, build_benchmark, training_corpus\n"
        "from bs_ref.protocol import pair_training as P\n"
        "model, train = P.PRESETS['smoke']\n"
        "b = build_benchmark(SyntheticConfig.smoke())\n"
        "P.train_pair(training_corpus(b, 'full'), training_corpus(b, 'retain90'), model,\n"
        "             dataclasses.replace(train, epochs=10000), tokenizer_texts=benchmark_texts(b),\n"
        "             progress=False, side_by_side=True)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=Path(__file__).resolve().parents[1])
    children_file = Path(f"/proc/{parent.pid}/task/{parent.pid}/children")
    workers: list[int] = []
    deadline = time.monotonic() + 120
    while len(workers) < 2 and time.monotonic() < deadline and parent.poll() is None:
        time.sleep(0.2)
        workers = [int(p) for p in children_file.read_text().split()] if children_file.exists() else []
    assert len(workers) == 2, f"the pair's two workers did not start (parent exit code {parent.poll()})"
    time.sleep(1.0)  # both workers past their start-up
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    deadline = time.monotonic() + 15
    alive = workers
    while alive and time.monotonic() < deadline:
        time.sleep(0.2)
        alive = [pid for pid in workers if Path(f"/proc/{pid}").exists() and "zombie" not in _state(pid)]
    for pid in alive:  # leave nothing running if the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"workers {alive} outlived their killed parent"


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/status").read_text().split("State:")[1].split("\n")[0].lower()
    except (OSError, IndexError):
        return "zombie"
