"""Run configuration: which cache system, which scheduler settings, which model/GPU/memory budget.

Frozen dataclasses validated on construction: every impossible value raises `SpecError` naming the
field and its valid range, before any simulation starts. `system_label` names a cache system in
results ("paged-16", "contig-pow2-best_fit"); `resolve` turns a SimConfig into concrete numbers.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any

from sim.checks import HOST_BYTES_PER_BLOCK, MAX_KV_TOKENS, MAX_NUM_BLOCKS, is_int, is_num, out_of_range
from sim.request import SpecError
from sim.timing.engines import ENGINE_PROFILES, EngineProfile

PREEMPTION_MODES: tuple[str, ...] = ("recompute", "swap")
SCHEDULER_POLICIES: tuple[str, ...] = ("mixed", "vllm-v0", "vllm-v1")
# Mirrors sim.memory.semantics.SEMANTICS (a test checks they agree; validating a config imports no cache).
CACHE_SEMANTICS: tuple[str, ...] = ("pagesim", "vllm-v0", "vllm-v1")
TOO_LONG_RULES: tuple[str, ...] = ("reject", "truncate", "error")
# Mirrors sim.memory.contiguous_cache.RESERVATION_POLICIES / sim.memory.extent_allocator.PLACEMENTS; a test checks
# they agree (kept here so validating a config does not import the allocators).
CONTIG_POLICIES: tuple[str, ...] = ("max", "pow2", "pow2-output", "oracle")
CONTIG_PLACEMENTS: tuple[str, ...] = ("first_fit", "best_fit", "buddy")


def _bad(field_name: str, valid: str, value: object) -> SpecError:
    return SpecError(f"config {out_of_range(field_name, valid, value)}")


@dataclass(frozen=True, slots=True)
class PagedCacheSpec:
    """A PagedAttention cache: fixed blocks of `block_size` token slots, optional prefix caching.

    watermark: fraction of blocks kept free at admission (vLLM's 1%), in [0, 1).
    semantics: whose block-manager behaviour the cache follows (sim.memory.semantics): "pagesim" (the
      default, the simulator's own), "vllm-v0" (vLLM 0.7.3's block manager, op for op) or "vllm-v1"
      (vLLM v1's BlockPool / KVCacheManager); docs/memory.md lists the differences.
    """

    block_size: int = 16
    prefix_caching: bool = False
    watermark: float = 0.01
    semantics: str = "pagesim"

    def __post_init__(self) -> None:
        if not is_int(self.block_size) or self.block_size < 1:
            raise _bad("cache.block_size", "integer >= 1", self.block_size)
        if not isinstance(self.prefix_caching, bool):
            raise _bad("cache.prefix_caching", "true or false", self.prefix_caching)
        if not is_num(self.watermark) or not 0.0 <= self.watermark < 1.0:
            raise _bad("cache.watermark", "[0, 1)", self.watermark)
        if self.semantics not in CACHE_SEMANTICS:
            raise _bad("cache.semantics", ", ".join(CACHE_SEMANTICS), self.semantics)


@dataclass(frozen=True, slots=True)
class ContiguousCacheSpec:
    """A contiguous cache: one reservation per sequence group placed in one address space.

    policy: how much a request reserves ("max": max_model_len, "pow2": next power of two of its final
    length, "pow2-output": its prompt plus the next power of two of its output length (the vLLM paper's
    Orca (Pow2)), "oracle": exactly its final length; all capped at max_model_len); placement: the
    extent allocator.
    """

    policy: str = "max"
    placement: str = "first_fit"

    def __post_init__(self) -> None:
        if self.policy not in CONTIG_POLICIES:
            raise _bad("cache.policy", ", ".join(CONTIG_POLICIES), self.policy)
        if self.placement not in CONTIG_PLACEMENTS:
            raise _bad("cache.placement", ", ".join(CONTIG_PLACEMENTS), self.placement)


CacheSpec = PagedCacheSpec | ContiguousCacheSpec


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    """Iteration-level scheduler settings (vLLM v0-like defaults).

    policy: how a step is composed (docs/simulator.md): "mixed" (the default: decodes first, then
      waiting prefills fill the token budget in the same step, Orca / Sarathi style), "vllm-v0" (vLLM
      v0's default scheduler: a step runs waiting prefills only, stalling decodes, whenever one can be
      admitted; with chunked_prefill it is vLLM v0's chunked scheduler, i.e. "mixed") or "vllm-v1"
      (vLLM v1: chunked prefill always on within max_num_batched_tokens, preemption by recompute only).

    max_num_seqs: sequences in one batch (a beam/parallel group counts all its sequences).
    max_num_batched_tokens: tokens per step (decode tokens + prefill chunk tokens); None: 512 with
      chunked prefill, else max(max_model_len, 2048) as vLLM. Must be >= max_num_seqs.
    chunked_prefill: split prompts into chunks that fill the token budget left after decodes.
    preemption_mode: "recompute" (free, requeue at the head of the queue) or "swap" (to the CPU pool).
    cpu_swap_space_gb: CPU swap pool size in GiB (swap mode; sized in blocks of the run's KV dtype).
    swap_prefetch: swap a group back in on a copy stream that overlaps the step's forward pass (the
      transfer is hidden when it is no longer than the step's compute); False: the swap-in transfer
      is on the step's critical path, as in vLLM v0.
    pcie_bandwidth_gbps: host<->device copy rate, GB/s one way (None: the GPU preset's PCIe figure).
    too_long: a request with prompt + output > max_model_len is "reject"ed (recorded, skipped),
      "truncate"d (output cut to fit; prompt >= max_model_len still rejected) or an "error" (SpecError).
    beam_switch_prob, beam_switch_halflife: the beam-search survival model. After g generated tokens
      each new beam descends from a uniformly drawn current beam with probability
      beam_switch_prob * h / (h + g) (h = beam_switch_halflife tokens), else continues its own parent:
      beams reshuffle often at first and lock in as their score gaps grow. The defaults (0.5, 10)
      put block savings in the vLLM paper's range for widths 2-6 (see docs/simulator.md).
    """

    max_num_seqs: int = 256
    max_num_batched_tokens: int | None = None
    chunked_prefill: bool = False
    preemption_mode: str = "recompute"
    cpu_swap_space_gb: float = 4.0
    swap_prefetch: bool = False
    pcie_bandwidth_gbps: float | None = None
    too_long: str = "reject"
    beam_switch_prob: float = 0.5
    beam_switch_halflife: float = 10.0
    policy: str = "mixed"

    def __post_init__(self) -> None:
        if not is_int(self.max_num_seqs) or self.max_num_seqs < 1:
            raise _bad("scheduler.max_num_seqs", "integer >= 1", self.max_num_seqs)
        if self.max_num_batched_tokens is not None and (
                not is_int(self.max_num_batched_tokens) or self.max_num_batched_tokens < self.max_num_seqs):
            raise _bad("scheduler.max_num_batched_tokens",
                       f"None or integer >= max_num_seqs = {self.max_num_seqs}", self.max_num_batched_tokens)
        if not isinstance(self.chunked_prefill, bool):
            raise _bad("scheduler.chunked_prefill", "true or false", self.chunked_prefill)
        if self.policy not in SCHEDULER_POLICIES:
            raise _bad("scheduler.policy", ", ".join(SCHEDULER_POLICIES), self.policy)
        if self.preemption_mode not in PREEMPTION_MODES:
            raise _bad("scheduler.preemption_mode", ", ".join(PREEMPTION_MODES), self.preemption_mode)
        if self.policy == "vllm-v1" and self.preemption_mode == "swap":
            raise _bad("scheduler.preemption_mode", "recompute with policy vllm-v1 (vLLM v1 has no swap)",
                       self.preemption_mode)
        if not is_num(self.cpu_swap_space_gb) or self.cpu_swap_space_gb < 0:
            raise _bad("scheduler.cpu_swap_space_gb", "GiB >= 0", self.cpu_swap_space_gb)
        if not isinstance(self.swap_prefetch, bool):
            raise _bad("scheduler.swap_prefetch", "true or false", self.swap_prefetch)
        if self.pcie_bandwidth_gbps is not None and (not is_num(self.pcie_bandwidth_gbps)
                                                     or self.pcie_bandwidth_gbps <= 0):
            raise _bad("scheduler.pcie_bandwidth_gbps", "None or GB/s > 0", self.pcie_bandwidth_gbps)
        if self.too_long not in TOO_LONG_RULES:
            raise _bad("scheduler.too_long", ", ".join(TOO_LONG_RULES), self.too_long)
        if not is_num(self.beam_switch_prob) or not 0.0 <= self.beam_switch_prob <= 1.0:
            raise _bad("scheduler.beam_switch_prob", "[0, 1]", self.beam_switch_prob)
        if not is_num(self.beam_switch_halflife) or self.beam_switch_halflife <= 0:
            raise _bad("scheduler.beam_switch_halflife", "tokens > 0", self.beam_switch_halflife)

    @property
    def chunked(self) -> bool:
        """Prompts are split into chunks: chunked_prefill, or always under policy vllm-v1."""
        return self.chunked_prefill or self.policy == "vllm-v1"

    def token_budget(self, max_model_len: int) -> int:
        """The effective max_num_batched_tokens (the default depends on chunking and max_model_len)."""
        if self.max_num_batched_tokens is not None:
            return self.max_num_batched_tokens
        return max(512, self.max_num_seqs) if self.chunked else max(max_model_len, 2048, self.max_num_seqs)


@dataclass(frozen=True, slots=True)
class SimConfig:
    """Everything a run needs besides the workload.

    model / gpu: preset names (sim.presets) or ModelSpec / GPUSpec objects.
    kv_capacity_tokens: KV pool size in token slots; None: sized from the GPU memory budget
      (sim.presets.kv_capacity_tokens with gpu_memory_utilization and kv_dtype).
    max_model_len: None: the model's. latency: None = roofline, else a parameters JSON path or dict,
      or any object with `name` and `step_time(BatchShape) -> float` (a sim.timing.latency.LatencyModel).
    engine: the serving system's overheads, an engine profile name (sim.timing.engines.ENGINE_PROFILES:
      basic, ideal, vllm-2023, vllm-current) or an EngineProfile; None: the one a latency parameters file
      names, else the default ("basic"). Recorded as "engine" in every summary.
    sliding_window: None: the model's attention window (e.g. 4096 for Mistral-7B); 0: no window; W >= 1:
      attend to the last W tokens (overrides the model's, for the latency model and the cache alike).
      The paged cache releases blocks that fall out of the window; contiguous caches keep them.
    memory_sample_interval_s: None samples memory at every step; a positive value samples at most once
      per interval (each sample then stands for the time until the next one), bounding memory for huge runs.
    record_steps: keep one StepRecord per step (turn off for huge runs; summaries still use every step).
    """

    model: Any = "opt-13b"
    gpu: Any = "a100-40gb"
    cache: CacheSpec = field(default_factory=PagedCacheSpec)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    kv_capacity_tokens: int | None = None
    gpu_memory_utilization: float = 0.9
    kv_dtype: str = "fp16"
    max_model_len: int | None = None
    sliding_window: int | None = None
    latency: Any = None
    engine: Any = None
    memory_sample_interval_s: float | None = None
    record_steps: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise SpecError naming the first impossible field and its valid range."""
        if not isinstance(self.cache, (PagedCacheSpec, ContiguousCacheSpec)):
            raise _bad("cache", "PagedCacheSpec(...) or ContiguousCacheSpec(...)", self.cache)
        if not isinstance(self.scheduler, SchedulerConfig):
            raise _bad("scheduler", "SchedulerConfig(...)", self.scheduler)
        if self.kv_capacity_tokens is not None and (not is_int(self.kv_capacity_tokens)
                                                    or not 1 <= self.kv_capacity_tokens <= MAX_KV_TOKENS):
            raise _bad("kv_capacity_tokens", f"None or integer in [1, {MAX_KV_TOKENS:,}] (token slots)",
                       self.kv_capacity_tokens)
        if not is_num(self.gpu_memory_utilization) or not 0.0 < self.gpu_memory_utilization <= 1.0:
            raise _bad("gpu_memory_utilization", "(0, 1]", self.gpu_memory_utilization)
        if self.max_model_len is not None and (not is_int(self.max_model_len) or self.max_model_len < 2):
            raise _bad("max_model_len", "None or integer >= 2", self.max_model_len)
        if self.sliding_window is not None and (not is_int(self.sliding_window) or self.sliding_window < 0):
            raise _bad("sliding_window", "None (the model's), 0 (none) or tokens >= 1", self.sliding_window)
        if self.memory_sample_interval_s is not None and (
                not is_num(self.memory_sample_interval_s) or self.memory_sample_interval_s <= 0):
            raise _bad("memory_sample_interval_s", "None or seconds > 0", self.memory_sample_interval_s)
        if not isinstance(self.record_steps, bool):
            raise _bad("record_steps", "true or false", self.record_steps)
        if (self.engine is not None and not isinstance(self.engine, EngineProfile)
                and str(self.engine).lower() not in ENGINE_PROFILES):
            raise _bad("engine", f"None or an engine profile ({', '.join(ENGINE_PROFILES)})", self.engine)
        if not isinstance(self.kv_dtype, str):
            raise _bad("kv_dtype", "a KV dtype name such as fp16, bf16, fp8_e4m3, int8", self.kv_dtype)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-friendly dict of the configuration (presets by name, nested specs as dicts)."""
        out: dict[str, Any] = {}
        for name in ("model", "gpu", "latency", "engine"):
            v = getattr(self, name)
            out[name] = v if v is None or isinstance(v, (str, dict)) else str(getattr(v, "name", v))
        out["cache"] = {"kind": "paged" if isinstance(self.cache, PagedCacheSpec) else "contiguous",
                        **asdict(self.cache)}
        out["scheduler"] = asdict(self.scheduler)
        for name in ("kv_capacity_tokens", "gpu_memory_utilization", "kv_dtype", "max_model_len",
                     "sliding_window", "memory_sample_interval_s", "record_steps"):
            out[name] = getattr(self, name)
        out["system"] = system_label(self.cache)
        return out


def system_label(cache: CacheSpec) -> str:
    """Short name of a cache system: "paged-16", "paged-16+prefix", "paged-16@vllm-v0" (a semantics other
    than pagesim's), "contig-max", "contig-pow2-best_fit".

    The default placement (first_fit) is left out of contiguous labels.
    """
    if isinstance(cache, PagedCacheSpec):
        sem = "" if cache.semantics == "pagesim" else f"@{cache.semantics}"
        return f"paged-{cache.block_size}" + ("+prefix" if cache.prefix_caching else "") + sem
    if isinstance(cache, ContiguousCacheSpec):
        return f"contig-{cache.policy}" + ("" if cache.placement == "first_fit" else f"-{cache.placement}")
    raise _bad("cache", "PagedCacheSpec(...) or ContiguousCacheSpec(...)", cache)


@dataclass(frozen=True, slots=True)
class Resolved:
    """A SimConfig turned into numbers: presets looked up, pool sized, defaults applied."""

    model: Any  # sim.presets.ModelSpec
    gpu: Any  # sim.presets.GPUSpec
    capacity_tokens: int
    max_model_len: int
    token_budget: int
    kv_bytes_per_token: float
    num_blocks: int  # paged: capacity // block_size; contiguous: 0
    block_size: int  # paged: block size; contiguous: 0
    cpu_swap_blocks: int  # paged swap pool in blocks (0 for contiguous)
    window: int | None = None  # attention window in tokens, None when it never binds (>= max_model_len)
    pcie_bandwidth_Bps: float = 0.0  # swap transfer rate, one way


def resolve(config: SimConfig) -> Resolved:
    """Look up presets and size the pool; SpecError if the memory cannot hold one block."""
    from sim.presets import get_gpu, get_model, kv_capacity_tokens

    model = get_model(config.model)
    gpu = get_gpu(config.gpu)
    if config.sliding_window is not None:  # the override reaches the latency model through the spec
        model = replace(model, sliding_window=config.sliding_window or None)
    paged = isinstance(config.cache, PagedCacheSpec)
    bs = config.cache.block_size if isinstance(config.cache, PagedCacheSpec) else None
    kvb = model.kv_bytes_per_token(config.kv_dtype, block_size=bs)
    if config.kv_capacity_tokens is not None:
        cap = config.kv_capacity_tokens
    else:
        cap = kv_capacity_tokens(model, gpu, gpu_memory_utilization=config.gpu_memory_utilization,
                                 kv_dtype=config.kv_dtype, block_size=bs)
    mml = config.max_model_len if config.max_model_len is not None else model.max_model_len
    if isinstance(config.cache, PagedCacheSpec):
        b = config.cache.block_size
        if cap < b:
            raise SpecError(f"config field 'kv_capacity_tokens' = {cap} is smaller than one block "
                            f"(valid: >= block_size = {b} token slots)")
        num_blocks = cap // b
        if config.cache.semantics == "vllm-v1" and num_blocks < 2:
            raise SpecError(f"config field 'kv_capacity_tokens' = {cap} holds {num_blocks} block (valid with "
                            f"cache.semantics vllm-v1: >= 2 blocks = {2 * b} token slots; block 0 is its null "
                            f"block)")
        if num_blocks > MAX_NUM_BLOCKS:  # refused before the engine allocates the pool
            raise SpecError(f"the KV pool of {cap:,} token slots is {num_blocks:,} blocks of {b}, above the "
                            f"simulator's {MAX_NUM_BLOCKS:,} (valid: kv_capacity_tokens <= {MAX_NUM_BLOCKS * b:,} "
                            f"for block_size {b}; it keeps about {HOST_BYTES_PER_BLOCK} B of host memory per block)")
        swap_blocks = int(config.scheduler.cpu_swap_space_gb * (1 << 30) // (kvb * b))
    else:
        b, num_blocks, swap_blocks = 0, 0, 0
    w = model.sliding_window
    pcie = config.scheduler.pcie_bandwidth_gbps
    return Resolved(model=model, gpu=gpu, capacity_tokens=cap, max_model_len=mml,
                    token_budget=config.scheduler.token_budget(mml), kv_bytes_per_token=kvb,
                    num_blocks=num_blocks, block_size=b if paged else 0, cpu_swap_blocks=swap_blocks,
                    window=w if w is not None and w < mml else None,
                    pcie_bandwidth_Bps=pcie * 1e9 if pcie is not None else gpu.pcie_bandwidth_Bps)
