"""The unlearning loop: one loop for every method (GA, GradDiff, NPO, SimNPO, WGA, GA×(1−λ), BS-T, BS-S).

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422). The loop knows no method
by name: ``cfg.method`` is a declaration of ``bs_ref.methods`` that says what its forget term is (calling its
loss file in ``bs_ref.losses``), whether it carries the retain term, its forget weight γ, and whether it needs
a frozen reference model or sampled beliefs. Every forget batch is paired with a retain batch and the loop
minimises (docs/theory.md §2, ``bs_ref.losses.regularised_loss``)

    L = γ · L_forget(D_u) + α · L_retain(D_r)

with ``L_retain`` the answer NLL on the retain batch or KL(π_θ ‖ π_ref) on its answer positions
(``bs_ref.losses.retain_loss``). A frozen reference copy π_ref is made only when something needs one. With
``cfg.lora`` (``bs_ref.lora``) only a LoRA adapter trains and π_ref is the same model with its adapter disabled:
no copy (``reference_model``).

A method's forget objective is one or more row sets (``Method.forget_terms``). One set (every method but
BS-S) is run in one forward and backwarded together with the retain term. Several sets (BS-S, Eq. 7: the
forget rows and the belief rows drawn by ``bs_ref.beliefs.BeliefCache``) are backwarded one after another, a
set with ``chunk_rows`` in row chunks (``backward_over_row_chunks``) whose pieces add up to the term, so peak
activation memory grows with the chunk, not with the number of beliefs N. Every backward goes through
``accelerator.backward``, so mixed-precision loss scaling applies to all of them.

The loop is written against ``accelerate.Accelerator``: the same code runs on one CPU, one GPU, or several
GPUs with ``accelerate launch``. Gradients of the micro-batches of one optimiser step are accumulated
locally (``no_sync``) and averaged across processes once, before the step. ``accelerator.prepare`` shards the
forget and retain loaders by batch from one shared permutation, so P processes × batch b see the rows of one
process × P·b (tests/test_multiprocess.py); BS-S caches use one seed on every process except when each process
samples its own rows every step (``belief_seed``). The logged numbers are averaged over the processes.

Every optimiser step appends one JSON line to ``log_path`` (flushed immediately): step, epoch, lr, the
forget/retain/total loss, the forget batch's mean answer log-prob, its top-k mass S_k (docs/theory.md D1/D2), and
the belief statistics of BS-S. A NaN/inf loss or weight stops the run with ``NonFiniteLossError``; the
log written so far stays on disk, with a final ``{"error": ...}`` line.

    model = unlearn(model, tokenizer, forget_records, retain_records, UnlearnConfig(method=BST(lam=0.2)))
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_scheduler

from bs_ref.beliefs import BeliefCache
from bs_ref.data.tofu import QADataset, collate_train
from bs_ref.lora import AdapterDisabled, apply_lora, is_lora_model, lora_problem
from bs_ref.losses import (
    IGNORE_INDEX,
    local_beliefs,
    regularised_loss,
    retain_loss,
    sequence_logprob,
)
from bs_ref.losses._common import per_row_sum
from bs_ref.methods import METHODS, ForgetTerm, Method, make_method
from bs_ref.models import bf16_attention_guard

SCHEDULES = ("linear", "constant", "cosine")
REDUCTIONS = ("row", "token")
"""The run-wide reductions of ``UnlearnConfig.reduction`` (docs/theory.md §11–12)."""


class NonFiniteLossError(FloatingPointError):
    """The loss or the weights became NaN/inf during unlearning (the learning rate is too high)."""


@dataclass
class UnlearnConfig:
    """Everything that changes an unlearning run besides the method's own hyper-parameters (which live in its
    declaration, ``bs_ref.methods``). Defaults follow the authors' TOFU configuration (docs/theory.md §7:
    lr 1e-5, 10 epochs, effective batch 32, weight decay 0.01, 1 warm-up epoch) except the batch size, which is
    per micro-batch here (effective batch = batch_size · grad_accum · processes)."""

    method: Method | str = field(default="bs_t", metadata={"cli": False})
    """The method's declaration (``bs_ref.methods``), or its name for the paper's defaults."""
    lr: float = field(default=1e-5, metadata={"help": "peak AdamW learning rate"})
    epochs: int = field(default=10, metadata={"help": "passes over the forget set (the retain set is cycled)"})
    batch_size: int = field(default=32, metadata={"help": "forget (and retain) examples per micro-batch"})
    grad_accum: int = field(default=1, metadata={"help": "micro-batches per optimiser step"})
    warmup: float = field(default=1.0, metadata={"help": "linear warm-up, in epochs (authors: 1)"})
    schedule: str = field(default="linear", metadata={"help": "after warm-up: linear (to 0) | constant | cosine"})
    weight_decay: float = field(default=0.01, metadata={"help": "AdamW weight decay (authors: 0.01)"})
    max_grad_norm: float | None = field(
        default=1.0, metadata={"help": "clip the global gradient norm (the HF Trainer default); None: off"}
    )
    max_steps: int | None = field(default=None, metadata={"help": "stop every method after this many steps"})
    alpha: float = field(default=1.0, metadata={"help": "retain weight α (GA has no retain term; 0 turns it off)"})
    retain_loss: str = field(
        default="nll", metadata={"help": "retain term: nll (answer NLL) | kl (KL(π_θ‖π_ref) on answer positions)"}
    )
    reduction: str = field(
        default="row",
        metadata={"help": "how every term (forget, retain, beliefs) averages its answer tokens: row (mean per answer, "
                  "then over answers: the paper's Eq. 1 and the authors' BS-T) | token (one token mean over the "
                  "batch: the authors' GA, WGA, retain terms and BS-S); docs/theory.md §11"},
    )  # fmt: skip
    lora: str | None = field(
        default=None,
        metadata={"help": "train a LoRA adapter only, e.g. r=8,alpha=16,targets=q_proj,v_proj (bs_ref.lora; pip "
                  "install -e '.[lora]'); NPO/KL's reference is the model with the adapter off; none: all weights"},
    )
    template: str = field(default="plain", metadata={"cli": False})
    """Prompt template of ``bs_ref.data.tofu`` ("plain" or "chat"); must match how the model was trained."""
    max_length: int | None = field(default=None, metadata={"cli": False})
    """Truncate prompt + answer to this many tokens (None: no truncation)."""
    seed: int = field(default=0, metadata={"cli": False})
    """Seed of the batch order and of the beliefs' sampling."""
    eval_every: int = field(default=0, metadata={"help": "light evaluation every N optimiser steps (0: end only)"})
    eval_at_start: bool = field(default=True, metadata={"cli": False})
    """Also call the callback once at step 0, before any update (the start of every trace)."""
    log_path: str | None = field(default=None, metadata={"cli": False})
    """JSON-Lines log of every optimiser step (None: no log)."""
    mixed_precision: str = field(default="no", metadata={"cli": False})
    """Passed to ``accelerate.Accelerator``: "no", "bf16" or "fp16"."""
    progress: bool = field(default=True, metadata={"cli": False})
    """Show a tqdm progress bar."""
    num_threads: int | None = field(default=None, metadata={"cli": False})
    """torch CPU threads during the run, restored afterwards (None: leave as is). Small models on a CPU
    shared with other processes run far faster with 1 (extra intra-op threads spin while they wait)."""
    extra: dict[str, Any] = field(default_factory=dict, metadata={"cli": False})
    """Free-form tags copied into the first log line (e.g. the experiment's method label)."""

    def __post_init__(self):
        if isinstance(self.method, str):
            self.method = make_method(self.method) if self.method in METHODS else self.method

    @property
    def uses_retain(self) -> bool:
        """Whether the retain term is on: methods that declare it, unless α = 0."""
        return self.method.retain and self.alpha > 0

    @property
    def needs_reference(self) -> bool:
        """Whether a frozen reference copy π_ref is needed (by the forget term, the KL retain term or a method's own
        retain term: RMU's)."""
        retain_ref = self.retain_loss == "kl" or self.method.retain_needs_reference
        return self.method.needs_reference or (self.uses_retain and retain_ref)

    def as_dict(self) -> dict[str, Any]:
        """The config as plain data (the method as its declaration's dict), for logs and config.json."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["method"] = self.method.as_dict()
        return out

    def validate(self) -> None:
        """Raise one ValueError naming the first bad field and its allowed values."""

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"{name}={getattr(self, name)!r} is invalid: {rule}")

        def finite(x) -> bool:
            return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

        def pos_int(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool) and x >= 1

        need(isinstance(self.method, Method), "method", f"give a declaration or one of {', '.join(METHODS)}")
        self.method.validate()
        need(finite(self.lr) and self.lr > 0, "lr", "must be a positive number (e.g. 1e-5)")
        need(pos_int(self.epochs), "epochs", "must be an integer >= 1")
        need(pos_int(self.batch_size), "batch_size", "must be an integer >= 1")
        need(pos_int(self.grad_accum), "grad_accum", "must be an integer >= 1")
        need(finite(self.warmup) and self.warmup >= 0, "warmup", "must be >= 0 (epochs of linear warm-up)")
        need(self.schedule in SCHEDULES, "schedule", f"choose one of {', '.join(SCHEDULES)}")
        need(finite(self.weight_decay) and self.weight_decay >= 0, "weight_decay", "must be >= 0")
        need(
            self.max_grad_norm is None or (finite(self.max_grad_norm) and self.max_grad_norm > 0),
            "max_grad_norm",
            "must be > 0 or None",
        )
        need(self.max_steps is None or pos_int(self.max_steps), "max_steps", "must be an integer >= 1 or None")
        need(finite(self.alpha) and self.alpha >= 0, "alpha", "must be >= 0")
        need(self.retain_loss in ("nll", "kl"), "retain_loss", "choose 'nll' or 'kl'")
        need(self.reduction in REDUCTIONS, "reduction", f"choose one of {', '.join(REDUCTIONS)}")
        whole_rows = f"{self.method.spec()} has the 'row' reduction only (share_prefix / belief_subsample weigh rows)"
        need(self.method.supports_reduction(self.reduction), "reduction", whole_rows)
        need(self.template in ("plain", "chat"), "template", "choose 'plain' or 'chat'")
        need(self.max_length is None or pos_int(self.max_length), "max_length", "must be an integer >= 1 or None")
        need(isinstance(self.seed, int) and not isinstance(self.seed, bool), "seed", "must be an integer")
        need(isinstance(self.eval_every, int) and self.eval_every >= 0, "eval_every", "must be an integer >= 0")
        need(self.mixed_precision in ("no", "bf16", "fp16"), "mixed_precision", "choose 'no', 'bf16' or 'fp16'")
        need(self.num_threads is None or pos_int(self.num_threads), "num_threads", "must be an integer >= 1 or None")
        problem = None
        if self.lora is not None:  # a string, so that as_dict() and the logs record it
            problem = lora_problem(self.lora) if isinstance(self.lora, str) else "give a spec string such as " \
                "r=8,alpha=16,targets=q_proj,v_proj (bs_ref.lora.LoraSpec.spec() writes one)"
        need(problem is None, "lora", problem or "")


def _model_inputs(batch: dict) -> dict:
    return {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}


def _cycle(loader):
    while True:
        yield from loader


def _weights_finite(model) -> bool:
    flags = [p.detach().isfinite().all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True


# -------------------------------------------------------------------------------------------------------------
# The loop
# -------------------------------------------------------------------------------------------------------------


def unlearn(
    model,
    tokenizer,
    forget_records: list[dict],
    retain_records: list[dict] | None,
    cfg: UnlearnConfig | None = None,
    callback: Callable[[int, Any], None] | None = None,
    accelerator=None,
):
    """Unlearn ``forget_records`` from ``model`` with ``cfg.method``; returns the (unwrapped) model.

    ``forget_records``/``retain_records`` are TOFU-schema dicts (``question``, ``answer``). ``callback(step,
    model)`` runs at step 0 (``cfg.eval_at_start``), every ``cfg.eval_every`` optimiser steps and after the
    last step, with the model in eval mode and no gradient. ``accelerator``: an ``accelerate.Accelerator``
    to use (default: a new one with ``cfg.mixed_precision``). The model is trained in place.
    """
    cfg = cfg or UnlearnConfig()
    cfg.validate()
    method = cfg.method
    if not forget_records:
        raise ValueError("forget_records is empty: there is nothing to unlearn (check the forget split)")
    if cfg.uses_retain and not retain_records:
        raise ValueError(
            f"method {method.name!r} uses a retain term (alpha={cfg.alpha}) but retain_records is empty; "
            "pass the retain split, or set alpha=0 to turn the retain term off"
        )
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token")
    vocab = model.get_output_embeddings().weight.shape[0]
    top_k = getattr(method, "top_k", None)
    if top_k is not None and top_k > vocab:
        raise ValueError(f"{method.name}:top_k={top_k} exceeds the vocabulary size {vocab}; lower top_k")

    accelerator = accelerator or Accelerator(mixed_precision=cfg.mixed_precision)
    set_seed(cfg.seed)
    if cfg.lora is not None:  # only the adapter trains (its A drawn under cfg.seed); π_ref: the adapter off
        model = apply_lora(model, cfg.lora)
    prepare_method(method, model, cfg.seed)  # RMU: its direction and the few layers that train
    pad_id = tokenizer.pad_token_id

    def collate(features):
        return collate_train(features, pad_id)

    forget_set = QADataset(forget_records, tokenizer, cfg.template, cfg.max_length)
    forget_loader = torch.utils.data.DataLoader(
        forget_set,
        batch_size=cfg.batch_size,
        shuffle=True,
        collate_fn=collate,
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    retain_loader = None
    if cfg.uses_retain:
        retain_loader = torch.utils.data.DataLoader(
            QADataset(retain_records, tokenizer, cfg.template, cfg.max_length),
            batch_size=cfg.batch_size,
            shuffle=True,
            collate_fn=collate,
            generator=torch.Generator().manual_seed(cfg.seed + 1),
        )

    # A frozen reference only where something needs one (NPO, the KL retain term, BS-S with the NPO base).
    ref_model = reference_model(model) if cfg.needs_reference else None

    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer, forget_loader = accelerator.prepare(model, optimizer, forget_loader)
    if retain_loader is not None:
        retain_loader = accelerator.prepare(retain_loader)
    if ref_model is not None:
        ref_model = ref_model.to(accelerator.device)

    batches_per_epoch = len(forget_loader)
    steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
    total_steps = cfg.epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total_steps = min(total_steps, cfg.max_steps)
    warmup_steps = min(int(round(cfg.warmup * steps_per_epoch)), total_steps)
    scheduler_name = {"linear": "linear", "constant": "constant_with_warmup", "cosine": "cosine"}[cfg.schedule]
    scheduler = get_scheduler(scheduler_name, optimizer, warmup_steps, total_steps)

    belief_cache, prompts_by_index = None, None
    if method.belief_sampling is not None:  # BS-S: global beliefs per forget item, cached by dataset index
        seed = belief_seed(cfg.seed, method.belief_sampling, accelerator.process_index)
        belief_cache = BeliefCache(**method.belief_sampling, seed=seed, template=cfg.template)
        if hasattr(method, "seed_subsample"):  # BS-S belief subsampling: its own stream per process, not the global RNG
            method.seed_subsample(cfg.seed + accelerator.process_index)
        prompts_by_index = forget_set.prompts()

    log_file = None
    if cfg.log_path is not None and accelerator.is_main_process:
        Path(cfg.log_path).parent.mkdir(parents=True, exist_ok=True)
        log_file = open(cfg.log_path, "w", encoding="utf-8")  # noqa: SIM115 — closed in the finally below

    def log(record: dict) -> None:
        if log_file is not None:
            log_file.write(json.dumps(record) + "\n")
            log_file.flush()

    def run_callback(step: int) -> None:
        if callback is None:
            return
        inner = accelerator.unwrap_model(model)
        inner.eval()
        with torch.no_grad():
            callback(step, inner)
        inner.train()

    def stop(what: str, step: int, epoch: float) -> None:
        message = (
            f"unlearning diverged: {what} at step {step} (epoch {epoch:.2f}) of method {method.spec()!r} with "
            f"lr={cfg.lr}; lower the learning rate (or keep max_grad_norm set)"
            + (f". The log up to this step is in {cfg.log_path}" if cfg.log_path else "")
        )
        log({"step": step, "epoch": epoch, "error": message})
        raise NonFiniteLossError(message)

    gamma, alpha = method.gamma, (cfg.alpha if cfg.uses_retain else 0.0)
    previous_threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    # accelerate's bf16 autocast on a CPU whose fused bf16 attention cannot run: the math kernel (bs_ref.models)
    attention = bf16_attention_guard(accelerator.device.type) if accelerator.mixed_precision == "bf16" else None
    if attention is not None:
        attention.__enter__()
    try:
        log(
            {
                "event": "start",
                "config": cfg.as_dict(),
                "gamma": gamma,
                "alpha": alpha,
                "n_forget": len(forget_set),
                "n_retain": len(retain_records or []) if cfg.uses_retain else 0,
                "total_steps": total_steps,
                "steps_per_epoch": steps_per_epoch,
                "reference_model": ref_model is not None,
                "num_processes": accelerator.num_processes,
            }
        )
        model.train()
        if cfg.eval_at_start:
            run_callback(0)
        retain_iter = _cycle(retain_loader) if retain_loader is not None else None
        bar = tqdm(
            total=total_steps, desc=f"unlearn {method.name}", disable=not (cfg.progress and accelerator.is_main_process)
        )
        step, micro, stats = 0, 0, _StepStats()
        done = False
        for epoch_index in range(cfg.epochs):
            for batch_index, forget_batch in enumerate(forget_loader):
                epoch = epoch_index + batch_index / batches_per_epoch
                if belief_cache is not None:
                    # refresh_epochs = 0 resamples every step: only this batch's prompts are needed
                    wanted = (
                        {i: prompts_by_index[i] for i in forget_batch["index"].tolist()}
                        if belief_cache.refresh_epochs == 0
                        else prompts_by_index
                    )
                    belief_cache.maybe_refresh(accelerator.unwrap_model(model), tokenizer, epoch, step, wanted)
                retain_batch = next(retain_iter) if retain_iter is not None else None
                scale = 1.0 / cfg.grad_accum
                try:
                    with accelerator.no_sync(model):
                        belief_batch = None
                        if belief_cache is not None:  # on CPU: each row chunk is moved when it runs
                            belief_batch = belief_cache.batch(forget_batch["index"].tolist(), pad_id)
                        terms = _micro_step(
                            cfg, model, ref_model, forget_batch, retain_batch, belief_batch, gamma, alpha, scale,
                            accelerator,
                        )  # fmt: skip
                except ValueError:
                    # the losses reject NaN/inf logits with a ValueError; name the cause when it is the weights
                    if not _weights_finite(model):
                        stop("the weights are NaN/inf (the logits are not finite)", step + 1, epoch)
                    raise
                for name in ("forget", "retain", "total"):
                    value = terms.get(name)
                    if value is not None and not math.isfinite(value):
                        stop(f"the {name} loss is {value}", step + 1, epoch)
                stats.add(terms)
                micro += 1
                last_batch = batch_index + 1 == batches_per_epoch
                if micro % cfg.grad_accum and not last_batch:
                    continue
                # one optimiser step
                if accelerator.num_processes > 1:
                    for p in model.parameters():
                        if p.grad is not None:
                            p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))
                if cfg.max_grad_norm is not None:
                    accelerator.clip_grad_norm_(model.parameters(), cfg.max_grad_norm)
                lr = scheduler.get_last_lr()[0]
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                micro = 0
                record = {"step": step, "epoch": round(epoch_index + (batch_index + 1) / batches_per_epoch, 6)}
                record.update(lr=lr, **stats.mean())
                if accelerator.num_processes > 1:  # the mean over every process's rows, not process 0's alone
                    record.update(_mean_over_processes(record, accelerator))
                if belief_cache is not None:
                    record["beliefs"] = belief_cache.stats()
                stats = _StepStats()
                if not _weights_finite(model):
                    stop("the weights became NaN/inf after the update", step, record["epoch"])
                log(record)
                bar.update(1)
                bar.set_postfix(loss=f"{record['loss']:.3f}", forget=f"{record['forget_loss']:.3f}")
                if step >= total_steps:
                    done = True
                elif cfg.eval_every and step % cfg.eval_every == 0:
                    run_callback(step)
                if done:
                    break
            if done:
                break
        bar.close()
        run_callback(step)
        log({"event": "end", "step": step})
    finally:
        if attention is not None:
            attention.__exit__(None, None, None)
        torch.set_num_threads(previous_threads)
        if log_file is not None:
            log_file.close()
    inner = accelerator.unwrap_model(model)
    inner.eval()
    return inner


def _mean_over_processes(record: dict, accelerator) -> dict:
    """The logged per-step numbers averaged over the processes (each a mean over its own rows)."""
    names = [k for k in ("forget_loss", "retain_loss", "loss", "forget_logprob", "topk_mass") if record[k] is not None]
    values = torch.tensor([float(record[k]) for k in names], dtype=torch.float64, device=accelerator.device)
    return dict(zip(names, accelerator.reduce(values, reduction="mean").tolist()))


class _StepStats:
    """Averages the per-micro-batch numbers of one optimiser step."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, int] = {}

    def add(self, terms: dict) -> None:
        for name, value in terms.items():
            if value is not None:
                self.sums[name] = self.sums.get(name, 0.0) + float(value)
                self.counts[name] = self.counts.get(name, 0) + 1

    def mean(self) -> dict:
        names = {"forget": "forget_loss", "retain": "retain_loss", "total": "loss"}
        out = {"forget_loss": None, "retain_loss": None, "loss": None, "forget_logprob": None, "topk_mass": None}
        for name, total in self.sums.items():
            out[names.get(name, name)] = total / self.counts[name]
        return out


