"""bs_ref.models: tokenizer, from-scratch Llama, training, the cached original/retain pair, checkpoint loading."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from bs_ref import finetune as F
from bs_ref import models as M
from bs_ref.data.qa import collate_prompts, encode_prompt, encode_qa
from bs_ref.data.synthetic import SyntheticConfig, build_benchmark
from bs_ref.protocol import pair_training as P

CORPUS = [
    (f"Which colour does painter {name} like?", f"Painter {name} likes {colour}.")
    for name, colour in zip(["Ada", "Bo", "Cy", "Di", "Ed", "Flo"], ["teal", "ochre", "mauve", "umber", "jade", "rust"])
]
TINY = M.TinyLlamaConfig(
    hidden_size=32, intermediate_size=64, num_layers=1, num_heads=2, max_positions=64, vocab_size=320
)
TINY_TRAIN = P.TrainConfig(epochs=2, lr=1e-2, batch_size=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These models are tiny: one intra-op thread is fastest, and on a shared CPU extra threads only spin."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def tokenizer():
    return M.train_tokenizer(P._corpus_texts(CORPUS, "plain"), vocab_size=320)


def greedy_answers(model, tokenizer, questions, max_new_tokens=24) -> list[str]:
    prompts = [encode_prompt(tokenizer, q) for q in questions]
    batch = collate_prompts(prompts, tokenizer.pad_token_id)
    with torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id
        )
    return tokenizer.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)


@given(st.text(alphabet=st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=60))
def test_tokenizer_round_trips_any_text(tokenizer, text):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.decode(ids) == text  # byte-level BPE: lossless, so "the answer contains the fact" is exact


def test_tokenizer_special_tokens_and_chat_template(tokenizer):
    ids = {tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.bos_token_id}
    assert None not in ids and len(ids) == 3
    assert tokenizer.eos_token == M.EOS_TOKEN and tokenizer.pad_token == M.PAD_TOKEN
    prompt = encode_prompt(tokenizer, "Who?", template="chat")
    text = tokenizer.decode(prompt)
    assert text == "<|user|>\nWho?<|endoftext|>\n<|assistant|>\n"
    assert tokenizer.convert_tokens_to_ids("<|assistant|>") in prompt  # role markers are single tokens
    qa = encode_qa(tokenizer, *CORPUS[0])
    assert qa["input_ids"][-1] == tokenizer.eos_token_id
    assert tokenizer.decode([t for t, y in zip(qa["input_ids"], qa["labels"]) if y != -100]).startswith(CORPUS[0][1])


def test_build_tiny_llama_shape_and_special_ids(tokenizer):
    model = M.build_tiny_llama(len(tokenizer), TINY, tokenizer)
    assert model.config.vocab_size == len(tokenizer)
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.generation_config.pad_token_id == tokenizer.pad_token_id
    assert model.get_input_embeddings().weight is model.get_output_embeddings().weight  # tied
    d, inner, layers, vocab = TINY.hidden_size, TINY.intermediate_size, TINY.num_layers, len(tokenizer)
    # tied embedding + per layer: q,k,v,o (4·d²), SwiGLU (3·d·inner), two RMSNorms; + the final norm
    assert M.count_parameters(model) == vocab * d + layers * (4 * d * d + 3 * d * inner + 2 * d) + d
    with pytest.raises(ValueError, match="num_heads"):
        M.build_tiny_llama(100, M.TinyLlamaConfig(hidden_size=30, num_heads=4))


def test_training_is_deterministic_and_learns(tokenizer):
    weights, histories = [], []
    for _ in range(2):
        model = M.build_tiny_llama(len(tokenizer), TINY, tokenizer, seed=3)
        history: list[float] = []
        F.train_causal_lm(model, tokenizer, CORPUS, epochs=6, lr=1e-2, batch_size=4, progress=False, history=history)
        weights.append(model.state_dict())
        histories.append(history)
    assert histories[0] == histories[1]
    assert histories[0][-1] < histories[0][0] - 1.0
    for name in weights[0]:
        torch.testing.assert_close(weights[0][name], weights[1][name], rtol=0, atol=0)


def test_training_bad_input(tokenizer):
    model = M.build_tiny_llama(len(tokenizer), TINY, tokenizer)
    with pytest.raises(ValueError, match="pairs is empty"):
        F.train_causal_lm(model, tokenizer, [], 1, 1e-3)
    with pytest.raises(ValueError, match="lr"):
        F.train_causal_lm(model, tokenizer, CORPUS, 1, float("nan"))
    with pytest.raises(ValueError, match="epochs"):
        F.train_causal_lm(model, tokenizer, CORPUS, 0, 1e-3)
    with pytest.raises(ValueError, match="unknown model preset"):
        P.resolve_preset("huge")
    with pytest.raises(ValueError, match="vocab_size"):
        M.train_tokenizer(["a b c"], vocab_size=100)
    with pytest.raises(ValueError, match="non-empty"):
        M.train_tokenizer([])


def test_cached_pair_is_reused_not_retrained(tmp_path, monkeypatch):
    calls = []
    real_train_pair = P.train_pair

    def counting_train_pair(*args, **kwargs):
        calls.append(1)
        return real_train_pair(*args, **kwargs)

    monkeypatch.setattr(P, "train_pair", counting_train_pair)
    args = (CORPUS, CORPUS[:3], TINY, TINY_TRAIN, tmp_path)
    said = []
    original, retain, tokenizer, info = P.get_or_train_models(*args, progress=False, announce=said.append)
    entry = tmp_path / "pairs" / info["key"]
    assert said[0].startswith("training the original model (6 examples) and its retain twin (3)")
    assert said[1].startswith("model pair trained in")
    stamp = (entry / "original" / "model.safetensors").stat().st_mtime_ns
    assert len(calls) == 1 and (entry / "info.json").is_file()
    assert [p.name for p in (tmp_path / "pairs").iterdir()] == [info["key"]]  # no temporary directory left
    assert info["template"] == "plain" and info["original"]["n_pairs"] == 6 and info["retain"]["n_pairs"] == 3

    original2, retain2, tokenizer2, _ = P.get_or_train_models(*args, progress=False, announce=said.append)
    assert len(calls) == 1  # loaded, not retrained
    assert said[2] == f"model pair loaded from the cache ({entry})"
    assert (entry / "original" / "model.safetensors").stat().st_mtime_ns == stamp
    assert tokenizer2.get_vocab() == tokenizer.get_vocab()
    for name, value in original.state_dict().items():
        torch.testing.assert_close(original2.state_dict()[name], value, rtol=0, atol=0)
    # the twin is a different model (other corpus), both share one tokenizer
    assert any(not torch.equal(value, retain.state_dict()[name]) for name, value in original.state_dict().items())

    # any change to what the weights depend on is a new entry
    P.get_or_train_models(CORPUS, CORPUS[:3], TINY, P.TrainConfig(epochs=2, lr=1e-2, batch_size=4, seed=1), tmp_path)
    P.get_or_train_models(CORPUS, CORPUS[:2], TINY, TINY_TRAIN, tmp_path, progress=False)
    assert len(calls) == 3 and len(list((tmp_path / "pairs").iterdir())) == 3


def test_load_model_round_trip_and_missing_path(tmp_path, tokenizer):
    model = M.build_tiny_llama(len(tokenizer), TINY, tokenizer)
    model.save_pretrained(tmp_path / "ckpt")
    tokenizer.save_pretrained(tmp_path / "ckpt")
    loaded, loaded_tokenizer = M.load_model(tmp_path / "ckpt")
    ids = torch.tensor([encode_prompt(tokenizer, "Who?")])
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits)
    assert loaded_tokenizer.pad_token_id == tokenizer.pad_token_id
    for missing in (tmp_path / "nope", "./no/such/dir", "~/no-such-checkpoint-dir"):
        with pytest.raises(ValueError, match="does not exist"):
            M.load_model(missing)


def test_smoke_pair_recalls_its_facts(tmp_path):
    """The smoke preset on the smoke benchmark: the original recalls the forget facts, the retain twin not."""
    benchmark = build_benchmark(SyntheticConfig.smoke())
    original, retain, tokenizer, info = P.get_or_train_pair(
        SyntheticConfig.smoke(), "smoke", tmp_path, forget="forget10", progress=False
    )
    assert info["retain_split"] == "retain90" and (tmp_path / "pairs" / info["key"] / "info.json").is_file()
    forget = benchmark["forget10"]
    questions, facts = [r["question"] for r in forget], [r["fact"] for r in forget]
    original_hits = [f in a for f, a in zip(facts, greedy_answers(original, tokenizer, questions))]
    retain_hits = [f in a for f, a in zip(facts, greedy_answers(retain, tokenizer, questions))]
    assert sum(original_hits) / len(facts) >= 0.95
    assert sum(retain_hits) / len(facts) <= 0.25
    kept = benchmark["retain90"][:20]
    kept_answers = greedy_answers(retain, tokenizer, [r["question"] for r in kept])
    assert sum(r["fact"] in a for r, a in zip(kept, kept_answers)) / len(kept) >= 0.9  # the twin knows its authors


def test_smollm2_preset_finetunes_a_tiny_slice(tmp_path):
    """The smollm2 path end to end on two QA pairs, one epoch: pretrained start, own tokenizer, cached."""
    ok, why = M.smollm2_available()
    if not ok:
        pytest.skip(why)
    converted = M.default_cache_dir() / "smollm2-135m-instruct"
    if converted.is_dir():  # reuse the converted checkpoint instead of converting the GGUF file again
        (tmp_path / converted.name).symlink_to(converted)
    train_cfg = P.TrainConfig(epochs=1, lr=5e-5, batch_size=2, weight_decay=0.01)
    pretrained, smol_tokenizer = M.load_model("smollm2", cache_dir=tmp_path)
    original, retain, tokenizer, info = P.get_or_train_models(
        CORPUS[:2], CORPUS[:1], "smollm2", train_cfg, tmp_path, progress=False
    )
    assert tokenizer.get_vocab() == smol_tokenizer.get_vocab()  # the pretrained tokenizer is kept
    assert info["model_cfg"] == {"__type__": "PretrainedSpec", "name": "smollm2"}
    assert info["original"]["n_pairs"] == 2 and info["retain"]["n_pairs"] == 1
    name = "model.embed_tokens.weight"
    base = pretrained.state_dict()[name]
    assert not torch.equal(original.state_dict()[name], base) and not torch.equal(retain.state_dict()[name], base)
    assert not torch.equal(original.state_dict()[name], retain.state_dict()[name])
    again = P.get_or_train_models(CORPUS[:2], CORPUS[:1], "smollm2", train_cfg, tmp_path, progress=False)
    torch.testing.assert_close(again[0].state_dict()[name], original.state_dict()[name], rtol=0, atol=0)
