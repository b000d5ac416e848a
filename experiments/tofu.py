"""The TOFU unlearning experiment, end to end: every method, the paper's table, and honest comparisons.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), §6, Table 1, Fig. 2/4.
Benchmark: Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", 2024.

Run commands (from the repository root; ``--help`` lists every flag, ``--preset`` what each preset sets):

    python experiments/tofu.py                                   # embedded default on CPU: synthetic benchmark
    python experiments/tofu.py --preset smoke --out runs/smoke   # tiny sizes, < 3 min on 2 cores (CI)
    python experiments/tofu.py --seeds 0 1 2 --grid              # 95 % intervals, and BS-T over τ × λ
    python experiments/tofu.py --preset smoke --seeds 0 1 --pair-seeds 0 1   # 2 unlearning x 2 model-pair seeds
    python experiments/tofu.py --methods ga npo:beta=0.2 bs_t:tau=2,lam=0.6 --lam 0.4   # per-method values
    python experiments/tofu.py --preset smollm2                  # pretrained SmolLM2-135M-Instruct tier (CPU)
    python experiments/tofu.py --preset smollm2_tofu --data /path/to/TOFU   # SmolLM2 fine-tuned here on real TOFU
    python experiments/tofu.py --preset tofu_fair --data /path/to/TOFU      # the fair tier: docs/theory.md §20
    python experiments/tofu.py --preset paper --data locuslab/TOFU \\
        --model open-unlearning/tofu_Llama-3.2-1B-Instruct_full \\
        --retain-model open-unlearning/tofu_Llama-3.2-1B-Instruct_retain90     # the real benchmark, on a GPU
    python experiments/tofu.py --data /path/to/TOFU --model CKPT --retain-logs eval_log_aggregated.json

What one run does (docs/theory.md §6, §12):

1. Data (``bs_ref.protocol.data``): ``--data synthetic`` (default) builds the fictitious-author benchmark,
   whose records carry an annotated fact; anything else is a TOFU source (``locuslab/TOFU`` or a directory).
2. Models (``bs_ref.protocol.pairs``): synthetic data trains the original model and its retain twin once per
   model-pair seed (``--pair-seeds``; default 0, the pair of every earlier version) and caches them; real data
   takes ``--model`` and ``--retain-model`` (or ``--retain-logs``), one pair. ``--precision`` (fp32 | bf16,
   set by the preset) applies to pair training, unlearning and evaluation alike.
3. Methods (``--methods``, declared in ``bs_ref.methods``), all with one budget (``bs_ref.unlearn``):
   ``original`` and ``retrain`` are evaluated as they are; the others unlearn a fresh copy of the original
   model. A run-wide flag (``--lam``) sets a hyper-parameter of every method that has it; a method spec
   (``bs_t:temperature=2,lam=0.6``) sets it for one. ``ga_scaled`` (GA×(1−λ)), ``ga_target_matched`` (GA
   weighted by BS-T's target weight) and ``sga`` (label-smoothed GA) are BS-T's controls (D2); ``rmu`` is RMU
   (§14). ``--reduction row|token`` is how every term averages its answer tokens (§11), recorded in config.json.
4. Evaluation (``bs_ref.protocol.evaluate``): every TOFU metric at the end; every ``--eval-every`` steps a
   light evaluation (target log-prob, belief bands, FQ, MU, Mem, fact leak): each method's trade-off curve.
5. Report under ``--out`` (``bs_ref.protocol.report``): config.json, methods/<method>/seed<k>/ (pair<p>/seed<k>/
   for a model pair p ≠ 0), summary.csv, matched.csv (methods at MATCHED FORGETTING, read off their curves),
   verdict.csv (paired comparisons with better / worse / no difference at 95 %), table.md, plots/*.png, and
   timing.json (wall time by part: pair, each method's unlearning, belief sampling, each evaluation, each attack,
   the report; the summary's "Time (s)" line). Every number carries a 95 % interval (bs_ref.protocol.stats: items
   resampled within runs, runs = (seed, pair seed) cells).

Resume: a rerun with the same settings skips every finished method/seed/pair (and adds new methods or seeds);
Ctrl-C keeps what finished. Different settings on the same ``--out`` stop with an error unless ``--overwrite``.
"""

from __future__ import annotations

import copy
import os
import shlex
import sys
import time
from dataclasses import dataclass

import torch

from bs_ref import __version__, files, timing
from bs_ref.protocol import ablations, cli, data, evaluate, fair, matched, recovery
from bs_ref.protocol import pairs as model_pairs
from bs_ref.protocol.cli import arg, method_settings, section
from bs_ref.protocol.data import DataConfig
from bs_ref.protocol.driver import Job, PairContext, Run, job_name
from bs_ref.protocol.evaluate import EvalConfig
from bs_ref.protocol.executor import ExecutionConfig, executor_problems
from bs_ref.protocol.pairs import ModelConfig
from bs_ref.protocol.recovery import AttackConfig
from bs_ref.protocol.report import PartClock, terminal_summary, write_timing
from bs_ref.protocol.store import REFERENCE_METHODS, RunDir
from bs_ref.unlearn import UnlearnConfig, unlearn

