"""Block-manager semantics by name: which engine's paged-cache behaviour a run or a replay follows.

"pagesim" is the simulator's own (PagedKVCache: exact block needs, leading prefix hits, no
deduplication); "vllm-v0" follows vLLM 0.7.3's SelfAttnBlockSpaceManager op for op (VllmV0Cache);
"vllm-v1" follows vLLM v1's BlockPool / KVCacheManager (VllmV1Cache, checked against vLLM 0.34.0).
Each is a PagedKVCache subclass with the same API; docs/memory.md tabulates the differences.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sim.memory.paged_cache import PagedKVCache
from sim.memory.vllm_v0_cache import VllmV0Cache
from sim.memory.vllm_v1_cache import VllmV1Cache

SEMANTICS: dict[str, type[PagedKVCache]] = {
    "pagesim": PagedKVCache,
    "vllm-v0": VllmV0Cache,
    "vllm-v1": VllmV1Cache,
}
DEFAULT_SEMANTICS = "pagesim"
"""The default keeps every existing run's results; pass "vllm-v0" / "vllm-v1" to follow an engine."""

VLLM_VERSIONS = {"vllm-v0": "0.7.3", "vllm-v1": "0.34.0"}
"""The vLLM release each semantics was checked against, op for op (tests/vllm_ref.py)."""


def make_paged_cache(semantics: str, num_blocks: int, block_size: int, *, watermark: float = 0.01,
                     enable_prefix_caching: bool = False,
                     op_sink: Callable[[dict[str, Any]], None] | None = None) -> PagedKVCache:
    """A paged cache with the named semantics; ValueError naming the valid names otherwise."""
    cls = SEMANTICS.get(semantics)
    if cls is None:
        raise ValueError(f"semantics = {semantics!r} is not valid (valid: {', '.join(SEMANTICS)})")
    return cls(num_blocks, block_size, watermark=watermark, enable_prefix_caching=enable_prefix_caching,
               op_sink=op_sink)
