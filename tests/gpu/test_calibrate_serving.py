"""Serving benchmarks (vLLM benchmark_serving.py --save-result JSON): the loader and its errors, the
arrival process, `pagesim validate` (errors, output, and a file round trip that must reproduce the
simulation exactly), and the engine-overhead fit recovering known overheads from noisy synthetic runs."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
from paths import DATA
from typer.testing import CliRunner

from analysis.cli import app
from gpu.calibration.kernels import CalibrationError
from gpu.calibration.overheads import ReplaySetup, fit_overheads, synthetic_benchmark
from gpu.calibration.serving import (
    REQUIRED_FIELDS,
    arrival_times,
    load_benchmark,
    measured_metrics,
    parse_benchmark,
)
from sim.timing.engines import get_engine

FIXTURE = DATA / "vllm_serving_llama2_7b_h100.json"
SETUP = ReplaySetup(model="Llama-2-7B", gpu="H100-SXM")


def _raw() -> dict:
    return json.loads(FIXTURE.read_text())


def test_fixture_loads_with_vllm_field_names() -> None:
    raw = _raw()
    b = load_benchmark(FIXTURE)
    assert b.num_requests == 41 and b.index.size == 40 and b.num_failed == 1  # the last one failed
    assert b.request_rate == 4.0 and b.burstiness == 1.0 and b.completed == 40
    i = 3
    assert b.tpots[i] == pytest.approx(sum(raw["itls"][i]) / (raw["output_lens"][i] - 1), rel=1e-12)
    m = measured_metrics(b)
    assert m["request_throughput"] == pytest.approx(40 / raw["duration"])
    assert m["output_throughput"] == pytest.approx(sum(raw["output_lens"]) / raw["duration"])
    assert m["median_ttft_s"] == pytest.approx(float(np.median(raw["ttfts"][:40])))


@pytest.mark.parametrize(("change", "message"), [
    (lambda d: d.pop("itls"), r"field 'itls' is missing \(per-request lists are saved"),
    (lambda d: d.pop("request_rate"), "field 'request_rate' is missing"),
    (lambda d: d.__setitem__("ttfts", d["ttfts"][:-1]), "field 'ttfts' has 40 entries but 'input_lens' has 41"),
    (lambda d: d["ttfts"].__setitem__(3, -1.0), r"field 'ttfts\[3\]' = -1.0 out of range"),
    (lambda d: d["input_lens"].__setitem__(0, 0), r"field 'input_lens\[0\]' = 0 out of range"),
    (lambda d: d["itls"].__setitem__(2, "x"), r"field 'itls\[2\]' must be a list of seconds"),
    (lambda d: d.__setitem__("duration", 0), "field 'duration' = 0 out of range"),
    (lambda d: d.__setitem__("request_rate", "fast"), "field 'request_rate' = 'fast' out of range"),
    (lambda d: d.__setitem__("output_lens", [0] * 41), "no successful request"),
])
def test_malformed_benchmarks_name_the_field(change, message) -> None:
    d = _raw()
    change(d)
    with pytest.raises(CalibrationError, match=message):
        parse_benchmark(d, "b.json")


def test_inf_rate_and_arrival_process() -> None:
    d = _raw()
    d["request_rate"] = "inf"
    b = parse_benchmark(d)
    assert math.isinf(b.request_rate)
    assert not arrival_times(5, math.inf, 1.0, np.random.default_rng(0)).any()
    t = arrival_times(20001, 4.0, 1.0, np.random.default_rng(0))
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    assert np.diff(t).mean() == pytest.approx(0.25, rel=0.03)  # Poisson at 4 req/s
    bursty = np.diff(arrival_times(20001, 4.0, 0.25, np.random.default_rng(0)))
    assert bursty.mean() == pytest.approx(0.25, rel=0.06) and bursty.std() > 1.7 * np.diff(t).std()


def test_validate_cli_errors_are_one_line(tmp_path: Path) -> None:
    bad = tmp_path / "b.json"
    d = _raw()
    del d["ttfts"]
    bad.write_text(json.dumps(d))
    res = CliRunner().invoke(app, ["validate", str(bad), "--model", "llama-2-7b", "--gpu", "h100-sxm"])
    assert res.exit_code == 2
    assert res.output.strip().splitlines() == [
        f"pagesim validate: error: serving benchmark {bad}: field 'ttfts' is missing (per-request lists are "
        "saved by vLLM's benchmark_serving.py --save-result; newer vLLM needs --save-detailed)"]
    bad.write_text("{\n  \"duration\": 1,,\n}")
    res = CliRunner().invoke(app, ["validate", str(bad), "--model", "llama-2-7b", "--gpu", "h100-sxm"])
    assert res.exit_code == 2 and "invalid JSON at line 2" in res.output and len(res.output.splitlines()) == 1
    res = CliRunner().invoke(app, ["validate", str(FIXTURE), "--model", "llama-2-7b", "--gpu", "h100-sxm",
                                   "--engine", "nope"])
    assert res.exit_code == 2 and "unknown engine profile 'nope'" in res.output


def test_validate_prints_every_metric() -> None:
    res = CliRunner().invoke(app, ["validate", str(FIXTURE), "--model", "llama-2-7b", "--gpu", "h100-sxm",
                                   "--engine", "ideal"])
    assert res.exit_code == 0, res.output
    for label in ("throughput (req/s)", "output tokens/s", "mean TTFT (ms)", "median TTFT (ms)", "p99 TTFT (ms)",
                  "mean TPOT (ms)", "median TPOT (ms)", "p99 TPOT (ms)", "assumptions: arrivals redrawn",
                  "1 failed request(s) not replayed"):
        assert label in res.output


def test_round_trip_through_the_json_format(tmp_path: Path) -> None:
    """Simulate -> write vLLM's JSON -> `pagesim validate` with the same engine: every metric matches."""
    rng = np.random.default_rng(3)
    eng = dataclasses.replace(get_engine("ideal"), name="ideal", step_overhead_s=2e-3, seq_overhead_s=5e-5)
    d = synthetic_benchmark(rng.integers(16, 800, 30).tolist(), rng.integers(2, 120, 30).tolist(), 6.0, SETUP,
                            eng, rng, noise=0.0, seed=0)
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(d))
    assert set(REQUIRED_FIELDS) <= set(json.loads(path.read_text()))
    out = tmp_path / "cmp.json"
    # the engine with those overheads, through a params file's engine block (how calibrate hands it on)
    params = tmp_path / "p.json"
    params.write_text(json.dumps({"schema": "pagesim.latency/2", "source": "roofline", "engine": eng.to_dict()}))
    res = CliRunner().invoke(app, ["validate", str(path), "--model", "llama-2-7b", "--gpu", "h100-sxm",
                                   "--latency", str(params), "--json", str(out)])
    assert res.exit_code == 0, res.output
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 8
    for r in rows:
        assert abs(r["rel_err"]) < 1e-6, r


