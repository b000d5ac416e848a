"""Model beliefs for bootstrapping unlearning: local (top-k) beliefs, global (sampled) beliefs, the BS-S step.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422).

* **Local beliefs** (Eq. 5, BS-T): the top-k of the model's next-token distribution at every answer position
  and its mass S_k. The math lives in ``bs_ref.losses.bs_t``; ``topk_mass`` only runs the model for logging.
* **Global beliefs** (Eq. 7, BS-S): N answers ŷ_u^(j) ~ π_θ(·|x_u) "with high confidence" for every forget
  prompt. ``sample_beliefs`` draws them with Hugging Face ``generate``, batched across prompts (left padding,
  KV cache), in one of three modes (``SELECT_MODES``):

      "sample"  N draws at temperature τ_s and top-p
      "filter"  M ≥ N draws (default 2N), keep the N with the highest mean token log-prob (the paper's
                "high confidence")
      "beam"    the N best beams of a beam search of width M (default N)

  Decoding stops at the tokenizer's EOS, the model's generation-config EOS ids, and, when the tokenizer has a
  chat template, the template's end-of-turn token, found by rendering an assistant turn (``stop_token_ids``):
  no model-specific string appears here. An answer that stops immediately is *empty*: it is counted and kept
  out of the loss.
* **BeliefCache** keyed by the forget example's dataset index (SPEC §4): off-policy (sampled once from the
  original model θ_o, then fixed: the variant Theorem 5.3 covers) or on-policy (resampled from the current
  model every ``refresh_epochs``; 0 = every step). It lives on CPU; ``batch(indices)`` returns exactly those
  items' beliefs, so each forget item is paired with its own beliefs.
* ``bs_s_forward_backward``: Eq. (7),

      L_BSS = (1 − λ_BSS) · L_base(D_u) + λ_BSS · L_base(D̂_u),

  with the belief rows run through the model in micro-batches, one backward each, weighted so that the summed
  gradient equals the gradient of Eq. (7) on the full batch. Peak activation memory therefore grows with
  ``belief_microbatch``, not with N.

Shapes: prompts are lists of token ids; cached beliefs are token-id lists (prompt + answer [+ stop token]);
``BeliefCache.batch`` gives right-padded LongTensors [R, T] with labels = -100 on prompt and padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from bs_ref.losses import IGNORE_INDEX, base_loss, bs_s_combine, local_beliefs, mean_token_logprob, sequence_logprob
from bs_ref.losses.bs_s import BASE_LOSSES

SELECT_MODES = ("sample", "filter", "beam")
REGIMES = ("off_policy", "on_policy")
_TURN_SENTINEL = "bsrefbeliefsentinel"


# ----------------------------------------------------------------------------------------------------------
# Local beliefs (logging helper; the math is bs_ref.losses.bs_t.token_beliefs)
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def topk_mass(model, batch: dict, k: int = 20) -> torch.Tensor:
    """Mean top-k mass S_k of the model's local beliefs over each row's answer tokens, shape [B] (NaN for a row
    without answer tokens). ``batch`` holds input_ids, labels and optionally attention_mask."""
    device = _model_device(model)
    logits = model(
        input_ids=batch["input_ids"].to(device), attention_mask=_attention_mask(batch).to(device)
    ).logits.float()
    beliefs, at = local_beliefs(logits, batch["labels"].to(device), top_k=k)
    per_row = torch.zeros(at.batch_size, device=device).index_add(0, at.rows, beliefs.topk_mass.float())
    return (per_row / at.counts.to(per_row.dtype)).cpu()  # 0/0 = NaN for rows without answers


# ----------------------------------------------------------------------------------------------------------
# Global beliefs
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Beliefs:
    """Sampled answers, one entry per belief (``n`` per prompt, grouped by prompt in prompt order).

    input_ids     prompt + answer tokens + the stop token when one was generated
    labels        IGNORE_INDEX on the prompt; all IGNORE_INDEX for an empty answer (kept out of the loss)
    prompt_index  position in ``prompts`` of the prompt each belief answers
    mean_logprob  mean token log-prob of answer (+ stop token) under the sampling model at temperature 1 (read
                  off the raw scores during generation; teacher-forced for beams); for an empty answer,
                  log p(stop | prompt)
    is_empty      the model stopped (or produced nothing) before any answer token
    stopped       the answer ended with a stop token (False: cut at ``max_new_tokens``)
    settings      the decoding conventions used (recorded in every output)
    """

    input_ids: list[list[int]] = field(default_factory=list)
    labels: list[list[int]] = field(default_factory=list)
    prompt_index: list[int] = field(default_factory=list)
    mean_logprob: list[float] = field(default_factory=list)
    is_empty: list[bool] = field(default_factory=list)
    stopped: list[bool] = field(default_factory=list)
    settings: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def n_empty(self) -> int:
        return sum(self.is_empty)

    def answer_ids(self, i: int) -> list[int]:
        """Token ids of belief i's answer (labelled part, stop token included when generated)."""
        return [t for t, y in zip(self.input_ids[i], self.labels[i]) if y != IGNORE_INDEX]