def _micro_step(cfg, model, ref_model, forget_batch, retain_batch, belief_batch, gamma, alpha, scale,
                accelerator) -> dict:  # fmt: skip
    """Forward + backward of one (forget, retain) micro-batch; returns the detached numbers to log."""
    return micro_step(cfg.method, model, forget_batch, retain_batch, belief_batch, gamma=gamma, alpha=alpha,
                      retain_kind=cfg.retain_loss, scale=scale, backward=accelerator.backward,
                      ref_model=ref_model, reduction=cfg.reduction)  # fmt: skip


def prepare_method(method: Method, model, seed: int = 0) -> None:
    """Before the optimiser exists: let the method fix what it draws once (``Method.prepare``; RMU's direction,
    under ``seed``) and freeze every parameter outside ``Method.trainable_names`` (None: nothing is frozen)."""
    method.prepare(model, seed)
    names = method.trainable_names(model)
    if names is not None:
        keep = set(names)
        for name, parameter in model.named_parameters():
            if name not in keep:
                parameter.requires_grad_(False)


def micro_step(method: Method, model, forget_batch: dict, retain_batch: dict | None = None,
               belief_batch: dict | None = None, *, gamma: float | None = None, alpha: float = 0.0,
               retain_kind: str = "nll", scale: float = 1.0, backward=None, ref_model=None,
               reduction: str = "row") -> dict:  # fmt: skip
    """Forward + backward of ``scale · (γ·L_forget + α·L_retain)`` on one (forget, retain) micro-batch, exactly as
    the loop runs it (``bs_ref.hf.UnlearningTrainer`` runs the same function); returns the detached numbers to
    log: ``forget``, ``retain``, ``total``, ``forget_logprob``, ``topk_mass``.

    One row set (every method but BS-S) is one forward, backwarded together with the retain term; several (BS-S,
    Eq. 7) are backwarded one after another, the belief rows in row chunks (``forget_backward``). ``gamma``
    defaults to the method's γ; ``alpha = 0`` or ``retain_batch=None`` leaves the retain term out; ``retain_kind``
    is "nll" or "kl" (KL needs ``ref_model``). ``backward`` defaults to ``Tensor.backward`` (the loop passes
    ``accelerator.backward``). ``ref_model``: π_ref (``reference_model``), needed by NPO and the KL retain term.
    ``reduction`` ("row" | "token", docs/theory.md §11) reduces every term: forget, beliefs and retain. A method
    with a retain term of its own (``Method.retain_term``: RMU's) uses it in place of ``retain_kind``'s.
    The caller accumulates, reduces across processes, clips and steps the optimiser."""
    gamma = method.gamma if gamma is None else gamma
    backward = backward if backward is not None else torch.Tensor.backward
    terms = method.forget_terms(forget_batch, belief_batch, reduction=reduction)
    ref = ref_model if method.needs_reference else None
    one_pass = len(terms) == 1 and terms[0].chunk_rows is None and terms[0].run is None
    if one_pass:  # one forward; backwarded together with the retain term below
        forget_term, logits, labels = _forward_term(model, terms[0], ref)
        stats = _forget_stats(logits, labels, method.top_k_for_logging)
        stats["forget"] = float(forget_term.detach())
        del logits
    else:  # several row sets (BS-S): backwarded one after another, in row chunks where declared
        forget_term = None
        stats = forget_backward(method, model, forget_batch, belief_batch, loss_scale=gamma * scale,
                                backward=backward, ref_model=ref_model, reduction=reduction)  # fmt: skip
    retain_term = None
    own_retain = method.retain_term(model, retain_batch, ref_model, reduction) if (
        retain_batch is not None and alpha > 0) else None  # fmt: skip
    if own_retain is not None:
        retain_term = own_retain
        stats["retain"] = float(retain_term.detach())
    elif retain_batch is not None and alpha > 0:
        retain_logits = model(**_model_inputs(retain_batch)).logits
        ref_retain_logits = None
        if retain_kind == "kl":
            if ref_model is None:
                raise ValueError("retain_kind='kl' needs ref_model: π_ref on the same rows (see reference_model)")
            with torch.no_grad():
                ref_retain_logits = ref_model(**_model_inputs(retain_batch)).logits
        retain_term = retain_loss(retain_logits, retain_batch["labels"], retain_kind, ref_retain_logits, reduction)
        stats["retain"] = float(retain_term.detach())
    stats["total"] = gamma * stats["forget"] + alpha * (stats.get("retain") or 0.0)
    if not math.isfinite(stats["total"]):
        return stats  # the loop stops with NonFiniteLossError
    if one_pass:
        backward(regularised_loss(forget_term, retain_term, gamma, alpha) * scale)  # L = γ·L_f + α·L_r
    elif retain_term is not None:
        backward(alpha * retain_term * scale)
    return stats