@pytest.mark.slow
def test_fit_recovers_known_overheads_from_noisy_runs() -> None:
    """Two synthetic benchmarks (2 and 16 req/s, 3% noise) from step 1.5 ms + 40 us/seq: the fit finds them."""
    rng = np.random.default_rng(1)
    ins, outs = rng.integers(20, 600, 80).tolist(), rng.integers(10, 300, 80).tolist()
    true = dataclasses.replace(get_engine("vllm-current"), step_overhead_s=1.5e-3, seq_overhead_s=4e-5)
    benches = [parse_benchmark(synthetic_benchmark(ins, outs, rate, SETUP, true, rng, noise=0.03, seed=0),
                               f"rate {rate}") for rate in (2.0, 16.0)]
    held = parse_benchmark(synthetic_benchmark(ins, outs, 6.0, SETUP, true, rng, noise=0.03, seed=0), "rate 6")
    fit = fit_overheads(benches, SETUP, "vllm-current", held_out=[held])
    assert fit.step_overhead_s == pytest.approx(1.5e-3, rel=0.15)
    assert fit.seq_overhead_s == pytest.approx(4e-5, rel=0.2)
    assert fit.report["fit"]["median_rel_err"] < 0.05
    held_rows = [r for r in fit.report["rows"] if r["split"] == "held-out file"]
    assert len(held_rows) == 8 and np.median([abs(r["rel_err"]) for r in held_rows]) < 0.05
    # the fitted profile keeps every other field of the base profile
    assert fit.engine.attn_block_s == true.attn_block_s and fit.engine.name == "vllm-current+fit"


def test_metrics_average_over_arrival_draws() -> None:
    from gpu.calibration.overheads import sim_metrics

    b = parse_benchmark({"input_lens": [10, 10], "output_lens": [3, 3], "ttfts": [0.1, 0.1], "itls": [[0.1] * 2] * 2,
                         "duration": 1.0, "completed": 2, "request_rate": 1.0})
    runs = [(np.array([1.0, 3.0]), np.array([0.1, 0.1]), 10.0), (np.array([2.0, 2.0]), np.array([0.3, 0.3]), 5.0)]
    m = sim_metrics(b, {"runs": runs}, np.arange(2))
    assert m["request_throughput"] == pytest.approx((2 / 10 + 2 / 5) / 2)
    assert m["mean_tpot_s"] == pytest.approx(0.2) and m["mean_ttft_s"] == pytest.approx(2.0)
    # the p99 of each draw, averaged: (2.98 + 2.0) / 2, not the p99 of the per-request means (2.0)
    assert m["p99_ttft_s"] == pytest.approx((1.0 + 0.99 * 2.0 + 2.0) / 2)


def test_model_preset_from_the_benchmark_model_id(tmp_path: Path) -> None:
    from gpu.calibration.serving import preset_from_model_id

    assert preset_from_model_id("meta-llama/Llama-2-7b-hf") == "Llama-2-7B"
    assert preset_from_model_id("meta-llama/Llama-2-70b-chat-hf") == "Llama-2-70B"
    assert preset_from_model_id("meta-llama/Meta-Llama-3-8B") == "Llama-3-8B"
    assert preset_from_model_id("facebook/opt-13b") == "OPT-13B"
    assert preset_from_model_id("mistralai/Mistral-7B-v0.1") == "Mistral-7B"
    assert preset_from_model_id("Qwen/Qwen2-7B") is None and preset_from_model_id(None) is None
    res = CliRunner().invoke(app, ["validate", str(FIXTURE), "--gpu", "h100-sxm", "--engine", "ideal"])
    assert res.exit_code == 0 and "Llama-2-7B on H100-SXM" in res.output  # the fixture's model_id
    d = _raw()
    d["model_id"] = "Qwen/Qwen2-7B"
    other = tmp_path / "q.json"
    other.write_text(json.dumps(d))
    res = CliRunner().invoke(app, ["validate", str(other), "--gpu", "h100-sxm"])
    assert res.exit_code == 2 and "model_id 'Qwen/Qwen2-7B' names no preset" in res.output
