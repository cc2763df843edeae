"""The error a bad kernel input raises before anything is launched: the message names the argument,
the offending value and the valid range, e.g. "block_tables[2, 5] = 40 is outside the pool (0..39)".
"""

from __future__ import annotations


class KernelInputError(ValueError):
    """A shape, dtype, layout or range problem found by the Python-side checks (nothing was launched)."""
