"""Choosing a run's latency model: `load_latency_model` builds the roofline (the default, labelled
"roofline", sim.timing.roofline) or the calibrated model (sim.timing.calibrated) from a versioned
parameters file, with an engine profile (sim.timing.engines). Re-exports the models and BatchShape.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sim.presets import GPUSpec, ModelSpec, SpecError, get_gpu, get_model
from sim.timing.batch_shape import BatchShape, decode_blocks_touched, decode_tokens_read
from sim.timing.calibrated import CalibratedLatency
from sim.timing.engines import EngineProfile, engine_from_dict, get_engine
from sim.timing.latency_params import (
    DECODE_COEFFS,
    DECODE_VARIANTS,
    DEFAULT_EFFICIENCY,
    PARAMS_SCHEMA,
    file_gemm,
    read_params_file,
    validate_params,
)
from sim.timing.roofline import TERMS, LatencyModel, RooflineLatency

__all__ = ["PARAMS_SCHEMA", "DECODE_COEFFS", "DECODE_VARIANTS", "TERMS", "BatchShape", "LatencyModel",
           "RooflineLatency", "CalibratedLatency", "load_latency_model", "file_engine", "validate_params",
           "decode_blocks_touched", "decode_tokens_read"]


def _need(d: dict, key: str) -> Any:
    if key not in d:
        raise SpecError(f"latency params: missing key '{key}' (or pass a {key} preset)")
    return d[key]


def _check_target(params: dict[str, Any], model: ModelSpec, gpu: GPUSpec, where: str) -> None:
    """A file made for a named model/GPU must not silently drive another one."""
    for key, spec in (("model", model), ("gpu", gpu)):
        named = params.get(key)
        if named and str(named).lower() != spec.name.lower():
            raise SpecError(f"{where} was made for {key} {named!r} but the run uses {spec.name!r} "
                            f"(use a matching file or --{key} {named})")


def file_engine(params: dict[str, Any]) -> EngineProfile | None:
    """The engine profile a parameters file names (schema 2 "engine": a profile name, or an object with
    an optional "base" name and field overrides, e.g. overheads fitted to a serving benchmark); None if
    it names none."""
    e = params.get("engine")
    if e is None:
        return None
    if isinstance(e, str):
        return get_engine(e)
    return engine_from_dict(e, where="latency params: 'engine'")


def load_latency_model(spec: str | Path | dict[str, Any] | None, model: ModelSpec | str | None = None,
                       gpu: GPUSpec | str | None = None, *, tensor_parallel: int | None = None,
                       engine: EngineProfile | str | None = None) -> LatencyModel:
    """Build the latency model a run uses.

    spec None or "roofline": RooflineLatency(model, gpu). A path to a params JSON file or a params dict:
    "source": "roofline" -> RooflineLatency with the file's efficiency; "source": "calibrated"
    -> CalibratedLatency named "calibrated:<file name>". model/gpu default to the ones the file names.
    engine: a profile or its name (sim.timing.engines); None: the one the file names, else a schema-1
    file's overhead_s on the default profile, else DEFAULT_ENGINE. Raises SpecError naming the file and
    key for a bad file, an unknown engine or a model/GPU mismatch.
    """
    if engine is not None:
        engine = get_engine(engine)
    if spec is None or (isinstance(spec, str) and spec.strip().lower() == "roofline"):
        if model is None or gpu is None:
            raise SpecError("the roofline latency model needs a model and a gpu preset")
        return RooflineLatency(model, gpu, tensor_parallel=tensor_parallel or 1, engine=engine)
    if isinstance(spec, dict):
        params, where, label = validate_params(spec), "latency params", "calibrated"
    else:
        params, where = read_params_file(spec), f"latency params file {Path(spec)}"
        label = f"calibrated:{Path(spec).name}"
    m = get_model(model if model is not None else _need(params, "model"))
    g = get_gpu(gpu if gpu is not None else _need(params, "gpu"))
    _check_target(params, m, g, where)
    tp = tensor_parallel if tensor_parallel is not None else int(params.get("tensor_parallel", 1))
    if engine is None:
        engine = file_engine(params)
    if params["source"] == "roofline":
        ov = params.get("overhead_s") if engine is None else None
        return RooflineLatency(m, g, overhead_s=None if ov is None else float(ov),
                               efficiency=float(params.get("efficiency", DEFAULT_EFFICIENCY)),
                               flops_efficiency=params.get("flops_efficiency"), tensor_parallel=tp, engine=engine,
                               gemm=file_gemm(params))
    if params.get("cpu_shim"):  # fitted from CPU-emulation timings (gpu.calibration): say so in every result
        label += " [CPU-shim timings: not a GPU]"
    return CalibratedLatency(params, m, g, name=label, tensor_parallel=tp, engine=engine)
