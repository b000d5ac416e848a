"""Evaluating models the same way for every method: the full evaluation, the light one along training, the
belief bands, and the reference models (original, retain twin).

- ``Evaluator.full``: every TOFU metric on every split, per item (``bs_ref.metrics.scores.evaluate``; greedy
  answers, plus ``--leak-samples`` sampled answers per forget item where the data has facts);
  ``Evaluator.aggregate`` the summary numbers (docs/theory.md §6) and ``summary_metrics`` those of
  ``summary.csv``.
- ``Evaluator.curve_point``: the light evaluation run every ``--eval-every`` steps: the forget answers' mean
  token log-prob, the belief bands' mean log-probs, and FQ, MU, Mem, the fact-leak rate ... on
  ``--curve-items`` items per utility split and the whole forget split (``--curve-forget-items``). A point
  lacks the band keys when the original model gave no band candidates, and a band is None when it is empty.
  Each point also keeps its per-item values (``items``: ``CURVE_ITEM_COLUMNS`` per split, the belief bands per
  forget question; the step-0 point also the retain model's truth ratios), so that a value read off the curve
  at matched forgetting can be resampled item by item (``bs_ref.protocol.uncertainty``).
- ``Evaluator.build_bands``: the original model's high/mid/low-likelihood candidate answers to the curve
  forget questions, the target itself excluded (the squeezing trace; docs/theory.md SEQ1, SEQ2).
- ``references``: the retain model's per-item forget results (every FQ needs them), the ``retrain`` and
  ``original`` rows, the belief bands and the step-0 point every curve starts from, computed once per run
  directory and reused on resume.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from bs_ref.files import read_json_object
from bs_ref.generation import encode_pair, pad_token_id_of, score_answers
from bs_ref.metrics.leakage import BANDS, BeliefBands, build_belief_bands, contains_fact, normalise, score_belief_bands
from bs_ref.metrics.scores import (
    CONVENTIONS,
    EVAL_FORMAT,
    aggregate,
    evaluate,
    generate_answers,
    max_answer_tokens,
    read_eval_log,
)
from bs_ref.metrics.tofu_facts import fact_table
from bs_ref.protocol.cli import arg
from bs_ref.protocol.data import Data
from bs_ref.protocol.matched import FORGETTING_MEASURES
from bs_ref.protocol.stats import tofu_columns
from bs_ref.protocol.store import RunDir, write_json
from bs_ref.timing import timed

CURVE_METRICS = (
    "forget_quality",
    "log10_forget_quality",
    "model_utility",
    "mem",
    "util",
    "agg",
    "fact_leak",
    "fact_leak_rate_paraphrased_question",
    "fact_logprob",
    "heldout_prob",
    "forget_rouge",
    "forget_truth_ratio",
)
"""Aggregate numbers recorded at every evaluation during training (besides the log-probs)."""
LEAK_K_TOKENS = ("longest", "answer")
"""``--leak-k-tokens``: the leak@k samples' token budget, the greedy one (the longest reference answer + 8, or
``--max-new-tokens``) for every item, or each item's own reference answer + 8 (never more than the greedy one)."""
LIGHT_EVALS = ("answers", "logprob", "bands")
"""``--light-eval``: greedy answers and every curve metric; the teacher-forced log-probs only (bands at step 0 and
at the stop); or those log-probs with the belief bands at every check (the squeeze along the trajectory)."""
TEACHER_FORCED = ("logprob", "bands")
"""The light evaluations that generate nothing and score only the forget answers (and the bands)."""
LEAK_K_SEED = 7919
"""Offset of the leak@k sampling seed from the unlearning seed (its samples are not the any-of-N ones)."""
CURVE_ITEM_COLUMNS = {
    "forget": (
        "nll_answer",
        "fact_leak",
        "fact_leak_paraphrased_question",
        "prob",
        "rouge",
        "truth_ratio",
        "tr_score",
        "es",
        "em",
        "para_prob",
        "tr_mod",
        "fluency",
    ),
    "utility": ("prob", "rouge", "tr_score"),
}
"""Per-item columns (``bs_ref.protocol.stats.tofu_columns``) kept at every curve point: what the target log-prob, the
fact leak, MU, Mem, Util, Agg and FQ are recomputed from; forget questions also get ``band_<b>_sum`` and
``band_<b>_count`` (``score_belief_bands(..., per_question=True)``; 0 and 0 for a question without candidates)."""


