"""The unlearning update against the NF4 bin width, layer by layer (docs/theory.md §9, "Quantization's regime").

Zhang et al., "Catastrophic Failure of LLM Unlearning via Quantization", ICLR 2025 (arXiv 2410.16454): 4-bit
quantization gives an "unlearned" model's knowledge back when the unlearning update of a weight is small against
the quantization bin it falls in, so that the unlearned and the original weight round to the same 4-bit level.
This module measures whether a model pair is in that regime, without bitsandbytes (pure torch):

NF4 (QLoRA, Dettmers et al. 2023) flattens a weight matrix row-major, cuts it into blocks of 64 consecutive
weights (the last block may be shorter), divides each block by its absmax ``a_b = max |w|`` and rounds every
``x = w / a_b`` in [-1, 1] to the nearest of the 16 levels ``NF4_LEVELS`` (ties to the lower level); the stored
weight is ``a_b · level``. ``nf4_codes`` / ``nf4_dequantize`` reproduce that (tested against bitsandbytes'
``quantize_4bit`` / ``dequantize_4bit``).

For a weight ``w`` of the *original* model with normalised value ``x = w / a_b`` between the adjacent levels
``q_j <= x <= q_{j+1}``, its **half bin** is ``h = a_b · (q_{j+1} − q_j) / 2`` (``nf4_half_bins``): the distance by
which a weight sitting on a level can move and still round back to it. ``nf4_layer_bins`` compares the update
``Δ = w_unlearned − w_original`` of every weight with its half bin:

    delta_max_abs, delta_rms       max |Δ| and sqrt(mean Δ²) over the layer's weights
    absmax_median                  median block absmax a_b of the original layer
    half_bin_min/median/max        over the layer's weights, h as above
    rms_over_half_bin              delta_rms / half_bin_median (< 1: the update is below the typical half bin)
    share_rounded_away             share of weights with |Δ| < h (a scale comparison: "below half a bin")
    share_same_code                share of weights whose NF4 level index is the same in both models, each
                                   quantised with its own block absmax (the exact rounding-back, absmax drift
                                   included)

``nf4_bin_table`` gives one row per ``nn.Linear`` of the model (the layers bitsandbytes quantises: every Linear but
the output embedding) and a last row ``all`` (sums, maxima, the RMS and the shares over every weight; the medians
and their ratio are per layer only, left None).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from bs_ref.lora import is_lora_model

from ._common import plain_copy

NF4_LEVELS = (
    -1.0,
    -0.6961928009986877,
    -0.5250730514526367,
    -0.39491748809814453,
    -0.28444138169288635,
    -0.18477343022823334,
    -0.09105003625154495,
    0.0,
    0.07958029955625534,
    0.16093020141124725,
    0.24611230194568634,
    0.33791524171829224,
    0.44070982933044434,
    0.5626170039176941,
    0.7229568362236023,
    1.0,
)
"""The 16 NF4 levels in increasing order: QLoRA (Dettmers et al., "QLoRA: Efficient Finetuning of Quantized LLMs",
NeurIPS 2023, arXiv 2305.14314), Appendix E, as bitsandbytes writes them out (``bitsandbytes.functional.
get_4bit_type("nf4")``, ``bitsandbytes/backends/utils.py: _NF4_QUANT_TABLE``): quantiles of N(0, 1) scaled to
[-1, 1], with an exact 0 and 8 positive / 7 negative non-zero levels."""
NF4_BLOCKSIZE = 64
"""Weights per NF4 block (one absmax each): bitsandbytes' default, which ``BitsAndBytesConfig`` 4-bit uses."""

NF4_BIN_COLUMNS = (
    "layer",
    "shape",
    "n_weights",
    "n_blocks",
    "delta_max_abs",
    "delta_rms",
    "absmax_median",
    "half_bin_min",
    "half_bin_median",
    "half_bin_max",
    "rms_over_half_bin",
    "share_rounded_away",
    "share_same_code",
)
"""Columns of a row of ``nf4_bin_table`` (module docstring)."""


def _levels(device) -> torch.Tensor:
    return torch.tensor(NF4_LEVELS, dtype=torch.float32, device=device)


