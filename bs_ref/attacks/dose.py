"""Relearning as a dose–response (docs/theory.md §9): recovery of the held-out half against optimizer steps.

The single-point attack (``relearn.relearn_attack``) fine-tunes for one budget at the pair's learning rate. The
field reports recovery along a relearning trajectory instead: equal optimizer steps for every model, several step
counts at a small learning rate (Yoon et al., ICLR 2026). ``relearn_dose`` does that in one pass:

1. the split is ``relearn.relearn_split`` (the same for every model given the same seed, as for the single point);
2. one copy of the model (any LoRA adapter merged) is trained with the answer NLL on the attack half, one batch per
   optimizer step: AdamW at a **constant** ``lr`` (no warm-up, no decay, so the model after k steps is the same
   whatever larger counts the schedule holds), gradient clipping at 1.0, batches of ``batch_size`` drawn by
   cycling through the attack half in epochs, each epoch a permutation from one generator seeded with ``seed``
   (the last batch of an epoch may be smaller). The batch order depends on the seed and the number of attack
   items only, so every model attacked with the same seed and split sees the same batches in the same order
   and takes exactly ``max(steps)`` steps;
3. after each step count of the schedule (0 included: the untrained copy) the held-out half is evaluated
   (``_common.evaluate_items`` with the probes, as the single point).

``DoseResponse.at(k)`` is the ``AttackResult`` of step count k (``before``: the model as given); the retain
model under the same schedule is the control (the caller attacks it too, as for every attack).
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import torch

from bs_ref import checks
from bs_ref.data.qa import collate_train, encode_qa
from bs_ref.generation import Decoding
from bs_ref.lora import is_lora_model
from bs_ref.losses import nll_loss

from ._common import SIZED_TO_ANSWERS, TOFU_ITEMS_PER_AUTHOR, AttackResult, evaluate_items, plain_copy
from .relearn import RelearnSplit, checked_split, relearn_split

DOSE_STEPS = (0, 1, 2, 4, 8)
"""The default schedule of step counts."""
DOSE_ATTACK = "relearn_dose"
"""The attack name of a dose–response; its step count k is labelled ``relearn@k`` (``DoseResponse.at``)."""


@dataclass(frozen=True)
class RelearnDose:
    """The relearning dose–response's training: the step counts evaluated (``steps``, each >= 0, distinct; the
    copy takes ``max(steps)`` optimizer steps in all), AdamW at the constant learning rate ``lr`` (a small one:
    below the pair's fine-tuning lr), batches of ``batch_size``, ``weight_decay``, prompt + answer truncated to
    ``max_length`` tokens (None: none), and the CPU threads it runs on (``num_threads``; None leaves torch's)."""

    lr: float
    steps: tuple[int, ...] = DOSE_STEPS
    batch_size: int = 16
    weight_decay: float = 0.0
    max_length: int | None = None
    num_threads: int | None = None

    def check(self) -> None:
        """Raise a ValueError naming the first setting out of range."""
        steps = tuple(self.steps)
        if not steps or not all(checks.non_negative_int(k) for k in steps):
            raise ValueError(f"steps must be a non-empty list of integers >= 0, got {self.steps!r}")
        if len(set(steps)) != len(steps):
            raise ValueError(f"steps must be distinct, got {self.steps!r}")
        if not checks.positive_int(self.batch_size):
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (checks.finite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive finite number, got {self.lr}")
        if not (checks.finite(self.weight_decay) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be a finite number >= 0, got {self.weight_decay}")

    @property
    def schedule(self) -> tuple[int, ...]:
        """The step counts in increasing order."""
        return tuple(int(k) for k in sorted(self.steps))


@dataclass
class DoseResponse:
    """One model under the relearning dose–response: the held-out items of the model as given (``before``), the
    held-out items after each step count (``after[k]``, k in ``steps``, increasing), the split, and what the attack
    did (``info``: settings, the loss of every optimizer step, the attack-half positions of every batch)."""

    steps: tuple[int, ...]
    before: list[dict]
    after: dict[int, list[dict]]
    split: Any = None
    info: dict = field(default_factory=dict)
    attack: str = DOSE_ATTACK

    def at(self, step: int) -> AttackResult:
        """The ``AttackResult`` of step count ``step`` (attack ``relearn@<step>``), for the recovery tables."""
        if step not in self.after:
            raise KeyError(f"step {step} is not in the schedule {list(self.steps)}")
        info = {**self.info, "step": step, "loss": self.info.get("loss", [])[:step]}
        return AttackResult(f"relearn@{step}", self.before, self.after[step], self.split, info)

    def results(self) -> dict[int, AttackResult]:
        """{step count: ``at(step)``} in schedule order."""
        return {k: self.at(k) for k in self.steps}

    def summary(self) -> list[dict]:
        """One row per step count: ``step`` then ``AttackResult.summary`` (means before / after)."""
        return [{"step": k, **self.at(k).summary()} for k in self.steps]

    def as_dict(self) -> dict:
        """Plain data (JSON-able; ``from_dict`` reads it back)."""
        split = asdict(self.split) if is_dataclass(self.split) else self.split
        return {
            "attack": self.attack,
            "steps": list(self.steps),
            "info": self.info,
            "split": split,
            "summary": self.summary(),
            "before": self.before,
            "after": [{"step": k, "items": self.after[k]} for k in self.steps],
        }

    @classmethod
    def from_dict(cls, payload: Mapping[str, Any]) -> DoseResponse:
        """A ``DoseResponse`` from its ``as_dict`` form (the split stays plain data)."""
        after = {int(row["step"]): list(row["items"]) for row in payload["after"]}
        return cls(
            tuple(int(k) for k in payload["steps"]),
            list(payload["before"]),
            after,
            payload.get("split"),
            dict(payload.get("info", {})),
            payload.get("attack", DOSE_ATTACK),
        )


def dose_batches(n_items: int, batch_size: int, n_steps: int, seed: int) -> list[list[int]]:
    """The batches (positions into the attack half) of ``n_steps`` optimizer steps: epochs of ``torch.randperm``
    from one generator seeded with ``seed``, cut into batches of ``batch_size`` (an epoch's last batch may be
    smaller). A function of its arguments only: equal for every model attacked with the same seed and split."""
    if n_items < 1:
        raise ValueError("dose_batches needs at least one item")
    generator = torch.Generator().manual_seed(int(seed))
    out: list[list[int]] = []
    while len(out) < n_steps:
        order = torch.randperm(n_items, generator=generator).tolist()
        out += [order[i : i + batch_size] for i in range(0, n_items, batch_size)]
    return out[:n_steps]


def _batches(features: Sequence[dict], plan: Sequence[Sequence[int]], pad_id: int) -> Iterator[dict]:
    for positions in plan:
        yield collate_train([features[i] for i in positions], pad_id)


def _train_steps(model, batches: Iterator[dict], n: int, optimizer, losses: list[float], lr: float) -> None:
    """``n`` optimizer steps of ``model`` on the next ``n`` batches (answer NLL, clipping at 1.0)."""
    if n == 0:
        return
    device = next(model.parameters()).device
    model.train()
    for _ in range(n):
        batch = {k: v.to(device) for k, v in next(batches).items()}
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        loss = nll_loss(logits, batch["labels"])
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"relearn dose: the training loss became {loss.item()} at step {len(losses)}; lower the learning "
                f"rate (lr={lr})"
            )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    model.eval()


def relearn_dose(
    model,
    tokenizer,
    forget_records: Sequence[dict],
    dose: RelearnDose,
    *,
    template: str = "plain",
    seed: int = 0,
    decoding: Decoding = SIZED_TO_ANSWERS,
    split: RelearnSplit | None = None,
    per_author: int = TOFU_ITEMS_PER_AUTHOR,
    evaluate_before: bool = True,
) -> DoseResponse:
    """Relearn one copy of ``model`` on the attack half of ``forget_records`` for ``max(dose.steps)`` optimizer
    steps, evaluating the held-out half after each step count of ``dose.steps`` (module docstring).

    ``split``: a ``relearn_split`` to reuse (the same for every model of a comparison); default drawn from
    ``seed``, which also draws the batches and seeds the sampled answers. ``evaluate_before``: also score the
    held-out half on ``model`` itself (``before``; else empty). Step count 0 is the untrained copy: with
    ``before`` evaluated on a model without a LoRA adapter (the copy is then weight-identical) its items are
    ``before``'s; otherwise it is evaluated on the copy. Items carry ``index`` = the record's position in
    ``forget_records``; ``model`` is unchanged."""
    dose.check()
    records = list(forget_records)
    split = checked_split(records, split, seed, per_author)
    heldout = [records[i] for i in split.heldout]
    evaluation = dict(template=template, indices=list(split.heldout), probes=True, decoding=decoding, seed=seed)
    before = evaluate_items(model, tokenizer, heldout, **evaluation) if evaluate_before else []
    schedule = dose.schedule
    features = [
        encode_qa(
            tokenizer, records[i]["question"], records[i]["answer"], template=template, max_length=dose.max_length
        )
        for i in split.attack
    ]
    plan = dose_batches(len(features), dose.batch_size, schedule[-1], seed)
    reuse_before = evaluate_before and not is_lora_model(model)

    batches = _batches(features, plan, tokenizer.pad_token_id)

    def score(attacked, k: int) -> list[dict]:  # step count 0 of a weight-identical copy: ``before``'s items
        if k == 0 and reuse_before:
            return [dict(item) for item in before]
        return evaluate_items(attacked, tokenizer, heldout, **evaluation)

    after, losses = _trajectory(model, dose, schedule, batches, score)
    info = {
        "lr": dose.lr,
        "lr_schedule": "constant",
        "batch_size": dose.batch_size,
        "weight_decay": dose.weight_decay,
        "max_length": dose.max_length,
        "seed": seed,
        "steps": list(schedule),
        "n_steps": schedule[-1],
        "n_attack": len(split.attack),
        "n_heldout": len(split.heldout),
        "epochs_seen": sum(len(b) for b in plan) / len(features),
        "loss": losses,
        "batches": [[split.attack[i] for i in b] for b in plan],
    }
    return DoseResponse(schedule, before, after, split, info)


def _trajectory(model, dose: RelearnDose, schedule, batches, score) -> tuple[dict[int, list[dict]], list[float]]:
    """Train one copy of ``model`` through ``schedule``'s step counts on ``batches`` (constant lr), calling
    ``score(copy, k)`` at each count k; returns ({k: items}, the loss of every step)."""
    attacked = plain_copy(model)
    attacked.requires_grad_(True)
    optimizer = torch.optim.AdamW(attacked.parameters(), lr=dose.lr, weight_decay=dose.weight_decay)
    losses: list[float] = []
    after: dict[int, list[dict]] = {}
    previous_threads = torch.get_num_threads()
    if dose.num_threads is not None:
        torch.set_num_threads(dose.num_threads)
    try:
        done = 0
        for k in schedule:
            _train_steps(attacked, batches, k - done, optimizer, losses, dose.lr)
            done = k
            after[k] = score(attacked, k)
    finally:
        torch.set_num_threads(previous_threads)
        del attacked, optimizer
    return after, losses


def relearn_dose_models(
    models: Mapping[str, object],
    tokenizer,
    forget_records: Sequence[dict],
    dose: RelearnDose,
    *,
    seed: int = 0,
    per_author: int = TOFU_ITEMS_PER_AUTHOR,
    **kwargs,
) -> dict[str, DoseResponse]:
    """``relearn_dose`` on every named model (e.g. {"ga": ..., "retrain": retain_model, "original": ...}) with ONE
    split drawn from ``seed`` (so the same batches in the same order); ``kwargs`` go to ``relearn_dose``."""
    split = relearn_split(list(forget_records), seed, per_author=per_author)
    return {
        name: relearn_dose(model, tokenizer, forget_records, dose, seed=seed, split=split, **kwargs)
        for name, model in models.items()
    }
