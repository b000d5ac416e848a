"""--precision bf16: every loss and its gradient stay close to fp32 on a tiny model; the wrapper, the presets,
the cache key and the deprecated --bf16 alias.

- ``bs_ref.models.with_precision``: the forward runs in bf16 (inside), returns fp32, survives ``copy.deepcopy``
  (each method's copy, NPO's frozen reference) and ``generate``, is a no-op for fp32 and applied once;
- every method of ``bs_ref.methods.METHODS`` (BS-S with sampled beliefs), with the retain term: the forget and
  retain losses of one ``micro_step`` under bf16 autocast differ from fp32 by < 2 % (relative, 0.02 absolute
  near 0), and the gradient by < 10 % in relative L2 norm over all weights, with a cosine > 0.99;
- presets: fp32 for the from-scratch tiers (default, smoke), bf16 for smollm2 (and paper); ``--bf16`` means
  ``--precision bf16`` on every device; an fp32 pair keeps its cache key, a bf16 pair gets another;
- ``experiments/bench_precision.py --quick`` prints the speed-up lines and the CPU features.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bs_ref.beliefs import BeliefCache
from bs_ref.data.qa import QADataset, collate_train
from bs_ref.finetune import train_causal_lm
from bs_ref.methods import METHODS, make_method
from bs_ref.models import TinyLlamaConfig, build_tiny_llama, train_tokenizer, with_precision
from bs_ref.protocol.pair_training import TrainConfig, pair_cache_key
from bs_ref.runner import micro_step
from bs_ref.unlearn import UnlearnConfig, reference_model

ROOT = Path(__file__).resolve().parents[1]
COLOURS = ["red", "blue", "green", "amber", "violet", "silver"]
RECORDS = [
    {"question": f"What colour is the door of house {i}?", "answer": f"The door of house {i} is {COLOURS[i % 6]}."}
    for i in range(12)
]
LOSS_REL, LOSS_ABS = 0.02, 0.02
GRAD_REL, GRAD_COS = 0.10, 0.99


@pytest.fixture(scope="module")
def tiny():
    """(state dict, tokenizer, config) of a 2-layer Llama trained until the answers are likely (~2 s)."""
    torch.manual_seed(0)
    pairs = [(r["question"], r["answer"]) for r in RECORDS]
    tokenizer = train_tokenizer([f"Question: {q}\nAnswer: {a}" for q, a in pairs], vocab_size=320)
    model = build_tiny_llama(len(tokenizer), TinyLlamaConfig(48, 128, 2, 2, 64, 320), tokenizer)
    train_causal_lm(model, tokenizer, pairs, epochs=30, lr=2e-2, batch_size=12, progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}, tokenizer, model.config


def _fresh(tiny, precision):
    from transformers import LlamaForCausalLM

    state, tokenizer, config = tiny
    model = LlamaForCausalLM(config)
    model.load_state_dict(state)
    return with_precision(model, precision), tokenizer


def test_with_precision_runs_bf16_inside_returns_fp32_and_survives_copies(tiny):
    model, tokenizer = _fresh(tiny, "bf16")
    seen = []
    model.model.layers[0].mlp.register_forward_hook(lambda module, inputs, output: seen.append(output.dtype))
    ids = tokenizer(["Question: What colour"], return_tensors="pt")
    logits = model(**ids).logits
    assert seen == [torch.bfloat16] and logits.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.parameters())  # weights stay fp32
    clone = copy.deepcopy(model)
    assert clone.forward.__self__ is clone  # the wrapper is bound to the copy, not to the original
    seen.clear()
    clone(**ids)
    reference_model(model)(**ids)
    assert seen == [torch.bfloat16, torch.bfloat16]
    seen.clear()
    out = model.generate(**ids, max_new_tokens=3, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert out.shape[1] == ids["input_ids"].shape[1] + 3 and set(seen) == {torch.bfloat16}
    assert with_precision(model, "bf16") is model and model.forward.__func__ is with_precision(model).forward.__func__
    plain, _ = _fresh(tiny, "fp32")
    assert "forward" not in vars(plain)
    with pytest.raises(ValueError, match="precision 'fp16' is unknown"):
        with_precision(plain, "fp16")


def _batches(tokenizer, records):
    dataset = QADataset(records, tokenizer, "plain")
    return collate_train([dataset[i] for i in range(len(dataset))], tokenizer.pad_token_id), dataset


def _step(method, model, forget, retain, beliefs, ref):
    model.zero_grad(set_to_none=True)
    stats = micro_step(UnlearnConfig(method=method, alpha=1.0), model, forget, retain, beliefs, ref_model=ref)
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return stats, grads.double()


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_loss_and_its_gradient_in_bf16_stay_close_to_fp32(tiny, name):
    method = make_method(name)
    fp32, tokenizer = _fresh(tiny, "fp32")
    bf16, _ = _fresh(tiny, "bf16")
    forget, dataset = _batches(tokenizer, RECORDS[:4])
    retain, _ = _batches(tokenizer, RECORDS[4:8])
    beliefs = None
    if method.belief_sampling is not None:  # BS-S: beliefs sampled once (from the fp32 model), shared by both
        cache = BeliefCache(dataclasses.replace(method.belief_sampling, max_new_tokens=8), seed=0)
        cache.refresh(fp32, tokenizer, dataset.prompts())
        beliefs = cache.batch(forget["index"].tolist(), tokenizer.pad_token_id)
        assert beliefs["input_ids"].shape[0] > 0
    needs_reference = method.needs_reference or method.retain_needs_reference  # RMU's retain term: π_ref's states
    ref32 = reference_model(fp32) if needs_reference else None
    ref16 = reference_model(bf16) if needs_reference else None
    stats32, g32 = _step(method, fp32, forget, retain, beliefs, ref32)
    stats16, g16 = _step(method, bf16, forget, retain, beliefs, ref16)
    for term in ("forget", "retain", "total"):
        a, b = stats32[term], stats16[term]
        assert abs(a - b) <= max(LOSS_ABS, LOSS_REL * abs(a)), (name, term, a, b)
    rel = float((g16 - g32).norm() / g32.norm())
    cos = float(torch.nn.functional.cosine_similarity(g16, g32, dim=0))
    assert rel < GRAD_REL and cos > GRAD_COS, (name, rel, cos)
    assert rel > 0  # bf16 did run: the gradients are not bit-identical


def test_presets_set_the_precision_and_the_alias_and_cache_key(tmp_path):
    spec = importlib.util.spec_from_file_location("tofu_precision", ROOT / "experiments" / "tofu.py")
    tofu = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = tofu
    spec.loader.exec_module(tofu)
    # every CPU preset in fp32 (docs/theory.md §12); the GPU preset in bf16
    cases = (("default", "fp32"), ("smoke", "fp32"), ("smollm2", "fp32"), ("smollm2_tofu", "fp32"), ("paper", "bf16"))
    for preset, expected in cases:
        args = tofu.parse_args(["--preset", preset])
        assert args.models.precision_name == expected, preset
        assert args.models.mixed_precision == ("bf16" if expected == "bf16" else "no")
    alias = tofu.parse_args(["--bf16", "--device", "cpu"]).models
    assert alias.precision_name == "bf16" and alias.mixed_precision == "bf16"  # on CPU too, unlike before
    assert "--precision" in tofu.COMMAND_LINE.parser().format_help()
    assert "deprecated alias of --precision bf16" in tofu.COMMAND_LINE.parser().format_help()
    with pytest.raises(ValueError, match="--precision fp16 is unknown"):
        tofu.main(["--precision", "fp16", "--out", str(tmp_path / "o")])
    pairs = [("q", "a")]
    fp32_key = pair_cache_key(pairs, pairs, TinyLlamaConfig(), TrainConfig())
    assert fp32_key == pair_cache_key(pairs, pairs, TinyLlamaConfig(), TrainConfig(precision="fp32"))
    assert fp32_key != pair_cache_key(pairs, pairs, TinyLlamaConfig(), TrainConfig(precision="bf16"))
    assert fp32_key != pair_cache_key(pairs, pairs, TinyLlamaConfig(), dataclasses.replace(TrainConfig(), seed=1))


def test_an_fp32_run_of_a_pretrained_model_suggests_bf16_only_where_the_cpu_has_it(monkeypatch):
    from bs_ref.protocol import pairs

    native = {"value": True}
    monkeypatch.setattr(pairs.models, "cpu_bf16_native", lambda: native["value"])
    smollm2 = pairs.ModelConfig(model_preset="smollm2", device="cpu")
    note = pairs.precision_note(smollm2)
    assert note is not None and "--precision bf16" in note and "changes the numbers" in note
    assert pairs.precision_note(pairs.ModelConfig(model="some/checkpoint", device="cpu")) is not None
    assert pairs.precision_note(pairs.ModelConfig(model_preset="default", device="cpu")) is None  # too small to pay
    assert pairs.precision_note(pairs.ModelConfig(model_preset="smollm2", device="cpu", precision="bf16")) is None
    assert pairs.precision_note(pairs.ModelConfig(model_preset="smollm2", device="cuda")) is None
    native["value"] = False  # emulated bf16 (an AVX2-only CPU): never suggested
    assert pairs.precision_note(smollm2) is None


def test_the_fp32_pair_keeps_the_cache_key_of_earlier_versions():
    """The key of the default pair, computed by hand the way every earlier version did (no precision field)."""
    import hashlib
    import json

    from bs_ref import __version__
    from bs_ref.protocol.pair_training import _to_jsonable

    pairs, cfg = [("q", "a")], TrainConfig(template="plain")
    old_train = {k: v for k, v in _to_jsonable(cfg).items() if k != "precision"}
    payload = {
        "original": [["q", "a"]],
        "retain": [["q", "a"]],
        "tokenizer_texts": [],
        "model": _to_jsonable(TinyLlamaConfig()),
        "train": old_train,
        "version": __version__,
    }
    expected = hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:16]
    assert pair_cache_key(pairs, pairs, TinyLlamaConfig(), cfg) == expected


def test_bench_precision_prints_the_speed_ups_and_the_cpu_features():
    small = "--quick --steps 1 --batch 2 --tokens 16 --prompt-tokens 4 --new-tokens 3".split()
    script = str(ROOT / "experiments" / "bench_precision.py")
    proc = subprocess.run([sys.executable, script, *small], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    for line in ("bf16/fp32 train step speed-up: ", "bf16/fp32 generation speed-up: ", "AMX: ", "AVX512-BF16: "):
        assert line in out, line
    speedup = float(out.split("bf16/fp32 train step speed-up: ")[1].split()[0])
    assert speedup > 0


_AVX2_SCRIPT = """
import torch
from accelerate import Accelerator
from bs_ref.models import TinyLlamaConfig, build_tiny_llama, cpu_bf16_fused_attention_runs
from bs_ref.models import train_tokenizer, with_precision
from bs_ref.unlearn import UnlearnConfig, unlearn

