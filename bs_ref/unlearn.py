"""The unlearning loop: one loop for every method (GA, GradDiff, NPO, SimNPO, WGA, GA×(1−λ), BS-T, BS-S).

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422). The objectives live in
``bs_ref.losses`` (one file each, SPEC §2–4); this file pairs every forget batch with a retain batch and
minimises (SPEC §2)

    L = γ · L_forget(D_u) + α · L_retain(D_r)

with ``L_retain`` the answer NLL on the retain batch or KL(π_θ ‖ π_ref) on its answer positions. GA alone
has no retain term (Eq. 1); GradDiff is GA + retain (Eq. 2); every other method also carries the retain
term. SimNPO's forget weight defaults to γ = 0.125 (SPEC §2), every other γ to 1. A frozen reference copy
π_ref is made only when a loss needs one: NPO (Eq. 3), the KL retain term, and BS-S with the NPO base.

BS-S (Eq. 7) draws global beliefs from ``bs_ref.beliefs.BeliefCache`` (off-policy: sampled once from θ_o
before the first step; on-policy: resampled every ``refresh_epochs``) and its forget term is evaluated by
``bs_ref.beliefs.bs_s_forward_backward``, which micro-batches the belief rows and runs the backward passes
itself (through ``accelerator.backward``, so mixed-precision loss scaling applies to it as to every method).

The loop is written against ``accelerate.Accelerator``: the same code runs on one CPU, one GPU, or several
GPUs with ``accelerate launch``. Gradients of the micro-batches of one optimiser step are accumulated
locally (``no_sync``) and averaged across processes once, before the step.

Every optimiser step appends one JSON line to ``log_path`` (flushed immediately): step, epoch, lr, the
forget/retain/total loss, the forget batch's mean answer log-prob, its top-k mass S_k (SPEC D1/D2), and
the belief statistics of BS-S. A NaN/inf loss or weight stops the run with ``NonFiniteLossError``; the
log written so far stays on disk, with a final ``{"error": ...}`` line.

    model = unlearn(model, tokenizer, forget_records, retain_records, UnlearnConfig(method="bs_t"))
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from bs_ref.losses import (
    BASE_LOSSES,
    bs_t_loss,
    ga_loss,
    ga_scaled_loss,
    local_beliefs,
    mean_token_logprob,
    npo_loss,
    retain_kl_loss,
    retain_nll_loss,
    sequence_logprob,
    simnpo_loss,
    wga_loss,
)

METHODS = ("ga", "graddiff", "npo", "simnpo", "wga", "ga_scaled", "bs_t", "bs_s")
SCHEDULES = ("linear", "constant", "cosine")
REGIMES = ("off_policy", "on_policy")
SELECTS = ("sample", "filter", "beam")
DEFAULT_GAMMA = {"simnpo": 0.125}
"""Forget weight γ when ``UnlearnConfig.gamma`` is None: 0.125 for SimNPO (SPEC §2), else 1."""


class NonFiniteLossError(FloatingPointError):
    """The loss or the weights became NaN/inf during unlearning (the learning rate is too high)."""


@dataclass
class UnlearnConfig:
    """Everything that changes an unlearning run. Defaults follow the authors' TOFU configuration
    (SPEC §7: lr 1e-5, 10 epochs, effective batch 32, weight decay 0.01, 1 warm-up epoch) except the
    batch size, which is per micro-batch here (effective batch = batch_size · grad_accum · processes)."""

    method: str = "bs_t"
    """One of ``METHODS``."""
    lr: float = 1e-5
    """Peak learning rate of AdamW."""
    epochs: int = 10
    """Passes over the forget set (the retain set is cycled alongside)."""
    batch_size: int = 32
    """Forget (and retain) examples per micro-batch and process."""
    grad_accum: int = 1
    """Micro-batches accumulated into one optimiser step."""
    warmup: float = 1.0
    """Linear warm-up length in **epochs** (the authors warm up for one epoch)."""
    schedule: str = "linear"
    """Learning-rate schedule after warm-up: linear decay to 0, constant, or cosine (``SCHEDULES``)."""
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm (1.0: the Hugging Face Trainer default the authors ran with; None: off)."""
    max_steps: int | None = None
    """Stop after this many optimiser steps (None: ``epochs`` decide). Gives methods equal budgets."""
    gamma: float | None = None
    """Forget weight γ; None means the method's default (``DEFAULT_GAMMA``)."""
    alpha: float = 1.0
    """Retain weight α (ignored by GA, which has no retain term; 0 turns the term off for any method)."""
    retain_loss: str = "nll"
    """Retain term: "nll" (answer NLL) or "kl" (KL(π_θ‖π_ref) on answer positions; makes a reference copy)."""
    # --- BS-T (Eq. 5-6); lam is also the λ of the GA×(1−λ) control -----------------------------------------
    lam: float = 0.2
    """BS-T belief weight λ_BST (authors: 0.2); GA×(1−λ) uses the same λ, so the two are comparable."""
    top_k: int = 20
    """BS-T local belief support size k."""
    temperature: float = 1.0
    """BS-T belief temperature τ (SPEC D4; the authors' code has τ = 1)."""
    # --- BS-S (Eq. 7) -----------------------------------------------------------------------------------
    lam_bss: float = 0.5
    """BS-S weight λ_BSS of the belief term (authors: 0.5)."""
    base: str = "bs_t"
    """BS-S base loss L_base: "bs_t" (the paper's best), "ga" (the authors' released class), "npo", "wga"."""
    n_beliefs: int = 3
    """Global beliefs N per forget prompt."""
    regime: str = "off_policy"
    """"off_policy": beliefs sampled once from θ_o (Theorem 5.3); "on_policy": resampled every refresh_epochs."""
    refresh_epochs: float = 1.0
    """On-policy refresh period R in epochs."""
    select: str = "sample"
    """How beliefs are drawn: "sample", "filter" (best n_beliefs of belief_candidates by mean log-prob), "beam"."""
    belief_candidates: int | None = None
    """M ≥ N candidates drawn for select="filter" (None: 2·N)."""
    belief_temperature: float = 1.0
    """Sampling temperature τ_s of the global beliefs."""
    belief_top_p: float = 1.0
    belief_max_new_tokens: int = 64
    belief_microbatch: int = 8
    """Belief rows per forward/backward (bounds memory as N grows)."""
    # --- NPO / SimNPO / WGA -----------------------------------------------------------------------------
    npo_beta: float = 0.1
    simnpo_beta: float = 4.5
    simnpo_delta: float = 0.0
    wga_beta: float = 1.0
    # --- data, bookkeeping ------------------------------------------------------------------------------
    template: str = "plain"
    """Prompt template of ``bs_ref.data.tofu`` ("plain" or "chat"); must match how the model was trained."""
    max_length: int | None = None
    """Truncate prompt + answer to this many tokens (None: no truncation)."""
    seed: int = 0
    eval_every: int = 0
    """Call ``callback(step, model)`` every this many optimiser steps (0: only at the end)."""
    eval_at_start: bool = True
    """Also call the callback once at step 0, before any update (the start of every trace)."""
    log_path: str | None = None
    """JSON-Lines log of every optimiser step (None: no log)."""
    mixed_precision: str = "no"
    """Passed to ``accelerate.Accelerator``: "no", "bf16" or "fp16"."""
    progress: bool = True
    """Show a tqdm progress bar."""
    num_threads: int | None = None
    """torch CPU threads during the run, restored afterwards (None: leave as is). Small models on a CPU
    shared with other processes run far faster with 1 (extra intra-op threads spin while they wait)."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Free-form tags copied into the first log line (e.g. the experiment's method label)."""

    @property
    def forget_weight(self) -> float:
        """γ actually used."""
        return float(self.gamma) if self.gamma is not None else DEFAULT_GAMMA.get(self.method, 1.0)

    @property
    def uses_retain(self) -> bool:
        """Whether the retain term is on: every method except plain GA, unless α = 0."""
        return self.method != "ga" and self.alpha > 0

    @property
    def needs_reference(self) -> bool:
        """Whether a frozen reference copy π_ref is needed."""
        return (
            self.method == "npo"
            or (self.method == "bs_s" and self.base == "npo")
            or (self.uses_retain and self.retain_loss == "kl")
        )

    def validate(self) -> None:
        """Raise one ValueError naming the first bad field and its allowed values."""

        def need(ok: bool, name: str, rule: str) -> None:
            if not ok:
                raise ValueError(f"UnlearnConfig.{name}={getattr(self, name)!r} is invalid: {rule}")

        def finite(x) -> bool:
            return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)

        def pos_int(x) -> bool:
            return isinstance(x, int) and not isinstance(x, bool) and x >= 1

        need(self.method in METHODS, "method", f"choose one of {', '.join(METHODS)}")
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
        need(self.gamma is None or (finite(self.gamma) and self.gamma > 0), "gamma", "must be > 0 or None")
        need(finite(self.alpha) and self.alpha >= 0, "alpha", "must be >= 0")
        need(self.retain_loss in ("nll", "kl"), "retain_loss", "choose 'nll' or 'kl'")
        need(finite(self.lam) and 0 <= self.lam <= 1, "lam", "must lie in [0, 1]")
        need(pos_int(self.top_k), "top_k", "must be an integer >= 1 (and at most the vocabulary size)")
        need(finite(self.temperature) and self.temperature > 0, "temperature", "must be > 0")
        need(finite(self.lam_bss) and 0 <= self.lam_bss <= 1, "lam_bss", "must lie in [0, 1]")
        need(self.base in BASE_LOSSES, "base", f"choose one of {', '.join(sorted(BASE_LOSSES))}")
        need(pos_int(self.n_beliefs), "n_beliefs", "must be an integer >= 1")
        need(self.regime in REGIMES, "regime", f"choose one of {', '.join(REGIMES)}")
        need(finite(self.refresh_epochs) and self.refresh_epochs >= 0, "refresh_epochs", "must be >= 0 (0: every step)")
        need(self.select in SELECTS, "select", f"choose one of {', '.join(SELECTS)}")
        need(
            self.belief_candidates is None or (pos_int(self.belief_candidates) and self.belief_candidates >= 1),
            "belief_candidates",
            "must be an integer >= n_beliefs or None",
        )
        need(finite(self.belief_temperature) and self.belief_temperature > 0, "belief_temperature", "must be > 0")
        need(finite(self.belief_top_p) and 0 < self.belief_top_p <= 1, "belief_top_p", "must lie in (0, 1]")
        need(pos_int(self.belief_max_new_tokens), "belief_max_new_tokens", "must be an integer >= 1")
        need(pos_int(self.belief_microbatch), "belief_microbatch", "must be an integer >= 1")
        for name in ("npo_beta", "simnpo_beta"):
            need(finite(getattr(self, name)) and getattr(self, name) > 0, name, "must be > 0")
        need(finite(self.simnpo_delta), "simnpo_delta", "must be a finite number")
        need(finite(self.wga_beta) and self.wga_beta >= 0, "wga_beta", "must be >= 0")
        need(self.template in ("plain", "chat"), "template", "choose 'plain' or 'chat'")
        need(self.max_length is None or pos_int(self.max_length), "max_length", "must be an integer >= 1 or None")
        need(isinstance(self.seed, int) and not isinstance(self.seed, bool), "seed", "must be an integer")
        need(isinstance(self.eval_every, int) and self.eval_every >= 0, "eval_every", "must be an integer >= 0")
        need(self.mixed_precision in ("no", "bf16", "fp16"), "mixed_precision", "choose 'no', 'bf16' or 'fp16'")
        need(self.num_threads is None or pos_int(self.num_threads), "num_threads", "must be an integer >= 1 or None")


