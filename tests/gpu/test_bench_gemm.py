"""`pagesim bench --gemm`: the GEMM timing plan on the CPU (shapes, L2 rotation, option errors), and on a
GPU (`-m gpu`) a real torch timing that the GEMM-curve fit must describe within 15% median error."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.cli import app
from gpu.bench.gemm import DEFAULT_TOKENS, gemm_configs, weight_copies
from sim.presets import get_model
from sim.timing.gemm import linear_shapes


def test_plan_covers_every_shape_and_token_count() -> None:
    m = get_model("llama-2-70b")
    plan = gemm_configs(m, 4, (1, 64, 512))
    assert len(plan) == 4 * 3
    assert {(c.op, c.k, c.n) for c in plan} == set(linear_shapes(m, 4))
    assert [c.num_tokens for c in plan[:3]] == [1, 64, 512]
    assert DEFAULT_TOKENS[0] == 1 and DEFAULT_TOKENS[-1] == 4096
    with pytest.raises(ValueError, match="token counts >= 1"):
        gemm_configs(m, 1, (0,))


def test_weights_rotate_past_twice_l2() -> None:
    l2 = 50 << 20
    assert weight_copies(512, 4096, 2, l2) == 25  # 4 MiB matrix: 25 copies = 100 MiB > 2 x 50 MiB
    assert weight_copies(8192, 28672, 2, l2) == 1  # 448 MiB: already streams from HBM
    assert weight_copies(4096, 4096, 2, l2) * 4096 * 4096 * 2 >= 2 * l2


def test_gemm_option_errors(tmp_path: Path) -> None:
    run = CliRunner().invoke
    res = run(app, ["bench", "--gemm-only", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "--gemm-only needs --gemm MODEL" in res.output
    res = run(app, ["bench", "--gemm", "gpt-9", "--gemm-only", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "--gemm: unknown model 'gpt-9'" in res.output
    res = run(app, ["bench", "--gemm", "llama-2-70b", "--gemm-tensor-parallel", "3", "--gemm-only", "-o",
                    str(tmp_path)])
    assert res.exit_code == 2 and "tensor_parallel = 3 out of range" in res.output
    res = run(app, ["bench", "--gemm", "llama-2-7b", "--gemm-tokens", "1,x", "--gemm-only", "-o", str(tmp_path)])
    assert res.exit_code == 2 and "--gemm-tokens" in res.output


@pytest.mark.gpu
def test_gemm_bench_on_gpu_is_fitted_by_the_curve(tmp_path: Path) -> None:
    from gpu.bench.device import match_gpu_preset
    from gpu.calibration.gemm import fit_gemm

    res = CliRunner().invoke(app, ["bench", "--gemm", "llama-2-7b", "--gemm-only", "--reps", "20", "-o",
                                   str(tmp_path)])
    assert res.exit_code == 0, res.output
    df = pd.read_csv(tmp_path / "gemm_timings.csv")
    assert len(df) == 4 * len(DEFAULT_TOKENS) and (df["latency_s"] > 0).all()
    gpu = match_gpu_preset(str(df["device"].iloc[0]))
    if gpu is None:
        pytest.skip("no GPU preset matches this device; the fit needs its peaks")
    fit = fit_gemm(df, gpu, holdout="every:4")
    assert fit.report["fit"]["median_rel_err"] < 0.15 and fit.report["held_out"]["median_rel_err"] < 0.15
    assert np.isfinite(fit.params.half_tokens)
