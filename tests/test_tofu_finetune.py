"""The original model and its retain twin fine-tuned here on real TOFU authors (no ``--model``).

- the pair is fine-tuned on the kept authors: the original on the forget and retain items, the twin on the retain
  items only, with the run's template; the info says what was trained;
- it is cached: a second load trains nothing, and the key follows what changes the weights (the authors kept, the
  data content, the pair seed, the precision);
- the settings: real data without --model needs a pretrained --model-preset (the message names both ways), the
  fine-tuned twin is the forget-quality reference (no --retain-model, ``retrain`` allowed), several pair seeds;
- experiments/tofu.py end to end on real TOFU with a fine-tuned pair, two pair seeds.

The fine-tuning code does not depend on the model, so these tests fine-tune a tiny randomly initialised Llama saved
as a pretrained checkpoint (a ``PretrainedSpec`` preset added for the tests) on the real TOFU copy
(BS_REF_TOFU_DIR) or the committed excerpt; one slow test takes a few steps with SmolLM2-135M-Instruct itself.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from bs_ref import models as M
from bs_ref.data.qa import load_tofu
from bs_ref.protocol import pair_training as P
from bs_ref.protocol import pairs as protocol_models
from bs_ref.protocol.data import DataConfig, load_data
from bs_ref.protocol.pairs import ModelConfig, load_models, pair_seed_problems, problems

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "experiments" / "tofu.py"
PRESET = "tiny_pretrained"
TINY_TRAIN = P.TrainConfig(epochs=2, lr=3e-3, batch_size=8)


def _load_script():
    if "tofu_experiment" in sys.modules:
        return sys.modules["tofu_experiment"]
    spec = importlib.util.spec_from_file_location("tofu_experiment", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the file runs
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_checkpoint(tofu_dir, tmp_path_factory) -> Path:
    """A randomly initialised 1-layer Llama and a BPE tokenizer (with a chat template) trained on TOFU text, saved
    as a checkpoint directory: a stand-in for a pretrained model."""
    records = load_tofu(tofu_dir, "forget10")[:40] + load_tofu(tofu_dir, "retain90")[:40]
    texts = [r["question"] + " " + r["answer"] for r in records]
    tokenizer = M.train_tokenizer(texts, vocab_size=400)
    cfg = M.TinyLlamaConfig(hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, max_positions=512)
    model = M.build_tiny_llama(len(tokenizer), cfg, tokenizer, seed=0)
    path = tmp_path_factory.mktemp("tiny_pretrained") / "checkpoint"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def preset(tiny_checkpoint):
    """The name of a preset that fine-tunes the tiny checkpoint (added to pair_training.PRESETS for the module)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(P.PRESETS, PRESET, (P.PretrainedSpec(str(tiny_checkpoint)), TINY_TRAIN))
        yield PRESET


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("model_cache")


def _splits(tofu_dir: Path, max_authors: int | None = 1, template: str = "chat"):
    return load_data(DataConfig(data=str(tofu_dir), max_authors=max_authors, template=template))


def _load(preset: str, cache: Path, splits, pair_seed: int = 0, precision: str = "fp32"):
    cfg = ModelConfig(model_preset=preset, cache_dir=str(cache), precision=precision)
    return load_models(cfg, splits, progress=False, pair_seed=pair_seed)


def _questions(pairs) -> list[str]:
    return [q for q, _ in pairs]


@pytest.fixture(scope="module")
def first_load(tofu_dir, preset, cache):
    """The base pair (first forget author, first retain author, chat template, pair seed 0), trained on first use
    with every call of ``fine_tune`` recorded."""
    calls, real = [], P.fine_tune

    def spy(model, tokenizer, pairs, *args, **kwargs):
        calls.append({"pairs": list(pairs), **kwargs})
        return real(model, tokenizer, pairs, *args, **kwargs)

    splits = _splits(tofu_dir)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(P, "fine_tune", spy)
        loaded = _load(preset, cache, splits)
    return splits, loaded, calls


# ------------------------------------------------------------------------------------------------------------
# What is trained, and what the info says
# ------------------------------------------------------------------------------------------------------------


def test_original_sees_forget_and_retain_items_and_the_twin_only_retain(first_load):
    splits, (original, retain, tokenizer, info), calls = first_load
    assert [c["desc"] for c in calls] == ["train original", "train retain"]
    forget = _questions(P.tofu_corpus(splits.forget_train))
    kept_retain = _questions(P.tofu_corpus(splits.retain_train))
    assert len(forget) == 20 and len(kept_retain) == 20  # one author of each split
    assert sorted(_questions(calls[0]["pairs"])) == sorted(forget + kept_retain)
    assert sorted(_questions(calls[1]["pairs"])) == sorted(kept_retain)
    assert not set(forget) & set(_questions(calls[1]["pairs"]))
    assert all(c["template"] == "chat" and c["seed"] == 0 for c in calls)
    assert tokenizer.chat_template
    assert not original.training and not retain.training
    weights = dict(retain.named_parameters())
    assert any(not torch.equal(p, weights[name]) for name, p in original.named_parameters())


