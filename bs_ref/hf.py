"""Any bs_ref unlearning method as a ``transformers.Trainer``: your ``TrainingArguments``, callbacks, logging,
checkpointing and launcher, with the training step of ``bs_ref.unlearn``.

``UnlearningTrainer`` trains on the forget set (its ``train_dataset``) and draws one retain batch per forget
micro-batch from its own retain loader; each micro-batch runs ``bs_ref.runner.micro_step``, the function the
bs_ref loop runs, so the objective is the method declaration's (``bs_ref.methods``) term for term:
``L = γ·L_forget + α·L_retain``, the reference model where the method needs one (a frozen copy, or with LoRA the
same model with its adapter disabled), BS-S beliefs from a ``bs_ref.beliefs.BeliefCache`` refreshed per the
declaration's regime, and BS-S's belief rows backwarded in row chunks. The usage example (README)::

    from transformers import TrainingArguments
    from bs_ref.data.qa import load_tofu
    from bs_ref.hf import UnlearningTrainer
    from bs_ref.models import load_model

    model, tokenizer = load_model("open-unlearning/tofu_Llama-3.2-1B-Instruct_full")
    args = TrainingArguments("runs/bs_s", per_device_train_batch_size=8, gradient_accumulation_steps=4,
                             learning_rate=1e-5, num_train_epochs=10, warmup_steps=0.1, bf16=True, logging_steps=5)
    trainer = UnlearningTrainer(model, args, method="bs_s:n_beliefs=3", processing_class=tokenizer, template="chat",
                                forget_dataset=load_tofu("locuslab/TOFU", "forget10"),
                                retain_dataset=load_tofu("locuslab/TOFU", "retain90"))  # lora="r=8,alpha=16"
    trainer.train()   # logs loss, forget_loss, retain_loss, forget_logprob, topk_mass (and BS-S belief counts)

What equals ``bs_ref.unlearn.unlearn`` (tests/test_hf.py: the same weights after the same steps, to 1e-6): the
batches (the forget order is drawn from a generator seeded with ``args.data_seed`` or ``args.seed``, a fresh
permutation per epoch, the retain order from ``seed + 1``, exactly as the loop; the Trainer's
``accelerator_config.use_seedable_sampler`` is not applied to these two loaders), the objective and its
backward, the reduction of gradients across processes (once per optimiser step), clipping
(``max_grad_norm``), the linear/cosine/constant schedules and AdamW. Two conventions are the Trainer's own:
its default optimiser exempts biases and norm weights from weight decay (``bs_ref.unlearn`` decays every
weight; pass ``optimizers=(torch.optim.AdamW(model.parameters(), lr=..., weight_decay=...), None)`` or
``weight_decay=0`` to match), and the last optimiser step of an epoch whose micro-batches do not fill
``gradient_accumulation_steps`` is averaged over the micro-batches present (the loop divides by
``grad_accum``). ``optim="adamw_torch_fused"`` (the Trainer's default) runs a fused kernel: equal to float
rounding, not bit for bit; ``optim="adamw_torch"`` is the loop's kernel.

Multi-process: launch as any Trainer (``accelerate launch`` / ``torchrun``; DDP). Gradients are accumulated
locally and averaged once before the step, as in the loop; FSDP and DeepSpeed are not supported. Resuming from
a checkpoint restarts the retain stream and resamples BS-S beliefs (neither is in the checkpoint).
``compute_loss`` (used by ``evaluate`` on an ``eval_dataset`` of forget-format rows) is γ·L_forget of a batch.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any

import torch
from transformers import Trainer, TrainingArguments
from transformers.trainer_utils import set_seed

from bs_ref.beliefs import BeliefCache
from bs_ref.data.qa import QADataset, collate_train
from bs_ref.lora import apply_lora
from bs_ref.methods import Method, method_from_spec
from bs_ref.models import bf16_attention_guard
from bs_ref.runner import forward_chunk, micro_step
from bs_ref.unlearn import (
    NonFiniteLossError,
    UnlearnConfig,
    _cycle,
    belief_seed,
    prepare_method,
    reference_model,
)

STAT_NAMES = {
    "forget": "forget_loss",
    "retain": "retain_loss",
    "forget_logprob": "forget_logprob",
    "topk_mass": "topk_mass",
}
UNLEARN_SETTINGS = {"alpha": 1.0, "retain_loss": "nll", "template": "plain", "max_length": None, "reduction": "row"}
"""The unlearning settings ``UnlearningTrainer`` takes by keyword (fields of ``bs_ref.unlearn.UnlearnConfig``), with
their defaults; every other keyword goes to ``transformers.Trainer``."""


class UnlearningTrainer(Trainer):
    """A ``transformers.Trainer`` whose training step is a bs_ref method's (see the module docstring).

    model            a causal LM (or a peft model: its adapter trains, the reference is the adapter disabled)
    args             ``TrainingArguments`` (batch size, lr, schedule, epochs, clipping, logging, saving, ...)
    method           a declaration of ``bs_ref.methods`` or a spec (``"npo:beta=0.2"``, ``"bs_s:regime=on_policy"``)
    forget_dataset   TOFU-schema records (``question``, ``answer``): a list of dicts, a ``datasets.Dataset``, or a
                     ``bs_ref.data.qa.QADataset``
    retain_dataset   the same, for the retain term (needed unless the method has none or ``alpha=0``)
    processing_class the tokenizer (``tokenizer=`` is accepted too); it needs a pad token
    alpha, retain_loss  α and the retain term ("nll" | "kl"), as in ``bs_ref.unlearn.UnlearnConfig``
    reduction        "row" | "token": how every term averages its answer tokens (``UnlearnConfig.reduction``)
    template, max_length  prompt template ("plain" | "chat") and truncation of the encoded rows
    lora             a LoRA spec (``"r=8,alpha=16,targets=q_proj,v_proj"``), ``LoraSpec`` or ``peft.LoraConfig``:
                     attach a fresh adapter first (``bs_ref.lora.apply_lora``)
    **kwargs         any other ``Trainer`` argument (callbacks, optimizers, eval_dataset, compute_metrics, ...)

    The unlearning settings (alpha, retain_loss, reduction, template, max_length: ``UNLEARN_SETTINGS``) and
    ``tokenizer`` arrive through ``**kwargs`` and are taken out of it by name before the rest goes to ``Trainer``.
    """

    def __init__(
        self,
        model=None,
        args=None,
        *,
        method: Method | str = "bs_t",
        forget_dataset=None,
        retain_dataset=None,
        processing_class=None,
        lora=None,
        **kwargs,
    ):
        settings = {name: kwargs.pop(name, default) for name, default in UNLEARN_SETTINGS.items()}
        tokenizer = _check_inputs(processing_class, kwargs.pop("tokenizer", None), forget_dataset, kwargs)
        alpha, template, max_length = settings["alpha"], settings["template"], settings["max_length"]
        method = method_from_spec(method) if isinstance(method, str) else method
        self.unlearn_config = UnlearnConfig(method=method, **settings)
        self.unlearn_config.validate()
        self.method = method
        forget_set = _dataset(forget_dataset, tokenizer, template, max_length)
        if len(forget_set) == 0:
            raise ValueError("forget_dataset is empty: there is nothing to unlearn (check the forget split)")
        self.retain_set = None
        if self.unlearn_config.uses_retain:
            if retain_dataset is None or len(retain_dataset) == 0:
                raise ValueError(
                    f"method {method.name!r} uses a retain term (alpha={alpha}) but retain_dataset is empty; pass "
                    "the retain split, or set alpha=0 to turn the retain term off"
                )
            self.retain_set = _dataset(retain_dataset, tokenizer, template, max_length)
        if lora is not None:  # the adapter's A is drawn under args.seed, as bs_ref.unlearn draws it under cfg.seed
            set_seed(args.seed if args is not None else TrainingArguments("tmp_trainer").seed)
            model = apply_lora(model, lora)
        if model is not None:  # RMU: its direction (under args.seed) and the few layers that train, as the loop does
            prepare_method(method, model, args.seed if args is not None else TrainingArguments("tmp_trainer").seed)
        self.pad_id = int(tokenizer.pad_token_id)
        super().__init__(
            model=model,
            args=args,
            data_collator=self._collate,
            train_dataset=forget_set,
            processing_class=tokenizer,
            **kwargs,
        )
        if self.args.n_gpu > 1:
            raise ValueError(
                "UnlearningTrainer runs one process per device: launch with accelerate launch or torchrun instead "
                "of one process over several GPUs (torch.nn.DataParallel)"
            )
        vocab = self.model.get_output_embeddings().weight.shape[0]
        top_k = getattr(method, "top_k", None)
        if top_k is not None and top_k > vocab:
            raise ValueError(f"{method.name}:top_k={top_k} exceeds the vocabulary size {vocab}; lower top_k")
        self.gamma = method.gamma
        self.alpha = alpha if self.unlearn_config.uses_retain else 0.0
        self.ref_model = None
        if self.unlearn_config.needs_reference:
            self.ref_model = reference_model(self.model).to(self.args.device)
        self.belief_cache, self.prompts_by_index = None, None
        if method.belief_sampling is not None:
            seed = belief_seed(self.args.seed, method.belief_sampling, self.accelerator.process_index)
            self.belief_cache = BeliefCache(method.belief_sampling, seed=seed, template=template)
            self.prompts_by_index = forget_set.prompts()
        self._retain_iter = None
        self._batches_per_epoch = None
        self._group_step, self._group_micro = None, 0
        self._stat_sums: dict[str, float] = {}
        self._stat_counts: dict[str, int] = {}

    # ---- data
    def _collate(self, features):
        return collate_train(features, self.pad_id)

    def _seed(self) -> int:
        return self.args.data_seed if self.args.data_seed is not None else self.args.seed

    def _loader(self, dataset, seed: int):
        """A shuffled loader whose order is the bs_ref loop's (a generator seeded with ``seed``), prepared for
        this process (sharded by batch across processes) without accelerate's seedable sampler."""
        loader = torch.utils.data.DataLoader(
            dataset,
            batch_size=self._train_batch_size,
            shuffle=True,
            collate_fn=self._collate,
            generator=torch.Generator().manual_seed(seed),
            num_workers=self.args.dataloader_num_workers,
            pin_memory=self.args.dataloader_pin_memory,
        )
        config = self.accelerator.dataloader_config
        seedable = config.use_seedable_sampler
        config.use_seedable_sampler = False  # the loop's order: one generator stream, a new permutation per epoch
        try:
            return self.accelerator.prepare(loader)
        finally:
            config.use_seedable_sampler = seedable

    def get_train_dataloader(self):
        """The forget loader (seed ``data_seed`` or ``seed``); also (re)starts the retain stream (seed + 1)."""
        forget_loader = self._loader(self.train_dataset, self._seed())
        self._batches_per_epoch = len(forget_loader)
        self._retain_iter = _cycle(self._loader(self.retain_set, self._seed() + 1)) if self.retain_set else None
        self._group_step, self._group_micro = None, 0
        return forget_loader

    # ---- the step
    def _epoch_before_batch(self) -> float:
        """epoch_index + batch_index / batches_per_epoch of the micro-batch about to run (the loop's ``epoch``)."""
        if self.state.global_step != self._group_step:  # the first micro-batch of an optimiser step
            self._group_step, self._group_micro = self.state.global_step, 0
        n = self._batches_per_epoch
        done = round((self.state.epoch or 0.0) * n) + self._group_micro
        self._group_micro += 1
        return done // n + (done % n) / n

    def training_step(self, model, inputs, num_items_in_batch=None):
        """One forget micro-batch (with its retain batch and BS-S beliefs): ``bs_ref.runner.micro_step``, scaled
        by 1 / the micro-batches of this optimiser step; gradients are averaged across processes at its last one.
        Returns the detached scaled total loss (what the Trainer logs as ``loss``). With ``bf16=True`` on a CPU
        whose fused bf16 attention cannot run, attention uses the math kernel (``models.bf16_attention_guard``)."""
        guard = bf16_attention_guard(self.args.device.type) if self.args.bf16 else contextlib.nullcontext()
        with guard:
            return self._training_step(model, inputs)

    def _training_step(self, model, inputs):
        model.train()
        if self._retain_iter is None and self.retain_set is not None:  # training_step called outside train()
            self._retain_iter = _cycle(self._loader(self.retain_set, self._seed() + 1))
        forget_batch = self._prepare_inputs(inputs)
        step = self.state.global_step
        epoch = self._epoch_before_batch() if self._batches_per_epoch else 0.0
        belief_batch = None
        if self.belief_cache is not None:
            indices = forget_batch["index"].tolist()
            wanted = self.prompts_by_index
            if self.belief_cache.refresh_epochs == 0:
                wanted = {i: self.prompts_by_index[i] for i in indices}
            unwrapped = self.accelerator.unwrap_model(model)
            self.belief_cache.maybe_refresh(unwrapped, self.processing_class, epoch, step, wanted)
            belief_batch = self.belief_cache.batch(indices, self.pad_id)
        retain_batch = next(self._retain_iter) if self._retain_iter is not None else None
        scale = 1.0 / self.current_gradient_accumulation_steps
        with self.compute_loss_context_manager(), self.accelerator.no_sync(model):
            stats = micro_step(
                self.unlearn_config,
                model,
                forget_batch,
                retain_batch,
                belief_batch,
                scale=scale,
                backward=self.accelerator.backward,
                ref_model=self.ref_model,
            )
        if not math.isfinite(stats["total"]):
            raise NonFiniteLossError(
                f"unlearning diverged: the loss is {stats['total']} at step {step + 1} (epoch {epoch:.2f}) of method "
                f"{self.method.spec()!r} with learning_rate={self.args.learning_rate}; lower the learning rate (or "
                "keep max_grad_norm set)"
            )
        if self.accelerator.sync_gradients and self.accelerator.num_processes > 1:
            for p in model.parameters():  # once per optimiser step, as bs_ref.unlearn
                if p.grad is not None:
                    p.grad.copy_(self.accelerator.reduce(p.grad, reduction="mean"))
        for name, value in stats.items():
            if name in STAT_NAMES and value is not None:
                key = STAT_NAMES[name]
                self._stat_sums[key] = self._stat_sums.get(key, 0.0) + float(value)
                self._stat_counts[key] = self._stat_counts.get(key, 0) + 1
        return torch.tensor(stats["total"] * scale, device=self.args.device)

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        """γ·L_forget of the method on one batch of forget-format rows (no retain term, no beliefs, no backward):
        what ``evaluate`` reports on an ``eval_dataset``. Training does not call it (see ``training_step``)."""
        rows = {k: v for k, v in inputs.items() if isinstance(v, torch.Tensor)}
        term = self.method.forget_terms(rows, None, reduction=self.unlearn_config.reduction)[0]
        (chunk,) = term.chunks(model)  # the forget rows alone: one forward
        ref_model = self.ref_model if self.method.needs_reference else None
        piece, logits, _ = forward_chunk(model, self.method, term, chunk, ref_model)
        loss = self.gamma * piece
        return (loss, {"logits": logits}) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """The Trainer's log, with the loop's numbers averaged over the micro-batches since the last log:
        forget_loss, retain_loss, forget_logprob, topk_mass, and for BS-S the belief cache's counts."""
        if "loss" in logs and self._stat_counts:
            for key, total in self._stat_sums.items():
                logs[key] = total / self._stat_counts[key]
            if self.belief_cache is not None:
                stats = self.belief_cache.stats()
                logs.update(
                    belief_refreshes=stats["refreshes"],
                    beliefs_cached=stats["beliefs_cached"],
                    beliefs_empty=stats["empty_cached"],
                )
            self._stat_sums, self._stat_counts = {}, {}
        super().log(logs, start_time)


def _check_inputs(processing_class, tokenizer, forget_dataset, trainer_kwargs: dict):
    """The tokenizer (``processing_class``, else ``tokenizer``), after checking what ``UnlearningTrainer`` needs."""
    if "train_dataset" in trainer_kwargs:
        raise ValueError(
            "UnlearningTrainer trains on forget_dataset; pass the forget records there, not as train_dataset"
        )
    tokenizer = processing_class if processing_class is not None else tokenizer
    if tokenizer is None:
        raise ValueError("UnlearningTrainer needs the tokenizer: processing_class=tokenizer")
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; set tokenizer.pad_token = tokenizer.eos_token")
    if forget_dataset is None:
        raise ValueError("UnlearningTrainer needs forget_dataset: the records to unlearn")
    return tokenizer


def _dataset(data: Any, tokenizer, template: str, max_length: int | None) -> QADataset:
    """A ``QADataset`` from records (list of dicts, ``datasets.Dataset``) or a ``QADataset`` as it is."""
    if isinstance(data, QADataset):
        return data
    records = [dict(row) for row in data]
    return QADataset(records, tokenizer, template, max_length)
