"""Records -> DataFrames: columns from the dataclass fields, time-weighted breakdown, summary rows."""

from __future__ import annotations

import math
from dataclasses import fields

import numpy as np
import pandas as pd
import pytest
from simfakes import fake_result

from analysis import frames
from sim.records.results import SUMMARY_KEYS, MemorySample, RequestRecord, SimResult, StepRecord


def test_frames_have_every_field_and_the_system() -> None:
    r = fake_result("paged(B=16)", n_req=7)
    req = frames.requests_frame(r)
    assert list(req.columns) == ["system", *[f.name for f in fields(RequestRecord)]]
    assert len(req) == 7 and set(req["system"]) == {"paged(B=16)"}
    assert req["ttft_s"].tolist() == [x.ttft_s for x in r.requests]
    st = frames.steps_frame(r)
    assert list(st.columns)[1:] == [f.name for f in fields(StepRecord)] and len(st) == 40
    mem = frames.memory_frame(r)
    assert list(mem.columns)[1:] == [f.name for f in fields(MemorySample)] and len(mem) == 30


def test_empty_records_still_have_columns() -> None:
    r = SimResult(system="max", config={})
    assert "ttft_s" in frames.requests_frame(r).columns
    assert frames.memory_frame(r).empty


def test_time_weighted_breakdown_weights_by_interval() -> None:
    # 1 s at 100% token states, then 3 s at 100% free (end at t=4): 25% / 75%.
    df = pd.DataFrame({"time_s": [0.0, 1.0], "capacity": [10.0, 10.0], "token_states": [10.0, 0.0],
                       "reserved": 0.0, "internal_frag": 0.0, "speculative": 0.0, "external_frag": 0.0,
                       "free": [0.0, 10.0]})
    b = frames.time_weighted_breakdown(df, end_s=4.0)
    assert b["token_states_pct"] == pytest.approx(25.0)
    assert b["free_pct"] == pytest.approx(75.0)
    assert sum(b.values()) == pytest.approx(100.0)


def test_breakdown_of_consistent_samples_sums_to_100() -> None:
    b = frames.time_weighted_breakdown(frames.memory_frame(fake_result(seed=3)))
    assert sum(b.values()) == pytest.approx(100.0)
    assert all(v >= 0 for v in b.values())


def test_summary_row_fills_missing_breakdown_from_memory() -> None:
    r = fake_result()
    del r.summary["token_states_pct"]
    row = frames.summary_row(r)
    expected = frames.time_weighted_breakdown(frames.memory_frame(r))["token_states_pct"]
    assert row["token_states_pct"] == pytest.approx(expected)
    assert list(row)[: len(SUMMARY_KEYS)] == list(SUMMARY_KEYS)
    assert row["num_steps"] == 40 and row["mean_step_time_s"] == pytest.approx(0.05)


def test_summary_frame_puts_summary_keys_first_and_fills_missing() -> None:
    df = frames.summary_frame([fake_result("a"), {"system": "b", "extra": 1}])
    assert list(df.columns[: len(SUMMARY_KEYS)]) == list(SUMMARY_KEYS)
    assert df["system"].tolist() == ["a", "b"]
    assert math.isnan(df.loc[1, "throughput_rps"]) and df.loc[1, "extra"] == 1


def test_latency_cdf_is_monotone_and_ends_at_one() -> None:
    req = pd.concat([frames.requests_frame(fake_result("a", seed=1)), frames.requests_frame(fake_result("b"))])
    cdf = frames.latency_cdf(req, "e2e_s")
    for _, g in cdf.groupby("system"):
        assert np.all(np.diff(g["value"]) >= 0) and g["cdf"].iloc[-1] == pytest.approx(1.0)
