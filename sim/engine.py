"""The SimPy engine: arrivals, the step loop and aborts on a simulated clock; results out.

One SimPy process walks the workload in arrival order and queues each request (a timeout per
distinct arrival time); cancel times are timeouts whose callbacks abort the request at once. The
step loop asks the scheduler for a batch, samples memory (and the allocator monitor), advances the
clock by the latency model's step time plus the swap transfers on its critical path with one
timeout, then applies the step. No I/O: the op log goes to the caller's `op_sink`, and a streaming
run hands its records to the caller's `record_sink` (sim.records.stream) instead of keeping them.
Engines can share one `simpy.Environment` (sim.cluster): the caller then hands each its requests
(`submit`, then `close`) and builds its result with `finish`.
"""

from __future__ import annotations

import contextlib
import gc
import math
from collections.abc import Callable, Generator, Iterable, Iterator, Sized
from typing import Any, cast

import numpy as np
import simpy

from sim.config import ContiguousCacheSpec, PagedCacheSpec, SimConfig, resolve, system_label
from sim.memory.contiguous_cache import ContiguousKVCache
from sim.memory.paged_cache import PagedKVCache
from sim.memory.semantics import make_paged_cache
from sim.records.breakdown import Breakdown
from sim.records.memory_probe import MemoryProbe
from sim.records.metrics import StepTotals, request_record, summarize
from sim.records.monitor import Monitor
from sim.records.results import MemorySample, SimResult, StepRecord
from sim.records.stream import RecordSink, RecordStream
from sim.request import RequestSpec
from sim.sched.kv_ops import KVOps
from sim.sched.lifecycle import abort_group, admit_request, complete_step
from sim.sched.scheduler import Scheduler, SchedulerOutput
from sim.sched.sequence import REJECTED, SeqGroup, SeqTable
from sim.sched.swap import SwapSpace, SwapStats
from sim.timing.engines import get_engine
from sim.timing.latency import BatchShape, LatencyModel, load_latency_model
from sim.workload import check_workload, stream_workload

_EMPTY = np.zeros(0, dtype=np.int64)


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Pause the cyclic GC for a run (restored after, also on an error): a run's millions of small
    objects are freed by reference counting, and the GC's scans of the growing record lists cost ~10%."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