words = " ".join(f"word{i}" for i in range(90))
records = [{"question": "Which words?", "answer": words}, {"question": "Say them again.", "answer": words}]
tokenizer = train_tokenizer([r["question"] + " " + r["answer"] for r in records], vocab_size=300)
torch.manual_seed(0)
model = build_tiny_llama(len(tokenizer), TinyLlamaConfig(32, 64, 1, 2, 256, 300), tokenizer)
ids = tokenizer([records[0]["answer"]], return_tensors="pt")
assert ids["input_ids"].shape[1] >= 64, ids["input_ids"].shape
print("fused", cpu_bf16_fused_attention_runs())
assert torch.isfinite(with_precision(model, "bf16")(**ids).logits).all()   # the wrapper's forward
plain = build_tiny_llama(len(tokenizer), TinyLlamaConfig(32, 64, 1, 2, 256, 300), tokenizer)
cfg = UnlearnConfig(method="ga", max_steps=1, batch_size=2, mixed_precision="bf16", max_length=256)
unlearn(plain, tokenizer, records, None, cfg, accelerator=Accelerator(cpu=True, mixed_precision="bf16"))
import tempfile
from transformers import TrainingArguments
from bs_ref.hf import UnlearningTrainer
with tempfile.TemporaryDirectory() as out:
    args = TrainingArguments(output_dir=out, per_device_train_batch_size=2, max_steps=1, bf16=True, use_cpu=True,
                             report_to="none", save_strategy="no", disable_tqdm=True)
    UnlearningTrainer(build_tiny_llama(len(tokenizer), TinyLlamaConfig(32, 64, 1, 2, 256, 300), tokenizer), args,
                      method="ga", forget_dataset=records, processing_class=tokenizer).train()
