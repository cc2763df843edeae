"""Fit the GEMM efficiency curve (sim.timing.gemm) to measured linear-layer timings.

Input: one row per measured GEMM (GEMM_COLUMNS): the op name, the token count `num_tokens` (m), the
per-GPU weight shape `k x n` and the median `latency_s`; optional `model`, `tensor_parallel`, `device`.
`pagesim bench --gemm` (gpu/bench/gemm.py) and the Vidur loader (gpu/calibration/vidur.py) both produce it.

The fit minimizes the squared log ratio prediction / measurement over the fit rows (relative error,
timings span three orders of magnitude) with a small Levenberg-Marquardt (no SciPy), keeping the
efficiencies in (0, 1]. Held-out rows (chosen by `split`) are never used by the fit; the report gives the
median and worst relative error on both, overall and per (model, tensor_parallel) group.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from gpu.calibration.kernels import CalibrationError
from sim.presets import GPUSpec
from sim.timing.gemm import GEMM_KEYS, H100_VIDUR, GemmParams, for_gpu

GEMM_COLUMNS: tuple[str, ...] = ("op", "num_tokens", "k", "n", "latency_s")
_LO = np.array([0.0, 0.02, 0.02, 0.0])
_HI = np.array([1e-3, 1.0, 1.0, 1e5])


def check_gemm_timings(df: pd.DataFrame, source: str = "GEMM timings") -> pd.DataFrame:
    """Validate the GEMM timings columns; CalibrationError naming the column and CSV line (row + 2)."""
    missing = [c for c in GEMM_COLUMNS if c not in df.columns]
    if missing:
        raise CalibrationError(f"{source}: missing required column(s) {', '.join(missing)} "
                               f"(required: {', '.join(GEMM_COLUMNS)})")
    out = df.copy()
    for col in GEMM_COLUMNS[1:]:
        num = pd.to_numeric(out[col], errors="coerce").to_numpy(dtype=float)
        bad = ~np.isfinite(num) | (num <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad)[0])
            raise CalibrationError(f"{source}: column '{col}' line {i + 2}: {out[col].iloc[i]!r} "
                                   "is not a finite number > 0")
        out[col] = num
    if "tensor_parallel" not in out:
        out["tensor_parallel"] = 1
    if "model" not in out:
        out["model"] = "?"
    return out


def predict(params: GemmParams | np.ndarray, gpu: GPUSpec, m: np.ndarray, k: np.ndarray, n: np.ndarray,
            dtype_bytes: int = 2) -> np.ndarray:
    """Vectorized sim.timing.gemm.gemm_time (the same formula; tests compare the two)."""
    x = _vector(for_gpu(params, gpu)) if isinstance(params, GemmParams) else params
    launch, mem_eff, flops_eff, half = x
    t_mem = (k * n + m * (k + n)) * dtype_bytes / (gpu.hbm_bandwidth_Bps * mem_eff)
    t_comp = 2.0 * k * n * (m + half) / (gpu.fp16_flops * flops_eff)
    return launch + np.maximum(t_mem, t_comp)


def _vector(p: GemmParams) -> np.ndarray:
    return np.array([getattr(p, k) for k in GEMM_KEYS], dtype=float)


def _levenberg_marquardt(res: Any, x0: np.ndarray, iters: int = 200) -> np.ndarray:
    """Minimize |res(x)|^2 within [_LO, _HI] (clipped steps, forward-difference Jacobian)."""
    x = np.clip(np.asarray(x0, float), _LO, _HI)
    r = res(x)
    cost, lam = float(r @ r), 1e-3
    for _ in range(iters):
        jac = np.empty((r.size, x.size))
        for j in range(x.size):
            h = 1e-6 * max(abs(x[j]), 1e-9)
            xp = x.copy()
            xp[j] += h
            jac[:, j] = (res(xp) - r) / h
        scale = np.linalg.norm(jac, axis=0)
        scale[scale == 0] = 1.0
        js = jac / scale
        a, g = js.T @ js, js.T @ r
        while True:
            step = np.linalg.solve(a + lam * np.diag(np.diag(a) + 1e-12), -g) / scale
            xn = np.clip(x + step, _LO, _HI)
            rn = res(xn)
            cn = float(rn @ rn)
            if cn < cost:
                moved = float(np.max(np.abs(xn - x) / np.maximum(np.abs(x), 1e-12)))
                x, r, cost, lam = xn, rn, cn, max(lam / 3, 1e-9)
                break
            lam *= 4
            if lam > 1e10:
                return x
        if moved < 1e-9:
            break
    return x


@dataclass(slots=True)
class GemmFit:
    """A fitted curve and its error report (relative errors, fit rows vs held-out rows)."""

    params: GemmParams
    report: dict[str, Any]


def _errors(rel: np.ndarray) -> dict[str, Any]:
    if not rel.size:
        return {"n": 0, "median_rel_err": None, "max_rel_err": None}
    return {"n": int(rel.size), "median_rel_err": float(np.median(rel)), "max_rel_err": float(rel.max())}


def split(df: pd.DataFrame, holdout: str) -> np.ndarray:
    """Boolean mask of held-out rows for a holdout spec (CalibrationError naming the spec if bad).

    none: no held-out rows; every:N: every N-th distinct token count (N >= 2; the default every:5);
    tokens>X: token counts above X; model:NAME: that model's rows; tp:N: that tensor-parallel degree.
    """
    kind, _, arg = holdout.partition(":")
    if holdout.startswith("tokens>"):
        kind, arg = "tokens>", holdout[len("tokens>"):]
    try:
        if kind == "none" and not arg:
            return np.zeros(len(df), dtype=bool)
        if kind == "every":
            n = int(arg)
            if n < 2:
                raise ValueError
            tokens = np.sort(df["num_tokens"].unique())
            held = set(tokens[n - 1::n].tolist())
            return df["num_tokens"].isin(held).to_numpy()
        if kind == "tokens>":
            return (df["num_tokens"] > float(arg)).to_numpy()
        if kind == "model" and arg:
            return (df["model"].astype(str).str.lower() == arg.lower()).to_numpy()
        if kind == "tp":
            return (df["tensor_parallel"] == int(arg)).to_numpy()
    except ValueError:
        pass
    raise CalibrationError(f"--holdout {holdout!r}: not understood (valid: none, every:N with N >= 2, "
                           "tokens>X, model:NAME, tp:N)")


def fit_gemm(df: pd.DataFrame, gpu: GPUSpec, *, holdout: str = "every:5", dtype_bytes: int = 2,
             source: str = "GEMM timings") -> GemmFit:
    """Fit GemmParams on the rows `split(df, holdout)` leaves in; report fit and held-out errors."""
    df = check_gemm_timings(df, source)
    held = split(df, holdout)
    fit_rows = ~held
    if fit_rows.sum() < 8:
        raise CalibrationError(f"{source}: {int(fit_rows.sum())} rows left to fit after --holdout {holdout} "
                               "(need at least 8)")
    m, k, n = (df[c].to_numpy(float) for c in ("num_tokens", "k", "n"))
    y = df["latency_s"].to_numpy(float)
    if np.unique(m[fit_rows]).size < 4:
        raise CalibrationError(f"{source}: the fit rows have {np.unique(m[fit_rows]).size} distinct token "
                               "counts (need at least 4 to separate memory- and compute-bound regimes)")

    def res(x: np.ndarray) -> np.ndarray:
        return np.log(predict(x, gpu, m[fit_rows], k[fit_rows], n[fit_rows], dtype_bytes) / y[fit_rows])

    # Two starts (the shipped H100 curve, and a generic one) guard against the max() kink's local minima.
    starts = [_vector(H100_VIDUR), np.array([5e-6, 0.8, 0.7, 100.0])]
    best = min((_levenberg_marquardt(res, s) for s in starts), key=lambda x: float(res(x) @ res(x)))
    launch, mem_eff, flops_eff, half = (float(v) for v in best)
    params = GemmParams(launch, mem_eff, flops_eff, half, fitted_on=gpu.name, source=f"fitted to {source}")
    rel = np.abs(predict(best, gpu, m, k, n, dtype_bytes) / y - 1.0)
    groups = []
    for (model, tp), idx in df.groupby(["model", "tensor_parallel"], sort=True).indices.items():
        groups.append({"model": str(model), "tensor_parallel": int(tp),
                       "fit": _errors(rel[idx][fit_rows[idx]]), "held_out": _errors(rel[idx][held[idx]])})
    worst = int(np.argmax(rel))
    report = {
        "method": "least squares on log(predicted / measured), Levenberg-Marquardt",
        "holdout": holdout, "fit": _errors(rel[fit_rows]), "held_out": _errors(rel[held]),
        "all": _errors(rel), "groups": groups,
        "worst": {"op": str(df["op"].iloc[worst]), "model": str(df["model"].iloc[worst]),
                  "tensor_parallel": int(df["tensor_parallel"].iloc[worst]),
                  "num_tokens": int(m[worst]), "measured_s": float(y[worst]),
                  "predicted_s": float(predict(best, gpu, m[worst:worst + 1], k[worst:worst + 1],
                                               n[worst:worst + 1], dtype_bytes)[0]),
                  "rel_err": float(rel[worst])},
    }
    return GemmFit(params, report)


def synthetic_gemm_timings(params: GemmParams, gpu: GPUSpec, shapes: list[tuple[str, int, int]],
                           tokens: list[int], rng: np.random.Generator, noise: float = 0.02,
                           dtype_bytes: int = 2) -> pd.DataFrame:
    """GEMM timings from a known curve with multiplicative Gaussian noise (tests, docs)."""
    rows = []
    for op, kk, nn in shapes:
        for mm in tokens:
            t = float(predict(params, gpu, np.array([mm], float), np.array([kk], float), np.array([nn], float),
                              dtype_bytes)[0])
            rows.append({"op": op, "num_tokens": mm, "k": kk, "n": nn,
                         "latency_s": t * max(1.0 + noise * float(rng.standard_normal()), 1e-3),
                         "model": "synthetic", "tensor_parallel": 1, "device": "synthetic"})
    return pd.DataFrame(rows)
