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
    python experiments/tofu.py --preset paper --data locuslab/TOFU \\
        --model open-unlearning/tofu_Llama-3.2-1B-Instruct_full \\
        --retain-model open-unlearning/tofu_Llama-3.2-1B-Instruct_retain90     # the real benchmark, on a GPU
    python experiments/tofu.py --data /path/to/TOFU --model CKPT --retain-logs eval_log_aggregated.json

What one run does (docs/theory.md §6, §12):

1. Data (``bs_ref.protocol.data``): ``--data synthetic`` (default) builds the fictitious-author benchmark,
   whose records carry an annotated fact; anything else is a TOFU source (``locuslab/TOFU`` or a directory).
2. Models (``bs_ref.protocol.models``): synthetic data trains the original model and its retain twin once per
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
   the report; the summary's "Time (s)" line). Every
   number carries a 95 % interval (bs_ref.stats: items resampled within runs, runs = (seed, pair seed) cells).

Resume: a rerun with the same settings skips every finished method/seed/pair (and adds new methods or seeds);
Ctrl-C keeps what finished. Different settings on the same ``--out`` stop with an error unless ``--overwrite``.
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import os
import shlex
import sys
import time
from dataclasses import dataclass

import torch
from accelerate import Accelerator

from bs_ref import __version__, files, timing
from bs_ref import models as model_presets
from bs_ref.attacks import replay_unlearning
from bs_ref.protocol import ablations, cli, data, evaluate, instruments, matched, models, recovery
from bs_ref.protocol.cli import arg, method_settings, section
from bs_ref.protocol.data import DataConfig
from bs_ref.protocol.evaluate import EvalConfig
from bs_ref.protocol.executor import ExecutionConfig, executor_problems, run_jobs
from bs_ref.protocol.models import ModelConfig
from bs_ref.protocol.recovery import AttackConfig, Attacker
from bs_ref.protocol.report import PartClock, describe, terminal_summary, write_report, write_timing
from bs_ref.protocol.store import REFERENCE_METHODS, RunDir, cell_name, versions, write_json, write_text
from bs_ref.protocol.uncertainty import Context
from bs_ref.unlearn import NonFiniteLossError, UnlearnConfig, unlearn

DEFAULT_METHODS = ("original", "retrain", "ga", "graddiff", "npo", "simnpo", "wga", "ga_scaled", "bs_t", "bs_s")
GRID = [
    spec for lam in (0.2, 0.6) for spec in (f"ga_scaled:lam={lam}", *(f"bs_t:tau={t},lam={lam}" for t in (1, 2, 4)))
]
"""``--grid``: BS-T over τ ∈ {1, 2, 4} × λ ∈ {0.2, 0.6} and GA×(1−λ) for both λ (docs/theory.md D4)."""


@dataclass
class TofuArgs:
    """Every setting of one run: the experiment's own, then the library's configs it contains."""

    preset: str = arg("default", "start from a preset's defaults; flags given on the command line win")
    out: str = arg("runs/tofu", "output directory (created; see the module docstring)")
    overwrite: bool = arg(False, "recompute and replace finished results in --out (never done without it)")
    methods: list[str] = arg(
        help="methods to run: original retrain ga graddiff npo simnpo wga rmu ga_scaled ga_target_matched sga bs_t "
        "bs_s; a method may carry its own hyper-parameters: npo:beta=0.2, bs_t:temperature=2,lam=0.6 (aliases tau, "
        "lambda, n)",
        factory=lambda: [*DEFAULT_METHODS],
    )
    seeds: list[int] = arg(
        help="unlearning seeds (batch order, sampling); every seed runs on every model pair", factory=lambda: [0]
    )
    pair_seeds: list[int] = arg(
        help="model-pair seeds (synthetic data): the original model and its retain twin are "
        "trained once per seed; 0 is the pair of earlier versions",
        factory=lambda: [0],
    )
    grid: bool = arg(False, "also run BS-T over temperature {1,2,4} x lam {0.2,0.6} and GA×(1−λ) for both λ")
    ablation: list[str] = arg(
        help="also run an ablation (docs/theory.md §13): refresh (BS-S belief refresh period x N) and/or "
        "sensitivity (BS-T lam x k x temperature with GA×(1−λ) controls, BS-S lam_bss); tables, ablation_<name>.csv "
        "and plots/ablation_*.png",
        factory=list,
    )
    progress: bool = arg(True, "show progress bars", negative="hide progress bars (shown by default)")
    match_target_drop: float | None = arg(None, "matched level: target log-prob drop, nats (default: from the curves)")
    match_fact_leak: float | None = arg(None, "matched level: fact-leak rate in [0, 1) (default: from the curves)")
    data: DataConfig = section(DataConfig, "data (bs_ref.protocol.data)")
    models: ModelConfig = section(ModelConfig, "models and hardware (bs_ref.protocol.models)")
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