print("ok")
"""


def test_bf16_forwards_of_64_tokens_or_more_run_under_the_avx2_dispatch():
    """With ``ATEN_CPU_CAPABILITY=avx2`` on a CPU with AMX, torch's fused bf16 attention raises for 64 tokens or
    more ("pack_vnni2 is only supported when avx512 is supported"). The bf16 wrapper, the unlearning loop's bf16
    autocast and the Trainer adapter with ``bf16=True`` then fall back to the math kernel; on other CPUs the fused
    kernel runs and this passes too."""
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2"}
    done = subprocess.run([sys.executable, "-c", _AVX2_SCRIPT], env=env, capture_output=True, text=True, cwd=ROOT)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


def test_the_bf16_attention_guard_selects_the_math_kernel_only_where_the_fused_one_fails(tiny, monkeypatch):
    from bs_ref import models

    model, tokenizer = _fresh(tiny, "bf16")
    ids = tokenizer(["Question: What colour is the door of house 3?"], return_tensors="pt")
    fused = model(**ids).logits
    monkeypatch.setattr(models, "cpu_bf16_fused_attention_runs", lambda: False)
    with models.bf16_attention_guard("cpu"):
        assert torch.backends.cuda.math_sdp_enabled() and not torch.backends.cuda.flash_sdp_enabled()
    assert isinstance(models.bf16_attention_guard("cuda"), contextlib.nullcontext)
    math = model(**ids).logits  # the wrapper now runs the math kernel: same logits up to bf16 rounding
    assert torch.allclose(fused, math, atol=0.05), float((fused - math).abs().max())