def test_info_records_what_was_trained(first_load):
    splits, (_, _, _, info), _ = first_load
    assert info["model_preset"] == PRESET
    pair = info["pair"]
    assert pair["authors"]["forget"] == {"n": 1, "kept": [0]} and pair["authors"]["retain"] == {"n": 1, "kept": [0]}
    assert pair["trained_on"] == {
        "original": {"forget_items": 20, "retain_items": 20},
        "retain": {"forget_items": 0, "retain_items": 20},
    }
    assert pair["forget"] == "forget10" and pair["retain_split"] == "retain90" and pair["data"] == "tofu"
    assert pair["train_cfg"]["epochs"] == TINY_TRAIN.epochs and pair["train_cfg"]["lr"] == TINY_TRAIN.lr
    assert pair["train_cfg"]["template"] == "chat" and pair["template"] == "chat"
    for role, n in (("original", 40), ("retain", 20)):
        assert pair[role]["n_pairs"] == n and pair[role]["seconds"] > 0
        assert len(pair[role]["epoch_loss"]) == TINY_TRAIN.epochs
        assert all(loss > 0 for loss in pair[role]["epoch_loss"])
    assert pair["source"] == str(splits.info["source"]) and Path(pair["path"]).is_dir()
    assert splits.info["n_authors_train"] == {"forget": 1, "retain": 1}


# ------------------------------------------------------------------------------------------------------------
# The cache
# ------------------------------------------------------------------------------------------------------------


def test_second_load_trains_nothing(first_load, tofu_dir, preset, cache, monkeypatch):
    _, (original, _, _, info), _ = first_load

    def refuse(*args, **kwargs):
        raise AssertionError("the cached pair was trained again")

    monkeypatch.setattr(P, "fine_tune", refuse)
    again, _, _, again_info = _load(preset, cache, _splits(tofu_dir))
    assert again_info["pair"]["key"] == info["pair"]["key"]
    assert all(torch.equal(p, q) for p, q in zip(original.parameters(), again.parameters()))


def test_cache_key_follows_what_changes_the_weights(first_load, tofu_dir, tofu_is_excerpt, preset, cache):
    _, (_, _, _, info), _ = first_load
    base = info["pair"]["key"]
    # The excerpt has one forget author: "more authors" keeps every author of each split (2 retain authors).
    more_authors = _splits(tofu_dir, max_authors=None if tofu_is_excerpt else 2)
    keys = {
        "authors": _load(preset, cache, more_authors)[3]["pair"]["key"],
        "pair seed": _load(preset, cache, _splits(tofu_dir), pair_seed=1)[3]["pair"]["key"],
        "precision": _load(preset, cache, _splits(tofu_dir), precision="bf16")[3]["pair"]["key"],
    }
    assert base not in keys.values() and len(set(keys.values())) == len(keys), keys
    assert len(list((cache / "pairs").iterdir())) >= 1 + len(keys)


def test_cache_key_follows_the_data_content(first_load):
    splits, (_, _, _, info), _ = first_load
    model_cfg, train_cfg = P.resolve_preset(PRESET)
    train_cfg = dataclasses.replace(train_cfg, template="chat")
    original_pairs = P.tofu_corpus(splits.retain_train + splits.forget_train)
    retain_pairs = P.tofu_corpus(splits.retain_train)
    assert P.pair_cache_key(original_pairs, retain_pairs, model_cfg, train_cfg) == info["pair"]["key"]
    edited = [dict(r) for r in splits.forget_train]
    edited[3]["answer"] += " (edited)"
    edited_pairs = P.tofu_corpus(splits.retain_train + edited)
    assert P.pair_cache_key(edited_pairs, retain_pairs, model_cfg, train_cfg) != info["pair"]["key"]
    assert info["pair"]["data_sha256"]["forget"] == P.corpus_sha256(P.tofu_corpus(splits.forget_train))


def test_empty_records_are_refused(tmp_path):
    with pytest.raises(ValueError, match="forget and retain records"):
        P.get_or_train_tofu_pair([], [{"question": "Q?", "answer": "A."}], cache_dir=tmp_path)


# ------------------------------------------------------------------------------------------------------------
# The settings
# ------------------------------------------------------------------------------------------------------------


def test_real_data_without_model_needs_a_pretrained_preset(tofu_dir):
    data = DataConfig(data=str(tofu_dir))
    methods = ["original", "retrain", "ga"]
    for preset in ("default", "smoke"):
        found = problems(ModelConfig(model_preset=preset), data, methods)
        needs = [p for p in found if "needs a model pair" in p]
        assert len(needs) == 1 and "--model CKPT" in needs[0] and "--model-preset smollm2" in needs[0], found
    unknown = problems(ModelConfig(model_preset="huge"), data, methods)
    assert any("--model-preset huge is unknown" in p for p in unknown)
    for preset in ("smollm2", "smollm2_tofu"):
        assert P.fine_tunable(preset)
        assert problems(ModelConfig(model_preset=preset), data, methods) == []  # the twin serves FQ and retrain
        assert pair_seed_problems([0, 1], ModelConfig(model_preset=preset), data) == []
    assert not P.fine_tunable("default") and not P.fine_tunable("smoke") and not P.fine_tunable("huge")