def stop_token_ids(tokenizer, model=None) -> list[int]:
    """Token ids that end an answer: the tokenizer's EOS, the model's generation-config EOS id(s), and the chat
    template's end-of-turn token (the first special token the template writes after an assistant message)."""
    if getattr(tokenizer, "eos_token_id", None) is None:
        raise ValueError(
            "the tokenizer has no EOS token, so sampled answers could never end; set tokenizer.eos_token "
            "(e.g. tokenizer.add_special_tokens({'eos_token': ...})) to the token that ends an answer"
        )
    ids = [int(tokenizer.eos_token_id)]
    config_eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    for tok in [config_eos] if isinstance(config_eos, int) else list(config_eos or []):
        ids.append(int(tok))
    end_of_turn = chat_end_of_turn_id(tokenizer)
    if end_of_turn is not None:
        ids.append(end_of_turn)
    return list(dict.fromkeys(ids))


def chat_end_of_turn_id(tokenizer) -> int | None:
    """The id of the special token a chat template writes right after an assistant message, or None when the
    tokenizer has no chat template (or the template ends a turn with plain text)."""
    if not getattr(tokenizer, "chat_template", None):
        return None
    conversation = [{"role": "user", "content": "hi"}, {"role": "assistant", "content": _TURN_SENTINEL}]
    try:
        rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
    except Exception:  # a template that rejects this conversation shape: fall back to EOS alone
        return None
    if not isinstance(rendered, str) or _TURN_SENTINEL not in rendered:
        return None
    after_turn = rendered.split(_TURN_SENTINEL, 1)[1]
    special = set(tokenizer.all_special_ids)
    special.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    for tok in tokenizer(after_turn, add_special_tokens=False)["input_ids"]:
        if tok in special:
            return int(tok)
    return None


def check_sampling_args(n: int, select: str, m: int | None, temperature: float, top_p: float, max_new_tokens: int):
    """One clear ValueError per bad decoding argument (shared by ``sample_beliefs`` and ``BeliefCache``)."""
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"n (beliefs per prompt) must be an integer >= 1, got {n!r}")
    if select not in SELECT_MODES:
        raise ValueError(f"select must be one of {SELECT_MODES}, got {select!r}")
    if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < n):
        raise ValueError(f"m (candidates drawn per prompt) must be an integer >= n = {n}, got {m!r}")
    if not float(temperature) >= 0.0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if not 0.0 < float(top_p) <= 1.0:
        raise ValueError(f"top_p must lie in (0, 1], got {top_p}")
    if not isinstance(max_new_tokens, int) or isinstance(max_new_tokens, bool) or max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {max_new_tokens!r}")
    if select != "beam" and float(temperature) == 0.0 and (n > 1 or select == "filter"):
        raise ValueError(
            "temperature=0 is greedy decoding, which has one answer per prompt (nothing to filter); use n=1 with "
            "select='sample', a temperature > 0, or select='beam' for several deterministic answers"
        )


