"""bs_ref.hf.UnlearningTrainer: a transformers.Trainer whose training step is bs_ref's.

The equivalence test trains the tiny Llama of tests/_tiny.py twice from the same weights, once with
``bs_ref.unlearn.unlearn`` and once with ``UnlearningTrainer``, with the same seed (so the same forget and retain
batches and the same BS-S beliefs), AdamW with the same kernel (``optim="adamw_torch"``, weight decay 0: the
Trainer's default optimiser exempts biases and norms from weight decay, the loop decays every weight; one case
passes the loop's optimiser to the Trainer instead), the same linear schedule with warm-up, and clipping at 1.
The final weights agree to TOL (measured: equal bit for bit on this machine's CPU kernels).
"""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from _tiny import FORGET, RETAIN, fresh, max_abs_diff
from transformers import TrainingArguments

from bs_ref.data.qa import QADataset
from bs_ref.hf import UnlearningTrainer
from bs_ref.methods import METHODS, make_method
from bs_ref.unlearn import UnlearnConfig, unlearn

pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft
TOL = 1e-6
"""Largest |Δw| allowed between the Trainer's and the loop's final weights (float32 weights of size ~0.1-1)."""


def declaration(name: str, **kw):
    own = {f.name for f in dataclasses.fields(METHODS[name])}
    hyper = {k: kw.pop(k) for k in list(kw) if k in own}
    if name == "bs_s":
        hyper.setdefault("belief_max_new_tokens", 12)
    return make_method(name, **hyper), kw


# name: (method, method and run settings)
CASES = {
    "ga": ("ga", {}),
    "npo": ("npo", {}),
    "bs_t": ("bs_t", {}),
    "bs_s": ("bs_s", {}),
    "graddiff_kl": ("graddiff", {"retain_loss": "kl"}),
    # on-policy beliefs refreshed every quarter epoch, i.e. at every micro-batch, two micro-batches per step
    "bs_s_on_policy_accum": ("bs_s", {"regime": "on_policy", "refresh_epochs": 0.25, "batch_size": 1, "grad_accum": 2}),
    "npo_lora": ("npo", {"lora": "r=4,alpha=8,targets=q_proj,v_proj"}),
    "bs_t_weight_decay": ("bs_t", {"weight_decay": 0.01}),
    "rmu": ("rmu", {}),  # its own forward, retain term and trainable layers
    "bs_s_token": ("bs_s", {"reduction": "token"}),  # the run-wide reduction reaches every term in both
}


def run_loop(tiny, method, settings):
    model, tokenizer = fresh(tiny)
    run = {"batch_size": 2, "weight_decay": 0.0, **settings}
    cfg = UnlearnConfig(
        method=method,
        lr=3e-3,
        epochs=2,
        warmup=0.5,
        schedule="linear",
        max_grad_norm=1.0,
        seed=0,
        progress=False,
        **run,
    )
    return unlearn(model, tokenizer, FORGET, RETAIN, cfg).state_dict()


def run_trainer(tiny, method, settings, tmp_path):
    model, tokenizer = fresh(tiny)
    settings = dict(settings)
    steps_per_epoch = len(FORGET) // (settings.get("batch_size", 2) * settings.get("grad_accum", 1))
    args = TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=settings.pop("batch_size", 2),
        gradient_accumulation_steps=settings.pop("grad_accum", 1),
        learning_rate=3e-3,
        num_train_epochs=2,
        warmup_steps=round(0.5 * steps_per_epoch),
        lr_scheduler_type="linear",
        max_grad_norm=1.0,
        seed=0,
        weight_decay=0.0,
        optim="adamw_torch",
        use_cpu=True,
        report_to="none",
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
    )
    extra = {}
    if "weight_decay" in settings:  # the loop's optimiser: every weight decayed
        decay = settings.pop("weight_decay")
        extra["optimizers"] = (torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=decay), None)
    trainer = UnlearningTrainer(
        model,
        args,
        method=method,
        forget_dataset=FORGET,
        retain_dataset=RETAIN,
        processing_class=tokenizer,
        **settings,
        **extra,
    )
    trainer.train()
    return trainer, trainer.model.state_dict()


@pytest.mark.parametrize("case", CASES)
def test_trainer_gives_the_loops_weights(tiny, tmp_path, case):
    name, settings = CASES[case]
    method, settings = declaration(name, **settings)
    loop = run_loop(tiny, method, settings)
    trainer, weights = run_trainer(tiny, method, settings, tmp_path)
    difference = max_abs_diff(loop, weights)
    print(f"{case}: max |Δw| between the Trainer and the loop = {difference:.3g}")
    assert difference <= TOL, f"{case}: max |Δw| = {difference:.3g}"
    assert any(not torch.equal(weights[k], tiny[0][k]) for k in tiny[0] if k in weights) or "lora" in case
    logged = [entry for entry in trainer.state.log_history if "loss" in entry]
    steps = 2 * len(FORGET) // (settings.get("batch_size", 2) * settings.get("grad_accum", 1))
    assert len(logged) == steps
    assert all(math.isfinite(entry["forget_loss"]) and entry["forget_logprob"] < 0 for entry in logged)
    if name != "ga":
        assert all(entry["retain_loss"] > -1e-6 for entry in logged)  # KL: 0 up to rounding at step 1
    if name == "npo":  # the reference (a copy, or the adapter disabled) equals the policy at the first step
        assert logged[0]["forget_loss"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-4)
    if name == "bs_s":
        assert logged[-1]["beliefs_cached"] == 3 * len(FORGET)


def test_trainer_evaluates_the_forget_objective_and_checks_its_arguments(tiny, tmp_path):
    model, tokenizer = fresh(tiny)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_eval_batch_size=4, use_cpu=True, report_to="none")
    trainer = UnlearningTrainer(
        model,
        args,
        method="ga",
        forget_dataset=FORGET,
        processing_class=tokenizer,
        eval_dataset=QADataset(FORGET, tokenizer),
    )
    loss = trainer.evaluate()["eval_loss"]
    assert -5 < loss < 0  # GA's objective is minus the answer NLL of well-learned answers
    with pytest.raises(ValueError, match="retain_dataset is empty"):
        UnlearningTrainer(fresh(tiny)[0], args, method="npo", forget_dataset=FORGET, processing_class=tokenizer)
    with pytest.raises(ValueError, match="forget_dataset"):
        UnlearningTrainer(fresh(tiny)[0], args, method="ga", train_dataset=FORGET, processing_class=tokenizer)
    with pytest.raises(ValueError, match="unknown method"):
        UnlearningTrainer(
            fresh(tiny)[0], args, method="gradient_ascent", forget_dataset=FORGET, processing_class=tokenizer
        )
    with pytest.raises(ValueError, match="--lora"):
        UnlearningTrainer(
            fresh(tiny)[0], args, method="ga", forget_dataset=FORGET, processing_class=tokenizer, lora="r=0"
        )
