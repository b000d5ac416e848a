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

  Decoding, scoring and the stop rule are those of the evaluation (``bs_ref.generation``): an answer ends at
  the tokenizer's EOS, the model's generation-config EOS ids and, when the prompt template is "chat", the chat
  template's end-of-turn token (``stop_token_ids(tokenizer, model, template)``), so a sampled belief ends
  where an evaluated answer would. An answer that stops immediately is *empty*: it is counted and kept out of
  the loss.
* **BeliefCache** keyed by the forget example's dataset index (docs/theory.md §4): off-policy (sampled once from the
  original model θ_o, then fixed: the variant Theorem 5.3 covers) or on-policy (resampled from the current
  model every ``refresh_epochs``; 0 = every step). It lives on CPU; ``batch(indices)`` returns exactly those
  items' beliefs, so each forget item is paired with its own beliefs. ``BeliefSampling`` holds the eight
  settings of how and when beliefs are drawn (the decoding above and the regime), checked once.
* The BS-S objective itself (Eq. 7) is declared in ``bs_ref.methods.BSS`` and its loss file
  ``bs_ref.losses.bs_s``; the runner backwards the belief rows in row chunks (``bs_ref.runner``).

Shapes: prompts are lists of token ids; cached beliefs are token-id lists (prompt + answer [+ stop token]);
``BeliefCache.batch`` gives right-padded LongTensors [R, T] with labels = -100 on prompt and padding.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from bs_ref.generation import generate, mean_logprobs, model_device, right_pad, stop_token_ids
from bs_ref.losses import IGNORE_INDEX, local_beliefs
from bs_ref.timing import timed

SELECT_MODES = ("sample", "filter", "beam")
REGIMES = ("off_policy", "on_policy")


# ----------------------------------------------------------------------------------------------------------
# Local beliefs (logging helper; the math is bs_ref.losses.bs_t.token_beliefs)
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def topk_mass(model, batch: dict, k: int = 20) -> torch.Tensor:
    """Mean top-k mass S_k of the model's local beliefs over each row's answer tokens, shape [B] (NaN for a row
    without answer tokens). ``batch`` holds input_ids, labels and optionally attention_mask."""
    device = model_device(model)
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


@dataclass(frozen=True)
class BeliefSampling:
    """How BS-S draws its global beliefs and when it draws them again (docs/theory.md §4); checked on creation.

    regime          "off_policy": sampled once (from the original model, before unlearning) and then fixed;
                    "on_policy": resampled from the current model every ``refresh_epochs`` epochs
    refresh_epochs  on-policy refresh period in epochs (the authors use 1 or 2); 0 = every step
    n               beliefs kept per prompt
    select          "sample" (n draws) | "filter" (the n most confident of m draws) | "beam" (n best of m beams)
    m               candidates drawn per prompt for "filter" (default 2n) or "beam" (default n)
    temperature     sampling temperature τ_s (0 = greedy: one answer per prompt)
    top_p           nucleus top-p
    max_new_tokens  longest sampled answer, in tokens

    ``bs_ref.methods.BSS`` spells these ``regime``, ``refresh_epochs``, ``n_beliefs``, ``select``,
    ``belief_candidates``, ``belief_temperature``, ``belief_top_p`` and ``belief_max_new_tokens``
    (``BSS.belief_sampling`` builds this object from them).
    """

    regime: str = "off_policy"
    refresh_epochs: float = 1.0
    n: int = 3
    select: str = "sample"
    m: int | None = None
    temperature: float = 1.0
    top_p: float = 1.0
    max_new_tokens: int = 64

    def __post_init__(self):
        if self.regime not in REGIMES:
            raise ValueError(f"regime must be one of {REGIMES}, got {self.regime!r}")
        if not float(self.refresh_epochs) >= 0.0:
            raise ValueError(f"refresh_epochs must be >= 0 (0 = refresh every step), got {self.refresh_epochs}")
        n, m = self.n, self.m
        if not isinstance(n, int) or isinstance(n, bool) or n < 1:
            raise ValueError(f"n (beliefs per prompt) must be an integer >= 1, got {n!r}")
        if self.select not in SELECT_MODES:
            raise ValueError(f"select must be one of {SELECT_MODES}, got {self.select!r}")
        if m is not None and (not isinstance(m, int) or isinstance(m, bool) or m < n):
            raise ValueError(f"m (candidates drawn per prompt) must be an integer >= n = {n}, got {m!r}")
        if not float(self.temperature) >= 0.0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if not 0.0 < float(self.top_p) <= 1.0:
            raise ValueError(f"top_p must lie in (0, 1], got {self.top_p}")
        tokens = self.max_new_tokens
        if not isinstance(tokens, int) or isinstance(tokens, bool) or tokens < 1:
            raise ValueError(f"max_new_tokens must be an integer >= 1, got {tokens!r}")
        greedy = float(self.temperature) == 0.0
        if self.select != "beam" and greedy and (n > 1 or self.select == "filter"):
            raise ValueError(
                "temperature=0 is greedy decoding, which has one answer per prompt (nothing to filter); use n=1 with "
                "select='sample', a temperature > 0, or select='beam' for several deterministic answers"
            )

    @property
    def per_batch(self) -> bool:
        """Whether every step resamples (on-policy, ``refresh_epochs`` = 0): only that step's prompts are needed."""
        return self.regime == "on_policy" and float(self.refresh_epochs) == 0.0


