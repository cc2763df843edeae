"""Shared validation helpers: the one home of the type tests and the out-of-range message that config
classes, the experiment loader, replay and the CLI use, so every bad value reads the same way:
`field 'X' = V out of range (valid: RANGE)`.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


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


#: The largest paged pool the simulator allocates: its per-block state (ref count, hash, free-queue
#: links) takes about 100 bytes of host memory, so 2**25 blocks need about 3.3 GB. Real pools are far
#: smaller (an H200 holds ~57K 16-token blocks of Llama-3-8B); a larger pool is refused before allocating.
MAX_NUM_BLOCKS = 1 << 25
HOST_BYTES_PER_BLOCK = 100
NUM_BLOCKS_RANGE = (f"valid: integer in [1, {MAX_NUM_BLOCKS:,}]; the simulator keeps about "
                    f"{HOST_BYTES_PER_BLOCK} B of host memory per block")
#: The largest KV pool in token slots (2**32: ~512 TiB of Llama-3-8B KV, beyond any deployment).
MAX_KV_TOKENS = 1 << 32


def read_json(path: str | Path, label: str, error: type[Exception]) -> Any:
    """The parsed JSON of a file, or `error("LABEL PATH: cannot read (...)" / "invalid JSON at line L,
    column C: ...")` in one line (the file readers of latency params and serving benchmarks)."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise error(f"{label} {p}: cannot read ({e.strerror or e})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise error(f"{label} {p}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None
