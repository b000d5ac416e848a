"""One micro-batch of unlearning, from the method's row sets to the backward: one runner for every method.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422); docs/theory.md §2–4.

A method's declaration (``bs_ref.methods``) says which weighted row sets make up its forget term
(``Method.forget_terms``, each a ``ForgetTerm``): the forget rows with weight 1 for every method, and for BS-S
(Eq. 7) the forget rows with weight 1 − λ_BSS and its belief rows with weight λ_BSS. A term also names the
function of ``bs_ref.losses`` that scores its rows and how its rows run (in chunks, packed over shared prompts).
``run_rows`` runs every term the same way: its chunks (``ForgetTerm.chunks``) one forward each, the line
``term.loss(...)`` for the chunk's piece, a backward per chunk. The pieces of all chunks add up to the term, so
the gradient is the term's while peak activation memory grows with the chunk, not with the number of rows.

``micro_step`` is one (forget, retain) micro-batch of the loop (``bs_ref.unlearn``) and of the Trainer adapter
(``bs_ref.hf``), minimising (docs/theory.md §2)

    L = γ · Σ_terms weight · L_term  +  α · L_retain

A forget term that is one padded batch run in one forward (every method but BS-S) is backwarded together with the
retain term; several terms (BS-S) are backwarded one after another, chunk by chunk (``backward_terms``), and then
the retain term. The runner knows no method by name.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from bs_ref import prefix
from bs_ref.losses import IGNORE_INDEX, local_beliefs, per_row_sum, regularised_loss, retain_loss, sequence_logprob


@dataclass
class ForgetTerm:
    """One set of rows of the forget objective: the rows, their weight in it, and the loss that scores them.

    rows          a right-padded batch as collated (input_ids, attention_mask, labels), or unpadded
                  ``bs_ref.prefix.Row``s that carry a weight each (BS-S prefix sharing and belief subsampling)
    weight        the term's weight in L_forget (Eq. 7's 1 − λ_BSS and λ_BSS; 1 for every other method)
    loss          the function that scores one chunk of the rows: a loss of ``bs_ref.losses`` or the method's
                  ``forget_loss`` (which calls one); ``piece`` calls it
    kwargs        the loss's own keyword arguments (the run's reduction, a base loss's hyper-parameters, ...)
    chunk_rows    rows per forward (None: the batch in one forward)
    share_prefix  pack rows with the same prompt into one sequence (``bs_ref.prefix``)
    """

    rows: dict[str, torch.Tensor] | list[prefix.Row]
    weight: float
    loss: Callable[..., torch.Tensor]
    kwargs: dict[str, Any] = field(default_factory=dict)
    chunk_rows: int | None = None
    share_prefix: bool = False

    @property
    def whole(self) -> bool:
        """Whether the term is one padded batch run in one forward (its piece can join the retain term's backward)."""
        return isinstance(self.rows, dict) and self.chunk_rows is None

    def piece(self, logits, labels, ref_logprobs=None, row_weights=None) -> torch.Tensor:
        """The term's loss on one chunk of its rows: ``loss(logits, labels, **kwargs)``, with π_ref's log-probs of
        the rows when the method needs them and the rows' own weights for ``Row``s. The pieces of all chunks add up
        to the term."""
        extra = {"ref_logprobs": ref_logprobs} if ref_logprobs is not None else {}
        if row_weights is not None:
            extra["row_weights"] = row_weights
        return self.loss(logits, labels, **extra, **self.kwargs)

    def chunks(self, model) -> list[prefix.Chunk]:
        """The forwards that run the rows (``bs_ref.prefix.batch_chunks`` / ``plan_chunks``)."""
        if isinstance(self.rows, dict):
            return prefix.batch_chunks(self.rows, self.chunk_rows)
        mask_dtype = prefix.mask_dtype(model) if self.share_prefix else torch.bool
        return prefix.plan_chunks(self.rows, self.share_prefix, self.chunk_rows, mask_dtype)


class ForgetStats:
    """The logged numbers of the forget rows: their mean answer log-prob and mean top-k mass S_k (docs/theory.md
    D1/D2), gathered from the chunks of a micro-step's first term without a second forward."""

    def __init__(self, top_k: int):
        self.top_k = top_k
        self.logprobs: list[torch.Tensor] = []  # the mean answer log-prob of each forget row
        self.masses: list[torch.Tensor] = []  # S_k at each forget answer token
        self.whole = True

    @torch.no_grad()
    def add(self, logits: torch.Tensor, labels: torch.Tensor, forget: torch.Tensor | None = None) -> None:
        """One chunk's rows; ``forget`` [R] marks the forget rows among them (None: every row is one)."""
        if forget is not None:
            if not bool(forget.any()):
                return
            # the other rows' labels masked: no copy of the forget rows' [rows, T, V] logits
            labels = labels.masked_fill(~forget[:, None], IGNORE_INDEX)
            self.whole = False
        beliefs, at = local_beliefs(logits.detach(), labels, top_k=min(self.top_k, logits.shape[-1]))
        row_means = per_row_sum(at.target_logprob(), at) / at.counts.clamp(min=1)
        self.logprobs.append(row_means if forget is None else row_means[forget])
        self.masses.append(beliefs.topk_mass)

    def numbers(self) -> dict[str, float]:
        """``forget_logprob`` and ``topk_mass`` (empty before any forget row): the batch's means when it ran whole,
        else pooled over the chunks' rows and tokens."""
        if not self.logprobs:
            return {}
        if self.whole:
            mass = float(self.masses[0].mean())
        else:
            mass = sum(float(m.sum()) for m in self.masses) / max(sum(m.numel() for m in self.masses), 1)
        return {"forget_logprob": float(torch.cat(self.logprobs).mean()), "topk_mass": mass}


def run_rows(model, method, term: ForgetTerm, *, ref_model=None, stats=None, backward=None, loss_scale=1.0):
    """Run ``term``'s rows through ``model`` chunk by chunk (``ForgetTerm.chunks``), each chunk scored by the loss
    the declaration named (``forward_chunk``).

    With ``backward``: backward ``loss_scale · term.weight · piece`` chunk by chunk and return Σ pieces, detached.
    Without: the term must be one chunk (``ForgetTerm.whole``); its piece comes back with its graph, for the
    caller to backward together with the retain term. ``ref_model``: π_ref, when the method needs it; ``stats``
    (``ForgetStats``) takes each chunk's forget rows."""
    # rows weighted one by one (float64 weights) sum their pieces in float64
    total = None if isinstance(term.rows, dict) else torch.zeros((), dtype=torch.float64)
    for chunk in term.chunks(model):
        piece, logits, labels = forward_chunk(model, method, term, chunk, ref_model)
        if stats is not None:
            stats.add(logits, labels, chunk.forget)
        if backward is None:
            return piece
        backward(loss_scale * term.weight * piece)
        total = piece.detach() if total is None else total + piece.detach().to(total)
        del logits, piece
    return total if total is not None else torch.zeros(())


def forward_chunk(model, method, term: ForgetTerm, chunk: prefix.Chunk, ref_model=None):
    """One forward of ``chunk``: (``term``'s piece on its rows, with its graph; the rows' logits; their labels).

    ``ref_model`` (π_ref) gives the rows' log π_ref(y|x) under no_grad. A method that reads one layer's states
    (``Method.reads_hidden_states``: RMU) gets them in place of the logits."""
    device = next(model.parameters()).device
    inputs = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in chunk.inputs.items()}
    labels = chunk.labels.to(device)
    ref_logprobs = None
    if ref_model is not None:
        with torch.no_grad():
            ref_logprobs = sequence_logprob(chunk.rows(ref_model(**inputs).logits), labels)
    weights = chunk.weights.to(device) if chunk.weights is not None else None
    if method.reads_hidden_states:
        features, logits = method.hidden(model, inputs)
    else:
        features = logits = chunk.rows(model(**inputs).logits)
    return term.piece(features, labels, ref_logprobs, weights), logits, labels  # the declaration's loss


