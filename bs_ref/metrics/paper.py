"""The paper's Table-1 metrics: extraction strength, exact memorisation, Mem / Util / Agg (docs/theory.md §6).

Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), Table 1 reports

    Mem  = HM(1 - ES, 1 - EM, 1 - ParaProb, 1 - TR_mod)     each term floored at a small eps
    Util = HM(MU, Fluency)
    Agg  = HM(Mem, Util)

on the forget split, where (per item, then averaged over items):

    ES       extraction strength  1 - k*/|y|: k* is the smallest suffix start such that the greedy
             teacher-forced predictions match the label from position k* to the end (k* = |y|, the empty
             suffix, when even the last token is wrong, so ES = 0 then; OpenUnlearning's loop stops at
             k = |y| - 1 and reports 1/|y| in that case — we follow the definition)
    EM       exact memorisation: the fraction of answer tokens whose argmax equals the label
    ParaProb mean P(paraphrased answer | q) with P = exp(-mean NLL) (``prob_from_nll``)
    TR_mod   P_c / (P_c + P_w): P_c the paraphrased (correct) answer's probability, P_w the perturbed
             (wrong) answers' probability pooled as the truth-ratio convention says (geometric or
             arithmetic mean); with the truth ratio R = P_w / P_c this is 1 / (1 + R)
    MU       TOFU model utility (metrics/tofu.py)

HM is the harmonic mean (scipy.stats.hmean). All four Mem terms are "higher = more memorised", so
1 - term is "forgotten", and the harmonic mean is high only when every channel has forgotten.

Every term is defined for any mean NLL in [0, inf] (a collapsed model is a result, not a crash): P = exp(-NLL)
is 0 at NLL = inf, the truth ratio is computed in log space (``metrics.scores.truth_ratio``: 0, inf or 1 at the
limits) and TR_mod = 1 / (1 + R) lies in [0, 1] for every R in [0, inf]. A NaN NLL (NaN logits) raises a
ValueError naming the field.

Fluency. The paper scores generations with a gibberish classifier downloaded from a model hub
(OpenUnlearning's ``forget_Q_A_gibberish``: the probability of the "clean" class on the forget-split
generations). Offline we use a documented proxy, ``fluency_proxy``; ``fluency_scores(texts,
classifier=PATH)`` runs a user's local copy of a text-classification model instead (any
``transformers`` text-classification checkpoint; the score is the probability of ``clean_label``).
Which one produced a number is recorded next to it (``fluency_source``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from scipy.stats import hmean

MEM_EPS = 1e-3
"""Floor for every harmonic-mean term: HM is 0 if any term is 0, which would hide the other terms."""

FLUENCY_PROXY = "proxy:repetition+charset"
WORD = re.compile(r"\w+", re.UNICODE)


def extraction_strength(argmax_matches: Sequence[bool] | np.ndarray) -> float:
    """ES = 1 - k*/|y| from the per-token "greedy prediction == label" flags of one answer (docs/theory.md §6).

    ``argmax_matches[i]`` says whether the teacher-forced argmax at answer position i equals the label.
    k* = the smallest k such that positions k..|y|-1 all match (|y| when the last one does not).
    """
    matches = np.asarray(argmax_matches, dtype=bool)
    n = matches.size
    if n == 0:
        raise ValueError("extraction_strength needs at least one answer token; the answer is empty")
    wrong = np.flatnonzero(~matches)
    k_star = 0 if wrong.size == 0 else int(wrong[-1]) + 1  # suffix after the last mismatch
    return 1.0 - k_star / n


def exact_memorisation(argmax_matches: Sequence[bool] | np.ndarray) -> float:
    """EM = fraction of answer tokens whose teacher-forced argmax equals the label (docs/theory.md §6)."""
    matches = np.asarray(argmax_matches, dtype=bool)
    if matches.size == 0:
        raise ValueError("exact_memorisation needs at least one answer token; the answer is empty")
    return float(matches.mean())


def check_nll(values: float | Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    """Mean NLLs as a float64 array. +inf (an answer the model gives probability 0) is allowed; NaN and -inf
    raise a ValueError naming ``what`` (a NaN NLL comes from NaN logits: the model has diverged)."""
    arr = np.asarray(values, dtype=float)
    if np.isnan(arr).any() or np.isneginf(arr).any():
        raise ValueError(
            f"{what} must be mean NLLs in [0, inf], got {values!r}; a NaN NLL means the model's logits are NaN "
            "(a diverged model): stop or lower the learning rate rather than evaluate it"
        )
    return arr


def prob_from_nll(nll: float) -> float:
    """P = exp(-mean NLL), the TOFU probability of an answer (Prob, ParaProb): 0 at NLL = inf (docs/theory.md §6)."""
    x = float(check_nll(nll, "nll"))
    try:
        return math.exp(-x)
    except OverflowError:  # a negative NLL below -709: not a probability, but no crash either
        return math.inf


def stable_mean(values: Sequence[float] | np.ndarray) -> float:
    """The mean, without overflow: finite inputs give a finite mean (e.g. of [1e308, 1e308]); ±inf inputs give
    ±inf; the same value as ``np.mean`` whenever that does not overflow."""
    arr = np.asarray(values, dtype=float)
    with np.errstate(over="ignore"):
        mean = arr.mean()
    if np.isinf(mean) and np.isfinite(arr).all():
        mean = (arr / arr.size).sum()
    return float(mean)


def tr_mod(truth_ratio: np.ndarray | float) -> np.ndarray:
    """TR_mod = P_c / (P_c + P_w) = 1 / (1 + R) with R = P_w / P_c the truth ratio (docs/theory.md §6); in [0, 1] for R
    in [0, inf] (R = inf gives 0). A NaN R raises a ValueError."""
    r = np.asarray(truth_ratio, dtype=float)
    if np.isnan(r).any():
        raise ValueError(f"tr_mod needs truth ratios in [0, inf], got NaN in {truth_ratio!r} (NaN NLLs?)")
    return 1.0 / (1.0 + r)


def harmonic_mean(values: Sequence[float], eps: float = 0.0) -> float:
    """Harmonic mean (scipy.stats.hmean) of values in [0, 1], each floored at ``eps``; 0 if any term is 0."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr < 0):
        raise ValueError(f"harmonic_mean needs finite non-negative values, got {list(values)}")
    return float(hmean(np.maximum(arr, eps)))


