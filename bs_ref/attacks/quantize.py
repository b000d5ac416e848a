"""Quantization attack (docs/theory.md §9): reload the unlearned model in 4-bit NF4 or 8-bit and re-evaluate.

Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization", ICLR 2025 (arXiv 2410.16454): unlearning
with a small learning rate and a utility constraint moves the weights so little that rounding them to a 4-bit grid
lands back on the original model's grid points, and the forgotten knowledge returns.

``quantize_copy`` saves a copy of the model (``save_pretrained``, any LoRA adapter merged first) to a temporary
directory and reloads it with ``transformers.BitsAndBytesConfig``:

    bits=4   load_in_4bit=True, bnb_4bit_quant_type="nf4", compute dtype float32 (NF4, blocks of 64 weights,
             one absmax per block; no double quantization)
    bits=8   load_in_8bit=True (LLM.int8: int8 weights with one scale per row; on CPU the activations are cast
             to float16 for the int8 product, outlier threshold 6.0)

Only ``nn.Linear`` layers inside the blocks are quantized; the embeddings and the (tied) output layer stay as they
are, as transformers does for every causal LM.

CPU (bitsandbytes >= 0.50 runs both on the CPU). On a CPU with AVX512-BF16, bitsandbytes' 4-bit forward repacks
every weight for a fused bf16 kernel the first time it runs in inference mode. That kernel needs every quantized
layer's out_features to be a multiple of 32 and in_features a multiple of the block size 64, and casts the
activations to bfloat16. The project's from-scratch presets do not fit (default: intermediate size 336; smoke:
168; the tests' tiny models: width 32): it fails with "N must be divisible by block_n" or "shape '[32, 0]' is
invalid". It would also make the numbers depend on the CPU. So ``quantize_copy`` turns that path off
(``cpu_fast_path=False``, the default): every 4-bit layer dequantizes its NF4 weight to float32 and multiplies in
float32, on any CPU and with any shape. The 4-bit model is then exactly the fp32 model with NF4-rounded weights
(tested: its logits equal those of a copy whose Linear weights went through
``bitsandbytes.functional.quantize_4bit``/``dequantize_4bit``). ``cpu_fast_path=True`` keeps the fused kernel on
the layers whose shapes allow it (SmolLM2-135M's all do).

Without bitsandbytes (or with one older than 0.50) every function here raises ``AttackUnavailable`` naming the
install line ``pip install -e '.[attacks]'``; the experiment skips the attack with that message.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from collections.abc import Sequence
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, BitsAndBytesConfig
from transformers.utils import logging as hf_logging

from bs_ref.generation import Decoding
from bs_ref.models import save_plain

from ._common import SIZED_TO_ANSWERS, AttackResult, AttackUnavailable, evaluate_items, plain_copy
from .nf4 import NF4_BLOCKSIZE

MIN_BITSANDBYTES = "0.50"
INSTALL = "pip install -e '.[attacks]'"
CPU_FAST_PATH_BLOCK_N = 32
"""The fused CPU 4-bit kernel's constraints: out_features % 32 == 0 and in_features % 64 == 0."""
QUANT_ATTACKS = {"quant4": 4, "quant8": 8}


def require_bitsandbytes():
    """The ``bitsandbytes`` module (>= 0.50, which quantizes on the CPU), or ``AttackUnavailable`` with the
    install line."""
    try:
        with _quiet_logger("bitsandbytes"):  # on AVX512-BF16 CPUs it logs that an optional kernel hub package is absent
            import bitsandbytes
    except ImportError as error:
        raise AttackUnavailable(
            f"the quantization attacks need bitsandbytes >= {MIN_BITSANDBYTES}, which is not installed: {INSTALL} "
            f"(or pip install 'bitsandbytes>={MIN_BITSANDBYTES}')"
        ) from error
    from packaging.version import Version

    found = getattr(bitsandbytes, "__version__", "0")
    if Version(found) < Version(MIN_BITSANDBYTES):
        raise AttackUnavailable(
            f"the quantization attacks need bitsandbytes >= {MIN_BITSANDBYTES} (it quantizes on the CPU), found "
            f"{found}: {INSTALL}"
        )
    return bitsandbytes


@contextlib.contextmanager
def _quiet_logger(name: str):
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(level)


