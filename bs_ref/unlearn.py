"""The unlearning loop: one loop for every method (GA, GradDiff, NPO, SimNPO, WGA, RMU, the controls, BS-T, BS-S).

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422). The loop knows no method
by name: ``cfg.method`` is a declaration of ``bs_ref.methods`` that says what its forget term is (its row sets and
the loss file in ``bs_ref.losses`` that scores them), whether it carries the retain term, its forget weight γ,
and whether it needs a frozen reference model or sampled beliefs. Every forget batch is paired with a retain
batch and the loop minimises (docs/theory.md §2, ``bs_ref.losses.regularised_loss``)

    L = γ · L_forget(D_u) + α · L_retain(D_r)

with ``L_retain`` the answer NLL on the retain batch or KL(π_θ ‖ π_ref) on its answer positions
(``bs_ref.losses.retain_loss``). A frozen reference copy π_ref is made only when something needs one. With
``cfg.lora`` (``bs_ref.lora``) only a LoRA adapter trains and π_ref is the same model with its adapter disabled:
no copy (``reference_model``).

One forget batch, step by step: ``unlearn`` draws it with a retain batch (and, for BS-S, the items' cached
belief rows from ``bs_ref.beliefs.BeliefCache``); ``bs_ref.runner.micro_step`` asks the method for its row sets
(``Method.forget_terms``), runs each through ``bs_ref.runner.run_rows`` (chunk by chunk, each chunk scored by the
loss the declaration names) and backwards L; every ``grad_accum`` micro-batches the optimiser steps and the step
is logged. Every backward goes through ``accelerator.backward``, so mixed-precision loss scaling applies to all.

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

import contextlib
import copy
import functools
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

from bs_ref.beliefs import BeliefCache, BeliefSampling
from bs_ref.data.qa import QADataset, collate_train
from bs_ref.lora import AdapterDisabled, apply_lora, is_lora_model, lora_problem
from bs_ref.methods import METHODS, Method, make_method
from bs_ref.models import bf16_attention_guard
from bs_ref.runner import micro_step

SCHEDULES = ("linear", "constant", "cosine")
REDUCTIONS = ("row", "token")
"""The run-wide reductions of ``UnlearnConfig.reduction`` (docs/theory.md §11–12)."""
REDUCTION_HELP = (
    "how every term (forget, retain, beliefs) averages its answer tokens: row (mean per answer, then over answers: "
    "the paper's Eq. 1 and the authors' BS-T) | token (one token mean over the batch: the authors' GA, WGA, retain "
    "terms and BS-S); docs/theory.md §11"
)


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
    reduction: str = field(default="row", metadata={"help": REDUCTION_HELP})
    lora: str | None = field(
        default=None,
        metadata={
            "help": "train a LoRA adapter only, e.g. r=8,alpha=16,targets=q_proj,v_proj (bs_ref.lora; pip "
            "install -e '.[lora]'); NPO/KL's reference is the model with the adapter off; none: all weights"
        },
    )
    template: str = field(default="plain", metadata={"cli": False})
    """Prompt template of ``bs_ref.data.qa`` ("plain" or "chat"); must match how the model was trained."""
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
        if self.lora is not None and not isinstance(self.lora, str):  # a string, so as_dict() and the logs record it
            problem = (
                "give a spec string such as r=8,alpha=16,targets=q_proj,v_proj (bs_ref.lora.LoraSpec.spec() writes one)"
            )
        elif self.lora is not None:
            problem = lora_problem(self.lora)
        need(problem is None, "lora", problem or "")


# -------------------------------------------------------------------------------------------------------------
# The loop
# -------------------------------------------------------------------------------------------------------------


def unlearn(
    model,
    tokenizer,
    forget_records: list[dict],
    retain_records: list[dict] | None,
    cfg: UnlearnConfig | None = None,
    callback: Callable[[int, Any], bool | None] | None = None,
    accelerator=None,
):
    """Unlearn ``forget_records`` from ``model`` with ``cfg.method``; returns the (unwrapped) model.

    ``forget_records``/``retain_records`` are TOFU-schema dicts (``question``, ``answer``). ``callback(step,
    model)`` runs at step 0 (``cfg.eval_at_start``), every ``cfg.eval_every`` optimiser steps and after the
    last step, with the model in eval mode and no gradient. It may return True to stop unlearning after that
    step (an early stop, e.g. at a declared forgetting level): the run then ends there without calling it again,
    and the log's last line is ``{"event": "end", "step": s, "stopped_early": true}``; any other return value
    (None, False) changes nothing. ``accelerator``: an ``accelerate.Accelerator`` to use (default: a new one with
    ``cfg.mixed_precision``). The model is trained in place.
    """
    cfg = cfg or UnlearnConfig()
    _check_inputs(cfg, model, tokenizer, forget_records, retain_records)
    method = cfg.method
    accelerator = accelerator or Accelerator(mixed_precision=cfg.mixed_precision)
    set_seed(cfg.seed)
    if cfg.lora is not None:  # only the adapter trains (its A drawn under cfg.seed); π_ref: the adapter off
        model = apply_lora(model, cfg.lora)
    prepare_method(method, model, cfg.seed)  # RMU: its direction and the few layers that train
    forget_set, forget_loader, retain_loader = _loaders(cfg, tokenizer, forget_records, retain_records)
    # A frozen reference only where something needs one (NPO, the KL retain term, BS-S with the NPO base, RMU).
    ref_model = reference_model(model) if cfg.needs_reference else None
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    model, optimizer, forget_loader = accelerator.prepare(model, optimizer, forget_loader)
    retain_iter = _cycle(accelerator.prepare(retain_loader)) if retain_loader is not None else None
    ref_model = ref_model.to(accelerator.device) if ref_model is not None else None
    plan = StepPlan.of(cfg, len(forget_loader))
    scheduler = get_scheduler(SCHEDULERS[cfg.schedule], optimizer, plan.warmup_steps, plan.total_steps)
    beliefs = _forget_beliefs(cfg, accelerator.process_index, forget_set, tokenizer)  # BS-S only
    evaluate = functools.partial(_evaluate, callback, accelerator, model)

    with contextlib.ExitStack() as undo:  # closes the log, restores the thread count, lifts the bf16 guard
        log = undo.enter_context(StepLog(cfg, accelerator.is_main_process))
        undo.enter_context(_torch_threads(cfg.num_threads))
        if accelerator.mixed_precision == "bf16":  # a CPU whose fused bf16 attention cannot run: the math kernel
            undo.enter_context(bf16_attention_guard(accelerator.device.type))
        log.write(_start_record(cfg, plan, forget_set, retain_records, ref_model, accelerator))
        model.train()
        if cfg.eval_at_start and evaluate(0):
            return _finish(log, accelerator, model, 0, stopped_early=True)
        show = cfg.progress and accelerator.is_main_process
        bar = tqdm(total=plan.total_steps, desc=f"unlearn {method.name}", disable=not show)
        step, micro, stats = 0, 0, _StepStats()
        micro_args = dict(scale=1.0 / cfg.grad_accum, backward=accelerator.backward, ref_model=ref_model)
        for epoch_index, batch_index, forget_batch in _epochs(forget_loader, cfg.epochs):
            epoch = epoch_index + batch_index / plan.batches_per_epoch
            belief_batch = None
            if beliefs is not None:  # on CPU: each row chunk is moved when it runs
                belief_batch = beliefs.rows(accelerator.unwrap_model(model), forget_batch, epoch, step)
            retain_batch = next(retain_iter) if retain_iter is not None else None
            try:
                with accelerator.no_sync(model):
                    numbers = micro_step(cfg, model, forget_batch, retain_batch, belief_batch, **micro_args)
            except ValueError:
                # the losses reject NaN/inf logits with a ValueError; name the cause when it is the weights
                if not _weights_finite(model):
                    log.diverged("the weights are NaN/inf (the logits are not finite)", step + 1, epoch)
                raise
            log.check_finite(numbers, step + 1, epoch)
            stats.add(numbers)
            micro += 1
            last_batch = batch_index + 1 == plan.batches_per_epoch
            if micro % cfg.grad_accum and not last_batch:
                continue

            lr = _optimiser_step(model, optimizer, scheduler, accelerator, cfg.max_grad_norm)
            step, micro = step + 1, 0
            record = {"step": step, "epoch": round(epoch_index + (batch_index + 1) / plan.batches_per_epoch, 6)}
            record.update(lr=lr, **stats.mean())
            if accelerator.num_processes > 1:  # the mean over every process's rows, not process 0's alone
                record.update(_mean_over_processes(record, accelerator))
            if beliefs is not None:
                record["beliefs"] = beliefs.cache.stats()
            stats = _StepStats()
            if not _weights_finite(model):
                log.diverged("the weights became NaN/inf after the update", step, record["epoch"])
            log.write(record)
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}", forget=f"{record['forget_loss']:.3f}")
            if step >= plan.total_steps:
                break
            if cfg.eval_every and step % cfg.eval_every == 0 and evaluate(step):
                bar.close()
                return _finish(log, accelerator, model, step, stopped_early=True)
        bar.close()
        evaluate(step)  # after the last step
        return _finish(log, accelerator, model, step)


# -------------------------------------------------------------------------------------------------------------
# Setup
# -------------------------------------------------------------------------------------------------------------

SCHEDULERS = {"linear": "linear", "constant": "constant_with_warmup", "cosine": "cosine"}
"""``UnlearnConfig.schedule`` → the name ``transformers.get_scheduler`` knows it by (after the linear warm-up)."""


def _check_inputs(cfg: UnlearnConfig, model, tokenizer, forget_records: list, retain_records: list | None) -> None:
    """Validate ``cfg`` and raise one ValueError for inputs the run cannot use, naming the fix."""
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


def _loaders(cfg: UnlearnConfig, tokenizer, forget_records: list, retain_records: list | None):
    """(the forget set, its shuffled loader, the retain loader or None): batch order from ``cfg.seed`` (forget) and
    ``cfg.seed + 1`` (retain), each loader with its own generator."""
    pad_id = tokenizer.pad_token_id

    def loader(dataset, seed: int):
        return torch.utils.data.DataLoader(
            dataset,
            batch_size=cfg.batch_size,
            shuffle=True,
            collate_fn=functools.partial(collate_train, pad_token_id=pad_id),
            generator=torch.Generator().manual_seed(seed),
        )

    forget_set = QADataset(forget_records, tokenizer, cfg.template, cfg.max_length)
    retain_loader = None
    if cfg.uses_retain:
        retain_loader = loader(QADataset(retain_records, tokenizer, cfg.template, cfg.max_length), cfg.seed + 1)
    return forget_set, loader(forget_set, cfg.seed), retain_loader


@dataclass(frozen=True)
class StepPlan:
    """How many optimiser steps the run takes: per epoch (a last short group of micro-batches steps too), in all
    (``epochs`` of them, at most ``max_steps``), and in the linear warm-up (``warmup`` epochs of them)."""

    batches_per_epoch: int
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int

    @classmethod
    def of(cls, cfg: UnlearnConfig, batches_per_epoch: int) -> StepPlan:
        steps_per_epoch = math.ceil(batches_per_epoch / cfg.grad_accum)
        total_steps = cfg.epochs * steps_per_epoch
        if cfg.max_steps is not None:
            total_steps = min(total_steps, cfg.max_steps)
        warmup_steps = min(int(round(cfg.warmup * steps_per_epoch)), total_steps)
        return cls(batches_per_epoch, steps_per_epoch, total_steps, warmup_steps)


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


def reference_model(model):
    """π_ref, the frozen original model that NPO and the KL retain term compare against: for a model with a LoRA
    adapter, the same model with its adapter disabled (``bs_ref.lora.AdapterDisabled``; no second copy in memory,
    and since LoRA starts at B = 0 it is exactly the initial policy); otherwise a frozen deep copy in eval mode."""
    if is_lora_model(model):
        return AdapterDisabled(model)
    ref_model = copy.deepcopy(model).eval()
    ref_model.requires_grad_(False)
    return ref_model


PROCESS_SEED_STRIDE = 1_000_003
"""Offset between the belief seeds of two processes that sample different prompts (more refreshes than any run)."""


def belief_seed(seed: int, sampling: BeliefSampling, process_index: int = 0) -> int:
    """The BS-S belief cache's seed on process ``process_index`` of a multi-process run.

    A refresh of the whole forget set (off-policy, or on-policy every ``refresh_epochs`` > 0) samples the same
    prompts on every process: one seed everywhere gives every process the cache one process would hold, so an
    item's beliefs do not depend on the number of processes (and 2 processes × b rows give the weights of 1 × 2b).
    A refresh every step (on-policy, ``refresh_epochs`` = 0) samples only the process's own batch: each process
    then draws from its own stream, ``seed + PROCESS_SEED_STRIDE · process_index``. Process 0 always keeps
    ``seed``, so a one-process run is unchanged."""
    return seed + PROCESS_SEED_STRIDE * process_index if sampling.per_batch else seed


@dataclass
class ForgetBeliefs:
    """BS-S's global beliefs over the forget set: the cache (``bs_ref.beliefs.BeliefCache``), the forget prompts by
    dataset index, and the tokenizer that samples and pads them."""

    cache: BeliefCache
    prompts: dict[int, list[int]]
    tokenizer: Any

    def rows(self, model, forget_batch: dict, epoch: float, step: int) -> dict[str, torch.Tensor]:
        """The belief rows of this forget batch's items (right-padded, on CPU), after the refresh that the cache's
        schedule asks for at (``epoch``, ``step``), sampled from ``model``."""
        indices = forget_batch["index"].tolist()
        # refresh_epochs = 0 resamples every step: only this batch's prompts are needed
        wanted = {i: self.prompts[i] for i in indices} if self.cache.refresh_epochs == 0 else self.prompts
        self.cache.maybe_refresh(model, self.tokenizer, epoch, step, wanted)
        return self.cache.batch(indices, self.tokenizer.pad_token_id)


def _forget_beliefs(cfg: UnlearnConfig, process_index: int, forget_set: QADataset, tokenizer) -> ForgetBeliefs | None:
    """The method's belief cache (None unless it samples beliefs: BS-S), seeded for this process
    (``belief_seed``); BS-S belief subsampling gets its own stream per process, never the global RNG."""
    method, sampling = cfg.method, cfg.method.belief_sampling
    if sampling is None:
        return None
    seed = belief_seed(cfg.seed, sampling, process_index)
    cache = BeliefCache(sampling, seed=seed, template=cfg.template)
    if hasattr(method, "seed_subsample"):
        method.seed_subsample(cfg.seed + process_index)
    return ForgetBeliefs(cache, forget_set.prompts(), tokenizer)


# -------------------------------------------------------------------------------------------------------------
# What the loop undoes, logs and checks
# -------------------------------------------------------------------------------------------------------------


class StepLog(contextlib.AbstractContextManager):
    """The run's JSON-Lines log (``cfg.log_path``, written by the main process only), one flushed line a record."""

    def __init__(self, cfg: UnlearnConfig, main_process: bool = True):
        self.cfg = cfg
        self.path = cfg.log_path if main_process else None
        self.file = None

    def __enter__(self) -> StepLog:
        if self.path is not None:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self.file = open(self.path, "w", encoding="utf-8")  # noqa: SIM115 — closed by __exit__
        return self

    def __exit__(self, *exc) -> None:
        if self.file is not None:
            self.file.close()

    def write(self, record: dict) -> None:
        if self.file is not None:
            self.file.write(json.dumps(record) + "\n")
            self.file.flush()

    def check_finite(self, numbers: dict, step: int, epoch: float) -> None:
        """Stop the run (``diverged``) when the forget, retain or total loss of a micro-step is NaN/inf."""
        for name in ("forget", "retain", "total"):
            value = numbers.get(name)
            if value is not None and not math.isfinite(value):
                self.diverged(f"the {name} loss is {value}", step, epoch)

    def diverged(self, what: str, step: int, epoch: float):
        """Log the divergence (``what`` at ``step``) and stop the run with ``NonFiniteLossError``."""
        cfg = self.cfg
        message = (
            f"unlearning diverged: {what} at step {step} (epoch {epoch:.2f}) of method {cfg.method.spec()!r} with "
            f"lr={cfg.lr}; lower the learning rate (or keep max_grad_norm set)"
            + (f". The log up to this step is in {cfg.log_path}" if cfg.log_path else "")
        )
        self.write({"step": step, "epoch": epoch, "error": message})
        raise NonFiniteLossError(message)


