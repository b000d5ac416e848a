"""Command line for the TOFU metrics (SPEC §6).

    python -m bs_ref.metrics aggregate --log FILE --retain-log FILE [--convention tofu|tofu-legacy|arithmetic]

FILE is a locuslab/tofu ``eval_log_aggregated.json`` or a ``bs_ref.tofu_eval/v1`` per-item file
(``bs_ref.metrics.tofu.write_eval_log``). Prints one JSON object: forget_quality, log10_forget_quality,
n, model_utility, the nine utility components, the forget split's Prob/ROUGE/TR, the paper's
Mem/Util/Agg where the inputs allow, leakage rates where items carry facts, and the convention.
"""

from __future__ import annotations

import argparse
import json
import sys

from .tofu import CONVENTIONS, aggregate, read_eval_log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bs_ref.metrics", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    agg = sub.add_parser("aggregate", help="summary metrics (FQ, MU, ...) of an evaluation log as one JSON object")
    agg.add_argument("--log", required=True, help="evaluation log of the model (locuslab/tofu or bs_ref format)")
    agg.add_argument("--retain-log", help="evaluation log of the retain model (for forget quality)")
    agg.add_argument("--convention", default="tofu", choices=CONVENTIONS, help="metric convention (default: tofu)")
    agg.add_argument("--fluency-classifier", help="local text-classification checkpoint for Fluency (default: proxy)")
    args = parser.parse_args(argv)
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
    sys.exit(main())
