"""What every attack shares: the per-item evaluation of a model under a prompt, the result type, the author of a
record, seeded choices that do not depend on the order of other authors, and copies of the model.

Per-item fields of ``evaluate_items`` (one dict per evaluated record)::

    index                     position of the record in the list the attack was given (items align by it)
    available                 False when the attack has no prompt for this record (all numbers below None)
    prompt                    the decoded prompt (question, attack wrapper, context, prefix)
    question, answer          the record's own question and answer
    generation                greedy continuation of the prompt (decoded, stripped)
    rougeL_recall             ROUGE-L recall of the generation against the answer (``metrics.scores``)
    target_logprob            mean token log-prob of answer + EOS after the prompt (the experiment's
                              ``target_logprob`` is the same quantity after the plain question)
    n_tokens_answer           answer tokens scored (EOS included)
    leak_target               the string whose presence counts as a leak (the fact; the author for "reverse")
    fact_leak                 whether the greedy generation contains it (``metrics.leakage.contains_fact``)
    fact_leak_paraphrased_question   with ``probes``: the same for the greedy answer to ``paraphrased_question``
    fact_leak_any_of_n        with ``decoding.num_samples`` = N > 0: the leak target in any of N sampled answers
    fact_logprob              summed log-prob of the fact's tokens inside the answer (records with
                              ``fact_span`` and a fast tokenizer), the graded signal of docs/theory.md §9
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import numpy as np

from bs_ref.data.qa import encode_answer, encode_prompt
from bs_ref.generation import Decoding, generate, pad_token_id_of, score_answers, stop_token_ids
from bs_ref.lora import is_lora_model, merge_lora
from bs_ref.metrics.leakage import contains_fact, fact_token_logprob, fact_token_mask
from bs_ref.metrics.scores import max_answer_tokens, rouge_l_recall

TOFU_ITEMS_PER_AUTHOR = 20
"""TOFU has 20 questions per fictitious author, in order: a record without ``author`` belongs to author
``position // 20``."""

MEASURES = (
    "fact_leak",
    "fact_leak_paraphrased_question",
    "fact_leak_any_of_n",
    "target_logprob",
    "fact_logprob",
    "rougeL_recall",
)
"""Per-item measures an attack reports (the first three need records with a ``fact``)."""

SIZED_TO_ANSWERS = Decoding(max_new_tokens=None)
"""The attacks' default decoding: one greedy answer per prompt, in batches of 32, with a budget of the longest
answer's tokens + 8 (``bs_ref.metrics.scores.max_answer_tokens``)."""


class AttackUnavailable(RuntimeError):
    """An attack cannot run here (a missing optional package); the message says why and how to install it. The
    experiment skips the attack with this message."""


@dataclass
class AttackResult:
    """One attack on one model: per-item results of the model as given (``before``) and under the attack
    (``after``), on the same records in the same order (``index`` aligns them), the relearning split when there
    is one, and what the attack did (``info``: its settings, the training losses, ...)."""

    attack: str
    before: list[dict]
    after: list[dict]
    split: Any = None
    info: dict = field(default_factory=dict)

    def summary(self) -> dict[str, float | None]:
        """Mean of every measure before and after (items without a value skipped; None when no item has one)."""
        out: dict[str, float | None] = {"n_items": len(self.after)}
        for name in MEASURES:
            for when, items in (("before", self.before), ("after", self.after)):
                values = [float(it[name]) for it in items if it.get(name) is not None]
                out[f"{name}_{when}"] = float(np.mean(values)) if values else None
        return out

    def as_dict(self) -> dict:
        """Plain data (JSON-able) for the run directory."""
        split = asdict(self.split) if is_dataclass(self.split) else self.split
        return {
            "attack": self.attack,
            "info": self.info,
            "split": split,
            "summary": self.summary(),
            "before": self.before,
            "after": self.after,
        }


