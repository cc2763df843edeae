"""Calibration: decode-kernel timings -> the latency model's fitted decode-attention coefficients.

Per kernel variant, a relative-error least-squares fit with non-negative coefficients of
  latency_s = c0_s + c_kv_bytes_s * kv_bytes + c_seqs_s * batch_size + c_blocks_s * num_blocks_touched
(one layer call), reported per block size, written as a versioned parameters file (sim.timing.latency_params)
that `load_latency_model` reads. `synthetic_timings` makes timings from known coefficients for tests.

The roofline form (`fit_roofline`, for the goal benchmark's rows; NumPy only, no pandas) is
  latency_s = max(t0_s + kv_bytes / bw_Bps,  t0_s + waves * tiles_per_cta * t_tile_s)
a bandwidth term and a latency term (waves of resident CTAs x the longest per-CTA chain of pipeline
tiles), so small grids (batch 1-8, short contexts) are predicted too; its error is reported per regime.
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pandas is imported where it is used: the roofline fit runs without it
    import pandas as pd

from sim.presets import KV_DTYPES, GPUSpec, ModelSpec
from sim.timing.latency_params import (
    DECODE_COEFFS,
    DECODE_VARIANTS,
    PARAMS_DIR,
    PARAMS_SCHEMA,
    default_param_targets,
    params_filename,
    roofline_params,
    validate_params,
)

REQUIRED_COLUMNS: tuple[str, ...] = ("variant", "batch_size", "block_size", "num_heads", "num_kv_heads",
                                     "head_dim", "dtype", "kv_bytes", "num_blocks_touched", "latency_s")
NUMERIC_COLUMNS: tuple[str, ...] = ("batch_size", "block_size", "num_heads", "num_kv_heads", "head_dim",
                                    "kv_bytes", "num_blocks_touched", "latency_s")
TIMING_VARIANTS: tuple[str, ...] = (*DECODE_VARIANTS, "torch_sdpa")  # torch_sdpa: a baseline, never fitted
FEATURES: tuple[str, ...] = ("1", "kv_bytes", "batch_size", "num_blocks_touched")  # order of DECODE_COEFFS


class CalibrationError(ValueError):
    """Bad timings or an impossible fit; the message names the file, column, row or variant."""


def read_timings(path: str | Path) -> pd.DataFrame:
    """Read a timings CSV or Parquet file and check it (see `check_timings`)."""
    import pandas as pd

    p = Path(path)
    if not p.is_file():
        raise CalibrationError(f"timings file {p}: not found")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            df = pd.read_parquet(p)
        elif p.suffix.lower() == ".csv":
            df = pd.read_csv(p)
        else:
            raise CalibrationError(f"timings file {p}: unknown format {p.suffix!r} (valid: .csv, .parquet)")
    except CalibrationError:
        raise
    except Exception as e:  # pandas/pyarrow raise many types for unreadable files
        raise CalibrationError(f"timings file {p}: cannot read ({type(e).__name__}: {e})") from None
    return check_timings(df, source=f"timings file {p}")


def check_timings(df: pd.DataFrame, source: str = "timings") -> pd.DataFrame:
    """Validate the timings CONTRACT and return a copy with numeric columns as numbers.

    CalibrationError naming the missing columns, or the first bad value's column and CSV line
    (line = row + 2: one header line, 1-based).
    """
    import pandas as pd

    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise CalibrationError(f"{source}: missing required column(s) {', '.join(missing)} "
                               f"(required: {', '.join(REQUIRED_COLUMNS)})")
    out = df.copy()
    for col in NUMERIC_COLUMNS:
        num = pd.to_numeric(out[col], errors="coerce")
        bad = ~np.isfinite(num.to_numpy(dtype=float)) | (num.to_numpy(dtype=float) < 0)
        if col == "latency_s":
            bad |= num.to_numpy(dtype=float) <= 0
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            need = "a finite number > 0" if col == "latency_s" else "a finite number >= 0"
            raise CalibrationError(f"{source}: column '{col}' line {i + 2}: {out[col].iloc[i]!r} is not {need}")
        out[col] = num
    variants = out["variant"].astype(str)
    unknown = sorted(set(variants) - set(TIMING_VARIANTS))
    if unknown:
        i = int(np.flatnonzero(variants.isin(unknown).to_numpy())[0])
        raise CalibrationError(f"{source}: column 'variant' line {i + 2}: {unknown[0]!r} is not one of "
                               f"{', '.join(TIMING_VARIANTS)}")
    out["variant"] = variants
    return out


def nnls(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least squares with x >= 0 for a few columns: the best non-negative LS solution over all supports.

    Exact: the NNLS optimum is the unconstrained LS solution on its own support, so enumerating the
    2^k supports (k <= 4 here) and keeping the best feasible one finds it.
    """
    k = a.shape[1]
    best, best_res = np.zeros(k), float(y @ y)
    for r in range(1, k + 1):
        for cols in itertools.combinations(range(k), r):
            sol = np.linalg.lstsq(a[:, cols], y, rcond=None)[0]
            if (sol < 0).any():
                continue
            res = float(np.sum((a[:, cols] @ sol - y) ** 2))
            if res < best_res - 1e-15 * max(best_res, 1.0):
                best = np.zeros(k)
                best[list(cols)] = sol
                best_res = res
    return best


