"""bs_ref.metrics — TOFU metrics (docs/theory.md §6), the paper's Mem/Util/Agg, and leakage metrics.

``tofu``: Prob, ROUGE-L recall, truth ratio, forget quality, model utility under named conventions; the
per-item output format. ``paper``: extraction strength, exact memorisation, TR_mod, Mem/Util/Agg, fluency
(offline proxy or a local classifier). ``leakage``: fact-leak rate, fact-token log-prob, belief bands,
semantic similarity. Scoring, generation and stop tokens come from ``bs_ref.generation`` (shared with BS-S).
Every metric is defined for any mean NLL in [0, inf]. Imports run one way: tofu -> leakage, paper.
Command line: ``python experiments/metrics_cli.py aggregate --log FILE --retain-log FILE [--convention NAME]``.
"""

from .leakage import (
    BeliefBands,
    build_belief_bands,
    contains_fact,
    fact_leak_rate,
    fact_token_logprob,
    fact_token_mask,
    score_belief_bands,
    semantic_model_available,
    semantic_similarity,
)
from .paper import agg, exact_memorisation, extraction_strength, fluency_proxy, fluency_scores, mem, tr_mod, util
from .scores import (
    CONVENTIONS,
    EVAL_FORMAT,
    aggregate,
    answer_logprobs,
    answer_prob,
    evaluate,
    evaluate_split,
    forget_quality,
    generate_answers,
    load_locuslab_log,
    max_answer_tokens,
    model_utility,
    read_eval_log,
    rouge_l_recall,
    split_summary,
    truth_ratio,
    truth_ratio_score,
    write_eval_log,
)

__all__ = [
    "CONVENTIONS",
    "EVAL_FORMAT",
    "BeliefBands",
    "agg",
    "aggregate",
    "answer_logprobs",
    "answer_prob",
    "build_belief_bands",
    "contains_fact",
    "evaluate",
    "evaluate_split",
    "exact_memorisation",
    "extraction_strength",
    "fact_leak_rate",
    "fact_token_logprob",
    "fact_token_mask",
    "fluency_proxy",
    "fluency_scores",
    "forget_quality",
    "generate_answers",
    "load_locuslab_log",
    "max_answer_tokens",
    "mem",
    "model_utility",
    "read_eval_log",
    "rouge_l_recall",
    "score_belief_bands",
    "semantic_model_available",
    "semantic_similarity",
    "split_summary",
    "tr_mod",
    "truth_ratio",
    "truth_ratio_score",
    "util",
    "write_eval_log",
]