class _CastNotice(logging.Filter):
    """Drops LLM.int8's notice, logged at every forward on CPU, that float32 inputs are cast to float16 (the
    module docstring says so once)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "inputs will be cast from" not in record.getMessage()


def _drop_cast_notice() -> None:
    logger = logging.getLogger("bitsandbytes.autograd._functions")
    if not any(isinstance(f, _CastNotice) for f in logger.filters):
        logger.addFilter(_CastNotice())


def bitsandbytes_available() -> tuple[bool, str]:
    """(True, "") when the quantization attacks can run, else (False, the reason with the install line)."""
    try:
        require_bitsandbytes()
    except AttackUnavailable as error:
        return False, str(error)
    return True, ""


def quantization_config(bits: int):
    """The ``transformers.BitsAndBytesConfig`` of the attack: NF4 with float32 compute (4) or LLM.int8 (8)."""

    if bits == 4:
        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.float32)
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(f"bits must be 4 or 8, got {bits!r}")


def _save(model, directory: Path) -> None:
    try:
        model.save_pretrained(directory)
    except Exception:  # e.g. a model loaded from GGUF, which save_pretrained refuses (plain tensors after loading)
        save_plain(model, directory)


def fits_cpu_fast_path(module) -> bool:
    """Whether a 4-bit layer's shape suits bitsandbytes' fused AVX512-BF16 CPU kernel (module docstring)."""
    return module.out_features % CPU_FAST_PATH_BLOCK_N == 0 and module.in_features % NF4_BLOCKSIZE == 0


def quantize_copy(model, bits: int, *, device: str | torch.device | None = None, cpu_fast_path: bool = False):
    """A quantized copy of ``model`` (4-bit NF4 or 8-bit), loaded on ``device`` (default: the model's); ``model``
    is unchanged. The copy runs in eval mode with float32 activations outside the quantized products (a bf16
    autocast wrapper of ``bs_ref.models.with_precision`` is not carried over). ``cpu_fast_path``: see the module
    docstring."""
    bnb = require_bitsandbytes()

    config = quantization_config(bits)
    _drop_cast_notice()
    device = torch.device(device) if device is not None else next(model.parameters()).device
    device_map = {"": str(device) if device.type != "cuda" else (device.index or 0)}

    source = plain_copy(model)
    bars_were_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # the save/load bars of a temporary copy say nothing
    try:
        with tempfile.TemporaryDirectory(prefix="bs_ref_quant") as tmp:
            _save(source, Path(tmp))
            del source
            quantized = AutoModelForCausalLM.from_pretrained(
                tmp, quantization_config=config, device_map=device_map, dtype=torch.float32
            )
    finally:
        if bars_were_on:
            hf_logging.enable_progress_bar()
    for module in quantized.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = bool(
                cpu_fast_path and module.support_avx512bf16_for_cpu and fits_cpu_fast_path(module)
            )
    generation_config = getattr(model, "generation_config", None)
    if generation_config is not None:
        quantized.generation_config = generation_config
    return quantized.eval()


def quant_before(
    model,
    tokenizer,
    forget_records: Sequence[dict],
    *,
    template: str = "plain",
    seed: int = 0,
    decoding: Decoding = SIZED_TO_ANSWERS,
) -> list[dict]:
    """The ``before`` items of ``quantization_attack`` (the unquantized model; the same for every bit width)."""
    records = list(forget_records)
    return evaluate_items(model, tokenizer, records, template=template, probes=True, decoding=decoding, seed=seed)


def without_probes(items: Sequence[dict]) -> list[dict]:
    """Items evaluated with the paraphrase probe as ``evaluate_items`` returns them without it (the probe's
    generation removed, its leak None): the greedy answer, scores and samples do not depend on the probe."""
    out = []
    for item in items:
        item = {k: v for k, v in item.items() if k != "generation_paraphrased_question"}
        item["fact_leak_paraphrased_question"] = None
        out.append(item)
    return out


def quantization_attack(
    model,
    tokenizer,
    forget_records: Sequence[dict],
    bits: int,
    *,
    template: str = "plain",
    seed: int = 0,
    decoding: Decoding = SIZED_TO_ANSWERS,
    device: str | torch.device | None = None,
    cpu_fast_path: bool = False,
    before: list[dict] | None = None,
) -> AttackResult:
    """Evaluate ``forget_records`` on ``model`` (``before``) and on its ``bits``-bit copy (``after``): greedy fact
    leak, paraphrased question, any-of-N (``decoding.num_samples``, seeded by ``seed``), target log-prob,
    fact-token log-prob, ROUGE-L. Items carry ``index`` = position in ``forget_records``. Raises
    ``AttackUnavailable`` without bitsandbytes. ``before``: the items of ``quant_before`` for the same model and
    settings, reused instead of evaluated again (``[]``: no ``before`` evaluation)."""
    require_bitsandbytes()
    records = list(forget_records)
    evaluation = dict(template=template, probes=True, decoding=decoding, seed=seed)
    if before is None:
        before = evaluate_items(model, tokenizer, records, **evaluation)
    quantized = quantize_copy(model, bits, device=device, cpu_fast_path=cpu_fast_path)
    try:
        after = evaluate_items(quantized, tokenizer, records, **evaluation)
    finally:
        del quantized
    info = {"bits": bits, "quantization": quantization_config(bits).to_dict(), "cpu_fast_path": cpu_fast_path}
    return AttackResult(f"quant{bits}", before, after, None, info)