# fmt: off
PRESETS = {
    "default": {},
    "smoke": dict(model_preset="smoke", n_authors=20, qa_per_author=2, n_world=8, n_real=6, epochs=4, batch_size=2,
                  lr=3e-3, eval_every=3, curve_items=4, band_samples=4, leak_samples=2, eval_batch_size=16,
                  belief_max_new_tokens=24),
    # The authors' TOFU configuration (docs/theory.md §7): lr 1e-5, 10 epochs, effective batch 32, weight
    # decay 0.01, one warm-up epoch, bf16; TOFU's 200-token answers; chat prompts for the instruct checkpoints.
    "paper": dict(lr=1e-5, epochs=10, batch_size=8, grad_accum=4, weight_decay=0.01, warmup=1.0, precision="bf16",
                  template="chat", max_new_tokens=200, eval_every=25, curve_items=50, belief_max_new_tokens=128),
    # SmolLM2-135M-Instruct fine-tuned on a small synthetic world, chat prompts; forget10 = 2 authors x 3 facts.
    # Sized so a cold run (pair trained) fits in 40 min on 2 CPU cores. lr 1e-4: at 2e-5 GA lowered the target
    # by only 0.4 nats in its 15 steps; an evaluation every 2 of the 10 steps (every 5 left 3 curve points).
    # bf16 autocast for the pair, the unlearning and the evaluations (a preset setting, on any hardware).
    "smollm2": dict(model_preset="smollm2", template="chat", n_authors=20, qa_per_author=3, n_world=10, n_real=10,
                    lr=1e-4, batch_size=4, eval_every=2, curve_items=4, leak_samples=3, eval_batch_size=16,
                    threads=2, precision="bf16"),
    # SmolLM2-135M-Instruct fine-tuned here on real TOFU text (needs --data: a TOFU directory or locuslab/TOFU): the
    # first 2 forget10 authors (40 items) and the first 2 retain authors, 4 epochs at 4e-4 (bs_ref.models.PRESETS
    # "smollm2_tofu"); chat prompts, bf16 autocast. Sized for about an hour cold on one thread: 2 unlearning epochs
    # (10 steps), one light evaluation at the end (curves of two points), 8 forget and 2 utility items in it, a
    # wide evaluation batch. One thread: on a busy 2-core machine a second thread made a fine-tuning step ~5x slower.
    # TOFU records carry no annotated fact: forgetting is read on the target log-prob, ROUGE-L and the truth ratio.
    "smollm2_tofu": dict(model_preset="smollm2_tofu", template="chat", max_authors=2, limit=40, lr=1e-4, epochs=2,
                         batch_size=8, eval_every=10, curve_items=2, curve_forget_items=8, band_samples=4,
                         eval_batch_size=40, threads=1, precision="bf16"),
}
"""Defaults each preset changes (flag name: value); a flag given on the command line overrides its preset."""
# fmt: on

COMMAND_LINE = cli.CommandLine(TofuArgs, PRESETS, __doc__.split("\n\n")[0], prog="python experiments/tofu.py")
NOT_IDENTITY = ("out", "overwrite", "methods", "seeds", "pair_seeds", "grid", "ablation", "progress",
                "eval_batch_size", "device", "cache_dir", "match_target_drop", "match_fact_leak", "bf16", "attacks",
                "attack_at", "attack_lr", "attack_epochs", "executor", "ray_address", "workers")  # fmt: skip
"""Settings that do not change a method's numbers (so a rerun may change them and still resume); ``bf16`` is
an alias whose effect the identity records as ``precision``. The attack settings are kept with each attack's
results instead (``bs_ref.protocol.recovery``), so changing them recomputes only the attacks."""


def parse_args(argv: list[str]) -> TofuArgs:
    """``argv`` as ``TofuArgs``: the preset's defaults, then the flags given."""
    return COMMAND_LINE.parse(argv)


