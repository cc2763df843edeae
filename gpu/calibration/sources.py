"""`pagesim calibrate`'s engine: recognize each input, run every fit it allows, assemble one params file.

Inputs (any mix; `detect_source` tells them apart by extension and columns):
  kernels      `pagesim bench` decode-kernel timings (CSV/Parquet with `variant`) -> "attn_decode"
  gemm         `pagesim bench --gemm` GEMM timings (columns op, num_tokens, k, n, latency_s) -> "gemm"
  vidur-mlp    a Vidur mlp.csv (columns time_stats.<op>.median, num_tokens) -> "gemm"
  vidur-attn   a Vidur attention.csv (is_prefill, kv_cache_size, ...): decode rows -> "attn_decode",
               prefill rows -> "attn_prefill"
  serving      a vLLM benchmark_serving.py --save-result JSON -> "engine" (step and per-sequence overheads,
               fitted by replaying it with the blocks fitted above, else --latency / the roofline)
  a directory  its mlp.csv and attention.csv (a Vidur profile directory)
Every fit reports median and worst relative error on its fit rows and its held-out rows (`holdout`).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from gpu.calibration.gemm import GEMM_COLUMNS, fit_gemm, split
from gpu.calibration.kernels import CalibrationError, check_timings, fit, nnls, read_timings
from gpu.calibration.serving import ServingBenchmark, load_benchmark
from gpu.calibration.vidur import check_architecture, read_vidur_attention, read_vidur_mlp
from sim.presets import GPUSpec, ModelSpec
from sim.timing.latency_params import PARAMS_SCHEMA

KINDS: tuple[str, ...] = ("kernels", "gemm", "vidur-mlp", "vidur-attn", "serving")


def _columns(p: Path) -> list[str]:
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(p).names)
        return list(pd.read_csv(p, nrows=0).columns)
    except Exception as e:  # unreadable: say so, naming the file
        raise CalibrationError(f"{p}: cannot read ({type(e).__name__}: {e})") from None


def detect_source(path: str | Path) -> list[tuple[str, Path]]:
    """[(kind, file)] for one input path (a directory may hold two); CalibrationError if unknown."""
    p = Path(path)
    if p.is_dir():
        found = [(k, p / f) for k, f in (("vidur-mlp", "mlp.csv"), ("vidur-attn", "attention.csv"))
                 if (p / f).is_file()]
        if not found:
            raise CalibrationError(f"{p}: a directory without mlp.csv or attention.csv (a Vidur profile directory)")
        return found
    if not p.is_file():
        raise CalibrationError(f"{p}: not found")
    if p.suffix.lower() == ".json":
        return [("serving", p)]
    if p.suffix.lower() not in (".csv", ".parquet", ".pq"):
        raise CalibrationError(f"{p}: unknown input {p.suffix!r} (valid: .csv/.parquet timings, a vLLM "
                               "serving-benchmark .json, a Vidur profile directory)")
    cols = set(_columns(p))
    if "variant" in cols:
        return [("kernels", p)]
    if set(GEMM_COLUMNS) <= cols:
        return [("gemm", p)]
    if "is_prefill" in cols and any(c.startswith("time_stats.") for c in cols):
        return [("vidur-attn", p)]
    if "num_tokens" in cols and any(c.startswith("time_stats.") for c in cols):
        return [("vidur-mlp", p)]
    raise CalibrationError(f"{p}: not recognized (kernel timings need 'variant'; GEMM timings "
                           f"{', '.join(GEMM_COLUMNS)}; Vidur profiles time_stats.* columns)")


@dataclass(slots=True)
class Inputs:
    """Everything read from the inputs, grouped by what it calibrates."""

    kernels: list[pd.DataFrame] = field(default_factory=list)
    gemm: list[pd.DataFrame] = field(default_factory=list)
    prefill: list[pd.DataFrame] = field(default_factory=list)
    serving: list[ServingBenchmark] = field(default_factory=list)
    names: list[str] = field(default_factory=list)


def read_inputs(paths: list[Path], model: ModelSpec | None) -> Inputs:
    """Read every input (CalibrationError naming the file for a bad one)."""
    out = Inputs()
    for path in paths:
        for kind, p in detect_source(path):
            out.names.append(f"{p.name} ({kind})")
            if kind == "kernels":
                out.kernels.append(read_timings(p))
            elif kind == "gemm":
                df = pd.read_csv(p) if p.suffix.lower() == ".csv" else pd.read_parquet(p)
                out.gemm.append(df)
            elif kind == "vidur-mlp":
                df = read_vidur_mlp(p, model.name if model else None)
                if model is not None:
                    check_architecture(df, model, f"Vidur profile {p}")
                out.gemm.append(df)
            elif kind == "vidur-attn":
                dec, pre = read_vidur_attention(p)
                if not dec.empty:
                    out.kernels.append(check_timings(dec, f"Vidur profile {p}"))
                if not pre.empty:
                    out.prefill.append(pre)
            else:
                out.serving.append(load_benchmark(p))
    return out


def _errs(rel: np.ndarray) -> dict[str, Any]:
    if not rel.size:
        return {"n": 0, "median_rel_err": None, "max_rel_err": None}
    return {"n": int(rel.size), "median_rel_err": float(np.median(rel)), "max_rel_err": float(rel.max())}


def _every(n: int, k: int) -> np.ndarray:
    """Held-out mask: every k-th row (k = 0: none)."""
    m = np.zeros(n, dtype=bool)
    if k:
        m[k - 1::k] = True
    return m


def _holdout_every(holdout: str) -> int:
    """Row-level analogue of the GEMM holdout for the kernel and prefill fits: every:N -> N, else 5/0."""
    if holdout == "none":
        return 0
    kind, _, arg = holdout.partition(":")
    return int(arg) if kind == "every" and arg.isdigit() else 5


def fit_decode(df: pd.DataFrame, model: ModelSpec | None, gpu: GPUSpec | None, tp: int,
               holdout: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The kernels fit on the fit rows; (params block "attn_decode", report with held-out errors)."""
    df = df.reset_index(drop=True)
    held = _every(len(df), _holdout_every(holdout))
    params = fit(df[~held], model=model, gpu=gpu, tensor_parallel=tp, timings_name="kernel timings")
    rep: dict[str, Any] = {"variants": params["fit"]["variants"], "warnings": params["fit"]["warnings"],
                           "ignored_torch_sdpa": int((df["variant"] == "torch_sdpa").sum()),
                           "devices": params["fit"]["devices"], "cpu_shim": params["cpu_shim"]}
    rel_fit, rel_held = [], []
    heads = {tuple(h) for h in params["fit"]["heads"]}  # rows of other heads were not fitted: not scored
    own = [tuple(int(x) for x in r) in heads for r in df[["num_heads", "num_kv_heads", "head_dim"]].to_numpy()]
    for v, c in params["attn_decode"]["variants"].items():
        rows = df[(df["variant"] == v).to_numpy() & np.asarray(own, dtype=bool)]
        blocks = 0.0 if v == "contiguous" else rows["num_blocks_touched"].to_numpy(float)
        pred = (c["c0_s"] + c["c_kv_bytes_s"] * rows["kv_bytes"].to_numpy(float)
                + c["c_seqs_s"] * rows["batch_size"].to_numpy(float) + c["c_blocks_s"] * blocks)
        rel = np.abs(pred / rows["latency_s"].to_numpy(float) - 1)
        h = held[rows.index.to_numpy()]
        rel_fit.append(rel[~h])
        rel_held.append(rel[h])
    rep["fit"], rep["held_out"] = _errs(np.concatenate(rel_fit)), _errs(np.concatenate(rel_held))
    return params["attn_decode"], rep