DEFAULT_METHODS = ("original", "retrain", "ga", "graddiff", "npo", "simnpo", "wga", "ga_scaled", "bs_t", "bs_s")
GRID = [
    spec for lam in (0.2, 0.6) for spec in (f"ga_scaled:lam={lam}", *(f"bs_t:tau={t},lam={lam}" for t in (1, 2, 4)))
]
"""``--grid``: BS-T over τ ∈ {1, 2, 4} × λ ∈ {0.2, 0.6} and GA×(1−λ) for both λ (docs/theory.md D4)."""


@dataclass
class TofuArgs:
    """Every setting of one run: the experiment's own, then the library's configs it contains. A setting marked
    ``identity=False`` changes no number, so a rerun may change it and still resume (``CommandLine.identity``)."""

    preset: str = arg("default", "start from a preset's defaults; flags given on the command line win")
    out: str = arg("runs/tofu", "output directory (created; see the module docstring)", identity=False)
    overwrite: bool = arg(
        False, "recompute and replace finished results in --out (never done without it)", identity=False
    )
    methods: list[str] = arg(
        help="methods to run: original retrain ga graddiff npo simnpo wga rmu ga_scaled ga_target_matched sga bs_t "
        "bs_s; a method may carry its own hyper-parameters: npo:beta=0.2, bs_t:temperature=2,lam=0.6 (aliases tau, "
        "lambda, n)",
        factory=lambda: [*DEFAULT_METHODS],
        identity=False,
    )
    seeds: list[int] = arg(
        help="unlearning seeds (batch order, sampling); every seed runs on every model pair",
        factory=lambda: [0],
        identity=False,
    )
    pair_seeds: list[int] = arg(
        help="model-pair seeds (synthetic data): the original model and its retain twin are "
        "trained once per seed; 0 is the pair of earlier versions",
        factory=lambda: [0],
        identity=False,
    )
    grid: bool = arg(
        False, "also run BS-T over temperature {1,2,4} x lam {0.2,0.6} and GA×(1−λ) for both λ", identity=False
    )
    ablation: list[str] = arg(
        help="also run an ablation (docs/theory.md §13): refresh (BS-S belief refresh period x N) and/or "
        "sensitivity (BS-T lam x k x temperature with GA×(1−λ) controls, BS-S lam_bss); tables, ablation_<name>.csv "
        "and plots/ablation_*.png",
        factory=list,
        identity=False,
    )
    progress: bool = arg(True, "show progress bars", negative="hide progress bars (shown by default)", identity=False)
    match_target_drop: float | None = arg(
        None, "matched level: target log-prob drop, nats (default: from the curves)", identity=False
    )
    match_fact_leak: float | None = arg(
        None, "matched level: fact-leak rate in [0, 1) (default: from the curves)", identity=False
    )
    stop_at_fraction: float | None = arg(
        None,
        "stop each method when its forget target log-prob has gone this fraction of the way from the original "
        "model's to the retain model's (1: the retain level), or at the budget (--max-steps); off by default",
    )
    data: DataConfig = section(DataConfig, "data (bs_ref.protocol.data)")
    models: ModelConfig = section(ModelConfig, "models and hardware (bs_ref.protocol.pairs)")
    execution: ExecutionConfig = section(ExecutionConfig, "where the jobs run (bs_ref.protocol.executor)")
    unlearn: UnlearnConfig = section(
        lambda: UnlearnConfig(lr=1e-3, epochs=5, batch_size=8, eval_every=5),
        "unlearning: one budget for every method (bs_ref.unlearn.UnlearnConfig)",
    )
    hyper: dict = method_settings(
        "method hyper-parameters, run-wide (bs_ref.methods)",
        "Each applies to every method that has it; a method spec sets one method's own value (npo:beta=0.2).",
    )
    evaluation: EvalConfig = section(EvalConfig, "evaluation (bs_ref.protocol.evaluate)")
    attacks: AttackConfig = section(AttackConfig, "recovery attacks (bs_ref.protocol.recovery, docs/theory.md §9)")