def check(args: TofuArgs) -> list[tuple[str, object]]:
    """The methods to run, [(label, declaration; None for a reference)]. Every problem of the arguments is
    raised at once (``cli.Problems``), the data source first, before anything is loaded or written."""
    ablation_problems = ablations.ablation_problems(args.ablation)
    extra = [] if ablation_problems else ablations.ablation_specs(args.ablation)
    plan, method_problems = cli.resolve_methods(
        [*args.methods, *(GRID if args.grid else []), *extra], args.hyper, REFERENCE_METHODS
    )
    method_problems = ablation_problems + method_problems
    problems = data.problems(args.data) + models.problems(args.models, args.data, [label for label, _ in plan])
    if not args.seeds or len(set(args.seeds)) != len(args.seeds) or min(args.seeds) < 0:
        problems.append(f"--seeds {' '.join(map(str, args.seeds))} must name distinct seeds >= 0 (e.g. --seeds 0 1 2)")
    problems += files.path_problems("--out", args.out, "dir", writable=True)
    problems += models.pair_seed_problems(args.pair_seeds, args.models, args.data)
    problems += cli.config_problems(args.unlearn) + method_problems + evaluate.problems(args.evaluation)
    run_on = args.execution
    problems += recovery.problems(args.attacks) + executor_problems(run_on.executor, run_on.ray_address, run_on.workers)
    if args.preset == "smollm2_tofu" and args.data.synthetic:
        problems.append("--preset smollm2_tofu fine-tunes SmolLM2 on real TOFU text: pass --data with a TOFU directory "
                        "or locuslab/TOFU")  # fmt: skip
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
    labels, seeds, pairs = [m for m, _ in plan], args.seeds, args.pair_seeds
    settings, started, clock = COMMAND_LINE.flat(args), time.perf_counter(), PartClock()
    timing.LEDGER.reset()
    began = time.time()
    splits = data.load_data(args.data)
    identity = {k: v for k, v in settings.items() if k not in NOT_IDENTITY} | {
        "precision": args.models.precision_name, "bs_ref_version": __version__}  # fmt: skip
    store = RunDir(args.out, identity, overwrite=args.overwrite)
    device, diverged, notes, retain_forget, model_info, queued = args.models.device_name, [], [], {}, {}, []
    attackers: dict[int, Attacker | None] = {}
    attack_labels, attack_notes = args.attacks.labels()
    with cli.progress_bars(args.progress), store.resumable(labels, seeds, command, pairs):
        torch.set_num_threads(args.models.threads)
        config = {"identity": store.identity, "command": command, "preset": args.preset, "methods": labels,
                  "seeds": seeds, "pair_seeds": pairs, "device": device, "precision": args.models.precision_name,
                  "mixed_precision": args.models.mixed_precision, "versions": versions(), "data": splits.info,
                  "attacks": {"run": attack_labels, "at": args.attacks.settings() if attack_labels else [],
                              "skipped": attack_notes},
                  "started": time.strftime("%Y-%m-%dT%H:%M:%S%z")}  # fmt: skip
        for pair in pairs:
            clock.part("models and references")
            with timing.part("pair"):
                original, retain, tokenizer, model_info[pair] = models.load_models(args.models, splits, args.progress,
                                                                                   say, pair_seed=pair)  # fmt: skip
            store.bind_models(pair, model_info[pair])  # a resume never mixes model pairs
            evaluator = evaluate.Evaluator(args.evaluation, splits, tokenizer)
            config |= {"models": model_info[pairs[0]], "conventions": evaluate.conventions(settings,
                       evaluator.max_new_tokens)}  # fmt: skip
            if len(pairs) > 1:
                config["models_by_pair_seed"] = dict(model_info)
            write_json(store.path("config.json"), config)
            start, fq_note = evaluate.references(store, evaluator, original, retain, args.models.retain_logs, device,
                                                 want_retrain="retrain" in labels, announce=say, pair=pair)  # fmt: skip
            retain_forget[pair] = evaluator.retain_forget_items
            if fq_note and fq_note not in notes:
                notes.append(fq_note)
            write_json(store.path("config.json"), config | {"forget_quality_note": fq_note})
            attacker = attackers[pair] = make_attacker(args, splits, tokenizer, evaluator, attack_labels)
            if attacker is not None:
                attack_references(store, attacker, labels, seeds, pair, {"original": original, "retrain": retain})
            clock.part("unlearning, evaluation and attacks")
            jobs = pending_jobs(store, plan, seeds, pair)
            if args.execution.executor == "local":  # this pair's jobs now, on the models in memory
                contexts = {pair: PairContext(original, tokenizer, evaluator, start, attacker)}
                diverged += run_cells(args, store, splits, jobs, attack_labels, contexts)
            else:
                queued += jobs
        if queued:  # --executor processes|ray: every job of every pair, each worker loading its pair from the cache
            diverged += run_cells(args, store, splits, queued, attack_labels, {})
        given = matched.given_levels(args.match_target_drop, args.match_fact_leak)
        clock.part("replayed attacks and report")
        if attack_labels:
            attack_missing(args, store, plan, seeds, pairs, splits, attackers, given)
        recovery_part, cells, informative, facts = None, None, None, instruments.run_facts(splits)
        if attack_labels:
            cells = recovery.load_cells(store, labels, seeds, pairs, args.attacks.settings())
            measure = "fact_leak" if splits.has_facts else "target_logprob"
            informative = instruments.informative_attacks(cells, facts)
            recovery_part = recovery.recovery_report(cells, labels, Context(methods=dict(plan), pair_seeds=pairs),
                                                     measure=measure, informative=informative)  # fmt: skip
        notes += attack_notes
        report = write_report(
            store, store.results(labels, seeds, pairs), seeds=seeds, command=command, has_facts=splits.has_facts,
            settings=describe(splits.info, settings, seeds, pairs), notes=notes, diverged=diverged, given=given,
            context=Context(args.evaluation.convention, args.evaluation.fluency_classifier, retain_forget,
                            methods=dict(plan), pair_seeds=pairs),
            recovery=recovery_part,
        )  # fmt: skip
        # leak@k, the squeeze after the fork, annotated facts, conditional recovery (docs/theory.md §15-§18)
        found = instruments.write_instruments(store, labels, seeds, pairs, facts, cells, informative)
        report["table"] = "\n".join([report["table"], *found["lines"]])
        write_text(store.path("table.md"), report["table"])
        if args.ablation:
            extra = ablations.write_ablations(args.ablation, report["rows"], store.results(labels, seeds, pairs),
                                              store.root, settings=args.hyper)  # fmt: skip
            report["table"] = "\n".join([report["table"], *extra])
            write_text(store.path("table.md"), report["table"])
        report["timing"] = write_timing(store, store.cells(labels, seeds, pairs), time.perf_counter() - started,
                                        since=began)  # by part: timing.json; the summary's "Time (s)" line
    return report | {"wall_s": time.perf_counter() - started, "parts_s": clock.stop()}


