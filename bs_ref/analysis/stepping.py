"""The stepping harness: plain-SGD unlearning runs on an ``LMCase``, traced at matched decrease of the target.

Paper: Li et al., "LLM Unlearning with LLM Beliefs", ICLR 2026 (arXiv 2510.19422), §3.2 (Fig. 2, squeezing) and
§6 (Fig. 4); docs/theory.md §5 (SEQ1, SEQ2). ``bs_ref.analysis.dynamics`` measures *one* step (Lemma 5.1); this module
takes many, on a whole Hugging Face model, and records what they do to the target answer y_u and to the band (the
other answers the model believes, ``bs_ref.analysis.cases``).

A run unlearns with a method *declaration* (``bs_ref.methods``: ``make_method("bs_t", temperature=4)`` or the
spec ``"bs_t:temperature=4"``) and knows no method names: the objective of one step is the declaration's forget
terms (``Method.forget_terms``) — the forget row alone with weight 1 for every method but BS-S, and for BS-S
(Eq. 7) the forget row with weight 1 − λ_BSS plus its off-policy beliefs D̂_u with weight λ_BSS. A method that
needs a reference (NPO, BS-S with the NPO base) gets log π_ref from the case's original weights θ_o.

Conventions. Every step is plain SGD on the minimised objective (θ ← θ − η ∇_θ L) over all parameters, so that
step size and direction are the method's own (with Adam, GA×(1−λ) would follow GA's trajectory exactly). The
step size of a run is calibrated so the first-order target decrease per step is ``drop / n_steps``; each run
steps until log π(y_u|x_u) has lost ``drop`` nats, and the band is read off at that point by linear
interpolation between the two steps around it (matched decrease: a "belief effect" is only what a method does
beyond the control GA×(1−λ) at the same decrease of the target). ``log π(y|x)`` is the summed log-probability
of the answer tokens, EOS included. The band rows 0, 2, … are BS-S's off-policy beliefs; rows 1, 3, … are held
out (``belief_split``) so that BS-S is not scored on the rows it ascends on.

    from bs_ref.analysis.cases import tiny_fact_case
    from bs_ref.analysis.stepping import squeeze_traces
    case = tiny_fact_case()
    traces = squeeze_traces(case, 0, (("GA", "ga"), ("BS-T τ=4", "bs_t:temperature=4")))
    traces["GA"].at_drop(1.0)["d_band"]          # > 0: the rephrasings rise while y_u loses 1 nat (SEQ1)
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from bs_ref.analysis.cases import LMCase, qa_batch
from bs_ref.analysis.dynamics import sgd_gradients
from bs_ref.losses import IGNORE_INDEX, sequence_logprob
from bs_ref.methods import Method, method_from_spec
from bs_ref.metrics.fork import fork  # the fork of SEQ1/SEQ2, shared with the experiment's belief bands

Batch = dict[str, torch.Tensor]


# --------------------------------------------------------------------------------------------------------------
# Rows, logits and log-probabilities of answers
# --------------------------------------------------------------------------------------------------------------


def answer_batch(case: LMCase, prompt: Sequence[int], answers: Sequence[Sequence[int]]) -> Batch:
    """The rows prompt+answer of one prompt and several answers (``cases.qa_batch``) on the case's device."""
    return qa_batch([prompt] * len(answers), answers, case.pad_id, case.device)


