"""Every figure renders (Agg, no display) to non-empty PNG and SVG files; bad input is a clear error."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from simfakes import fake_result

from analysis import frames, plots


def _check(paths: list[Path]) -> None:
    assert [p.suffix for p in paths] == [".png", ".svg"]
    png, svg = paths
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000
    assert "<svg" in svg.read_text()[:2000]


def _summary() -> pd.DataFrame:
    return frames.summary_frame([fake_result("paged(B=16)"), fake_result("contiguous-max", seed=1)])


def _points() -> pd.DataFrame:
    rows = []
    for system in ("paged", "max"):
        for b in (8, 16, 32):
            for rate in (1.0, 2.0):
                rows.append({"system": system, "block_size": b, "rate": rate, "internal_frag_pct": b / 4,
                             "reserved_pct": 5.0, "external_frag_pct": 1.0, "mean_step_time_s": 0.02 + b / 1e4,
                             "throughput_tps": 1000 - b, "throughput_rps": rate * 0.9,
                             "mean_normalized_latency_s_per_token": 0.05 * rate, "n": b // 8,
                             "sharing_savings_pct": 3.0 * b, "status": "ok"})
    return pd.DataFrame(rows)


def test_memory_breakdown(tmp_path: Path) -> None:
    _check(plots.plot_memory_breakdown(_summary(), tmp_path / "mb", "OPT-13B on A100-40GB, ShareGPT"))


def test_memory_breakdown_with_the_fig2_panel(tmp_path: Path) -> None:
    s = _summary()
    for c in ("token_states", "reserved", "internal_frag", "speculative", "external_frag"):
        s[f"{c}_of_used_pct"] = 20.0
    paths = plots.plot_memory_breakdown(s, tmp_path / "mb", "t")
    _check(paths)
    assert paths[1].read_text().count("memory in use") >= 1  # the second panel's title is in the SVG


def test_memory_over_time_two_systems(tmp_path: Path) -> None:
    mem = pd.concat([frames.memory_frame(fake_result("a")), frames.memory_frame(fake_result("b", seed=5))])
    _check(plots.plot_memory_over_time(mem, tmp_path / "mt", "t", max_points=10))


def test_sweep_figures(tmp_path: Path) -> None:
    pts = _points()
    _check(plots.plot_block_size_sweep(pts[pts["rate"] == 1.0], tmp_path / "bs", "t"))
    _check(plots.plot_rate_sweep(pts[pts["block_size"] == 16], tmp_path / "rs", "t"))
    _check(plots.plot_sharing_savings(pts[pts["rate"] == 1.0], tmp_path / "sh", "t", x="n"))


def test_latency_cdf(tmp_path: Path) -> None:
    req = pd.concat([frames.requests_frame(fake_result("a")), frames.requests_frame(fake_result("b", seed=9))])
    _check(plots.plot_latency_cdf(req, tmp_path / "cdf", "t"))


def test_missing_columns_and_empty_data_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing column.*throughput_rps"):
        plots.plot_rate_sweep(pd.DataFrame({"rate": [1.0]}), tmp_path / "x")
    with pytest.raises(ValueError, match="no rows"):
        plots.plot_memory_breakdown(_summary().iloc[:0], tmp_path / "x")
    assert not list(tmp_path.iterdir())
