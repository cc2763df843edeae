"""Timing one kernel launch many times: timers, summary statistics and the L2-flush policy.

A `Timer` calls a prepared launch (`fn()`, one launch per call) `warmup` times untimed, then `reps`
times timed, optionally calling `flush()` outside the timed region before each rep. `CudaEventTimer`
is the real one (GPU); `WallTimer` and `FakeTimer` drive the same harness on the CPU path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

Launch = Callable[[], None]

#: Flush L2 between reps when the working set is below this multiple of the L2 size. Above 1x because a
#: set slightly larger than L2 still finds part of itself resident from the previous rep (L2 is not
#: strict LRU); flushing costs nothing inside the timed region, so erring towards flushing is safe.
FLUSH_FACTOR = 2.0
FLUSH_POLICIES = ("auto", "always", "never")


class Timer(Protocol):
    """Times a prepared launch; returns one duration in seconds per timed rep."""

    def measure(self, fn: Launch, *, reps: int, warmup: int, flush: Launch | None = None) -> np.ndarray:
        """Call `fn` `warmup` times untimed, then `reps` times timed (flush first, untimed)."""
        ...


def _check_counts(reps: int, warmup: int) -> None:
    if reps < 1:
        raise ValueError(f"reps must be >= 1 (got {reps})")
    if warmup < 0:
        raise ValueError(f"warmup must be >= 0 (got {warmup})")


class CudaEventTimer:
    """GPU timer: a pair of CUDA events around each launch on the current stream.

    All events are recorded first and read after one final synchronize, so the host never stalls the
    queue between reps; the flush (if any) is enqueued before the start event and is not timed.
    """

    def __init__(self) -> None:
        import cupy  # noqa: F401  (fail here, clearly, when CuPy or the GPU is missing)

    def measure(self, fn: Launch, *, reps: int, warmup: int, flush: Launch | None = None) -> np.ndarray:
        import cupy

        _check_counts(reps, warmup)
        for _ in range(warmup):
            fn()
        stream = cupy.cuda.get_current_stream()
        starts = [cupy.cuda.Event() for _ in range(reps)]
        ends = [cupy.cuda.Event() for _ in range(reps)]
        for start, end in zip(starts, ends, strict=True):
            if flush is not None:
                flush()
            start.record(stream)
            fn()
            end.record(stream)
        ends[-1].synchronize()
        ms = [cupy.cuda.get_elapsed_time(s, e) for s, e in zip(starts, ends, strict=True)]
        return np.asarray(ms, dtype=np.float64) * 1e-3


class WallTimer:
    """Host wall-clock timer (time.perf_counter) for the CPU shim: exercises the harness, means nothing
    about GPU speed. `sync` is called after each launch when the launch is asynchronous."""

    def __init__(self, sync: Launch | None = None) -> None:
        self.sync = sync

    def measure(self, fn: Launch, *, reps: int, warmup: int, flush: Launch | None = None) -> np.ndarray:
        _check_counts(reps, warmup)
        for _ in range(warmup):
            fn()
        out = np.empty(reps, dtype=np.float64)
        for i in range(reps):
            if flush is not None:
                flush()
            t0 = time.perf_counter()
            fn()
            if self.sync is not None:
                self.sync()
            out[i] = time.perf_counter() - t0
        return out


class FakeTimer:
    """Deterministic timer for tests: still calls `fn` (so the launch really runs), but reports the
    durations it was given: `durations(i)` for the i-th timed rep overall, or a sequence cycled through.

    Counts `calls` (launches, warm-up included), `timed` (timed reps) and `flushes`.
    """

    def __init__(self, durations: Callable[[int], float] | Sequence[float], *, call_fn: bool = True) -> None:
        if not callable(durations) and len(durations) == 0:
            raise ValueError("FakeTimer needs at least one duration")
        self.durations = durations
        self.call_fn = call_fn
        self.calls = 0
        self.timed = 0
        self.flushes = 0

    def _duration(self, i: int) -> float:
        if callable(self.durations):
            return float(self.durations(i))
        return float(self.durations[i % len(self.durations)])

    def measure(self, fn: Launch, *, reps: int, warmup: int, flush: Launch | None = None) -> np.ndarray:
        _check_counts(reps, warmup)
        out = np.empty(reps, dtype=np.float64)
        for i in range(warmup + reps):
            if i >= warmup and flush is not None:
                flush()
                self.flushes += 1
            if self.call_fn:
                fn()
            self.calls += 1
            if i >= warmup:
                out[i - warmup] = self._duration(self.timed)
                self.timed += 1
        return out


@dataclass(slots=True, frozen=True)
class TimingStats:
    """Summary of the timed reps of one config, in seconds.

    Invariant: 0 < min <= p10 <= median <= p90; std >= 0; reps >= 1.
    """

    median: float
    p10: float
    p90: float
    std: float
    min: float
    reps: int

    def check_invariants(self) -> None:
        """Raise AssertionError when the order statistics are inconsistent."""
        assert self.reps >= 1, self.reps
        assert 0 < self.min <= self.p10 <= self.median <= self.p90, self
        assert self.std >= 0, self.std

    @property
    def spread(self) -> float:
        """(p90 - p10) / median: the relative spread reported next to the median."""
        return (self.p90 - self.p10) / self.median


def summarize(samples: Sequence[float] | np.ndarray) -> TimingStats:
    """Median, 10th/90th percentiles (linear interpolation), population std and min of the samples.

    Raises ValueError on no samples or on a non-finite or non-positive duration (a broken timer must
    never turn into a plausible-looking row).
    """
    a = np.asarray(samples, dtype=np.float64)
    if a.ndim != 1 or a.size == 0:
        raise ValueError(f"need a non-empty 1-D list of durations (got shape {a.shape})")
    bad = ~np.isfinite(a) | (a <= 0)
    if bad.any():
        raise ValueError(f"durations must be finite and > 0; got {a[bad][:3].tolist()} at reps "
                         f"{np.flatnonzero(bad)[:3].tolist()}")
    p10, med, p90 = np.percentile(a, [10, 50, 90])
    return TimingStats(median=float(med), p10=float(p10), p90=float(p90), std=float(a.std()),
                       min=float(a.min()), reps=int(a.size))


def should_flush(working_set_bytes: int, l2_bytes: int, policy: str = "auto") -> bool:
    """Whether to flush L2 before each rep: 'always', 'never', or 'auto' = the working set (KV, query,
    block tables, output) is below FLUSH_FACTOR x L2, so a rep could hit data cached by the previous one.
    With no known L2 (l2_bytes <= 0, e.g. the CPU shim) 'auto' does not flush."""
    if policy not in FLUSH_POLICIES:
        raise ValueError(f"flush policy must be one of {FLUSH_POLICIES} (got {policy!r})")
    if policy != "auto":
        return policy == "always"
    return l2_bytes > 0 and working_set_bytes < FLUSH_FACTOR * l2_bytes


class CupyL2Flusher:
    """Evicts L2 by writing a device buffer of FLUSH_FACTOR x L2 bytes (one memset kernel per call)."""

    def __init__(self, l2_bytes: int) -> None:
        import cupy

        if l2_bytes <= 0:
            raise ValueError(f"L2 size must be > 0 bytes (got {l2_bytes})")
        self.nbytes = int(FLUSH_FACTOR * l2_bytes)
        self._buf: Any = cupy.empty(self.nbytes, dtype=cupy.uint8)
        self._value = 0

    def __call__(self) -> None:
        # Alternate the value so the write is never a no-op a smart memory system could skip.
        self._value ^= 1
        self._buf.fill(self._value)