def backward_terms(model, method, terms: list[ForgetTerm], *, loss_scale=1.0, backward=None, ref_model=None):
    """Backward ``loss_scale · L_forget`` = ``loss_scale · Σ weight · term`` term by term and chunk by chunk; the
    caller steps the optimiser. ``backward`` defaults to ``Tensor.backward`` (the loop passes
    ``accelerator.backward``). Returns the detached ``forget`` (L_forget: Eq. 7 for BS-S) and the first term's
    ``forget_logprob`` and ``topk_mass`` (``ForgetStats``)."""
    if method.needs_reference and ref_model is None:
        raise ValueError(f"method {method.spec()!r} needs ref_model (a frozen copy of the original model)")
    ref = ref_model if method.needs_reference else None
    run = dict(ref_model=ref, backward=backward or torch.Tensor.backward, loss_scale=loss_scale)
    stats = ForgetStats(method.top_k_for_logging)
    weighted = []
    for index, term in enumerate(terms):
        value = run_rows(model, method, term, stats=stats if index == 0 else None, **run)
        weighted.append(term.weight * value)
    return {**stats.numbers(), "forget": float(sum(weighted))}


def forget_backward(
    method,
    model,
    forget_batch: dict,
    belief_batch: dict | None = None,
    *,
    loss_scale=1.0,
    backward=None,
    ref_model=None,
    reduction: str = "row",
) -> dict:
    """``backward_terms`` of ``method``'s row sets on one forget batch and its belief rows (``Method.forget_terms``
    under ``reduction``): what one BS-S micro-step backwards before its retain term."""
    terms = method.forget_terms(forget_batch, belief_batch, reduction=reduction)
    return backward_terms(model, method, terms, loss_scale=loss_scale, backward=backward, ref_model=ref_model)