class Engine:
    """One simulation run: build with the workload and config, then `run()` once (env: a shared SimPy
    environment, several replicas on one clock as in sim.cluster; None: its own)."""

    def __init__(self, requests: Iterable[RequestSpec], config: SimConfig, *,
                 rng: np.random.Generator | int | None = None,
                 op_sink: Callable[[dict[str, Any]], None] | None = None,
                 record_sink: RecordSink | None = None,
                 check_invariants: bool = False, env: simpy.Environment | None = None) -> None:
        config.validate()
        self.check = check_invariants  # tests: check every invariant after each step (slow)
        self.config = config
        self.specs: Iterable[RequestSpec]
        if isinstance(requests, Sized):
            self.specs = sorted(check_workload(requests), key=lambda r: r.arrival_time)  # stable
        else:  # an iterator (e.g. TraceColumns.iter_specs()): read lazily, checked as it goes
            self.specs = stream_workload(requests)
        self.res = res = resolve(config)
        self.rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        lat = config.latency
        self.latency: LatencyModel = (lat if hasattr(lat, "step_time")
                                      else load_latency_model(lat, res.model, res.gpu, engine=config.engine))
        # A model object brings its own engine; else the config's (the latency model's profile wins).
        self.engine_profile = getattr(self.latency, "engine", None) or get_engine(config.engine)
        cache: PagedKVCache | ContiguousKVCache
        swap = None
        if isinstance(config.cache, PagedCacheSpec):
            cs = config.cache
            cache = make_paged_cache(cs.semantics, res.num_blocks, cs.block_size, watermark=cs.watermark,
                                     enable_prefix_caching=cs.prefix_caching, op_sink=op_sink)
            eng = self.engine_profile
            swap = SwapSpace(res.cpu_swap_blocks, cs.block_size * res.kv_bytes_per_token, res.pcie_bandwidth_Bps,
                             block_copy_s=eng.swap_copy_s * eng.copies_per_block(res.model.num_layers))
            self.capacity = res.num_blocks * cs.block_size
            unit_bytes = cs.block_size * res.kv_bytes_per_token
        else:
            assert isinstance(config.cache, ContiguousCacheSpec)
            cache = ContiguousKVCache(res.capacity_tokens, policy=config.cache.policy,
                                      placement=config.cache.placement, max_model_len=res.max_model_len,
                                      op_sink=op_sink)
            self.capacity = res.capacity_tokens
            unit_bytes = res.kv_bytes_per_token
        self.cache = cache
        self._paged = isinstance(cache, PagedKVCache)
        self._record = config.record_steps
        self.window = res.window  # None unless a sliding window binds below max_model_len
        self.ops = KVOps(cache, SeqTable(), max_model_len=res.max_model_len, window=res.window)
        self.sched = Scheduler(self.ops, config.scheduler, token_budget=res.token_budget, swap=swap,
                               rng=self.rng)
        # A latency model that times a decode-only step from the DecodeSet's kept sums (no context beyond
        # a sliding window: self.window is None) spares the scheduler the per-sequence context array.
        self._decode_time = getattr(self.latency, "decode_step_time", None) if self.window is None else None
        self.sched.lazy_ctx = self._decode_time is not None
        self.monitor = Monitor(self.ops, swap, unit_bytes=unit_bytes, keep_samples=record_sink is None)
        self._stream = RecordStream(record_sink, paged=self._paged) if record_sink is not None else None
        self.probe = MemoryProbe(self.sched, self.capacity, self.window)
        self.swap_stats = SwapStats(config.scheduler.swap_prefetch, overlap=self.engine_profile.swap_overlap,
                                    block_copy_s=swap.block_copy_s if swap is not None else 0.0)
        self.groups: list[SeqGroup] = []
        self.steps: list[StepRecord] = []
        self.memory: list[MemorySample] = []
        self.totals = StepTotals()
        self._blocks: list[tuple[float, int, int]] = []  # (time, logical, physical) per sample (paged)
        self._last_sample = -math.inf
        self._arrivals_done = False
        self.num_arrived = 0  # requests arrived so far (progress displays; self.groups is empty when streaming)
        self._wake: simpy.Event | None = None
        self._frag_since: float | None = None
        self.frag_wait_s = 0.0  # head of the queue blocked only by external fragmentation
        self.env = env if env is not None else simpy.Environment()

    # ---- SimPy processes ----------------------------------------------------------------------
    def _arrivals(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        for spec in self.specs:
            if spec.arrival_time > env.now:
                yield env.timeout(spec.arrival_time - env.now)
            self.submit(spec)
        self.close()

    def submit(self, spec: RequestSpec) -> SeqGroup:
        """A request arrives now: queue it (or record it REJECTED) and wake the step loop."""
        env = self.env
        g = admit_request(self.sched, spec, max_model_len=self.res.max_model_len)
        if self._stream is None:
            self.groups.append(g)
        else:
            self._stream.admit(g)
        self.num_arrived += 1
        if g.status == REJECTED:
            g.finish_s = env.now
            return g
        if spec.cancel_time is not None:
            ev = env.timeout(spec.cancel_time, value=g)
            ev.callbacks.append(self._on_cancel)
        self._poke()
        return g

    def close(self) -> None:
        """No more requests will arrive: the step loop ends once the queues drain."""
        self._arrivals_done = True
        self._poke()

    @property
    def outstanding(self) -> int:
        """Requests queued, running or swapped out now (a router's load signal)."""
        s = self.sched
        return len(s.waiting) + len(s.running) + len(s.swapped)

    def _on_cancel(self, ev: simpy.Event) -> None:
        g = cast(SeqGroup, ev.value)
        abort_group(self.sched, g, self.env.now)

    def _poke(self) -> None:
        if self._wake is not None and not self._wake.triggered:
            self._wake.succeed()

    def _loop(self) -> Generator[simpy.Event, Any, None]:
        env, s = self.env, self.sched
        step_time, batch, record, timeout = self.latency.step_time, self._batch, self._record_step, env.timeout
        peek = env.peek
        decode_time, bsz, dtype = self._decode_time, self.ops.block_size, self.config.kv_dtype
        iv = self.config.memory_sample_interval_s
        while True:
            if not (s.waiting or s.running or s.swapped):
                self._sample(env.now)
                if self._arrivals_done:
                    return
                self._wake = env.event()
                yield self._wake
                self._wake = None
                continue
            out = s.schedule()
            now = env.now
            for g in out.rejected:
                g.status = REJECTED
                g.finish_s = now
            if out.blocked or self._frag_since is not None:
                self._track_fragmentation(out, now)
            if not (out.num_prefill_tokens or out.num_decode_tokens or out.swap_time_s):
                # Nothing to compute (a step with only a swap-in still takes its transfer time).
                if not (out.preempted or out.rejected or out.swapped_in):
                    raise RuntimeError(
                        f"scheduler made no progress at t={now:.6g} s with {len(s.waiting)} waiting, "
                        f"{len(s.running)} running, {len(s.swapped)} swapped requests (a bug; please report)")
                complete_step(s, out, now)  # closes the (empty) step's bookkeeping
                continue
            s.in_flight = True
            if iv is None or now - self._last_sample >= iv:
                self._sample(now)
                if self.check:  # the inlined categories agree with sim.records.breakdown
                    bd = self.measure()
                    bd.check_invariants()
                    last = self.memory[-1] if self._stream is None else self._stream.last_sample
                    assert last == bd.sample(now), "inlined breakdown drifted"
            if out.decode_ctx is None and not out.prefills and decode_time:  # single-sequence decodes only
                d = s.dset
                dt = decode_time(out.num_simple, d.true_sum_ctx(), d.sum_alloc // bsz if bsz else 0, bsz, dtype)
                if self.check:  # the shortcut agrees with the full path
                    assert dt == step_time(batch(out)), "decode_step_time differs from step_time"
            else:
                dt = step_time(batch(out))
            if out.swap_time_s:
                dt = self.swap_stats.step(out, dt)
            record(out, now, dt)
            end = now + dt  # the time SimPy would give this step's timeout event
            if peek() > end:
                # No arrival or cancel falls due before the step ends: yielding a timeout would only pop
                # it again, so the clock moves to its end directly (the same float; ~6% of a run).
                env._now = end
            else:
                yield timeout(dt)
            complete_step(s, out, env.now)
            if self.check:
                self.check_invariants()

    # ---- per-step bookkeeping -----------------------------------------------------------------
    def _batch(self, out: SchedulerOutput) -> BatchShape:
        if out.decode_ctx is None:  # not built by the scheduler (lazy_ctx): this step needs it
            out.decode_ctx = self.sched.dset.true_ctx()
        if out.prefills:
            chunks = np.array([c for _, c, _ in out.prefills], dtype=np.int64)
            before = np.array([b for _, _, b in out.prefills], dtype=np.int64)
        else:
            chunks = before = _EMPTY
        ksum = bsum = None
        if not out.decode_groups and not out.decodes_stalled:  # only DecodeSet members decode: their kept sums
            d = self.sched.dset
            ksum = d.true_sum_ctx()
            if self._paged:
                bsum = d.sum_alloc // self.ops.block_size  # a member's blocks = ceil(ctx / block_size)
        if self.check:  # BatchShape validates the arrays and that the sums match them
            return BatchShape(chunks, before, out.decode_ctx, self.ops.block_size, self.config.kv_dtype,
                              out.decode_q, decode_ctx_sum=ksum, decode_blocks_sum=bsum)
        # Hot path: the arrays are int64 and in range by construction, so skip BatchShape's
        # per-step validation (tests run with check_invariants=True, which validates every step).
        b = BatchShape.__new__(BatchShape)
        b.prefill_chunk_lens, b.prefill_context_lens, b.decode_context_lens = chunks, before, out.decode_ctx
        b.block_size, b.kv_dtype, b.num_decode_tokens_per_seq = self.ops.block_size, self.config.kv_dtype, \
            out.decode_q
        b.decode_ctx_sum, b.decode_blocks_sum = ksum, bsum
        return b

    def _record_step(self, out: SchedulerOutput, start: float, dt: float) -> None:
        bs = len(out.prefills) + (out.num_simple if out.decode_ctx is None else out.decode_ctx.size)
        stream = self._stream
        if not self._record or stream is not None:  # running sums (else rebuilt from the records at the end)
            self.totals.add(bs, dt, out)
            if not self._record:
                return
        c = self.cache
        if isinstance(c, PagedKVCache):
            free = c.num_free_blocks
            used = c.num_blocks - free
        else:
            used, free = c.used_slots, c.free_slots
        index = len(self.steps) if stream is None else self.totals.num_steps - 1
        rec = StepRecord(index, start, dt, bs, out.num_prefill_tokens, out.num_decode_tokens, used, free,
                         out.num_cows, out.swap_out_blocks, out.swap_in_blocks, len(out.preempted),
                         len(self.sched.waiting))
        if out.swap_time_s:
            bb = self.sched.swap.block_bytes if self.sched.swap is not None else 0.0
            rec.swap_out_bytes, rec.swap_in_bytes = out.swap_out_blocks * bb, out.swap_in_blocks * bb
            rec.swap_s, rec.swap_hidden_s = out.swap_exposed_s, out.swap_time_s - out.swap_exposed_s
            rec.num_prefetch_hidden = out.swap_hidden
        if stream is None:
            self.steps.append(rec)
        else:
            stream.step(rec)

    def _track_fragmentation(self, out: SchedulerOutput, now: float) -> None:
        if out.blocked == "later_fragmented":
            if self._frag_since is None:
                self._frag_since = now
        elif self._frag_since is not None:
            self.frag_wait_s += now - self._frag_since
            self._frag_since = None

    def external_frag(self, waiting_need: int) -> int:
        """Free slots the head waiting request cannot use (see MemoryProbe.external_frag)."""
        return self.probe.external_frag(waiting_need)

    def measure(self) -> Breakdown:
        """The memory breakdown now (running sequences, cache occupancy, the head waiting request)."""
        return self.probe.measure()

    def _sample(self, now: float) -> None:
        """Append a memory sample (and an allocator-monitor sample) at `now`, replacing ones taken at
        the same instant."""
        self._last_sample = now
        sc, ss, sa, sf, used, ext, used_blocks, stl, stp = self.probe.sums()
        logical = sc - ss
        free = self.capacity - used
        # The categories of sim.records.breakdown.from_sums, inlined on this per-step path.
        sample = MemorySample(now, float(used - (sa - logical) - stp), float(sf - sc), float(sa - sf + stp),
                              float(ss), float(ext), float(free - ext), float(logical - stl), float(self.capacity))
        stream = self._stream
        if stream is not None:  # running means (a sample at the same instant replaces the previous one)
            stream.sample(sample)
            if self._paged:
                stream.blocks.add(now, (sa // self.ops.block_size, used_blocks))
        else:
            mem = self.memory
            if mem and mem[-1].time_s == now:
                mem.pop()
                if self._blocks:
                    self._blocks.pop()
            mem.append(sample)
            if self._paged:
                self._blocks.append((now, sa // self.ops.block_size, used_blocks))
        self.monitor.sample(now, sample, used_blocks if self._paged else used)

    def check_invariants(self) -> None:
        """Scheduler, cache and block-count invariants (AssertionError naming what broke).

        The breakdown's own invariants are checked at each memory sample (check mode), i.e. after
        scheduling: between complete_step and the next schedule freshly forked sequences still share
        a partly filled last block (copied at their next append), which the per-sequence sums of the
        breakdown do not model, and sliding-window blocks are released only at the next schedule.
        """
        self.sched.check_invariants()
        self.cache.check_invariants()
        bd = self.measure()
        c = self.cache
        if isinstance(c, PagedKVCache):
            t = self.ops.table
            running = [x for g in self.sched.running for x in g.slots]
            live = int((t.nblk[running] - t.drop[running]).sum())
            assert bd.logical_blocks == live == c.num_logical_blocks(), \
                f"logical blocks {bd.logical_blocks} vs table {live} vs cache {c.num_logical_blocks()}"
            assert bd.physical_blocks == c.num_used_blocks

    # ---- run ----------------------------------------------------------------------------------
    def run(self) -> SimResult:
        """Simulate the whole workload; returns the records and the summary."""
        with gc_paused():
            loop = self.start()
            self.env.run(until=loop)
            return self.finish(self.env.now)

    def start(self, arrivals: bool = True) -> simpy.Process:
        """Start the step loop and (unless `arrivals` is False: the caller submits requests and closes)
        the arrival process of the requests given at construction; returns the loop's process, which
        ends when arrivals are closed and every request is done."""
        if arrivals:
            self.env.process(self._arrivals())
        return self.env.process(self._loop())

    def finish(self, end: float) -> SimResult:
        """The run's records and summary, with the run ending at `end` (after the loop has ended)."""
        self._track_fragmentation(SchedulerOutput(), end)
        stream = self._stream
        records = [request_record(g, paged=self.ops.paged) for g in self.groups]
        cfg = self.config.to_dict()
        cfg.update(capacity_tokens=self.capacity, num_blocks=self.res.num_blocks,
                   max_model_len=self.res.max_model_len, token_budget=self.res.token_budget,
                   kv_bytes_per_token=self.res.kv_bytes_per_token, model=self.res.model.name,
                   gpu=self.res.gpu.name, latency_model=self.latency.name, engine=self.engine_profile.name)
        result = SimResult(system=system_label(self.config.cache), config=cfg, requests=records,
                           steps=self.steps, memory=self.memory, monitor=self.monitor.finish())
        if stream is not None:  # the records went to the sink: summarize the running sums
            means = stream.finish(end)
            result.summary = summarize(result, totals=self.totals, end_s=end, requests=stream.requests,
                                       memory=means)
        else:
            totals = StepTotals.from_steps(result) if self._record else self.totals
            result.summary = summarize(result, totals=totals, end_s=end)
        result.summary.update(self._extras(end, result.summary["duration_s"]))
        return result

    def _extras(self, end: float, duration: float) -> dict[str, Any]:
        s, c = self.sched, self.cache
        out: dict[str, Any] = {
            "frag_wait_s": self.frag_wait_s,
            "num_swap_fallbacks": s.num_swap_fallbacks,
            "capacity_tokens": self.capacity,
            "kv_dtype": self.config.kv_dtype,
            "kv_bytes_per_token": self.res.kv_bytes_per_token,
            "sliding_window": self.res.model.sliding_window or 0,
            # Which engine behaviour the run followed (docs/memory.md, docs/simulator.md).
            "semantics": getattr(c, "semantics", "contiguous"),
            "scheduler_policy": self.config.scheduler.policy,
            **self.monitor.totals(end, duration),
        }
        if isinstance(c, PagedKVCache):
            if self._stream is not None:
                out["sharing_savings_blocks_pct"] = self._stream.sharing_savings_blocks_pct(end)
            else:
                logical = physical = 0.0
                for (t0, lb, pb), (t1, _, _) in zip(self._blocks, [*self._blocks[1:], (end, 0, 0)], strict=True):
                    logical += lb * (t1 - t0)
                    physical += pb * (t1 - t0)
                out["sharing_savings_blocks_pct"] = 100.0 * (1 - physical / logical) if logical > 0 else 0.0
            out["num_cows"] = c.total_cows - self.ops.cows_ignored
            out["prefix_cache_hit_rate"] = (c.num_cache_hits / c.num_cache_queries
                                            if c.num_cache_queries else float("nan"))
            assert s.swap is not None
            out.update(self.swap_stats.summary(s.swap))
        return out


def simulate(requests: Iterable[RequestSpec], config: SimConfig | None = None, *,
             rng: np.random.Generator | int | None = None,
             op_sink: Callable[[dict[str, Any]], None] | None = None,
             record_sink: RecordSink | None = None) -> SimResult:
    """Run a workload through one cache system and scheduler; returns per-request, per-step and
    memory records plus `summary` (SUMMARY_KEYS and extras).

    requests: a collection of RequestSpecs (sorted by arrival here), or an iterator of them in arrival
    order, read lazily (a workload need not fit in memory). rng: the run's random generator (beam
    survival, draft acceptance) or a seed; op_sink receives one dict per successful allocator
    operation in the replay JSONL format. record_sink: stream the records to it instead of keeping
    them (the result then holds the summary only; memory stays bounded by the live requests; see
    sim.records.stream for the summary's accuracy).
    Raises SpecError for an impossible configuration or workload (the message names the field).
    """
    return Engine(requests, config or SimConfig(), rng=rng, op_sink=op_sink, record_sink=record_sink).run()