PRESETS = {
    "default": {},
    "smoke": {
        **dict(model_preset="smoke", n_authors=20, qa_per_author=2, n_world=8, n_real=6, epochs=4, batch_size=2),
        **dict(lr=3e-3, eval_every=3, curve_items=4, band_samples=4, leak_samples=2, eval_batch_size=16),
        **dict(belief_max_new_tokens=24),
    },
    "paper": {
        **dict(lr=1e-5, epochs=10, batch_size=8, grad_accum=4, weight_decay=0.01, warmup=1.0, precision="bf16"),
        **dict(template="chat", max_new_tokens=200, eval_every=25, curve_items=50, belief_max_new_tokens=128),
    },
    "smollm2": {
        **dict(model_preset="smollm2", template="chat", n_authors=20, qa_per_author=3, n_world=10, n_real=10),
        **dict(lr=1e-4, batch_size=4, eval_every=2, curve_items=4, leak_samples=3, eval_batch_size=16),
        **dict(threads=2),
    },
    "smollm2_tofu": {
        **dict(model_preset="smollm2_tofu", template="chat", max_authors=2, limit=40),
        **dict(lr=1e-4, epochs=2, batch_size=8, eval_every=10, curve_items=2, curve_forget_items=8),
        **dict(band_samples=4, eval_batch_size=40, threads=1),
    },
    "tofu_fair": {
        **dict(model_preset="smollm2_tofu", template="chat", max_authors=5, limit=100, utility_limit=20),
        **dict(methods=["original", "retrain", "ga", "npo", "ga_target_matched", "bs_t", "bs_s"], seeds=[0, 1, 2]),
        **dict(lr=2e-4, epochs=8, batch_size=8, max_steps=30, eval_every=1, stop_at_fraction=1.0, precision="fp32"),
        **dict(light_eval="logprob", curve_forget_items=0, band_samples=4, leak_k_samples=16, leak_k_items=0),
        **dict(share_prompts=True, leak_k_tokens="answer", share_prefix=True, eval_batch_size=40, threads=1),
        **dict(attacks=["relearn"], relearn_steps=[0, 2, 4, 8], attack_at="end", executor="processes", workers=2),
    },
}
"""Defaults each preset changes (flag name: value); a flag given on the command line overrides its preset. Why
each is sized as it is: docs/usage.md, "Why the presets are sized as they are"."""

COMMAND_LINE = cli.CommandLine(TofuArgs, PRESETS, __doc__.split("\n\n")[0], prog="python experiments/tofu.py")


def parse_args(argv: list[str]) -> TofuArgs:
    """``argv`` as ``TofuArgs``: the preset's defaults, then the flags given."""
    return COMMAND_LINE.parse(argv)


def check(args: TofuArgs) -> list[tuple[str, object]]:
    """The methods to run, [(label, declaration; None for a reference)]. Every problem of the arguments is
    raised at once (``cli.Problems``), the data source first, before anything is loaded or written."""
    ablation_problems = ablations.ablation_problems(args.ablation)
    extra = [] if ablation_problems else ablations.ablation_specs(args.ablation)
    specs = [*args.methods, *(GRID if args.grid else []), *extra]
    plan, method_problems = cli.resolve_methods(specs, args.hyper, REFERENCE_METHODS)
    problems = data.problems(args.data) + model_pairs.problems(args.models, args.data, [label for label, _ in plan])
    if not args.seeds or len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        problems.append(f"--seeds {' '.join(map(str, args.seeds))} must name distinct seeds >= 0 (e.g. --seeds 0 1 2)")
    problems += files.path_problems("--out", args.out, "dir", writable=True)
    problems += model_pairs.pair_seed_problems(args.pair_seeds, args.models, args.data)
    problems += cli.config_problems(args.unlearn) + ablation_problems + method_problems
    problems += evaluate.problems(args.evaluation) + recovery.problems(args.attacks)
    has_retain = args.data.synthetic or model_pairs.fine_tunes_here(args.models, args.data) or args.models.retain_model
    problems += fair.problems(args.stop_at_fraction, args.unlearn, bool(has_retain or args.models.retain_logs))
    problems += executor_problems(args.execution.executor, args.execution.ray_address, args.execution.workers)
    if args.preset in ("smollm2_tofu", "tofu_fair") and args.data.synthetic:
        problems.append(
            f"--preset {args.preset} fine-tunes SmolLM2 on real TOFU text: pass --data with a TOFU directory or "
            "locuslab/TOFU"
        )
    cli.Problems.check(problems + matched.level_problems(args.match_target_drop, args.match_fact_leak))
    return plan


