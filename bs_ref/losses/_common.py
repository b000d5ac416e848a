"""Shared pieces of every loss: input checks, answer-token gathering, reductions.

Conventions (docs/theory.md §1):
    logits  [B, T, V]  as a Hugging Face causal LM returns them (position t predicts token t+1)
    labels  [B, T]     aligned with input_ids; prompt and padding positions hold IGNORE_INDEX (-100)

Every loss shifts internally (logits[:, :-1] predict labels[:, 1:]) and then works only on the
*answer tokens* — the positions whose shifted label is not -100. Selecting those rows first means that
prompt/padding logits can never reach a value or a gradient, and that the log-normaliser is computed only
where it is needed.

Arithmetic is done in ``compute_dtype(logits)``: float32 for half-precision logits, float64 for float64.

The paper's forms of the losses (``*_loss_paper``, for reading and for the tests) start from
``dense_answers``, which keeps the dense log-distribution log p_i over the whole vocabulary at every answer
position, and reduce with ``answer_mean`` (E_{D_u} mean_{i∈A}); the fast forms use ``answer_tokens`` and
``reduce_tokens``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

IGNORE_INDEX = -100

REDUCTIONS = ("row", "token", "sum", "none")
"""``row``: mean over each row's answer tokens, then mean over the rows that have at least one (the
authors' BS-T convention, the default); ``token``: mean over all answer tokens in the batch (what
``model(labels=...).loss`` of Hugging Face computes); ``sum``: sum of per-row means over rows with
answers; ``none``: per-row means, shape [B] (0 for a row without answer tokens)."""


def compute_dtype(t: torch.Tensor) -> torch.dtype:
    """float64 stays float64; everything else (bf16, fp16, fp32) is computed in float32."""
    return torch.float64 if t.dtype == torch.float64 else torch.float32


def check_logits_labels(logits: torch.Tensor, labels: torch.Tensor, name: str = "logits") -> None:
    """Raise one clear ValueError for inputs no loss can use."""
    if not isinstance(logits, torch.Tensor) or not isinstance(labels, torch.Tensor):
        raise ValueError(f"{name} and labels must be torch tensors, got {type(logits)} and {type(labels)}")
    if logits.dim() != 3:
        raise ValueError(f"{name} must have shape [B, T, V], got {tuple(logits.shape)}")
    if labels.dim() != 2 or labels.shape != logits.shape[:2]:
        raise ValueError(
            f"labels must have shape [B, T] matching {name} {tuple(logits.shape)}, got {tuple(labels.shape)}; "
            "pass the labels aligned with input_ids (the loss shifts them internally)"
        )
    if not logits.is_floating_point():
        raise ValueError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"labels must be an integer tensor, got dtype {labels.dtype}")
    vocab = logits.shape[-1]
    answer = labels[:, 1:] != IGNORE_INDEX
    if answer.any():
        used = labels[:, 1:][answer]
        lo, hi = int(used.min()), int(used.max())
        if lo < 0 or hi >= vocab:
            raise ValueError(
                f"labels must be token ids in [0, {vocab}) or {IGNORE_INDEX} (ignored), found {lo if lo < 0 else hi}; "
                "check that the tokenizer matches the model's vocabulary"
            )


@dataclass
class AnswerTokens:
    """The answer positions of a batch, flattened.

    logits   [N, V]  logits that predict each answer token (compute dtype)
    targets  [N]     the answer token ids
    rows     [N]     which batch row each answer token belongs to
    counts   [B]     number of answer tokens per row
    logz     [N]     log-normaliser logsumexp(logits) of each position
    """

    logits: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    counts: torch.Tensor
    logz: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.counts.shape[0]

    def target_logprob(self) -> torch.Tensor:
        """log p_i[y_i] for every answer token, shape [N]."""
        return self.logits.gather(-1, self.targets[:, None]).squeeze(-1) - self.logz


def answer_tokens(logits: torch.Tensor, labels: torch.Tensor, name: str = "logits") -> AnswerTokens:
    """Check inputs, shift, and gather the answer positions (see module docstring)."""
    check_logits_labels(logits, labels, name)
    shifted_labels = labels[:, 1:]
    mask = shifted_labels != IGNORE_INDEX
    rows = mask.nonzero(as_tuple=True)[0]
    z = logits[:, :-1, :][mask].to(compute_dtype(logits))
    targets = shifted_labels[mask]
    logz = torch.logsumexp(z, dim=-1)
    if not bool(torch.isfinite(logz).all()):
        raise ValueError(
            f"{name} contain NaN or +inf at answer positions; the model diverged or the input is corrupt "
            "(lower the learning rate, or check the forward pass in float32)"
        )
    at = AnswerTokens(z, targets, rows, mask.sum(dim=1), logz)
    if not bool(torch.isfinite(at.target_logprob()).all()):
        raise ValueError(f"{name} give the answer token probability 0 (a -inf logit at a label)")
    return at


def per_row_sum(values: torch.Tensor, at: AnswerTokens) -> torch.Tensor:
    """Sum per-token values [N] into their rows, shape [B] (0 for rows without answer tokens)."""
    out = values.new_zeros(at.batch_size)
    return out.index_add(0, at.rows, values)


def reduce_tokens(values: torch.Tensor, at: AnswerTokens, reduction: str = "row") -> torch.Tensor:
    """Reduce per-answer-token values [N] (see ``REDUCTIONS``). Never NaN when rows lack answers."""
    if reduction == "token":
        if values.numel() == 0:
            return values.sum()
        return values.mean()
    row_mean = per_row_sum(values, at) / at.counts.clamp(min=1).to(values.dtype)
    return reduce_rows(row_mean, at.counts > 0, reduction)


def reduce_rows(row_values: torch.Tensor, has_answer: torch.Tensor, reduction: str = "row") -> torch.Tensor:
    """Reduce per-row values [B] over the rows that have at least one answer token."""
    if reduction == "none":
        return torch.where(has_answer, row_values, torch.zeros_like(row_values))
    kept = row_values[has_answer]
    if reduction == "sum":
        return kept.sum()
    if reduction in ("row", "token"):
        return kept.sum() / max(int(has_answer.sum()), 1)
    raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_reduction(reduction: str) -> None:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")


def check_fraction(value: float, name: str) -> None:
    if not (0.0 <= float(value) <= 1.0):
        raise ValueError(f"{name} must lie in [0, 1], got {value}")


def check_positive(value: float, name: str) -> None:
    if not float(value) > 0.0:
        raise ValueError(f"{name} must be > 0, got {value}")


def sequence_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed answer log-probability log π(y|x) of every row, shape [B] (0 for rows without answers).

    This is what ``npo_loss`` needs from the reference model (computed under ``torch.no_grad()``).
    """
    at = answer_tokens(logits, labels)
    return per_row_sum(at.target_logprob(), at)


