"""Replay a deterministic unlearning run to given steps (docs/theory.md §9: attacks at matched forgetting).

The metric tables read a method off its curve at the matched level by interpolating between evaluations; an
attack needs the *weights* there. ``bs_ref.unlearn.unlearn`` is deterministic under its config on one machine
(seeded batch order, seeded belief sampling, evaluation callbacks that never draw from the global random stream),
so running the same config again from the same original model passes through the same weights. ``replay_unlearning``
does that on a deep copy and keeps a copy of the model at each requested step (or at the first step where
``until(step, model)`` holds), stopping the run as soon as it has them.

Only the stopping point differs from the original run: the learning-rate schedule still spans the run's full
length (``epochs``, ``max_steps`` are kept; setting ``max_steps`` to the target step instead would shorten the
linear decay and give other weights). The callback cadence (``eval_every``) is changed to 1, which does not change
the weights; the train log is not written (``log_path`` None), so the run's own log is never overwritten.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Iterable

from bs_ref.lora import is_lora_model, merge_lora
from bs_ref.unlearn import UnlearnConfig, unlearn


class _Done(Exception):
    """Raised inside the callback once every requested snapshot is taken."""


def _snapshot(model):
    return merge_lora(model, inplace=False) if is_lora_model(model) else copy.deepcopy(model)


def replay_unlearning(
    original,
    tokenizer,
    forget_records: list[dict],
    retain_records: list[dict] | None,
    cfg: UnlearnConfig,
    steps: Iterable[int] = (),
    *,
    until: Callable[[int, object], bool] | None = None,
    accelerator=None,
) -> dict[int, object]:
    """{step: model after that many optimiser steps} of the run ``unlearn(copy(original), ..., cfg)``.

    ``steps``: the optimiser steps to keep (0 is the original model). ``until(step, model)``: called after every
    step (model in eval mode, no grad); the first step where it returns True is kept too and the replay stops
    there. Each kept model is a plain copy in eval mode (a LoRA adapter merged). A requested step past the
    run's last step raises a ValueError naming the last one. ``accelerator``: as for ``unlearn`` (pass one built
    like the run's, e.g. ``Accelerator(cpu=..., mixed_precision=cfg.mixed_precision)``). ``original`` is never
    changed."""
    wanted = sorted({int(s) for s in steps})
    if any(s < 0 for s in wanted):
        raise ValueError(f"steps must be >= 0, got {wanted}")
    if not wanted and until is None:
        raise ValueError("name the steps to replay to (steps=[...]) or a stopping rule (until=...)")
    last_wanted = wanted[-1] if wanted else None
    kept: dict[int, object] = {}
    reached = {"step": 0}

    def callback(step: int, model) -> None:
        reached["step"] = step
        if step in wanted and step not in kept:
            kept[step] = _snapshot(model).eval()
        if until is not None and step not in kept and until(step, model):
            kept[step] = _snapshot(model).eval()
            raise _Done
        if until is None and last_wanted is not None and step >= last_wanted:
            raise _Done

    replay_cfg = dataclasses.replace(cfg, eval_every=1, eval_at_start=True, log_path=None, progress=False)
    try:
        unlearn(copy.deepcopy(original), tokenizer, forget_records, retain_records, replay_cfg, callback, accelerator)
    except _Done:
        pass
    missing = [s for s in wanted if s not in kept]
    if missing:
        raise ValueError(f"the run ends at step {reached['step']}; cannot replay to step(s) {missing}")
    return kept
