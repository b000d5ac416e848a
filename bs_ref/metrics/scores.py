"""TOFU evaluation (docs/theory.md §6): Prob, ROUGE-L recall, truth ratio, forget quality, model utility.

TOFU: Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", 2024 (locuslab/tofu); the
evaluation follows OpenUnlearning (locuslab/open-unlearning) and is used by Li et al., "LLM Unlearning
with LLM Beliefs", ICLR 2026 (arXiv 2510.19422). Per item, with P(a|q) = exp(-mean NLL of a's tokens):

    Prob          forget / retain: P(answer|q); real authors / world facts: P(a) / (P(a) + sum_j P(â_j))
    ROUGE         ROUGE-L recall of the greedy generation against the answer (rouge_score, stemmer on)
    truth ratio   R = geomean_j P(â_j) / P(ã)   (perturbed â_j over paraphrased ã; log space)
                  forget split: mean min(R, 1/R); other splits: mean max(0, 1 - R)
    forget quality  FQ = scipy.stats.ks_2samp p-value between the model's and the retain model's
                  per-item R on the forget split; reported as FQ, log10 FQ (never a natural log) and n
    model utility MU = scipy.stats.hmean of the 9 numbers {Prob, ROUGE, TR} x {retain, real authors,
                  world facts}

Real authors / world facts have no paraphrased answer: the answer itself plays ã (as in locuslab/tofu).

Conventions (named, recorded in every output; ``tofu`` is the default):
    tofu         all items, geometric mean over perturbed answers (OpenUnlearning's default)
    tofu-legacy  the first 300 items of every split (locuslab/tofu's ds_size=300), geometric mean
    arithmetic   all items, R = mean_j P(â_j) / P(ã): the other formula in locuslab/tofu (MU 0.5859 vs
                 0.6227 on the same Llama-2-7b log); by AM-GM it never gives a smaller R

Per-item output format (``EVAL_FORMAT``), what ``evaluate_split`` returns and ``write_eval_log`` writes::

    {"format": "bs_ref.tofu_eval/v1", "convention": ..., "meta": {...},
     "splits": {"forget": [item, ...], "retain": [...], "real_authors": [...], "world_facts": [...]}}

    item = {"index", "question", "answer", "generation",
            "nll_answer", "nll_paraphrased", "nll_perturbed": [..],   # mean NLLs: everything else derives
            "n_tokens_answer", "prob", "truth_ratio" (geometric R), "rougeL_recall",
            "es", "em", "para_prob", "tr_mod",                         # metrics/paper.py
            "nll_heldout" when the record has a heldout_answer (synthetic benchmark),
            leakage fields when the record has "fact" (metrics/leakage.py)}

``aggregate`` recomputes every number from the raw ``nll_*`` / ``rougeL_recall`` fields, so one file
serves every convention; ``load_locuslab_log`` maps locuslab/tofu's aggregated logs to the same items.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from rouge_score import rouge_scorer
from scipy.special import logsumexp
from scipy.stats import hmean, ks_2samp

from bs_ref.generation import (
    AnswerScores,
    Decoding,
    decoding_with,
    encode_pair,
    generate_answers,
    pad_token_id_of,
    score_answers,
)

from . import leakage, paper

CONVENTIONS = ("tofu", "tofu-legacy", "arithmetic")
LEGACY_DS_SIZE = 300
SPLIT_KINDS = ("forget", "retain", "real_authors", "world_facts")
UTILITY_SPLITS = ("retain", "real_authors", "world_facts")
UTILITY_METRICS = ("prob", "rouge", "truth_ratio")
EVAL_FORMAT = "bs_ref.tofu_eval/v1"
LOCUSLAB_FILES = {
    "eval_log_forget.json": "forget",
    "eval_log.json": "retain",
    "eval_real_author_wo_options.json": "real_authors",
    "eval_real_world_wo_options.json": "world_facts",
}


def check_convention(convention: str) -> None:
    if convention not in CONVENTIONS:
        raise ValueError(f"unknown convention {convention!r}; choose one of {CONVENTIONS}")


def check_kind(kind: str) -> None:
    if kind not in SPLIT_KINDS:
        raise ValueError(f"unknown split kind {kind!r}; choose one of {SPLIT_KINDS}")


# --------------------------------------------------------------------------------------------------
# Per-item math (numpy), shared by evaluated models and logged evaluations.
# --------------------------------------------------------------------------------------------------


def log_truth_ratio(nll_paraphrased: float, nll_perturbed: Sequence[float], convention: str = "tofu") -> float:
    """log R = log P_w - log P_c, for mean NLLs anywhere in [0, inf] (see ``truth_ratio``); NaN raises."""
    check_convention(convention)
    nll_c = float(paper.check_nll(nll_paraphrased, "nll_paraphrased"))
    pert = paper.check_nll(nll_perturbed, "nll_perturbed")
    if pert.size == 0:
        raise ValueError("truth_ratio needs at least one perturbed answer (perturbed_answer is empty)")
    if convention == "arithmetic":
        with np.errstate(divide="ignore"):  # every perturbed answer impossible: log 0 = -inf
            log_p_wrong = logsumexp(-pert) - math.log(pert.size)  # log mean_j P(â_j)
    else:
        log_p_wrong = -paper.stable_mean(pert)  # log geomean_j P(â_j)
    if log_p_wrong == -math.inf and nll_c == math.inf:
        return 0.0  # P_w = P_c = 0: both impossible, indistinguishable (the limit along equal NLLs)
    return float(log_p_wrong + nll_c)  # log P_w - log P_c, P_c = exp(-nll_paraphrased)


def truth_ratio(nll_paraphrased: float, nll_perturbed: Sequence[float], convention: str = "tofu") -> float:
    """R = geomean_j P(â_j) / P(ã) (or the arithmetic mean of P(â_j) for ``arithmetic``), in log space.

    Defined for any mean NLL in [0, inf]: R = exp(log R) is inf when it overflows (or P(ã) = 0) and 0 when
    every perturbed answer has P = 0; when both sides are impossible R = 1 (as for any equal NLLs). A NaN NLL
    (NaN logits) raises a ValueError.
    """
    log_r = log_truth_ratio(nll_paraphrased, nll_perturbed, convention)
    try:
        return float(math.exp(log_r))  # P_w / P_c
    except OverflowError:
        return math.inf


def truth_ratio_score(ratio: np.ndarray | float, kind: str) -> np.ndarray:
    """Forget split: min(R, 1/R) (1 = indistinguishable from chance); other splits: max(0, 1 - R). In [0, 1]
    for every R in [0, inf] (R = 0 or inf scores 0); a NaN R raises a ValueError."""
    check_kind(kind)
    r = np.asarray(ratio, dtype=float)
    if np.isnan(r).any():
        raise ValueError(f"truth ratios must be numbers in [0, inf], got NaN in {ratio!r} (NaN NLLs?)")
    if kind == "forget":
        with np.errstate(divide="ignore"):  # R = 0: 1/R = inf, min(0, inf) = 0
            return np.minimum(r, 1.0 / r)
    return np.maximum(0.0, 1.0 - r)


def answer_prob(nll_answer: float, nll_perturbed: Sequence[float], kind: str) -> float:
    """Prob of one item: P(a) for forget/retain; P(a) / (P(a) + sum_j P(â_j)) for real authors/world facts.

    In [0, 1] for mean NLLs anywhere in [0, inf]: an impossible answer (NLL inf) gets 0, or 1 / (1 + #perturbed)
    when every candidate is impossible (all count as equally likely, as for any equal NLLs). NaN raises.
    """
    check_kind(kind)
    if kind in ("forget", "retain"):
        return paper.prob_from_nll(nll_answer)
    nll_a = float(paper.check_nll(nll_answer, "nll_answer"))
    pert = paper.check_nll(nll_perturbed, "nll_perturbed")
    if nll_a == math.inf:
        return 1.0 / (1 + pert.size) if bool(np.all(pert == math.inf)) else 0.0
    log_all = logsumexp(np.concatenate([[-nll_a], -pert]))
    return float(math.exp(-nll_a - log_all))


def forget_quality(model_ratios: Sequence[float], retain_ratios: Sequence[float]) -> dict:
    """FQ = ks_2samp p-value of the two per-item truth-ratio samples; with log10 FQ, the KS statistic and n."""
    a, b = np.asarray(model_ratios, dtype=float), np.asarray(retain_ratios, dtype=float)
    if a.size == 0 or b.size == 0:
        raise ValueError("forget_quality needs truth ratios from both models on the forget split (one is empty)")
    test = ks_2samp(a, b)
    p = float(test.pvalue)
    return {
        "forget_quality": p,
        "log10_forget_quality": math.log10(p) if p > 0 else float("-inf"),
        "ks_statistic": float(test.statistic),
        "n": int(a.size),
        "n_retain_model": int(b.size),
    }


def model_utility(components: dict[str, float]) -> float:
    """MU = harmonic mean (scipy.stats.hmean) of the 9 numbers {prob, rouge, truth_ratio} x utility splits."""
    names = [f"{s}_{m}" for s in UTILITY_SPLITS for m in UTILITY_METRICS]
    missing = [n for n in names if components.get(n) is None]
    if missing:
        raise ValueError(f"model_utility needs all 9 components; missing {missing} (evaluate every utility split)")
    return float(hmean([components[n] for n in names]))


def apply_convention(items: list[dict], convention: str) -> list[dict]:
    """``tofu-legacy`` keeps the first 300 items of a split (locuslab/tofu's ds_size); others keep all."""
    check_convention(convention)
    return items[:LEGACY_DS_SIZE] if convention == "tofu-legacy" else items


def item_ratios(items: list[dict], convention: str) -> np.ndarray:
    """Per-item truth ratios R of a split under ``convention`` (from the raw mean-NLL fields)."""
    for i, it in enumerate(items):
        if it.get("nll_paraphrased") is None or not it.get("nll_perturbed"):
            raise ValueError(
                f"item {i} has no nll_paraphrased / nll_perturbed; evaluate the split from its *_perturbed "
                "config (records with paraphrased_answer and perturbed_answer)"
            )
    return np.array([truth_ratio(it["nll_paraphrased"], it["nll_perturbed"], convention) for it in items])


def split_summary(items: list[dict], kind: str, convention: str = "tofu") -> dict:
    """Mean Prob, ROUGE-L recall and truth-ratio score of one split (docs/theory.md §6)."""
    check_kind(kind)
    items = apply_convention(items, convention)
    if not items:
        raise ValueError(f"the {kind} split has no items; pass a non-empty evaluation")
    probs = [answer_prob(it["nll_answer"], it.get("nll_perturbed") or [], kind) for it in items]
    return {
        "prob": float(np.mean(probs)),
        "rouge": float(np.mean([it["rougeL_recall"] for it in items])),
        "truth_ratio": float(np.mean(truth_ratio_score(item_ratios(items, convention), kind))),
        "n": len(items),
    }


def _mean_field(items: list[dict], field: str) -> float | None:
    values = [it[field] for it in items if it.get(field) is not None]
    return float(np.mean(values)) if values else None


def aggregate(
    per_split: dict[str, list[dict]],
    retain_model_forget_items: list[dict] | None = None,
    convention: str = "tofu",
    fluency_classifier=None,
) -> dict:
    """Every summary number of docs/theory.md §6 from per-item results: FQ, MU and its 9 components, the forget
    split's Prob/ROUGE/TR, the paper's Mem/Util/Agg, and the leakage rates when items carry facts.

    ``per_split`` maps split kinds ("forget", "retain", "real_authors", "world_facts") to item lists
    (``evaluate_split`` output or ``load_locuslab_log``). ``retain_model_forget_items``: the retain
    model's forget-split items, for forget quality (None: FQ is reported as None). Missing inputs give
    None for the numbers that need them, never an invented value.
    """
    check_convention(convention)
    unknown = set(per_split) - set(SPLIT_KINDS)
    if unknown:
        raise ValueError(f"unknown split names {sorted(unknown)}; use {SPLIT_KINDS}")
    out: dict = {"convention": convention}
    summaries = {kind: split_summary(items, kind, convention) for kind, items in per_split.items() if items}
    for kind in SPLIT_KINDS:
        for metric in UTILITY_METRICS:
            out[f"{kind}_{metric}"] = summaries[kind][metric] if kind in summaries else None
    complete = all(out[f"{s}_{m}"] is not None for s in UTILITY_SPLITS for m in UTILITY_METRICS)
    out["model_utility"] = model_utility(out) if complete else None

    forget = apply_convention(per_split.get("forget") or [], convention)
    fq = {"forget_quality": None, "log10_forget_quality": None, "ks_statistic": None, "n": len(forget)}
    if forget and retain_model_forget_items:
        retain_forget = apply_convention(retain_model_forget_items, convention)
        fq = forget_quality(item_ratios(forget, convention), item_ratios(retain_forget, convention))
    out.update(fq)

    # The paper's Table-1 metrics (metrics/paper.py) on the forget split.
    es, em = _mean_field(forget, "es"), _mean_field(forget, "em")
    para_prob = float(np.mean([paper.prob_from_nll(it["nll_paraphrased"]) for it in forget])) if forget else None
    tr_mod = float(np.mean(paper.tr_mod(item_ratios(forget, convention)))) if forget else None
    generations = [it.get("generation") for it in forget]
    fluency, fluency_source = None, None
    if forget and all(isinstance(g, str) for g in generations):
        scores, fluency_source = paper.fluency_scores(generations, fluency_classifier)
        fluency = float(scores.mean())
    mem = paper.mem(es, em, para_prob, tr_mod) if None not in (es, em, para_prob, tr_mod) else None
    util = paper.util(out["model_utility"], fluency) if None not in (out["model_utility"], fluency) else None
    out.update(
        extraction_strength=es,
        exact_memorisation=em,
        para_prob=para_prob,
        tr_mod=tr_mod,
        fluency=fluency,
        fluency_source=fluency_source,
        mem=mem,
        util=util,
        agg=paper.agg(mem, util) if None not in (mem, util) else None,
    )
    heldout = [paper.prob_from_nll(it["nll_heldout"]) for it in forget if it.get("nll_heldout") is not None]
    out["heldout_prob"] = float(np.mean(heldout)) if heldout else None  # P(never-trained phrasing)
    out.update(leakage.summarise(forget))
    return out


# --------------------------------------------------------------------------------------------------
# Files: the project's per-item format and locuslab/tofu's aggregated logs.
# --------------------------------------------------------------------------------------------------


def load_locuslab_log(path: str | Path) -> dict[str, list[dict]]:
    """Per-item results from a locuslab/tofu ``eval_log_aggregated.json`` (keys ``eval_log.json`` ...).

    Maps avg_gt_loss -> nll_answer, avg_paraphrased_loss -> nll_paraphrased, average_perturb_loss ->
    nll_perturbed, keeps rougeL_recall, and takes the generation from ``generated_text`` =
    [prompt, generation, ground truth]. Items are ordered by their integer index.
    """
    path = Path(path)
    raw = _read_json(path)
    if not isinstance(raw, dict) or not (set(raw) & set(LOCUSLAB_FILES)):
        raise ValueError(f"{path} is not a locuslab/tofu aggregated log: expected the keys {list(LOCUSLAB_FILES)}")
    per_split: dict[str, list[dict]] = {}
    for key, kind in LOCUSLAB_FILES.items():
        if key not in raw:
            continue
        log = raw[key]
        for field in ("avg_gt_loss", "avg_paraphrased_loss", "average_perturb_loss", "rougeL_recall"):
            if field not in log:
                raise ValueError(f"{path}: {key} has no field {field!r}; is this an eval_log_aggregated.json?")
        items = []
        for index in sorted(log["avg_gt_loss"], key=int):
            generated = log.get("generated_text", {}).get(index)
            items.append(
                {
                    "index": int(index),
                    "nll_answer": float(log["avg_gt_loss"][index]),
                    "nll_paraphrased": float(log["avg_paraphrased_loss"][index]),
                    "nll_perturbed": [float(v) for v in log["average_perturb_loss"][index]],
                    "rougeL_recall": float(log["rougeL_recall"][index]),
                    "generation": generated[1] if generated else None,
                    "answer": generated[2] if generated else None,
                }
            )
        per_split[kind] = items
    return per_split


def write_eval_log(path: str | Path, per_split: dict[str, list[dict]], convention: str = "tofu", **meta) -> Path:
    """Write per-item results in ``EVAL_FORMAT`` atomically (temp file + rename)."""
    check_convention(convention)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"format": EVAL_FORMAT, "convention": convention, "meta": meta, "splits": per_split}
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
    with os.fdopen(fd, "w") as f:
        json.dump(payload, f, indent=1)
    os.replace(tmp, path)
    return path


def read_eval_log(path: str | Path) -> dict[str, list[dict]]:
    """Per-item results from either format: ``EVAL_FORMAT`` files or locuslab/tofu aggregated logs."""
    path = Path(path)
    raw = _read_json(path)
    if isinstance(raw, dict) and raw.get("format") == EVAL_FORMAT:
        splits = raw.get("splits")
        if not isinstance(splits, dict):
            raise ValueError(f"{path}: 'splits' must map split names to item lists")
        return splits
    if isinstance(raw, dict) and set(raw) & set(LOCUSLAB_FILES):
        return load_locuslab_log(path)
    raise ValueError(
        f"{path} is neither a {EVAL_FORMAT} file (key 'format') nor a locuslab/tofu aggregated log "
        f"(keys {list(LOCUSLAB_FILES)})"
    )


def _read_json(path: Path):
    if not path.is_file():
        raise ValueError(f"evaluation log {path} does not exist; pass the path of a JSON file")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}); pass an evaluation log") from err