def _design(df: pd.DataFrame, variant: str) -> np.ndarray:
    # A contiguous kernel has no blocks (the simulator evaluates it with 0 blocks), whatever the column says.
    blocks = np.zeros(len(df)) if variant == "contiguous" else df["num_blocks_touched"].to_numpy(float)
    return np.column_stack([np.ones(len(df)), df["kv_bytes"].to_numpy(float), df["batch_size"].to_numpy(float),
                            blocks])


def _independent_columns(a: np.ndarray) -> list[int]:
    """Columns kept in order c0, kv, seqs, blocks, each kept only if it adds rank (identifiable)."""
    keep: list[int] = []
    for j in range(a.shape[1]):
        if np.linalg.matrix_rank(a[:, [*keep, j]], tol=1e-9) == len(keep) + 1:
            keep.append(j)
    return keep


def min_rows(variant: str) -> int:
    """Timing rows a variant's fit needs: one per coefficient (no block term for contiguous) plus 2."""
    return len(DECODE_COEFFS) - (variant == "contiguous") + 2


#: The device name the CPU-shim backend records (gpu.bench.device.detect_device("cpu")).
CPU_SHIM_DEVICE = "cpu-shim"


def fit_variant(df: pd.DataFrame, variant: str) -> tuple[dict[str, float], dict[str, Any]]:
    """Fit one variant's rows: (coefficients by DECODE_COEFFS name, fit report).

    Minimizes the sum of squared *relative* residuals (timings span orders of magnitude) with every
    coefficient >= 0. A coefficient the rows cannot identify (a feature constant or collinear, e.g. no
    blocks for contiguous rows) is fixed at 0 and listed in the report's "fixed_zero".
    """
    y = df["latency_s"].to_numpy(float)
    a = _design(df, variant) / y[:, None]  # relative residuals: (a x - y) / y
    scale = np.linalg.norm(a, axis=0)
    scale[scale == 0] = 1.0
    if len(df) < min_rows(variant):
        raise CalibrationError(f"variant {variant}: {len(df)} timing rows, need at least {min_rows(variant)} "
                               f"({min_rows(variant) - 2} coefficients + 2)")
    cols = _independent_columns(a / scale)
    x = np.zeros(len(DECODE_COEFFS))
    x[cols] = nnls(a[:, cols] / scale[cols], np.ones(len(y))) / scale[cols]
    pred = _design(df, variant) @ x
    rel = np.abs(pred - y) / y
    by_bs = [{"block_size": int(bs), "n": int(m.sum()), "median_rel_err": float(np.median(rel[m])),
              "max_rel_err": float(rel[m].max())}
             for bs in sorted(df["block_size"].unique()) for m in [df["block_size"].to_numpy() == bs]]
    report = {"n_points": len(df), "median_rel_err": float(np.median(rel)), "max_rel_err": float(rel.max()),
              "by_block_size": by_bs,
              "fixed_zero": [DECODE_COEFFS[j] for j in range(len(DECODE_COEFFS)) if j not in cols]}
    return dict(zip(DECODE_COEFFS, map(float, x), strict=True)), report


def _heads_of(model: ModelSpec, tensor_parallel: int) -> tuple[int, int, int]:
    return model.num_heads // tensor_parallel, model.num_kv_heads // tensor_parallel, model.head_dim