# -------------------------------------------------------------------------------------------------------------
# Forget objectives (SPEC §2-3); BS-S is handled by bs_ref.beliefs.bs_s_forward_backward
# -------------------------------------------------------------------------------------------------------------


def forget_loss(cfg: UnlearnConfig, logits: torch.Tensor, labels: torch.Tensor, ref_logits=None) -> torch.Tensor:
    """L_forget of ``cfg.method`` on one forget batch (the scalar to minimise, before γ)."""
    m = cfg.method
    if m in ("ga", "graddiff"):
        return ga_loss(logits, labels)  # Eq. (1); GradDiff adds the retain term, Eq. (2)
    if m == "ga_scaled":
        return ga_scaled_loss(logits, labels, lam=cfg.lam)  # control GA×(1−λ), SPEC §2 / D2
    if m == "npo":
        return npo_loss(logits, labels, sequence_logprob(ref_logits, labels), beta=cfg.npo_beta)  # Eq. (3)
    if m == "simnpo":
        return simnpo_loss(logits, labels, beta=cfg.simnpo_beta, delta=cfg.simnpo_delta)
    if m == "wga":
        return wga_loss(logits, labels, beta=cfg.wga_beta)  # Eq. (4)
    if m == "bs_t":
        return bs_t_loss(logits, labels, lam=cfg.lam, top_k=cfg.top_k, temperature=cfg.temperature)  # Eq. (5)-(6)
    raise ValueError(f"forget_loss has no single-batch form for method {m!r}")