def _blocks(weight: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(normalised values x [n], block absmax [n_blocks]) of ``weight`` flattened row-major in float32; an all-zero
    block has absmax 0 and x = 0."""
    if blocksize < 1:
        raise ValueError(f"blocksize must be >= 1, got {blocksize}")
    flat = weight.detach().reshape(-1).to(torch.float32)
    n = flat.numel()
    if n == 0:
        raise ValueError("the weight is empty")
    n_blocks = -(-n // blocksize)
    padded = torch.zeros(n_blocks * blocksize, dtype=torch.float32, device=flat.device)
    padded[:n] = flat
    blocks = padded.view(n_blocks, blocksize)
    absmax = blocks.abs().amax(dim=1)
    safe = torch.where(absmax > 0, absmax, torch.ones_like(absmax))
    x = (blocks / safe[:, None]).reshape(-1)[:n].clamp(-1.0, 1.0)
    return x, absmax


def _block_of(n: int, blocksize: int, device) -> torch.Tensor:
    return torch.arange(n, device=device) // blocksize


def nf4_codes(weight: torch.Tensor, blocksize: int = NF4_BLOCKSIZE) -> tuple[torch.Tensor, torch.Tensor]:
    """(level index 0..15 of every weight, flattened row-major [n], block absmax [n_blocks]): NF4 rounding to the
    nearest level of ``x = w / a_b`` (ties to the lower level)."""
    x, absmax = _blocks(weight, blocksize)
    levels = _levels(x.device)
    midpoints = (levels[1:] + levels[:-1]) / 2
    return torch.searchsorted(midpoints, x), absmax


def nf4_dequantize(
    codes: torch.Tensor, absmax: torch.Tensor, shape: Sequence[int], blocksize: int = NF4_BLOCKSIZE
) -> torch.Tensor:
    """The float32 weights ``a_b · NF4_LEVELS[code]`` of ``nf4_codes``' output, in ``shape``."""
    levels = _levels(codes.device)
    block = _block_of(codes.numel(), blocksize, codes.device)
    return (levels[codes] * absmax[block]).reshape(tuple(shape))


def nf4_round(weight: torch.Tensor, blocksize: int = NF4_BLOCKSIZE) -> torch.Tensor:
    """``weight`` rounded to NF4 and back (float32, same shape)."""
    codes, absmax = nf4_codes(weight, blocksize)
    return nf4_dequantize(codes, absmax, weight.shape, blocksize)


def nf4_half_bins(weight: torch.Tensor, blocksize: int = NF4_BLOCKSIZE) -> torch.Tensor:
    """Per weight (flattened row-major), half the gap between the two adjacent NF4 levels that bracket
    ``x = w / a_b``, times the block absmax ``a_b``: ``a_b · (q_{j+1} − q_j) / 2`` with ``q_j <= x <= q_{j+1}``
    (x = 1 takes the top gap). 0 in an all-zero block."""
    x, absmax = _blocks(weight, blocksize)
    levels = _levels(x.device)
    j = (torch.searchsorted(levels, x, right=True) - 1).clamp(0, len(NF4_LEVELS) - 2)
    gap = levels[j + 1] - levels[j]
    return gap / 2 * absmax[_block_of(x.numel(), blocksize, x.device)]


def nf4_layer_bins(original: torch.Tensor, unlearned: torch.Tensor, blocksize: int = NF4_BLOCKSIZE) -> dict:
    """The update ``unlearned − original`` of one weight matrix against its NF4 half bins (module docstring; the
    bins are the original's). Returns the ``NF4_BIN_COLUMNS`` but ``layer``."""
    if original.shape != unlearned.shape:
        raise ValueError(f"the two weights differ in shape: {tuple(original.shape)} vs {tuple(unlearned.shape)}")
    delta = (unlearned.detach().to(torch.float32) - original.detach().to(torch.float32)).reshape(-1)
    half = nf4_half_bins(original, blocksize)
    codes_original, absmax = nf4_codes(original, blocksize)
    codes_unlearned, _ = nf4_codes(unlearned, blocksize)
    rms = float(delta.square().mean().sqrt())
    half_median = float(half.median())
    return {
        "shape": "x".join(str(d) for d in original.shape),
        "n_weights": int(delta.numel()),
        "n_blocks": int(absmax.numel()),
        "delta_max_abs": float(delta.abs().max()),
        "delta_rms": rms,
        "absmax_median": float(absmax.median()),
        "half_bin_min": float(half.min()),
        "half_bin_median": half_median,
        "half_bin_max": float(half.max()),
        "rms_over_half_bin": rms / half_median if half_median > 0 else math.nan,
        "share_rounded_away": float((delta.abs() < half).to(torch.float64).mean()),
        "share_same_code": float((codes_original == codes_unlearned).to(torch.float64).mean()),
    }


def quantised_linears(model) -> dict[str, torch.nn.Linear]:
    """{name: module} of the ``nn.Linear`` layers 4-bit loading quantises: every Linear but the output embedding
    (transformers keeps the LM head, tied or not, in full precision)."""
    output = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    return {
        name: module
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output
    }


def nf4_bin_table(original, unlearned, *, blocksize: int = NF4_BLOCKSIZE) -> list[dict]:
    """One row (``NF4_BIN_COLUMNS``) per quantised Linear layer (``quantised_linears``) of the pair, in module
    order, comparing ``unlearned`` with ``original`` (the model the unlearning started from), then the row
    ``all``. Models with a LoRA adapter are compared with it merged (on a copy). Neither model is changed."""
    models = [plain_copy(m) if is_lora_model(m) else m for m in (original, unlearned)]
    layers = [quantised_linears(m) for m in models]
    if list(layers[0]) != list(layers[1]):
        missing = sorted(set(layers[0]) ^ set(layers[1]))
        raise ValueError(f"the two models have different Linear layers: {missing[:5]}")
    if not layers[0]:
        raise ValueError("the model has no Linear layer to quantise")
    rows = []
    totals = {"n": 0, "blocks": 0, "sq": 0.0, "max": 0.0, "hmin": math.inf, "hmax": 0.0, "away": 0.0, "same": 0.0}
    with torch.no_grad():
        for name, module in layers[0].items():
            row = {"layer": name, **nf4_layer_bins(module.weight, layers[1][name].weight, blocksize)}
            rows.append(row)
            n = row["n_weights"]
            totals["n"] += n
            totals["blocks"] += row["n_blocks"]
            totals["sq"] += row["delta_rms"] ** 2 * n
            totals["max"] = max(totals["max"], row["delta_max_abs"])
            totals["hmin"] = min(totals["hmin"], row["half_bin_min"])
            totals["hmax"] = max(totals["hmax"], row["half_bin_max"])
            totals["away"] += row["share_rounded_away"] * n
            totals["same"] += row["share_same_code"] * n
    n = totals["n"]
    rows.append(
        {
            "layer": "all",
            "shape": "",
            "n_weights": n,
            "n_blocks": totals["blocks"],
            "delta_max_abs": totals["max"],
            "delta_rms": math.sqrt(totals["sq"] / n),
            "absmax_median": None,
            "half_bin_min": totals["hmin"],
            "half_bin_median": None,
            "half_bin_max": totals["hmax"],
            "rms_over_half_bin": None,
            "share_rounded_away": totals["away"] / n,
            "share_same_code": totals["same"] / n,
        }
    )
    return rows