def mean_token_logprob(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Length-normalised answer log-probability −ℓ̄ of every row, shape [B] (0 for rows without answers)."""
    at = answer_tokens(logits, labels)
    return per_row_sum(at.target_logprob(), at) / at.counts.clamp(min=1)


# ----------------------------------------------------------------------------------------------------------------
# The paper's forms (reading/test forms, O(N·|V|) memory): dense log-distributions, plain means
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class DenseAnswers:
    """The answer positions of a batch with their dense log-distribution, as the paper's formulas are written.

    logits   [N, V]  z_i, the logits that predict answer token i (compute dtype)
    logp     [N, V]  log p_i = log_softmax(z_i) over the whole vocabulary
    targets  [N]     the answer token ids y_i
    rows     [N]     which batch row each answer token belongs to
    counts   [B]     |A|, the number of answer tokens of every row
    """

    logits: torch.Tensor
    logp: torch.Tensor
    targets: torch.Tensor
    rows: torch.Tensor
    counts: torch.Tensor

    def target_logprob(self) -> torch.Tensor:
        """log p_i[y_i] = log π_θ(y_i | x, y_<i) for every answer token, shape [N]."""
        return self.logp.gather(-1, self.targets[:, None]).squeeze(-1)

    def row_sum(self, values: torch.Tensor) -> torch.Tensor:
        """Σ_{i∈A} values_i of every row, shape [B] (0 for rows without answer tokens)."""
        return values.new_zeros(self.counts.shape[0]).index_add(0, self.rows, values)


def dense_answers(logits: torch.Tensor, labels: torch.Tensor, name: str = "logits") -> DenseAnswers:
    """Check inputs, shift (position t predicts label t+1), keep the answer positions A and take the dense
    log_softmax over the whole vocabulary there (the paper's forms only; the fast forms use ``answer_tokens``)."""
    check_logits_labels(logits, labels, name)
    mask = labels[:, 1:] != IGNORE_INDEX  # A: the answer positions (prompt and padding are -100)
    z = logits[:, :-1, :][mask].to(compute_dtype(logits))  # z_i, [N, V]
    logp = torch.log_softmax(z, dim=-1)  # log p_i, [N, V]
    return DenseAnswers(z, logp, labels[:, 1:][mask], mask.nonzero(as_tuple=True)[0], mask.sum(dim=1))


def mean_over_rows(row_values: torch.Tensor, has_answer: torch.Tensor) -> torch.Tensor:
    """E_{D_u}: the mean of per-row values [B] over the rows that have at least one answer token (0 if none)."""
    kept = row_values[has_answer]
    return kept.mean() if kept.numel() else kept.sum()


def answer_mean(values: torch.Tensor, da: DenseAnswers) -> torch.Tensor:
    """E_{D_u} mean_{i∈A} values_i: the mean over each row's answer tokens, then over the rows with answers
    (the per-sequence mean of the authors' code, docs/theory.md §11.1)."""
    has_answer = da.counts > 0
    return mean_over_rows(da.row_sum(values) / da.counts.clamp(min=1).to(values.dtype), has_answer)
