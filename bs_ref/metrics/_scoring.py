"""Model-facing primitives on token ids: batched teacher-forced scoring and batched generation.

Everything here works on pre-tokenised inputs (lists of token ids), so it is independent of prompt
templates; ``metrics/tofu.py`` turns questions and answers into ids with ``bs_ref.data``.

* ``score_answers``: one forward pass per padded batch gives, for every (prompt, answer) candidate, the
  log-probability of each answer token and whether the teacher-forced argmax equals it. Candidates are
  de-duplicated (an item's candidates are computed once and reused by every metric) and sorted by length
  so that batches carry little padding. Right padding: causal attention keeps every real position of a
  row independent of the padding after it, so the scores do not depend on the batch.
* ``generate``: left-padded batches through ``model.generate`` with the KV cache, greedy or sampled,
  stopping at every end-of-sequence id the tokenizer and the model's generation config declare (this
  includes a chat template's end-of-turn token when the checkpoint marks it as EOS, as SmolLM2 and
  Llama-3 Instruct do). Generated ids are cut at the first stop id.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class AnswerScores:
    """Teacher-forced scores of one answer: per-token log-probs and "argmax == label" flags, shape [|y|]."""

    token_logprobs: np.ndarray
    argmax_matches: np.ndarray

    @property
    def n_tokens(self) -> int:
        return int(self.token_logprobs.size)

    @property
    def sum_logprob(self) -> float:
        return float(self.token_logprobs.sum())

    @property
    def mean_nll(self) -> float:
        """Mean NLL over the answer tokens (the TOFU per-item loss; P = exp(-mean_nll))."""
        return float(-self.token_logprobs.mean())


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


def pad_token_id_of(tokenizer) -> int:
    """The tokenizer's pad id, falling back to EOS (pad positions are masked, so any id works)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad)


END_OF_TURN_PROBE = "bsrefendofturnprobe"


def chat_end_of_turn_id(tokenizer) -> int | None:
    """The special token the chat template writes right after an assistant message, if any.

    Found by rendering a one-turn conversation whose reply is a probe word and tokenising what follows
    it, so no model-specific string is hard-coded (SmolLM2 gives ``<|im_end|>``, Llama-3 ``<|eot_id|>``).
    """
    if not getattr(tokenizer, "chat_template", None):
        return None
    try:
        text = tokenizer.apply_chat_template(
            [{"role": "user", "content": "q"}, {"role": "assistant", "content": END_OF_TURN_PROBE}], tokenize=False
        )
    except Exception:  # a template that rejects this conversation: fall back to EOS only
        return None
    tail = text[text.rfind(END_OF_TURN_PROBE) + len(END_OF_TURN_PROBE) :].lstrip(" ")
    ids = tokenizer(tail, add_special_tokens=False)["input_ids"] if tail else []
    return int(ids[0]) if ids and int(ids[0]) in set(tokenizer.all_special_ids) else None


def stop_token_ids(tokenizer, model=None, template: str = "plain") -> list[int]:
    """Every EOS id from the tokenizer and the model's generation config, plus the chat template's
    end-of-turn token when ``template == "chat"`` (no model-specific strings)."""
    values = [tokenizer.eos_token_id, getattr(getattr(model, "generation_config", None), "eos_token_id", None)]
    if template == "chat":
        values.append(chat_end_of_turn_id(tokenizer))
    ids: list[int] = []
    for value in values:
        for i in value if isinstance(value, (list, tuple)) else [value]:
            if i is not None and int(i) not in ids:
                ids.append(int(i))
    if not ids:
        raise ValueError("the tokenizer defines no eos_token; generation would never stop (set tokenizer.eos_token)")
    return ids


def batches(order: Sequence[int], batch_size: int):
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


