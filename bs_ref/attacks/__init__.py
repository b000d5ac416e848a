"""Recovery attacks on unlearned models (docs/theory.md §9): does a "forgotten" fact come back?

Every attack works on a copy: the model it is given is bit-identical afterwards. Each returns an
``AttackResult`` with per-item results on the same records before and after the attack.

    relearn      ``relearn.relearn_attack``: fine-tune a copy on half of each forget author's items (split fixed
                 by the seed), evaluate only the held-out half
    quant4/8     ``quantize.quantization_attack``: reload a copy in 4-bit NF4 / 8-bit with bitsandbytes (>= 0.50,
                 CPU included; ``pip install -e '.[attacks]'``), evaluate the forget split
    relearn dose ``dose.relearn_dose``: the relearning attack as a dose–response: one copy relearned at a small
                 constant lr for a schedule of optimizer steps (equal for every model), the held-out half scored
                 after each step count (``RelearnDose``; not one of ``ATTACKS``: the caller runs it)
    NF4 bins     ``nf4.nf4_bin_table``: no attack, a measure of the pair: per Linear layer, the unlearning update
                 against the NF4 bin width (the regime where 4-bit quantization recovers; pure torch)
    prompt:NAME  ``prompts.prompt_attack``: paraphrased question, affirmative answer prefix, few-shot context of
                 the same author, indirect question, reverse question (``prompts.PROMPT_TEMPLATES``)

Measures per item (``_common.evaluate_items``): greedy fact leak, leak under the paraphrased question and in any
of N samples (where records carry a fact), mean token log-prob of the answer, fact-token log-prob, ROUGE-L recall.
The recovery table built from these results (per-item ``recovered``, the spurious gap against the retain model,
``recovery.csv`` and its plot) is the experiment's: ``bs_ref.protocol.recovery_table``. ``replay``: the weights of
a deterministic unlearning run at a given step (attacks at matched forgetting).

    from bs_ref.attacks import Relearning, run_attacks
    from bs_ref.protocol.recovery_table import recovery_rows
    results, skipped = run_attacks({"ga": ga_model, "retrain": retain, "original": original}, tokenizer,
                                   forget_records, ["relearn", "quant4", "quant8", "prompt"],
                                   template="plain", seed=0, relearning=Relearning(lr=6e-3, batch_size=16))
    cells = {(name, 0, 0, attack, "end"): r for attack, by_model in results.items() for name, r in by_model.items()}
    rows = recovery_rows(cells)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from bs_ref.generation import Decoding

from ._common import SIZED_TO_ANSWERS, TOFU_ITEMS_PER_AUTHOR, AttackResult, AttackUnavailable, evaluate_items
from .dose import DOSE_ATTACK, DOSE_STEPS, DoseResponse, RelearnDose, dose_batches, relearn_dose, relearn_dose_models
from .nf4 import (
    NF4_BIN_COLUMNS,
    NF4_BLOCKSIZE,
    NF4_LEVELS,
    nf4_bin_table,
    nf4_codes,
    nf4_dequantize,
    nf4_half_bins,
    nf4_layer_bins,
    nf4_round,
    quantised_linears,
)
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
from .relearn import Relearning, RelearnSplit, relearn_attack, relearn_models, relearn_split
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
    relearning: Relearning | None = None,
    decoding: Decoding = SIZED_TO_ANSWERS,
    k_shots: int = 2,
    per_author: int = TOFU_ITEMS_PER_AUTHOR,
) -> tuple[dict[str, dict[str, AttackResult]], dict[str, str]]:
    """Every attack of ``attacks`` (``expand_attacks``) on every named model, with one relearning split and one
    few-shot draw (both from ``seed``) for all models. Returns ({attack label: {model name: AttackResult}},
    {attack label: why it was skipped}): a quantization attack without bitsandbytes is skipped with the message
    of ``AttackUnavailable`` (it names ``pip install -e '.[attacks]'``). ``relearning`` (required for
    ``relearn``): the fine-tuning of the relearning attack, at the pair's learning rate. Every evaluation uses
    ``decoding`` (its samples seeded by ``seed``). No model is changed."""
    labels = expand_attacks(attacks)
    records = list(forget_records)
    common = dict(template=template, seed=seed, decoding=decoding)
    results: dict[str, dict[str, AttackResult]] = {}
    skipped: dict[str, str] = {}
    if "relearn" in labels:
        if relearning is None:
            raise ValueError("the relearning attack needs relearning=Relearning(lr=...) (the pair's fine-tuning lr)")
        relearned = relearn_models(models, tokenizer, records, relearning, per_author=per_author, **common)
        results["relearn"] = relearned
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
            shots = dict(k=k_shots, per_author=per_author, before=plain)
            found = prompt_attacks(model, tokenizer, records, wanted, **shots, **common)
            for label, result in found.items():
                results.setdefault(label, {})[name] = result
    return {label: results[label] for label in labels if label in results}, skipped


__all__ = [
    "AFFIRMATIVE_PREFIX",
    "ATTACKS",
    "DOSE_ATTACK",
    "DOSE_STEPS",
    "NF4_BIN_COLUMNS",
    "NF4_BLOCKSIZE",
    "NF4_LEVELS",
    "INDIRECT_TEMPLATE",
    "INSTALL",
    "PROMPT_ATTACKS",
    "PROMPT_TEMPLATES",
    "QUANT_ATTACKS",
    "REVERSE_QUESTIONS",
    "SIZED_TO_ANSWERS",
    "AttackResult",
    "AttackUnavailable",
    "Decoding",
    "DoseResponse",
    "RelearnSplit",
    "RelearnDose",
    "Relearning",
    "attack_prompt",
    "bitsandbytes_available",
    "dose_batches",
    "evaluate_items",
    "expand_attacks",
    "few_shot_context",
    "nf4_bin_table",
    "nf4_codes",
    "nf4_dequantize",
    "nf4_half_bins",
    "nf4_layer_bins",
    "nf4_round",
    "prompt_attack",
    "prompt_attacks",
    "quant_before",
    "quantization_attack",
    "quantised_linears",
    "quantize_copy",
    "relearn_attack",
    "relearn_dose",
    "relearn_dose_models",
    "relearn_models",
    "relearn_split",
    "replay_unlearning",
    "require_bitsandbytes",
    "run_attacks",
    "without_probes",
]