def fit(timings: pd.DataFrame, *, model: ModelSpec | None = None, gpu: GPUSpec | None = None,
        tensor_parallel: int = 1, timings_name: str | None = None) -> dict[str, Any]:
    """Fit the decode-attention term of every kernel variant present; return a params dict (PARAMS_SCHEMA).

    Rows of torch_sdpa (a baseline) are ignored. With `model`, only rows whose (num_heads, num_kv_heads,
    head_dim) equal the model's per-GPU heads are used when there are any; otherwise all rows are used
    and a warning says so. `model`/`gpu` are recorded in the file so a run with another preset is refused.
    """
    df = check_timings(timings, source=timings_name or "timings")
    warnings: list[str] = []
    ignored = int((df["variant"] == "torch_sdpa").sum())
    df = df[df["variant"] != "torch_sdpa"]
    if df.empty:
        raise CalibrationError(f"{timings_name or 'timings'}: no rows of a fitted variant "
                               f"({', '.join(DECODE_VARIANTS)}); only torch_sdpa or none")
    if not df["variant"].isin(["paged", "partitioned"]).any():
        raise CalibrationError(f"{timings_name or 'timings'}: no paged or partitioned rows "
                               "(the decode term of a paged cache needs them)")
    if model is not None:
        heads = _heads_of(model, tensor_parallel)
        match = (df["num_heads"] == heads[0]) & (df["num_kv_heads"] == heads[1]) & (df["head_dim"] == heads[2])
        if match.any():
            df = df[match]
        else:
            have = sorted({tuple(int(v) for v in r) for r in df[["num_heads", "num_kv_heads", "head_dim"]]
                           .drop_duplicates().to_numpy()})
            warnings.append(f"no rows with {model.name}'s (num_heads, num_kv_heads, head_dim) = {heads}; "
                            f"fitted all rows {have}")
    variants: dict[str, dict[str, float]] = {}
    reports: dict[str, dict[str, Any]] = {}
    for v in DECODE_VARIANTS:
        rows = df[df["variant"] == v]
        need = min_rows(v)
        if 0 < len(rows) < need:
            if v in ("paged", "partitioned") and not ({"paged", "partitioned"} - {v}) & set(df["variant"]):
                raise CalibrationError(f"variant {v}: {len(rows)} timing rows, need at least {need} "
                                       f"({need - 2} coefficients + 2); time a larger grid (e.g. pagesim bench "
                                       "--grid quick, or more --batch-sizes / --context-lens)")
            warnings.append(f"variant {v}: {len(rows)} timing rows, fewer than the {need} a fit needs: not fitted")
            continue
        if len(rows):
            variants[v], reports[v] = fit_variant(rows, v)
            if reports[v]["fixed_zero"] and v != "contiguous":
                warnings.append(f"variant {v}: the rows cannot separate {', '.join(reports[v]['fixed_zero'])} "
                                "(fixed at 0); vary batch_size, block_size and context lengths")
    devices = sorted(map(str, df["device"].dropna().unique())) if "device" in df else []
    shim = CPU_SHIM_DEVICE in devices
    label = "decode attention fitted from kernel timings; linear and prefill terms roofline"
    if shim:  # the CPU emulation's timings say nothing about a GPU: never let the file pass for one
        where = f" (the file is marked for {gpu.name}, but no {gpu.name} was measured)" if gpu is not None else ""
        warnings.insert(0, f"NOT A GPU CALIBRATION: the timings come from the CPU shim (device "
                           f"{CPU_SHIM_DEVICE!r}), which emulates the kernels on the CPU; the fitted times "
                           f"describe that emulation, not any GPU{where}. Use it only to exercise the "
                           "pipeline; calibrate from `pagesim bench` on the GPU itself.")
        label = "CPU-SHIM TIMINGS, NOT A GPU: " + label
    params: dict[str, Any] = {
        "schema": PARAMS_SCHEMA,
        "source": "calibrated",
        "label": label,
        "cpu_shim": shim,
        "model": model.name if model is not None else None,
        "gpu": gpu.name if gpu is not None else None,
        "tensor_parallel": tensor_parallel,
        "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "timings": timings_name,
        "attn_decode": {"form": "per_layer_affine", "kv_bytes": "context tokens x K+V bytes (not block-rounded)",
                        "variants": variants},
        "fit": {
            "method": "non-negative least squares on relative residuals",
            "variants": reports,
            "ignored_rows": {"torch_sdpa": ignored},
            "devices": devices,
            "dtypes": sorted(map(str, df["dtype"].unique())),
            "heads": sorted({tuple(int(v) for v in r) for r in df[["num_heads", "num_kv_heads", "head_dim"]]
                             .drop_duplicates().to_numpy()}),
            "warnings": warnings,
        },
    }
    return validate_params(params)


