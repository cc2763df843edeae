"""Shared system prompts: a pool of prefixes reused across requests, for prefix caching.

A request that uses prefix p gets `prefix_hashes=(p,)` and `prefix_unit=len(p)`: one id covering the
whole system prompt, so every full KV block inside it is shared by all requests with the same p, at
any block size, and the user's part after it (and any partial block) is never shared.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from workloads.errors import WorkloadError
from workloads.lengths import Fixed, LengthDist

POPULARITY = ("uniform", "zipf")


@dataclass(frozen=True, slots=True)
class SystemPrompts:
    """`count` shared prefixes; each request uses one with probability `prob`.

    length: distribution of the prefix lengths (drawn once per workload, one per prefix).
    popularity: 'uniform' or 'zipf' (prefix p chosen with weight 1/(p+1)^zipf_s).
    The request's prompt is the prefix followed by its own drawn prompt length.
    """

    count: int = 8
    length: LengthDist = Fixed(512)
    prob: float = 1.0
    popularity: str = "uniform"
    zipf_s: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or self.count < 1:
            raise WorkloadError(f"system prompts count = {self.count!r} out of range (valid: integer >= 1)")
        if not (math.isfinite(self.prob) and 0.0 <= self.prob <= 1.0):
            raise WorkloadError(f"system prompts prob = {self.prob!r} out of range (valid: [0, 1])")
        if self.popularity not in POPULARITY:
            raise WorkloadError(f"system prompts popularity = {self.popularity!r} unknown "
                                f"(valid: {', '.join(POPULARITY)})")
        if not (math.isfinite(self.zipf_s) and self.zipf_s >= 0):
            raise WorkloadError(f"system prompts zipf_s = {self.zipf_s!r} out of range (valid: >= 0)")

    def assign(self, num: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(prefix index per request, -1 for none; prefix length per request, 0 for none)."""
        lengths = self.length.sample(self.count, rng)
        uses = rng.random(num) < self.prob
        if self.popularity == "zipf":
            w = 1.0 / np.arange(1, self.count + 1, dtype=np.float64) ** self.zipf_s
            which = rng.choice(self.count, size=num, p=w / w.sum())
        else:
            which = rng.integers(0, self.count, size=num)
        idx = np.where(uses, which, -1)
        return idx, np.where(uses, lengths[np.maximum(idx, 0)], 0)