# ------------------------------------------------------------------------------------------------ jobs
@dataclass
class PairContext:
    """What every job of one model pair uses: the original model, the tokenizer, the evaluator (with the pair's
    belief bands), the step-0 point and the attacker (None without attacks)."""

    original: object
    tokenizer: object
    evaluator: evaluate.Evaluator
    start: dict
    attacker: Attacker | None


def pending_jobs(store: RunDir, plan, seeds: list[int], pair: int) -> list[tuple]:
    """(label, method, seed, pair) of every unfinished unlearning job of model pair ``pair``, in run order."""
    jobs = []
    for seed in seeds:
        for label, method in plan:
            if method is None:
                continue
            if store.is_finished(label, seed, pair):
                say(f"{cell_name(label, seed, pair)}: finished result kept ({store.result_path(label, seed, pair)})")
            else:
                jobs.append((label, method, seed, pair))
    return jobs


def run_cells(args: TofuArgs, store: RunDir, splits: data.Data, jobs: list[tuple], attack_labels: list[str],
              contexts: dict[int, PairContext]) -> list[str]:  # fmt: skip
    """Run the jobs with ``--executor`` (``bs_ref.protocol.executor``); returns one line per job that stopped on a
    NaN/inf loss (every other result is written by its job)."""
    diverged = []

    def done(job: tuple, outcome) -> None:
        if isinstance(outcome, NonFiniteLossError):  # one line; every finished result is kept
            cell = cell_name(job[0], job[2], job[3])
            diverged.append(f"{cell}: {outcome}")
            say(f"{cell} stopped (lower --lr; every finished result is kept): {outcome}")

    work = functools.partial(run_cell, args, store, splits, attack_labels, contexts)
    gpus = 1 if args.models.device_name == "cuda" else 0
    run_on = args.execution
    run_jobs(jobs, work, executor=run_on.executor, address=run_on.ray_address, cpus_per_job=args.models.threads,
             gpus_per_job=gpus, catch=(NonFiniteLossError,), on_done=done, workers=run_on.workers,
             describe=lambda job: cell_name(job[0], job[2], job[3]))  # fmt: skip
    return diverged


