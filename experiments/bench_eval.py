"""The fair tier's final evaluation by part, row-by-row scoring and leak@k at the longest budget against
``--share-prompts`` and ``--leak-k-tokens answer``, on the original model of its SmolLM2 pair.

    python experiments/bench.py evaluation --data <TOFU directory>                  # 2 authors (40 forget items)
    python experiments/bench.py evaluation --data <TOFU directory> --max-authors 5 --limit 100

The model pair is ``--preset tofu_fair``'s for those authors, from the model cache (trained first, about ten
minutes for 2 authors on one core, when the cache does not hold it). Three parts of the final evaluation
(``bs_ref.protocol.evaluate.Evaluator.full``) are timed on the original model, each setting in turn, ``--repeats``
rounds (one thread):

- scoring: the teacher-forced scores of every candidate answer of every split (answer, paraphrase, perturbed
  answers), row by row (``share_prompts=False``) and from one run of each prompt (``True``), with the largest
  difference of a token log-prob between the two;
- leak@k: ``--leak-k-samples`` answers at T = 1 per annotated forget item, at the greedy budget for every item
  (``longest``) and within each item's own reference answer + 8 tokens (``answer``), with the items that leak in
  any sample under each (different random draws: a comparison of counts, not of samples);
- greedy answers of every split (the same under both settings; timed once per round).

Output: ``name: value`` lines; a part's seconds are the median over the rounds, the speed-ups are the medians of
the rounds' ratios.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # tofu.py, beside this file

SUMMARY = "the fair tier's final evaluation by part: shared prompts and per-item leak@k budgets against the defaults"


def build_parser(add_help: bool = True) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="bench.py evaluation", description=__doc__.split("\n\n")[0], add_help=add_help)
    ap.add_argument("--data", default=None, help="TOFU directory (or locuslab/TOFU) (default: none; required)")
    ap.add_argument("--max-authors", type=int, default=2, help="forget authors (default: %(default)s)")
    ap.add_argument("--limit", type=int, default=40, help="forget items (default: %(default)s)")
    ap.add_argument("--repeats", type=int, default=1, help="rounds of every setting (default: %(default)s)")
    return ap


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    opts = parser.parse_args(argv)
    if not opts.data:
        parser.error("--data is required: a TOFU directory or locuslab/TOFU")
    if opts.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {opts.repeats}")
    import tofu

    from bs_ref.generation import generate_answers
    from bs_ref.metrics import scores
    from bs_ref.protocol import data, evaluate
    from bs_ref.protocol import pairs as model_pairs

    torch.set_num_threads(1)
    flags = ["--preset", "tofu_fair", "--data", opts.data, "--max-authors", str(opts.max_authors)]
    args = tofu.parse_args([*flags, "--limit", str(opts.limit)])
    splits = data.load_data(args.data)
    model, _, tokenizer, _ = model_pairs.load_models(args.models, splits, False, print, pair_seed=0)
    base = dataclasses.replace(args.evaluation, share_prompts=False, leak_k_tokens="longest")
    rows = evaluate.Evaluator(base, splits, tokenizer)
    fast = evaluate.Evaluator(dataclasses.replace(base, share_prompts=True, leak_k_tokens="answer"), splits, tokenizer)
    print(f"forget items: {len(splits.evaluation['forget'])}; leak@k items: {len(rows.leak_at_k_items())}")
    times: dict[str, list[float]] = {}
    questions = [r["question"] for v in splits.evaluation.values() for r in v]

    def timed(name: str, call, *call_args):
        began = time.perf_counter()
        out = call(*call_args)
        times.setdefault(name, []).append(time.perf_counter() - began)
        return out

    def score_all(shared: bool) -> dict:
        return {
            k: scores._score_candidates(model, tokenizer, v, k, splits.template, base.eval_batch_size, shared)
            for k, v in splits.evaluation.items()
        }

    def greedy() -> list:
        budget, batch = rows.max_new_tokens, base.eval_batch_size
        return generate_answers(model, tokenizer, questions, splits.template, max_new_tokens=budget, batch_size=batch)

    for _ in range(opts.repeats):
        scored = {shared: timed(f"scoring share_prompts={shared}", score_all, shared) for shared in (False, True)}
        leaks = {
            "longest": timed("leak@k longest", rows.leak_at_k_counts, model, 0),
            "answer": timed("leak@k answer", fast.leak_at_k_counts, model, 0),
        }
        timed("greedy answers", greedy)
    largest = max(
        float(abs(a[0].token_logprobs - b[0].token_logprobs).max())
        for split in scored[False]
        for x, y in zip(scored[False][split], scored[True][split])
        for role in x
        for a, b in zip(x[role], y[role])
    )
    for name, values in times.items():
        print(f"{name} seconds: {statistics.median(values):.1f}")
    for part, a, b in (
        ("scoring", "scoring share_prompts=False", "scoring share_prompts=True"),
        ("leak@k", "leak@k longest", "leak@k answer"),
    ):
        print(f"{part} speed-up: {statistics.median(x / y for x, y in zip(times[a], times[b])):.2f}")
    before = sum(
        statistics.median(times[k]) for k in ("scoring share_prompts=False", "leak@k longest", "greedy answers")
    )
    after = sum(statistics.median(times[k]) for k in ("scoring share_prompts=True", "leak@k answer", "greedy answers"))
    print(f"three parts seconds, defaults: {before:.1f}; shared prompts and per-item budgets: {after:.1f}")
    print(f"three parts speed-up: {before / after:.2f}")
    print(f"largest token log-prob difference, shared against row by row: {largest:.2e}")
    for name, counts in leaks.items():
        leaking = sum(1 for c in counts.values() if c["c"] > 0)
        share = sum(c["c"] for c in counts.values()) / max(1, sum(c["n"] for c in counts.values()))
        print(
            f"leak@k --leak-k-tokens {name}: {leaking} of {len(counts)} items leak in a sample; {share:.3f} of samples"
        )


if __name__ == "__main__":
    main()
