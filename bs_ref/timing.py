"""Wall time by part of a run: where an experiment's time goes (``timing.json``, the summary's "Time:" line).

``part(name)`` is a context manager that charges the wall time inside it to ``name`` in the process-wide
ledger ``LEDGER``. Parts nest exclusively: time spent in an inner part (the belief sampling inside a BS-S
unlearning run, a curve evaluation inside its training loop) is charged to the inner part only, so the parts
add up to the time they cover. An inner part of the same category as the running one (the text before ``:``,
e.g. the final evaluation of a reference model inside ``evaluation: start``) is charged to the running one.

Names used by the TOFU experiment: ``pair``, ``unlearning: <method>``, ``beliefs (BS-S)``, ``evaluation: start``,
``evaluation: curve``, ``evaluation: final``, ``attacks: <model>`` (``original`` and ``retrain`` are the
references), ``replays`` (models rebuilt for attacks) and ``report``. Timing never touches a number.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections.abc import Callable, Iterator, Mapping

CATEGORIES = ("pair", "unlearning", "beliefs", "evaluation", "attacks", "replays", "report")
"""The coarse parts the terminal summary shows, in order (the category of a part: its name before ``:``)."""


def category(name: str) -> str:
    """``unlearning: bs_s`` -> ``unlearning``; ``beliefs (BS-S)`` -> ``beliefs``."""
    return name.split(":", 1)[0].split(" (", 1)[0].strip()


class Ledger:
    """Seconds by part name (exclusive of nested parts); see the module docstring."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self._stack: list[list] = []  # [name, time the part last resumed]

    def _charge(self, name: str, seconds: float) -> None:
        self.seconds[name] = self.seconds.get(name, 0.0) + seconds

    @contextlib.contextmanager
    def part(self, name: str) -> Iterator[None]:
        if self._stack and category(self._stack[-1][0]) == category(name):
            yield  # absorbed by the running part of the same category
            return
        now = time.perf_counter()
        if self._stack:
            self._charge(self._stack[-1][0], now - self._stack[-1][1])
        self._stack.append([name, now])
        try:
            yield
        finally:
            now = time.perf_counter()
            finished, began = self._stack.pop()
            self._charge(finished, now - began)
            if self._stack:
                self._stack[-1][1] = now

    def totals(self) -> dict[str, float]:
        """{part: seconds} of the finished stretches of every part (a running part counts up to its last pause)."""
        return dict(self.seconds)

    def since(self, before: Mapping[str, float]) -> dict[str, float]:
        """{part: seconds} charged after ``before`` (a ``totals()``), parts with nothing charged left out."""
        return {k: round(v - before.get(k, 0.0), 3) for k, v in self.seconds.items() if v - before.get(k, 0.0) > 0}

    def reset(self) -> None:
        self.seconds.clear()
        self._stack.clear()


LEDGER = Ledger()
"""The ledger of this process."""


def part(name: str):
    """``with part("evaluation: final"): ...`` charges the time inside to that part of ``LEDGER``."""
    return LEDGER.part(name)


def timed(name: str) -> Callable:
    """A decorator: every call of the function is charged to part ``name``."""

    def wrap(function: Callable) -> Callable:
        @functools.wraps(function)
        def inner(*args, **kwargs):
            with LEDGER.part(name):
                return function(*args, **kwargs)

        return inner

    return wrap


def by_category(seconds: Mapping[str, float]) -> dict[str, float]:
    """{category: seconds} in ``CATEGORIES`` order (other categories after them), summed over the parts."""
    out: dict[str, float] = {}
    for name, value in seconds.items():
        out[category(name)] = out.get(category(name), 0.0) + value
    ordered = {c: out.pop(c) for c in CATEGORIES if c in out}
    return ordered | out


def time_line(seconds: Mapping[str, float], total: float | None = None, resumed: int = 0) -> str:
    """One line for the terminal summary: seconds by category (unlearning split into its methods' sum, belief
    sampling apart), the total, and how many results were resumed (their time is in timing.json, not here)."""
    shown = [f"{name} {value:.0f}" for name, value in by_category(seconds).items() if value >= 0.5]
    if total is not None:
        shown.append(f"total {total:.0f}")
    tail = f"; {resumed} result(s) resumed" if resumed else ""
    return "Time (s): " + ", ".join(shown) + tail + "; by part: timing.json"
