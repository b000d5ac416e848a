"""A tiny Llama trained inside the tests (~1 s), shared by tests/test_hf.py, test_lora.py, test_multiprocess.py and
the two-process worker. The same records and sizes as tests/test_unlearn.py."""

from __future__ import annotations

import torch
from transformers import LlamaForCausalLM

from bs_ref.finetune import train_causal_lm
from bs_ref.models import TinyLlamaConfig, build_tiny_llama, train_tokenizer

COLOURS = ["red", "blue", "green", "amber", "violet", "silver"]
RECORDS = [
    {"question": f"What colour is the door of house {i}?", "answer": f"The door of house {i} is {COLOURS[i % 6]}."}
    for i in range(16)
]
FORGET, RETAIN = RECORDS[:4], RECORDS[4:]


def train_tiny():
    """(state_dict, tokenizer, config): a 1-layer Llama trained on RECORDS until the answers are likely."""
    torch.manual_seed(0)
    pairs = [(r["question"], r["answer"]) for r in RECORDS]
    tokenizer = train_tokenizer([f"Question: {q}\nAnswer: {a}" for q, a in pairs], vocab_size=320)
    model = build_tiny_llama(len(tokenizer), TinyLlamaConfig(32, 64, 1, 2, 64, 320), tokenizer)
    train_causal_lm(model, tokenizer, pairs, epochs=40, lr=2e-2, batch_size=16, progress=False)
    return {k: v.clone() for k, v in model.state_dict().items()}, tokenizer, model.config


def fresh(tiny):
    """(a new model with the trained weights, the tokenizer)."""
    state, tokenizer, config = tiny
    model = LlamaForCausalLM(config)
    model.load_state_dict(state)
    return model, tokenizer


def eval_records(records):
    """TOFU evaluation records (paraphrased and perturbed answers) from RECORDS-style question/answer pairs."""
    out = []
    for r in records:
        house = r["question"].split("house ")[1].rstrip("?")
        colour = r["answer"].rstrip(".").split()[-1]
        wrong = [c for c in COLOURS if c != colour][:3]
        out.append(
            {
                **r,
                "paraphrased_answer": f"House {house} has a {colour} door.",
                "perturbed_answer": [f"The door of house {house} is {c}." for c in wrong],
            }
        )
    return out


def max_abs_diff(a: dict, b: dict) -> float:
    """The largest |a - b| over every tensor of two state dicts with the same keys."""
    assert a.keys() == b.keys(), set(a) ^ set(b)
    return max(float((a[k].double() - b[k].double()).abs().max()) if a[k].numel() else 0.0 for k in a)