def test_fine_tuned_twin_replaces_the_retain_arguments(tofu_dir, tmp_path):
    data = DataConfig(data=str(tofu_dir))
    logs = tmp_path / "eval.json"
    logs.write_text("{}")
    for extra in ({"retain_model": "owner/retain"}, {"retain_logs": str(logs)}):
        found = problems(ModelConfig(model_preset="smollm2", **extra), data, ["original"])
        assert any("go with --model" in p for p in found), found


def test_a_given_model_keeps_one_pair_and_synthetic_data_is_unchanged(tofu_dir, tmp_path):
    data = DataConfig(data=str(tofu_dir))
    given = ModelConfig(model_preset="smollm2", model=str(tmp_path), allow_no_retain=True)
    assert problems(given, data, ["original"]) == []
    assert any("has one model pair" in p for p in pair_seed_problems([0, 1], given, data))
    assert not protocol_models.fine_tunes_here(given, data)
    synthetic = DataConfig()
    assert problems(ModelConfig(model_preset="smoke"), synthetic, ["retrain"]) == []
    assert not protocol_models.fine_tunes_here(ModelConfig(model_preset="smollm2"), synthetic)


def test_load_models_refuses_a_from_scratch_preset_on_real_data(tofu_dir, tmp_path):
    with pytest.raises(ValueError, match="cannot be fine-tuned on real data"):
        load_models(ModelConfig(model_preset="smoke", cache_dir=str(tmp_path)), _splits(tofu_dir), progress=False)


# ------------------------------------------------------------------------------------------------------------
# experiments/tofu.py end to end
# ------------------------------------------------------------------------------------------------------------


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_experiment_fine_tunes_its_pairs_on_real_tofu(tofu_dir, preset, cache, tmp_path):
    tofu = _load_script()
    out = tmp_path / "run"
    tofu.main(
        [
            "--preset",
            "smoke",
            "--data",
            str(tofu_dir),
            "--max-authors",
            "1",
            "--limit",
            "5",
            "--no-progress",
            "--model-preset",
            preset,
            "--template",
            "chat",
            "--cache-dir",
            str(cache),
            "--max-new-tokens",
            "12",
            "--methods",
            "original",
            "retrain",
            "ga",
            "--epochs",
            "1",
            "--pair-seeds",
            "0",
            "1",
            "--out",
            str(out),
        ]
    )
    rows = _read_csv(out / "summary.csv")
    cells = {(r["method"], r["pair_seed"]) for r in rows if r["seed"] != "mean" and r["seed"] != "std"}
    assert {("original", "0"), ("retrain", "0"), ("ga", "0"), ("ga", "1")} <= cells
    for row in rows:
        if row["method"] == "retrain" and row["pair_seed"] in ("0", "1"):
            assert float(row["forget_quality"]) == 1.0  # the fine-tuned twin is its own reference
    config = json.loads((out / "config.json").read_text())
    by_pair = config["models_by_pair_seed"]
    assert by_pair["0"]["pair"]["key"] != by_pair["1"]["pair"]["key"]
    assert by_pair["1"]["pair"]["train_cfg"]["seed"] == 1
    assert config["models"]["pair"]["trained_on"]["retain"]["forget_items"] == 0
    assert config["data"]["n_forget_train"] == 20 and config["data"]["n_eval"]["forget"] == 5


# ------------------------------------------------------------------------------------------------------------
# SmolLM2 itself (slow)
# ------------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_smollm2_fine_tunes_on_real_tofu(tofu_dir, tmp_path, monkeypatch):
    ok, why = M.smollm2_available()
    if not ok:
        pytest.skip(why)
    quick = P.TrainConfig(epochs=1, lr=2e-4, batch_size=20, max_length=96, weight_decay=0.01)
    monkeypatch.setitem(P.PRESETS, "smollm2_quick", (P.PretrainedSpec("smollm2"), quick))
    splits = _splits(tofu_dir)
    # bf16 where the CPU multiplies it natively (or on CUDA); fp32 where bf16 would be emulated (~16x slower: this
    # test alone took ~25 min in emulated bf16), so the suite fits its time on every CPU family.
    precision = "bf16" if torch.cuda.is_available() or M.cpu_bf16_native() else "fp32"
    cfg = ModelConfig(model_preset="smollm2_quick", cache_dir=str(tmp_path), precision=precision, threads=1)
    original, retain, tokenizer, info = load_models(cfg, splits, progress=False)
    pair = info["pair"]
    assert pair["original"]["n_pairs"] == 40 and pair["retain"]["n_pairs"] == 20
    assert all(0 < loss < 20 for role in ("original", "retain") for loss in pair[role]["epoch_loss"])
    assert pair["train_cfg"]["precision"] == precision
    assert getattr(original, "_bs_ref_precision", "fp32") == precision
    assert "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)