# ------------------------------------------------------------------------------------------------ records
def author_key(record: dict, position: int, per_author: int = TOFU_ITEMS_PER_AUTHOR) -> str:
    """The author a record is about: its ``author`` field (synthetic benchmark), else TOFU's position rule
    (``position // per_author``)."""
    author = record.get("author")
    if isinstance(author, str) and author:
        return author
    if per_author < 1:
        raise ValueError(f"per_author must be >= 1, got {per_author}")
    return f"author#{position // per_author}"


def group_by_author(records: Sequence[dict], per_author: int = TOFU_ITEMS_PER_AUTHOR) -> dict[str, list[int]]:
    """Author -> positions of its records, authors in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, record in enumerate(records):
        groups.setdefault(author_key(record, i, per_author), []).append(i)
    return groups


def stable_seed(*parts: object) -> int:
    """A 64-bit seed from ``parts`` (sha256 of their text): the same on every machine and Python process, and
    independent of anything else (so one author's choices do not move when another author is added)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


def plain_copy(model):
    """A deep copy of ``model`` with any LoRA adapter folded in (``bs_ref.lora.merge_lora``): what an attack
    changes. The model itself is never touched."""
    return merge_lora(model, inplace=False) if is_lora_model(model) else copy.deepcopy(model)


# ------------------------------------------------------------------------------------------------ evaluation
def _decode(tokenizer, ids: Sequence[int]) -> str:
    return tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def evaluate_items(
    model,
    tokenizer,
    records: Sequence[dict],
    *,
    template: str = "plain",
    prompts: Sequence[Sequence[int] | None] | None = None,
    leak_targets: Sequence[str | None] | None = None,
    indices: Sequence[int] | None = None,
    probes: bool = False,
    decoding: Decoding = SIZED_TO_ANSWERS,
    seed: int = 0,
) -> list[dict]:
    """Per-item results (fields in the module docstring) of ``model`` on ``records`` under ``prompts``.

    ``prompts[i]``: prompt token ids of record i (None: the attack has none for it, the item is unavailable);
    default the plain question under ``template`` (``bs_ref.data.qa.encode_prompt``). The record's answer is
    scored after the prompt exactly as training encodes it (answer tokens + EOS). ``leak_targets[i]``: the string
    a leak is (default the record's ``fact``; None: no leak measured). ``probes``: also the greedy answer to
    ``paraphrased_question`` (records that have one). ``decoding.num_samples`` > 0: that many answers sampled
    (seeded by ``seed``, ``bs_ref.generation.generate``) for the any-of-N leak. The probe and the samples are
    generated only for items with a leak target (they score nothing else). ``decoding.max_new_tokens`` None (the
    default): the longest answer's tokens + 8. The model is not changed (its train/eval mode is restored)."""
    records = list(records)
    if not records:
        raise ValueError("no records to evaluate; pass at least one forget record")
    if prompts is None:
        prompts = [encode_prompt(tokenizer, r["question"], template) for r in records]
    if leak_targets is None:
        leak_targets = [r.get("fact") for r in records]
    indices = list(range(len(records))) if indices is None else list(indices)
    if not len(prompts) == len(leak_targets) == len(indices) == len(records):
        raise ValueError("prompts, leak_targets and indices need one entry per record")
    budget = decoding.max_new_tokens or max_answer_tokens(tokenizer, records)
    decoding = dataclasses.replace(decoding, max_new_tokens=budget)
    pad, stops = pad_token_id_of(tokenizer), stop_token_ids(tokenizer, model, template)
    live = [i for i, p in enumerate(prompts) if p is not None]

    answers = [encode_answer(tokenizer, records[i]["answer"]) for i in live]
    scores = score_answers(model, [prompts[i] for i in live], answers, pad, decoding.batch_size) if live else []
    greedy = generate(model, [prompts[i] for i in live], pad, stops, decoding.greedy()) if live else []
    generations = {i: _decode(tokenizer, row[0].tokens) for i, row in zip(live, greedy)}
    rouge = rouge_l_recall([generations[i] for i in live], [records[i]["answer"] for i in live]) if live else []

    # the paraphrase probe and the samples only score a leak: none for items without a leak target (TOFU records)
    targeted = [i for i in live if leak_targets[i]]
    para = {}
    if probes:
        asked = [i for i in targeted if isinstance(records[i].get("paraphrased_question"), str)]
        if asked:
            para_prompts = [encode_prompt(tokenizer, records[i]["paraphrased_question"], template) for i in asked]
            rows = generate(model, para_prompts, pad, stops, decoding.greedy())
            para = {i: _decode(tokenizer, row[0].tokens) for i, row in zip(asked, rows)}
    samples = {}
    if decoding.num_samples > 0 and targeted:
        rows = generate(model, [prompts[i] for i in targeted], pad, stops, decoding, seed)
        samples = {i: [_decode(tokenizer, g.tokens) for g in row] for i, row in zip(targeted, rows)}

    fast = bool(getattr(tokenizer, "is_fast", False))
    by_live = {i: k for k, i in enumerate(live)}
    items = []
    for i, record in enumerate(records):
        item = _blank_item(tokenizer, record, prompts[i], leak_targets[i], indices[i], i in by_live)
        if i in by_live:
            k = by_live[i]
            found = _Found(generations[i], float(rouge[k]), scores[k], answers[k], para.get(i), samples.get(i))
            _fill_item(item, tokenizer, record, found, fast)
        items.append(item)
    return items


@dataclasses.dataclass(frozen=True)
class _Found:
    """What the evaluation found for one available item: its greedy answer and ROUGE-L recall, the answer's
    teacher-forced scores and token ids, and the probe's answer and the samples where they were generated."""

    generation: str
    rouge: float
    scores: Any
    answer_ids: list[int]
    paraphrased: str | None
    samples: list[str] | None


def _blank_item(tokenizer, record: dict, prompt, target: str | None, index: int, available: bool) -> dict:
    """An item with every measure None (what an unavailable item keeps)."""
    return {
        "index": int(index),
        "available": available,
        "prompt": _decode(tokenizer, prompt) if prompt is not None else None,
        "question": record["question"],
        "answer": record["answer"],
        "generation": None,
        "rougeL_recall": None,
        "target_logprob": None,
        "n_tokens_answer": None,
        "leak_target": target,
        "fact_leak": None,
        "fact_leak_paraphrased_question": None,
        "fact_leak_any_of_n": None,
        "fact_logprob": None,
    }


def _fill_item(item: dict, tokenizer, record: dict, found: _Found, fast: bool) -> None:
    """Write an available item's measures into ``item``."""
    target, s = item["leak_target"], found.scores
    item.update(
        generation=found.generation,
        rougeL_recall=found.rouge,
        n_tokens_answer=s.n_tokens,
        target_logprob=float(s.token_logprobs.mean()),
    )
    if target:
        item["fact_leak"] = contains_fact(found.generation, target)
        if found.paraphrased is not None:
            item["generation_paraphrased_question"] = found.paraphrased
            item["fact_leak_paraphrased_question"] = contains_fact(found.paraphrased, target)
        if found.samples is not None:
            item["samples"] = found.samples
            item["fact_leak_any_of_n"] = any(contains_fact(text, target) for text in found.samples)
    if fast and target and target == record.get("fact") and "fact_span" in record:
        mask = fact_token_mask(tokenizer, record["answer"], record["fact_span"], found.answer_ids)
        item["fact_logprob"] = fact_token_logprob(s.token_logprobs, mask)


def mean_of(items: Sequence[dict], name: str) -> float:
    """Mean of one per-item measure over the items that have it (NaN when none has)."""
    values = [float(it[name]) for it in items if it.get(name) is not None]
    return float(np.mean(values)) if values else math.nan
