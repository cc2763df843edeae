"""The request spec: what a workload hands the simulator for one request.

Workloads (synthetic generators, trace loaders) only build these; the engine owns the type.
A spec is immutable and validated on construction so an impossible request is rejected with a
message naming the field and its valid range before any simulation starts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


class SpecError(ValueError):
    """An impossible request spec or configuration value; the message names the field and valid range."""


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """One request of a workload.

    Fields:
      req_id: unique id within a workload (int or str).
      arrival_time: seconds since the start of the workload (>= 0).
      prompt_len: prompt tokens (>= 1).
      output_len: tokens to generate per sequence (>= 1).
      n: parallel samples (>= 1); the n sequences fork after prefill and share the prompt blocks.
      beam_width: beam search width (>= 1); 1 means no beam search. n and beam_width > 1 are exclusive.
      spec_k: speculative decoding draft tokens per step (>= 0); 0 means off.
      spec_accept: per-token acceptance probability of a draft token, in [0, 1].
      prefix_hashes: ids of the prompt's content, each covering `prefix_unit` tokens from the start
        (the last one may be partial). Equal leading ids mean equal leading tokens; prefix caching
        derives per-block hashes for any block size from them (see sim.memory.prefix). Empty: no sharing info.
      prefix_unit: tokens covered by each id in prefix_hashes (>= 1); e.g. 512 for Mooncake traces.
      cancel_time: seconds after arrival at which the client aborts the request (None: never).
    """

    req_id: int | str
    arrival_time: float
    prompt_len: int
    output_len: int
    n: int = 1
    beam_width: int = 1
    spec_k: int = 0
    spec_accept: float = 0.0
    prefix_hashes: tuple[int, ...] = ()
    prefix_unit: int = 16
    cancel_time: float | None = None

    def __post_init__(self) -> None:
        def bad(field: str, rng: str, value: object) -> SpecError:
            return SpecError(f"request {self.req_id!r}: field '{field}' = {value!r} out of range (valid: {rng})")

        if not (isinstance(self.arrival_time, (int, float)) and math.isfinite(self.arrival_time)
                and self.arrival_time >= 0):
            raise bad("arrival_time", "finite seconds >= 0", self.arrival_time)
        for name in ("prompt_len", "output_len", "n", "beam_width"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad(name, "integer >= 1", v)
        if not isinstance(self.spec_k, int) or self.spec_k < 0:
            raise bad("spec_k", "integer >= 0", self.spec_k)
        if not (0.0 <= float(self.spec_accept) <= 1.0):
            raise bad("spec_accept", "[0, 1]", self.spec_accept)
        if self.n > 1 and self.beam_width > 1:
            raise bad("n", "n > 1 and beam_width > 1 cannot be combined; set one of them to 1", self.n)
        if not isinstance(self.prefix_unit, int) or self.prefix_unit < 1:
            raise bad("prefix_unit", "integer >= 1", self.prefix_unit)
        if self.cancel_time is not None and not (self.cancel_time >= 0):
            raise bad("cancel_time", "seconds >= 0 or None", self.cancel_time)

    @property
    def num_seqs(self) -> int:
        """Sequences this request runs at once after prefill (n samples or beam width)."""
        return max(self.n, self.beam_width)

    @property
    def total_len(self) -> int:
        """Final length of one sequence: prompt + output tokens."""
        return self.prompt_len + self.output_len
