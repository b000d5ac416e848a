"""Fine-tuning a causal LM on question–answer pairs: plain AdamW on the answer-only NLL
(``bs_ref.losses.nll_loss``), deterministic under its seed. It trains the experiment's model pairs
(``bs_ref.protocol.pair_training``) and the relearning attack's copies (``bs_ref.attacks.relearn``).

``FineTuning`` holds what shapes the optimisation (lr, epochs, batch size, weight decay, warm-up, truncation);
``fine_tune`` runs it; ``train_causal_lm`` is the short form with the epochs, lr and batch size given one by one.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from tqdm.auto import tqdm

from bs_ref import checks
from bs_ref.data.qa import IGNORE_INDEX, encode_qa
from bs_ref.losses import nll_loss


@dataclass(frozen=True)
class FineTuning:
    """The optimisation of ``fine_tune``: AdamW at peak learning rate ``lr`` (clipping at 1.0), ``epochs`` passes
    in shuffled batches of ``batch_size``, a linear warm-up over ``warmup_ratio`` of the steps then linear decay to
    0, prompt + answer truncated to ``max_length`` tokens (None: no truncation)."""

    lr: float
    epochs: int = 1
    batch_size: int = 32
    weight_decay: float = 0.0
    warmup_ratio: float = 0.05
    max_length: int | None = None
    num_threads: int | None = None
    """torch's CPU threads for the run, restored afterwards (None: leave them alone)."""

    def check(self) -> None:
        """Raise a ValueError naming the first setting out of range."""
        if not (checks.positive_int(self.epochs) and checks.positive_int(self.batch_size)):
            raise ValueError(
                f"epochs and batch_size must be >= 1, got epochs={self.epochs}, batch_size={self.batch_size}"
            )
        if not (checks.finite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if not checks.fraction(self.warmup_ratio, upper_open=True):
            raise ValueError(f"warmup_ratio must lie in [0, 1), got {self.warmup_ratio}")


def train_causal_lm(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    epochs: int,
    lr: float,
    batch_size: int = 32,
    *,
    progress: bool = True,
    history: list[float] | None = None,
    num_threads: int | None = None,
):
    """``fine_tune`` with ``FineTuning(lr, epochs, batch_size)`` (the other settings at their defaults), the
    plain template and seed 0; returns the model."""
    settings = FineTuning(lr=lr, epochs=epochs, batch_size=batch_size, num_threads=num_threads)
    return fine_tune(model, tokenizer, pairs, settings, progress=progress, history=history)


def fine_tune(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    settings: FineTuning,
    *,
    template: str = "plain",
    seed: int = 0,
    progress: bool = True,
    desc: str = "train",
    history: list[float] | None = None,
    on_step: Callable[[int, float], None] | None = None,
):
    """Finetune ``model`` in place on (question, answer) ``pairs`` with the answer-only NLL; returns it.

    Prompt/answer encoding is ``bs_ref.data.qa.encode_qa`` under ``template`` (labels −100 on the prompt,
    answer + EOS), so training and evaluation see the same template. Batches are shuffled by a generator seeded
    with ``seed`` (same seed → same weights on the same machine). ``history``, if given, receives the mean loss of
    every epoch; ``desc`` labels the progress bar and the error of a diverging run. ``on_step(step, loss)``, if
    given, is called after every optimiser step (1-based) with that step's loss (e.g. to report progress from a
    worker process).

    Per step the host does as little as it can without changing a bit of the result: the items are encoded and
    padded once (each batch is rows of that table, cut to its longest item: the tensors ``collate_train`` would
    build), the batch order is the ``DataLoader``'s (the same draws from the seeded generator), AdamW runs its
    ``foreach`` form on CPU (the same per-tensor kernels in the same order), the loss is read once.
    """

    if not pairs:
        raise ValueError("pairs is empty: nothing to train on (check the benchmark split)")
    settings.check()
    features = [encode_qa(tokenizer, q, a, template=template, max_length=settings.max_length) for q, a in pairs]
    device = next(model.parameters()).device
    batches = _Batches(features, tokenizer.pad_token_id, settings.batch_size, seed, device)
    total_steps = settings.epochs * len(batches)
    # On CPU torch's default is the for-loop AdamW; its foreach form applies the same kernels per tensor in the same
    # order (bit-identical weights) with less Python per step. Elsewhere torch picks as it always did.
    foreach = True if device.type == "cpu" else None
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay, foreach=foreach
    )
    scheduler = linear_schedule(optimizer, int(settings.warmup_ratio * total_steps), total_steps)
    previous_threads = torch.get_num_threads()
    if settings.num_threads is not None:
        torch.set_num_threads(settings.num_threads)
    model.train()
    bar = tqdm(total=total_steps, desc=desc, disable=not progress, leave=False)
    try:
        _train_epochs(model, batches, optimizer, scheduler, settings, desc, bar, history, on_step)
    finally:
        torch.set_num_threads(previous_threads)
        bar.close()
    model.eval()
    return model


