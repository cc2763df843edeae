"""What a KV-cache call returns or raises, shared by the paged and contiguous caches: the admission
verdict (AllocStatus), the append outcome (AppendResult, with the copy-on-write copies to perform) and
CacheError for misuse. Running out of blocks is a return value; misuse raises, naming the ids.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class AllocStatus(enum.Enum):
    """Admission verdict: OK now, LATER (wait for memory), NEVER (cannot fit even in an empty cache)."""

    OK = "OK"
    LATER = "LATER"
    NEVER = "NEVER"


class CacheError(Exception):
    """Misuse of a cache (unknown or duplicate sequence id, impossible count); the message names the ids."""


@dataclass(slots=True)
class AppendResult:
    """Outcome of an append: ok=False means out of blocks and nothing changed.

    cows lists the (src, dst) block copies the caller must perform (at most one per append).
    """

    ok: bool
    cows: list[tuple[int, int]] = field(default_factory=list)


def check_count(name: str, value: object, lo: int, seq: object = None) -> int:
    """`value` as a count >= lo, or a CacheError naming the sequence, the field and the valid range."""
    if not isinstance(value, int) or isinstance(value, bool) or value < lo:
        where = f"seq {seq!r}: " if seq is not None else ""
        raise CacheError(f"{where}{name} = {value!r} out of range (valid: integer >= {lo})")
    return value