# --------------------------------------------------------------------------------------------------
# Model-facing: one split's per-item results (scoring and generation: bs_ref.generation).
# --------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _rouge_scorer():

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=True)


def rouge_l_recall(generations: Sequence[str], references: Sequence[str]) -> np.ndarray:
    """ROUGE-L recall of each generation against its reference (rouge_score, stemmer on; docs/theory.md §6)."""
    if len(generations) != len(references):
        raise ValueError(f"got {len(generations)} generations but {len(references)} references")
    scorer = _rouge_scorer()
    return np.array([scorer.score(ref, gen)["rougeL"].recall for gen, ref in zip(generations, references)])


def answer_logprobs(
    model, tokenizer, questions: Sequence[str], answers: Sequence[str], template: str = "plain", batch_size: int = 32
) -> tuple[np.ndarray, np.ndarray]:
    """Teacher-forced (sum log-prob, number of answer tokens) of every answer after its question; batched."""
    if len(questions) != len(answers):
        raise ValueError(f"got {len(questions)} questions but {len(answers)} answers")
    pairs = [encode_pair(tokenizer, q, a, template) for q, a in zip(questions, answers)]
    scores = score_answers(model, [p for p, _ in pairs], [a for _, a in pairs], pad_token_id_of(tokenizer), batch_size)
    return np.array([s.sum_logprob for s in scores]), np.array([s.n_tokens for s in scores])