def micro_step(
    cfg,
    model,
    forget_batch: dict,
    retain_batch: dict | None = None,
    belief_batch: dict | None = None,
    *,
    scale: float = 1.0,
    backward=None,
    ref_model=None,
) -> dict:
    """Forward + backward of ``scale · (γ·L_forget + α·L_retain)`` on one (forget, retain) micro-batch; returns the
    detached numbers to log: ``forget``, ``retain``, ``total``, ``forget_logprob``, ``topk_mass``.

    ``cfg`` is the run's ``bs_ref.unlearn.UnlearnConfig``: its method (γ, the forget terms), α, ``retain_loss``
    ("nll" | "kl") and ``reduction`` ("row" | "token", docs/theory.md §11, for every term). ``retain_batch=None``
    (what the loop passes for a method without a retain term, or α = 0) leaves the retain term out.
    ``backward`` defaults to ``Tensor.backward`` (the loop passes ``accelerator.backward``); ``ref_model`` is
    π_ref (``bs_ref.unlearn.reference_model``), needed by NPO, the KL retain term and RMU's retain term. The
    caller accumulates, reduces across processes, clips and steps."""
    method = cfg.method
    gamma, alpha = method.gamma, cfg.alpha
    backward = backward if backward is not None else torch.Tensor.backward
    terms = method.forget_terms(forget_batch, belief_batch, reduction=cfg.reduction)
    together = len(terms) == 1 and terms[0].whole  # one forward: backwarded with the retain term below
    if together:
        stats = ForgetStats(method.top_k_for_logging)
        ref = ref_model if method.needs_reference else None
        forget = terms[0].weight * run_rows(model, method, terms[0], ref_model=ref, stats=stats)
        numbers = {**stats.numbers(), "forget": float(forget.detach())}
    else:  # several row sets (BS-S, Eq. 7): backwarded one after another, chunk by chunk
        numbers = backward_terms(model, method, terms, loss_scale=gamma * scale, backward=backward, ref_model=ref_model)
    retain = retain_term(cfg, model, retain_batch, ref_model) if retain_batch is not None and alpha > 0 else None
    if retain is not None:
        numbers["retain"] = float(retain.detach())
    numbers["total"] = gamma * numbers["forget"] + alpha * (numbers.get("retain") or 0.0)
    if not math.isfinite(numbers["total"]):
        return numbers  # the loop stops with NonFiniteLossError
    if together:
        backward(regularised_loss(forget, retain, gamma, alpha) * scale)  # L = γ·L_forget + α·L_retain
    elif retain is not None:
        backward(alpha * retain * scale)
    return numbers


def retain_term(cfg, model, retain_batch: dict, ref_model=None) -> torch.Tensor:
    """L_retain on one retain batch: the method's own (``Method.retain_term``: RMU's) or the answer NLL / KL(π_θ ‖
    π_ref) of ``cfg.retain_loss`` (``bs_ref.losses.retain_loss``), reduced as ``cfg.reduction`` says."""
    own = cfg.method.retain_term(model, retain_batch, ref_model, cfg.reduction)
    if own is not None:
        return own
    inputs = {"input_ids": retain_batch["input_ids"], "attention_mask": retain_batch["attention_mask"]}
    logits = model(**inputs).logits
    ref_logits = None
    if cfg.retain_loss == "kl":
        if ref_model is None:
            raise ValueError("retain_loss='kl' needs ref_model: π_ref on the same rows (see reference_model)")
        with torch.no_grad():
            ref_logits = ref_model(**inputs).logits
    return retain_loss(logits, retain_batch["labels"], cfg.retain_loss, ref_logits, cfg.reduction)