def run_cell(args: TofuArgs, store: RunDir, splits: data.Data, attack_labels: list[str],
             contexts: dict[int, PairContext], job: tuple) -> None:  # fmt: skip
    """One job: unlearn and evaluate (and attack) one method, seed and model pair. A job without its pair in
    ``contexts`` (a Ray task, a worker process's first job of the pair) loads the pair from the model cache and
    reads the pair's reference files, which the run wrote before any job started."""
    label, method, seed, pair = job
    torch.set_num_threads(args.models.threads)
    if pair not in contexts:
        original, retain, tokenizer, info = models.load_models(args.models, splits, False, say, pair_seed=pair)
        store.bind_models(pair, info)
        evaluator = evaluate.Evaluator(args.evaluation, splits, tokenizer)
        device = args.models.device_name
        start, _ = evaluate.references(store, evaluator, original, retain, args.models.retain_logs, device,
                                       want_retrain=False, announce=say, pair=pair)  # fmt: skip
        attacker = make_attacker(args, splits, tokenizer, evaluator, attack_labels)
        contexts[pair] = PairContext(original, tokenizer, evaluator, start, attacker)
    ctx = contexts[pair]
    unlearn_and_evaluate(args, store, ctx.evaluator, splits, ctx.original, ctx.tokenizer, label, method, seed,
                         ctx.start, pair, ctx.attacker)  # fmt: skip


def unlearn_config(args: TofuArgs, store: RunDir, splits: data.Data, label: str, method, seed: int,
                   pair: int = 0) -> UnlearnConfig:  # fmt: skip
    """The unlearning config of one method, seed and model pair (the same for the run and for its replays)."""
    return dataclasses.replace(
        args.unlearn, method=method, seed=seed, template=splits.template, progress=args.progress,
        eval_at_start=False,  # the step-0 point is the original model's, computed once for every method
        log_path=str(store.method_dir(label, seed, pair) / "train_log.jsonl"),
        mixed_precision=args.models.mixed_precision, extra={"label": label},
    )  # fmt: skip


def unlearn_and_evaluate(args: TofuArgs, store: RunDir, evaluator: evaluate.Evaluator, splits: data.Data, original,
                         tokenizer, label: str, method, seed: int, start: dict, pair: int = 0,
                         attacker: Attacker | None = None) -> None:  # fmt: skip
    """One method, seed and model pair: unlearn a fresh copy of the pair's original model, evaluating it every
    ``eval_every`` steps (its curve starts at the original model's step-0 point), then fully; eval.json, then
    result.json; then, with ``attacker`` and ``--attack-at end|both``, the recovery attacks on the final model."""
    cfg = unlearn_config(args, store, splits, label, method, seed, pair)
    curve, ledger = [dict(start)], timing.LEDGER.totals()

    def callback(step: int, model) -> None:
        if step > 0:
            curve.append(evaluator.curve_point(step, model))

    say(f"{cell_name(label, seed, pair)}: unlearning ({cfg.epochs} epochs, lr {cfg.lr})")
    model = copy.deepcopy(original)
    accelerator = Accelerator(cpu=args.models.device_name == "cpu", mixed_precision=cfg.mixed_precision)
    began = time.perf_counter()
    with timing.part(f"unlearning: {label}"):
        model = unlearn(model, tokenizer, splits.forget_train, splits.retain_train, cfg, callback, accelerator)
    train_s = time.perf_counter() - began
    per_split = evaluator.full(model, seed)
    agg = evaluator.aggregate(per_split)
    metrics = evaluate.summary_metrics(agg) | {
        "target_logprob_drop": start["target_logprob"] - curve[-1]["target_logprob"]
    }
    result = {"method": label, "base_method": method.name, "seed": seed, "pair_seed": pair, "config": cfg.as_dict(),
              "metrics": metrics, "aggregate": agg, "curve": curve, "steps": curve[-1]["step"],
              "wall_s": time.perf_counter() - began, "train_s": train_s,
              "timing": timing.LEDGER.since(ledger)}  # fmt: skip
    store.save_result(
        label, seed, result, evaluator.payload(per_split, method=label, seed=seed, pair_seed=pair), pair=pair
    )
    if attacker is not None and "end" in args.attacks.settings():
        attacker.attack(store, label, seed, pair, "end", model.eval(), step=result["steps"], announce=say)