@dataclass
class EvalConfig:
    """How models are evaluated (the same for every method)."""

    convention: str = arg("tofu", f"metric convention of bs_ref.metrics: {' | '.join(CONVENTIONS)}")
    light_eval: str = arg(
        "answers",
        "what the light evaluations compute: answers (greedy answers and every curve metric) | logprob "
        "(teacher-forced only: the forget answers' log-probs, and the belief bands at step 0 and at the stop, what the "
        "stopping rule and the after-fork endpoints read; no utility items, no generation; docs/theory.md §20) | "
        "bands (logprob with the belief bands at every check: the after-fork squeeze along the trajectory)",
    )
    curve_items: int = arg(16, "items per utility split in the light evaluations")
    curve_forget_items: int = arg(
        0, "forget items in the light evaluations; 0: all of them (matched fact-leak needs every item)"
    )
    max_new_tokens: int = arg(0, "greedy answer budget; 0: longest reference answer + 8 tokens (TOFU: 200)")
    eval_batch_size: int = arg(32, "batch size of scoring and generation", identity=False)
    share_prompts: bool = arg(
        False,
        "score the candidate answers of a question (answer, paraphrase, perturbed answers, band candidates) from one "
        "run of its prompt (its KV cache): the same math, ~1.5-2x faster scoring, floating point not bit-identical "
        "to the row-by-row scoring (of order 1e-5 in a token log-prob), so it is part of a run's identity",
    )
    band_samples: int = arg(9, "candidates sampled per forget question for the belief bands")
    band_temperature: float = arg(1.0, "sampling temperature of the band candidates")
    leak_samples: int = arg(5, "sampled answers per forget item for the any-of-N fact leak (final evaluation)")
    leak_k_samples: int = arg(
        32,
        "leak@k: answers sampled at T=1 per forget item (n of the pass@k estimator, "
        "final evaluation, docs/theory.md §15); 0: no leak@k",
    )
    leak_k_items: int = arg(8, "leak@k: forget items sampled (spread over the split; 0: all annotated items)")
    leak_k_tokens: str = arg(
        "longest",
        "leak@k samples' token budget: longest (the greedy budget, every item alike) | answer (each item's own "
        "reference answer + 8 tokens, at most the greedy budget: a fact counts only where a sample states it within "
        "about its reference answer's length; each item sampled on its own, seeded by its index)",
    )
    fluency_classifier: str | None = arg(
        None, "local text-classification checkpoint for Fluency (default: offline proxy)"
    )


def problems(cfg: EvalConfig) -> list[str]:
    """Every problem of the evaluation settings."""
    out = []
    if cfg.convention not in CONVENTIONS:
        out.append(f"--convention {cfg.convention} is unknown; choose one of {', '.join(CONVENTIONS)}")
    if cfg.leak_k_tokens not in LEAK_K_TOKENS:
        out.append(f"--leak-k-tokens {cfg.leak_k_tokens} is unknown; choose one of {' | '.join(LEAK_K_TOKENS)}")
    if cfg.light_eval not in LIGHT_EVALS:
        out.append(f"--light-eval {cfg.light_eval} is unknown; choose one of {' | '.join(LIGHT_EVALS)}")
    if cfg.curve_items < 2:
        out.append(f"--curve-items must be >= 2, got {cfg.curve_items}")
    if cfg.curve_forget_items == 1 or cfg.curve_forget_items < 0:
        out.append(f"--curve-forget-items must be 0 (all) or >= 2, got {cfg.curve_forget_items}")
    for name in ("eval_batch_size", "band_samples"):
        if getattr(cfg, name) < 1:
            out.append(f"--{name.replace('_', '-')} must be >= 1, got {getattr(cfg, name)}")
    for name in ("max_new_tokens", "leak_samples", "leak_k_samples", "leak_k_items"):
        if getattr(cfg, name) < 0:
            out.append(f"--{name.replace('_', '-')} must be >= 0, got {getattr(cfg, name)}")
    if not (math.isfinite(cfg.band_temperature) and cfg.band_temperature > 0):
        out.append(f"--band-temperature must be > 0, got {cfg.band_temperature}")
    return out


def spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


class Evaluator:
    """Full and light evaluations of a model, sharing the retain model's forget items and the belief bands."""

    def __init__(self, cfg: EvalConfig, data: Data, tokenizer):
        self.cfg, self.data, self.tokenizer, self.template = cfg, data, tokenizer, data.template
        self.max_new_tokens = cfg.max_new_tokens or max_answer_tokens(
            tokenizer, [r for split in data.evaluation.values() for r in split]
        )
        self.curve_index = {k: spread(len(v), self.curve_size(k, len(v))) for k, v in data.evaluation.items()}
        self.curve_splits = {k: [v[i] for i in self.curve_index[k]] for k, v in data.evaluation.items()}
        self.retain_forget_items: list[dict] | None = None
        self._bands: BeliefBands | None = None
        self.band_rows: list[int] = []
        self.facts = fact_table(data.evaluation["forget"])  # question -> fact (TOFU: the committed annotations)

    @property
    def bands(self) -> BeliefBands | None:
        """The original model's belief bands over the curve forget questions (None: no candidates)."""
        return self._bands

    @bands.setter
    def bands(self, bands: BeliefBands | None) -> None:
        """Set the bands, and where each band question sits among the curve forget questions (the bands keep
        the questions that had candidates, in order)."""
        self._bands, self.band_rows = bands, []
        if bands is None:
            return
        questions, start = [r["question"] for r in self.curve_splits["forget"]], 0
        for question in bands.questions:
            row = questions.index(question, start)
            self.band_rows.append(row)
            start = row + 1

    def curve_size(self, split: str, n: int) -> int:
        """Items of ``split`` in the light evaluations: the whole forget split unless --curve-forget-items."""
        if split == "forget":
            return self.cfg.curve_forget_items or n
        return self.cfg.curve_items

    @timed("evaluation: final")
    def full(self, model, seed: int = 0) -> dict[str, list[dict]]:
        """Per-item results of every split (greedy, plus sampled answers for the any-of-N fact leak); the forget
        items leak@k samples also get ``leak_k`` = {"n": samples, "c": samples that contain the fact}."""
        per_split = evaluate(
            model,
            self.tokenizer,
            self.data.evaluation,
            self.template,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.cfg.eval_batch_size,
            num_samples=self.cfg.leak_samples if self.data.has_facts else 0,
            seed=seed,
            share_prompts=self.cfg.share_prompts,
        )
        for i, counted in self.leak_at_k_counts(model, seed).items():
            per_split["forget"][i]["leak_k"] = counted
        return per_split

    def leak_at_k_items(self) -> list[int]:
        """The forget items leak@k samples: ``--leak-k-items`` spread over those with a fact (all with 0)."""
        annotated = [i for i, r in enumerate(self.data.evaluation["forget"]) if r["question"] in self.facts]
        if not self.cfg.leak_k_samples or not annotated:
            return []
        take = self.cfg.leak_k_items or len(annotated)
        return [annotated[j] for j in spread(len(annotated), take)]

    def leak_at_k_counts(self, model, seed: int = 0) -> dict[int, dict]:
        """{forget item: {"n", "c"}}: ``--leak-k-samples`` answers sampled at T = 1 (seeded by ``seed``), c of them
        containing the item's fact (``contains_fact``); empty with --leak-k-samples 0 or no annotated item."""
        chosen = self.leak_at_k_items()
        if not chosen:
            return {}
        records = [self.data.evaluation["forget"][i] for i in chosen]
        if self.cfg.leak_k_tokens == "answer":
            samples = [self._leak_k_samples(model, i, record, seed) for i, record in zip(chosen, records)]
        else:
            samples = generate_answers(
                model,
                self.tokenizer,
                [r["question"] for r in records],
                self.template,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.cfg.eval_batch_size,
                num_samples=self.cfg.leak_k_samples,
                temperature=1.0,
                seed=seed + LEAK_K_SEED,
            )
        fact = [self.facts[r["question"]] for r in records]
        return {
            i: {"n": len(row), "c": sum(contains_fact(text, f) for text in row)}
            for i, row, f in zip(chosen, samples, fact)
        }

    def _leak_k_samples(self, model, index: int, record: dict, seed: int) -> list[str]:
        """``--leak-k-tokens answer``: the leak@k samples of forget item ``index`` alone, within its own reference
        answer + 8 tokens (at most the greedy budget), seeded by the unlearning seed and the item's index (so an
        item's samples do not depend on which other items are sampled)."""
        budget = min(self.max_new_tokens, max_answer_tokens(self.tokenizer, [record]))
        (row,) = generate_answers(
            model,
            self.tokenizer,
            [record["question"]],
            self.template,
            max_new_tokens=budget,
            batch_size=self.cfg.eval_batch_size,
            num_samples=self.cfg.leak_k_samples,
            temperature=1.0,
            seed=seed + LEAK_K_SEED + 1 + index,
        )
        return row

    def aggregate(self, per_split: dict[str, list[dict]], retain_forget: list[dict] | None = None) -> dict:
        """The summary numbers of per-item results (FQ against the retain model's forget items)."""
        retain_forget = self.retain_forget_items if retain_forget is None else retain_forget
        agg = aggregate(per_split, retain_forget, self.cfg.convention, fluency_classifier=self.cfg.fluency_classifier)
        agg["fact_leak"] = agg.get("fact_leak_rate")
        return agg

    def retain_target_logprob(self) -> float | None:
        """The retain model's value of the light evaluation's ``target_logprob`` (the mean over the curve forget
        items of the answer's mean token log-prob), from its per-item forget results; None without them (no retain
        model, or a retain log without per-item answer losses)."""
        items = self.retain_forget_items
        if items is None:
            return None
        rows = [items[i] for i in self.curve_index["forget"] if i < len(items)]
        if not rows or any(not isinstance(r.get("nll_answer"), (int, float)) for r in rows):
            return None
        return float(np.mean([-r["nll_answer"] for r in rows]))

    @timed("evaluation: curve")
    def curve_point(self, step: int, model) -> dict:
        """The light evaluation: log-probs of targets and bands on the curve items, and the aggregate
        metrics on ``curve_items`` items per split (greedy answers, same budget as the full evaluation). With
        ``--light-eval logprob``: the forget answers' log-probs only, and the belief bands at step 0 alone (the
        run's last point gets them from ``finish_curve``); ``--light-eval bands``: those log-probs and the bands at
        every check."""
        start = time.perf_counter()
        if self.cfg.light_eval in TEACHER_FORCED:
            per_split = {"forget": self._forget_logprobs(model)}
            retain_forget, agg = None, {}
        else:
            per_split = evaluate(
                model,
                self.tokenizer,
                self.curve_splits,
                self.template,
                max_new_tokens=self.max_new_tokens,
                batch_size=self.cfg.eval_batch_size,
                share_prompts=self.cfg.share_prompts,
            )
            retain_forget = None
            if self.retain_forget_items is not None:
                retain_forget = [self.retain_forget_items[i] for i in self.curve_index["forget"]]
            agg = aggregate(
                per_split, retain_forget, self.cfg.convention, fluency_classifier=self.cfg.fluency_classifier
            )
        point: dict[str, Any] = {"step": step}
        point["target_logprob"] = float(np.mean([-it["nll_answer"] for it in per_split["forget"]]))
        agg["fact_leak"] = agg.get("fact_leak_rate")
        for key in CURVE_METRICS:
            point[key] = agg.get(key)
        point["items"] = self.curve_items(per_split, retain_forget, with_retain=step == 0)
        point["eval_s"] = time.perf_counter() - start
        if self.cfg.light_eval != "logprob" or step == 0:  # logprob: bands at step 0 and (finish_curve) the stop
            self.add_bands(point, model)
        return point

    def finish_curve(self, point: dict, model) -> None:
        """The belief bands of a run's last light evaluation ``point`` (``model`` is that point's) where
        ``curve_point`` left them out (``--light-eval logprob``): the stopping point is where the after-fork
        endpoint reads them (docs/theory.md §20). A point that has them, or a step-0 point, is left as it is."""
        if point["step"] > 0 and self.cfg.light_eval == "logprob":
            self.add_bands(point, model)

    @timed("evaluation: curve")
    def add_bands(self, point: dict, model) -> None:
        """Score the belief bands on ``model`` into ``point`` (a ``curve_point`` of the same model): each band's
        mean log-prob and its continuation after the fork from the target (docs/theory.md §16), and per forget
        question ``band_<b>_sum``/``_count`` and ``band_<b>_fork_sum``/``_fork_count`` (0 and 0 for a question
        without candidates). Nothing when the original model gave no band candidates."""
        if self.bands is None:
            return
        start = time.perf_counter()
        targets = [self.curve_splits["forget"][row]["answer"] for row in self.band_rows]
        scores = score_belief_bands(
            model,
            self.tokenizer,
            self.bands,
            batch_size=self.cfg.eval_batch_size,
            per_question=True,
            fork_targets=targets,
            share_prompts=self.cfg.share_prompts,
        )
        for band in BANDS:
            point[f"band_{band}_logprob"] = scores.get(band)
        for band in BANDS:  # the continuation after the fork from the target (docs/theory.md §16)
            point[f"band_{band}_after_fork"] = scores.get(f"{band}_after_fork")
        forget, n = point["items"].setdefault("forget", {}), len(self.curve_splits["forget"])
        for band in BANDS:
            for suffix, key in (("", band), ("_fork", f"{band}_after_fork")):
                entry = scores.get("per_question", {}).get(key)
                if entry is None:
                    continue
                sums, counts = np.zeros(n), np.zeros(n, dtype=int)
                sums[self.band_rows], counts[self.band_rows] = entry["sum"], entry["count"]
                forget[f"band_{band}{suffix}_sum"], forget[f"band_{band}{suffix}_count"] = (
                    sums.tolist(),
                    counts.tolist(),
                )
        point["eval_s"] = point.get("eval_s", 0.0) + time.perf_counter() - start

    def _forget_logprobs(self, model) -> list[dict]:
        """``--light-eval logprob``: per curve forget item, only ``nll_answer`` (the answer's mean token NLL,
        teacher-forced, as the full evaluation scores it); nothing generated."""
        records = self.curve_splits["forget"]
        encoded = [encode_pair(self.tokenizer, r["question"], r["answer"], self.template) for r in records]
        pad = pad_token_id_of(self.tokenizer)
        scores = score_answers(model, [p for p, _ in encoded], [a for _, a in encoded], pad, self.cfg.eval_batch_size)
        return [{"index": i, "nll_answer": s.mean_nll} for i, s in enumerate(scores)]

    def curve_items(
        self, per_split: dict[str, list[dict]], retain_forget: list[dict] | None, with_retain: bool = False
    ) -> dict[str, dict[str, list]]:
        """The per-item columns of one light evaluation (``CURVE_ITEM_COLUMNS``; ``with_retain``: the retain
        model's forget truth ratios too). The bands' columns come from ``add_bands``."""
        out: dict[str, dict[str, list]] = {}
        if self.cfg.light_eval in TEACHER_FORCED:  # only the answers' log-probs were scored
            out["forget"] = {"nll_answer": [float(it["nll_answer"]) for it in per_split["forget"]]}
            return out
        columns = tofu_columns(
            per_split,
            self.cfg.convention,
            retain_forget=retain_forget if with_retain else None,
            fluency_classifier=self.cfg.fluency_classifier,
        )
        for split, table in columns.items():
            wanted = CURVE_ITEM_COLUMNS["forget" if split == "forget" else "utility"]
            out[split] = {c: table[c].tolist() for c in wanted if c in table}
        if with_retain and "retain_truth_ratio" in columns.get("forget", {}):
            out["forget"]["retain_truth_ratio"] = columns["forget"]["retain_truth_ratio"].tolist()
        return out

    def build_bands(self, original_model) -> BeliefBands | None:
        """High/mid/low-likelihood candidate answers of the ORIGINAL model to the curve forget questions,
        excluding the target answer itself (the squeeze is about the model's *other* beliefs); None when the
        model gave no candidate besides the target."""
        records = self.curve_splits["forget"]
        questions = [r["question"] for r in records]
        samples = generate_answers(
            original_model,
            self.tokenizer,
            questions,
            self.template,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.cfg.eval_batch_size,
            num_samples=self.cfg.band_samples,
            temperature=self.cfg.band_temperature,
            seed=0,
        )
        candidates = [
            [s for s in row if s.strip() and normalise(s) != normalise(r["answer"])] for row, r in zip(samples, records)
        ]
        if not any(candidates):
            return None
        keep = [i for i, c in enumerate(candidates) if c]
        return build_belief_bands(
            original_model,
            self.tokenizer,
            [questions[i] for i in keep],
            [candidates[i] for i in keep],
            template=self.template,
            batch_size=self.cfg.eval_batch_size,
        )

    def payload(self, per_split: dict, **meta) -> dict:
        """The ``eval.json`` of per-item results (``bs_ref.metrics.scores.EVAL_FORMAT``)."""
        return {
            "format": EVAL_FORMAT,
            "convention": self.cfg.convention,
            "meta": {"template": self.template, **meta},
            "splits": per_split,
        }