def linear_schedule(optimizer, num_warmup_steps: int, num_training_steps: int):
    """A linear warm-up over ``num_warmup_steps`` then linear decay to 0 at ``num_training_steps``: the factors of
    ``transformers.get_scheduler("linear", ...)`` (``get_linear_schedule_with_warmup``), computed the same way, without
    importing ``transformers.optimization`` (whose import pulls in ``peft``: seconds of every worker's start)."""
    factor = functools.partial(_linear_factor, warmup=num_warmup_steps, total=num_training_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _linear_factor(step: int, *, warmup: int, total: int) -> float:
    if step < warmup:
        return float(step) / float(max(1, warmup))
    return max(0.0, float(total - step) / float(max(1, total - warmup)))


class _Batches:
    """The shuffled training batches of every epoch: the order of a ``DataLoader(shuffle=True)`` with a generator
    seeded with ``seed`` (it draws the same numbers), each batch the ``collate_train`` tensors of its items, cut
    from one padded table built once."""

    def __init__(self, features: list[dict], pad_token_id: int, batch_size: int, seed: int, device):
        self.order = torch.utils.data.DataLoader(
            range(len(features)),
            batch_size=batch_size,
            shuffle=True,
            generator=torch.Generator().manual_seed(seed),
            collate_fn=torch.tensor,
        )
        lengths = [len(f["input_ids"]) for f in features]
        table = {
            "input_ids": torch.full((len(features), max(lengths)), pad_token_id, dtype=torch.long),
            "labels": torch.full((len(features), max(lengths)), IGNORE_INDEX, dtype=torch.long),
            "attention_mask": torch.zeros((len(features), max(lengths)), dtype=torch.long),
        }
        for row, f in enumerate(features):
            n = lengths[row]
            table["input_ids"][row, :n] = torch.tensor(f["input_ids"], dtype=torch.long)
            table["labels"][row, :n] = torch.tensor(f["labels"], dtype=torch.long)
            table["attention_mask"][row, :n] = torch.tensor(f.get("attention_mask", [1] * n), dtype=torch.long)
        self.table = {k: v.to(device) for k, v in table.items()}
        self.lengths = torch.tensor(lengths, dtype=torch.long)
        self.index_device = device

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        for rows in self.order:
            width = int(self.lengths[rows].max())
            rows = rows.to(self.index_device)
            yield {k: v[rows, :width].contiguous() for k, v in self.table.items()}


def _train_epochs(model, batches, optimizer, scheduler, settings, desc, bar, history, on_step) -> None:
    step = 0
    params = [p for p in model.parameters()]
    for epoch in range(settings.epochs):
        losses = []
        for batch in batches:
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = nll_loss(logits, batch["labels"])
            value = loss.item()
            if not math.isfinite(value):
                raise FloatingPointError(
                    f"{desc}: the training loss became {value} at epoch {epoch}; lower the learning rate "
                    f"(lr={settings.lr})"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(value)
            step += 1
            if not bar.disable:
                bar.set_postfix(epoch=epoch, loss=f"{value:.3f}", refresh=False)
                bar.update(1)
            if on_step is not None:
                on_step(step, value)
        if history is not None:
            history.append(sum(losses) / len(losses))
