"""The TOFU unlearning experiment, end to end: every method, the paper's table, and honest comparisons.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), §6, Table 1, Fig. 2/4.
Benchmark: Maini et al., "TOFU: A Task of Fictitious Unlearning for LLMs", 2024.

Run commands (from the repository root):

    python experiments/tofu.py                                   # embedded default on CPU: synthetic benchmark
    python experiments/tofu.py --preset smoke --out runs/smoke   # tiny sizes, < 3 min on 2 cores (CI)
    python experiments/tofu.py --seeds 0 1 2 --grid              # mean ± std, and BS-T over τ × λ
    python experiments/tofu.py --preset smollm2                  # pretrained SmolLM2-135M-Instruct tier (CPU)
    python experiments/tofu.py --preset paper --data locuslab/TOFU \\
        --model open-unlearning/tofu_Llama-3.2-1B-Instruct_full \\
        --retain-model open-unlearning/tofu_Llama-3.2-1B-Instruct_retain90     # the real benchmark, on a GPU
    python experiments/tofu.py --data /path/to/TOFU --model CKPT --retain-logs eval_log_aggregated.json

What one run does:

1. Data. ``--data synthetic`` (default) builds the fictitious-author benchmark of ``bs_ref.data.synthetic``
   (records carry an annotated ``fact``, so fact leakage is measurable); anything else is a TOFU source for
   ``bs_ref.data.tofu.load_tofu`` (the hub name ``locuslab/TOFU`` or a local directory of its JSON files).
2. Models. Synthetic: the original model and its retain twin, trained here from scratch (or fine-tuned from
   SmolLM2 with ``--preset smollm2``) and cached by config hash (``bs_ref.models.get_or_train_pair``). Real
   data: ``--model`` (path or hub id) and ``--retain-model``, or ``--retain-logs`` (a locuslab/tofu eval log
   or an ``eval.json`` of this script) for forget quality.
3. Methods (``--methods``), all with the same budget (learning rate, epochs, batch, schedule): ``original``
   and ``retrain`` are evaluated as they are; ``ga graddiff npo simnpo wga ga_scaled bs_t bs_s`` unlearn a
   fresh copy of the original model with ``bs_ref.unlearn.unlearn``. ``ga_scaled`` is the control GA×(1−λ)
   with the λ of BS-T: what BS-T does beyond it is the belief effect (SPEC D2). A method may carry its own
   hyper-parameters, ``bs_t:temperature=2,lam=0.6``; ``--grid`` adds BS-T over τ ∈ {1, 2, 4} × λ ∈ {0.2, 0.6}
   and GA×(1−λ) for both λ (SPEC D4).
4. Evaluation (``bs_ref.metrics``, SPEC §6): at the end, every TOFU metric on every split (per item); during
   training, every ``--eval-every`` steps, a lighter evaluation on ``--curve-items`` items per split: the
   forget answers' mean token log-prob, the original model's high/mid/low-likelihood belief bands (the
   squeezing trace), FQ, MU, Mem and the fact-leak rate — the trade-off curve of each method.
5. Report under ``--out``: config.json, methods/<method>/seed<k>/{eval.json,result.json,train_log.jsonl},
   summary.csv, matched.csv, table.md and plots/*.png. Methods are compared at the end of training and at
   MATCHED FORGETTING (the same drop of the target log-prob; the same fact-leak rate), read off each
   method's curve (``bs_ref.experiment.matched_forgetting``).

Resume: a rerun with the same settings skips every method/seed whose result.json exists (and adds new methods
or seeds); different settings on the same ``--out`` stop with an error unless ``--overwrite``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import math
import os
import platform
import shlex
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bs_ref import experiment as ex

DEFAULT_METHODS = ("original", "retrain", "ga", "graddiff", "npo", "simnpo", "wga", "ga_scaled", "bs_t", "bs_s")
REFERENCE_METHODS = ("original", "retrain")
"""Methods that are evaluated, not trained: the model before unlearning and the retain-only twin."""
GRID_TEMPERATURES = (1.0, 2.0, 4.0)
GRID_LAMBDAS = (0.2, 0.6)
QA_PER_AUTHOR_TOFU = 20
"""TOFU lists 20 question/answer pairs per fictitious author, author by author (dataset card)."""
SPLIT_KINDS = ("forget", "retain", "real_authors", "world_facts")
EVAL_CONFIGS = {"retain": "retain_perturbed", "real_authors": "real_authors_perturbed",
                "world_facts": "world_facts_perturbed"}  # fmt: skip
"""Evaluation configs of the utility splits (the forget split's is ``<forget>_perturbed``)."""
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


# ------------------------------------------------------------------------------------------------------------
# Arguments
# ------------------------------------------------------------------------------------------------------------


def _help(text: str, **extra) -> dict:
    return {"help": text, **extra}


@dataclass
class TofuArgs:
    """Every setting of one run. Defaults: the embedded synthetic benchmark on the available device;
    ``--preset`` changes the defaults of the fields it names (explicit flags still win)."""

    # --- run --------------------------------------------------------------------------------------------------
    preset: str = field(
        default="default",
        metadata=_help("default | smoke (tiny sizes, CI) | paper (authors' hyper-parameters, SPEC §7, GPU) | "
                       "smollm2 (fine-tuned pretrained SmolLM2-135M-Instruct pair)",
                       choices=["default", "smoke", "paper", "smollm2"]),
    )  # fmt: skip
    out: str = field(default="runs/tofu", metadata=_help("output directory (created; see the module docstring)"))
    overwrite: bool = field(
        default=False, metadata=_help("recompute and replace finished results in --out (never done without it)")
    )
    methods: list[str] = field(
        default_factory=lambda: list(DEFAULT_METHODS),
        metadata=_help("methods to run: original retrain ga graddiff npo simnpo wga ga_scaled bs_t bs_s; a method "
                       "may carry hyper-parameters, e.g. bs_t:temperature=2,lam=0.6 (UnlearnConfig field names)"),
    )  # fmt: skip
    seeds: list[int] = field(
        default_factory=lambda: [0], metadata=_help("unlearning seeds; several give mean ± std rows")
    )
    grid: bool = field(
        default=False,
        metadata=_help("also run BS-T over temperature {1,2,4} x lam {0.2,0.6} and GA×(1−λ) for both λ"),
    )
    device: str = field(default="auto", metadata=_help("auto (CUDA when available) | cpu | cuda"))
    threads: int = field(
        default=1,
        metadata=_help(
            "torch CPU threads; 1 is fastest for the small from-scratch models (on a busy 2-core machine extra "
            "threads spin and were measured ~50x slower); the smollm2 preset uses 2 (a training step 1.65x faster)"
        ),
    )
    cache_dir: str | None = field(
        default=None, metadata=_help("model cache (default $BS_REF_CACHE or ~/.cache/bs_ref)")
    )
    progress: bool = field(default=True, metadata=_help("show progress bars"))
    # --- data -------------------------------------------------------------------------------------------------
    data: str = field(
        default="synthetic",
        metadata=_help("synthetic (the embedded benchmark) | locuslab/TOFU | a local directory of TOFU JSON files"),
    )
    forget: str = field(default="forget10", metadata=_help("forget split: forget01 | forget05 | forget10"))
    max_authors: int | None = field(
        default=None,
        metadata=_help("keep only the first N authors of the forget and retain training splits (quick runs on "
                       "real data; TOFU has 20 QA per author)"),
    )  # fmt: skip
    limit: int | None = field(default=None, metadata=_help("evaluate at most N items per split"))
    template: str = field(
        default="plain",
        metadata=_help("prompt template: plain ('Question: ...\\nAnswer: ') | chat"),
    )
    convention: str = field(
        default="tofu", metadata=_help("metric convention of bs_ref.metrics: tofu | tofu-legacy | arithmetic")
    )
    # synthetic benchmark (bs_ref.data.synthetic.SyntheticConfig); None keeps that class's default
    n_authors: int | None = field(default=None, metadata=_help("synthetic: number of fictitious authors"))
    qa_per_author: int | None = field(default=None, metadata=_help("synthetic: question/answer pairs per author"))
    n_world: int | None = field(default=None, metadata=_help("synthetic: world-facts analogue items"))
    n_real: int | None = field(default=None, metadata=_help("synthetic: real-authors analogue items"))
    data_seed: int = field(default=0, metadata=_help("synthetic: seed of the benchmark generator"))
    model_preset: str = field(
        default="default",
        metadata=_help("synthetic: model/training preset of bs_ref.models.PRESETS (default | smoke | smollm2)"),
    )
    # --- models (real data) ------------------------------------------------------------------------------------
    model: str | None = field(
        default=None, metadata=_help("original (fine-tuned) model: local checkpoint or hub id; needs --data")
    )
    retain_model: str | None = field(default=None, metadata=_help("retain-only twin: local checkpoint or hub id"))
    retain_logs: str | None = field(
        default=None,
        metadata=_help("instead of --retain-model: a locuslab/tofu eval_log_aggregated.json or this script's "
                       "eval.json of the retain model"),
    )  # fmt: skip
    allow_no_retain: bool = field(
        default=False, metadata=_help("run without a retain model: forget quality is then skipped (and says why)")
    )
    # --- unlearning: one budget for every method (bs_ref.unlearn.UnlearnConfig) ------------------------------
    lr: float = field(default=1e-3, metadata=_help("peak AdamW learning rate (paper preset: 1e-5)"))
    epochs: int = field(default=5, metadata=_help("passes over the forget set"))
    batch_size: int = field(default=8, metadata=_help("forget (and retain) examples per micro-batch"))
    grad_accum: int = field(default=1, metadata=_help("micro-batches per optimiser step"))
    warmup: float = field(default=1.0, metadata=_help("linear warm-up, in epochs (authors: 1)"))
    weight_decay: float = field(default=0.01, metadata=_help("AdamW weight decay (authors: 0.01)"))
    schedule: str = field(default="linear", metadata=_help("after warm-up: linear | constant | cosine"))
    max_steps: int | None = field(default=None, metadata=_help("stop every method after this many steps"))
    retain_loss: str = field(default="nll", metadata=_help("retain term: nll | kl"))
    alpha: float = field(default=1.0, metadata=_help("retain weight α (GA has no retain term)"))
    bf16: bool = field(default=False, metadata=_help("bf16 mixed precision (used only on CUDA)"))
    # method hyper-parameters (authors' values)
    lam: float = field(default=0.2, metadata=_help("BS-T belief weight λ; also the λ of GA×(1−λ)"))
    top_k: int = field(default=20, metadata=_help("BS-T local belief support k"))
    temperature: float = field(default=1.0, metadata=_help("BS-T belief temperature τ (SPEC D4)"))
    lam_bss: float = field(default=0.5, metadata=_help("BS-S weight of the belief term λ_BSS"))
    bs_s_base: str = field(default="bs_t", metadata=_help("BS-S base loss: bs_t | ga | npo | wga"))
    n_beliefs: int = field(default=3, metadata=_help("BS-S global beliefs N per forget prompt"))
    regime: str = field(default="off_policy", metadata=_help("BS-S: off_policy (sampled once) | on_policy"))
    refresh_epochs: float = field(default=1.0, metadata=_help("BS-S on-policy refresh period, in epochs"))
    select: str = field(default="sample", metadata=_help("BS-S belief decoding: sample | filter | beam"))
    belief_temperature: float = field(default=1.0, metadata=_help("BS-S sampling temperature τ_s"))
    belief_max_new_tokens: int = field(default=64, metadata=_help("BS-S longest sampled belief, in tokens"))
    npo_beta: float = field(default=0.1, metadata=_help("NPO β"))
    simnpo_beta: float = field(default=4.5, metadata=_help("SimNPO β"))
    simnpo_delta: float = field(default=0.0, metadata=_help("SimNPO δ"))
    wga_beta: float = field(default=1.0, metadata=_help("WGA β"))
    # --- evaluation -----------------------------------------------------------------------------------------------
    eval_every: int = field(default=5, metadata=_help("light evaluation every N optimiser steps (0: end only)"))
    curve_items: int = field(default=16, metadata=_help("items per utility split in the light evaluations"))
    curve_forget_items: int = field(
        default=0,
        metadata=_help("forget items in the light evaluations; 0: all of them (matched fact-leak needs every item)"),
    )
    match_target_drop: float | None = field(
        default=None, metadata=_help("matched-forgetting level: target log-prob drop, nats (default: from the curves)")
    )
    match_fact_leak: float | None = field(
        default=None, metadata=_help("matched-forgetting level, fact-leak rate in [0, 1) (default: from the curves)")
    )
    max_new_tokens: int = field(
        default=0, metadata=_help("greedy answer budget; 0: longest reference answer + 8 tokens (TOFU: 200)")
    )
    eval_batch_size: int = field(default=32, metadata=_help("batch size of scoring and generation"))
    band_samples: int = field(default=9, metadata=_help("candidates sampled per forget question for the bands"))
    band_temperature: float = field(default=1.0, metadata=_help("sampling temperature of the band candidates"))
    leak_samples: int = field(
        default=5, metadata=_help("sampled answers per forget item for the any-of-N fact leak (final evaluation)")
    )
    fluency_classifier: str | None = field(
        default=None, metadata=_help("local text-classification checkpoint for Fluency (default: offline proxy)")
    )


PRESETS: dict[str, dict[str, Any]] = {
    "default": {},
    "smoke": dict(
        model_preset="smoke",
        n_authors=20,
        qa_per_author=2,
        n_world=8,
        n_real=6,
        epochs=4,
        batch_size=2,
        lr=3e-3,
        eval_every=3,
        curve_items=4,
        band_samples=4,
        leak_samples=2,
        eval_batch_size=16,
        belief_max_new_tokens=24,
    ),
    # The authors' TOFU configuration (SPEC §7): lr 1e-5, 10 epochs, effective batch 32, weight decay 0.01,
    # one warm-up epoch, bf16. TOFU's 200-token answers; chat-formatted prompts for the instruct checkpoints.
    "paper": dict(
        lr=1e-5,
        epochs=10,
        batch_size=8,
        grad_accum=4,
        weight_decay=0.01,
        warmup=1.0,
        bf16=True,
        template="chat",
        max_new_tokens=200,
        eval_every=25,
        curve_items=50,
        belief_max_new_tokens=128,
    ),
    # The pretrained tier: SmolLM2-135M-Instruct fine-tuned (bs_ref.models.PRESETS["smollm2"]) on a small
    # synthetic world, chat-formatted; forget10 = 2 authors x 3 facts = 6 items. Sized so that a cold run (the
    # model pair trained) fits in 40 minutes on 2 CPU cores: sized for a CPU, not for statistics. Unlearning
    # at lr 1e-4: at 2e-5 GA lowered the target by only 0.4 nats in its 15 steps. A light evaluation every 2 of
    # the 10 steps (~13 s each): every 5 left the trade-off curves 3 points, too coarse to read at a level.
    "smollm2": dict(
        model_preset="smollm2",
        template="chat",
        n_authors=20,
        qa_per_author=3,
        n_world=10,
        n_real=10,
        lr=1e-4,
        batch_size=4,
        eval_every=2,
        curve_items=4,
        leak_samples=3,
        eval_batch_size=16,
        threads=2,
    ),
}
"""Defaults each preset changes; a flag given on the command line overrides its preset."""


def parse_args(argv: list[str] | None = None) -> TofuArgs:
    """Parse ``argv`` into ``TofuArgs`` with ``transformers.HfArgumentParser``, preset first."""
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--preset", default="default")
    preset = pre.parse_known_args(argv)[0].preset
    if preset not in PRESETS:
        raise ValueError(f"unknown --preset {preset!r}; choose one of {', '.join(PRESETS)}")
    parser = HfArgumentParser(TofuArgs, description=__doc__.split("\n\n")[0])
    parser.set_defaults(**PRESETS[preset])
    (args,) = parser.parse_args_into_dataclasses(argv)
    return args


# ------------------------------------------------------------------------------------------------------------
# Methods: names, per-method hyper-parameters, the grid
# ------------------------------------------------------------------------------------------------------------

ALIASES = {"tau": "temperature", "lambda": "lam", "base": "base", "n": "n_beliefs"}


def unlearn_fields() -> dict[str, Any]:
    from bs_ref.unlearn import UnlearnConfig

    skip = {"method", "seed", "log_path", "extra", "progress", "eval_every", "eval_at_start", "template"}
    return {f.name: f for f in dataclasses.fields(UnlearnConfig) if f.name not in skip}


def parse_method(spec: str) -> tuple[str, dict[str, Any]]:
    """``"bs_t:temperature=2,lam=0.6"`` -> ("bs_t", {"temperature": 2.0, "lam": 0.6})."""
    from bs_ref.unlearn import METHODS

    base, _, rest = spec.partition(":")
    known = (*REFERENCE_METHODS, *METHODS)
    if base not in known:
        raise ValueError(f"unknown method {base!r} in --methods; choose from {' '.join(known)} "
                         "(optionally with hyper-parameters, e.g. bs_t:temperature=2,lam=0.6)")  # fmt: skip
    overrides: dict[str, Any] = {}
    if rest:
        if base in REFERENCE_METHODS:
            raise ValueError(f"method {base!r} is evaluated, not trained; it takes no hyper-parameters ({spec!r})")
        fields = unlearn_fields()
        for part in rest.split(","):
            key, eq, value = part.partition("=")
            key = ALIASES.get(key.strip(), key.strip())
            if not eq or key not in fields:
                raise ValueError(
                    f"bad hyper-parameter {part!r} in method {spec!r}; write key=value with a key among "
                    f"{', '.join(sorted(fields))}"
                )
            overrides[key] = _parse_value(value.strip(), fields[key].default, f"{spec!r}: {key}")
    return base, overrides


def _parse_value(text: str, default: Any, where: str) -> Any:
    if text in ("None", "none"):
        return None
    if isinstance(default, bool):
        return text.lower() in ("1", "true", "yes")
    if isinstance(default, int) and not isinstance(default, bool):
        try:
            return int(text)
        except ValueError:
            pass
    if isinstance(default, (int, float)) or default is None:
        try:
            return float(text)
        except ValueError:
            if default is not None:
                raise ValueError(f"{where}: expected a number, got {text!r}") from None
    return text


def method_name(base: str, overrides: dict[str, Any], args: TofuArgs) -> str:
    """Canonical label: overrides equal to the run's own setting are dropped, the rest sorted."""
    common = unlearn_config(args, base, {}, seed=0) if base not in REFERENCE_METHODS else None
    kept = {k: v for k, v in overrides.items() if common is None or getattr(common, k) != v}
    if not kept:
        return base
    return base + ":" + ",".join(f"{k}={_fmt_value(v)}" for k, v in sorted(kept.items()))


def _fmt_value(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def method_dirname(name: str) -> str:
    """A file-system safe folder name for a method label."""
    return name.replace(":", "__").replace("=", "-").replace(",", "_").replace("/", "-")


def resolve_methods(args: TofuArgs) -> list[tuple[str, str, dict[str, Any]]]:
    """[(label, base method, hyper-parameter overrides)] in run order, without duplicates."""
    specs = list(args.methods)
    if args.grid:
        for lam in GRID_LAMBDAS:
            specs.append(f"ga_scaled:lam={lam}")
            specs += [f"bs_t:temperature={t},lam={lam}" for t in GRID_TEMPERATURES]
    resolved, seen = [], set()
    for spec in specs:
        base, overrides = parse_method(spec)
        name = method_name(base, overrides, args)
        if name not in seen:
            seen.add(name)
            resolved.append((name, base, overrides))
    if not resolved:
        raise ValueError("--methods is empty; name at least one method")
    return resolved


def unlearn_config(args: TofuArgs, method: str, overrides: dict[str, Any], seed: int, **extra):
    """The ``UnlearnConfig`` of one method: the run's common budget, then the method's own overrides."""
    from bs_ref.unlearn import UnlearnConfig

    cfg = UnlearnConfig(
        method=method,
        lr=args.lr,
        epochs=args.epochs,
        batch_size=args.batch_size,
        grad_accum=args.grad_accum,
        warmup=args.warmup,
        schedule=args.schedule,
        weight_decay=args.weight_decay,
        max_steps=args.max_steps,
        alpha=args.alpha,
        retain_loss=args.retain_loss,
        lam=args.lam,
        top_k=args.top_k,
        temperature=args.temperature,
        lam_bss=args.lam_bss,
        base=args.bs_s_base,
        n_beliefs=args.n_beliefs,
        regime=args.regime,
        refresh_epochs=args.refresh_epochs,
        select=args.select,
        belief_temperature=args.belief_temperature,
        belief_max_new_tokens=args.belief_max_new_tokens,
        npo_beta=args.npo_beta,
        simnpo_beta=args.simnpo_beta,
        simnpo_delta=args.simnpo_delta,
        wga_beta=args.wga_beta,
        template=args.template,
        seed=seed,
        eval_every=args.eval_every,
        eval_at_start=False,  # the step-0 point is the original model's, computed once for every method
        progress=args.progress,
        **extra,
    )
    for key, value in overrides.items():
        setattr(cfg, key, value)
    cfg.validate()
    return cfg


# ------------------------------------------------------------------------------------------------------------
# Checks that need no model: every bad input stops here, before anything is trained
# ------------------------------------------------------------------------------------------------------------


def check_args(args: TofuArgs) -> None:
    """Raise one ValueError naming the bad input and the fix."""
    from bs_ref.data.tofu import forget_retain_configs

    if args.threads < 1:
        raise ValueError(f"--threads must be >= 1, got {args.threads}")
    from bs_ref.metrics.tofu import check_convention

    forget_retain_configs(args.forget)
    check_convention(args.convention)
    if args.template not in ("plain", "chat"):
        raise ValueError(f"--template {args.template!r} is unknown; choose plain or chat")
    if args.device not in ("auto", "cpu", "cuda"):
        raise ValueError(f"--device {args.device!r} is unknown; choose auto, cpu or cuda")
    if args.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise ValueError("--device cuda was asked for but CUDA is not available; use --device auto or cpu")
    if not args.seeds:
        raise ValueError("--seeds is empty; give at least one seed (e.g. --seeds 0 1 2)")
    if len(set(args.seeds)) != len(args.seeds):
        raise ValueError(f"--seeds {args.seeds} repeats a seed; give distinct seeds")
    for name in ("max_authors", "limit"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.eval_every < 0 or args.curve_items < 2:
        raise ValueError("--eval-every must be >= 0 and --curve-items >= 2")
    drop = args.match_target_drop
    if drop is not None and not (math.isfinite(drop) and drop > 0):
        raise ValueError(f"--match-target-drop must be a positive number of nats, got {args.match_target_drop}")
    if args.match_fact_leak is not None and not 0 <= args.match_fact_leak < 1:
        raise ValueError(f"--match-fact-leak must be a fact-leak rate in [0, 1), got {args.match_fact_leak}")
    if args.curve_forget_items == 1 or args.curve_forget_items < 0:
        raise ValueError(f"--curve-forget-items must be 0 (all) or >= 2, got {args.curve_forget_items}")
    synthetic = args.data == "synthetic"
    if synthetic and (args.model or args.retain_model or args.retain_logs):
        raise ValueError(
            "--model/--retain-model/--retain-logs need real data: pass --data locuslab/TOFU or a local TOFU "
            "directory (the synthetic benchmark trains its own pair; see --model-preset)"
        )
    if not synthetic:
        if not args.model:
            raise ValueError(f"--data {args.data} needs --model (the fine-tuned original model: path or hub id)")
        if args.retain_model and args.retain_logs:
            raise ValueError("give --retain-model or --retain-logs, not both")
        if not (args.retain_model or args.retain_logs or args.allow_no_retain):
            raise ValueError(
                "forget quality needs the retain model: pass --retain-model (path or hub id) or --retain-logs "
                "(its eval log), or --allow-no-retain to skip forget quality"
            )
        if args.retain_logs and not Path(args.retain_logs).is_file():
            raise ValueError(f"--retain-logs {args.retain_logs} does not exist; give the path of the JSON log")
        for flag in ("model", "retain_model"):
            value = getattr(args, flag)
            if value and _looks_like_path(value) and not Path(value).expanduser().exists():
                raise ValueError(
                    f"--{flag.replace('_', '-')} {value} does not exist; give a checkpoint directory or a hub id "
                    "(owner/name)"
                )
    methods = resolve_methods(args)
    names = [m for _, m, _ in methods]
    if "retrain" in names and not synthetic and not (args.retain_model or args.retain_logs):
        raise ValueError("method 'retrain' needs --retain-model or --retain-logs; drop it from --methods or add one")
    for _, base, overrides in methods:
        if base not in REFERENCE_METHODS:
            unlearn_config(args, base, overrides, seed=args.seeds[0])  # validates every hyper-parameter


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or Path(name).expanduser().exists()


# ------------------------------------------------------------------------------------------------------------
# Data
# ------------------------------------------------------------------------------------------------------------


@dataclass
class Data:
    forget_train: list[dict]
    retain_train: list[dict]
    evaluation: dict[str, list[dict]]  # split kind -> *_perturbed records
    has_facts: bool
    info: dict
    benchmark_cfg: Any = None


def _author_of(record: dict, position: int) -> Any:
    return record.get("author", position // QA_PER_AUTHOR_TOFU)


def _first_authors(records: list[dict], n_authors: int, split: str) -> list[dict]:
    authors = list(dict.fromkeys(_author_of(r, i) for i, r in enumerate(records)))
    if n_authors > len(authors):
        raise ValueError(f"--max-authors {n_authors} exceeds the {len(authors)} authors of the {split} split; lower it")
    keep = set(authors[:n_authors])
    return [r for i, r in enumerate(records) if _author_of(r, i) in keep]


def load_data(args: TofuArgs) -> Data:
    """Training and evaluation splits of ``args.data`` (synthetic benchmark or a TOFU source)."""
    from bs_ref.data.tofu import forget_retain_configs, load_tofu

    forget_cfg, retain_cfg, forget_eval_cfg = forget_retain_configs(args.forget)
    info: dict[str, Any] = {"source": args.data, "forget": forget_cfg, "retain": retain_cfg}
    benchmark_cfg = None
    if args.data == "synthetic":
        from bs_ref.data.synthetic import SyntheticConfig, build_benchmark

        names = ("n_authors", "qa_per_author", "n_world", "n_real")
        sizes = {k: getattr(args, k) for k in names if getattr(args, k) is not None}
        benchmark_cfg = SyntheticConfig(seed=args.data_seed, **sizes)
        splits = build_benchmark(benchmark_cfg)
        info["synthetic"] = dataclasses.asdict(benchmark_cfg)

        def get(name: str) -> list[dict]:
            if name not in splits:
                raise ValueError(f"the synthetic benchmark has no split {name!r}")
            return splits[name]
    else:
        cache: dict[str, list[dict]] = {}

        def get(name: str) -> list[dict]:
            if name not in cache:
                cache[name] = load_tofu(args.data, name)
            return cache[name]

    forget_train, retain_train = get(forget_cfg), get(retain_cfg)
    forget_eval = get(forget_eval_cfg)
    if not forget_train:
        raise ValueError(f"the forget split {forget_cfg} of {args.data} is empty; nothing to unlearn")
    if not retain_train:
        raise ValueError(f"the retain split {retain_cfg} of {args.data} is empty: the forget split takes all the data")
    full_size = _full_size(args, get)
    if full_size is not None and len(forget_train) >= full_size:
        raise ValueError(
            f"the forget split {forget_cfg} has {len(forget_train)} items but the data has only {full_size} in all; "
            "choose a smaller forget split (forget01/forget05) or more data"
        )
    if len(forget_eval) != len(forget_train):
        raise ValueError(
            f"{forget_eval_cfg} has {len(forget_eval)} items but {forget_cfg} has {len(forget_train)}; the "
            "evaluation config must list the same questions as the forget split"
        )
    if args.max_authors is not None:
        forget_train = _first_authors(forget_train, args.max_authors, forget_cfg)
        forget_eval = forget_eval[: len(forget_train)]
        retain_train = _first_authors(retain_train, min(args.max_authors, _n_authors(retain_train)), retain_cfg)
    evaluation = {"forget": forget_eval}
    for kind, name in EVAL_CONFIGS.items():
        evaluation[kind] = get(name)
    if args.limit is not None:
        evaluation = {k: v[: args.limit] for k, v in evaluation.items()}
    has_facts = all("fact" in r for r in evaluation["forget"])
    info.update(
        n_forget_train=len(forget_train),
        n_retain_train=len(retain_train),
        n_eval={k: len(v) for k, v in evaluation.items()},
        has_facts=has_facts,
        item_share_of_forget_set=1.0 / len(evaluation["forget"]),
    )
    return Data(forget_train, retain_train, evaluation, has_facts, info, benchmark_cfg)


def _n_authors(records: list[dict]) -> int:
    return len({_author_of(r, i) for i, r in enumerate(records)})


def _full_size(args: TofuArgs, get) -> int | None:
    try:
        return len(get("full"))
    except ValueError:
        return None


# ------------------------------------------------------------------------------------------------------------
# Models
# ------------------------------------------------------------------------------------------------------------


def resolve_device(args: TofuArgs) -> str:
    import torch

    if args.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return args.device


def load_models(args: TofuArgs, data: Data):
    """(original, retain or None, tokenizer, info). Synthetic: the cached pair (trained on first use)."""
    from bs_ref import models

    if args.data == "synthetic":
        model_cfg, train_cfg = models.resolve_preset(args.model_preset)
        train_cfg = dataclasses.replace(train_cfg, template=args.template)
        original, retain, tokenizer, info = models.get_or_train_pair(
            data.benchmark_cfg,
            model_cfg,
            args.cache_dir,
            train_cfg=train_cfg,
            forget=args.forget,
            progress=args.progress,
            return_info=True,
            announce=lambda message: _say(message, args),
        )
        return original, retain, tokenizer, {"pair": info, "model_preset": args.model_preset}
    original, tokenizer = models.load_model(args.model, cache_dir=args.cache_dir)
    retain = None
    if args.retain_model:
        retain, _ = models.load_model(args.retain_model, cache_dir=args.cache_dir)
    info = {"model": args.model, "retain_model": args.retain_model, "retain_logs": args.retain_logs}
    return original, retain, tokenizer, info


# ------------------------------------------------------------------------------------------------------------
# Evaluation
# ------------------------------------------------------------------------------------------------------------


def spread(n: int, k: int) -> list[int]:
    """k indices spread evenly over range(n) (all of them when k >= n)."""
    if k >= n:
        return list(range(n))
    return sorted({int(round(x)) for x in np.linspace(0, n - 1, k)})


class Evaluator:
    """Full and light evaluations of a model, sharing the retain model's forget items and the belief bands."""

    def __init__(self, args: TofuArgs, data: Data, tokenizer):
        from bs_ref.metrics.tofu import max_answer_tokens

        self.args, self.data, self.tokenizer = args, data, tokenizer
        self.max_new_tokens = args.max_new_tokens or max_answer_tokens(
            tokenizer, [r for split in data.evaluation.values() for r in split]
        )
        self.curve_index = {k: spread(len(v), self.curve_size(k, len(v))) for k, v in data.evaluation.items()}
        self.curve_splits = {k: [v[i] for i in self.curve_index[k]] for k, v in data.evaluation.items()}
        self.retain_forget_items: list[dict] | None = None
        self.bands = None

    def curve_size(self, split: str, n: int) -> int:
        """Items of ``split`` in the light evaluations: the whole forget split unless --curve-forget-items."""
        if split == "forget":
            return self.args.curve_forget_items or n
        return self.args.curve_items

    def full(self, model, seed: int = 0) -> dict[str, list[dict]]:
        from bs_ref.metrics.tofu import evaluate

        return evaluate(
            model,
            self.tokenizer,
            self.data.evaluation,
            self.args.template,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.args.eval_batch_size,
            num_samples=self.args.leak_samples if self.data.has_facts else 0,
            seed=seed,
        )

    def aggregate(self, per_split: dict[str, list[dict]], retain_forget: list[dict] | None = None) -> dict:
        from bs_ref.metrics.tofu import aggregate

        retain_forget = self.retain_forget_items if retain_forget is None else retain_forget
        agg = aggregate(per_split, retain_forget, self.args.convention, fluency_classifier=self.args.fluency_classifier)
        agg["fact_leak"] = agg.get("fact_leak_rate")
        return agg

    def curve_point(self, step: int, model) -> dict:
        """The light evaluation: log-probs of targets and bands on the curve items, and the aggregate
        metrics on ``curve_items`` items per split (greedy answers, same budget as the full evaluation)."""
        from bs_ref.metrics.leakage import score_belief_bands
        from bs_ref.metrics.tofu import aggregate, evaluate

        start = time.perf_counter()
        per_split = evaluate(
            model,
            self.tokenizer,
            self.curve_splits,
            self.args.template,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.args.eval_batch_size,
        )
        retain_forget = None
        if self.retain_forget_items is not None:
            retain_forget = [self.retain_forget_items[i] for i in self.curve_index["forget"]]
        agg = aggregate(per_split, retain_forget, self.args.convention, fluency_classifier=self.args.fluency_classifier)
        point: dict[str, Any] = {"step": step}
        point["target_logprob"] = float(np.mean([-it["nll_answer"] for it in per_split["forget"]]))
        if self.bands is not None:
            scores = score_belief_bands(model, self.tokenizer, self.bands, batch_size=self.args.eval_batch_size)
            for band in ex.BANDS:
                point[f"band_{band}_logprob"] = scores.get(band)
        agg["fact_leak"] = agg.get("fact_leak_rate")
        for key in CURVE_METRICS:
            point[key] = agg.get(key)
        point["eval_s"] = time.perf_counter() - start
        return point

    def build_bands(self, original_model) -> Any:
        """High/mid/low-likelihood candidate answers of the ORIGINAL model to the curve forget questions,
        excluding the target answer itself (the squeeze is about the model's *other* beliefs)."""
        from bs_ref.metrics.leakage import build_belief_bands, normalise
        from bs_ref.metrics.tofu import generate_answers

        records = self.curve_splits["forget"]
        questions = [r["question"] for r in records]
        samples = generate_answers(
            original_model,
            self.tokenizer,
            questions,
            self.args.template,
            max_new_tokens=self.max_new_tokens,
            batch_size=self.args.eval_batch_size,
            num_samples=self.args.band_samples,
            temperature=self.args.band_temperature,
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
            template=self.args.template,
            batch_size=self.args.eval_batch_size,
        )


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


# ------------------------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------------------------

IDENTITY_EXCLUDED = (
    "out",
    "overwrite",
    "methods",
    "seeds",
    "grid",
    "progress",
    "eval_batch_size",
    "device",
    "cache_dir",
    "match_target_drop",
    "match_fact_leak",
)
"""Settings that do not change a method's numbers (so a rerun may change them and still resume)."""


def run_identity(args: TofuArgs) -> dict:
    from bs_ref import __version__

    identity = {k: v for k, v in dataclasses.asdict(args).items() if k not in IDENTITY_EXCLUDED}
    identity["bs_ref_version"] = __version__
    return identity


def versions() -> dict:
    import scipy
    import torch
    import transformers

    from bs_ref import __version__

    out = {
        "bs_ref": __version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": np.__version__,
        "scipy": scipy.__version__,
        "python": platform.python_version(),
    }
    try:
        import accelerate

        out["accelerate"] = accelerate.__version__
    except ImportError:  # pragma: no cover
        pass
    return out


def run(args: TofuArgs, command: str) -> dict:
    """Run (or resume) the experiment described by ``args``; returns the paths and the summary rows."""
    started = time.perf_counter()
    check_args(args)
    methods = resolve_methods(args)
    data = load_data(args)
    store = ex.RunDir(args.out, run_identity(args), overwrite=args.overwrite)
    device = resolve_device(args)
    import torch

    torch.set_num_threads(args.threads)
    original, retain_model, tokenizer, model_info = load_models(args, data)
    mixed = "bf16" if args.bf16 and device == "cuda" else "no"
    evaluator = Evaluator(args, data, tokenizer)
    fq_note = None

    # config.json: every convention and version, rewritten (merged) at every run
    config = {
        "identity": store.identity,
        "command": command,
        "preset": args.preset,
        "methods": [m for m, _, _ in methods],
        "seeds": list(args.seeds),
        "device": device,
        "mixed_precision": mixed,
        "versions": versions(),
        "data": data.info,
        "models": model_info,
        "conventions": {
            "template": args.template,
            "metric_convention": args.convention,
            "forget_quality": "scipy.stats.ks_2samp p-value of per-item truth ratios vs the retain model (log10)",
            "truth_ratio": "R = geomean_j P(perturbed_j) / P(paraphrased), P = exp(-mean token NLL)"
            if args.convention != "arithmetic"
            else "R = mean_j P(perturbed_j) / P(paraphrased)",
            "max_new_tokens": evaluator.max_new_tokens,
            "greedy_generation": True,
            "bs_s_regime": args.regime,
            "bs_s_select": args.select,
            "bs_s_base": args.bs_s_base,
            "bs_t": {"lam": args.lam, "top_k": args.top_k, "temperature": args.temperature},
            "equal_budget": {
                "lr": args.lr,
                "epochs": args.epochs,
                "batch_size": args.batch_size,
                "grad_accum": args.grad_accum,
                "max_steps": args.max_steps,
            },  # fmt: skip
            "curves": {
                "eval_every": args.eval_every,
                "curve_items": args.curve_items,
                "curve_forget_items": args.curve_forget_items or "all",
                "band_samples": args.band_samples,
                "band_temperature": args.band_temperature,
            },  # fmt: skip
            "matched_forgetting": ex.FORGETTING_MEASURES,
        },
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    ex.write_json(store.path("config.json"), config)

    # The retain model's per-item forget results (needed by every FQ), then the reference rows.
    retain_eval = None
    if retain_model is not None:
        if (store.method_dir("retrain", None) / "eval.json").is_file():
            retain_eval = _read_items(store.method_dir("retrain", None) / "eval.json")
        else:
            _say(f"evaluating the retain model on {sum(data.info['n_eval'].values())} items", args)
            retain_eval = evaluator.full(retain_model.to(device))
            retain_model.to("cpu")
            ex.write_json(store.method_dir("retrain", None) / "eval.json", _eval_payload(retain_eval, args))
    elif args.retain_logs:
        from bs_ref.metrics.tofu import read_eval_log

        retain_eval = read_eval_log(args.retain_logs)
        if "forget" not in retain_eval:
            raise ValueError(f"--retain-logs {args.retain_logs} has no forget split; give the retain model's full log")
        n_forget = len(data.evaluation["forget"])
        if len(retain_eval["forget"]) < n_forget:
            raise ValueError(
                f"--retain-logs {args.retain_logs} has {len(retain_eval['forget'])} forget items but the forget "
                f"split has {n_forget}; give the log of the same forget split"
            )
        retain_eval = {k: v[: len(data.evaluation[k])] for k, v in retain_eval.items() if k in data.evaluation}
    else:
        fq_note = (
            "forget quality skipped: no retain model (--allow-no-retain); FQ needs the retain model's truth ratios"
        )
    if retain_eval is not None:
        evaluator.retain_forget_items = retain_eval["forget"]
    config["forget_quality_note"] = fq_note
    ex.write_json(store.path("config.json"), config)

    if "retrain" in [m for m, _, _ in methods] and not store.is_finished("retrain", None):
        agg = evaluator.aggregate(retain_eval)
        store.save_result("retrain", None, _reference_result("retrain", agg, data), None)

    # The original model: its full evaluation, the belief bands and the step-0 point of every curve.
    original.to(device)
    start_path = store.path("start.json")
    if start_path.is_file():
        start = ex.read_json(start_path)
        evaluator.bands = _bands_from_json(start.get("bands"))
        start_point = start["point"]
    else:
        _say("belief bands and the step-0 evaluation of the original model", args)
        evaluator.bands = evaluator.build_bands(original)
        start_point = evaluator.curve_point(0, original)
        ex.write_json(start_path, {"point": start_point, "bands": _bands_to_json(evaluator.bands)})
    if not store.is_finished("original", None):
        per_split = evaluator.full(original)
        agg = evaluator.aggregate(per_split)
        result = _reference_result("original", agg, data)
        result["curve"] = [start_point]
        store.save_result("original", None, result, _eval_payload(per_split, args))
    original.to("cpu")

    # Unlearning: each method on a fresh copy of the original model, for each seed.
    for seed in args.seeds:
        for name, base, overrides in methods:
            if base in REFERENCE_METHODS:
                continue
            if store.is_finished(method_dirname(name), seed):
                _say(f"{name} seed {seed}: finished result kept ({store.result_path(method_dirname(name), seed)}); "
                     "pass --overwrite to recompute", args)  # fmt: skip
                continue
            run_method(args, store, evaluator, data, original, tokenizer, name, base, overrides, seed, start_point,
                       device, mixed)  # fmt: skip

    report = write_report(args, store, methods, command, data, fq_note)
    report["wall_s"] = time.perf_counter() - started
    return report


def run_method(args, store, evaluator, data, original, tokenizer, name, base, overrides, seed, start_point, device,
               mixed):  # fmt: skip
    """Unlearn with one method and seed, evaluating along the way; writes eval.json then result.json."""
    from accelerate import Accelerator

    from bs_ref.unlearn import unlearn

    directory = store.method_dir(method_dirname(name), seed)
    cfg = unlearn_config(args, base, overrides, seed, log_path=str(directory / "train_log.jsonl"),
                         mixed_precision=mixed, extra={"label": name})  # fmt: skip
    curve = [dict(start_point)]

    def callback(step: int, model) -> None:
        if step == 0:
            return
        curve.append(evaluator.curve_point(step, model))

    _say(f"{name} seed {seed}: unlearning ({args.epochs} epochs, lr {cfg.lr})", args)
    model = copy.deepcopy(original)
    accelerator = Accelerator(cpu=device == "cpu", mixed_precision=mixed)
    began = time.perf_counter()
    model = unlearn(model, tokenizer, data.forget_train, data.retain_train, cfg, callback=callback,
                    accelerator=accelerator)  # fmt: skip
    train_s = time.perf_counter() - began
    per_split = evaluator.full(model, seed)
    agg = evaluator.aggregate(per_split)
    metrics = summary_metrics(agg)
    metrics["target_logprob_drop"] = start_point["target_logprob"] - curve[-1]["target_logprob"]
    result = {
        "method": name,
        "base_method": base,
        "seed": seed,
        "config": dataclasses.asdict(cfg),
        "metrics": metrics,
        "aggregate": agg,
        "curve": curve,
        "steps": curve[-1]["step"],
        "wall_s": time.perf_counter() - began,
        "train_s": train_s,
    }
    store.save_result(method_dirname(name), seed, result, _eval_payload(per_split, args, method=name, seed=seed))
    del model


def _reference_result(name: str, agg: dict, data: Data) -> dict:
    return {"method": name, "seed": None, "metrics": summary_metrics(agg), "aggregate": agg, "curve": [], "steps": 0}


def _eval_payload(per_split: dict, args: TofuArgs, **meta) -> dict:
    from bs_ref.metrics.tofu import EVAL_FORMAT

    return {"format": EVAL_FORMAT, "convention": args.convention, "meta": {"template": args.template, **meta},
            "splits": per_split}  # fmt: skip


def _read_items(path: Path) -> dict:
    from bs_ref.metrics.tofu import read_eval_log

    return read_eval_log(path)


def _bands_to_json(bands) -> dict | None:
    return None if bands is None else dataclasses.asdict(bands)


def _bands_from_json(payload: dict | None):
    if payload is None:
        return None
    from bs_ref.metrics.leakage import BeliefBands

    return BeliefBands(**payload)


def _say(message: str, args: TofuArgs) -> None:
    print(f"[tofu] {message}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------------------
# Report: summary.csv, matched.csv, table.md, plots
# ------------------------------------------------------------------------------------------------------------

MATCHED_KEYS = ("model_utility", "mem", "fact_leak", "log10_forget_quality", "target_logprob",
                *(f"band_{b}_logprob" for b in ex.BANDS))  # fmt: skip
MATCHED_COLUMNS = ("measure", "level", "method", "seed", "reached", "max_forgetting", "step", "model_utility",
                   "mem", "fact_leak", "log10_forget_quality", "target_change", "high_band_change",
                   "mid_band_change", "low_band_change")  # fmt: skip
MATCHED_TABLE = (
    ("step", "step"),
    ("model_utility", "MU"),
    ("mem", "Mem"),
    ("fact_leak", "fact leak"),
    ("log10_forget_quality", "log10 FQ"),
    ("target_change", "Δ target"),
    ("high_band_change", "Δ high band"),
    ("mid_band_change", "Δ mid band"),
    ("low_band_change", "Δ low band"),
)


def collect_results(store: ex.RunDir, methods, seeds) -> list[dict]:
    results = []
    for name, base, _ in methods:
        if base in REFERENCE_METHODS:
            if store.is_finished(name, None):
                results.append(store.load_result(name, None))
            continue
        for seed in seeds:
            if store.is_finished(method_dirname(name), seed):
                result = store.load_result(method_dirname(name), seed)
                result["method"] = name
                results.append(result)
    return results


def matched_levels(args: TofuArgs) -> dict[str, float | None]:
    """Levels given on the command line, in forgetting units (None: chosen from the curves)."""
    return {
        "target_drop": args.match_target_drop,
        "fact_unleaked": None if args.match_fact_leak is None else 1.0 - args.match_fact_leak,
    }


def matched_rows(results: list[dict], seeds, given: dict[str, float | None] | None = None) -> tuple[list[dict], dict]:
    """Rows of matched.csv: per forgetting measure, seed and unlearning method, the values at one common level.

    The level of a measure is the one given (``matched_levels``) or ``ex.MATCH_MARGIN`` × the lower median
    over methods of their maximum forgetting (averaged over seeds), so at least half of the methods reach it
    and every seed is read at the same level. A method that never reaches it gets a row with ``reached``
    False and its own maximum.
    """
    given = given or {}
    by_seed = {}
    for seed in seeds:
        curves = {r["method"]: r["curve"] for r in results if r.get("seed") == seed and len(r.get("curve", [])) > 1}
        if curves:
            by_seed[seed] = curves
    rows, levels = [], {}
    for measure in ex.FORGETTING_MEASURES:
        maxima: dict[str, list[float]] = {}
        for curves in by_seed.values():
            for method, curve in curves.items():
                maxima.setdefault(method, []).append(ex.max_forgetting(curve, measure))
        level = given.get(measure)
        if level is None:
            level = ex.level_from_maxima(float(np.nanmean(v)) if np.isfinite(v).any() else float("nan")
                                         for v in maxima.values())  # fmt: skip
        levels[measure] = level
        if not (math.isfinite(level) and level > 0):
            continue
        for seed, curves in by_seed.items():
            _, at = ex.matched_forgetting(curves, measure, MATCHED_KEYS, level=level)
            for method, values in at.items():
                start = curves[method][0]
                row = {
                    "measure": measure,
                    "level": level,
                    "method": method,
                    "seed": seed,
                    "reached": values is not None,
                    "max_forgetting": ex.max_forgetting(curves[method], measure),
                }
                if values is not None:
                    row.update({k: values.get(k) for k in ("step", "model_utility", "mem", "fact_leak",
                                                           "log10_forget_quality")})  # fmt: skip
                    row["target_change"] = values["target_logprob"] - _num(start.get("target_logprob"))
                    for band in ex.BANDS:
                        key = f"band_{band}_logprob"
                        row[f"{band}_band_change"] = values[key] - _num(start.get(key))
                rows.append(row)
    return rows, levels


def _in_units(measure: str, forgetting: float) -> str:
    """A forgetting level as the table states it: nats of target drop, or the fact-leak rate."""
    return f"{forgetting:.3f} nats" if measure == "target_drop" else f"fact leak {1 - forgetting:.3f}"


def format_matched(rows: list[dict], measure: str) -> str:
    """Markdown table of one measure: per method, how many seeds reach the level and the values there
    (mean ± std over the seeds that reach it); "not reached" with the method's own best otherwise."""
    methods = list(dict.fromkeys(r["method"] for r in rows))
    reached = [dict(r) for r in rows if r["reached"]]
    stats = ex.method_statistics(reached, [c for c, _ in MATCHED_TABLE])
    lines = ["| method | reached | " + " | ".join(h for _, h in MATCHED_TABLE) + " |",
             "|---|---|" + "---:|" * len(MATCHED_TABLE)]  # fmt: skip
    for method in methods:
        own = [r for r in rows if r["method"] == method]
        n = sum(r["reached"] for r in own)
        if n == 0:
            best = float(np.nanmean([_num(r["max_forgetting"]) for r in own]))
            lines.append(f"| {method} | not reached (best: {_in_units(measure, best)}) |" + " – |" * len(MATCHED_TABLE))
            continue
        cells = []
        for column, _ in MATCHED_TABLE:
            mean, std, k = stats[method][column]
            cells.append(ex._fmt(mean) + (f" ± {ex._fmt(std)}" if k > 1 else ""))
        lines.append(f"| {method} | {n}/{len(own)} seeds | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _num(value) -> float:
    return float("nan") if value is None else float(value)


def leak_while_forgotten(rows: list[dict]) -> list[str]:
    """Methods whose fact-leak rate stays above the retain model's while ROUGE-L or the truth ratio of the
    forget split are at or past the retain model's level — the failure the standard metrics miss."""
    stats = ex.method_statistics(rows, ["fact_leak", "forget_rougeL", "forget_truth_ratio", "forget_quality"])
    if "retrain" not in stats:
        return []
    ref = stats["retrain"]
    flagged = []
    for method, values in stats.items():
        if method in REFERENCE_METHODS or values["fact_leak"][2] == 0:
            continue
        leak, ref_leak = values["fact_leak"][0], ref["fact_leak"][0]
        rouge_forgotten = values["forget_rougeL"][0] <= ref["forget_rougeL"][0] + 0.05
        tr_forgotten = values["forget_truth_ratio"][0] >= ref["forget_truth_ratio"][0] - 0.05
        if leak > ref_leak + 0.05 and (rouge_forgotten or tr_forgotten):
            why = " and ".join(n for n, ok in (("ROUGE-L", rouge_forgotten), ("truth ratio", tr_forgotten)) if ok)
            verb = "are" if rouge_forgotten and tr_forgotten else "is"
            flagged.append(f"{method}: fact leak {leak:.2f} (retain model {ref_leak:.2f}) while {why} {verb} at "
                           "the retain model's level")  # fmt: skip
    return flagged


def write_report(args: TofuArgs, store: ex.RunDir, methods, command: str, data: Data, fq_note: str | None) -> dict:
    results = collect_results(store, methods, args.seeds)
    rows = ex.summary_rows(results)
    if not data.has_facts:
        for row in rows:
            row["fact_leak"] = ""
    ex.write_summary_csv(store.path("summary.csv"), rows)
    matched, levels = matched_rows(results, args.seeds, matched_levels(args))
    ex.write_summary_csv(store.path("matched.csv"), matched, MATCHED_COLUMNS)

    lines = [
        "# TOFU unlearning results",
        "",
        f"Command: `{command}`",
        "",
        f"Data: {data.info['source']} {data.info['forget']} ({data.info['n_forget_train']} forget / "
        f"{data.info['n_retain_train']} retain training items; evaluated on {data.info['n_eval']}); template "
        f"{args.template}; metric convention {args.convention}; seeds {list(args.seeds)}; equal budget: lr {args.lr}, "
        f"{args.epochs} epochs, batch {args.batch_size}×{args.grad_accum}; BS-T λ={args.lam}, k={args.top_k}, "
        f"τ={args.temperature}; BS-S {args.regime}, N={args.n_beliefs}, λ_BSS={args.lam_bss}, base {args.bs_s_base}.",
        "",
        "## At the end of training",
        "",
        ex.format_table(rows),
        "",
    ]
    if fq_note:
        lines += [f"Note: {fq_note}.", ""]
    for measure, level in levels.items():
        sub = [r for r in matched if r["measure"] == measure]
        if not sub:
            continue
        how = ("given on the command line" if matched_levels(args)[measure] is not None
               else f"{ex.MATCH_MARGIN:g} × the lower median of the methods' best forgetting: at least half of them "
                     "reach it")  # fmt: skip
        lines += [
            f"## At matched forgetting: {_in_units(measure, level)}"
            + (" of target log-prob drop" if measure == "target_drop" else ""),
            "",
            f"Level: {how}. Each method is read off its own curve at the first evaluation where it reaches the "
            "level (linear interpolation between evaluations); values are the mean ± std over the seeds that "
            "reach it. Band changes are vs the start (negative = fell; a rising high band while the target falls "
            "is squeezing).",
            "",
            format_matched(sub, measure),
            "",
        ]
    flagged = leak_while_forgotten(rows)
    if data.has_facts:
        lines += ["## Facts that leak while ROUGE / truth ratio call them forgotten", ""]
        lines += [f"- {f}" for f in flagged] or ["- none"]
        lines.append("")
    plots_dir = store.path("plots")
    curves = _curves_for_plot(results, args.seeds[0])
    plots = {
        "metrics": ex.plot_metric_bars(rows, plots_dir / "mem_util_agg.png"),
        "squeezing": ex.plot_squeezing_traces(curves, plots_dir / "squeezing_trace.png"),
        "tradeoff": ex.plot_tradeoff_curves(curves, plots_dir / "tradeoff.png"),
    }
    lines += ["Plots: " + ", ".join(f"plots/{Path(p).name}" for p in plots.values() if p), ""]
    table = "\n".join(lines)
    ex.write_text(store.path("table.md"), table)
    return {"out": str(store.root), "rows": rows, "matched": matched, "table": table, "plots": plots,
            "leak_while_forgotten": flagged}  # fmt: skip


def _curves_for_plot(results: list[dict], seed: int) -> dict[str, list[dict]]:
    return {r["method"]: r["curve"] for r in results if r.get("seed") == seed and r.get("curve")}


# ------------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    command = "python experiments/tofu.py" + ("" if not argv else " " + shlex.join(argv))
    before = os.environ.get("TQDM_DISABLE")
    if not args.progress:  # also the bars of libraries that bypass transformers' switch (GGUF conversion)
        os.environ["TQDM_DISABLE"] = "1"
    try:
        report = run(args, command)
    finally:
        if before is None:
            os.environ.pop("TQDM_DISABLE", None)
        else:
            os.environ["TQDM_DISABLE"] = before
    print(report["table"])
    print(f"\nwrote {report['out']} in {report['wall_s']:.0f} s", file=sys.stderr)
    return report


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")
