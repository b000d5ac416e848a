"""RMU: representation misdirection for unlearning (Li et al. 2024, "The WMDP Benchmark", §5).

RMU works on the hidden state ``h_ℓ`` that decoder layer ℓ outputs (the residual stream after layer ℓ), not on
the logits. With a fixed random unit direction ``u`` (drawn once, uniform on [0, 1)^d and normalised) and a
steering coefficient ``c``, on the answer positions A of every row (docs/theory.md §14):

    L_forget = E_{D_u} mean_{t∈A} (1/d)·‖h_ℓ^θ(t) − c·u‖²            steer forget states to a random direction
    L_retain = E_{D_r} mean_{t∈A} (1/d)·‖h_ℓ^θ(t) − h_ℓ^ref(t)‖²       keep retain states where π_ref has them

and only the weights of a few layers at and below ℓ train (``bs_ref.methods.RMU``). The paper prints the squared
norm ‖·‖²; the 1/d (a mean over the d coordinates) is that of the authors' ``mse_loss`` and of OpenUnlearning,
whose coefficients (c, α) bs_ref's defaults are. The answer positions are those whose label is not -100, taken
without the shift of the logit losses (as OpenUnlearning masks RMU's activations): the hidden state at position
t is the one whose label is answer token t, so the last prompt position is out and the answer's last token in.

``rmu_loss`` / ``rmu_retain_loss`` are the fast forms (one boolean gather of the answer positions, the "row" or
"token" reduction); ``rmu_loss_paper`` / ``rmu_retain_loss_paper`` write the sums of the formula row by row, for
reading and for the tests.

Shapes: hidden [B, T, d], labels [B, T] (HF-aligned, -100 on prompt/padding) → scalar.
"""

from __future__ import annotations

import math

import torch

from ._common import IGNORE_INDEX, check_reduction, compute_dtype, reduce_rows

REFERENCE_WIDTH = 2048
"""Hidden width of Llama-3.2-1B, for which OpenUnlearning's TOFU default c = 300 is set (docs/theory.md §14)."""
REFERENCE_COEFF = 300.0
"""OpenUnlearning's TOFU steering coefficient (configs/trainer/RMU.yaml)."""


def steering_direction(width: int, seed: int = 0) -> torch.Tensor:
    """The fixed random unit direction u ∈ R^d of RMU: uniform on [0, 1)^d, normalised (float64, CPU; its own
    ``torch.Generator``, so the global RNG is never used)."""
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"the hidden width must be an integer >= 1, got {width!r}")
    u = torch.rand(width, generator=torch.Generator().manual_seed(int(seed)), dtype=torch.float64)
    return u / u.norm()


def default_coefficient(width: int) -> float:
    """c for a hidden width d when none is given: 300·√(d/2048), the per-coordinate target c/√d ≈ 6.63 of
    OpenUnlearning's c = 300 on Llama-3.2-1B (d = 2048) held fixed across widths (docs/theory.md §14)."""
    return REFERENCE_COEFF * math.sqrt(width / REFERENCE_WIDTH)


def _check(hidden: torch.Tensor, labels: torch.Tensor, name: str) -> None:
    if not isinstance(hidden, torch.Tensor) or hidden.dim() != 3 or not hidden.is_floating_point():
        raise ValueError(
            f"{name} must be a floating-point tensor of shape [B, T, d], got {getattr(hidden, 'shape', type(hidden))}"
        )
    if not isinstance(labels, torch.Tensor) or labels.shape != hidden.shape[:2] or labels.is_floating_point():
        raise ValueError(
            f"labels must be an integer tensor of shape [B, T] matching {name} {tuple(hidden.shape)}, "
            f"got {getattr(labels, 'shape', type(labels))}"
        )


def _reduce(values: torch.Tensor, mask: torch.Tensor, reduction: str) -> torch.Tensor:
    """Per-position values [N] (the answer positions of ``mask`` [B, T], in row order) reduced as ``reduction``
    says: "row" (mean per row, then over rows with answer positions), "token" (mean over all), "sum", "none"."""
    check_reduction(reduction)
    if reduction == "token":
        return values.mean() if values.numel() else values.sum()
    counts = mask.sum(dim=1)
    rows = mask.nonzero(as_tuple=True)[0]
    row_mean = values.new_zeros(mask.shape[0]).index_add(0, rows, values) / counts.clamp(min=1).to(values.dtype)
    return reduce_rows(row_mean, counts > 0, reduction)


