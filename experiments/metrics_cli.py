"""Command line for the TOFU metrics of ``bs_ref.metrics`` (docs/theory.md §6).

    python experiments/metrics_cli.py aggregate --log FILE --retain-log FILE [--convention tofu|tofu-legacy|arithmetic]

FILE is a locuslab/tofu ``eval_log_aggregated.json`` or a ``bs_ref.tofu_eval/v1`` per-item file
(``bs_ref.metrics.scores.write_eval_log``). Prints one JSON object: forget_quality, log10_forget_quality,
n, model_utility, the nine utility components, the forget split's Prob/ROUGE/TR, the paper's
Mem/Util/Agg where the inputs allow, leakage rates where items carry facts, and the convention.

    python experiments/metrics_cli.py speed [--threads 2] [--n-authors 100]

times a full evaluation (forget10 + retain + real-authors + world-facts analogues of the synthetic
benchmark, every per-item metric) with a randomly initialised ~5M-parameter Llama and a BPE tokenizer
trained on the benchmark text; ``max_new_tokens`` is sized to the longest answer. A random model never
emits EOS, so every generation runs to the budget: the worst case for a trained model of the same size.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from bs_ref import files
from bs_ref.data.synthetic import SyntheticConfig, benchmark_texts, build_benchmark
from bs_ref.metrics.scores import CONVENTIONS, aggregate, evaluate, max_answer_tokens, read_eval_log
from bs_ref.models import TinyLlamaConfig, build_tiny_llama, count_parameters, train_tokenizer


def time_evaluation(threads: int, n_authors: int, batch_size: int, hidden_size: int = 256) -> dict:
    """Seconds to evaluate the four synthetic splits (see the module docstring)."""
    torch.set_num_threads(threads)
    benchmark = build_benchmark(SyntheticConfig(n_authors=n_authors))
    tokenizer = train_tokenizer(benchmark_texts(benchmark))
    shape = TinyLlamaConfig(hidden_size=hidden_size, intermediate_size=round(8 * hidden_size / 3))
    model = build_tiny_llama(len(tokenizer), shape, tokenizer=tokenizer)
    splits = {
        "forget": benchmark["forget10_perturbed"],
        "retain": benchmark["retain_perturbed"],
        "real_authors": benchmark["real_authors_perturbed"],
        "world_facts": benchmark["world_facts_perturbed"],
    }
    budget = max_answer_tokens(tokenizer, [r for records in splits.values() for r in records])
    start, start_cpu = time.perf_counter(), time.process_time()
    per_split = evaluate(model, tokenizer, splits, max_new_tokens=budget, batch_size=batch_size)
    evaluate_s, evaluate_cpu_s = time.perf_counter() - start, time.process_time() - start_cpu
    result = aggregate(per_split, per_split["forget"])
    return {
        "seconds": round(evaluate_s, 2),
        "cpu_seconds": round(evaluate_cpu_s, 2),  # all threads; wall time >= cpu / threads on an idle machine
        "seconds_with_aggregate": round(time.perf_counter() - start, 2),
        "threads": threads,
        "parameters": count_parameters(model),
        "items": {kind: len(items) for kind, items in per_split.items()},
        "max_new_tokens": budget,
        "model_utility": result["model_utility"],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python experiments/metrics_cli.py", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    agg = sub.add_parser("aggregate", help="summary metrics (FQ, MU, ...) of an evaluation log as one JSON object")
    agg.add_argument("--log", required=True, help="evaluation log of the model (locuslab/tofu or bs_ref format)")
    agg.add_argument("--retain-log", help="evaluation log of the retain model (for forget quality)")
    agg.add_argument("--convention", default="tofu", choices=CONVENTIONS, help="metric convention (default: tofu)")
    agg.add_argument("--fluency-classifier", help="local text-classification checkpoint for Fluency (default: proxy)")
    speed = sub.add_parser("speed", help="time a full synthetic-benchmark evaluation with a ~5M-parameter model")
    speed.add_argument("--threads", type=int, default=2, help="torch CPU threads (default: 2)")
    speed.add_argument("--n-authors", type=int, default=100, help="synthetic authors (default: 100)")
    speed.add_argument("--batch-size", type=int, default=32)
    speed.add_argument("--hidden-size", type=int, default=256, help="model width, 4 layers (256: 3.7M parameters)")
    args = parser.parse_args(argv)
    if args.command == "speed":
        problems = [
            p
            for name in ("threads", "n_authors", "batch_size", "hidden_size")
            for p in files.at_least(f"--{name.replace('_', '-')}", getattr(args, name), 1)
        ]
        if args.hidden_size >= 1 and args.hidden_size % TinyLlamaConfig().num_heads:
            problems.append(
                f"--hidden-size {args.hidden_size} is invalid: must be a multiple of the "
                f"{TinyLlamaConfig().num_heads} attention heads"
            )
        files.report_problems(sub.choices["speed"], problems)
    else:
        problems = files.path_problems("--log", args.log, "file", must_exist=True)
        problems += files.path_problems("--retain-log", args.retain_log, "file", must_exist=True)
        files.report_problems(sub.choices["aggregate"], problems)
    if args.command == "speed":
        print(json.dumps(time_evaluation(args.threads, args.n_authors, args.batch_size, args.hidden_size), indent=1))
        return 0
    try:
        per_split = read_eval_log(args.log)
        retain_forget = read_eval_log(args.retain_log).get("forget") if args.retain_log else None
        if args.retain_log and not retain_forget:
            raise ValueError(f"{args.retain_log} has no forget split; forget quality needs pass the retain model's log")
        result = aggregate(per_split, retain_forget, args.convention, args.fluency_classifier)
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    result = {"log": args.log, "retain_log": args.retain_log, **result}
    print(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    with files.one_line_errors("metrics_cli.py"):
        sys.exit(main())
