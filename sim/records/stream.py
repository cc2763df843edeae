"""Streaming run records: the sink the engine hands records to, and summaries kept as running sums.

A run given a `RecordSink` keeps no per-request, per-step or per-sample lists: finished requests'
records (and, if asked for, step records and memory samples) go to the sink in chunks as the run
goes, and the summary is built from running accumulators, so memory stays bounded by the live
requests whatever the length of the workload. This module does no I/O: the sink decides where
records go (analysis.record_writer writes them to Parquet/CSV in chunks).

Accuracy against the kept-records path: counts, totals and means are the same quantities summed in
a different order (equal to ~1e-12 relative); latency percentiles come from a log-spaced histogram
(`LogHistogram`) and are within 0.04% of the exact ones.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol, runtime_checkable

from sim.records.metrics import request_record
from sim.records.results import LATENCY_FIELDS, MEMORY_CATEGORIES, MemorySample, RequestRecord, StepRecord
from sim.sched.sequence import ABORTED, FINISHED, REJECTED, SeqGroup

#: Records handed to the sink per call (the engine buffers this many before flushing).
CHUNK = 8192




@runtime_checkable
class RecordSink(Protocol):
    """Where a streaming run sends its records, a chunk (a list) at a time, in the order produced.

    `requests` receives every request's record once the request is finished, aborted or rejected
    (so not in arrival order); `steps` and `memory` receive StepRecords (only when the config keeps
    step records) and MemorySamples in time order. A memory sample may be superseded by a later one
    at the same instant only before it is handed over (the engine holds back the latest one).
    """

    def requests(self, records: list[RequestRecord]) -> None:
        """Take a chunk of request records."""

    def steps(self, records: list[StepRecord]) -> None:
        """Take a chunk of step records."""

    def memory(self, samples: list[MemorySample]) -> None:
        """Take a chunk of memory samples."""


class TimeWeighted:
    """Time-weighted means of a vector-valued step function fed sample by sample, in O(width) memory.

    Each sample holds until the next one; the last one until the `end` given to `means`. This is
    the same weighting as sim.records.metrics.memory_means over a kept list of samples.
    """

    __slots__ = ("_sums", "_weight", "_t", "_last", "_max")

    def __init__(self, width: int) -> None:
        self._sums = [0.0] * width
        self._weight = 0.0
        self._t = 0.0
        self._last: Sequence[float] | None = None
        self._max = [-math.inf] * width

    def add(self, t: float, values: Sequence[float]) -> None:
        """The function takes `values` from time `t` on (t never decreases; a sample at the same
        instant as the previous one replaces it, which then weighs nothing)."""
        last = self._last
        if last is not None:
            w = t - self._t
            if w > 0:  # else the previous sample is replaced: it never held
                self._weight += w
                self._sums = [s + v * w for s, v in zip(self._sums, last, strict=True)]
                self._max = [m if m >= v else v for m, v in zip(self._max, last, strict=True)]
        self._t, self._last = t, values

    @property
    def empty(self) -> bool:
        """True before the first sample."""
        return self._last is None

    @property
    def last(self) -> Sequence[float] | None:
        """The latest sample's values."""
        return self._last

    def maxima(self) -> list[float]:
        """The largest value of each component over the samples (-inf before the first)."""
        last = self._last
        if last is None:
            return list(self._max)
        return [m if m >= v else float(v) for m, v in zip(self._max, last, strict=True)]

    def integrals(self, end: float) -> tuple[list[float], float]:
        """(integral of each component over [first sample, end], the span's length)."""
        last = self._last
        if last is None:
            return [], 0.0
        w = max(end - self._t, 0.0)
        return [s + v * w for s, v in zip(self._sums, last, strict=True)], self._weight + w

    def means(self, end: float) -> list[float]:
        """The means over [first sample, end] (the latest sample's values if that span is empty)."""
        last = self._last
        if last is None:
            return []
        w = max(end - self._t, 0.0)
        total = self._weight + w
        if total <= 0:
            return [float(v) for v in last]
        return [(s + v * w) / total for s, v in zip(self._sums, last, strict=True)]


class LogHistogram:
    """Quantiles of non-negative values from counts in log-spaced bins (`per_doubling` bins per
    factor of two): O(bins touched) memory, relative error at most 2**(1 / (2 * per_doubling)) - 1
    (0.034% for 1024). Quantiles interpolate between order statistics as numpy.percentile does."""

    __slots__ = ("_counts", "_zeros", "_n", "_r")

    def __init__(self, per_doubling: int = 1024) -> None:
        self._counts: dict[int, int] = {}
        self._zeros = 0
        self._n = 0
        self._r = per_doubling

    def __len__(self) -> int:
        return self._n

    def add(self, v: float) -> None:
        """Count one value (NaN is ignored; values <= 0 count as 0)."""
        if v != v:
            return
        self._n += 1
        if v > 0:
            k = math.floor(math.log2(v) * self._r)
            self._counts[k] = self._counts.get(k, 0) + 1
        else:
            self._zeros += 1

    def _order_stats(self, ranks: list[int]) -> list[float]:
        """The values at the given 0-based ranks (sorted ascending)."""
        out: list[float] = []
        i = 0
        seen = self._zeros
        while i < len(ranks) and ranks[i] < seen:
            out.append(0.0)
            i += 1
        for k in sorted(self._counts):
            seen += self._counts[k]
            mid = 2.0 ** ((k + 0.5) / self._r)
            while i < len(ranks) and ranks[i] < seen:
                out.append(mid)
                i += 1
            if i == len(ranks):
                break
        return out

    def quantile(self, q: float) -> float:
        """The q-th percentile (0..100), NaN when empty."""
        if not self._n:
            return math.nan
        h = (self._n - 1) * q / 100.0
        lo, hi = math.floor(h), math.ceil(h)
        a, b = self._order_stats([lo, hi])
        return a + (h - lo) * (b - a)


