"""Small helpers shared by the toy checkers: first-order rates on free logits / a linear head / ToyAR,
and the bookkeeping that turns many checked instances into one ``Evidence``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from bs_ref.analysis.dynamics import linearised_change, one_step_change

from ._core import Evidence
from .toy import DTYPE, free_logits_fn, linear_head_fn, token_loss_fn


def rnd(x: float, digits: int = 4) -> float:
    return float(f"{float(x):.{digits}g}")


def log_softmax_probe(z: torch.Tensor) -> torch.Tensor:
    return torch.log_softmax(z, -1)


def free_step(z: torch.Tensor, loss, target: int, eta: float, **kwargs) -> torch.Tensor:
    """Exact Δ log p [V] after one SGD step on free logits z with the library ``loss`` on ``target``."""
    fn = token_loss_fn(loss, target, **kwargs)
    return one_step_change(free_logits_fn, {"z": z}, None, fn, None, log_softmax_probe, eta)


def free_rate(z: torch.Tensor, loss, target: int, **kwargs) -> torch.Tensor:
    """First-order rate d(Δ log p)/dη [V] at η → 0 on free logits (autograd, forward mode)."""
    fn = token_loss_fn(loss, target, **kwargs)
    return linearised_change(free_logits_fn, {"z": z}, None, fn, None, log_softmax_probe, 1.0)


def head_step(params: dict, phi: torch.Tensor, loss, target: int, eta: float, **kwargs) -> torch.Tensor:
    """Exact Δ log p [V] of a linear head at input φ after one SGD step on (φ, target)."""
    fn = token_loss_fn(loss, target, **kwargs)
    return one_step_change(linear_head_fn, params, phi, fn, phi, log_softmax_probe, eta)


def head_rate(params: dict, phi: torch.Tensor, loss, target: int, **kwargs) -> torch.Tensor:
    fn = token_loss_fn(loss, target, **kwargs)
    return linearised_change(linear_head_fn, params, phi, fn, phi, log_softmax_probe, 1.0)


def ar_position_rate(
    case, row: torch.Tensor, position: int, target: int, loss, params: dict | None = None, **kwargs
) -> torch.Tensor:
    """First-order rate of Δ log p at one position of ToyAR for one step on ``target`` at that position.

    ``row`` [1, T] input ids; ``position`` t: the logits at t predict token t+1 (set to ``target`` in labels).
    """
    fn, own = case.fn_params()
    params = own if params is None else params
    labels = torch.full_like(row, -100)
    labels[0, position + 1] = target

    def loss_fn(z):
        return loss(z, labels, **kwargs)

    def probe(z):
        return torch.log_softmax(z[0, position], -1)

    return linearised_change(fn, params, row, loss_fn, row, probe, 1.0)


@dataclass
class Tally:
    """Counts instances where a statement held, and keeps the first / worst counterexample."""

    checked: int = 0
    failed: int = 0
    counterexample: str | None = None
    worst: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)

    def add(self, ok: bool, describe=None, margin: float | None = None) -> None:
        self.checked += 1
        if ok:
            return
        self.failed += 1
        if self.counterexample is None or (margin is not None and (self.worst is None or margin < self.worst)):
            self.counterexample = describe() if callable(describe) else describe
            self.worst = margin

    @property
    def holds(self) -> bool:
        return self.checked > 0 and self.failed == 0

    def summary(self) -> dict[str, Any]:
        return {"checked": self.checked, "failed": self.failed}


def fmt_p(p: torch.Tensor, digits: int = 3) -> str:
    return "[" + ", ".join(f"{float(v):.{digits}f}" for v in p) + "]"


def evidence(
    tier: str,
    statement: Tally,
    instance: str,
    numbers: dict[str, Any] | None = None,
    condition: str | None = None,
    under_condition: Tally | None = None,
    correction: str | None = None,
) -> Evidence:
    """Evidence for a statement checked on many instances, optionally with a rescuing condition."""
    nums = {"instances": statement.checked, "failed": statement.failed}
    if under_condition is not None:
        nums.update(condition_checked=under_condition.checked, condition_failed=under_condition.failed)
    nums.update(numbers or {})
    ev = Evidence(tier, statement.holds, nums, instance, statement.counterexample)
    if condition is not None and not statement.holds:
        ev.condition = condition
        ev.holds_under_condition = under_condition.holds if under_condition is not None else None
    if correction is not None:
        ev.correction = correction
    return ev


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


__all__ = ["DTYPE", "Tally", "evidence", "fmt_p", "free_rate", "free_step", "gen", "head_rate", "head_step", "rnd"]