def max_answer_tokens(tokenizer, records: Sequence[dict], margin: int = 8) -> int:
    """A generation budget sized to the answers: the longest answer's token count plus ``margin``."""
    return max(len(tokenizer(r["answer"], add_special_tokens=False)["input_ids"]) for r in records) + margin


def _check_records(records: Sequence[dict], kind: str) -> None:
    check_kind(kind)
    if not records:
        raise ValueError(f"the {kind} split is empty; pass at least one record")
    needed = ["question", "answer", "perturbed_answer"]
    if kind in ("forget", "retain"):
        needed.append("paraphrased_answer")
    for i, rec in enumerate(records):
        for field in needed:
            if field not in rec:
                raise ValueError(
                    f"{kind} record {i} has no field {field!r}; evaluate from the *_perturbed config "
                    "(e.g. forget10_perturbed, retain_perturbed, real_authors_perturbed)"
                )
        if not isinstance(rec["perturbed_answer"], list) or not rec["perturbed_answer"]:
            raise ValueError(f"{kind} record {i}: perturbed_answer must be a non-empty list of strings")


def evaluate_split(
    model,
    tokenizer,
    records: Sequence[dict],
    kind: str,
    template: str = "plain",
    decoding: Decoding | None = None,
    seed: int = 0,
    share_prompts: bool = False,
    **settings,
) -> list[dict]:
    """Per-item results of one split (the item format in the module docstring).

    All candidates of all items (answer, paraphrased answer, perturbed answers) are scored in padded
    batches, each once; every metric reuses the same scores. Greedy answers come from one batched
    generation. A ``heldout_answer`` (synthetic benchmark: a phrasing never trained) is scored too
    (``nll_heldout``). When records carry a ``fact``, the leakage fields are added: the fact in the
    greedy answer and the log-prob of the fact's tokens inside the answer / paraphrased / held-out
    phrasing; on the forget split also the fact in the greedy answer to ``paraphrased_question`` and in
    any of ``decoding.num_samples`` sampled answers (seeded by ``seed``; extra generations, so only where leakage
    is measured). ``decoding`` (default ``Decoding()``: 200 new tokens, batches of 32) and ``settings`` (its
    fields by name, e.g. ``max_new_tokens=64``) as for ``bs_ref.generation.generate``. ``share_prompts``: the
    candidates of a question continue from one run of its prompt (``bs_ref.generation.score_answers``).
    """
    decoding = decoding_with(decoding, **settings)
    _check_records(records, kind)
    has_facts = all("fact" in r for r in records)
    by_item = _score_candidates(model, tokenizer, records, kind, template, decoding.batch_size, share_prompts)

    # Greedy answers (and, for leakage, answers to the paraphrased question and N samples). The extra
    # generations (paraphrased question, samples) are leakage probes: forget split only.
    questions = [r["question"] for r in records]
    probe = has_facts and kind == "forget"
    para_questions = [r.get("paraphrased_question") for r in records] if probe else []
    use_para_q = probe and all(isinstance(q, str) for q in para_questions)
    asked = questions + (para_questions if use_para_q else [])
    texts = generate_answers(model, tokenizer, asked, template, decoding.greedy())
    generations, para_generations = texts[: len(records)], texts[len(records) :]
    samples = None
    if probe and decoding.num_samples > 0:
        samples = generate_answers(model, tokenizer, questions, template, decoding, seed)
    rouge = rouge_l_recall(generations, [r["answer"] for r in records])

    items = []
    for i, rec in enumerate(records):
        item = _item(i, rec, kind, by_item[i], generations[i], float(rouge[i]))
        if has_facts:
            para = para_generations[i] if use_para_q else None
            sampled = samples[i] if samples is not None else None
            scored = {role: pairs[0] for role, pairs in by_item[i].items() if role != "perturbed_answer"}
            item.update(leakage.item_fields(tokenizer, rec, scored, generations[i], para, sampled))
        items.append(item)
    return items


