"""The generation layer: encode, score, generate and stop tokens on token ids, one implementation for every
caller that turns a model into answers or answer scores (belief sampling for BS-S and evaluation alike).

* ``encode_pair``: (prompt ids, answer ids + EOS) of a question/answer pair exactly as training sees them
  (``bs_ref.data.qa.encode_prompt`` / ``encode_answer``, under the prompt template "plain" or "chat").
* ``score_answers``: teacher-forced scores of (prompt, answer) pairs: per answer token its log-prob (float32
  logits, log-softmax in float32, returned as float64) and whether the argmax equals it. Pairs are
  de-duplicated (each distinct pair runs once) and sorted longest first so that batches carry little padding;
  right padding, so with causal attention a row's scores do not depend on what else is in its batch.
  ``mean_logprobs`` gives the mean token log-prob of each answer from the same scores (NaN for an empty
  answer).
* ``Decoding``: how answers are generated (the token budget, the batch size, greedy or N samples at a
  temperature / top-p, beam search), one frozen object that generation, evaluation and the attacks share.
* ``generate``: left-padded batches through ``model.generate`` with the KV cache, greedy, sampled
  (temperature, top-p, no top-k truncation) or beam search, as ``Decoding`` says. Every decoding knob is set
  explicitly, so nothing is inherited from a checkpoint's generation config. Sampling is seeded inside a
  forked RNG: the same seed, prompts and batching give the same answers, and the caller's random stream does
  not move. Each continuation is cut at its first stop id; optionally the log-prob of every generated token
  is read off the raw scores (``ChosenTokenLogprob``). ``generate_answers`` encodes questions, generates and
  decodes.

The stop rule (``stop_token_ids``), a function of (tokenizer, model, template): an answer ends at

    the tokenizer's EOS token            (required: every trained answer ends with it)
  + the model's generation-config EOS id(s)
  + the chat template's end-of-turn token, when and only when the prompt template is "chat"

in that order, without repeats. The end-of-turn token is found by rendering a one-turn conversation whose
reply is a probe word and taking the first special token the template writes after it (SmolLM2:
``<|im_end|>``, Llama-3: ``<|eot_id|>``, Gemma: ``<end_of_turn>``), so no model-specific string appears here.
Why only under "chat": answers are trained as prompt + answer + EOS under either template; with chat prompts
the model is inside an assistant turn, where ending the turn is a legitimate end of the answer, while after a
plain "Question: ... Answer:" prompt a chat token is just another token. For tokenizers whose template ends
a turn with EOS (SmolLM2, the from-scratch tokenizer of ``bs_ref.models``) both templates give {EOS}.

Shapes: prompts and answers are lists of token ids; ``left_pad`` gives input_ids / attention_mask [B, T] with
the padding on the left (generation), ``right_pad`` input_ids / labels / attention_mask [B, T] with the
padding on the right and labels = IGNORE_INDEX there (scoring, training rows). ``generate`` returns
``result[i][j]``, the j-th ``Generation`` of prompt i.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList

from bs_ref import checks
from bs_ref.data.qa import TEMPLATES, encode_answer, encode_prompt
from bs_ref.losses import IGNORE_INDEX

END_OF_TURN_PROBE = "bsrefendofturnprobe"


# ----------------------------------------------------------------------------------------------------------
# Tokenizer and model facts
# ----------------------------------------------------------------------------------------------------------


def model_device(model: torch.nn.Module) -> torch.device:
    """The device of the model's (first) parameters."""
    return next(model.parameters()).device


def pad_token_id_of(tokenizer) -> int:
    """The tokenizer's pad id, falling back to EOS (pad positions are masked, so any id works)."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if pad is None:
        raise ValueError("the tokenizer has neither a pad nor an eos token; set tokenizer.pad_token")
    return int(pad)


def chat_end_of_turn_id(tokenizer) -> int | None:
    """The id of the special token a chat template writes right after an assistant message, or None when the
    tokenizer has no chat template (or the template ends a turn with plain text)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": END_OF_TURN_PROBE}]
    try:
        rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception:  # a template that rejects this conversation shape: fall back to EOS alone
        return None
    if not isinstance(rendered, str) or END_OF_TURN_PROBE not in rendered:
        return None
    after_turn = rendered.rpartition(END_OF_TURN_PROBE)[2]
    special = set(tokenizer.all_special_ids)
    special.update(i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special)
    for tok in tokenizer(after_turn, add_special_tokens=False)["input_ids"]:
        if tok in special:
            return int(tok)
    return None


