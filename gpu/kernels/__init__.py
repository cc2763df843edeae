"""CUDA C sources: `paged_attention.cu` (paged, partitioned and contiguous decode attention),
`cache_ops.cu` (reshape_and_cache, copy_blocks, swap gather/scatter), `common.cuh` (shared helpers).
The same text compiles with NVRTC/nvcc and runs on the CPU shim (gpu/backends); `kernel_source`
gives that text with local headers inlined, `define_options` the -D flags of an instantiation.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import cache
from pathlib import Path

KERNEL_DIR = Path(__file__).resolve().parent
_LOCAL_INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"\s*$')


@cache
def kernel_source(filename: str) -> str:
    """Text of gpu/kernels/<filename> with its local `#include "..."` headers inlined (with #line
    markers), so CuPy's compile cache, which hashes the source text, sees every header change."""

    def expand(name: str, seen: tuple[str, ...]) -> str:
        path = KERNEL_DIR / name
        if name in seen:
            raise ValueError(f"include cycle: {' -> '.join((*seen, name))}")
        out = [f'#line 1 "{name}"']
        for i, line in enumerate(path.read_text().splitlines(), start=1):
            m = _LOCAL_INCLUDE.match(line)
            if line.strip() == "#pragma once":
                out.append("")  # the header is inlined once; NVRTC warns about it in a main file
            elif m and (KERNEL_DIR / m.group(1)).is_file():
                out.append(expand(m.group(1), (*seen, name)))
                out.append(f'#line {i + 1} "{name}"')
            else:
                out.append(line)
        return "\n".join(out)

    return expand(filename, ()) + "\n"


def define_options(defines: Mapping[str, int]) -> tuple[str, ...]:
    return tuple(f"-D{k}={int(v)}" for k, v in sorted(defines.items()))
