"""The latency-model parameters file: its versioned JSON schema, validation, and the roofline defaults.

A parameters file is what `pagesim calibrate` writes and `load_latency_model` reads (at setup, never in
the simulation loop). `roofline_params` generates the shipped defaults in sim/timing/params/ (labelled
"source": "roofline"); tests check the shipped files equal what it generates.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from sim.checks import read_json
from sim.presets import GPUS, MODELS, GPUSpec, ModelSpec, SpecError, get_gpu, get_model, kv_capacity_tokens
from sim.timing.engines import engine_from_dict, get_engine
from sim.timing.gemm import GemmParams, gemm_params_from_dict

# Schema 2 adds the optional "engine" block (the serving system's overheads); schema-1 files are still
# read, their "overhead_s" standing for the default profile's per-step overhead.
PARAMS_SCHEMA = "pagesim.latency/2"
READABLE_SCHEMAS: tuple[str, ...] = ("pagesim.latency/1", PARAMS_SCHEMA)
PARAMS_DIR = Path(__file__).resolve().parent / "params"
DEFAULT_OVERHEAD_S = 2e-3  # per-step CPU work of a Python serving loop: scheduling, input prep, launches
DEFAULT_EFFICIENCY = 0.8  # achievable fraction of the data-sheet peaks (HBM and tensor cores)
DECODE_COEFFS: tuple[str, ...] = ("c0_s", "c_kv_bytes_s", "c_seqs_s", "c_blocks_s")
DECODE_VARIANTS: tuple[str, ...] = ("paged", "partitioned", "contiguous")
TP_CHOICES: tuple[int, ...] = (1, 2, 4, 8)
#: Fitted blocks other than attn_decode; a calibrated file needs attn_decode or one of these.
FITTED_BLOCKS: tuple[str, ...] = ("gemm", "linear", "attn_prefill", "engine")


def _need(d: Any, key: str, where: str) -> Any:
    if not isinstance(d, dict) or key not in d:
        raise SpecError(f"latency params: missing key '{where}{key}'")
    return d[key]


def _number(v: Any, where: str, lo: float = 0.0) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not np.isfinite(v) or v < lo:
        raise SpecError(f"latency params: '{where}' = {v!r} out of range (valid: a finite number >= {lo:g})")
    return float(v)


def validate_params(params: Any) -> dict[str, Any]:
    """Check a parameters dict against PARAMS_SCHEMA and return it; SpecError naming the first bad key."""
    if not isinstance(params, dict):
        raise SpecError(f"latency params: expected a JSON object, got {type(params).__name__}")
    schema = _need(params, "schema", "")
    if schema not in READABLE_SCHEMAS:
        raise SpecError(f"latency params: 'schema' = {schema!r} is not supported "
                        f"(valid: {', '.join(map(repr, READABLE_SCHEMAS))})")
    source = _need(params, "source", "")
    if source not in ("roofline", "calibrated"):
        raise SpecError(f"latency params: 'source' = {source!r} (valid: 'roofline', 'calibrated')")
    if "overhead_s" in params:
        _number(params["overhead_s"], "overhead_s")
    if params.get("engine") is not None:
        if schema != PARAMS_SCHEMA:
            raise SpecError(f"latency params: 'engine' needs schema {PARAMS_SCHEMA!r} (the file says {schema!r})")
        e = params["engine"]
        if isinstance(e, str):
            get_engine(e)
        else:
            engine_from_dict(e, where="latency params: 'engine'")
    for key in ("efficiency", "flops_efficiency"):
        if params.get(key) is not None and not 0 < _number(params[key], key) <= 1:
            raise SpecError(f"latency params: '{key}' = {params[key]!r} out of range (valid: (0, 1])")
    if params.get("gemm") is not None:
        gemm_params_from_dict(params["gemm"])
    tp = params.get("tensor_parallel", 1)
    if isinstance(tp, bool) or not isinstance(tp, int) or tp < 1:
        raise SpecError(f"latency params: 'tensor_parallel' = {tp!r} out of range (valid: an integer >= 1)")
    if source == "roofline":
        return params
    for block, keys in (("linear", ("c0_s", "c_tokens_s")), ("attn_prefill", ("c0_s", "c_flops_s"))):
        if params.get(block) is not None:
            for k in keys:
                _number(_need(params[block], k, f"{block}."), f"{block}.{k}")
    if params.get("attn_decode") is None:
        # A calibration that fitted no decode kernel (GEMM timings, a serving benchmark) keeps the
        # roofline's decode term; it must still have fitted something.
        if not any(params.get(k) is not None for k in FITTED_BLOCKS):
            raise SpecError(f"latency params: a calibrated file needs at least one fitted block "
                            f"(valid: {', '.join(('attn_decode', *FITTED_BLOCKS))})")
        return params
    variants = _need(_need(params, "attn_decode", ""), "variants", "attn_decode.")
    if not isinstance(variants, dict) or not variants:
        raise SpecError("latency params: 'attn_decode.variants' must be a non-empty object")
    for v, coeffs in variants.items():
        if v not in DECODE_VARIANTS:
            raise SpecError(f"latency params: unknown variant 'attn_decode.variants.{v}' "
                            f"(valid: {', '.join(DECODE_VARIANTS)})")
        for k in DECODE_COEFFS:
            _number(_need(coeffs, k, f"attn_decode.variants.{v}."), f"attn_decode.variants.{v}.{k}")
    if not {"paged", "partitioned"} & variants.keys():
        raise SpecError("latency params: 'attn_decode.variants' needs 'paged' or 'partitioned'")
    return params


def file_gemm(params: dict[str, Any]) -> GemmParams | None:
    """The GEMM curve a (validated) parameters file carries under "gemm" (gpu/calibration/gemm.py fits
    one), or None: the linear layers then follow the engine profile (flat roofline or the H100 fit)."""
    g = params.get("gemm")
    return None if g is None else gemm_params_from_dict(g)


def read_params_file(path: str | Path) -> dict[str, Any]:
    """Read and validate a parameters JSON file; SpecError naming the file (and key) when it is bad."""
    p = Path(path)
    data = read_json(p, "latency params file", SpecError)
    try:
        return validate_params(data)
    except SpecError as e:
        raise SpecError(f"latency params file {p}: {str(e).removeprefix('latency params: ')}") from None


def roofline_params(model: ModelSpec | str, gpu: GPUSpec | str, *, tensor_parallel: int = 1,
                    efficiency: float = DEFAULT_EFFICIENCY, engine: str | None = None) -> dict[str, Any]:
    """The roofline-default parameters of a (model, GPU, tensor_parallel) preset, as a params dict.

    Only `efficiency`, `tensor_parallel` and `engine` (when given; otherwise the run's --engine) are read
    back; "derived" is informational (the preset figures the roofline uses, so a reader sees them
    without running code). The shipped files name no engine: the hardware is the file's, the serving
    system the run's.
    """
    m, g = get_model(model), get_gpu(gpu)
    out: dict[str, Any] = {
        "schema": PARAMS_SCHEMA,
        "source": "roofline",
        "label": "roofline defaults: vendor data-sheet peaks x efficiency, not measured",
        "model": m.name,
        "gpu": g.name,
        "tensor_parallel": tensor_parallel,
        "efficiency": efficiency,
        "derived": {
            "hbm_bandwidth_Bps": g.hbm_bandwidth_Bps,
            "fp16_flops": g.fp16_flops,
            "weight_bytes": m.weight_bytes(),
            "kv_bytes_per_token_fp16": m.kv_bytes_per_token("fp16"),
            "kv_capacity_tokens_fp16": kv_capacity_tokens(m, g, tensor_parallel=tensor_parallel),
            "weights_read_floor_s": m.weight_bytes() / tensor_parallel / g.hbm_bandwidth_Bps,
        },
    }
    if engine is not None:
        out["engine"] = get_engine(engine).name
    return out


def default_param_targets() -> list[tuple[ModelSpec, GPUSpec, int]]:
    """(model, GPU, tp) pairs that ship defaults: every preset pair at the smallest tensor-parallel degree
    (1, 2, 4, 8) whose KV pool holds at least one max_model_len sequence."""
    out = []
    for m in MODELS.values():
        for g in GPUS.values():
            for tp in TP_CHOICES:
                if m.num_kv_heads % tp:
                    continue
                try:
                    if kv_capacity_tokens(m, g, tensor_parallel=tp) >= m.max_model_len:
                        out.append((m, g, tp))
                        break
                except SpecError:  # weights do not fit at this degree: try the next one
                    continue
    return out


def params_filename(model: ModelSpec, gpu: GPUSpec, tensor_parallel: int = 1) -> str:
    """`roofline_<model>_<gpu>[_tp<N>].json`, lower case."""
    tp = f"_tp{tensor_parallel}" if tensor_parallel > 1 else ""
    return f"roofline_{model.name.lower()}_{gpu.name.lower()}{tp}.json"


def shipped_params_path(model: ModelSpec | str, gpu: GPUSpec | str, tensor_parallel: int = 1) -> Path:
    """Path of the shipped roofline-defaults file for this preset pair (it may not exist for every pair)."""
    return PARAMS_DIR / params_filename(get_model(model), get_gpu(gpu), tensor_parallel)