def sample_beliefs(
    model,
    tokenizer,
    prompts: list[list[int]],
    sampling: BeliefSampling | None = None,
    *,
    batch_size: int = 8,
    seed: int = 0,
    template: str = "plain",
) -> Beliefs:
    """Global beliefs: ``sampling.n`` answers per prompt from ``model`` (docs/theory.md §4), ``batch_size`` prompts
    a batch (``sampling``: the decoding of ``BeliefSampling``, its defaults when None; its regime plays no part here).

    ``select``: "sample" (n draws), "filter" (m ≥ n draws, default 2n; keep the n with the highest mean token
    log-prob; empty answers rank last since they never reach the loss), "beam" (n best of m beams, default n).
    ``temperature=0`` means greedy (n = 1). Reproducible under ``seed`` (the caller's RNG state is restored);
    in greedy and beam modes the answers do not depend on ``batch_size``. ``template``: the prompt template the
    prompts were encoded with ("plain" or "chat"); it decides the stop ids (``bs_ref.generation.stop_token_ids``).
    """
    sampling = sampling if sampling is not None else BeliefSampling()
    n, select, m = sampling.n, sampling.select, sampling.m
    temperature, top_p, max_new_tokens = sampling.temperature, sampling.top_p, sampling.max_new_tokens
    if not isinstance(prompts, (list, tuple)) or len(prompts) == 0:
        raise ValueError("prompts must be a non-empty list of token-id lists (one per forget question)")
    for i, p in enumerate(prompts):
        if len(p) == 0:
            raise ValueError(f"prompt {i} is empty; every prompt needs at least one token (encode the question)")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size (prompts per generate call) must be an integer >= 1, got {batch_size!r}")
    stop_ids = stop_token_ids(tokenizer, model, template)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else stop_ids[0]
    draws = {"sample": n, "filter": m or 2 * n, "beam": m or n}[select]
    sampled = select != "beam" and float(temperature) > 0.0
    generations = generate(
        model,
        prompts,
        pad_id,
        stop_ids,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        num_return_sequences=n if select == "beam" else draws,
        do_sample=sampled,
        temperature=float(temperature),
        top_p=float(top_p),
        seed=seed,
        num_beams=draws if select == "beam" else 1,
        sort_by_length=False,  # batches in prompt order (sampled answers depend on how prompts are batched)
        record_logprobs=select != "beam",  # beams reorder rows: scored teacher-forced afterwards
    )
    rows: list[tuple[int, list[int], list[int], bool]] = []  # (prompt index, prompt, answer, stopped)
    scores: list[float] = []
    stop_set = set(stop_ids)
    for i, continuations in enumerate(generations):
        for g in continuations:
            answer = g.with_stop  # the stop token stays: the model learns (or unlearns) where the answer ends
            rows.append((i, [int(t) for t in prompts[i]], answer, g.stopped))
            if g.token_logprobs is not None:
                scores.append(float(g.token_logprobs.mean()) if answer else math.nan)
    if select == "beam":
        scores = mean_logprobs(model, [p for _, p, _, _ in rows], [a for _, _, a, _ in rows], pad_id, batch_size)

    keep = list(range(len(rows)))
    if select == "filter":
        empty = [_is_empty(answer, stop_set) for _, _, answer, _ in rows]
        keep = _most_confident(empty, scores, len(prompts), draws, n)
    decoding = dict(n=n, select=select, m=m, temperature=float(temperature), top_p=float(top_p))
    run = dict(max_new_tokens=max_new_tokens, seed=seed, template=template, stop_token_ids=stop_ids)
    beliefs = Beliefs(settings={**decoding, **run, "candidates_per_prompt": draws})
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


def _most_confident(empty: list[bool], scores: list[float], prompts: int, draws: int, n: int) -> list[int]:
    """The n draws of each prompt (``draws`` a prompt, in prompt order) with the highest mean token log-prob, in
    draw order; empty answers rank last since they never reach the loss, ties keep the draw order."""
    keep = []
    for i in range(prompts):
        candidates = sorted(range(i * draws, (i + 1) * draws), key=lambda j: (empty[j], -scores[j]))  # stable
        keep.extend(sorted(candidates[:n]))
    return keep