@torch.no_grad()
def score_answers(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int = 32,
) -> list[AnswerScores]:
    """Teacher-forced scores of ``answers[i]`` after ``prompts[i]``, batched, de-duplicated, no grad."""
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers; pass one prompt per answer")
    keys = [(tuple(int(t) for t in p), tuple(int(t) for t in a)) for p, a in zip(prompts, answers)]
    for p, a in keys:
        if not p or not a:
            raise ValueError("every candidate needs a non-empty prompt and a non-empty answer (empty string given?)")
    unique = list(dict.fromkeys(keys))
    order = sorted(range(len(unique)), key=lambda i: -(len(unique[i][0]) + len(unique[i][1])))
    device = model_device(model)
    was_training = model.training
    model.eval()
    results: dict[tuple, AnswerScores] = {}
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    for chunk in batches(order, batch_size):
        rows = [unique[i] for i in chunk]
        width = max(len(p) + len(a) for p, a in rows)
        input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
        attention = torch.zeros((len(rows), width), dtype=torch.long)
        answer_mask = torch.zeros((len(rows), width), dtype=torch.bool)  # positions holding answer tokens
        for r, (p, a) in enumerate(rows):
            seq = list(p) + list(a)
            input_ids[r, : len(seq)] = torch.tensor(seq)
            attention[r, : len(seq)] = 1
            answer_mask[r, len(p) : len(seq)] = True
        # Logits only from the first position that predicts an answer token (saves the prompt's share of
        # the [B, T, V] logits); position t predicts token t + 1.
        first = min(len(p) for p, _ in rows) - 1
        kwargs = {"logits_to_keep": width - first} if keeps_logits else {}
        logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs).logits
        logits = logits[:, -(width - first) :]
        predict = answer_mask[:, first + 1 :].to(device)
        z = logits[:, :-1][predict].float()
        targets = input_ids[:, first + 1 :].to(device)[predict]
        token_logprobs = z.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)
        matches = z.argmax(-1) == targets
        lengths = predict.sum(1).tolist()
        for key, lp, m in zip(rows, token_logprobs.split(lengths), matches.split(lengths)):
            results[key] = AnswerScores(lp.double().cpu().numpy(), m.cpu().numpy())
    model.train(was_training)
    return [results[k] for k in keys]


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    pad_token_id: int,
    stop_ids: Sequence[int],
    max_new_tokens: int = 200,
    batch_size: int = 32,
    num_return_sequences: int = 1,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
) -> list[list[list[int]]]:
    """Continuations of every prompt: result[i][j] = the j-th new-token list for prompt i (stop id cut).

    Left-padded batches (prompts sorted by length), greedy unless ``do_sample``; sampling is seeded
    (the same seed, prompts and batch size give the same samples) without touching the global RNG.
    """
    from transformers import GenerationConfig

    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    # Every decoding knob is set here, so nothing is inherited from the checkpoint's generation_config
    # (a repetition penalty or beam count there would silently change "greedy").
    config = GenerationConfig(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        do_sample=do_sample,
        num_beams=1,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
        num_return_sequences=num_return_sequences,
        pad_token_id=pad_token_id,
        eos_token_id=list(stop_ids),
        **({"temperature": temperature, "top_p": top_p, "top_k": 0} if do_sample else {}),
    )
    stop = set(int(i) for i in stop_ids)
    device = model_device(model)
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i]))
    out: list[list[list[int]]] = [[] for _ in prompts]
    # Sampling is seeded inside a forked RNG, so evaluating never moves the caller's random stream.
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        if do_sample:
            torch.manual_seed(seed)
        for chunk in batches(order, batch_size):
            width = max(len(prompts[i]) for i in chunk)
            input_ids = torch.full((len(chunk), width), pad_token_id, dtype=torch.long)
            attention = torch.zeros((len(chunk), width), dtype=torch.long)
            for r, i in enumerate(chunk):
                input_ids[r, width - len(prompts[i]) :] = torch.tensor(list(prompts[i]))
                attention[r, width - len(prompts[i]) :] = 1
            sequences = model.generate(
                input_ids=input_ids.to(device), attention_mask=attention.to(device), generation_config=config
            )
            new_tokens = sequences[:, width:].cpu().tolist()
            for r, i in enumerate(chunk):
                for seq in new_tokens[r * num_return_sequences : (r + 1) * num_return_sequences]:
                    cut = next((t for t, tok in enumerate(seq) if tok in stop), len(seq))
                    out[i].append(seq[:cut])
    model.train(was_training)
    return out
