"""The predicates that argument validation shares: is a value a finite number, a positive integer, a fraction?

Each returns a bool, so the caller writes its own error message (which names the setting and a valid example).
Booleans are never numbers here (``True`` is an ``int`` to Python, but ``lr=True`` is a mistake); numpy scalars
are (``numbers.Real`` / ``numbers.Integral`` include them).
"""

from __future__ import annotations

import math
import numbers
from typing import Any


def is_number(value: Any) -> bool:
    """A real number (Python or numpy), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def finite(value: Any) -> bool:
    """A real number that is neither infinite nor NaN."""
    return is_number(value) and math.isfinite(value)


def positive_int(value: Any) -> bool:
    """An integer (Python or numpy, not a bool) >= 1."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 1


def non_negative_int(value: Any) -> bool:
    """An integer (Python or numpy, not a bool) >= 0."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= 0


def int_between(value: Any, low: int, high: int) -> bool:
    """An integer (not a bool) with ``low <= value <= high``."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and low <= value <= high


def fraction(value: Any, *, upper_open: bool = False) -> bool:
    """A finite number in [0, 1] (in [0, 1) with ``upper_open``)."""
    return finite(value) and 0.0 <= value and (value < 1.0 if upper_open else value <= 1.0)
