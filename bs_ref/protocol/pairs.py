"""The models an experiment starts from, and the hardware it runs on.

Synthetic data: the original model and its retain twin are trained here, from scratch or by fine-tuning
SmolLM2 (``--model-preset``, ``pair_training.PRESETS``), one pair per model-pair seed (``--pair-seeds``: the
seed of the initial weights and of the batch order; seed 0 is the pair, and the cache entry, of every earlier
version), and cached by config hash (``pair_training.get_or_train_pair``). Real data: ``--model`` (a
checkpoint directory or hub id) and ``--retain-model``, or ``--retain-logs`` (a locuslab/tofu evaluation log
or an ``eval.json`` of this project) for forget quality, which needs the retain model's truth ratios
(docs/theory.md §6); such a run has one pair. Or, without ``--model``, a pretrained ``--model-preset``
(``smollm2``, ``smollm2_tofu``; ``pair_training.fine_tunable``) is fine-tuned here on the authors kept
(``--max-authors``): the original on the forget and retain authors' training items, its retain twin on the
retain authors' only, one pair per ``--pair-seeds`` value (the seed of the batch order), cached like the
synthetic pair (``pair_training.get_or_train_tofu_pair``); the twin is the forget-quality reference and the
``retrain`` row.

Precision (``--precision``): ``fp32``, or ``bf16`` autocast for pair training, unlearning and evaluation alike
(``bs_ref.models.with_precision``; ``torch.autocast("cpu"|"cuda", torch.bfloat16)``, weights kept in fp32). It
is a setting of the preset, never of the hardware: the same flag gives the same numerics on CPU and CUDA.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from bs_ref import files, models
from bs_ref.protocol import pair_training
from bs_ref.protocol.cli import arg
from bs_ref.protocol.data import Data, DataConfig, authors_of

DEVICES = ("auto", "cpu", "cuda")


@dataclass
class ModelConfig:
    """Which models, and where they run."""

    model_preset: str = arg(
        "default",
        "model/training preset of pair_training.PRESETS (default | smoke | smollm2 | "
        "smollm2_tofu): the pair trained on synthetic data; on real data without --model, a "
        "pretrained one (smollm2, smollm2_tofu) is fine-tuned here on the kept "
        "authors",
    )
    model: str | None = arg(
        None,
        "original (fine-tuned) model: local checkpoint or hub id; needs --data (without "
        "it, real data fine-tunes a pair from --model-preset smollm2)",
    )
    retain_model: str | None = arg(None, "retain-only twin: local checkpoint or hub id")
    retain_logs: str | None = arg(
        None,
        "instead of --retain-model: a locuslab/tofu eval_log_aggregated.json or "
        "this project's eval.json of the retain model",
    )
    allow_no_retain: bool = arg(False, "run without a retain model: forget quality is then skipped (and says why)")
    cache_dir: str | None = arg(None, "model cache (default $BS_REF_CACHE or ~/.cache/bs_ref)", identity=False)
    device: str = arg("auto", "auto (CUDA when available) | cpu | cuda", identity=False)
    threads: int = arg(
        1,
        "torch CPU threads; 1 is fastest for the small from-scratch models (on a busy "
        "2-core machine extra threads spin: ~50x slower); the smollm2 preset uses 2",
    )
    precision: str = arg(
        "fp32",
        "numerics of pair training, unlearning and evaluation: fp32 | bf16 (autocast, on CPU and CUDA alike; "
        "never chosen by the hardware; fp32 on every CPU preset, bf16 an opt-in that pays only where the CPU "
        "has AVX512-BF16 or AMX: docs/theory.md §12)",
    )
    bf16: bool = arg(  # the identity records its effect as the precision
        False,
        "deprecated alias of --precision bf16 (it used to apply on CUDA only; it now means bf16 on every device)",
        identity=False,
    )

    @property
    def device_name(self) -> str:
        """The device the run uses: ``auto`` resolved to cuda or cpu."""
        if self.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.device

    @property
    def precision_name(self) -> str:
        """The precision in effect: ``--precision``, or bf16 when the deprecated ``--bf16`` is given."""
        return "bf16" if self.bf16 else self.precision

    @property
    def mixed_precision(self) -> str:
        """``accelerate``'s mixed-precision setting for the unlearning loop: ``bf16`` (autocast on CPU as on
        CUDA, checked for accelerate 1.15) or ``no``."""
        return "bf16" if self.precision_name == "bf16" else "no"


def precision_note(cfg: ModelConfig) -> str | None:
    """A line suggesting ``--precision bf16`` where it would pay: an fp32 run on a CPU that multiplies bf16
    natively (``models.cpu_bf16_native``) with a pretrained model, whose matrix products dominate its time (the
    from-scratch models are too small for bf16 to matter). None elsewhere. The suggestion changes numbers, so it is
    only ever a suggestion (docs/theory.md §12)."""
    pretrained = bool(cfg.model) or (
        cfg.model_preset in pair_training.PRESETS and pair_training.fine_tunable(cfg.model_preset)
    )
    if cfg.precision_name != "fp32" or cfg.device_name != "cpu" or not pretrained or not models.cpu_bf16_native():
        return None
    return (
        "this CPU multiplies bf16 natively (AVX512-BF16 or AMX): --precision bf16 trains a SmolLM2-sized model about "
        "1.3-2x faster here; it changes the numbers, so it is a separate run (docs/theory.md §12)"
    )


def problems(cfg: ModelConfig, data: DataConfig, methods: list[str]) -> list[str]:
    """Every problem of the model settings given the data settings and the method names (nothing is loaded)."""
    out = []
    if cfg.threads < 1:
        out.append(f"--threads must be >= 1, got {cfg.threads}")
    if cfg.cache_dir is not None:
        out += files.path_problems("--cache-dir", cfg.cache_dir, "dir", writable=True)
    else:  # the default: $BS_REF_CACHE or ~/.cache/bs_ref
        out += files.path_problems(
            f"--cache-dir (default {models.default_cache_dir()})", models.default_cache_dir(), "dir", writable=True
        )
    if cfg.precision not in models.PRECISIONS:
        out.append(f"--precision {cfg.precision} is unknown; choose one of {' | '.join(models.PRECISIONS)}")
    if cfg.device not in DEVICES:
        out.append(f"--device {cfg.device} is unknown; choose auto, cpu or cuda")
    elif cfg.device == "cuda" and not torch.cuda.is_available():
        out.append("--device cuda was asked for but CUDA is not available; use --device auto or cpu")
    if data.synthetic:
        if cfg.model or cfg.retain_model or cfg.retain_logs:
            out.append(
                "--model/--retain-model/--retain-logs need real data: pass --data locuslab/TOFU or a local "
                "TOFU directory (the synthetic benchmark trains its own pair; see --model-preset)"
            )
        if cfg.model_preset not in pair_training.PRESETS:
            known = ", ".join(pair_training.PRESETS)
            out.append(f"--model-preset {cfg.model_preset} is unknown; choose one of {known}")
        return out
    fine_tune = fine_tunes_here(cfg, data)
    if not cfg.model and not fine_tune:
        if cfg.model_preset not in pair_training.PRESETS:
            known = ", ".join(pair_training.PRESETS)
            out.append(f"--model-preset {cfg.model_preset} is unknown; choose one of {known}")
        out.append(
            f"--data {data.data} needs a model pair: --model CKPT (the fine-tuned original model: path or hub "
            f"id), or --model-preset smollm2 to fine-tune one here on the kept authors (--max-authors); "
            f"--model-preset {cfg.model_preset} cannot be fine-tuned on real data (pretrained presets: "
            f"{', '.join(pair_training.fine_tunable_presets())})"
        )
    if fine_tune and (cfg.retain_model or cfg.retain_logs):
        out.append(
            f"--retain-model/--retain-logs go with --model: without --model the retain twin is fine-tuned "
            f"here (--model-preset {cfg.model_preset}) and is the forget-quality reference"
        )
    if cfg.retain_model and cfg.retain_logs:
        out.append("give --retain-model or --retain-logs, not both")
    if not (cfg.retain_model or cfg.retain_logs or cfg.allow_no_retain or fine_tune):
        out.append(
            "forget quality needs the retain model: pass --retain-model (path or hub id) or --retain-logs "
            "(its eval log), or --allow-no-retain to skip forget quality"
        )
    if cfg.retain_logs and not Path(cfg.retain_logs).is_file():
        out.append(f"--retain-logs {cfg.retain_logs} does not exist; give the path of the JSON log")
    for name in ("model", "retain_model"):
        value = getattr(cfg, name)
        if value and _looks_like_path(value) and not Path(value).expanduser().exists():
            out.append(
                f"--{name.replace('_', '-')} {value} does not exist; give a checkpoint directory or a hub id "
                "(owner/name)"
            )
    if "retrain" in methods and not (cfg.retain_model or cfg.retain_logs or fine_tune):
        out.append("method 'retrain' needs --retain-model or --retain-logs; drop it from --methods or add one")
    return out


def fine_tunes_here(cfg: ModelConfig, data: DataConfig) -> bool:
    """Whether the run fine-tunes its own pair on real data: no ``--model``, and a pretrained ``--model-preset``
    (``pair_training.fine_tunable``)."""
    return not data.synthetic and not cfg.model and pair_training.fine_tunable(cfg.model_preset)


def _looks_like_path(name: str) -> bool:
    return name.startswith((".", "/", "~")) or name.count("/") != 1 or Path(name).expanduser().exists()


def pair_seed_problems(pair_seeds: list[int], cfg: ModelConfig, data: DataConfig) -> list[str]:
    """Problems of ``--pair-seeds``: distinct, non-negative, and one value when the pair is given (``--model``);
    several are allowed where the pairs are trained here (synthetic data, or real data fine-tuned here)."""
    out = []
    shown = " ".join(map(str, pair_seeds))
    if not pair_seeds or len(set(pair_seeds)) != len(pair_seeds) or min(pair_seeds) < 0:
        out.append(f"--pair-seeds {shown} must name distinct seeds >= 0 (e.g. --pair-seeds 0 1)")
    if not data.synthetic and not fine_tunes_here(cfg, data) and len(pair_seeds) > 1:
        out.append(
            f"--pair-seeds {shown}: a real-data run (--model) has one model pair; give one pair seed (or "
            "leave --pair-seeds out). Several pairs are trained only on the synthetic benchmark, or on real "
            "data fine-tuned here (no --model, --model-preset smollm2)"
        )
    return out


def load_models(
    cfg: ModelConfig,
    data: Data,
    progress: bool = True,
    announce: Callable[[str], None] | None = None,
    pair_seed: int = 0,
):
    """(original, retain model or None, tokenizer, info), with ``cfg.precision_name`` applied to both models.
    Synthetic: the cached pair of ``pair_seed`` (trained on first use; seed 0 is the pair earlier versions
    trained). Real data without ``--model``: the pair fine-tuned on ``data``'s training splits (``pair_seed``:
    the seed of the batch order), cached the same way; ``info["pair"]`` says what was trained (authors, items,
    epochs, lr, per-epoch losses, seconds) and where it is cached. Real data with ``--model``: the given
    checkpoints (``pair_seed`` only names the run's one pair)."""
    precision = cfg.precision_name
    if data.benchmark_cfg is not None or not cfg.model:
        model_cfg, train_cfg = pair_training.resolve_preset(cfg.model_preset)
        train_cfg = dataclasses.replace(train_cfg, template=data.template, seed=pair_seed, precision=precision)
        if data.benchmark_cfg is not None:
            original, retain, tokenizer, info = pair_training.get_or_train_pair(
                data.benchmark_cfg,
                model_cfg,
                cfg.cache_dir,
                train_cfg=train_cfg,
                forget=data.info["forget"],
                progress=progress,
                announce=announce,
            )
        else:
            original, retain, tokenizer, info = _fine_tune_tofu(cfg, data, model_cfg, train_cfg, progress, announce)
        original, retain = models.with_precision(original, precision), models.with_precision(retain, precision)
        return original, retain, tokenizer, {"pair": info, "model_preset": cfg.model_preset}
    original, tokenizer = models.load_model(cfg.model, cache_dir=cfg.cache_dir)
    retain = None
    if cfg.retain_model:
        retain, _ = models.load_model(cfg.retain_model, cache_dir=cfg.cache_dir)
        retain = models.with_precision(retain, precision)
    info = {"model": cfg.model, "retain_model": cfg.retain_model, "retain_logs": cfg.retain_logs}
    return models.with_precision(original, precision), retain, tokenizer, info


def _fine_tune_tofu(
    cfg: ModelConfig,
    data: Data,
    model_cfg,
    train_cfg: pair_training.TrainConfig,
    progress: bool,
    announce: Callable[[str], None] | None,
):
    """The pair fine-tuned on real data's training splits (``pair_training.get_or_train_tofu_pair``), with
    ``cfg.threads`` torch threads while it trains or loads (restored afterwards)."""
    if not pair_training.fine_tunable(cfg.model_preset):
        raise ValueError(
            f"--model-preset {cfg.model_preset} cannot be fine-tuned on real data; give --model CKPT or "
            f"--model-preset smollm2 ({', '.join(pair_training.fine_tunable_presets())})"
        )
    authors = {"forget": authors_of(data.forget_train), "retain": authors_of(data.retain_train)}
    extra = {
        "forget": data.info["forget"],
        "retain_split": data.info["retain"],
        "authors": {split: {"n": len(kept), "kept": kept} for split, kept in authors.items()},
    }
    previous = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    try:
        original, retain, tokenizer, info = pair_training.get_or_train_tofu_pair(
            data.forget_train,
            data.retain_train,
            model_cfg,
            cfg.cache_dir,
            train_cfg=train_cfg,
            progress=progress,
            extra_info=extra,
            announce=announce,
        )
    finally:
        torch.set_num_threads(previous)
    info["source"] = data.info["source"]
    return original, retain, tokenizer, info