def stop_token_ids(tokenizer, model=None, template: str = "plain") -> list[int]:
    """Token ids that end an answer (the stop rule of the module docstring): the tokenizer's EOS, the model's
    generation-config EOS id(s), and the chat template's end-of-turn token when ``template == "chat"``."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; choose one of {', '.join(TEMPLATES)}")
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise ValueError(
            "the tokenizer has no EOS token, so generated answers could never end; set tokenizer.eos_token "
            "(e.g. tokenizer.add_special_tokens({'eos_token': ...})) to the token that ends an answer"
        )
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    values = [tokenizer.eos_token_id, *(config_eos if isinstance(config_eos, (list, tuple)) else [config_eos])]
    if template == "chat":
        values.append(chat_end_of_turn_id(tokenizer))
    return list(dict.fromkeys(int(i) for i in values if i is not None))


# ----------------------------------------------------------------------------------------------------------
# Encoding and padding
# ----------------------------------------------------------------------------------------------------------


def encode_pair(tokenizer, question: str, answer: str, template: str = "plain") -> tuple[list[int], list[int]]:
    """(prompt ids, answer ids + EOS) exactly as training sees them (``bs_ref.data.qa.encode_qa`` split at
    the first labelled token)."""
    return encode_prompt(tokenizer, question, template=template), encode_answer(tokenizer, answer)


def left_pad(prompts: Sequence[Sequence[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input_ids and attention_mask [B, T] for generation."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        if len(p):
            input_ids[r, width - len(p) :] = torch.tensor(list(p), dtype=torch.long)
            attention_mask[r, width - len(p) :] = 1
    return input_ids, attention_mask


def right_pad(ids: Sequence[Sequence[int]], labels: Sequence[Sequence[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / labels (IGNORE_INDEX on padding) / attention_mask [B, T]."""
    width = max([len(x) for x in ids] + [1])
    out = {
        "input_ids": torch.full((len(ids), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros((len(ids), width), dtype=torch.long),
    }
    for r, (x, y) in enumerate(zip(ids, labels)):
        out["input_ids"][r, : len(x)] = torch.tensor(list(x), dtype=torch.long)
        out["labels"][r, : len(y)] = torch.tensor(list(y), dtype=torch.long)
        out["attention_mask"][r, : len(x)] = 1
    return out


def batches(order: Sequence[int], batch_size: int):
    """Consecutive chunks of ``order`` of at most ``batch_size`` entries."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    for start in range(0, len(order), batch_size):
        yield order[start : start + batch_size]


# ----------------------------------------------------------------------------------------------------------
# Teacher-forced scoring
# ----------------------------------------------------------------------------------------------------------


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


@torch.no_grad()
def score_answers(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int = 32,
    share_prompts: bool = False,
) -> list[AnswerScores]:
    """Teacher-forced scores of ``answers[i]`` after ``prompts[i]``, batched, de-duplicated, no grad.

    ``share_prompts``: each distinct prompt runs once and its answers continue from its KV cache
    (``_score_shared``) instead of every answer re-reading its prompt. The math is the same; the floating point
    is not bit-identical (other matmul shapes; of order 1e-5 in a token log-prob). It pays where several answers
    share a prompt (TOFU: the answer, its paraphrase and the perturbed answers of one question) and needs a model
    whose forward takes a cache and position ids (a model without them is scored row by row)."""
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers; pass one prompt per answer")
    keys = [(tuple(int(t) for t in p), tuple(int(t) for t in a)) for p, a in zip(prompts, answers)]
    for p, a in keys:
        if not p or not a:
            raise ValueError("every candidate needs a non-empty prompt and a non-empty answer (empty string given?)")
    unique = list(dict.fromkeys(keys))
    was_training = model.training
    model.eval()
    try:
        shared = share_prompts and _cache_argument(model) is not None
        results = (_score_shared if shared else _score_rows)(model, unique, pad_token_id, batch_size)
    finally:
        model.train(was_training)
    return [results[k] for k in keys]


def _score_rows(model, unique: list[tuple], pad_token_id: int, batch_size: int) -> dict[tuple, AnswerScores]:
    """``score_answers`` row by row: each (prompt, answer) its own right-padded row, longest first."""
    order = sorted(range(len(unique)), key=lambda i: -(len(unique[i][0]) + len(unique[i][1])))
    device = model_device(model)
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
    return results


def _cache_argument(model) -> str | None:
    """The name under which ``model.forward`` takes a KV cache ("cache", or "past_key_values" in older
    ``transformers``), or None when it takes neither, or no position ids, by name (then prompts are not shared)."""
    parameters = inspect.signature(model.forward).parameters
    if "position_ids" not in parameters:
        return None
    return next((name for name in ("cache", "past_key_values") if name in parameters), None)


def _score_shared(model, unique: list[tuple], pad_token_id: int, batch_size: int) -> dict[tuple, AnswerScores]:
    """``score_answers`` with each distinct prompt run once. A batch holds whole prompts, longest first, with at
    most ``batch_size`` answers in all (a prompt with more answers is a batch of its own): the prompts run
    left-padded (position ids from the mask, as in generation) and give their KV cache and the logit at their
    last position, which predicts every answer's first token; the cache is repeated once per answer and the
    answers run right-padded after it, at positions continuing each prompt's own length."""
    by_prompt: dict[tuple, list[int]] = {}
    for i, (p, _) in enumerate(unique):
        by_prompt.setdefault(p, []).append(i)
    results: dict[tuple, AnswerScores] = {}
    batch: list[tuple] = []
    for p in sorted(by_prompt, key=lambda q: -len(q)):
        if batch and sum(len(by_prompt[q]) for q in batch) + len(by_prompt[p]) > batch_size:
            results |= _score_prompt_batch(model, unique, {q: by_prompt[q] for q in batch}, pad_token_id)
            batch = []
        batch.append(p)
    if batch:
        results |= _score_prompt_batch(model, unique, {q: by_prompt[q] for q in batch}, pad_token_id)
    return results


def _score_prompt_batch(model, unique: list[tuple], answers_of: dict[tuple, list[int]], pad_token_id: int) -> dict:
    """The scores of one batch of ``_score_shared``: ``answers_of`` maps each prompt to its answers' indices in
    ``unique``."""
    device, cache_name = model_device(model), _cache_argument(model)
    keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
    prompt_ids, prompt_mask = left_pad(list(answers_of), pad_token_id)
    positions = (prompt_mask.cumsum(-1) - 1).clamp(min=0)
    head = model(
        input_ids=prompt_ids.to(device),
        attention_mask=prompt_mask.to(device),
        position_ids=positions.to(device),
        use_cache=True,
        **({"logits_to_keep": 1} if keeps_logits else {}),
    )
    cache = getattr(head, "cache", None) or head.past_key_values
    owner = [k for k, rows in enumerate(answers_of.values()) for _ in rows]  # the prompt of every answer row
    chosen = [i for rows in answers_of.values() for i in rows]
    owner_index = torch.tensor(owner, device=device)
    cache.batch_select_indices(owner_index)  # one copy of its prompt's cache per answer row
    width = max(len(unique[i][1]) for i in chosen)
    answer_ids = torch.full((len(chosen), width), pad_token_id, dtype=torch.long)
    answer_mask = torch.zeros((len(chosen), width), dtype=torch.long)
    for r, i in enumerate(chosen):
        answer_ids[r, : len(unique[i][1])] = torch.tensor(unique[i][1])
        answer_mask[r, : len(unique[i][1])] = 1
    rows_mask = prompt_mask.to(device)[owner_index]
    tail = model(
        input_ids=answer_ids.to(device),
        attention_mask=torch.cat([rows_mask, answer_mask.to(device)], dim=1),
        position_ids=rows_mask.sum(1, keepdim=True) + torch.arange(width, device=device)[None],
        use_cache=False,
        **{cache_name: cache},
    )
    # position t of a row predicts answer token t: the prompt's last logit, then the answer's own but its last
    logits = torch.cat([head.logits[:, -1:][owner_index], tail.logits[:, :-1]], dim=1)
    predict = answer_mask.bool().to(device)
    z = logits[predict].float()
    targets = answer_ids.to(device)[predict]
    token_logprobs = z.gather(-1, targets[:, None]).squeeze(-1) - torch.logsumexp(z, dim=-1)
    matches = z.argmax(-1) == targets
    lengths = predict.sum(1).tolist()
    return {
        unique[i]: AnswerScores(lp.double().cpu().numpy(), m.cpu().numpy())
        for i, lp, m in zip(chosen, token_logprobs.split(lengths), matches.split(lengths))
    }


def mean_logprobs(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    answers: Sequence[Sequence[int]],
    pad_token_id: int,
    batch_size: int = 32,
) -> list[float]:
    """Teacher-forced mean token log-prob of each answer given its prompt (``score_answers``); NaN for a
    zero-length answer."""
    if len(prompts) != len(answers):
        raise ValueError(f"got {len(prompts)} prompts but {len(answers)} answers; pass one prompt per answer")
    filled = [i for i, a in enumerate(answers) if len(a)]
    out = [math.nan] * len(answers)
    if filled:
        chosen_prompts, chosen_answers = [prompts[i] for i in filled], [answers[i] for i in filled]
        scores = score_answers(model, chosen_prompts, chosen_answers, pad_token_id, batch_size)
        for i, s in zip(filled, scores):
            out[i] = float(s.token_logprobs.mean())
    return out


# ----------------------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------------------


class ChosenTokenLogprob(LogitsProcessor):
    """Records log π(token | prefix) of every generated token from the model's raw scores (it runs before the
    temperature/top-p warpers and changes nothing), so sampled answers need no second, teacher-forced pass.
    Only the previous step's log-probs are held: O(rows·|V|) memory."""

    def __init__(self):
        self.previous: torch.Tensor | None = None
        self.logprobs: list[torch.Tensor] = []

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self.previous is not None:  # the token chosen at the previous step is now the last input id
            self.logprobs.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = torch.log_softmax(scores.float(), dim=-1)
        return scores

    def finish(self, generated: torch.Tensor) -> torch.Tensor:
        """Per-token log-probs [rows, steps] of the generated tokens ``generated`` [rows, steps]."""
        if self.previous is not None and generated.shape[1] > len(self.logprobs):
            self.logprobs.append(self.previous.gather(1, generated[:, len(self.logprobs)][:, None]).squeeze(1))
        self.previous = None
        if not self.logprobs:
            return torch.zeros(generated.shape[0], 0)
        return torch.stack(self.logprobs, dim=1)


@dataclass
class Generation:
    """One continuation of a prompt.

    tokens          the new tokens up to, not including, the first stop id
    stop_id         that stop id; None when the continuation ran to ``max_new_tokens`` without one
    token_logprobs  with ``record_logprobs``: log π(token | prefix) under the model's raw scores (temperature
                    1) of ``tokens`` and then the stop id, float32 [len(with_stop)]; else None
    """

    tokens: list[int]
    stop_id: int | None = None
    token_logprobs: torch.Tensor | None = None

    @property
    def stopped(self) -> bool:
        return self.stop_id is not None

    @property
    def with_stop(self) -> list[int]:
        """The tokens followed by the stop id when one ended the continuation."""
        return self.tokens + ([self.stop_id] if self.stop_id is not None else [])


@dataclass(frozen=True)
class Decoding:
    """How answers are generated: the settings that generation, evaluation and the attacks share, one name each.

    max_new_tokens  the longest continuation, in tokens; None (evaluations of records only: the attacks) sizes
                    it to the answers evaluated, the longest answer's tokens + 8
    batch_size      prompts per ``model.generate`` call (and prompt/answer pairs per scoring batch)
    num_samples     0: one greedy answer per prompt; N > 0: N answers sampled at ``temperature`` and ``top_p``
                    (no top-k truncation)
    temperature     the sampling temperature (> 0; read only when sampling)
    top_p           nucleus sampling's mass (>= 1: no truncation; 0: the most likely token only)
    num_beams       > 1: beam search instead (length penalty 1, no early stopping), returning the
                    max(1, num_samples) best beams, best first

    What a call draws is fixed by the seed passed beside it (``generate(..., seed=...)``), not by this object:
    the same decoding is used with many seeds.
    """

    max_new_tokens: int | None = 200
    batch_size: int = 32
    num_samples: int = 0
    temperature: float = 1.0
    top_p: float = 1.0
    num_beams: int = 1

    def __post_init__(self):
        if self.max_new_tokens is not None and not checks.positive_int(self.max_new_tokens):
            raise ValueError(f"max_new_tokens must be an integer >= 1 (or None), got {self.max_new_tokens!r}")
        if not checks.positive_int(self.batch_size):
            raise ValueError(f"batch_size must be an integer >= 1, got {self.batch_size!r}")
        if not (checks.non_negative_int(self.num_samples) and checks.positive_int(self.num_beams)):
            raise ValueError(f"num_samples must be >= 0 and num_beams >= 1, got {self.num_samples}, {self.num_beams}")
        if self.sampled and not (checks.finite(self.temperature) and self.temperature > 0):
            raise ValueError(f"sampling needs a temperature > 0, got {self.temperature!r}")
        if not (checks.finite(self.top_p) and self.top_p >= 0):
            raise ValueError(f"top_p must be a number >= 0 (1 or more: no truncation), got {self.top_p!r}")

    @property
    def sampled(self) -> bool:
        """Whether answers are sampled (rather than greedy or beam search)."""
        return self.num_samples > 0 and self.num_beams == 1

    @property
    def returns(self) -> int:
        """Continuations per prompt: one greedy answer, the samples, or the best beams."""
        return max(1, self.num_samples)

    def greedy(self) -> Decoding:
        """The same budget and batching, one greedy answer per prompt."""
        return dataclasses.replace(self, num_samples=0, num_beams=1)


def decoding_with(decoding: Decoding | None = None, **settings) -> Decoding:
    """``decoding`` (default ``Decoding()``) with ``settings`` applied by field name. The keyword names of
    ``transformers``' ``generate`` are read too: ``do_sample=True`` with ``num_return_sequences=N`` is
    ``num_samples=N``; with ``num_beams`` > 1, ``num_return_sequences=N`` is the N best beams."""
    decoding = decoding if decoding is not None else Decoding()
    do_sample = settings.pop("do_sample", None)
    returned = settings.pop("num_return_sequences", None)
    if do_sample is not None or returned is not None:
        returned = 1 if returned is None else returned
        if settings.get("num_beams", decoding.num_beams) > 1:
            if do_sample:
                raise ValueError("beam search samples nothing: pass do_sample=False with num_beams > 1")
            settings["num_samples"] = returned
        elif do_sample:
            settings["num_samples"] = returned
        elif returned != 1:
            raise ValueError(
                f"greedy decoding returns one sequence per prompt, got num_return_sequences={returned}; "
                "pass do_sample=True (samples) or num_beams > 1 (beams)"
            )
        else:
            settings["num_samples"] = 0
    return dataclasses.replace(decoding, **settings) if settings else decoding


def generation_config(decoding: Decoding, pad_token_id: int, stop_ids: Sequence[int]) -> GenerationConfig:
    """The ``transformers.GenerationConfig`` of ``decoding``. Every knob is set here, so nothing is inherited
    from the checkpoint's generation_config (a repetition penalty or beam count there would silently change
    "greedy")."""
    if decoding.max_new_tokens is None:
        raise ValueError("max_new_tokens is None: size the budget to the answers first (or give a number)")
    knobs: dict = dict(
        max_new_tokens=decoding.max_new_tokens,
        min_new_tokens=0,
        num_return_sequences=decoding.returns,
        pad_token_id=pad_token_id,
        eos_token_id=[int(i) for i in stop_ids],
        use_cache=True,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
    )
    if decoding.num_beams > 1:
        knobs.update(do_sample=False, num_beams=decoding.num_beams, length_penalty=1.0, early_stopping=False)
    elif decoding.sampled:  # top_k=0: no hidden top-50 truncation from the library default
        temperature, top_p = float(decoding.temperature), float(decoding.top_p)
        knobs.update(do_sample=True, num_beams=1, temperature=temperature, top_p=top_p, top_k=0)
    else:
        knobs.update(do_sample=False, num_beams=1)
    return GenerationConfig(**knobs)


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    prompts: Sequence[Sequence[int]],
    pad_token_id: int,
    stop_ids: Sequence[int],
    decoding: Decoding | None = None,
    seed: int = 0,
    *,
    sort_by_length: bool = True,
    record_logprobs: bool = False,
    **settings,
) -> list[list[Generation]]:
    """Continuations of every prompt: ``result[i][j]`` is the j-th ``Generation`` of prompt i, cut at the first
    id of ``stop_ids``.

    ``decoding`` (default ``Decoding()``): greedy, sampled or beam search; ``settings`` change it by name
    (``decoding_with``: ``max_new_tokens=...``, or ``transformers``' ``do_sample`` / ``num_return_sequences``).
    Sampling is seeded with ``seed`` inside a forked RNG. Batches of ``decoding.batch_size`` prompts, left padded,
    longest prompts first (``sort_by_length``) or in the given order. ``record_logprobs`` records each generated
    token's log-prob (not with beams: beams reorder rows).
    """
    decoding = decoding_with(decoding, **settings)
    if any(len(p) == 0 for p in prompts):
        raise ValueError("every prompt needs at least one token")
    if record_logprobs and decoding.num_beams > 1:
        raise ValueError("record_logprobs needs num_beams=1 (beam search reorders rows); score beams afterwards")
    config = generation_config(decoding, pad_token_id, stop_ids)
    stop = {int(i) for i in stop_ids}
    device = model_device(model)
    was_training = model.training
    model.eval()
    order = sorted(range(len(prompts)), key=lambda i: -len(prompts[i])) if sort_by_length else range(len(prompts))
    out: list[list[Generation]] = [[] for _ in prompts]
    cuda_devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
    )
    try:
        # Seeded inside a forked RNG, so generating never moves the caller's random stream.
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            for chunk in batches(order, decoding.batch_size):
                batch = [prompts[i] for i in chunk]
                rows = _generate_batch(model, batch, pad_token_id, config, stop, record_logprobs)
                for row, generation in enumerate(rows):
                    out[chunk[row // decoding.returns]].append(generation)
    finally:
        model.train(was_training)
    return out


def _generate_batch(model, prompts, pad_token_id: int, config: GenerationConfig, stop: set[int], record_logprobs):
    """The ``Generation`` of every returned row of one left-padded batch, in ``model.generate``'s row order."""
    device = model_device(model)
    input_ids, attention_mask = left_pad([[int(t) for t in p] for p in prompts], pad_token_id)
    recorder = ChosenTokenLogprob() if record_logprobs else None
    sequences = model.generate(
        input_ids=input_ids.to(device),
        attention_mask=attention_mask.to(device),
        generation_config=config,
        logits_processor=LogitsProcessorList([recorder] if recorder is not None else []),
    )
    generated = sequences[:, input_ids.shape[1] :]
    logprobs = recorder.finish(generated).cpu() if recorder is not None else None
    out = []
    for row, tokens in enumerate(generated.cpu().tolist()):
        cut = next((t for t, tok in enumerate(tokens) if tok in stop), None)
        kept = tokens if cut is None else tokens[:cut]
        length = len(kept) + (cut is not None)
        out.append(
            Generation(
                tokens=kept,
                stop_id=None if cut is None else tokens[cut],
                token_logprobs=logprobs[row, :length].clone() if logprobs is not None else None,
            )
        )
    return out


def generate_answers(
    model,
    tokenizer,
    questions: Sequence[str],
    template: str = "plain",
    decoding: Decoding | None = None,
    seed: int = 0,
    **settings,
) -> list[str] | list[list[str]]:
    """Greedy answers to ``questions`` (prompt template ``template``, stop ids of ``stop_token_ids``), decoded
    without special tokens and stripped; with ``num_samples`` = N > 0, N sampled answers per question instead
    (a list of N strings per question). ``decoding`` and ``settings`` as for ``generate``."""
    decoding = decoding_with(decoding, **settings)
    prompts = [encode_prompt(tokenizer, q, template=template) for q in questions]
    stops = stop_token_ids(tokenizer, model, template)
    generations = generate(model, prompts, pad_token_id_of(tokenizer), stops, decoding, seed)
    texts = [[tokenizer.decode(g.tokens, skip_special_tokens=True).strip() for g in row] for row in generations]
    return texts if decoding.num_samples > 0 else [row[0] for row in texts]
