"""LoRA (bs_ref.lora): the --lora spec, every method with an adapter, the reference as the adapter disabled, merging."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import sys

import pytest
import torch
from _tiny import FORGET, RETAIN, eval_records, fresh
from transformers import LlamaForCausalLM

from bs_ref import unlearn as unlearn_module
from bs_ref.data.qa import QADataset, collate_train
from bs_ref.lora import AdapterDisabled, LoraSpec, apply_lora, is_lora_model, merge_lora, parse_lora_spec
from bs_ref.methods import METHODS, make_method
from bs_ref.metrics.scores import evaluate
from bs_ref.models import smollm2_available
from bs_ref.unlearn import UnlearnConfig, unlearn

SPEC = "r=4,alpha=8,targets=q_proj,v_proj"
pytestmark = pytest.mark.filterwarnings("ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")  # peft


def config(method: str, tmp_path, **kw) -> UnlearnConfig:
    own = {f.name for f in dataclasses.fields(METHODS[method])}
    hyper = {k: kw.pop(k) for k in list(kw) if k in own}
    if method == "bs_s":
        hyper.setdefault("belief_max_new_tokens", 12)
    base = dict(
        method=make_method(method, **hyper),
        lr=3e-3,
        epochs=2,
        batch_size=2,
        warmup=0.0,
        progress=False,
        lora=SPEC,
        log_path=str(tmp_path / f"{method}.jsonl"),
    )
    return UnlearnConfig(**{**base, **kw})


def steps(path) -> list[dict]:
    return [line for line in map(json.loads, open(path, encoding="utf-8")) if "lr" in line]


def logits(model, tokenizer, records=FORGET) -> torch.Tensor:
    batch = collate_train(list(QADataset(records, tokenizer)), tokenizer.pad_token_id)
    with torch.no_grad():
        return model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits


# ---------------------------------------------------------------------------------------------------- the spec
def test_spec_parses_and_round_trips():
    spec = parse_lora_spec("r=8,alpha=16,targets=q_proj,v_proj")
    assert spec == LoraSpec(r=8, alpha=16.0, targets=("q_proj", "v_proj"), dropout=0.0)
    assert parse_lora_spec(spec.spec()) == spec
    assert parse_lora_spec("r=4") == LoraSpec(r=4)  # the other keys at their defaults
    assert parse_lora_spec("rank=2, lora_alpha=3.5, target_modules=all-linear, dropout=0.1") == LoraSpec(
        2, 3.5, ("all-linear",), 0.1
    )


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("", "empty"),
        ("r=0", "r=0 must be an integer >= 1"),
        ("r=eight", "not an integer"),
        ("alpha=-1", "alpha=-1.0 must be a finite number > 0"),
        ("dropout=1", "must lie in"),
        ("rank=4,r=4", "given twice"),
        ("size=4", "unknown key 'size'"),
        ("r=4,q_proj", "only targets= takes several"),
        ("targets=", "must name modules"),
        ("r=4,,alpha=8", "empty item"),
    ],
)
def test_bad_spec_raises_one_value_error_naming_the_flag_and_the_fix(spec, problem):
    with pytest.raises(ValueError, match="--lora") as error:
        parse_lora_spec(spec)
    assert problem in str(error.value) and "r=8,alpha=16,targets=q_proj,v_proj" in str(error.value)
    with pytest.raises(ValueError, match=r"^lora=.* is invalid: --lora"):  # the form the experiment's CLI maps
        UnlearnConfig(lora=spec).validate()


def test_missing_peft_names_the_install_line(monkeypatch, tiny):
    monkeypatch.setitem(sys.modules, "peft", None)  # import peft raises ImportError
    with pytest.raises(ImportError, match=r"pip install -e '\.\[lora\]'"):
        apply_lora(fresh(tiny)[0], SPEC)
    with pytest.raises(ValueError, match=r"lora=.*needs the peft package: pip install -e '\.\[lora\]'"):
        UnlearnConfig(lora=SPEC).validate()


def test_unknown_target_lists_the_models_linear_layers(tiny):
    with pytest.raises(ValueError, match="--lora: target modules .*linear layers are .*q_proj"):
        apply_lora(fresh(tiny)[0], "targets=query")


# -------------------------------------------------------------------------------------------------- the loop
@pytest.mark.parametrize("method", METHODS)
def test_every_method_trains_only_the_adapter(tiny, tmp_path, method):
    model, tokenizer = fresh(tiny)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = config(method, tmp_path, max_steps=2)
    out = unlearn(model, tokenizer, FORGET, RETAIN, cfg)
    assert is_lora_model(out)
    adapter, base_after = {}, {}
    for name, value in out.state_dict().items():
        if "lora_" in name:
            adapter[name] = value
        else:  # base_model.model.<name> or base_model.model.<path>.base_layer.weight
            base_after[name.removeprefix("base_model.model.").replace(".base_layer", "")] = value
    assert base_after.keys() == base.keys()
    for name, value in base.items():  # every base weight bit for bit
        assert torch.equal(base_after[name], value), name
    assert any("lora_B" in n and value.abs().max() > 0 for n, value in adapter.items())  # B moved off 0
    assert all(p.requires_grad == ("lora_" in n) for n, p in out.named_parameters())
    lines = steps(cfg.log_path)
    assert len(lines) == 2 and all(math.isfinite(s["loss"]) for s in lines)
    assert json.loads(open(cfg.log_path, encoding="utf-8").readline())["config"]["lora"] == SPEC


@pytest.mark.parametrize("method, extra", [("npo", {}), ("graddiff", {"retain_loss": "kl"}), ("bs_s", {"base": "npo"})])
def test_reference_is_the_adapter_disabled_without_a_copy(tiny, tmp_path, monkeypatch, method, extra):
    copies = []
    real_deepcopy = copy.deepcopy

    def recording_deepcopy(obj, *args, **kwargs):
        if isinstance(obj, torch.nn.Module):
            copies.append(obj)
        return real_deepcopy(obj, *args, **kwargs)

    monkeypatch.setattr(unlearn_module.copy, "deepcopy", recording_deepcopy)
    model, tokenizer = fresh(tiny)
    cfg = config(method, tmp_path, **extra)
    assert cfg.needs_reference
    unlearn(model, tokenizer, FORGET, RETAIN, cfg)
    assert copies == []
    first = steps(cfg.log_path)[0]
    assert json.loads(open(cfg.log_path, encoding="utf-8").readline())["reference_model"] is True
    if method == "npo":  # π_ref = the adapter disabled = the initial policy (B = 0): w = 1, loss (2/β)·log 2
        assert first["forget_loss"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-6)
    if method == "graddiff":  # KL(π_θ ‖ π_ref) = 0 at the first step
        assert first["retain_loss"] == pytest.approx(0.0, abs=1e-6)


def test_adapter_disabled_reference_is_the_base_model_and_keeps_the_mode(tiny, tmp_path):
    model, tokenizer = fresh(tiny)
    plain = logits(model, tokenizer)
    out = unlearn(model, tokenizer, FORGET, RETAIN, config("ga", tmp_path))
    out.train()
    reference = AdapterDisabled(out)
    batch = collate_train(list(QADataset(FORGET, tokenizer)), tokenizer.pad_token_id)
    ref_logits = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    torch.testing.assert_close(ref_logits, plain, rtol=0, atol=0)  # base weights untouched
    assert not ref_logits.requires_grad and out.training and all(m.training for m in out.modules())
    assert not torch.allclose(logits(out, tokenizer), plain)  # the adapter itself moved
    assert reference.to("cpu") is reference and next(reference.parameters()).device.type == "cpu"


def test_merged_model_gives_the_adapted_logits(tiny, tmp_path):
    model, tokenizer = fresh(tiny)
    out = unlearn(model, tokenizer, FORGET, RETAIN, config("npo", tmp_path))
    adapted = logits(out, tokenizer, FORGET + RETAIN)
    splits = {"forget": eval_records(FORGET)}
    adapted_eval = evaluate(out, tokenizer, splits, max_new_tokens=12)  # the metrics run on a peft model as it is
    kept = merge_lora(out, inplace=False)
    assert is_lora_model(out) and not is_lora_model(kept)  # a copy was merged; the adapted model is intact
    merged = merge_lora(out)
    assert type(merged) is LlamaForCausalLM and not any("lora" in n for n, _ in merged.named_parameters())
    assert set(merged.state_dict()) == set(tiny[0])
    torch.testing.assert_close(logits(merged, tokenizer, FORGET + RETAIN), adapted, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits(kept, tokenizer, FORGET + RETAIN), adapted, rtol=1e-5, atol=1e-5)
    assert merge_lora(merged) is merged  # a plain model is returned as it is
    merged_eval = evaluate(merged, tokenizer, splits, max_new_tokens=12)
    for a, b in zip(adapted_eval["forget"], merged_eval["forget"]):
        assert a["generation"] == b["generation"] and a["nll_answer"] == pytest.approx(b["nll_answer"], abs=1e-5)


def test_a_model_that_already_has_an_adapter_is_used_as_it_is(tiny, tmp_path):
    model, tokenizer = fresh(tiny)
    adapted = apply_lora(model, SPEC)
    with pytest.raises(ValueError, match="already carries a LoRA adapter"):
        apply_lora(adapted, SPEC)
    cfg = config("npo", tmp_path, lora=None)
    out = unlearn(adapted, tokenizer, FORGET, RETAIN, cfg)  # its adapter trains; π_ref = adapter disabled
    assert out is adapted and steps(cfg.log_path)[0]["forget_loss"] == pytest.approx(20 * math.log(2), rel=1e-6)


# ------------------------------------------------------------------------------------------------- SmolLM2
SMOLLM2, SMOLLM2_WHY = smollm2_available()


@pytest.mark.skipif(not SMOLLM2, reason=f"SmolLM2-135M-Instruct is not available: {SMOLLM2_WHY}")
def test_smollm2_two_steps_of_npo_with_lora(tmp_path):
    from bs_ref.models import load_smollm2

    torch.set_num_threads(2)
    try:
        model, tokenizer = load_smollm2()
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.eos_token
        base = {k: v.clone() for k, v in model.state_dict().items() if "layers.0." in k}
        cfg = UnlearnConfig(
            method="npo",
            lr=1e-3,
            epochs=1,
            batch_size=2,
            max_steps=2,
            warmup=0.0,
            progress=False,
            lora="r=8,alpha=16,targets=q_proj,v_proj",
            template="chat",
            log_path=str(tmp_path / "npo.jsonl"),
        )
        out = unlearn(model, tokenizer, FORGET, RETAIN, cfg)
    finally:
        torch.set_num_threads(1)
    lines = steps(cfg.log_path)
    assert len(lines) == 2
    assert lines[0]["forget_loss"] == pytest.approx(2 / 0.1 * math.log(2), rel=1e-5)  # π_ref = π_θ at step 1
    assert lines[1]["forget_loss"] < lines[0]["forget_loss"]  # the answers got less likely than under π_ref
    merged = merge_lora(out)
    for name, value in base.items():  # merging changed only the adapted layers
        if "q_proj" not in name and "v_proj" not in name:
            assert torch.equal(merged.state_dict()[name], value), name
    assert not torch.equal(
        merged.state_dict()["model.layers.0.self_attn.q_proj.weight"], base["model.layers.0.self_attn.q_proj.weight"]
    )