def conventions(settings: dict[str, Any], max_new_tokens: int) -> dict:
    """The named conventions recorded in config.json (docs/theory.md §12), from the run's settings
    ({flag name: value}) and the generation budget in effect."""
    geometric = settings["convention"] != "arithmetic"
    truth_ratio = "R = geomean_j P(perturbed_j) / P(paraphrased), P = exp(-mean token NLL)"
    return {
        "template": settings["template"],
        "metric_convention": settings["convention"],
        "forget_quality": "scipy.stats.ks_2samp p-value of per-item truth ratios vs the retain model (log10)",
        "truth_ratio": truth_ratio if geometric else "R = mean_j P(perturbed_j) / P(paraphrased)",
        "max_new_tokens": max_new_tokens,
        "greedy_generation": True,
        "bs_s_regime": settings["regime"],
        "bs_s_select": settings["select"],
        "bs_s_base": settings["base"],
        "bs_t": {k: settings[k] for k in ("lam", "top_k", "temperature")},
        "equal_budget": {k: settings[k] for k in ("lr", "epochs", "batch_size", "grad_accum", "max_steps")},
        "curves": {
            k: settings[k]
            for k in ("eval_every", "curve_items", "curve_forget_items", "band_samples", "band_temperature")
        }
        | {"curve_forget_items": settings["curve_forget_items"] or "all"},
        "leak_at_k": {
            "samples_per_item": settings.get("leak_k_samples"),
            "items": settings.get("leak_k_items") or "all annotated",
            "temperature": 1.0,
            "judge": "annotated fact in the answer (contains_fact)",
            "ks": "1, 4, 16 (those <= n) and n",
            "seed": f"unlearning seed + {LEAK_K_SEED}",
        },
        "after_fork_band": "sum of token log-probs of each band candidate after its fork from the target (SEQ1)",
        "matched_forgetting": FORGETTING_MEASURES,
    }


