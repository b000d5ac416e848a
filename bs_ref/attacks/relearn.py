"""Relearning attack (docs/theory.md §9): fine-tune a copy on half of each forget author's items, score the
other half.

Hu et al. 2024, "Jogging the Memory of Unlearned LLMs" (arXiv 2406.13356); Deeb & Roger 2024 (arXiv
2410.08827); Łucki et al. 2024 (arXiv 2409.18025). A model that hides a fact rather than removing it gets it
back from a little fine-tuning on *related* data. To measure only knowledge the attack did not teach:

1. ``relearn_split``: each forget author's items (TOFU: 20 per author, by ``author`` when records carry it,
   else position // 20; synthetic benchmark: every fact of the author) are shuffled by a seed derived from
   (seed, author) and split into an *attack half* (the first ⌊n/2⌋) and a *held-out half* (the rest, so an
   author with an odd count holds out one more; an author with one item only has a held-out item).
2. ``relearn_attack``: a deep copy of the model (any LoRA adapter merged) is fine-tuned with the answer NLL on
   the attack half's (question, answer) pairs — ``bs_ref.finetune.fine_tune`` under ``Relearning``: AdamW,
   clipping at 1.0, linear decay to 0 from ``lr`` (no warm-up by default), batches shuffled by ``seed`` — for
   ``epochs`` (default 1) at ``lr`` (pass the pair's fine-tuning lr);
3. the **held-out half** is evaluated before and after (``_common.evaluate_items`` with the probes: greedy
   fact leak, paraphrased question, any-of-N, target log-prob, fact-token log-prob, ROUGE-L).

Controls (the caller's, same split): the retain model under the same attack — what the attack data teach by
themselves — and the original model, the upper bound. ``relearn_models`` runs the attack on several named
models with one split.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bs_ref.finetune import FineTuning, fine_tune
from bs_ref.generation import Decoding

from ._common import (
    SIZED_TO_ANSWERS,
    TOFU_ITEMS_PER_AUTHOR,
    AttackResult,
    evaluate_items,
    group_by_author,
    plain_copy,
    stable_seed,
)


@dataclass(frozen=True)
class Relearning(FineTuning):
    """The relearning attack's fine-tuning (``bs_ref.finetune.FineTuning`` with the attack's defaults: one
    epoch, batches of 16, no warm-up) and the CPU threads it runs on (``num_threads``; None leaves torch's
    setting). ``lr``: the pair's fine-tuning learning rate (``TrainConfig.lr`` of the preset,
    ``bs_ref.protocol.pair_training``; real TOFU checkpoints: the lr they were fine-tuned with, 1e-5 for the
    paper's)."""

    epochs: int = 1
    batch_size: int = 16
    warmup_ratio: float = 0.0


@dataclass(frozen=True)
class RelearnSplit:
    """Positions (into the forget records) of the attack half and of the held-out half, each sorted; the author
    of every record (``authors[i]``); the seed that drew it."""

    attack: tuple[int, ...]
    heldout: tuple[int, ...]
    authors: tuple[str, ...]
    seed: int

    def check(self, records: Sequence[dict]) -> None:
        """Raise a ValueError unless the split covers exactly ``records`` (every position once)."""
        both = sorted(self.attack + self.heldout)
        if both != list(range(len(records))) or len(self.authors) != len(records):
            raise ValueError(
                f"the relearning split covers {len(both)} positions of {len(self.authors)} records but {len(records)} "
                "records were given; draw it with relearn_split from the same forget records"
            )