def sample_beliefs(
    model,
    tokenizer,
    prompts: list[list[int]],
    n: int = 3,
    select: str = "sample",
    m: int | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
) -> Beliefs:
    """Global beliefs: ``n`` answers per prompt from ``model`` (SPEC §4), batched ``batch_size`` prompts at a time.

    ``select``: "sample" (n draws), "filter" (m ≥ n draws, default 2n; keep the n with the highest mean token
    log-prob; empty answers rank last since they never reach the loss), "beam" (n best of m beams, default n).
    ``temperature=0`` means greedy (n = 1). Reproducible under ``seed`` (the caller's RNG state is restored);
    in greedy and beam modes the answers do not depend on ``batch_size``.
    """
    check_sampling_args(n, select, m, temperature, top_p, max_new_tokens)
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token-id lists (one per forget question)")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token (encode the question)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size (prompts per generate call) must be an integer >= 1, got {batch_size!r}")
    stop_ids = stop_token_ids(tokenizer, model)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    draws = {"sample": n, "filter": m or 2 * n, "beam": m or n}[select]
    gen_kwargs: dict[str, Any] = dict(
        max_new_tokens=max_new_tokens,
        min_new_tokens=0,
        eos_token_id=stop_ids,
        pad_token_id=pad_id,
        num_return_sequences=n if select == "beam" else draws,
        use_cache=True,
        repetition_penalty=1.0,
        no_repeat_ngram_size=0,
    )
    if select == "beam":
        gen_kwargs.update(do_sample=False, num_beams=draws, length_penalty=1.0, early_stopping=False)
    elif float(temperature) == 0.0:
        gen_kwargs.update(do_sample=False, num_beams=1)
    else:  # top_k=0: no hidden top-50 truncation from the library default
        gen_kwargs.update(do_sample=True, num_beams=1, temperature=float(temperature), top_p=float(top_p), top_k=0)
    per_prompt = gen_kwargs["num_return_sequences"]

    device = _model_device(model)
    was_training = model.training
    model.eval()
    rows: list[tuple[int, list[int], list[int], bool]] = []  # (prompt index, prompt, answer, stopped)
    scores: list[float] = []
    stop_set = set(stop_ids)
    try:
        cuda_devices = (
            [device.index if device.index is not None else torch.cuda.current_device()] if device.type == "cuda" else []
        )
        with torch.random.fork_rng(devices=cuda_devices):
            torch.manual_seed(seed)
            for start in range(0, len(prompts), batch_size):
                chunk = [list(map(int, p)) for p in prompts[start : start + batch_size]]
                input_ids, attention_mask = left_pad(chunk, pad_id)
                recorder = None if select == "beam" else ChosenTokenLogprob()  # beams reorder rows: score after
                with torch.no_grad():
                    out = model.generate(
                        input_ids=input_ids.to(device),
                        attention_mask=attention_mask.to(device),
                        logits_processor=LogitsProcessorList([recorder] if recorder is not None else []),
                        **gen_kwargs,
                    )
                generated = out[:, input_ids.shape[1] :]
                token_logprobs = recorder.finish(generated).cpu() if recorder is not None else None
                for r, tokens in enumerate(generated.cpu().tolist()):
                    answer, stopped = [], False
                    for tok in tokens:
                        answer.append(tok)
                        if tok in stop_set:
                            stopped = True
                            break
                    rows.append((start + r // per_prompt, chunk[r // per_prompt], answer, stopped))
                    if token_logprobs is not None:
                        scores.append(float(token_logprobs[r, : len(answer)].mean()) if answer else math.nan)
        if select == "beam":
            prompts_and_answers = [(p, a) for _, p, a, _ in rows]
            scores = score_answers(model, *map(list, zip(*prompts_and_answers)), pad_id, batch_size)
    finally:
        model.train(was_training)

    keep = list(range(len(rows)))
    if select == "filter":
        keep = []
        for i in range(len(prompts)):
            cand = [j for j in range(i * draws, (i + 1) * draws)]
            cand.sort(key=lambda j: (_is_empty(rows[j][2], stop_set), -scores[j]))  # stable: ties keep draw order
            keep.extend(sorted(cand[:n]))
    beliefs = Beliefs(
        settings=dict(
            n=n, select=select, m=m, temperature=float(temperature), top_p=float(top_p), max_new_tokens=max_new_tokens,
            seed=seed, stop_token_ids=stop_ids, candidates_per_prompt=draws,
        )
    )  # fmt: skip
    for j in keep:
        prompt_index, prompt, answer, stopped = rows[j]
        empty = _is_empty(answer, stop_set)
        beliefs.input_ids.append(prompt + answer)
        beliefs.labels.append([IGNORE_INDEX] * len(prompt) + ([IGNORE_INDEX] * len(answer) if empty else answer))
        beliefs.prompt_index.append(prompt_index)
        beliefs.mean_logprob.append(scores[j])
        beliefs.is_empty.append(empty)
        beliefs.stopped.append(stopped)
    return beliefs


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


@torch.no_grad()
def score_answers(model, prompts: list[list[int]], answers: list[list[int]], pad_id: int, batch_size: int = 32):
    """Teacher-forced mean token log-prob of each answer given its prompt (NaN for a zero-length answer)."""
    device = _model_device(model)
    scores: list[float] = []
    for start in range(0, len(prompts), batch_size):
        pairs = list(zip(prompts[start : start + batch_size], answers[start : start + batch_size]))
        ids = [p + a for p, a in pairs]
        labels = [[IGNORE_INDEX] * len(p) + a for p, a in pairs]
        batch = right_pad(ids, labels, pad_id)
        logits = model(
            input_ids=batch["input_ids"].to(device), attention_mask=batch["attention_mask"].to(device)
        ).logits
        mean = mean_token_logprob(logits, batch["labels"].to(device)).float().cpu()
        for row, a in enumerate(answers[start : start + batch_size]):
            scores.append(float(mean[row]) if a else math.nan)
    return scores


def _is_empty(answer: list[int], stop_set: set[int]) -> bool:
    return len(answer) == 0 or (len(answer) == 1 and answer[0] in stop_set)


# ----------------------------------------------------------------------------------------------------------
# Padding helpers
# ----------------------------------------------------------------------------------------------------------


def left_pad(prompts: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded input_ids and attention_mask [B, T] for generation."""
    width = max(len(p) for p in prompts)
    input_ids = torch.full((len(prompts), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for r, p in enumerate(prompts):
        if p:
            input_ids[r, width - len(p) :] = torch.tensor(p, dtype=torch.long)
            attention_mask[r, width - len(p) :] = 1
    return input_ids, attention_mask


def right_pad(ids: list[list[int]], labels: list[list[int]], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids / labels (IGNORE_INDEX on padding) / attention_mask [B, T]."""
    width = max([len(x) for x in ids] + [1])
    out = {
        "input_ids": torch.full((len(ids), width), pad_id, dtype=torch.long),
        "labels": torch.full((len(ids), width), IGNORE_INDEX, dtype=torch.long),
        "attention_mask": torch.zeros((len(ids), width), dtype=torch.long),
    }
    for r, (x, y) in enumerate(zip(ids, labels)):
        out["input_ids"][r, : len(x)] = torch.tensor(x, dtype=torch.long)
        out["labels"][r, : len(y)] = torch.tensor(y, dtype=torch.long)
        out["attention_mask"][r, : len(x)] = 1
    return out


# ----------------------------------------------------------------------------------------------------------
# Belief cache
# ----------------------------------------------------------------------------------------------------------


@dataclass
class _CachedBelief:
    input_ids: list[int]
    labels: list[int]
    mean_logprob: float
    is_empty: bool


class BeliefCache:
    """Global beliefs of every forget item, keyed by its dataset index, on CPU (SPEC §4).

    regime          "off_policy": sampled once (from the original model, before unlearning) and then fixed;
                    "on_policy": resampled from the current model every ``refresh_epochs`` epochs
    refresh_epochs  on-policy refresh period in epochs (the authors use 1 or 2); 0 = every step, in which case
                    ``maybe_refresh`` may be given just the current batch's prompts
    n, select, m, temperature, top_p, max_new_tokens: decoding, as in ``sample_beliefs``
    batch_size      prompts per ``generate`` call (32: a refresh covers the whole forget set, so larger batches
                    than a training step's pay off; lower it if generation runs out of memory)
    seed            refresh r draws with seed + r: reproducible, and fresh samples at every refresh
    """

    def __init__(
        self,
        regime: str = "off_policy",
        refresh_epochs: float = 1.0,
        n: int = 3,
        select: str = "sample",
        m: int | None = None,
        temperature: float = 1.0,
        top_p: float = 1.0,
        max_new_tokens: int = 64,
        batch_size: int = 32,
        seed: int = 0,
    ):
        if regime not in REGIMES:
            raise ValueError(f"regime must be one of {REGIMES}, got {regime!r}")
        if not float(refresh_epochs) >= 0.0:
            raise ValueError(f"refresh_epochs must be >= 0 (0 = refresh every step), got {refresh_epochs}")
        check_sampling_args(n, select, m, temperature, top_p, max_new_tokens)
        self.regime, self.refresh_epochs = regime, float(refresh_epochs)
        self.sampling = dict(
            n=n, select=select, m=m, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens,
            batch_size=batch_size,
        )  # fmt: skip
        self.seed = seed
        self.entries: dict[int, list[_CachedBelief]] = {}
        self.refreshes = 0
        self.last_refresh_step: int | None = None
        self.last_refresh_epoch: float | None = None
        self.beliefs_sampled = 0
        self.empty_sampled = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, index: int) -> bool:
        return int(index) in self.entries

    def refresh(self, model, tokenizer, prompts_by_index: dict[int, list[int]], step=None, epoch=None) -> Beliefs:
        """Sample beliefs for every (dataset index → prompt ids) given and replace those items' entries."""
        if not prompts_by_index:
            raise ValueError("prompts_by_index is empty: pass {dataset index: prompt token ids} of the forget items")
        indices = [int(i) for i in prompts_by_index]
        beliefs = sample_beliefs(
            model, tokenizer, [list(prompts_by_index[i]) for i in prompts_by_index], seed=self.seed + self.refreshes,
            **self.sampling,
        )  # fmt: skip
        fresh: dict[int, list[_CachedBelief]] = {i: [] for i in indices}
        for j in range(len(beliefs)):
            owner = indices[beliefs.prompt_index[j]]
            fresh[owner].append(
                _CachedBelief(beliefs.input_ids[j], beliefs.labels[j], beliefs.mean_logprob[j], beliefs.is_empty[j])
            )
        self.entries.update(fresh)
        self.refreshes += 1
        self.last_refresh_step, self.last_refresh_epoch = step, epoch
        self.beliefs_sampled += len(beliefs)
        self.empty_sampled += beliefs.n_empty
        return beliefs

    def needs_refresh(self, epoch: float, step: int) -> bool:
        """Whether the schedule asks for a refresh at this (epoch, step)."""
        if self.refreshes == 0:
            return True
        if self.regime == "off_policy":
            return False
        if self.refresh_epochs == 0.0:
            return step != self.last_refresh_step
        last = self.last_refresh_epoch if self.last_refresh_epoch is not None else 0.0
        return float(epoch) >= last + self.refresh_epochs - 1e-6

    def maybe_refresh(self, model, tokenizer, epoch: float, step: int, prompts_by_index: dict[int, list[int]]) -> bool:
        """Refresh when the schedule says so; returns True if it sampled. Off-policy samples only on the first
        call, which must come before unlearning and cover the whole forget set."""
        if self.regime == "off_policy" and self.refreshes > 0:
            missing = [i for i in prompts_by_index if int(i) not in self.entries]
            if missing:
                raise ValueError(
                    f"off-policy beliefs are missing for dataset indices {missing[:5]}: off-policy beliefs must be "
                    "sampled once from the original model for every forget item; pass all forget prompts to the "
                    "first refresh/maybe_refresh call"
                )
        if not self.needs_refresh(epoch, step):
            return False
        self.refresh(model, tokenizer, prompts_by_index, step=step, epoch=float(epoch))
        return True

    def batch(self, indices, pad_token_id: int) -> dict[str, torch.Tensor]:
        """Right-padded belief rows of exactly these dataset indices, in their order (empty answers left out):
        input_ids, labels, attention_mask [R, T] and owner_index [R] (the dataset index each row belongs to)."""
        ids, labels, owners = [], [], []
        for index in [int(i) for i in (indices.tolist() if isinstance(indices, torch.Tensor) else indices)]:
            if index not in self.entries:
                raise ValueError(
                    f"no cached beliefs for dataset index {index}; refresh the cache with that item's prompt "
                    "before asking for its beliefs"
                )
            for belief in self.entries[index]:
                if not belief.is_empty:
                    ids.append(belief.input_ids)
                    labels.append(belief.labels)
                    owners.append(index)
        out = right_pad(ids, labels, pad_token_id) if ids else _empty_batch()
        out["owner_index"] = torch.tensor(owners, dtype=torch.long)
        return out

    def stats(self, model=None, batch_size: int = 32) -> dict[str, Any]:
        """Refreshes done, items covered, beliefs and empties, distinct beliefs per item, mean log-prob of the
        cached beliefs at sampling time, and (given ``model``) under that model now."""
        kept = [b for beliefs in self.entries.values() for b in beliefs if not b.is_empty]
        distinct = [len({tuple(b.input_ids) for b in bs if not b.is_empty}) for bs in self.entries.values()]
        out: dict[str, Any] = {
            "regime": self.regime,
            "refresh_epochs": self.refresh_epochs,
            "refreshes": self.refreshes,
            "items_covered": len(self.entries),
            "beliefs_cached": sum(len(bs) for bs in self.entries.values()),
            "empty_cached": sum(b.is_empty for bs in self.entries.values() for b in bs),
            "beliefs_sampled_total": self.beliefs_sampled,
            "empty_sampled_total": self.empty_sampled,
            "distinct_per_item": sum(distinct) / len(distinct) if distinct else 0.0,
            "mean_logprob_at_sampling": sum(b.mean_logprob for b in kept) / len(kept) if kept else math.nan,
            **{f"sampling_{k}": v for k, v in self.sampling.items()},
        }
        if model is not None:
            pad = 0
            was_training = model.training
            model.eval()
            try:
                prompts = [b.input_ids[: _prompt_length(b.labels)] for b in kept]
                answers = [b.input_ids[_prompt_length(b.labels) :] for b in kept]
                now = score_answers(model, prompts, answers, pad, batch_size) if kept else []
            finally:
                model.train(was_training)
            out["mean_logprob_current"] = sum(now) / len(now) if now else math.nan
        return out

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (plain Python types)."""
        return {
            "entries": {i: [vars(b).copy() for b in bs] for i, bs in self.entries.items()},
            "refreshes": self.refreshes,
            "last_refresh_step": self.last_refresh_step,
            "last_refresh_epoch": self.last_refresh_epoch,
            "beliefs_sampled": self.beliefs_sampled,
            "empty_sampled": self.empty_sampled,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = {int(i): [_CachedBelief(**b) for b in bs] for i, bs in state["entries"].items()}
        for key in ("refreshes", "last_refresh_step", "last_refresh_epoch", "beliefs_sampled", "empty_sampled"):
            setattr(self, key, state[key])


def _prompt_length(labels: list[int]) -> int:
    for i, y in enumerate(labels):
        if y != IGNORE_INDEX:
            return i
    return len(labels)


def _empty_batch() -> dict[str, torch.Tensor]:
    return {k: torch.zeros((0, 0), dtype=torch.long) for k in ("input_ids", "labels", "attention_mask")}


# ----------------------------------------------------------------------------------------------------------
# BS-S step
# ----------------------------------------------------------------------------------------------------------


def bs_s_forward_backward(
    model,
    forget_batch: dict,
    belief_batch: dict | None,
    *,
    lam_bss: float = 0.5,
    base: str = "bs_t",
    base_kwargs: dict[str, Any] | None = None,
    belief_microbatch: int = 8,
    loss_scale: float = 1.0,
    ref_model=None,
    backward=None,
    log_top_k: int | None = None,
) -> dict[str, Any]:
    """Eq. (7) on a forget batch and its own belief rows; runs the backward passes (the caller steps the
    optimiser) with ``backward(loss)`` — pass ``accelerator.backward`` so mixed-precision loss scaling and
    distributed hooks apply — or ``loss.backward()`` when None.

    The belief term is computed ``belief_microbatch`` rows at a time (longest rows first, so each micro-batch
    carries little padding), each piece weighted so that the gradients
    add up to ∇[loss_scale · L_BSS] on the full batch (``reduction`` in ``base_kwargs``: "row" (default),
    "token" or "sum"). ``base="npo"`` takes reference log-probs from ``ref_model`` (or ``ref_logprobs`` in the
    forget batch). With no usable belief row (None, no rows, all empty) the forget term stands alone.
    Returns detached scalars ``loss``, ``forget_term``, ``belief_term`` (None without beliefs), and
    ``belief_rows``, ``microbatches``; for logging, ``forget_logprob`` (mean answer-token log-prob of the
    forget rows) and, with ``log_top_k``, ``topk_mass`` (mean S_k of the forget answer positions).
    """
    run_backward = backward if backward is not None else torch.Tensor.backward
    if base not in BASE_LOSSES:
        raise ValueError(f"base must be one of {sorted(BASE_LOSSES)}, got {base!r}")
    if not isinstance(belief_microbatch, int) or isinstance(belief_microbatch, bool) or belief_microbatch < 1:
        raise ValueError(
            f"belief_microbatch must be an integer >= 1 (belief rows per forward), got {belief_microbatch!r}"
        )
    if base == "npo" and ref_model is None and "ref_logprobs" not in forget_batch:
        raise ValueError("base='npo' needs ref_model (a frozen copy of the original model) for reference log-probs")
    kwargs = dict(base_kwargs or {})
    reduction = kwargs.pop("reduction", "row")
    if reduction not in ("row", "token", "sum"):
        raise ValueError(f"reduction in base_kwargs must be 'row', 'token' or 'sum' for BS-S, got {reduction!r}")
    device = _model_device(model)

    belief_labels = None if belief_batch is None else belief_batch["labels"]
    has_belief = (
        belief_labels is not None and belief_labels.numel() > 0 and bool((belief_labels[:, 1:] != IGNORE_INDEX).any())
    )
    forget_weight = (1.0 - lam_bss) if has_belief else 1.0
    bs_s_combine(torch.zeros(()), None, lam_bss)  # validates lam_bss

    # Forget term on D_u
    labels = forget_batch["labels"].to(device)
    extra = {}
    if base == "npo":
        extra["ref_logprobs"] = (
            forget_batch["ref_logprobs"].to(device)
            if "ref_logprobs" in forget_batch
            else _ref_logprobs(ref_model, forget_batch["input_ids"], _attention_mask(forget_batch), labels)
        )
    logits = model(
        input_ids=forget_batch["input_ids"].to(device), attention_mask=_attention_mask(forget_batch).to(device)
    ).logits
    forget_term = base_loss(base, logits, labels, reduction=reduction, **kwargs, **extra)
    run_backward(loss_scale * forget_weight * forget_term)
    forget_value = forget_term.detach()
    with torch.no_grad():
        stats = {"forget_logprob": float(mean_token_logprob(logits.detach(), labels).mean())}
        if log_top_k:
            k = min(log_top_k, logits.shape[-1])
            stats["topk_mass"] = float(local_beliefs(logits.detach(), labels, top_k=k)[0].topk_mass.float().mean())
    del logits

    if not has_belief:
        return dict(
            loss=forget_value, forget_term=forget_value, belief_term=None, belief_rows=0, microbatches=0, **stats
        )

    # Belief term on D̂_u, micro-batched; normalisers come from the full belief batch
    answer_mask = belief_labels[:, 1:] != IGNORE_INDEX
    rows_with_answer = int(answer_mask.any(dim=1).sum())
    answer_tokens = int(answer_mask.sum())
    attention = _attention_mask(belief_batch)
    by_length = torch.argsort(attention.sum(dim=1), descending=True, stable=True)  # less padding per micro-batch
    belief_ids, belief_labels, attention = (
        belief_batch["input_ids"][by_length],
        belief_labels[by_length],
        attention[by_length],
    )
    belief_value = torch.zeros((), dtype=forget_value.dtype, device=forget_value.device)
    microbatches = 0
    for start in range(0, belief_labels.shape[0], belief_microbatch):
        rows = slice(start, start + belief_microbatch)
        chunk_labels = belief_labels[rows]
        chunk_attention = attention[rows]
        width = int(chunk_attention.any(dim=0).nonzero().max()) + 1  # drop all-padding columns on the right
        chunk_labels, chunk_attention = chunk_labels[:, :width], chunk_attention[:, :width]
        chunk_ids = belief_ids[rows, :width]
        chunk_tokens = int((chunk_labels[:, 1:] != IGNORE_INDEX).sum())
        if chunk_tokens == 0:
            continue
        chunk_labels = chunk_labels.to(device)
        extra = {}
        if base == "npo":
            extra["ref_logprobs"] = _ref_logprobs(ref_model, chunk_ids, chunk_attention, chunk_labels)
        logits = model(input_ids=chunk_ids.to(device), attention_mask=chunk_attention.to(device)).logits
        if reduction == "sum":
            piece = base_loss(base, logits, chunk_labels, reduction="sum", **kwargs, **extra)
        elif reduction == "token" and base != "npo":  # token-mean over the whole belief batch
            piece = base_loss(base, logits, chunk_labels, reduction="token", **kwargs, **extra) * (
                chunk_tokens / answer_tokens
            )
        else:  # "row" (NPO's "token" is its row mean): mean over every belief row with an answer
            piece = base_loss(base, logits, chunk_labels, reduction="sum", **kwargs, **extra) / rows_with_answer
        run_backward(loss_scale * lam_bss * piece)  # Σ pieces = L_base(D̂_u): gradients add up to Eq. (7)
        belief_value = belief_value + piece.detach()
        microbatches += 1
        del logits, piece
    loss = bs_s_combine(forget_value, belief_value, lam_bss)  # Eq. (7)
    return dict(
        loss=loss, forget_term=forget_value, belief_term=belief_value, belief_rows=int(belief_labels.shape[0]),
        microbatches=microbatches, **stats,
    )  # fmt: skip


@torch.no_grad()
def _ref_logprobs(ref_model, input_ids, attention_mask, labels) -> torch.Tensor:
    """log π_ref(y|x) of each row (summed over answer tokens), for the NPO base."""
    device = _model_device(ref_model)
    logits = ref_model(input_ids=input_ids.to(device), attention_mask=attention_mask.to(device)).logits
    return sequence_logprob(logits, labels.to(device)).to(labels.device)


def _attention_mask(batch: dict) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return mask if mask is not None else torch.ones_like(batch["input_ids"])


def _model_device(model) -> torch.device:
    return next(model.parameters()).device