def bs_s_base_kwargs(cfg: UnlearnConfig) -> dict[str, Any]:
    """Hyper-parameters of the BS-S base loss (NPO's reference log-probs are added by the beliefs module)."""
    if cfg.base == "bs_t":
        return {"lam": cfg.lam, "top_k": cfg.top_k, "temperature": cfg.temperature}
    if cfg.base == "npo":
        return {"beta": cfg.npo_beta}
    if cfg.base == "wga":
        return {"beta": cfg.wga_beta}
    return {}


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
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from tqdm.auto import tqdm
    from transformers import get_scheduler

    from bs_ref.data.tofu import QADataset, collate_train

    cfg = cfg or UnlearnConfig()
    cfg.validate()
    if not forget_records:
        raise ValueError("forget_records is empty: there is nothing to unlearn (check the forget split)")
    if cfg.uses_retain and not retain_records:
        raise ValueError(
            f"method {cfg.method!r} uses a retain term (alpha={cfg.alpha}) but retain_records is empty; "
            "pass the retain split, or set alpha=0 to turn the retain term off"
        )
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token")
    vocab = model.get_output_embeddings().weight.shape[0]
    if cfg.method in ("bs_t", "bs_s") and cfg.top_k > vocab:
        raise ValueError(f"UnlearnConfig.top_k={cfg.top_k} exceeds the vocabulary size {vocab}; lower top_k")

    accelerator = accelerator or Accelerator(mixed_precision=cfg.mixed_precision)
    set_seed(cfg.seed)
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

    # A frozen reference copy only where a loss needs one (NPO, KL retain, BS-S with the NPO base).
    ref_model = None
    if cfg.needs_reference:
        ref_model = copy.deepcopy(model).eval()
        ref_model.requires_grad_(False)

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

    belief_cache, prompts_by_index, bs_s_forward_backward = None, None, None
    if cfg.method == "bs_s":
        belief_cache, bs_s_forward_backward = _make_belief_cache(cfg)
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
            f"unlearning diverged: {what} at step {step} (epoch {epoch:.2f}) of method {cfg.method!r} with "
            f"lr={cfg.lr}; lower the learning rate (or keep max_grad_norm set)"
            + (f". The log up to this step is in {cfg.log_path}" if cfg.log_path else "")
        )
        log({"step": step, "epoch": epoch, "error": message})
        raise NonFiniteLossError(message)

    gamma, alpha = cfg.forget_weight, (cfg.alpha if cfg.uses_retain else 0.0)
    previous_threads = torch.get_num_threads()
    if cfg.num_threads is not None:
        torch.set_num_threads(cfg.num_threads)
    try:
        log(
            {
                "event": "start",
                "config": asdict(cfg),
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
            total=total_steps, desc=f"unlearn {cfg.method}", disable=not (cfg.progress and accelerator.is_main_process)
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
                        if cfg.refresh_epochs == 0
                        else prompts_by_index
                    )
                    belief_cache.maybe_refresh(accelerator.unwrap_model(model), tokenizer, epoch, step, wanted)
                retain_batch = next(retain_iter) if retain_iter is not None else None
                scale = 1.0 / cfg.grad_accum
                try:
                    with accelerator.no_sync(model):
                        terms = _micro_step(
                            cfg, model, ref_model, forget_batch, retain_batch, belief_cache, bs_s_forward_backward,
                            gamma, alpha, scale, pad_id, accelerator,
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
        torch.set_num_threads(previous_threads)
        if log_file is not None:
            log_file.close()
    inner = accelerator.unwrap_model(model)
    inner.eval()
    return inner


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


def _micro_step(
    cfg, model, ref_model, forget_batch, retain_batch, belief_cache, bs_s_forward_backward, gamma, alpha, scale,
    pad_id, accelerator,
) -> dict:  # fmt: skip
    """Forward + backward of one (forget, retain) micro-batch; returns the detached numbers to log."""
    terms: dict[str, float | None] = {}
    if cfg.method == "bs_s":
        indices = forget_batch["index"].tolist()
        belief_batch = belief_cache.batch(indices, pad_id)  # stays on CPU: each micro-batch is moved when used
        out = bs_s_forward_backward(
            model,
            forget_batch,
            belief_batch,
            lam_bss=cfg.lam_bss,
            base=cfg.base,
            base_kwargs=bs_s_base_kwargs(cfg),
            belief_microbatch=cfg.belief_microbatch,
            loss_scale=gamma * scale,
            ref_model=ref_model,
            backward=accelerator.backward,
            log_top_k=cfg.top_k,
        )  # Eq. (7): (1 − λ_BSS)·L_base(D_u) + λ_BSS·L_base(D̂_u), backward done inside
        forget_value = float(out["loss"])
        terms["belief_term"] = None if out.get("belief_term") is None else float(out["belief_term"])
        terms["forget_logprob"], terms["topk_mass"] = out["forget_logprob"], out.get("topk_mass")
        forget_term = None
    else:
        logits = model(**_model_inputs(forget_batch)).logits
        ref_logits = None
        if cfg.method == "npo":
            with torch.no_grad():
                ref_logits = ref_model(**_model_inputs(forget_batch)).logits
        labels = forget_batch["labels"]
        forget_term = forget_loss(cfg, logits, labels, ref_logits)
        forget_value = float(forget_term.detach())
        with torch.no_grad():
            terms["forget_logprob"] = float(mean_token_logprob(logits.detach(), labels).mean())
            k = min(cfg.top_k, logits.shape[-1])
            terms["topk_mass"] = float(local_beliefs(logits.detach(), labels, top_k=k)[0].topk_mass.mean())
    terms["forget"] = forget_value
    total = gamma * forget_term if forget_term is not None else None
    if retain_batch is not None and alpha > 0:
        retain_logits = model(**_model_inputs(retain_batch)).logits
        if cfg.retain_loss == "kl":
            with torch.no_grad():
                ref_retain_logits = ref_model(**_model_inputs(retain_batch)).logits
            retain_term = retain_kl_loss(retain_logits, ref_retain_logits, retain_batch["labels"])
        else:
            retain_term = retain_nll_loss(retain_logits, retain_batch["labels"])
        terms["retain"] = float(retain_term.detach())
        total = alpha * retain_term if total is None else total + alpha * retain_term  # L = γ·L_forget + α·L_retain
    terms["total"] = gamma * forget_value + alpha * (terms.get("retain") or 0.0)
    if total is not None and math.isfinite(terms["total"]):
        accelerator.backward(total * scale)
    return terms


def _make_belief_cache(cfg: UnlearnConfig):
    """The BS-S belief cache and the micro-batched forward/backward of ``bs_ref.beliefs``."""
    try:
        from bs_ref.beliefs import BeliefCache, bs_s_forward_backward
    except ImportError as err:
        raise ValueError(f"method 'bs_s' needs bs_ref.beliefs (BeliefCache, bs_s_forward_backward): {err}") from None
    cache = BeliefCache(
        regime=cfg.regime,
        refresh_epochs=cfg.refresh_epochs,
        n=cfg.n_beliefs,
        select=cfg.select,
        m=cfg.belief_candidates,
        temperature=cfg.belief_temperature,
        top_p=cfg.belief_top_p,
        max_new_tokens=cfg.belief_max_new_tokens,
        seed=cfg.seed,
    )
    return cache, bs_s_forward_backward
