"""Evaluation sharded across the processes of a multi-process run (``accelerate launch``, ``torchrun``).

``bs_ref.metrics.scores.evaluate`` scores every item of a split on one process. In a run of P processes,
``evaluate_sharded`` gives each process a contiguous shard of every split (``shard_bounds``: sizes differ by at
most one, the first ``n % P`` shards one longer), evaluates it with ``evaluate_split``, and gathers the items back
in record order on every process, with each item's ``index`` its position in the whole split. Every per-item
number is a function of the item alone (teacher-forced scores are right padded; greedy answers are decoded per
prompt), so the result equals one process's to float rounding of differently shaped batches (tests: equal
generations, numbers within 1e-6). The sampled leakage probes (``num_samples > 0``) are the exception: a
sampled answer depends on which prompts share its batch, on one process as across several.

    per_split = evaluate_sharded(model, tokenizer, {"forget": forget, "retain": retain}, template="chat")
    if PartialState().is_main_process:
        write_eval_log("eval.json", per_split)

Outside a process group (one process) it is ``evaluate`` itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch.distributed as dist

from bs_ref.metrics.scores import evaluate_split


def process_layout(process_index: int | None = None, num_processes: int | None = None) -> tuple[int, int]:
    """(this process's index, the number of processes): the torch.distributed group's when initialised, else (0, 1);
    explicit arguments win."""
    initialised = dist.is_available() and dist.is_initialized()
    if process_index is None:
        process_index = dist.get_rank() if initialised else 0
    if num_processes is None:
        num_processes = dist.get_world_size() if initialised else 1
    if not 0 <= process_index < num_processes:
        raise ValueError(f"process_index={process_index} must lie in [0, num_processes={num_processes})")
    return process_index, num_processes


def shard_bounds(n: int, process_index: int, num_processes: int) -> tuple[int, int]:
    """[start, stop) of process ``process_index``'s contiguous shard of ``n`` items."""
    size, extra = divmod(n, num_processes)
    start = process_index * size + min(process_index, extra)
    return start, start + size + (1 if process_index < extra else 0)


def shard_records(records: Sequence, process_index: int | None = None, num_processes: int | None = None) -> list:
    """This process's contiguous shard of ``records`` (possibly empty when there are fewer records than processes)."""
    index, count = process_layout(process_index, num_processes)
    start, stop = shard_bounds(len(records), index, count)
    return list(records[start:stop])


def gather_shards(shard: list, num_processes: int | None = None) -> list:
    """Every process's ``shard`` concatenated in process order, on every process (``all_gather_object``)."""
    _, count = process_layout(None, num_processes)
    if count == 1:
        return list(shard)
    shards: list[Any] = [None] * count
    dist.all_gather_object(shards, list(shard))
    return [item for part in shards for item in part]


def evaluate_sharded(
    model, tokenizer, splits: dict[str, Sequence[dict]], template: str = "plain", **kwargs
) -> dict[str, list[dict]]:
    """``bs_ref.metrics.scores.evaluate`` with every split sharded across the processes and gathered back (the same
    items, in record order, on every process). ``kwargs`` go to ``evaluate_split``. Every process must call it."""
    index, count = process_layout()
    out = {}
    for kind, records in splits.items():
        start, stop = shard_bounds(len(records), index, count)
        items = (
            evaluate_split(model, tokenizer, list(records[start:stop]), kind, template, **kwargs)
            if stop > start
            else []
        )
        for offset, item in enumerate(items):
            item["index"] = start + offset
        out[kind] = gather_shards(items, count)
    return out
