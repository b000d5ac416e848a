"""The unlearning loop (bs_ref.unlearn) on a tiny Llama model built and trained inside the test."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import tempfile

import pytest
import torch
from _tiny import FORGET, RETAIN, fresh
from hypothesis import given, settings
from hypothesis import strategies as st

from bs_ref import unlearn as unlearn_module
from bs_ref.data.qa import QADataset, collate_train
from bs_ref.losses import mean_token_logprob
from bs_ref.methods import METHODS, make_method
from bs_ref.unlearn import NonFiniteLossError, UnlearnConfig, unlearn


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is fastest, and on a shared CPU extra threads only spin."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def forget_logprob(model, tokenizer, records=FORGET) -> float:
    """Mean length-normalised answer log-prob over ``records``."""
    batch = collate_train(list(QADataset(records, tokenizer)), tokenizer.pad_token_id)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return float(mean_token_logprob(logits, batch["labels"]).mean())


def read_log(path) -> list[dict]:
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def step_lines(lines) -> list[dict]:
    return [line for line in lines if "lr" in line]


def config(method, tmp_path=None, **kw) -> UnlearnConfig:
    """An UnlearnConfig of ``method`` (a name): keywords that are the method's hyper-parameters go to its
    declaration (``bs_ref.methods``), the rest to the config."""
    if method in METHODS:
        own = {f.name for f in dataclasses.fields(METHODS[method])}
        hyper = {k: kw.pop(k) for k in list(kw) if k in own}
        if method == "bs_s":
            hyper.setdefault("belief_max_new_tokens", 12)
        method = make_method(method, **hyper)
    base = dict(method=method, lr=3e-3, epochs=2, batch_size=2, warmup=0.0, progress=False)
    if tmp_path is not None:
        base["log_path"] = str(tmp_path / f"{getattr(method, 'name', method)}.jsonl")
    base.update(kw)
    return UnlearnConfig(**base)


@pytest.mark.parametrize("method", METHODS)
def test_every_method_lowers_the_forget_answer_logprob(tiny, tmp_path, method):
    model, tokenizer = fresh(tiny)
    before = forget_logprob(model, tokenizer)
    cfg = config(method, tmp_path)
    out = unlearn(model, tokenizer, FORGET, RETAIN, cfg)
    after = forget_logprob(out, tokenizer)
    if method != "rmu":  # RMU steers one layer's hidden states, not the answers' likelihood (docs/theory.md §14);
        # here 4 steps on the one down_proj it trains, held by its retain weight 1000, leave -0.517 at -0.517
        assert after < before - 0.05, f"{method}: forget log-prob {before:.3f} -> {after:.3f}"
    lines = read_log(cfg.log_path)
    steps = step_lines(lines)
    assert [s["step"] for s in steps] == [1, 2, 3, 4]  # 4 forget items, batch 2, 2 epochs
    assert lines[0]["event"] == "start" and lines[-1]["event"] == "end"
    assert all(math.isfinite(s["forget_loss"]) and math.isfinite(s["loss"]) for s in steps)
    if method == "bs_s":
        assert steps[0]["beliefs"]["items_covered"] == len(FORGET) and steps[0]["beliefs"]["refreshes"] == 1
    assert 0.0 < steps[0]["topk_mass"] <= 1.0 + 1e-6  # logged for every method, BS-S included
    assert all(s["forget_logprob"] < 0 for s in steps)


def test_bs_t_with_lam_zero_is_ga_step_for_step(tiny, tmp_path):
    weights, logs = [], []
    for method, extra in (("ga", {}), ("bs_t", {"lam": 0.0, "alpha": 0.0})):
        model, tokenizer = fresh(tiny)
        cfg = config(method, tmp_path, **extra)
        out = unlearn(model, tokenizer, FORGET, RETAIN, cfg)
        weights.append(out.state_dict())
        logs.append([s["forget_loss"] for s in step_lines(read_log(cfg.log_path))])
    assert logs[0] == pytest.approx(logs[1], abs=1e-6)
    for name, value in weights[0].items():
        torch.testing.assert_close(value, weights[1][name], rtol=0, atol=1e-6)


def test_retain_term_is_used(tiny, tmp_path):
    runs = {}
    for label, extra in {"with": {"alpha": 1.0}, "without": {"alpha": 0.0}, "kl": {"retain_loss": "kl"}}.items():
        model, tokenizer = fresh(tiny)
        cfg = config("graddiff", tmp_path, log_path=str(tmp_path / f"{label}.jsonl"), **extra)
        runs[label] = (unlearn(model, tokenizer, FORGET, RETAIN, cfg), step_lines(read_log(cfg.log_path)))
    with_retain, without = runs["with"], runs["without"]
    assert all(s["retain_loss"] is not None for s in with_retain[1])
    assert all(s["retain_loss"] is None for s in without[1])
    for s in with_retain[1]:  # L = γ·L_forget + α·L_retain (docs/theory.md §2)
        assert s["loss"] == pytest.approx(s["forget_loss"] + s["retain_loss"], rel=1e-6)
    # the retain term changes the update, and keeps the retain answers likelier than GA alone does
    assert forget_logprob(with_retain[0], tiny[1], RETAIN) > forget_logprob(without[0], tiny[1], RETAIN)
    # KL(π_θ‖π_ref) is 0 at the first step, where θ = θ_ref
    assert runs["kl"][1][0]["retain_loss"] == pytest.approx(0.0, abs=1e-5)
    assert runs["kl"][1][-1]["retain_loss"] > 1e-6


def test_ga_alone_has_no_retain_term_and_simnpo_gamma(tiny, tmp_path):
    model, tokenizer = fresh(tiny)
    cfg = config("ga", tmp_path)
    unlearn(model, tokenizer, FORGET, [], cfg)  # GA needs no retain set
    start = read_log(cfg.log_path)[0]
    assert start["alpha"] == 0.0 and start["n_retain"] == 0
    assert UnlearnConfig(method="simnpo").method.gamma == 0.125  # docs/theory.md §2
    assert make_method("simnpo", gamma=0.5).gamma == 0.5
    assert UnlearnConfig(method="bs_t").method.gamma == 1.0


@pytest.mark.parametrize(
    "method, extra, needed",
    [
        ("ga", {}, False),
        ("graddiff", {}, False),
        ("bs_t", {}, False),
        ("wga", {}, False),
        ("npo", {}, True),
        ("graddiff", {"retain_loss": "kl"}, True),
        ("bs_s", {"base": "npo"}, True),
        ("bs_s", {"base": "bs_t"}, False),
    ],
)
def test_reference_copy_only_when_needed_and_frozen(tiny, tmp_path, monkeypatch, method, extra, needed):
    copies = []
    real_deepcopy = copy.deepcopy

    def recording_deepcopy(obj, *args, **kwargs):
        out = real_deepcopy(obj, *args, **kwargs)
        if isinstance(obj, torch.nn.Module):
            copies.append(out)
        return out

    monkeypatch.setattr(unlearn_module.copy, "deepcopy", recording_deepcopy)
    model, tokenizer = fresh(tiny)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = config(method, tmp_path, **extra)
    unlearn(model, tokenizer, FORGET, RETAIN, cfg)
    assert cfg.needs_reference is needed
    assert read_log(cfg.log_path)[0]["reference_model"] is needed
    assert len(copies) == (1 if needed else 0)
    for ref in copies:  # frozen: no gradient, never updated, still the original weights
        assert not any(p.requires_grad for p in ref.parameters())
        for name, value in ref.state_dict().items():
            torch.testing.assert_close(value, original[name], rtol=0, atol=0)
    if method == "npo":  # w = 1 at θ = θ_ref: the first NPO loss is (2/β)·log 2
        assert step_lines(read_log(cfg.log_path))[0]["forget_loss"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-4)


def test_nan_stops_with_one_clear_error_and_keeps_the_log(tiny, tmp_path):
    model, tokenizer = fresh(tiny)

    def poison(step, m):
        if step == 2:
            with torch.no_grad():
                next(m.parameters()).fill_(float("nan"))

    cfg = config("graddiff", tmp_path, eval_every=2)
    with pytest.raises(NonFiniteLossError, match=r"step 3 .*'graddiff'.*lower the learning rate"):
        unlearn(model, tokenizer, FORGET, RETAIN, cfg, callback=poison)
    lines = read_log(cfg.log_path)
    assert [s["step"] for s in step_lines(lines)] == [1, 2]
    assert "error" in lines[-1] and lines[-1]["step"] == 3


def test_same_seed_same_weights_other_seed_other_weights(tiny, tmp_path):
    def run(seed):
        model, tokenizer = fresh(tiny)
        return unlearn(model, tokenizer, FORGET, RETAIN, config("bs_t", seed=seed)).state_dict()

    a, b, c = run(0), run(0), run(1)
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0)
    assert any(not torch.equal(a[name], c[name]) for name in a)  # another seed shuffles differently


def test_callback_schedule_grad_accum_and_max_steps(tiny, tmp_path):
    model, tokenizer = fresh(tiny)
    seen = []
    cfg = config("bs_t", tmp_path, epochs=3, batch_size=1, grad_accum=2, eval_every=2, max_steps=5)
    unlearn(model, tokenizer, FORGET, RETAIN, cfg, callback=lambda step, m: seen.append((step, m.training)))
    lines = read_log(cfg.log_path)
    assert lines[0]["steps_per_epoch"] == 2 and lines[0]["total_steps"] == 5
    assert [s["step"] for s in step_lines(lines)] == [1, 2, 3, 4, 5]
    assert [s for s, _ in seen] == [0, 2, 4, 5]
    assert not any(training for _, training in seen)  # the callback sees the model in eval mode
    lrs = [s["lr"] for s in step_lines(lines)]
    assert lrs[0] > lrs[-1] > 0  # linear decay after the (zero) warm-up


def test_a_callback_that_returns_true_stops_after_that_step(tiny, tmp_path):
    """The early stop: the run ends at the step whose callback returned True, with the weights of that step, no
    further callback and an end line that says so; a callback returning None or False changes nothing."""
    cfg = config("ga", tmp_path, epochs=3, eval_every=1)
    model, tokenizer = fresh(tiny)
    full_seen, weights = [], {}

    def record(step, m):
        full_seen.append(step)
        weights[step] = copy.deepcopy(m.state_dict())
        return False

    unlearn(model, tokenizer, FORGET, RETAIN, cfg, callback=record)
    full = read_log(cfg.log_path)
    assert full[-1] == {"event": "end", "step": 6} and full_seen == [0, 1, 2, 3, 4, 5, 6]

    seen = []
    model, tokenizer = fresh(tiny)
    out = unlearn(model, tokenizer, FORGET, RETAIN, cfg, callback=lambda step, m: seen.append(step) or step == 3)
    lines = read_log(cfg.log_path)
    assert seen == [0, 1, 2, 3]  # no call after the stop
    assert [s["step"] for s in step_lines(lines)] == [1, 2, 3] and step_lines(lines) == step_lines(full)[:3]
    assert lines[-1] == {"event": "end", "step": 3, "stopped_early": True}
    assert not out.training
    for name, value in out.state_dict().items():
        torch.testing.assert_close(value, weights[3][name], rtol=0, atol=0)

    model, tokenizer = fresh(tiny)  # True at step 0 (eval_at_start): no update at all
    before = copy.deepcopy(model.state_dict())
    out = unlearn(model, tokenizer, FORGET, RETAIN, cfg, callback=lambda step, m: True)
    assert read_log(cfg.log_path)[-1] == {"event": "end", "step": 0, "stopped_early": True}
    for name, value in out.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0)


def test_warmup_is_in_epochs(tiny, tmp_path):
    model, tokenizer = fresh(tiny)
    cfg = config("ga", tmp_path, epochs=3, warmup=1.0)  # 2 steps per epoch -> 2 warm-up steps
    unlearn(model, tokenizer, FORGET, RETAIN, cfg)
    lrs = [s["lr"] for s in step_lines(read_log(cfg.log_path))]
    assert lrs[0] == 0.0 and lrs[1] == pytest.approx(cfg.lr / 2) and lrs[2] == pytest.approx(cfg.lr)


@settings(max_examples=8)
@given(gamma=st.floats(0.05, 4.0), alpha=st.floats(0.0, 4.0))
def test_total_is_gamma_forget_plus_alpha_retain(tiny, gamma, alpha):
    model, tokenizer = fresh(tiny)
    with tempfile.TemporaryDirectory() as tmp:  # hypothesis reruns the body: one fresh directory per example
        cfg = config("wga", None, gamma=gamma, alpha=alpha, max_steps=1, log_path=f"{tmp}/log.jsonl")
        unlearn(model, tokenizer, FORGET, RETAIN, cfg)
        s = step_lines(read_log(cfg.log_path))[0]
    retain = s["retain_loss"] or 0.0
    assert (s["retain_loss"] is None) == (alpha == 0.0)
    assert s["loss"] == pytest.approx(gamma * s["forget_loss"] + alpha * retain, rel=1e-6, abs=1e-9)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"method": "gradient_ascent"}, "method"),
        ({"lr": 0.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"epochs": 0}, "epochs"),
        ({"grad_accum": 0}, "grad_accum"),
        ({"retain_loss": "mse"}, "retain_loss"),
        ({"lam": 1.5}, "lam"),
        ({"method": "bs_s", "regime": "sometimes"}, "regime"),
        ({"method": "bs_s", "base": "simnpo"}, "base"),
        ({"temperature": 0.0}, "temperature"),
        ({"schedule": "step"}, "schedule"),
        ({"top_k": 10_000}, "top_k"),
    ],
)
def test_bad_hyper_parameters_raise_one_clear_value_error(tiny, kwargs, match):
    model, tokenizer = fresh(tiny)
    with pytest.raises(ValueError, match=match):
        unlearn(model, tokenizer, FORGET, RETAIN, config(**{"method": "bs_t", **kwargs}))


def test_empty_sets_raise_value_error(tiny):
    model, tokenizer = fresh(tiny)
    with pytest.raises(ValueError, match="forget_records is empty"):
        unlearn(model, tokenizer, [], RETAIN, config("ga"))
    with pytest.raises(ValueError, match="retain_records is empty"):
        unlearn(model, tokenizer, FORGET, [], config("graddiff"))


def test_every_step_beliefs_with_gradient_accumulation(tiny, tmp_path):
    """On-policy BS-S refreshed every step samples the items of every micro-batch of the step (not only the
    first one's: with grad_accum > 1 the second micro-batch used to find no cached beliefs)."""
    model, tokenizer = fresh(tiny)
    cfg = config("bs_s", tmp_path, regime="on_policy", refresh_epochs=0.0, batch_size=1, grad_accum=2, epochs=1)
    unlearn(model, tokenizer, FORGET, RETAIN, cfg)
    steps = step_lines(read_log(cfg.log_path))
    assert [s["step"] for s in steps] == [1, 2]  # 4 items, 1 per micro-batch, 2 micro-batches per step
    assert steps[-1]["beliefs"]["refreshes"] == 4  # one per micro-batch: each has its own item