@contextlib.contextmanager
def _torch_threads(num_threads: int | None):
    """torch's CPU thread count set to ``num_threads`` (None: left as is) for the block, then restored."""
    previous = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _start_record(cfg: UnlearnConfig, plan: StepPlan, forget_set, retain_records, ref_model, accelerator) -> dict:
    """The log's first line: the config and what the run derived from it."""
    return {
        "event": "start",
        "config": cfg.as_dict(),
        "gamma": cfg.method.gamma,
        "alpha": cfg.alpha if cfg.uses_retain else 0.0,
        "n_forget": len(forget_set),
        "n_retain": len(retain_records or []) if cfg.uses_retain else 0,
        "total_steps": plan.total_steps,
        "steps_per_epoch": plan.steps_per_epoch,
        "reference_model": ref_model is not None,
        "num_processes": accelerator.num_processes,
    }


def _evaluate(callback, accelerator, model, step: int) -> bool:
    """``callback(step, model)`` on the unwrapped model in eval mode without gradient; whether it returned True."""
    if callback is None:
        return False
    inner = accelerator.unwrap_model(model)
    inner.eval()
    with torch.no_grad():
        stop = callback(step, inner)
    inner.train()
    return stop is True


def _finish(log: StepLog, accelerator, model, step: int, stopped_early: bool = False):
    """Log the end of the run and return the unwrapped model in eval mode."""
    log.write({"event": "end", "step": step, **({"stopped_early": True} if stopped_early else {})})
    inner = accelerator.unwrap_model(model)
    inner.eval()
    return inner


def _optimiser_step(model, optimizer, scheduler, accelerator, max_grad_norm: float | None) -> float:
    """One optimiser step on the accumulated gradients; returns the learning rate it used. Several processes
    first average their gradients (accumulated locally under ``no_sync``), once per step."""
    if accelerator.num_processes > 1:
        for p in model.parameters():
            if p.grad is not None:
                p.grad.copy_(accelerator.reduce(p.grad, reduction="mean"))
    if max_grad_norm is not None:
        accelerator.clip_grad_norm_(model.parameters(), max_grad_norm)
    lr = scheduler.get_last_lr()[0]
    optimizer.step()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return lr


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


def _epochs(loader, epochs: int):
    """(epoch index, batch index, batch) over ``epochs`` passes of ``loader``."""
    for epoch_index in range(epochs):
        for batch_index, batch in enumerate(loader):
            yield epoch_index, batch_index, batch


def _cycle(loader):
    while True:
        yield from loader


def _weights_finite(model) -> bool:
    flags = [p.detach().isfinite().all() for p in model.parameters()]
    return bool(torch.stack(flags).all()) if flags else True
