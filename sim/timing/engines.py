"""Engine profiles: named sets of serving-system overheads the latency models add to the GPU's work.

A profile is plain data (a frozen dataclass in ENGINE_PROFILES) with the source of every number:
CPU time per step and per running sequence, the decode-attention kernel's efficiency and its per-block
and per-sequence costs, the fixed cost of each host<->device copy in a swap, and the fixed latency of a
tensor-parallel all-reduce. `--engine NAME` picks one; every run records its name (docs/latency.md).
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any

from sim.presets import SpecError

__all__ = ["DEFAULT_ENGINE", "ENGINE_PROFILES", "EngineProfile", "get_engine", "engine_from_dict"]


@dataclass(frozen=True, slots=True)
class EngineProfile:
    """One serving system's overheads (all seconds >= 0; efficiencies in (0, 1]).

    step_overhead_s: CPU time per scheduler step that the GPU waits for (scheduling, input preparation,
      sampler, output processing: the parts that do not grow with the batch).
    seq_overhead_s: CPU time per running sequence per step (block tables, per-sequence sampling and
      stop checks, detokenization).
    attn_efficiency: fraction of the HBM peak the decode-attention kernel reaches; None: the latency
      model's own efficiency (what the linear layers reach).
    attn_block_s: decode-kernel time per (KV block touched, layer, query head on one GPU): the block-table
      read and the loop iteration a warp spends per block, at the GPU's concurrency.
    attn_seq_s: decode-kernel time per (sequence, layer, query head on one GPU): the per-thread-block
      work (reductions, output write) that does not depend on the context length.
    swap_copy_s: fixed cost of one host<->device copy call (cudaMemcpyAsync submission and DMA set-up).
    swap_copies_per_layer: copies per swapped block per layer (vLLM v0 copies K and V of each block of
      each layer separately: 2). 0: the whole block in one copy.
    swap_overlap: swap copies run on a cache stream that overlaps the forward pass layer by layer
      (vLLM v0.1's worker); only the copy calls' fixed cost stays on the step's critical path.
    comm_latency_s: fixed latency of one tensor-parallel all-reduce (two per layer when tp > 1).
    gemm_curve: time linear layers with the measured GEMM efficiency curve over token count
      (sim.timing.gemm) instead of one flat efficiency, on the GPU the curve was measured on (H100-SXM);
      elsewhere the flat roofline (a parameters file's own "gemm" block applies on any GPU).
    source: where the numbers come from (shown by `pagesim engines` and in docs/latency.md).
    """

    name: str
    description: str
    step_overhead_s: float = 0.0
    seq_overhead_s: float = 0.0
    attn_efficiency: float | None = None
    attn_block_s: float = 0.0
    attn_seq_s: float = 0.0
    swap_copy_s: float = 0.0
    swap_copies_per_layer: int = 2
    swap_overlap: bool = False
    comm_latency_s: float = 0.0
    gemm_curve: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """SpecError naming the first field out of range."""
        for f in ("step_overhead_s", "seq_overhead_s", "attn_block_s", "attn_seq_s", "swap_copy_s",
                  "comm_latency_s"):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not v >= 0.0 or v == float("inf"):
                raise SpecError(f"engine profile {self.name!r}: '{f}' = {v!r} out of range (valid: seconds >= 0)")
        e = self.attn_efficiency
        if e is not None and (isinstance(e, bool) or not isinstance(e, (int, float)) or not 0.0 < e <= 1.0):
            raise SpecError(f"engine profile {self.name!r}: 'attn_efficiency' = {e!r} out of range "
                            f"(valid: None or (0, 1])")
        c = self.swap_copies_per_layer
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise SpecError(f"engine profile {self.name!r}: 'swap_copies_per_layer' = {c!r} out of range "
                            f"(valid: an integer >= 0)")
        for f in ("swap_overlap", "gemm_curve"):
            if not isinstance(getattr(self, f), bool):
                raise SpecError(f"engine profile {self.name!r}: '{f}' = {getattr(self, f)!r} (valid: true/false)")

    def overhead_s(self, num_seqs: int) -> float:
        """CPU time of a step with `num_seqs` running sequences (0 sequences: an idle engine, 0 s)."""
        return self.step_overhead_s + self.seq_overhead_s * num_seqs if num_seqs else 0.0

    def copies_per_block(self, num_layers: int) -> int:
        """Copy calls that move one KV block between host and GPU."""
        return self.swap_copies_per_layer * num_layers if self.swap_copies_per_layer else 1

    def to_dict(self) -> dict[str, Any]:
        """The profile as a JSON-friendly dict (every field)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}


# Vidur (Agrawal et al., MLSys'24) measured vLLM's CPU work per step on an A100 (microsoft/vidur,
# data/profiling/a100/cpu_overheads.csv, Llama-2-7B, TP 1, batch 8..64). A least-squares line through
# the means of schedule + sampler_e2e + prepare_inputs_e2e + process_model_outputs gives 2.02 ms per
# step + 0.171 ms per sequence (worst point 14% off, at batch 8); the medians give 1.20 ms + 0.100 ms
# (process_model_outputs has heavy tails: detokenization, garbage collection). Means, because time adds.
# That vLLM (late 2023) batched its sampler; v0.1 (the paper's) sampled and detokenized each sequence in
# Python, so its per-sequence cost is higher and unmeasured: it is the one number fitted (Fig. 13b).
_CPU = ("CPU: 2.02 ms per step, the intercept of a least-squares line through vLLM's measured per-step CPU "
        "times on an A100 (Vidur, MLSys'24, microsoft/vidur data/profiling/a100/cpu_overheads.csv, "
        "Llama-2-7B TP1, batch 8-64, means of schedule + sampler + prepare_inputs + process_model_outputs; "
        "its slope is 0.171 ms/seq). Per sequence 0.333 ms: FITTED to the vLLM paper's Fig. 13b (Alpaca at "
        "30 req/s, paged mean batch 132.44; 4 seeds x 3000 requests) and validated on Fig. 13a (ShareGPT at "
        "2 req/s: 28.5 vs 30.42); v0.1 sampled and detokenized each sequence in Python.")
# A100 warp-iteration arithmetic for vLLM v0's paged_attention_v1 kernel (one warp per KV block per
# iteration; a block-table load then the keys: two dependent DRAM round trips, ~1 us at ~500 ns each
# [Jia et al., "Dissecting the Ampere GPU architecture via microbenchmarking", GTC'21]; up to 64 resident
# warps on each of 108 SMs hide it: 1 us / 6912 = 1.45e-10 s per block-head). Per sequence-head: one
# 128-thread block's reductions and output write, ~2.5 us, over 1728 resident thread blocks: 1.4e-9 s.
_KERNEL = ("Kernel: paged decode reaches 0.8/1.23 = 0.65 of HBM peak (the vLLM paper, Fig. 18a: its kernel "
           "is 20-26% slower than FasterTransformer's contiguous one); per-block 1.45e-10 s and per-sequence "
           "1.4e-9 s per (layer, head) from A100 latency/occupancy arithmetic for vLLM v0's kernel "
           "(docs/latency.md). Linear layers: the measured GEMM curve on H100, the flat roofline elsewhere.")
_SWAP = ("Swap: vLLM v0's swap_blocks issues one cudaMemcpyAsync per block per layer for K and for V; 5 us "
         "per call (5-7 us measured per small cudaMemcpyAsync, Wu et al., DualPath, arXiv 2602.21548, Sec. 5.2).")
_SWAP_OVERLAP = ("v0.1's worker issues the copies on a cache stream and each layer waits only for its own "
                 "layer's copies (cache_events), so the PCIe time overlaps the forward pass.")
_COMM = "Comm: 6 us per all-reduce (Vidur's measured NCCL all-reduce on A100 NVLink pairs, small messages)."

ENGINE_PROFILES: dict[str, EngineProfile] = {p.name: p for p in (
    EngineProfile(
        name="basic", description="pagesim's model before engine profiles: a fixed 2 ms per step, nothing else",
        step_overhead_s=2e-3,
        source="The default before issue 12 (kept so earlier results reproduce); not derived from a system."),
    EngineProfile(
        name="ideal", description="no CPU, kernel, copy or communication overheads: the hardware roofline only",
        source="By definition: every overhead 0, attention at the model's efficiency."),
    EngineProfile(
        name="vllm-2023",
        description="the vLLM paper's system (Kwon et al., SOSP'23; vLLM v0.1-v0.2, eager PyTorch, Python "
                    "scheduler and sampler on the critical path)",
        step_overhead_s=2.02e-3, seq_overhead_s=3.33e-4, attn_efficiency=0.65, attn_block_s=1.45e-10,
        attn_seq_s=1.4e-9, swap_copy_s=5e-6, swap_copies_per_layer=2, swap_overlap=True, comm_latency_s=6e-6,
        gemm_curve=True,
        source=" ".join((_CPU, _KERNEL, _SWAP, _SWAP_OVERLAP, _COMM))),
    EngineProfile(
        name="vllm-current",
        description="a current vLLM (V1 engine: CUDA graphs, persistent batch, scheduling and "
                    "detokenization overlapped with the GPU; FlashAttention paged decode)",
        step_overhead_s=5e-4, seq_overhead_s=5e-6, attn_efficiency=None, attn_block_s=2e-11,
        attn_seq_s=5e-10, swap_copy_s=5e-6, swap_copies_per_layer=2, comm_latency_s=6e-6, gemm_curve=True,
        source="ESTIMATES, not measured here: V1 overlaps scheduling, input preparation and detokenization "
               "with the forward pass (vLLM blog, 'vLLM V1', Jan 2025), leaving ~0.5 ms per step (sampler, "
               "graph launch) and ~5 us per sequence (persistent-batch updates); FlashAttention's paged "
               "decode runs near the contiguous kernel, so a small per-block cost. Fit these to a serving "
               "benchmark with `pagesim calibrate` for real numbers. " + _SWAP + " Copies do not overlap the pass "
               "(later V0 workers wait for every cache event first; V1 recomputes). " + _COMM),
)}
DEFAULT_ENGINE = "basic"


def get_engine(engine: EngineProfile | str | None) -> EngineProfile:
    """A profile by name (case-insensitive), a profile itself, or None for DEFAULT_ENGINE."""
    if isinstance(engine, EngineProfile):
        return engine
    key = DEFAULT_ENGINE if engine is None else str(engine).lower()
    if key not in ENGINE_PROFILES:
        raise SpecError(f"unknown engine profile {engine!r} (valid: {', '.join(ENGINE_PROFILES)})")
    return ENGINE_PROFILES[key]


def engine_from_dict(d: dict[str, Any], *, where: str = "engine") -> EngineProfile:
    """A profile from a dict: {"base": NAME (optional), field: value, ...} overriding the base profile's
    fields (what a parameters file's "engine" block holds). SpecError naming an unknown field."""
    if not isinstance(d, dict):
        raise SpecError(f"{where}: expected an object, got {type(d).__name__}")
    base = get_engine(d.get("base", d.get("name")))
    known = {f.name for f in fields(EngineProfile)}
    over = {k: v for k, v in d.items() if k != "base"}
    bad = sorted(set(over) - known)
    if bad:
        raise SpecError(f"{where}: unknown field '{bad[0]}' (valid: base, {', '.join(sorted(known))})")
    return replace(base, **over)
