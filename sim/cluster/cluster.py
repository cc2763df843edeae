"""Several replicas behind a router on one SimPy clock.

Each replica is a full `sim.engine.Engine` (its own KV cache, scheduler, latency model and records)
built on a shared `simpy.Environment`; one arrival process walks the workload in arrival order, asks
the router for a replica at each arrival instant, and hands the request to that replica's `submit`.
The replicas' step loops are the single-replica engine's own, unchanged. Results: one SimResult per
replica, plus a cluster SimResult (all requests, the replicas' summed memory series, cluster summary).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Generator, Iterable, Sequence
from dataclasses import dataclass, field, fields
from typing import Any

import numpy as np
import simpy

from sim.cluster.router import ROUTERS, Router, make_router
from sim.config import SimConfig, system_label
from sim.engine import Engine, check_workload, gc_paused
from sim.memory.paged_cache import PagedKVCache
from sim.memory.prefix import block_hashes
from sim.records.metrics import StepTotals, summarize
from sim.records.results import MEMORY_CATEGORIES, MemorySample, SimResult
from sim.request import RequestSpec, SpecError


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """How many replicas and how requests reach them.

    replicas: identical replicas (>= 1), each with the run's SimConfig (its own KV pool of that size);
    router: a name in sim.cluster.router.ROUTERS; load_factor: prefix-aware routing's load bound (>= 1).
    """

    replicas: int = 1
    router: str = "round-robin"
    load_factor: float = 1.25

    def __post_init__(self) -> None:
        if not isinstance(self.replicas, int) or isinstance(self.replicas, bool) or self.replicas < 1:
            raise SpecError(f"config field 'replicas' = {self.replicas!r} out of range (valid: integer >= 1)")
        if self.router not in ROUTERS:
            raise SpecError(f"config field 'router' = {self.router!r} out of range (valid: {', '.join(ROUTERS)})")
        if not (isinstance(self.load_factor, (int, float)) and self.load_factor >= 1.0
                and math.isfinite(self.load_factor)):
            raise SpecError(f"config field 'load_factor' = {self.load_factor!r} out of range (valid: >= 1)")

    @property
    def label(self) -> str:
        """" x4 prefix-aware" (empty for one replica): appended to a system label."""
        return "" if self.replicas == 1 else f" x{self.replicas} {self.router}"


class _View:
    """A router's view of one replica (sim.cluster.router.ReplicaView)."""

    __slots__ = ("engine", "_memo")

    def __init__(self, engine: Engine, memo: dict[tuple[int, int], tuple[int, ...]]) -> None:
        self.engine = engine
        self._memo = memo  # shared by the views: a request's block hashes are derived once per block size

    def load(self) -> int:
        return self.engine.outstanding

    def prefix_hits(self, spec: RequestSpec) -> int:
        c = self.engine.cache
        if not (isinstance(c, PagedKVCache) and c.enable_prefix_caching and spec.prefix_hashes):
            return 0
        key = (id(spec), c.block_size)
        hashes = self._memo.get(key)
        if hashes is None:
            self._memo.clear()  # only the request being routed is ever asked about
            hashes = self._memo[key] = block_hashes(spec, c.block_size)
        return c.num_prefix_hits(spec.prompt_len, hashes)


@dataclass(slots=True)
class ClusterResult:
    """A cluster run: per-replica results, which replica served each request, and the cluster view."""

    replicas: list[SimResult]
    assignment: dict[Any, int]  # req_id -> replica index
    cluster: SimResult
    per_replica: list[dict[str, Any]] = field(default_factory=list)  # one summary row per replica