def summary_metrics(agg: dict) -> dict:
    """The numbers of ``summary.csv`` from an ``aggregate`` dict."""
    return {
        "forget_quality": agg.get("forget_quality"),
        "log10_forget_quality": agg.get("log10_forget_quality"),
        "model_utility": agg.get("model_utility"),
        "mem": agg.get("mem"),
        "util": agg.get("util"),
        "agg": agg.get("agg"),
        "fact_leak": agg.get("fact_leak_rate"),
        "fact_leak_paraphrased_question": agg.get("fact_leak_rate_paraphrased_question"),
        "fact_leak_any_of_n": agg.get("fact_leak_rate_any_of_n"),
        "fact_logprob": agg.get("fact_logprob"),
        "heldout_prob": agg.get("heldout_prob"),
        "forget_prob": agg.get("forget_prob"),
        "forget_rougeL": agg.get("forget_rouge"),
        "forget_truth_ratio": agg.get("forget_truth_ratio"),
    }


# --------------------------------------------------------------------------------------------- references
@timed("evaluation: start")
def references(
    store: RunDir,
    evaluator: Evaluator,
    original,
    retain_model,
    retain_logs: str | None,
    device: str,
    want_retrain: bool,
    announce=print,
    pair: int = 0,
) -> tuple[dict, str | None]:
    """Evaluate the reference models of model pair ``pair`` once per run directory; returns (the step-0 curve
    point, the note that says why forget quality is skipped, or None).

    In order: the retain model's per-item results (its ``eval.json``, or ``retain_logs``), which every FQ
    compares against; the ``retrain`` row; the belief bands and the step-0 point of the original model
    (``start.json``); the ``original`` row. Models are moved to ``device`` for their evaluation and back."""
    retain_eval, note = None, None
    retain_file = store.method_dir("retrain", None, pair) / "eval.json"
    if retain_model is not None:
        if retain_file.is_file():
            retain_eval = store.read_eval("retrain", None, pair)
        else:
            announce(f"evaluating the retain model on {sum(evaluator.data.info['n_eval'].values())} items")
            retain_eval = evaluator.full(retain_model.to(device))
            retain_model.to("cpu")
            write_json(retain_file, evaluator.payload(retain_eval))
    elif retain_logs:
        retain_eval = _retain_logs(retain_logs, evaluator.data)
    else:
        note = "forget quality skipped: no retain model (--allow-no-retain); FQ needs the retain model's truth ratios"
    if retain_eval is not None:
        evaluator.retain_forget_items = retain_eval["forget"]
    if want_retrain and not store.is_finished("retrain", None, pair):
        store.save_result("retrain", None, reference_result("retrain", evaluator.aggregate(retain_eval)), pair=pair)

    original.to(device)
    start_path = store.start_path(pair)
    if start_path.is_file():
        start = read_json_object(start_path, keys=("point", "bands"))
        evaluator.bands = None if start.get("bands") is None else BeliefBands(**start["bands"])
        start_point = start["point"]
    else:
        announce("belief bands and the step-0 evaluation of the original model")
        evaluator.bands = evaluator.build_bands(original)
        start_point = evaluator.curve_point(0, original)
        bands = None if evaluator.bands is None else dataclasses.asdict(evaluator.bands)
        write_json(start_path, {"point": start_point, "bands": bands})
    if not store.is_finished("original", None, pair):
        per_split = evaluator.full(original)
        result = reference_result("original", evaluator.aggregate(per_split))
        result["curve"] = [start_point]
        store.save_result("original", None, result, evaluator.payload(per_split), pair=pair)
    original.to("cpu")
    return start_point, note


def reference_result(name: str, agg: dict) -> dict:
    """The ``result.json`` of a reference method (no seed, no curve of its own)."""
    return {"method": name, "seed": None, "metrics": summary_metrics(agg), "aggregate": agg, "curve": [], "steps": 0}


def _retain_logs(path: str, data: Data) -> dict[str, list[dict]]:
    retain_eval = read_eval_log(path)
    if "forget" not in retain_eval:
        raise ValueError(f"--retain-logs {path} has no forget split; give the retain model's full log")
    n_forget = len(data.evaluation["forget"])
    if len(retain_eval["forget"]) < n_forget:
        raise ValueError(
            f"--retain-logs {path} has {len(retain_eval['forget'])} forget items but the forget split has "
            f"{n_forget}; give the log of the same forget split"
        )
    return {k: v[: len(data.evaluation[k])] for k, v in retain_eval.items() if k in data.evaluation}