def fit_table(params: dict[str, Any]) -> pd.DataFrame:
    """One row per (variant, block size) with n, median and max relative error, plus an "all" row."""
    import pandas as pd

    rows = []
    for v, rep in params["fit"]["variants"].items():
        for r in rep["by_block_size"]:
            rows.append({"variant": v, **r})
        rows.append({"variant": v, "block_size": "all", "n": rep["n_points"],
                     "median_rel_err": rep["median_rel_err"], "max_rel_err": rep["max_rel_err"]})
    return pd.DataFrame(rows, columns=["variant", "block_size", "n", "median_rel_err", "max_rel_err"])


def write_params(params: dict[str, Any], path: str | Path) -> Path:
    """Validate and write a parameters file (JSON, indented, sorted keys, trailing newline)."""
    p = Path(path)
    validate_params(params)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_suffix(p.suffix + ".tmp")
    tmp.write_text(json.dumps(params, indent=2, sort_keys=True) + "\n")
    tmp.replace(p)  # atomic: a reader never sees half a file
    return p


def write_default_params(out_dir: str | Path = PARAMS_DIR) -> list[Path]:
    """(Re)generate the shipped roofline-default files (sim/timing/params/) from the presets."""
    return [write_params(roofline_params(m, g, tensor_parallel=tp), Path(out_dir) / params_filename(m, g, tp))
            for m, g, tp in default_param_targets()]


DEFAULT_GRID: dict[str, list[Any]] = {
    "variant": ["paged"], "batch_size": [1, 8, 32, 128], "context_len": [128, 512, 2048, 8192],
    "block_size": [8, 16, 32], "num_heads": [32], "num_kv_heads": [32], "head_dim": [128], "dtype": ["fp16"],
}


