"""What every attack shares: the per-item evaluation of a model under a prompt, the result type, the author of a
record, seeded choices that do not depend on the order of other authors, and copies of the model.

Per-item fields of ``evaluate_items`` (one dict per evaluated record)::

    index                     position of the record in the list the attack was given (items align by it)
    available                 False when the attack has no prompt for this record (all numbers below None)
    prompt                    the decoded prompt (question, attack wrapper, context, prefix)
    question, answer          the record's own question and answer
    generation                greedy continuation of the prompt (decoded, stripped)
    rougeL_recall             ROUGE-L recall of the generation against the answer (``metrics.tofu``)
    target_logprob            mean token log-prob of answer + EOS after the prompt (the experiment's
                              ``target_logprob`` is the same quantity after the plain question)
    n_tokens_answer           answer tokens scored (EOS included)
    leak_target               the string whose presence counts as a leak (the fact; the author for "reverse")
    fact_leak                 whether the greedy generation contains it (``metrics.leakage.contains_fact``)
    fact_leak_paraphrased_question   with ``probes``: the same for the greedy answer to ``paraphrased_question``
    fact_leak_any_of_n        with ``num_samples`` = N > 0: the leak target in any of N sampled answers
    fact_logprob              summed log-prob of the fact's tokens inside the answer (records with
                              ``fact_span`` and a fast tokenizer), the graded signal of docs/theory.md §9
"""

from __future__ import annotations

import copy
import hashlib
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, is_dataclass
from typing import Any

import numpy as np

from bs_ref.data.tofu import encode_answer, encode_prompt
from bs_ref.generation import generate, pad_token_id_of, score_answers, stop_token_ids
from bs_ref.lora import is_lora_model, merge_lora
from bs_ref.metrics.leakage import contains_fact, fact_token_logprob, fact_token_mask
from bs_ref.metrics.tofu import max_answer_tokens, rouge_l_recall

TOFU_ITEMS_PER_AUTHOR = 20
"""TOFU has 20 questions per fictitious author, in order: a record without ``author`` belongs to author
``position // 20``."""

MEASURES = ("fact_leak", "fact_leak_paraphrased_question", "fact_leak_any_of_n", "target_logprob", "fact_logprob",
            "rougeL_recall")  # fmt: skip
"""Per-item measures an attack reports (the first three need records with a ``fact``)."""


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
        return {"attack": self.attack, "info": self.info, "split": split, "summary": self.summary(),
                "before": self.before, "after": self.after}  # fmt: skip


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
    num_samples: int = 0,
    temperature: float = 1.0,
    seed: int = 0,
    max_new_tokens: int | None = None,
    batch_size: int = 32,
) -> list[dict]:
    """Per-item results (fields in the module docstring) of ``model`` on ``records`` under ``prompts``.

    ``prompts[i]``: prompt token ids of record i (None: the attack has none for it, the item is unavailable);
    default the plain question under ``template`` (``bs_ref.data.tofu.encode_prompt``). The record's answer is
    scored after the prompt exactly as training encodes it (answer tokens + EOS). ``leak_targets[i]``: the string
    a leak is (default the record's ``fact``; None: no leak measured). ``probes``: also the greedy answer to
    ``paraphrased_question`` (records that have one). ``num_samples`` > 0: that many answers sampled at
    ``temperature`` (seeded, ``bs_ref.generation.generate``) for the any-of-N leak. The probe and the samples are
    generated only for items with a leak target (they score nothing else). ``max_new_tokens``: default
    the longest answer's tokens + 8. The model is not changed (its train/eval mode is restored)."""
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
    max_new_tokens = max_new_tokens or max_answer_tokens(tokenizer, records)
    pad, stops = pad_token_id_of(tokenizer), stop_token_ids(tokenizer, model, template)
    live = [i for i, p in enumerate(prompts) if p is not None]

    answers = [encode_answer(tokenizer, records[i]["answer"]) for i in live]
    scores = score_answers(model, [prompts[i] for i in live], answers, pad, batch_size) if live else []
    greedy = generate(model, [prompts[i] for i in live], pad, stops, max_new_tokens, batch_size) if live else []
    generations = {i: _decode(tokenizer, row[0].tokens) for i, row in zip(live, greedy)}
    rouge = rouge_l_recall([generations[i] for i in live], [records[i]["answer"] for i in live]) if live else []

    # the paraphrase probe and the samples only score a leak: none for items without a leak target (TOFU records)
    targeted = [i for i in live if leak_targets[i]]
    para = {}
    if probes:
        asked = [i for i in targeted if isinstance(records[i].get("paraphrased_question"), str)]
        if asked:
            para_prompts = [encode_prompt(tokenizer, records[i]["paraphrased_question"], template) for i in asked]
            rows = generate(model, para_prompts, pad, stops, max_new_tokens, batch_size)
            para = {i: _decode(tokenizer, row[0].tokens) for i, row in zip(asked, rows)}
    samples = {}
    if num_samples > 0 and targeted:
        rows = generate(model, [prompts[i] for i in targeted], pad, stops, max_new_tokens, batch_size,
                        num_return_sequences=num_samples, do_sample=True, temperature=temperature,
                        seed=seed)  # fmt: skip
        samples = {i: [_decode(tokenizer, g.tokens) for g in row] for i, row in zip(targeted, rows)}

    fast = bool(getattr(tokenizer, "is_fast", False))
    by_live = {i: k for k, i in enumerate(live)}
    items = []
    for i, record in enumerate(records):
        target = leak_targets[i]
        item: dict[str, Any] = {
            "index": int(indices[i]), "available": i in by_live,
            "prompt": _decode(tokenizer, prompts[i]) if prompts[i] is not None else None,
            "question": record["question"], "answer": record["answer"], "generation": None, "rougeL_recall": None,
            "target_logprob": None, "n_tokens_answer": None, "leak_target": target, "fact_leak": None,
            "fact_leak_paraphrased_question": None, "fact_leak_any_of_n": None, "fact_logprob": None,
        }  # fmt: skip
        if i in by_live:
            k = by_live[i]
            s = scores[k]
            item.update(generation=generations[i], rougeL_recall=float(rouge[k]), n_tokens_answer=s.n_tokens,
                        target_logprob=float(s.token_logprobs.mean()))  # fmt: skip
            if target:
                item["fact_leak"] = contains_fact(generations[i], target)
                if i in para:
                    item["generation_paraphrased_question"] = para[i]
                    item["fact_leak_paraphrased_question"] = contains_fact(para[i], target)
                if i in samples:
                    item["samples"] = samples[i]
                    item["fact_leak_any_of_n"] = any(contains_fact(text, target) for text in samples[i])
            if fast and target and target == record.get("fact") and "fact_span" in record:
                mask = fact_token_mask(tokenizer, record["answer"], record["fact_span"], answers[k])
                item["fact_logprob"] = fact_token_logprob(s.token_logprobs, mask)
        items.append(item)
    return items


def mean_of(items: Sequence[dict], name: str) -> float:
    """Mean of one per-item measure over the items that have it (NaN when none has)."""
    values = [float(it[name]) for it in items if it.get(name) is not None]
    return float(np.mean(values)) if values else math.nan
