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
   the attack half's (question, answer) pairs — ``bs_ref.models.train_causal_lm``: AdamW, clipping at 1.0,
   linear decay to 0 from ``lr`` (no warm-up by default), batches shuffled by ``seed`` — for ``epochs``
   (default 1) at ``lr`` (default: pass the pair's fine-tuning lr);
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

from bs_ref.models import train_causal_lm

from ._common import TOFU_ITEMS_PER_AUTHOR, AttackResult, evaluate_items, group_by_author, plain_copy, stable_seed


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


def relearn_attack(
    model,
    tokenizer,
    forget_records: Sequence[dict],
    *,
    template: str = "plain",
    seed: int = 0,
    lr: float,
    epochs: int = 1,
    batch_size: int = 16,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.0,
    max_length: int | None = None,
    split: RelearnSplit | None = None,
    per_author: int = TOFU_ITEMS_PER_AUTHOR,
    evaluate_before: bool = True,
    max_new_tokens: int | None = None,
    eval_batch_size: int = 32,
    num_samples: int = 0,
    sample_temperature: float = 1.0,
    num_threads: int | None = None,
) -> AttackResult:
    """Fine-tune a copy of ``model`` on the attack half of ``forget_records`` and evaluate the held-out half.

    ``lr``: the pair's fine-tuning learning rate (``bs_ref.models.TrainConfig.lr`` of the preset; real TOFU
    checkpoints: the lr they were fine-tuned with, 1e-5 for the paper's). ``split``: a ``relearn_split`` to
    reuse (the same for every model of a comparison); default drawn from ``seed``, which also orders the
    batches and seeds the sampled answers. ``evaluate_before``: also score the held-out half on ``model`` itself
    (``before``; else ``before`` is empty). ``num_samples`` > 0 adds the any-of-N leak. Returns an
    ``AttackResult`` whose items carry ``index`` = the record's position in ``forget_records``; ``model`` is
    unchanged (the fine-tuning runs on a deep copy, which is dropped)."""
    records = list(forget_records)
    split = split if split is not None else relearn_split(records, seed, per_author=per_author)
    split.check(records)
    if not split.attack or not split.heldout:
        raise ValueError(
            "the relearning split has an empty half (every author has a single item?); the attack needs authors "
            "with at least two items"
        )
    heldout = [records[i] for i in split.heldout]
    evaluation = dict(template=template, indices=list(split.heldout), probes=True, num_samples=num_samples,
                      temperature=sample_temperature, seed=seed, max_new_tokens=max_new_tokens,
                      batch_size=eval_batch_size)  # fmt: skip
    before = evaluate_items(model, tokenizer, heldout, **evaluation) if evaluate_before else []

    attacked = plain_copy(model)
    attacked.requires_grad_(True)
    pairs = [(records[i]["question"], records[i]["answer"]) for i in split.attack]
    losses: list[float] = []
    try:
        train_causal_lm(attacked, tokenizer, pairs, epochs, lr, batch_size, weight_decay=weight_decay,
                        warmup_ratio=warmup_ratio, template=template, max_length=max_length, seed=seed,
                        progress=False, desc="relearn attack", history=losses, num_threads=num_threads)  # fmt: skip
        after = evaluate_items(attacked, tokenizer, heldout, **evaluation)
    finally:
        del attacked
    steps = epochs * -(-len(pairs) // batch_size)
    info = {"lr": lr, "epochs": epochs, "batch_size": batch_size, "weight_decay": weight_decay,
            "warmup_ratio": warmup_ratio, "seed": seed, "steps": steps, "n_attack": len(split.attack),
            "n_heldout": len(split.heldout), "epoch_loss": losses}  # fmt: skip
    return AttackResult("relearn", before, after, split, info)


def relearn_models(
    models: Mapping[str, object], tokenizer, forget_records: Sequence[dict], *, seed: int = 0,
    per_author: int = TOFU_ITEMS_PER_AUTHOR, **kwargs
) -> dict[str, AttackResult]:  # fmt: skip
    """``relearn_attack`` on every named model (e.g. {"ga": ..., "retrain": retain_model, "original": ...}) with
    ONE split drawn from ``seed``; ``kwargs`` go to ``relearn_attack`` (``lr`` is required)."""
    split = relearn_split(list(forget_records), seed, per_author=per_author)
    return {name: relearn_attack(model, tokenizer, forget_records, seed=seed, split=split, **kwargs)
            for name, model in models.items()}  # fmt: skip