def relearn_split(records: Sequence[dict], seed: int, *, per_author: int = TOFU_ITEMS_PER_AUTHOR) -> RelearnSplit:
    """Split every author's items into an attack half (⌊n/2⌋ items) and a held-out half, fixed by ``seed``.

    The author of a record is its ``author`` field, else ``position // per_author`` (TOFU). Each author's items
    are shuffled by a generator seeded with (seed, author), so an author's split depends on nothing else."""
    if not records:
        raise ValueError("relearn_split got no records; pass the forget split")
    attack, heldout, authors = [], [], [""] * len(records)
    for author, positions in group_by_author(records, per_author).items():
        order = list(positions)
        random.Random(stable_seed("relearn", seed, author)).shuffle(order)
        attack += order[: len(order) // 2]
        heldout += order[len(order) // 2 :]
        for i in positions:
            authors[i] = author
    return RelearnSplit(tuple(sorted(attack)), tuple(sorted(heldout)), tuple(authors), int(seed))


def checked_split(
    records: Sequence[dict], split: RelearnSplit | None, seed: int, per_author: int = TOFU_ITEMS_PER_AUTHOR
) -> RelearnSplit:
    """``split`` (or the one ``relearn_split`` draws from ``seed``), checked against ``records``; a ValueError when a
    half is empty. Shared by the single-point attack and the dose–response (``bs_ref.attacks.dose``)."""
    split = split if split is not None else relearn_split(records, seed, per_author=per_author)
    split.check(records)
    if not split.attack or not split.heldout:
        raise ValueError(
            "the relearning split has an empty half (every author has a single item?); the attack needs authors "
            "with at least two items"
        )
    return split


def relearn_attack(
    model,
    tokenizer,
    forget_records: Sequence[dict],
    relearning: Relearning,
    *,
    template: str = "plain",
    seed: int = 0,
    decoding: Decoding = SIZED_TO_ANSWERS,
    split: RelearnSplit | None = None,
    per_author: int = TOFU_ITEMS_PER_AUTHOR,
    evaluate_before: bool = True,
) -> AttackResult:
    """Fine-tune a copy of ``model`` on the attack half of ``forget_records`` under ``relearning`` and evaluate
    the held-out half with ``decoding``.

    ``split``: a ``relearn_split`` to reuse (the same for every model of a comparison); default drawn from
    ``seed``, which also orders the batches and seeds the sampled answers. ``evaluate_before``: also score the
    held-out half on ``model`` itself (``before``; else ``before`` is empty). ``decoding.num_samples`` > 0 adds
    the any-of-N leak. Returns an ``AttackResult`` whose items carry ``index`` = the record's position in
    ``forget_records``; ``model`` is unchanged (the fine-tuning runs on a deep copy, which is dropped)."""
    records = list(forget_records)
    split = checked_split(records, split, seed, per_author)
    heldout = [records[i] for i in split.heldout]
    evaluation = dict(template=template, indices=list(split.heldout), probes=True, decoding=decoding, seed=seed)
    before = evaluate_items(model, tokenizer, heldout, **evaluation) if evaluate_before else []

    attacked = plain_copy(model)
    attacked.requires_grad_(True)
    pairs = [(records[i]["question"], records[i]["answer"]) for i in split.attack]
    losses: list[float] = []
    try:
        fine_tune(
            attacked,
            tokenizer,
            pairs,
            relearning,
            template=template,
            seed=seed,
            progress=False,
            desc="relearn attack",
            history=losses,
        )
        after = evaluate_items(attacked, tokenizer, heldout, **evaluation)
    finally:
        del attacked
    info = {
        "lr": relearning.lr,
        "epochs": relearning.epochs,
        "batch_size": relearning.batch_size,
        "weight_decay": relearning.weight_decay,
        "warmup_ratio": relearning.warmup_ratio,
        "seed": seed,
        "steps": relearning.epochs * -(-len(pairs) // relearning.batch_size),
        "n_attack": len(split.attack),
        "n_heldout": len(split.heldout),
        "epoch_loss": losses,
    }
    return AttackResult("relearn", before, after, split, info)


def relearn_models(
    models: Mapping[str, object],
    tokenizer,
    forget_records: Sequence[dict],
    relearning: Relearning,
    *,
    seed: int = 0,
    per_author: int = TOFU_ITEMS_PER_AUTHOR,
    **kwargs,
) -> dict[str, AttackResult]:
    """``relearn_attack`` on every named model (e.g. {"ga": ..., "retrain": retain_model, "original": ...}) with
    ONE split drawn from ``seed``; ``kwargs`` (``template``, ``decoding``, ...) go to ``relearn_attack``."""
    split = relearn_split(list(forget_records), seed, per_author=per_author)
    return {
        name: relearn_attack(model, tokenizer, forget_records, relearning, seed=seed, split=split, **kwargs)
        for name, model in models.items()
    }