class RunningRequests:
    """The request side of a run summary, accumulated record by record (see metrics.RequestTotals)."""

    __slots__ = ("num", "finished", "aborted", "rejected", "start_s", "output_tokens", "prompt_tokens",
                 "preemptions", "_sums", "_counts", "_hists")

    def __init__(self) -> None:
        self.num = self.finished = self.aborted = self.rejected = 0
        self.start_s = math.inf
        self.output_tokens = self.prompt_tokens = self.preemptions = 0
        self._sums = [0.0] * len(LATENCY_FIELDS)
        self._counts = [0] * len(LATENCY_FIELDS)
        self._hists = [LogHistogram() for _ in LATENCY_FIELDS]

    def add(self, r: RequestRecord) -> None:
        """Count one request's record."""
        self.num += 1
        if r.arrival_s < self.start_s:
            self.start_s = r.arrival_s
        self.preemptions += r.num_preemptions
        st = r.status
        if st == "finished":
            self.finished += 1
            self.output_tokens += r.output_len * max(r.n, r.beam_width)
            self.prompt_tokens += r.prompt_len
            for i, v in enumerate((r.ttft_s, r.tpot_s, r.e2e_s, r.normalized_latency_s_per_token)):
                if v == v:
                    self._sums[i] += v
                    self._counts[i] += 1
                    self._hists[i].add(v)
        elif st == "aborted":
            self.aborted += 1
        elif st == "rejected":
            self.rejected += 1

    def mean(self, name: str) -> float:
        """Mean of a latency field over finished requests (NaN values left out; NaN if none)."""
        i = LATENCY_FIELDS.index(name)
        return self._sums[i] / self._counts[i] if self._counts[i] else math.nan

    def percentile(self, name: str, q: float) -> float:
        """Approximate q-th percentile of a latency field over finished requests (see LogHistogram)."""
        return self._hists[LATENCY_FIELDS.index(name)].quantile(q)


_MEMORY_NAMES = (*MEMORY_CATEGORIES, "logical_token_states", "capacity")
_ENDED = frozenset((FINISHED, ABORTED, REJECTED))


class RecordStream:
    """A streaming run's records (the engine's side of a RecordSink).

    Live request groups are kept until they end; every time their list doubles (at least 4096) the
    ended ones become records, are counted into `requests` and go to the sink, so the groups held
    stay within about twice the live ones. Memory samples feed running time-weighted means (and the
    sink, one sample held back in case the next one replaces it); step records go to the sink only.
    """

    def __init__(self, sink: RecordSink, *, paged: bool) -> None:
        self.sink = sink
        self.paged = paged
        self.requests = RunningRequests()
        self.memory = TimeWeighted(len(_MEMORY_NAMES))
        self.blocks = TimeWeighted(2)  # (logical, physical) blocks, for the sharing savings
        self._live: list[SeqGroup] = []
        self._limit = 4096
        self._reqs: list[RequestRecord] = []
        self._steps: list[StepRecord] = []
        self._mem: list[MemorySample] = []
        self._held: MemorySample | None = None
        self.max_held = 0  # most request groups held at once (tests check the bound)

    def admit(self, g: SeqGroup) -> None:
        """Track an arrived request group until it ends."""
        live = self._live
        live.append(g)
        if len(live) >= self._limit:
            self._collect(final=False)

    def _collect(self, final: bool) -> None:
        self.max_held = max(self.max_held, len(self._live))
        keep: list[SeqGroup] = []
        buf, add, paged = self._reqs, self.requests.add, self.paged
        for g in self._live:
            if final or g.status in _ENDED:
                rec = request_record(g, paged=paged)
                add(rec)
                buf.append(rec)
            else:
                keep.append(g)
        self._live = keep
        self._limit = max(4096, 2 * len(keep))
        if len(buf) >= CHUNK or (final and buf):
            self.sink.requests(buf)
            self._reqs = []

    def sample(self, m: MemorySample) -> None:
        """Take a memory sample (a later one at the same instant replaces it)."""
        self.memory.add(m.time_s, (m.token_states, m.reserved, m.internal_frag, m.speculative, m.external_frag,
                                   m.free, m.logical_token_states, m.capacity))
        held = self._held
        if held is not None and held.time_s != m.time_s:
            buf = self._mem
            buf.append(held)
            if len(buf) >= CHUNK:
                self.sink.memory(buf)
                self._mem = []
        self._held = m

    @property
    def last_sample(self) -> MemorySample | None:
        """The latest memory sample (not yet handed to the sink)."""
        return self._held

    def step(self, rec: StepRecord) -> None:
        """Take a step record."""
        buf = self._steps
        buf.append(rec)
        if len(buf) >= CHUNK:
            self.sink.steps(buf)
            self._steps = []

    def finish(self, end: float) -> dict[str, float]:
        """Hand every remaining record to the sink; returns the memory means (memory_means' keys)."""
        self._collect(final=True)
        if self._held is not None:
            self._mem.append(self._held)
            self._held = None
        if self._mem:
            self.sink.memory(self._mem)
            self._mem = []
        if self._steps:
            self.sink.steps(self._steps)
            self._steps = []
        if self.memory.empty:
            return {}
        return dict(zip(_MEMORY_NAMES, self.memory.means(end), strict=True))

    def sharing_savings_blocks_pct(self, end: float) -> float:
        """100 * (1 - physical / logical blocks), both integrated over time (0 when nothing was held)."""
        (logical, physical), _ = self.blocks.integrals(end) if not self.blocks.empty else ((0.0, 0.0), 0.0)
        return 100.0 * (1 - physical / logical) if logical > 0 else 0.0