PROCESS_SEED_STRIDE = 1_000_003
"""Offset between the belief seeds of two processes that sample different prompts (more refreshes than any run)."""


def belief_seed(seed: int, sampling: dict, process_index: int = 0) -> int:
    """The BS-S belief cache's seed on process ``process_index`` of a multi-process run.

    A refresh of the whole forget set (off-policy, or on-policy every ``refresh_epochs`` > 0) samples the same
    prompts on every process: one seed everywhere gives every process the cache one process would hold, so an
    item's beliefs do not depend on the number of processes (and 2 processes × b rows give the weights of 1 × 2b).
    A refresh every step (on-policy, ``refresh_epochs`` = 0) samples only the process's own batch: each process
    then draws from its own stream, ``seed + PROCESS_SEED_STRIDE · process_index``. Process 0 always keeps
    ``seed``, so a one-process run is unchanged."""
    per_batch = sampling.get("regime") == "on_policy" and float(sampling.get("refresh_epochs", 1.0)) == 0.0
    return seed + PROCESS_SEED_STRIDE * process_index if per_batch else seed


def reference_model(model):
    """π_ref, the frozen original model that NPO and the KL retain term compare against: for a model with a LoRA
    adapter, the same model with its adapter disabled (``bs_ref.lora.AdapterDisabled``; no second copy in memory,
    and since LoRA starts at B = 0 it is exactly the initial policy); otherwise a frozen deep copy in eval mode."""
    if is_lora_model(model):
        return AdapterDisabled(model)
    ref_model = copy.deepcopy(model).eval()
    ref_model.requires_grad_(False)
    return ref_model


