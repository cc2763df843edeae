"""A workload in columnar form: one NumPy array per request field.

Loaders parse and validate into `TraceColumns`, transforms (window, first N, rate scaling, length
clipping) work on the arrays, and only the final result becomes a list of `sim.RequestSpec`. This
keeps a million-row trace vectorized until the last step.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
from numpy.typing import ArrayLike

from sim.request import RequestSpec

_ITER_CHUNK = 1 << 16  # rows converted to Python values at a time by iter_specs


@dataclass(slots=True)
class TraceColumns:
    """Requests as parallel arrays, in arrival order.

    Invariants (checked by `check_invariants`):
      - every array has the same length;
      - `arrival` (float64 seconds) is finite, >= 0 and non-decreasing;
      - `prompt`, `output`, `n`, `beam_width` are int64 >= 1; n > 1 and beam_width > 1 never together;
      - `spec_k` int64 >= 0, `spec_accept` float64 in [0, 1];
      - `prefix_hashes` has one tuple of ints per row (empty: no sharing info), `prefix_unit` int64 >= 1,
        and ids never extend past the prompt: len(ids) <= ceil(prompt / prefix_unit);
      - `cancel_time` is float64 seconds after arrival, NaN meaning never;
      - `line` is the 1-based source line of each row (0 for generated requests).
    """

    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    n: np.ndarray
    beam_width: np.ndarray
    spec_k: np.ndarray
    spec_accept: np.ndarray
    prefix_unit: np.ndarray
    cancel_time: np.ndarray
    line: np.ndarray
    req_id: np.ndarray
    prefix_hashes: list[tuple[int, ...]] = field(default_factory=list)

    @classmethod
    def build(cls, arrival: ArrayLike, prompt: ArrayLike, output: ArrayLike, *,
              n: ArrayLike | None = None, beam_width: ArrayLike | None = None,
              spec_k: ArrayLike | None = None, spec_accept: ArrayLike | None = None,
              prefix_hashes: Sequence[tuple[int, ...]] | None = None,
              prefix_unit: ArrayLike = 16, cancel_time: ArrayLike | None = None,
              line: ArrayLike | None = None, req_id: ArrayLike | None = None) -> TraceColumns:
        """Assemble columns, filling absent optional fields with the RequestSpec defaults."""
        arrival = np.asarray(arrival, dtype=np.float64)
        size = len(arrival)

        def full(values: ArrayLike | None, default: int | float, dtype: type) -> np.ndarray:
            if values is None:
                values = default
            if np.isscalar(values):
                return np.full(size, values, dtype=dtype)
            return np.asarray(values, dtype=dtype)

        return cls(
            arrival=np.asarray(arrival, dtype=np.float64),
            prompt=np.asarray(prompt, dtype=np.int64),
            output=np.asarray(output, dtype=np.int64),
            n=full(n, 1, np.int64),
            beam_width=full(beam_width, 1, np.int64),
            spec_k=full(spec_k, 0, np.int64),
            spec_accept=full(spec_accept, 0.0, np.float64),
            prefix_unit=full(prefix_unit, 16, np.int64),
            cancel_time=full(cancel_time, np.nan, np.float64),
            line=full(line, 0, np.int64),
            req_id=np.arange(size, dtype=np.int64) if req_id is None else np.asarray(req_id),
            prefix_hashes=[()] * size if prefix_hashes is None else list(prefix_hashes),
        )

    def __len__(self) -> int:
        return len(self.arrival)

    def take(self, index: np.ndarray) -> TraceColumns:
        """The rows selected by a boolean mask or an integer index array, in that order."""
        idx = np.flatnonzero(index) if index.dtype == bool else np.asarray(index, dtype=np.int64)
        hashes = self.prefix_hashes
        return TraceColumns(
            arrival=self.arrival[idx], prompt=self.prompt[idx], output=self.output[idx], n=self.n[idx],
            beam_width=self.beam_width[idx], spec_k=self.spec_k[idx], spec_accept=self.spec_accept[idx],
            prefix_unit=self.prefix_unit[idx], cancel_time=self.cancel_time[idx], line=self.line[idx],
            req_id=self.req_id[idx], prefix_hashes=[hashes[i] for i in idx.tolist()],
        )

    def check_invariants(self) -> None:
        """Raise AssertionError naming the first broken invariant (tests call this)."""
        size = len(self.arrival)
        for name in ("prompt", "output", "n", "beam_width", "spec_k", "spec_accept", "prefix_unit",
                     "cancel_time", "line", "req_id"):
            assert len(getattr(self, name)) == size, f"column {name} has {len(getattr(self, name))} rows, not {size}"
        assert len(self.prefix_hashes) == size, "prefix_hashes length differs"
        a = self.arrival
        assert np.all(np.isfinite(a)) and np.all(a >= 0), "arrival must be finite and >= 0"
        assert np.all(np.diff(a) >= 0), "arrival must be non-decreasing"
        for name in ("prompt", "output", "n", "beam_width", "prefix_unit"):
            assert np.all(getattr(self, name) >= 1), f"{name} must be >= 1"
        assert not np.any((self.n > 1) & (self.beam_width > 1)), "n > 1 and beam_width > 1 together"
        assert np.all(self.spec_k >= 0), "spec_k must be >= 0"
        assert np.all((self.spec_accept >= 0) & (self.spec_accept <= 1)), "spec_accept outside [0, 1]"
        num_ids = np.fromiter((len(h) for h in self.prefix_hashes), dtype=np.int64, count=size)
        covered = -(-self.prompt // self.prefix_unit)
        assert np.all(num_ids <= covered), "prefix_hashes extend past the prompt"

    def iter_specs(self) -> Iterator[RequestSpec]:
        """RequestSpecs one at a time, in arrival order (RequestSpec validates each again).

        An engine that pulls arrivals lazily keeps memory bounded by the columns, not by a million
        spec objects: the columns become Python values one chunk of rows at a time.
        """
        size = len(self)
        for lo in range(0, size, _ITER_CHUNK):
            hi = min(lo + _ITER_CHUNK, size)
            cancel = (None if c != c else c for c in self.cancel_time[lo:hi].tolist())  # NaN -> never
            for r, t, p, o, nn, b, k, acc, h, u, c in zip(
                    self.req_id[lo:hi].tolist(), self.arrival[lo:hi].tolist(), self.prompt[lo:hi].tolist(),
                    self.output[lo:hi].tolist(), self.n[lo:hi].tolist(), self.beam_width[lo:hi].tolist(),
                    self.spec_k[lo:hi].tolist(), self.spec_accept[lo:hi].tolist(), self.prefix_hashes[lo:hi],
                    self.prefix_unit[lo:hi].tolist(), cancel, strict=True):
                yield RequestSpec(req_id=r, arrival_time=t, prompt_len=p, output_len=o, n=nn, beam_width=b,
                                  spec_k=k, spec_accept=acc, prefix_hashes=h, prefix_unit=u, cancel_time=c)

    def to_specs(self) -> list[RequestSpec]:
        """All rows as RequestSpecs (the costly step for millions of rows; benchmarks/bench_workloads.py)."""
        return list(self.iter_specs())

    @classmethod
    def from_specs(cls, specs: Sequence[RequestSpec]) -> TraceColumns:
        """Columns of existing specs (e.g. to apply transforms to a generated workload).

        Specs are put in arrival order (stable), as the invariants require.
        """
        order = sorted(range(len(specs)), key=lambda i: specs[i].arrival_time)
        ss = [specs[i] for i in order]
        ids = [s.req_id for s in ss]
        return cls.build(
            arrival=np.array([s.arrival_time for s in ss], dtype=np.float64),
            prompt=np.array([s.prompt_len for s in ss], dtype=np.int64),
            output=np.array([s.output_len for s in ss], dtype=np.int64),
            n=np.array([s.n for s in ss], dtype=np.int64),
            beam_width=np.array([s.beam_width for s in ss], dtype=np.int64),
            spec_k=np.array([s.spec_k for s in ss], dtype=np.int64),
            spec_accept=np.array([s.spec_accept for s in ss], dtype=np.float64),
            prefix_hashes=[s.prefix_hashes for s in ss],
            prefix_unit=np.array([s.prefix_unit for s in ss], dtype=np.int64),
            cancel_time=np.array([np.nan if s.cancel_time is None else s.cancel_time for s in ss]),
            req_id=np.array(ids, dtype=object if any(isinstance(i, str) for i in ids) else np.int64),
        )