class Cluster:
    """One cluster run: build with the workload, the per-replica config and the ClusterSpec; `run()` once."""

    def __init__(self, requests: Iterable[RequestSpec], config: SimConfig, spec: ClusterSpec | None = None, *,
                 rng: np.random.Generator | int | None = None, router: Router | None = None,
                 check_invariants: bool = False) -> None:
        self.spec = spec or ClusterSpec()
        self.config = config
        self.specs = sorted(check_workload(requests), key=lambda r: r.arrival_time)
        self.env = simpy.Environment()
        gen = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
        # One stream per replica, seeded from the run's generator (Generator.spawn needs numpy 1.25; the
        # project supports 1.24). One replica takes the generator itself: the single engine's run exactly.
        n = self.spec.replicas
        gens = [gen] if n == 1 else [np.random.default_rng(int(s)) for s in gen.integers(0, 2**63 - 1, size=n)]
        self.engines = [Engine([], config, rng=g, env=self.env, check_invariants=check_invariants) for g in gens]
        memo: dict[tuple[int, int], tuple[int, ...]] = {}
        self.views = [_View(e, memo) for e in self.engines]
        self.route = router or make_router(self.spec.router, self.spec.load_factor)
        self.assignment: dict[Any, int] = {}

    def _arrivals(self) -> Generator[simpy.Event, Any, None]:
        env = self.env
        for spec in self.specs:
            if spec.arrival_time > env.now:
                yield env.timeout(spec.arrival_time - env.now)
            i = self.route(spec, self.views)
            if not 0 <= i < len(self.engines):
                raise RuntimeError(f"router returned replica {i} for request {spec.req_id!r} "
                                   f"(valid: 0..{len(self.engines) - 1})")
            self.assignment[spec.req_id] = i
            self.engines[i].submit(spec)
        for e in self.engines:
            e.close()

    def run(self) -> ClusterResult:
        """Simulate the whole workload on every replica; returns per-replica and cluster results."""
        with gc_paused():
            env = self.env
            env.process(self._arrivals())
            loops = [e.start(arrivals=False) for e in self.engines]
            env.run(until=simpy.AllOf(env, loops))
            end = env.now
            results = [e.finish(end) for e in self.engines]
        return ClusterResult(results, self.assignment, self._combine(results, end),
                             [_replica_row(i, r) for i, r in enumerate(results)])

    def _combine(self, results: Sequence[SimResult], end: float) -> SimResult:
        requests = sorted((r for res in results for r in res.requests), key=lambda r: r.arrival_s)
        steps = [s for res in results for s in res.steps]
        cfg = dict(results[0].config)
        cfg.update(replicas=self.spec.replicas, router=self.spec.router, load_factor=self.spec.load_factor)
        label = system_label(self.config.cache) + self.spec.label
        out = SimResult(system=label, config=cfg, requests=requests, steps=steps,
                        memory=sum_memory([r.memory for r in results]))
        totals = StepTotals()
        for e, r in zip(self.engines, results, strict=True):
            t = StepTotals.from_steps(r) if self.config.record_steps else e.totals
            for f in fields(StepTotals):
                setattr(totals, f.name, getattr(totals, f.name) + getattr(t, f.name))
        out.summary = summarize(out, totals=totals, end_s=end)
        hits = queries = 0
        for e in self.engines:
            c = e.cache
            if isinstance(c, PagedKVCache):
                hits += c.num_cache_hits
                queries += c.num_cache_queries
        loads = [sum(1 for i in self.assignment.values() if i == k) for k in range(self.spec.replicas)]
        first = results[0].summary
        out.summary.update(
            capacity_tokens=sum(r.summary["capacity_tokens"] for r in results),
            kv_dtype=first["kv_dtype"], kv_bytes_per_token=first["kv_bytes_per_token"],
            frag_wait_s=sum(r.summary["frag_wait_s"] for r in results),
            num_replicas=self.spec.replicas, router=self.spec.router,
            prefix_cache_hit_rate=hits / queries if queries else math.nan,
            requests_max_over_mean=max(loads) / (sum(loads) / len(loads)) if sum(loads) else math.nan,
        )
        return out


def _replica_row(i: int, r: SimResult) -> dict[str, Any]:
    keys = ("num_requests", "num_finished", "throughput_rps", "mean_batch_size", "p99_ttft", "p50_tpot",
            "num_preemptions", "token_states_pct", "free_pct", "prefix_cache_hit_rate")
    return {"replica": i, "system": r.system, **{k: r.summary.get(k, math.nan) for k in keys}}


def sum_memory(series: Sequence[Sequence[MemorySample]]) -> list[MemorySample]:
    """The replicas' memory series summed into one (each sample holds until the replica's next one).

    At every instant any replica sampled, the cluster sample adds each replica's latest sample (a
    replica not yet sampled contributes nothing yet), so the categories still sum to the summed pool.
    """
    names = ("time_s", *MEMORY_CATEGORIES, "logical_token_states", "capacity")
    arrays = [np.array([[getattr(s, n) for n in names] for s in ser], dtype=float).reshape(-1, len(names))
              for ser in series]
    times = np.unique(np.concatenate([a[:, 0] for a in arrays])) if arrays else np.zeros(0)
    total = np.zeros((times.size, len(names) - 1))
    for a in arrays:
        if not a.size:
            continue
        idx = np.searchsorted(a[:, 0], times, side="right") - 1
        held = idx >= 0
        total[held] += a[idx[held], 1:]
    return [MemorySample(float(t), *map(float, row)) for t, row in zip(times, total, strict=True)]


def simulate_cluster(requests: Iterable[RequestSpec], config: SimConfig | None = None,
                     spec: ClusterSpec | None = None, *, rng: np.random.Generator | int | None = None,
                     router: Callable[..., int] | None = None) -> ClusterResult:
    """Run a workload through `spec.replicas` identical replicas of `config` behind a router.

    rng: the run's generator or seed (each replica gets its own stream seeded from it);
    router: a custom policy callable instead of spec.router's (see sim.cluster.router).
    """
    return Cluster(requests, config or SimConfig(), spec, rng=rng, router=router).run()