def fit_prefill(df: pd.DataFrame, holdout: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Per-layer prefill attention t = c0_s + c_flops_s * FLOPs (non-negative, relative residuals)."""
    df = df.sort_values(["chunk", "context"]).reset_index(drop=True)
    held = _every(len(df), _holdout_every(holdout))
    if (~held).sum() < 4:
        raise CalibrationError(f"prefill rows: {int((~held).sum())} to fit (need at least 4)")
    y = df["latency_s"].to_numpy(float)
    a = np.column_stack([np.ones(len(df)), df["attn_flops"].to_numpy(float)]) / y[:, None]
    scale = np.linalg.norm(a[~held], axis=0)
    x = nnls(a[~held] / scale, np.ones(int((~held).sum()))) / scale
    rel = np.abs(a @ x - 1)
    return {"c0_s": float(x[0]), "c_flops_s": float(x[1])}, {"fit": _errs(rel[~held]), "held_out": _errs(rel[held])}


def calibrate_params(inputs: Inputs, *, model: ModelSpec | None, gpu: GPUSpec | None, tensor_parallel: int = 1,
                     holdout: str = "every:5") -> dict[str, Any]:
    """The params dict of every GPU-side fit the inputs allow (decode, GEMM curve, prefill); the serving
    fit (`engine`) is added by the caller, which replays with these blocks. Raises CalibrationError."""
    split(pd.DataFrame({"num_tokens": pd.Series(dtype=float), "model": pd.Series(dtype=str),
                        "tensor_parallel": pd.Series(dtype=int)}), holdout)  # a bad spec raises, naming it
    params: dict[str, Any] = {
        "schema": PARAMS_SCHEMA, "source": "calibrated",
        "model": model.name if model else None, "gpu": gpu.name if gpu else None, "tensor_parallel": tensor_parallel,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "inputs": inputs.names, "fit": {"holdout": holdout, "warnings": []},
    }
    labels = []
    if inputs.kernels:
        params["attn_decode"], params["fit"]["attn_decode"] = fit_decode(
            pd.concat(inputs.kernels, ignore_index=True), model, gpu, tensor_parallel, holdout)
        params["fit"]["warnings"] += params["fit"]["attn_decode"].pop("warnings")
        labels.append("decode attention")
    if inputs.gemm:
        if gpu is None:
            raise CalibrationError("GEMM timings need --gpu (the curve is a fraction of that GPU's peaks)")
        g = fit_gemm(pd.concat(inputs.gemm, ignore_index=True), gpu, holdout=holdout,
                     dtype_bytes=model.weight_dtype_bytes if model else 2, source="GEMM timings")
        params["gemm"], params["fit"]["gemm"] = g.params.to_dict(), g.report
        labels.append("GEMM curve")
    if inputs.prefill:
        params["attn_prefill"], params["fit"]["attn_prefill"] = fit_prefill(
            pd.concat(inputs.prefill, ignore_index=True), holdout)
        labels.append("prefill attention")
    params["label"] = (", ".join(labels) + " fitted; other terms roofline") if labels else \
        "GPU terms roofline (no GPU timings fitted)"
    # Kernel timings from the CPU shim (kernels.fit warns): mark the whole file, whatever else it holds.
    params["cpu_shim"] = bool(params["fit"].get("attn_decode", {}).get("cpu_shim"))
    if params["cpu_shim"]:
        params["label"] = "CPU-SHIM TIMINGS, NOT A GPU: " + params["label"]
    return params