# ------------------------------------------------------------------------------------------------ attacks
def make_attacker(args: TofuArgs, splits: data.Data, tokenizer, evaluator: evaluate.Evaluator,
                  attack_labels: list[str]) -> Attacker | None:  # fmt: skip
    """The recovery attacks of this run (None with ``--attacks none``). Relearning trains at ``--attack-lr``, by
    default the learning rate and batch size the model pair was fine-tuned with (a given checkpoint: TOFU's
    1e-5 and the unlearning batch size)."""
    if not attack_labels:
        return None
    if args.models.model:
        lr, batch_size = recovery.PAPER_TOFU_LR, args.unlearn.batch_size
    else:
        train_cfg = model_presets.resolve_preset(args.models.model_preset)[1]
        lr, batch_size = train_cfg.lr, train_cfg.batch_size
    return Attacker(attack_labels, splits.forget_train, tokenizer, template=splits.template,
                    lr=args.attacks.attack_lr or lr, epochs=args.attacks.attack_epochs, batch_size=batch_size,
                    max_new_tokens=evaluator.max_new_tokens, eval_batch_size=args.evaluation.eval_batch_size,
                    num_samples=args.evaluation.leak_samples if splits.has_facts else 0,
                    num_threads=args.models.threads)  # fmt: skip


def attack_references(store: RunDir, attacker: Attacker, labels: list[str], seeds: list[int], pair: int,
                      references: dict) -> None:  # fmt: skip
    """Attack the original and the retain model once per unlearning seed (the relearning split and the samples
    are the seed's), unless their results under these settings are kept."""
    for seed in seeds:
        for name, model in references.items():
            if name in labels and model is not None and not attacker.done(store, name, seed, pair, "end"):
                attacker.attack(store, name, seed, pair, "end", model.eval(), step=None, announce=say)


def attack_missing(args: TofuArgs, store: RunDir, plan, seeds: list[int], pairs: list[int], splits: data.Data,
                   attackers: dict[int, Attacker], given: dict) -> None:  # fmt: skip
    """Attacks not yet run: at the end of finished methods whose model is gone (resumed runs), and at matched
    forgetting (the run's target-drop level, known once every method has finished). Each model is replayed from
    the pair's original model by the deterministic unlearning run; a pair is loaded again only when one of its
    models needs a replay. ``attackers``: the run's attacker of each pair (the references are attacked already)."""
    labels = [label for label, _ in plan]
    results = store.results(labels, seeds, pairs)
    level = matched.matched_rows(results, seeds, given)[1].get("target_drop", float("nan"))
    wanted = args.attacks.settings()
    for pair in pairs:
        attacker, todo = attackers[pair], []
        for label, method in plan:
            for seed in seeds:
                if method is None or not store.is_finished(label, seed, pair):
                    continue
                result = store.load_result(label, seed, pair)
                for setting in wanted:
                    step, at = result["steps"], None
                    if setting == "matched":
                        step = recovery.matched_step(result, level) if math.isfinite(level) and level > 0 else None
                        if step is None:  # never reaches the level: no matched model to attack
                            continue
                        at = level
                    if not attacker.done(store, label, seed, pair, setting, at):
                        todo.append((label, method, seed, setting, step, at))
        if not todo:
            continue
        original, _, tokenizer, info = models.load_models(args.models, splits, args.progress, say, pair_seed=pair)
        store.bind_models(pair, info)
        for label, method, seed, setting, step, at in todo:
            say(f"{cell_name(label, seed, pair)}: replaying the unlearning run to step {step} ({setting})")
            cfg = unlearn_config(args, store, splits, label, method, seed, pair)
            accelerator = Accelerator(cpu=args.models.device_name == "cpu", mixed_precision=cfg.mixed_precision)
            with timing.part("replays"):
                model = replay_unlearning(original, tokenizer, splits.forget_train, splits.retain_train, cfg, [step],
                                          accelerator=accelerator)[step]  # fmt: skip
            attacker.attack(store, label, seed, pair, setting, model, step=step, level=at, announce=say)


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
