"""The linear layers' time from a GEMM efficiency curve over token count (pure: no I/O).

One GEMM of `m` tokens through a `k x n` weight (fp16/bf16) on a GPU with peak HBM bandwidth `BW` and
dense peak `P` takes

    t(m, k, n) = launch_s + max(bytes / (BW * mem_efficiency),
                                2 m k n / (P * e(m)))        bytes = (k n + m k + m n) * dtype bytes
    e(m)       = flops_efficiency * m / (m + half_tokens)

so a small batch streams the weights at a fitted fraction of the HBM peak (memory-bound), a large one
runs at `flops_efficiency` of the tensor-core peak, and between the two the compute efficiency rises
with the token count (tile and wave under-fill: half of the asymptote at `half_tokens`) instead of the
flat efficiency of the roofline. Near the ridge point (a few hundred tokens) this is what makes a real
GEMM slower than max(memory, compute) at one efficiency.

A layer runs four GEMMs per GPU (tensor parallelism shards them Megatron-style): QKV
(hidden x (heads + 2 kv_heads) head_dim / tp), attention output ((heads head_dim / tp) x hidden), MLP up
(hidden x (2 if gated else 1) intermediate / tp; gate and up fused) and MLP down ((intermediate / tp) x
hidden). The LM head is one more GEMM of `logit_rows` rows through hidden x vocab / tp.

`H100_VIDUR` holds the parameters fitted to real H100 operator timings (Vidur's public profiles of
Llama-2-7B and -70B at TP 1, 2, 4, 8; gpu/calibration/gemm.py fits them, docs/latency.md gives the
errors). On another GPU (`for_gpu`) the same fractions apply to that GPU's data-sheet peaks and
`half_tokens` scales with its ridge point (peak FLOP/s / HBM bandwidth): the under-filled compute in the
transition costs a fixed share of the weight-streaming time rather than of the FLOPs, which is what an
A100 spot check against Vidur's A100 profile supports (10% median error against 25% for a fixed
half_tokens; docs/latency.md). Still an extrapolation, labelled by `transfer_note`.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from typing import Any

from sim.presets import GPUSpec, ModelSpec, SpecError, get_gpu

__all__ = ["GemmParams", "H100_VIDUR", "GEMM_KEYS", "gemm_time", "linear_shapes", "linear_time",
           "GemmLinear", "gemm_params_from_dict", "transfer_note", "for_gpu"]

GEMM_KEYS: tuple[str, ...] = ("launch_s", "mem_efficiency", "flops_efficiency", "half_tokens")


@dataclass(frozen=True, slots=True)
class GemmParams:
    """The curve's four numbers, and where they come from.

    launch_s: fixed time per GEMM call (kernel launch, prologue/epilogue), seconds (>= 0);
    mem_efficiency: achieved fraction of the HBM peak when streaming weights, in (0, 1];
    flops_efficiency: asymptotic fraction of the dense fp16 peak at many tokens, in (0, 1];
    half_tokens: tokens at which the compute efficiency is half its asymptote (>= 0);
    fitted_on: the GPU preset the numbers were measured on (the curve is exact there, extrapolated
      elsewhere); source: a short provenance line.
    """

    launch_s: float
    mem_efficiency: float
    flops_efficiency: float
    half_tokens: float
    fitted_on: str = "H100-SXM"
    source: str = ""

    def __post_init__(self) -> None:
        for key in GEMM_KEYS:
            v = getattr(self, key)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
                raise SpecError(f"gemm params: '{key}' = {v!r} out of range (valid: a finite number >= 0)")
        for key in ("mem_efficiency", "flops_efficiency"):
            if not 0.0 < getattr(self, key) <= 1.0:
                raise SpecError(f"gemm params: '{key}' = {getattr(self, key)!r} out of range (valid: (0, 1])")

    def to_dict(self) -> dict[str, Any]:
        """The JSON block a parameters file stores under "gemm"."""
        return asdict(self)


#: Fitted by gpu/calibration/gemm.py (least squares on log ratios) to Vidur's public H100 profiles of the
#: linear layers (microsoft/vidur 7d47513: Llama-2-7B and -70B, TP 1/2/4/8, 1-4096 tokens; 8,352 medians),
#: holding out every 5th token count: median relative error 6.7% on the 6,688 fit points and 6.7% on the
#: 1,664 held-out ones; docs/latency.md gives the worst cases and the cross-model/TP/token-range checks.
H100_VIDUR = GemmParams(launch_s=6.46e-6, mem_efficiency=0.985, flops_efficiency=0.756, half_tokens=173.6,
                        fitted_on="H100-SXM",
                        source="fitted to Vidur's measured H100 GEMM profiles (Llama-2-7B/70B, TP 1-8)")


def gemm_params_from_dict(d: Any, where: str = "gemm") -> GemmParams:
    """A GemmParams from a parameters file's "gemm" block; SpecError naming the missing/bad key."""
    if not isinstance(d, dict):
        raise SpecError(f"latency params: '{where}' must be an object with {', '.join(GEMM_KEYS)}")
    for key in GEMM_KEYS:
        if key not in d:
            raise SpecError(f"latency params: missing key '{where}.{key}'")
    try:
        return GemmParams(**{k: d[k] for k in GEMM_KEYS}, fitted_on=str(d.get("fitted_on", "")),
                          source=str(d.get("source", "")))
    except SpecError as e:
        raise SpecError(str(e).replace("gemm params: '", f"latency params: '{where}.")) from None


def _fitted_gpu(params: GemmParams) -> GPUSpec | None:
    try:
        return get_gpu(params.fitted_on) if params.fitted_on else None
    except SpecError:  # a GPU that is no preset: its peaks are unknown, nothing to scale by
        return None