def synthetic_timings(coeffs: dict[str, Any], grid: dict[str, list[Any]] | None, rng: np.random.Generator,
                      noise: float = 0.02) -> pd.DataFrame:
    """Timings (the CONTRACT's columns) from a known decode model with multiplicative Gaussian noise.

    coeffs: {c0_s, c_kv_bytes_s, c_seqs_s, c_blocks_s}, or {variant: those} per variant.
    grid: lists per axis (DEFAULT_GRID's keys; missing keys take its values). Each row's context lengths
    are drawn uniformly in [context_len/2, 3*context_len/2]; contiguous and torch_sdpa rows have
    block_size 0 and no blocks (one per shape). latency_s = formula * (1 + noise * N(0, 1)), kept > 0.
    """
    import pandas as pd

    g = {**DEFAULT_GRID, **(grid or {})}
    per_variant = coeffs if set(coeffs) <= set(TIMING_VARIANTS) else None
    rows = []
    for v, bs, ctx, blk, nh, nkv, hd, dt in itertools.product(
            g["variant"], g["batch_size"], g["context_len"], g["block_size"], g["num_heads"], g["num_kv_heads"],
            g["head_dim"], g["dtype"]):
        if v in ("contiguous", "torch_sdpa"):  # one block_size-0 row per shape
            if blk != g["block_size"][0]:
                continue
            blk = 0
        lens = rng.integers(max(1, ctx // 2), ctx * 3 // 2 + 1, size=bs)
        kv = int(lens.sum()) * 2 * nkv * hd * KV_DTYPES[dt]
        blocks = int((-(-lens // blk)).sum()) if blk else 0
        c = per_variant[v] if per_variant is not None else coeffs
        t = c["c0_s"] + c["c_kv_bytes_s"] * kv + c["c_seqs_s"] * bs + c["c_blocks_s"] * blocks
        t *= max(1.0 + noise * rng.standard_normal(), 1e-3)
        rows.append({"variant": v, "batch_size": bs, "block_size": blk, "num_heads": nh, "num_kv_heads": nkv,
                     "head_dim": hd, "dtype": dt, "kv_bytes": kv, "num_blocks_touched": blocks, "latency_s": t,
                     "context_len_mean": float(lens.mean()), "context_len_max": int(lens.max()),
                     "device": "synthetic"})
    if not rows:
        raise CalibrationError("synthetic_timings: the grid is empty")
    assert all(math.isfinite(r["latency_s"]) for r in rows)
    return pd.DataFrame(rows)


ROOFLINE_SCHEMA = "pagesim.decode_roofline/1"
ROOFLINE_FORM = "latency_s = max(t0_s + kv_bytes / bw_Bps, t0_s + waves * tiles_per_cta * t_tile_s)"
ROOFLINE_COLUMNS = ("variant", "kv_bytes", "waves", "tiles_per_cta", "latency_s")


def roofline_predict(p: Mapping[str, float], kv_bytes: np.ndarray, chain: np.ndarray) -> np.ndarray:
    """Latency of the roofline form; chain = waves x tiles_per_cta (the serial tiles of the grid)."""
    return p["t0_s"] + np.maximum(np.asarray(kv_bytes, float) / p["bw_Bps"], np.asarray(chain, float) * p["t_tile_s"])


def _fit_roofline_variant(b: np.ndarray, w: np.ndarray, y: np.ndarray) -> tuple[dict[str, float], np.ndarray]:
    """Alternate: assign each row to the term that dominates, refit t0 / 1/bw / t_tile jointly by
    relative-error NNLS ([1, b, 0] for bandwidth rows, [1, 0, w] for latency rows), until stable."""
    lat = w * np.min(y / w) >= b * np.min(y / b)  # start: which term the tightest bounds make larger
    coef = np.zeros(3)
    for _ in range(50):
        a = np.column_stack([np.ones_like(y), np.where(lat, 0.0, b), np.where(lat, w, 0.0)])
        if lat.all() or not lat.any():  # one regime: the other coefficient is unidentified, keep it 0
            a[:, 1 if lat.all() else 2] = 0.0
        coef = nnls(a / y[:, None], np.ones_like(y))
        new = coef[2] * w > coef[1] * b
        if (new == lat).all():
            break
        lat = new
    c_b = coef[1] if coef[1] > 0 else 1e-30  # s per byte -> bytes/s (inf when unidentified)
    return {"t0_s": float(coef[0]), "bw_Bps": float(1.0 / c_b), "t_tile_s": float(coef[2])}, lat


def fit_roofline(rows: Sequence[Mapping[str, Any]], *, device: str = "") -> dict[str, Any]:
    """Fit the roofline form per variant to goal-benchmark rows (dicts with ROOFLINE_COLUMNS) and report
    n / median / max relative error per regime ("bandwidth", "latency"). Raises CalibrationError."""
    by_variant: dict[str, list[Mapping[str, Any]]] = {}
    for i, r in enumerate(rows):
        missing = [c for c in ROOFLINE_COLUMNS if c not in r]
        if missing:
            raise CalibrationError(f"roofline rows: row {i} lacks {', '.join(missing)}")
        if not float(r["latency_s"]) > 0 or not float(r["kv_bytes"]) > 0:
            raise CalibrationError(f"roofline rows: row {i} needs latency_s > 0 and kv_bytes > 0")
        by_variant.setdefault(str(r["variant"]), []).append(r)
    if not by_variant:
        raise CalibrationError("roofline rows: none given")
    out: dict[str, Any] = {"schema": ROOFLINE_SCHEMA, "form": ROOFLINE_FORM, "device": device,
                           "created": _dt.date.today().isoformat(), "variants": {}}
    for v, rs in sorted(by_variant.items()):
        b = np.array([float(r["kv_bytes"]) for r in rs])
        w = np.array([max(float(r["waves"]) * float(r["tiles_per_cta"]), 1.0) for r in rs])
        y = np.array([float(r["latency_s"]) for r in rs])
        params, lat = _fit_roofline_variant(b, w, y)
        err = np.abs(roofline_predict(params, b, w) / y - 1)
        regimes = {}
        for name, mask in (("bandwidth", ~lat), ("latency", lat)):
            e = err[mask]
            regimes[name] = {"n": int(mask.sum()), "median_rel_err": float(np.median(e)) if e.size else None,
                             "max_rel_err": float(e.max()) if e.size else None}
        out["variants"][v] = params | {"n_points": len(rs), "regimes": regimes}
    return out


def write_roofline(params: Mapping[str, Any], path: str | Path) -> Path:
    """Write a fit_roofline result as JSON; returns the path."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(params, indent=2, allow_nan=True) + "\n")
    return p
