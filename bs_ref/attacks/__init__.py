"""Recovery attacks on unlearned models (docs/theory.md §9): does a "forgotten" fact come back?

Every attack works on a copy: the model it is given is bit-identical afterwards. Each returns an
``AttackResult`` with per-item results on the same records before and after the attack.

    relearn      ``relearn.relearn_attack``: fine-tune a copy on half of each forget author's items (split fixed
                 by the seed), evaluate only the held-out half
    quant4/8     ``quantize.quantization_attack``: reload a copy in 4-bit NF4 / 8-bit with bitsandbytes (>= 0.50,
                 CPU included; ``pip install -e '.[attacks]'``), evaluate the forget split
    prompt:NAME  ``prompts.prompt_attack``: paraphrased question, affirmative answer prefix, few-shot context of
                 the same author, indirect question, reverse question (``prompts.PROMPT_TEMPLATES``)

Measures per item (``_common.evaluate_items``): greedy fact leak, leak under the paraphrased question and in any
of N samples (where records carry a fact), mean token log-prob of the answer, fact-token log-prob, ROUGE-L recall.
``recovery``: per-item ``recovered`` and ``spurious gap`` (against the retain model under the same attack), the
rows of ``recovery.csv`` and ``plot_recovery``. ``replay``: the weights of a deterministic unlearning run at a
given step (attacks at matched forgetting).

    from bs_ref.attacks import run_attacks, recovery_rows
    results, skipped = run_attacks({"ga": ga_model, "retrain": retain, "original": original}, tokenizer,
                                   forget_records, ["relearn", "quant4", "quant8", "prompt"],
                                   template="plain", seed=0, lr=6e-3, batch_size=16)
    cells = {(name, 0, 0, attack, "end"): r for attack, by_model in results.items() for name, r in by_model.items()}
    rows = recovery_rows(cells)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from ._common import TOFU_ITEMS_PER_AUTHOR, AttackResult, AttackUnavailable, evaluate_items
from .prompts import (
    AFFIRMATIVE_PREFIX,
    INDIRECT_TEMPLATE,
    PROMPT_ATTACKS,
    PROMPT_TEMPLATES,
    REVERSE_QUESTIONS,
    attack_prompt,
    few_shot_context,
    prompt_attack,
    prompt_attacks,
)
from .quantize import (
    INSTALL,
    QUANT_ATTACKS,
    bitsandbytes_available,
    quant_before,
    quantization_attack,
    quantize_copy,
    require_bitsandbytes,
    without_probes,
)
from .recovery import (
    RECOVERY_COLUMNS,
    plot_recovery,
    recovery_csv,
    recovery_per_item,
    recovery_rows,
    recovery_runs,
)
from .relearn import RelearnSplit, relearn_attack, relearn_models, relearn_split
from .replay import replay_unlearning

ATTACKS = ("relearn", "quant4", "quant8", "prompt")
"""The names ``--attacks`` takes; ``prompt`` stands for every prompt attack (``prompt:<name>`` for one)."""


def expand_attacks(names: Sequence[str]) -> list[str]:
    """Attack labels of ``names``: ``prompt`` becomes ``prompt:paraphrase``, ``prompt:affirmative``, ...; unknown
    names raise a ValueError listing the known ones."""
    out: list[str] = []
    for name in names:
        if name == "prompt":
            out += [f"prompt:{p}" for p in PROMPT_ATTACKS]
        elif name in ("relearn", *QUANT_ATTACKS) or (name.startswith("prompt:") and name[7:] in PROMPT_ATTACKS):
            out.append(name)
        else:
            known = ", ".join([*ATTACKS, *(f"prompt:{p}" for p in PROMPT_ATTACKS)])
            raise ValueError(f"unknown attack {name!r}; choose from {known}")
    return list(dict.fromkeys(out))


def run_attacks(
    models: Mapping[str, object],
    tokenizer,
    forget_records: Sequence[dict],
    attacks: Sequence[str] = ATTACKS,
    *,
    template: str = "plain",
    seed: int = 0,
    lr: float | None = None,
    epochs: int = 1,
    batch_size: int = 16,
    per_author: int = TOFU_ITEMS_PER_AUTHOR,
    k_shots: int = 2,
    max_new_tokens: int | None = None,
    eval_batch_size: int = 32,
    num_samples: int = 0,
    sample_temperature: float = 1.0,
    num_threads: int | None = None,
) -> tuple[dict[str, dict[str, AttackResult]], dict[str, str]]:
    """Every attack of ``attacks`` (``expand_attacks``) on every named model, with one relearning split and one
    few-shot draw (both from ``seed``) for all models. Returns ({attack label: {model name: AttackResult}},
    {attack label: why it was skipped}): a quantization attack without bitsandbytes is skipped with the message
    of ``AttackUnavailable`` (it names ``pip install -e '.[attacks]'``). ``lr`` (required for ``relearn``): the
    pair's fine-tuning learning rate. No model is changed."""
    labels = expand_attacks(attacks)
    records = list(forget_records)
    common = dict(template=template, seed=seed, max_new_tokens=max_new_tokens, eval_batch_size=eval_batch_size,
                  num_samples=num_samples, sample_temperature=sample_temperature)  # fmt: skip
    results: dict[str, dict[str, AttackResult]] = {}
    skipped: dict[str, str] = {}
    if "relearn" in labels:
        if lr is None:
            raise ValueError("the relearning attack needs lr (the pair's fine-tuning learning rate)")
        results["relearn"] = relearn_models(models, tokenizer, records, per_author=per_author, lr=lr, epochs=epochs,
                                            batch_size=batch_size, num_threads=num_threads, **common)  # fmt: skip
    # the unattacked model's items are evaluated once per model: every quantization attack and (without the
    # paraphrase probe, which changes nothing else) every prompt attack reads the same greedy answers
    before: dict[str, list[dict]] = {}
    for label, bits in QUANT_ATTACKS.items():
        if label not in labels:
            continue
        ok, why = bitsandbytes_available()
        if not ok:
            skipped[label] = why
            continue
        for name, model in models.items():
            if name not in before:
                before[name] = quant_before(model, tokenizer, records, **common)
            result = quantization_attack(model, tokenizer, records, bits, before=before[name], **common)
            results.setdefault(label, {})[name] = result
    wanted = [label[7:] for label in labels if label.startswith("prompt:")]
    if wanted:
        for name, model in models.items():
            plain = without_probes(before[name]) if name in before else None
            found = prompt_attacks(model, tokenizer, records, wanted, k=k_shots, per_author=per_author, before=plain,
                                   **common)  # fmt: skip
            for label, result in found.items():
                results.setdefault(label, {})[name] = result
    return {label: results[label] for label in labels if label in results}, skipped


__all__ = [
    "AFFIRMATIVE_PREFIX",
    "ATTACKS",
    "INDIRECT_TEMPLATE",
    "INSTALL",
    "PROMPT_ATTACKS",
    "PROMPT_TEMPLATES",
    "QUANT_ATTACKS",
    "RECOVERY_COLUMNS",
    "REVERSE_QUESTIONS",
    "AttackResult",
    "AttackUnavailable",
    "RelearnSplit",
    "attack_prompt",
    "bitsandbytes_available",
    "evaluate_items",
    "expand_attacks",
    "few_shot_context",
    "plot_recovery",
    "prompt_attack",
    "prompt_attacks",
    "quant_before",
    "quantization_attack",
    "quantize_copy",
    "recovery_csv",
    "recovery_per_item",
    "recovery_rows",
    "recovery_runs",
    "relearn_attack",
    "relearn_models",
    "relearn_split",
    "replay_unlearning",
    "require_bitsandbytes",
    "run_attacks",
    "without_probes",
]