def for_gpu(params: GemmParams, gpu: GPUSpec) -> GemmParams:
    """The curve as applied on `gpu`: unchanged on the GPU it was fitted on (or an unknown one);
    elsewhere half_tokens x (gpu's ridge point / the fitted GPU's), ridge = peak FLOP/s / HBM bandwidth."""
    src = _fitted_gpu(params)
    if src is None or src.name.lower() == gpu.name.lower():
        return params
    ratio = (gpu.fp16_flops / gpu.hbm_bandwidth_Bps) / (src.fp16_flops / src.hbm_bandwidth_Bps)
    return replace(params, half_tokens=params.half_tokens * ratio)


def gemm_time(m: float, k: int, n: int, gpu: GPUSpec, params: GemmParams = H100_VIDUR,
              dtype_bytes: int = 2) -> float:
    """Seconds for one [m x k] @ [k x n] GEMM (m tokens) on `gpu` (the curve `for_gpu`); 0.0 for m <= 0."""
    if m <= 0:
        return 0.0
    params = for_gpu(params, gpu)
    t_mem = (k * n + m * (k + n)) * dtype_bytes / (gpu.hbm_bandwidth_Bps * params.mem_efficiency)
    t_comp = 2.0 * k * n * (m + params.half_tokens) / (gpu.fp16_flops * params.flops_efficiency)
    return params.launch_s + (t_comp if t_comp > t_mem else t_mem)


def linear_shapes(model: ModelSpec, tensor_parallel: int = 1) -> tuple[tuple[str, int, int], ...]:
    """(name, k, n) of one layer's four GEMMs on one GPU (Megatron sharding; gate+up fused if gated).

    Names follow Vidur's operators: attn_pre_proj (QKV), attn_post_proj, mlp_up_proj, mlp_down_proj.
    """
    tp, h, d = tensor_parallel, model.hidden_size, model.head_dim
    up = (2 if model.gated_mlp else 1) * model.intermediate_size
    return (("attn_pre_proj", h, (model.num_heads + 2 * model.num_kv_heads) * d // tp),
            ("attn_post_proj", model.num_heads * d // tp, h),
            ("mlp_up_proj", h, up // tp),
            ("mlp_down_proj", model.intermediate_size // tp, h))


def linear_time(model: ModelSpec, gpu: GPUSpec, num_tokens: int, tensor_parallel: int = 1,
                params: GemmParams = H100_VIDUR, logit_rows: int | None = None) -> float:
    """Seconds of all linear layers of one forward pass over `num_tokens` tokens on one GPU.

    num_layers x the four per-layer GEMMs, plus the LM head over `logit_rows` rows (default: one per
    token; a server computes logits only for the last token of each prefill chunk and each decode).
    """
    return GemmLinear(model, gpu, tensor_parallel, params)(num_tokens, logit_rows)


class GemmLinear:
    """linear_time for one (model, GPU, tp, params), with the per-shape constants precomputed.

    Calls are memoized on (num_tokens, logit_rows): a simulation repeats the same few hundred batch
    sizes, so most steps cost one dict lookup.
    """

    __slots__ = ("model", "gpu", "tensor_parallel", "params", "_shapes", "_head", "_cache", "_mem", "_flop",
                 "_launch", "_half", "_db")

    def __init__(self, model: ModelSpec, gpu: GPUSpec, tensor_parallel: int = 1,
                 params: GemmParams = H100_VIDUR) -> None:
        if tensor_parallel < 1:
            raise SpecError(f"tensor_parallel = {tensor_parallel} out of range (valid: >= 1)")
        params = for_gpu(params, gpu)
        self.model, self.gpu, self.tensor_parallel, self.params = model, gpu, tensor_parallel, params
        self._shapes = linear_shapes(model, tensor_parallel)
        self._head = (model.hidden_size, -(-model.vocab_size // tensor_parallel))
        self._cache: dict[tuple[int, int], float] = {}
        self._db = model.weight_dtype_bytes
        self._mem = 1.0 / (gpu.hbm_bandwidth_Bps * params.mem_efficiency)
        self._flop = 1.0 / (gpu.fp16_flops * params.flops_efficiency)
        self._launch, self._half = params.launch_s, params.half_tokens

    def _one(self, m: int, k: int, n: int) -> float:
        t_mem = (k * n + m * (k + n)) * self._db * self._mem
        t_comp = 2.0 * k * n * (m + self._half) * self._flop
        return self._launch + (t_comp if t_comp > t_mem else t_mem)

    def per_op(self, num_tokens: int) -> dict[str, float]:
        """Seconds of each of one layer's four GEMMs at `num_tokens` (for reports and tests)."""
        return {name: self._one(num_tokens, k, n) if num_tokens > 0 else 0.0 for name, k, n in self._shapes}

    def __call__(self, num_tokens: int, logit_rows: int | None = None) -> float:
        rows = num_tokens if logit_rows is None else logit_rows
        key = (num_tokens, rows)
        t = self._cache.get(key)
        if t is None:
            t = 0.0
            if num_tokens > 0:
                t = self.model.num_layers * sum(self._one(num_tokens, k, n) for _, k, n in self._shapes)
            if rows > 0:
                t += self._one(rows, *self._head)
            if len(self._cache) < 65536:  # bounded: a pathological caller cannot grow it forever
                self._cache[key] = t
        return t


def transfer_note(params: GemmParams, gpu: GPUSpec) -> str:
    """'' on the GPU the curve was fitted on; otherwise a one-line note that it is an extrapolation."""
    if not params.fitted_on or params.fitted_on.lower() == gpu.name.lower():
        return ""
    return (f"GEMM curve fitted on {params.fitted_on}, applied to {gpu.name} with its peak FLOP/s and HBM "
            f"bandwidth and half_tokens scaled by the ridge point (an extrapolation, not measured)")