def activation_distance(
    hidden: torch.Tensor, target: torch.Tensor, labels: torch.Tensor, reduction: str = "row", name: str = "hidden"
) -> torch.Tensor:
    """(1/d)·‖hidden(t) − target(t)‖² at the answer positions (labels ≠ -100, no shift), reduced. ``target``
    broadcasts against the answer positions' states: [d] (RMU's c·u) or [B, T, d] (π_ref's states)."""
    _check(hidden, labels, name)
    mask = labels != IGNORE_INDEX
    h = hidden[mask].to(compute_dtype(hidden))  # [N, d]
    goal = target[mask] if target.dim() == 3 else target[None, :]
    values = (h - goal.to(h)).pow(2).mean(dim=-1)  # (1/d)·‖h − goal‖² per answer position
    if not bool(torch.isfinite(values).all()):
        raise ValueError(f"{name} contain NaN or inf at answer positions; the model diverged (lower the learning rate)")
    return _reduce(values, mask, reduction)


def rmu_loss(hidden: torch.Tensor, labels: torch.Tensor, control: torch.Tensor, reduction: str = "row") -> torch.Tensor:
    """RMU's forget term: the states of layer ℓ on the forget answers against the control vector c·u [d]."""
    if control.dim() != 1 or control.shape[0] != hidden.shape[-1]:
        raise ValueError(f"control must be a vector of the hidden width {hidden.shape[-1]}, got {tuple(control.shape)}")
    return activation_distance(hidden, control, labels, reduction)


def rmu_retain_loss(
    hidden: torch.Tensor, ref_hidden: torch.Tensor, labels: torch.Tensor, reduction: str = "row"
) -> torch.Tensor:
    """RMU's retain term: the states of layer ℓ on the retain answers against π_ref's (no gradient through them)."""
    _check(ref_hidden, labels, "ref_hidden")
    if ref_hidden.shape != hidden.shape:
        raise ValueError(f"ref_hidden {tuple(ref_hidden.shape)} must match hidden {tuple(hidden.shape)}")
    return activation_distance(hidden, ref_hidden.detach(), labels, reduction)


# ----------------------------------------------------------------------------------------------------------------
# The paper's forms (reading/test forms): the sums of the formula, row by row
# ----------------------------------------------------------------------------------------------------------------


def _paper_mean(hidden: torch.Tensor, labels: torch.Tensor, goal_of_row) -> torch.Tensor:
    """E_rows (1/|A|) Σ_{t∈A} (1/d)·‖h(t) − goal(t)‖², over the rows with at least one answer position."""
    _check(hidden, labels, "hidden")
    d = hidden.shape[-1]
    per_row = []
    for r in range(hidden.shape[0]):
        positions = [t for t in range(hidden.shape[1]) if int(labels[r, t]) != IGNORE_INDEX]  # A, no shift
        if not positions:
            continue  # a row without answer positions is left out of the mean
        total = sum(((hidden[r, t].to(compute_dtype(hidden)) - goal_of_row(r, t)) ** 2).sum() / d for t in positions)
        per_row.append(total / len(positions))
    return torch.stack(per_row).mean() if per_row else hidden.new_zeros((), dtype=compute_dtype(hidden))


def rmu_loss_paper(hidden: torch.Tensor, labels: torch.Tensor, control: torch.Tensor) -> torch.Tensor:
    """L_forget = E_{D_u} (1/|A|) Σ_{t∈A} (1/d)·‖h_ℓ(t) − c·u‖² as printed (with OpenUnlearning's 1/d), row by row."""
    return _paper_mean(hidden, labels, lambda r, t: control.to(compute_dtype(hidden)))


def rmu_retain_loss_paper(hidden: torch.Tensor, ref_hidden: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """L_retain = E_{D_r} (1/|A|) Σ_{t∈A} (1/d)·‖h_ℓ^θ(t) − h_ℓ^ref(t)‖², row by row."""
    return _paper_mean(hidden, labels, lambda r, t: ref_hidden[r, t].detach().to(compute_dtype(hidden)))