def _score_candidates(
    model, tokenizer, records, kind: str, template: str, batch_size: int, share_prompts: bool = False
) -> list[dict]:
    """Per item, {role: [(scores, answer ids), ...]}: the teacher-forced scores of every candidate (answer,
    paraphrased answer, held-out answer, perturbed answers; roles are the record's text fields), one batched
    pass in which each distinct candidate runs once."""
    candidates = []  # (item, role, answer text)
    for i, rec in enumerate(records):
        candidates.append((i, "answer", rec["answer"]))
        if kind in ("forget", "retain"):
            candidates.append((i, "paraphrased_answer", rec["paraphrased_answer"]))
        if isinstance(rec.get("heldout_answer"), str):  # synthetic benchmark: a phrasing never trained
            candidates.append((i, "heldout_answer", rec["heldout_answer"]))
        candidates.extend((i, "perturbed_answer", wrong) for wrong in rec["perturbed_answer"])
    encoded = [encode_pair(tokenizer, records[i]["question"], text, template) for i, _, text in candidates]
    pad = pad_token_id_of(tokenizer)
    scores = score_answers(model, [p for p, _ in encoded], [a for _, a in encoded], pad, batch_size, share_prompts)
    by_item: list[dict[str, list[tuple[AnswerScores, list[int]]]]] = [{} for _ in records]
    for (i, role, _), s, (_, ids) in zip(candidates, scores, encoded):
        by_item[i].setdefault(role, []).append((s, ids))
    return by_item