def forget_backward(method: Method, model, forget_batch: dict, belief_batch: dict | None = None, *,
                    loss_scale: float = 1.0, backward=None, ref_model=None,
                    reduction: str = "row") -> dict:  # fmt: skip
    """Backward ``loss_scale · L_forget`` of ``method`` on one forget batch (and its belief rows), term by term
    and chunk by chunk (``backward_over_row_chunks``); the caller steps the optimiser. ``backward`` defaults to
    ``Tensor.backward`` (the loop passes ``accelerator.backward``). Returns the detached ``forget``
    (L_forget = Σ weight · term: Eq. 7 for BS-S), ``forget_logprob`` and ``topk_mass`` of the forget rows."""
    run_backward = backward if backward is not None else torch.Tensor.backward
    ref = ref_model if method.needs_reference else None
    if method.needs_reference and ref_model is None:
        raise ValueError(f"method {method.spec()!r} needs ref_model (a frozen copy of the original model)")
    stats: dict[str, float | None] = {}
    weighted = []
    for index, term in enumerate(method.forget_terms(forget_batch, belief_batch, reduction=reduction)):
        if term.run is not None:  # a term that runs its own rows (BS-S prefix sharing / subsampling, bs_ref.prefix)
            value, term_stats = term.run(model, loss_scale * term.weight, run_backward, ref)
            if index == 0:
                stats.update(term_stats)
        elif term.chunk_rows is not None:
            value, _ = backward_over_row_chunks(model, term, loss_scale, run_backward, ref)
        else:
            piece, logits, labels = _forward_term(model, term, ref)
            if index == 0:
                stats.update(_forget_stats(logits, labels, method.top_k_for_logging))
            run_backward(loss_scale * term.weight * piece)
            value = piece.detach()
            del logits, piece
        weighted.append(term.weight * value)
    stats["forget"] = float(sum(weighted))
    return stats