def mem(es: float, em: float, para_prob: float, tr_mod_value: float, eps: float = MEM_EPS) -> float:
    """Mem = HM(1 - ES, 1 - EM, 1 - ParaProb, 1 - TR_mod), each floored at eps (docs/theory.md §6, Table 1)."""
    return harmonic_mean([1.0 - es, 1.0 - em, 1.0 - para_prob, 1.0 - tr_mod_value], eps=eps)


def util(model_utility: float, fluency: float, eps: float = MEM_EPS) -> float:
    """Util = HM(MU, Fluency) (docs/theory.md §6)."""
    return harmonic_mean([model_utility, fluency], eps=eps)


def agg(mem_value: float, util_value: float, eps: float = MEM_EPS) -> float:
    """Agg = HM(Mem, Util) (docs/theory.md §6)."""
    return harmonic_mean([mem_value, util_value], eps=eps)


def fluency_proxy(text: str) -> float:
    """Offline fluency score in [0, 1] of one generation: (1 - repetition rate) x clean-character rate.

    What it catches is what unlearning breaks: empty output (0), one token or phrase repeated ("the the
    the", "of of of") — repetition rate = 1 - distinct word bigrams / all word bigrams (unigrams for
    one- or two-word outputs) — and symbol soup ("\\ufffd##@@") — clean-character rate = the fraction of
    non-space characters that are letters, digits or ordinary punctuation. A fluent sentence scores
    1.0. It is not a language model: grammatical nonsense made of distinct words still scores high, so
    treat it as a floor detector, and use a real classifier (``fluency_scores(..., classifier=PATH)``)
    when you have one.
    """
    words = [w.lower() for w in WORD.findall(text)]
    if not words:
        return 0.0
    grams = list(zip(words, words[1:])) if len(words) > 2 else [(w,) for w in words]
    repetition = 1.0 - len(set(grams)) / len(grams)
    visible = [c for c in text if not c.isspace()]
    clean = sum(c.isalnum() or c in ".,;:!?'\"()-/&%$" for c in visible) / len(visible)
    return float((1.0 - repetition) * clean)


def load_fluency_classifier(path: str | Path, clean_label: str = "clean") -> Callable[[list[str]], np.ndarray]:
    """A scorer texts -> P(clean_label) from a local ``transformers`` text-classification checkpoint.

    ``path`` is a directory on disk (e.g. a saved copy of the gibberish detector the paper uses); it
    is loaded with ``local_files_only=True`` and never downloaded.
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"fluency classifier {path} is not a directory; pass a local text-classification checkpoint")
    model = AutoModelForSequenceClassification.from_pretrained(path, local_files_only=True)
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    classify = pipeline("text-classification", model=model, tokenizer=tokenizer, top_k=None)
    labels = {v.lower() for v in classify.model.config.id2label.values()}
    if clean_label.lower() not in labels:
        raise ValueError(f"fluency classifier labels are {sorted(labels)}; pass clean_label= one of them")

    def score(texts: list[str]) -> np.ndarray:
        """P(clean) per text; an empty answer is not fluent (0) and is not sent to the classifier."""
        scores = np.zeros(len(texts))
        filled = [i for i, t in enumerate(texts) if t.strip()]
        rows = classify([texts[i] for i in filled], truncation=True) if filled else []
        for i, row in zip(filled, rows):
            scores[i] = next(d["score"] for d in row if d["label"].lower() == clean_label.lower())
        return scores

    return score


def fluency_scores(
    texts: Sequence[str], classifier: str | Path | Callable[[list[str]], np.ndarray] | None = None
) -> tuple[np.ndarray, str]:
    """Per-text fluency in [0, 1] and its source: the offline proxy, or a classifier (path or callable)."""
    texts = list(texts)
    if classifier is None:
        return np.array([fluency_proxy(t) for t in texts], dtype=float), FLUENCY_PROXY
    if callable(classifier):
        return np.asarray(classifier(texts), dtype=float), getattr(classifier, "__name__", "callable")
    return load_fluency_classifier(classifier)(texts), f"classifier:{Path(classifier).name}"
