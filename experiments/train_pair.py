"""Train (or load from the cache) the original/retain pair of a model preset and report greedy fact recall.

    python experiments/train_pair.py --preset default            # or smoke | smollm2; --cache-dir DIR
    python experiments/train_pair.py --sequential                # one model after the other in this process

A from-scratch pair trains its two models side by side in two worker processes where two CPUs are usable (the same
weights bit for bit; ``--sequential`` or ``BS_REF_PAIR_PROCESSES=1`` turns that off).

The pair is ``bs_ref.protocol.pair_training.get_or_train_pair`` on the synthetic benchmark (cached by config hash);
the report (JSON on stdout) gives the cache path, parameter count, template, training times and the fraction of forget
facts each model recalls greedily (``bs_ref.metrics.leakage.fact_leak_rate``).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Sequence

from bs_ref import files
from bs_ref.data.qa import FORGET_SPLITS
from bs_ref.data.synthetic import SyntheticConfig, build_benchmark
from bs_ref.generation import generate_answers
from bs_ref.metrics.leakage import fact_leak_rate
from bs_ref.protocol.pair_training import PRESETS, get_or_train_pair


def main(argv: Sequence[str] | None = None) -> dict:
    """Train (or load from the cache) the original/retain pair of a preset and report greedy fact recall."""
    parser = argparse.ArgumentParser(prog="python experiments/train_pair.py", description=main.__doc__)
    parser.add_argument("--preset", default="default", choices=sorted(PRESETS))
    parser.add_argument("--cache-dir", default=None, help="default: bs_ref.models.default_cache_dir()")
    parser.add_argument("--forget", default="forget10", help="forget split whose retain twin is trained")
    parser.add_argument(
        "--benchmark", default=None, choices=["default", "smoke"], help="synthetic benchmark size (default: as preset)"
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="train the original and its retain twin one after the other in this process (default: side by side in "
        "two worker processes where two CPUs are usable; the same weights either way)",
    )
    args = parser.parse_args(argv)
    problems = files.path_problems("--cache-dir", args.cache_dir, "dir", writable=True)
    if args.forget not in FORGET_SPLITS:
        problems.append(f"--forget {args.forget} is unknown; choose one of {', '.join(FORGET_SPLITS)}")
    files.report_problems(parser, problems)  # before the pair is trained
    size = args.benchmark or ("smoke" if args.preset in ("smoke", "smollm2") else "default")
    benchmark_cfg = SyntheticConfig.smoke() if size == "smoke" else SyntheticConfig()
    start = time.perf_counter()
    original, retain, tokenizer, info = get_or_train_pair(
        benchmark_cfg,
        args.preset,
        args.cache_dir,
        forget=args.forget,
        side_by_side=False if args.sequential else None,
    )
    report = {"preset": args.preset, "benchmark": size, "wall_s": round(time.perf_counter() - start, 1)}
    report.update({k: info[k] for k in ("path", "n_parameters", "template")})
    report["side_by_side"] = info.get("side_by_side")  # None: loaded from an entry written before it was recorded
    for role in ("original", "retain"):
        report[f"train_{role}_s"] = round(info[role]["seconds"], 1)
        report[f"train_{role}_cpu_s"] = round(info[role].get("cpu_seconds", float("nan")), 1)
    records = build_benchmark(benchmark_cfg)[args.forget]
    questions, facts = [r["question"] for r in records], [r["fact"] for r in records]
    for role, model in (("original", original), ("retain_twin", retain)):
        answers = generate_answers(model, tokenizer, questions, template=info["template"], max_new_tokens=48)
        report[f"forget_recall_{role}"] = fact_leak_rate(answers, facts)
    print(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    with files.one_line_errors("train_pair.py"):
        main()