def _forward_term(model, term: ForgetTerm, ref_model=None):
    """(piece on all of the term's rows, logits, labels) in one forward (the term's own ``forward`` where it has
    one: its piece then takes the features that forward returns, RMU's hidden states)."""
    device = next(model.parameters()).device
    rows = {k: v.to(device) for k, v in term.rows.items() if isinstance(v, torch.Tensor)}
    if term.forward is not None:
        features, logits = term.forward(model, rows)
    else:
        features = logits = model(**_model_inputs(rows)).logits
    ref_lp = _ref_logprobs(ref_model, rows) if ref_model is not None else None
    return term.piece(features, rows["labels"], ref_lp), logits, rows["labels"]


@torch.no_grad()
def _forget_stats(logits: torch.Tensor, labels: torch.Tensor, top_k: int) -> dict:
    """Mean answer log-prob of the forget rows and their mean top-k mass S_k (docs/theory.md D1/D2)."""
    beliefs, at = local_beliefs(logits.detach(), labels, top_k=min(top_k, logits.shape[-1]))  # one gather for both
    return {
        "forget_logprob": float((per_row_sum(at.target_logprob(), at) / at.counts.clamp(min=1)).mean()),
        "topk_mass": float(beliefs.topk_mass.mean()),
    }


def backward_over_row_chunks(model, term: ForgetTerm, loss_scale: float, backward, ref_model=None):
    """Run ``term.rows`` through ``model`` ``term.chunk_rows`` rows at a time and backward each chunk's piece
    ``loss_scale · term.weight · term.piece(...)`` as it goes; returns (Σ pieces, detached; chunks run).

    Rows are taken longest first (each chunk carries little padding) and all-padding columns on the right of a
    chunk are dropped; a chunk without answer tokens is skipped. The pieces are defined so that they add up to
    the whole term (e.g. ``bs_ref.losses.belief_piece``), so the summed gradient is the gradient of the term on
    all rows at once, while peak activation memory grows with ``chunk_rows`` only. Knows no method.
    """
    device = next(model.parameters()).device
    labels = term.rows["labels"]
    attention = _attention_mask(term.rows)
    by_length = torch.argsort(attention.sum(dim=1), descending=True, stable=True)
    ids, labels, attention = term.rows["input_ids"][by_length], labels[by_length], attention[by_length]
    total, chunks = None, 0
    for start in range(0, labels.shape[0], term.chunk_rows):
        rows = slice(start, start + term.chunk_rows)
        chunk_attention = attention[rows]
        width = int(chunk_attention.any(dim=0).nonzero().max()) + 1  # drop all-padding columns on the right
        chunk = {"input_ids": ids[rows, :width].to(device), "attention_mask": chunk_attention[:, :width].to(device),
                 "labels": labels[rows, :width].to(device)}  # fmt: skip
        if not bool((chunk["labels"][:, 1:] != IGNORE_INDEX).any()):
            continue
        ref_lp = _ref_logprobs(ref_model, chunk) if ref_model is not None else None
        logits = model(**_model_inputs(chunk)).logits
        piece = term.piece(logits, chunk["labels"], ref_lp)
        backward(loss_scale * term.weight * piece)
        total = piece.detach() if total is None else total + piece.detach()
        chunks += 1
        del logits, piece
    if total is None:
        total = torch.zeros(())
    return total, chunks


@torch.no_grad()
def _ref_logprobs(ref_model, rows: dict) -> torch.Tensor:
    """log π_ref(y|x) of each row (summed over answer tokens), from the frozen reference model."""
    device = next(ref_model.parameters()).device
    logits = ref_model(input_ids=rows["input_ids"].to(device), attention_mask=_attention_mask(rows).to(device)).logits
    return sequence_logprob(logits, rows["labels"].to(device))


def _attention_mask(batch: dict) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return mask if mask is not None else torch.ones_like(batch["input_ids"])