def batch_logits(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of a batch, kept only from the first position that predicts an answer token on
    (``logits_to_keep``: the vocabulary projection of the prompts is never computed)."""
    labels = batch["labels"]
    answer = labels != IGNORE_INDEX
    first = int(answer.float().argmax(-1)[answer.any(-1)].min()) if bool(answer.any()) else labels.shape[1] - 1
    keep = labels.shape[1] - first + 1
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], logits_to_keep=keep).logits
    return logits, labels[:, -keep:]


def answer_logits(case: LMCase, prompt: Sequence[int], answers: Sequence[Sequence[int]]):
    """Logits and labels of the rows prompt+answer (one prompt, several answers) at the answer positions."""
    return batch_logits(case.model, answer_batch(case, prompt, answers))


def answer_logprobs(
    case: LMCase, prompt: Sequence[int], answers: Sequence[Sequence[int]], suffix_from: Sequence[int] | None = None
):
    """log π(y|x) (summed over answer tokens) of each answer, no gradient. With ``suffix_from`` also the
    log-probability of each answer's tokens from that index on (its continuation after a fork), as a pair."""
    with torch.no_grad():
        logits, labels = answer_logits(case, prompt, answers)
        logp = torch.log_softmax(logits[:, :-1].double(), -1)
        target = labels[:, 1:]
        mask = target != IGNORE_INDEX
        token = logp.gather(-1, target.clamp(min=0)[..., None]).squeeze(-1) * mask
        full = [float(v) for v in token.sum(-1)]
        if suffix_from is None:
            return full
        first = mask.float().argmax(-1)  # position of each row's first answer token
        suffix = [float(token[r, int(first[r]) + s :].sum()) for r, s in enumerate(suffix_from)]
        return full, suffix


def belief_split(band: Sequence[Sequence[int]]) -> tuple[list[list[int]], list[list[int]]]:
    """BS-S's off-policy beliefs D̂_u (band rows 0, 2, 4 …) and the held-out band (rows 1, 3, …) on which the
    sequence-level claims are read, so that BS-S is not scored on the very rows it ascends on."""
    return [list(b) for b in band[0::2]], [list(b) for b in band[1::2]]


# --------------------------------------------------------------------------------------------------------------
# A method's forget objective on rows (no method names: the declaration's forget terms)
# --------------------------------------------------------------------------------------------------------------


def as_method(method: Method | str) -> Method:
    """A declaration, or the declaration a method spec names (``"bs_t:temperature=4"``)."""
    return method_from_spec(method) if isinstance(method, str) else method


def row_chunks(rows: Batch, chunk_rows: int | None) -> list[Batch]:
    """The batch itself, or its consecutive slices of ``chunk_rows`` rows."""
    n = len(rows["labels"])
    if not chunk_rows or chunk_rows >= n:
        return [rows]
    return [{k: v[i : i + chunk_rows] for k, v in rows.items()} for i in range(0, n, chunk_rows)]


def forget_objective(
    method: Method,
    forward: Callable[[Batch], tuple[torch.Tensor, torch.Tensor]],
    forget: Batch,
    beliefs: Batch | None = None,
    reference: Callable[[Batch], torch.Tensor] | None = None,
    model: torch.nn.Module | None = None,
    reduction: str = "row",
) -> torch.Tensor:
    """L_forget of ``method`` (before γ): Σ over its forget terms of weight · Σ over row chunks of the term's piece.

    ``forward(rows) -> (logits, labels)`` runs rows through the model (or slices precomputed logits);
    ``reference(rows) -> log π_ref(y|x)`` [rows] is needed only when ``method.needs_reference``. For every
    method but BS-S this is ``method.forget_loss`` on the forget rows; for BS-S it is Eq. (7). A term with its own
    forward (RMU: the hidden states of its layer) runs on ``model``. ``reduction``: the run's convention
    (docs/theory.md §11), as the loop passes it."""
    if method.needs_reference and reference is None:
        raise ValueError(f"{method.spec()} needs reference log-probabilities: pass reference=")
    total = None
    if method.reads_hidden_states and model is None:
        raise ValueError(f"{method.spec()} runs its own forward (one layer's hidden states): pass model=")
    for term in method.forget_terms(forget, beliefs, reduction=reduction):
        for chunk in row_chunks(term.rows, term.chunk_rows):
            if method.reads_hidden_states:
                logits, labels = method.hidden(model, chunk)[0], chunk["labels"]
            else:
                logits, labels = forward(chunk)
            ref = reference(chunk) if method.needs_reference else None
            value = term.weight * term.piece(logits, labels, ref)
            total = value if total is None else total + value
    return total


def reference_logprobs(case: LMCase, batches: Sequence[Batch]) -> Callable[[Batch], torch.Tensor]:
    """log π_ref(y|x) at the case's original weights θ_o for the rows of ``batches`` (and any slice of them),
    computed now, without gradient; the model is left at θ_o."""
    case.reset()
    table: dict[tuple, float] = {}
    with torch.no_grad():
        for b in batches:
            if b is None:
                continue
            values = sequence_logprob(*batch_logits(case.model, b))
            for row, value in zip(b["input_ids"].tolist(), values.tolist()):
                table[tuple(row)] = value

    def lookup(rows: Batch) -> torch.Tensor:
        values = [table[tuple(r)] for r in rows["input_ids"].tolist()]
        return torch.tensor(values, dtype=torch.float32, device=rows["input_ids"].device)

    return lookup


def item_batches(case: LMCase, item: int) -> tuple[Batch, Batch | None]:
    """(forget rows, off-policy belief rows) of one forget item: y_u, and the band rows 0, 2, … (D̂_u)."""
    beliefs, _ = belief_split(case.bands[item])
    prompt = case.prompts[item]
    return answer_batch(case, prompt, [case.targets[item]]), (answer_batch(case, prompt, beliefs) if beliefs else None)


# --------------------------------------------------------------------------------------------------------------
# Plain SGD on the model's parameters
# --------------------------------------------------------------------------------------------------------------


def trainable(case: LMCase, names: Sequence[str] | None = None) -> dict[str, torch.nn.Parameter]:
    """The parameters a run steps: all of them, or those named."""
    params = dict(case.model.named_parameters())
    return {n: params[n] for n in names} if names else params


def flat_grad(loss: torch.Tensor, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
    """∇_θ loss over ``params`` as one flat vector (zeros where a parameter is unused)."""
    return torch.cat([g.reshape(-1) for g in sgd_gradients(params, loss).values()])


def sgd_step(params: dict[str, torch.nn.Parameter], grad: torch.Tensor, lr: float) -> None:
    """θ ← θ − η·g in place, for a flat gradient g over ``params`` (``flat_grad``'s order)."""
    with torch.no_grad():
        offset = 0
        for p in params.values():
            n = p.numel()
            p.sub_(lr * grad[offset : offset + n].view_as(p).to(p.dtype))
            offset += n


def target_logprob_grad(case: LMCase, item: int, params: dict[str, torch.nn.Parameter]) -> torch.Tensor:
    """∇_θ log π(y_u|x_u) (summed over the target's tokens), flat."""
    logits, labels = answer_logits(case, case.prompts[item], [case.targets[item]])
    return flat_grad(sequence_logprob(logits, labels).sum(), params)


# --------------------------------------------------------------------------------------------------------------
# Traces
# --------------------------------------------------------------------------------------------------------------


@dataclass
class Trace:
    """One unlearning run on one item: log π of the target and of each band row after every step (and of each
    band row's continuation after its fork from the target, ``band_suffix``)."""

    method: str  # the method spec
    lr: float
    target: list[float]
    band: list[list[float]]  # [step][band row]
    band_suffix: list[list[float]]  # [step][band row]
    belief_rows: list[int]  # indices into the band used as BS-S beliefs
    heldout_rows: list[int]

    def band_mean(self, rows: Sequence[int] | None = None, suffix: bool = False) -> list[float]:
        values = self.band_suffix if suffix else self.band
        rows = range(len(values[0])) if rows is None else rows
        return [sum(b[r] for r in rows) / max(len(rows), 1) for b in values]

    def at_drop(self, drop: float, rows: Sequence[int] | None = None, suffix: bool = False) -> dict[str, Any]:
        """Band change (mean over ``rows``) when the target has lost exactly ``drop`` nats (linear interpolation
        between the two steps around that point; the last step if it was never reached)."""
        band = self.band_mean(rows, suffix)
        goal = self.target[0] - drop
        for s in range(1, len(self.target)):
            if self.target[s] <= goal:
                w = (self.target[s - 1] - goal) / max(self.target[s - 1] - self.target[s], 1e-12)
                value = band[s - 1] + w * (band[s] - band[s - 1])
                return {"d_band": value - band[0], "d_target": -drop, "steps": s - 1 + w, "reached": True}
        last = len(band) - 1
        return {
            "d_band": band[-1] - band[0],
            "d_target": self.target[-1] - self.target[0],
            "steps": last,
            "reached": False,
        }


def unlearning_trace(
    case: LMCase,
    item: int,
    method: Method | str,
    drop: float = 1.0,
    n_steps: int = 4,
    max_steps: int = 12,
    reduction: str = "row",
) -> Trace:
    """SGD on ``method``'s forget objective from θ_o until log π(y_u|x_u) has lost ``drop`` nats. The step size is
    calibrated so the first-order target decrease per step is drop/n_steps (η = drop / (n_steps·⟨∇ log π(y_u),
    −∇L⟩)): every method, control included, reaches the matched decrease in about the same number of steps.
    The parameters stepped are the method's (``Method.trainable_names``: RMU's few layers; all for the others), its
    once-drawn parts are fixed under seed 0 (``Method.prepare``), and ``reduction`` is the run's convention."""
    method = as_method(method)
    forget, beliefs = item_batches(case, item)
    reference = reference_logprobs(case, (forget, beliefs)) if method.needs_reference else None
    case.reset()
    method.prepare(case.model, 0)
    params = trainable(case, method.trainable_names(case.model))
    n_band = len(case.bands[item])
    belief_rows, heldout = list(range(n_band))[0::2], list(range(n_band))[1::2]
    rows = [case.targets[item]] + list(case.bands[item])
    forks = [0] + [fork(b, case.targets[item]) for b in case.bands[item]]
    target, band, band_suffix = [], [], []

    def score():
        full, suffix = answer_logprobs(case, case.prompts[item], rows, forks)
        target.append(full[0])
        band.append(full[1:])
        band_suffix.append(suffix[1:])

    def gradient():
        forward = functools.partial(batch_logits, case.model)
        objective = forget_objective(method, forward, forget, beliefs, reference, case.model, reduction)
        return flat_grad(objective, params)

    score()
    grad = gradient()
    rate = float(torch.dot(target_logprob_grad(case, item, params), -grad))  # d log π(y_u)/dη at η = 0
    if not rate < 0:
        case.reset()
        raise ValueError(f"{method.spec()} does not lower the target at first order on item {item} (rate {rate:.3g})")
    lr = drop / (n_steps * -rate)
    for step in range(max_steps):
        if step:
            grad = gradient()
        sgd_step(params, grad, lr)
        score()
        if target[-1] <= target[0] - drop:
            break
    case.reset()
    return Trace(method.spec(), lr, target, band, band_suffix, belief_rows, heldout)


Runs = tuple[tuple[str, str], ...]
"""Unlearning runs as (label, method spec) pairs, e.g. ``(("GA", "ga"), ("BS-T τ=4", "bs_t:temperature=4"))``."""


@functools.lru_cache(maxsize=64)
def squeeze_traces(
    case: LMCase, item: int, runs: Runs, drop: float = 1.0, n_steps: int = 4, reduction: str = "row"
) -> dict[str, Trace]:
    """One trace per run on one item, keyed by the run's label (cached per case, item, runs, budget and reduction);
    each run may take up to 3·n_steps steps to reach the matched decrease."""
    return {label: unlearning_trace(case, item, spec, drop, n_steps, 3 * n_steps, reduction) for label, spec in runs}


__all__ = [
    "Runs",
    "Trace",
    "answer_batch",
    "answer_logits",
    "answer_logprobs",
    "as_method",
    "batch_logits",
    "belief_split",
    "flat_grad",
    "forget_objective",
    "fork",
    "item_batches",
    "reference_logprobs",
    "row_chunks",
    "sgd_step",
    "squeeze_traces",
    "target_logprob_grad",
    "trainable",
    "unlearning_trace",
]