def _is_empty(answer: list[int], stop_set: set[int]) -> bool:
    return len(answer) == 0 or (len(answer) == 1 and answer[0] in stop_set)


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
    """Global beliefs of every forget item, keyed by its dataset index, on CPU (docs/theory.md §4).

    sampling        how and when beliefs are drawn (``BeliefSampling``; its defaults when None). On-policy with
                    ``refresh_epochs`` = 0, ``maybe_refresh`` may be given just the current batch's prompts
    batch_size      prompts per ``generate`` call (32: a refresh covers the whole forget set, so larger batches
                    than a training step's pay off; lower it if generation runs out of memory)
    seed            refresh r draws with seed + r: reproducible, and fresh samples at every refresh
    template        prompt template of the forget prompts ("plain" or "chat"; the unlearning config's
                    ``template``): it decides where a sampled answer ends (``bs_ref.generation.stop_token_ids``)
    """

    def __init__(
        self, sampling: BeliefSampling | None = None, *, batch_size: int = 32, seed: int = 0, template: str = "plain"
    ):
        self.settings = sampling if sampling is not None else BeliefSampling()
        self.regime, self.refresh_epochs = self.settings.regime, float(self.settings.refresh_epochs)
        self.batch_size, self.template = batch_size, template
        self.seed = seed
        self.entries: dict[int, list[_CachedBelief]] = {}
        self.sampled_at: dict[int, Any] = {}  # dataset index -> step of its last sampling
        self.refreshes = 0
        self.last_refresh_step: int | None = None
        self.last_refresh_epoch: float | None = None
        self.beliefs_sampled = 0
        self.empty_sampled = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __contains__(self, index: int) -> bool:
        return int(index) in self.entries

    @timed("beliefs (BS-S)")
    def refresh(self, model, tokenizer, prompts_by_index: dict[int, list[int]], step=None, epoch=None) -> Beliefs:
        """Sample beliefs for every (dataset index → prompt ids) given and replace those items' entries."""
        if not prompts_by_index:
            raise ValueError("prompts_by_index is empty: pass {dataset index: prompt token ids} of the forget items")
        indices = [int(i) for i in prompts_by_index]
        prompts = [list(prompts_by_index[i]) for i in prompts_by_index]
        seed = self.seed + self.refreshes
        run = dict(batch_size=self.batch_size, seed=seed, template=self.template)
        beliefs = sample_beliefs(model, tokenizer, prompts, self.settings, **run)
        fresh: dict[int, list[_CachedBelief]] = {i: [] for i in indices}
        for j in range(len(beliefs)):
            owner = indices[beliefs.prompt_index[j]]
            fresh[owner].append(
                _CachedBelief(beliefs.input_ids[j], beliefs.labels[j], beliefs.mean_logprob[j], beliefs.is_empty[j])
            )
        self.entries.update(fresh)
        self.sampled_at.update({i: step for i in indices})
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
        if self.regime == "on_policy" and self.refresh_epochs == 0.0 and self.refreshes > 0:
            # every step: sample the items of this step that were not yet sampled at it (with gradient
            # accumulation a step has several micro-batches, each with its own items)
            stale = {i: p for i, p in prompts_by_index.items() if self.sampled_at.get(int(i), -1) != step}
            if not stale:
                return False
            self.refresh(model, tokenizer, stale, step=step, epoch=float(epoch))
            return True
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
            **{f"sampling_{k}": v for k, v in self._logged_settings().items()},
        }
        if model is not None:
            pad = 0
            was_training = model.training
            model.eval()
            try:
                prompts = [b.input_ids[: _prompt_length(b.labels)] for b in kept]
                answers = [b.input_ids[_prompt_length(b.labels) :] for b in kept]
                now = mean_logprobs(model, prompts, answers, pad, batch_size) if kept else []
            finally:
                model.train(was_training)
            out["mean_logprob_current"] = sum(now) / len(now) if now else math.nan
        return out

    def _logged_settings(self) -> dict[str, Any]:
        """The decoding settings and the generation batch and template, as every step's log records them."""
        s = self.settings
        decoding = dict(n=s.n, select=s.select, m=s.m, temperature=s.temperature, top_p=s.top_p)
        return {
            **decoding,
            "max_new_tokens": s.max_new_tokens,
            "batch_size": self.batch_size,
            "template": self.template,
        }

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to resume (plain Python types)."""
        return {
            "entries": {i: [vars(b).copy() for b in bs] for i, bs in self.entries.items()},
            "refreshes": self.refreshes,
            "last_refresh_step": self.last_refresh_step,
            "last_refresh_epoch": self.last_refresh_epoch,
            "beliefs_sampled": self.beliefs_sampled,
            "empty_sampled": self.empty_sampled,
            "sampled_at": dict(self.sampled_at),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.entries = {int(i): [_CachedBelief(**b) for b in bs] for i, bs in state["entries"].items()}
        for key in ("refreshes", "last_refresh_step", "last_refresh_epoch", "beliefs_sampled", "empty_sampled"):
            setattr(self, key, state[key])
        self.sampled_at = {int(i): s for i, s in state.get("sampled_at", {}).items()}


def _prompt_length(labels: list[int]) -> int:
    for i, y in enumerate(labels):
        if y != IGNORE_INDEX:
            return i
    return len(labels)


def _empty_batch() -> dict[str, torch.Tensor]:
    return {k: torch.zeros((0, 0), dtype=torch.long) for k in ("input_ids", "labels", "attention_mask")}


def _attention_mask(batch: dict) -> torch.Tensor:
    mask = batch.get("attention_mask")
    return mask if mask is not None else torch.ones_like(batch["input_ids"])
