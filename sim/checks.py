"""Shared validation helpers: the one home of the type tests and the out-of-range message that config
classes, the experiment loader, replay and the CLI use, so every bad value reads the same way:
`field 'X' = V out of range (valid: RANGE)`.
"""

from __future__ import annotations

import math


def is_int(v: object) -> bool:
    """A real integer (bool is an int subclass in Python, but True is not a block size)."""
    return isinstance(v, int) and not isinstance(v, bool)


def is_num(v: object) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def is_int_list(v: object) -> bool:
    """A list of real integers."""
    return isinstance(v, list) and all(is_int(x) for x in v)


def out_of_range(field_name: str, valid: str, value: object) -> str:
    """The one-line message for a value outside its valid range."""
    return f"field '{field_name}' = {value!r} out of range (valid: {valid})"