def _item(i: int, rec: dict, kind: str, scored_roles: dict, generation: str, rouge: float) -> dict:
    """The numbers of one item from its candidates' scores and its greedy answer (leakage fields aside)."""
    scored = {role: pairs[0] for role, pairs in scored_roles.items() if role != "perturbed_answer"}
    ans = scored["answer"][0]
    nll_perturbed = [s.mean_nll for s, _ in scored_roles["perturbed_answer"]]
    nll_paraphrased = scored["paraphrased_answer"][0].mean_nll if "paraphrased_answer" in scored else ans.mean_nll
    ratio = truth_ratio(nll_paraphrased, nll_perturbed)
    item = {
        "index": i,
        "question": rec["question"],
        "answer": rec["answer"],
        "generation": generation,
        "nll_answer": ans.mean_nll,
        "nll_paraphrased": nll_paraphrased,
        "nll_perturbed": nll_perturbed,
        "n_tokens_answer": ans.n_tokens,
        "prob": answer_prob(ans.mean_nll, nll_perturbed, kind),
        "truth_ratio": ratio,
        "rougeL_recall": rouge,
        "es": paper.extraction_strength(ans.argmax_matches),
        "em": paper.exact_memorisation(ans.argmax_matches),
        "para_prob": paper.prob_from_nll(nll_paraphrased),
        "tr_mod": float(paper.tr_mod(ratio)),
    }
    if "heldout_answer" in scored:
        item["nll_heldout"] = scored["heldout_answer"][0].mean_nll
    return item


def evaluate(
    model, tokenizer, splits: dict[str, Sequence[dict]], template: str = "plain", **kwargs
) -> dict[str, list[dict]]:
    """``evaluate_split`` for every split kind in ``splits`` (e.g. forget, retain, real_authors, world_facts)."""
    return {kind: evaluate_split(model, tokenizer, recs, kind, template, **kwargs) for kind, recs in splits.items()}