def say(message: str) -> None:
    print(f"[tofu] {message}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> dict:
    """Run (or resume) the experiment; returns what the report wrote. Ctrl-C: SystemExit(130), results kept."""
    argv = list(sys.argv[1:] if argv is None else argv)
    command = shlex.join(["python", "experiments/tofu.py", *argv])
    args = parse_args(argv)
    plan = check(args)
    started, began, clock = time.perf_counter(), time.time(), PartClock()
    timing.LEDGER.reset()
    splits = data.load_data(args.data)
    identity = COMMAND_LINE.identity(args) | {"precision": args.models.precision_name, "bs_ref_version": __version__}
    store = RunDir(args.out, identity, overwrite=args.overwrite)
    run = Run(args, store, splits, plan, command, COMMAND_LINE.flat(args), announce=say)
    with cli.progress_bars(args.progress), store.resumable(run.labels, run.seeds, command, run.pairs):
        torch.set_num_threads(args.models.threads)
        queued = []
        for pair in run.pairs:
            clock.part("models and references")
            ctx = run.open_pair(pair)  # the pair; its references, evaluated once per run directory, and attacked
            clock.part("unlearning, evaluation and attacks")
            jobs = run.pending_jobs(pair)  # (label, method, seed, pair): each job is run_job below
            if args.execution.executor == "local":  # this pair's jobs now, on the models in memory
                run.run_jobs(run_job, jobs, {pair: ctx})
            else:
                queued += jobs
        if queued:  # --executor processes|ray: every job of every pair, each worker loading its pair from the cache
            run.run_jobs(run_job, queued, {})
        clock.part("replayed attacks and report")
        run.attack_missing()  # at matched forgetting, and on finished methods whose model is gone: models replayed
        report = run.report()
        cells = store.cells(run.labels, run.seeds, run.pairs)  # timing.json; the summary's "Time (s)" line
        report["timing"] = write_timing(store, cells, time.perf_counter() - started, since=began)
    return report | {"wall_s": time.perf_counter() - started, "parts_s": clock.stop()}


def run_job(run: Run, contexts: dict[int, PairContext], job: Job) -> None:
    """One method, seed and model pair: unlearn a fresh copy of the pair's original model, evaluating it every
    ``eval_every`` steps (its curve starts at the original model's step-0 point), then fully (eval.json, then
    result.json); then, with ``--attack-at end|both``, the recovery attacks on the final model."""
    label, method, seed, pair = job
    torch.set_num_threads(run.args.models.threads)
    if pair not in contexts:  # a Ray task, or a worker process's first job of this pair
        contexts[pair] = run.pair_context(pair)
    ctx = contexts[pair]
    cfg = run.unlearn_config(label, method, seed, pair)
    curve, ledger, stopper = [dict(ctx.start)], timing.LEDGER.totals(), fair.Stopper(ctx.stop)

    def callback(step: int, model) -> bool:  # True: the declared level is reached (or the budget spent): stop here
        if step > 0:
            curve.append(ctx.evaluator.curve_point(step, model))
        return step > 0 and stopper.check(curve[-1])

    say(f"{job_name(job)}: unlearning ({cfg.epochs} epochs, lr {cfg.lr})")
    model, accelerator = copy.deepcopy(ctx.original), run.accelerator(cfg)
    forget, retain = run.splits.forget_train, run.splits.retain_train
    began = time.perf_counter()
    with timing.part(f"unlearning: {label}"):
        model = unlearn(model, ctx.tokenizer, forget, retain, cfg, callback, accelerator)
    train_s = time.perf_counter() - began
    ctx.evaluator.finish_curve(curve[-1], model)  # --light-eval logprob: the stopping point's belief bands
    per_split = ctx.evaluator.full(model, seed)
    agg = ctx.evaluator.aggregate(per_split)
    metrics = evaluate.summary_metrics(agg) | {
        "target_logprob_drop": ctx.start["target_logprob"] - curve[-1]["target_logprob"]
    }
    result = dict(method=label, base_method=method.name, seed=seed, pair_seed=pair, config=cfg.as_dict())
    result |= dict(metrics=metrics, aggregate=agg, curve=curve, steps=curve[-1]["step"]) | stopper.record()
    result |= dict(wall_s=time.perf_counter() - began, train_s=train_s, timing=timing.LEDGER.since(ledger))
    payload = ctx.evaluator.payload(per_split, method=label, seed=seed, pair_seed=pair)
    run.store.save_result(label, seed, result, payload, pair=pair)
    if ctx.attacker is not None and "end" in run.args.attacks.settings():
        ctx.attacker.attack(run.store, label, seed, pair, "end", model.eval(), step=result["steps"], announce=say)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        with files.one_line_errors(values=False):  # an OSError or ImportError: one line naming the path or the fix
            report = main()
    except ValueError as error:
        sys.exit(f"error: {error}")
    except KeyboardInterrupt:  # before the run directory existed: nothing to keep
        print("interrupted before any result was written; the same command starts again", file=sys.stderr)
        sys.exit(130)
    print(terminal_summary(report))  # what ran, the primary contrasts, time by part; every table: table.md
    if report["diverged"]:
        sys.exit(f"error: {len(report['diverged'])} method/seed run(s) diverged (NaN/inf; see table.md): lower --lr")
