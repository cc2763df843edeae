"""Pandas views and summaries of workloads, and the specs <-> columns round trip."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from sim.request import RequestSpec
from workloads import generate, summarize, to_frame
from workloads.columns import TraceColumns
from workloads.frames import FRAME_COLUMNS


def test_frame_from_specs_and_columns_agree():
    specs = generate("sharegpt-sysprompt", 300, 5.0, np.random.default_rng(0))
    cols = TraceColumns.from_specs(specs)
    a, b = to_frame(specs), to_frame(cols)
    assert tuple(a.columns) == FRAME_COLUMNS and list(b.columns) == [*FRAME_COLUMNS, "line"]
    pd.testing.assert_frame_equal(a, b.drop(columns="line"), check_dtype=False)
    assert a["num_prefix_ids"].tolist() == [len(s.prefix_hashes) for s in specs]
    assert summarize(a) == summarize(specs) == summarize(cols)


def test_round_trip_and_arrival_order():
    specs = [RequestSpec("b", 2.0, 10, 5, cancel_time=1.0), RequestSpec("a", 1.0, 20, 6, n=2),
             RequestSpec("c", 1.0, 30, 7, prefix_hashes=(4, 5), prefix_unit=8)]
    cols = TraceColumns.from_specs(specs)
    cols.check_invariants()
    assert cols.req_id.tolist() == ["a", "c", "b"]  # stable sort by arrival
    assert cols.to_specs() == [specs[1], specs[2], specs[0]]
    assert list(cols.iter_specs()) == cols.to_specs()


def test_summary_definitions():
    t = np.array([0.0, 0.5, 1.0, 4.0])
    cols = TraceColumns.build(t, np.array([1, 2, 3, 4]), np.array([4, 3, 2, 1]))
    s = summarize(cols)
    gaps = np.diff(t)
    assert s["rows"] == 4 and s["span_s"] == 4.0 and s["mean_rate"] == 1.0
    assert s["interarrival_cv"] == pytest.approx(gaps.std() / gaps.mean())
    counts = np.array([2, 1, 0, 0, 1])  # 1-second bins from the first arrival
    assert s["iod_1s"] == pytest.approx(counts.var() / counts.mean()) and s["max_per_second"] == 2
    assert s["prompt"]["p50"] == 2.5 and s["output"]["max"] == 4
    one = summarize(TraceColumns.build([3.0], [1], [1]))
    assert one["rows"] == 1 and math.isinf(one["mean_rate"]) and math.isnan(one["interarrival_cv"])


def test_check_invariants_catches_breakage():
    cols = TraceColumns.build([0.0, 1.0], [10, 10], [1, 1])
    cols.arrival = np.array([1.0, 0.0])
    with pytest.raises(AssertionError, match="non-decreasing"):
        cols.check_invariants()
    cols = TraceColumns.build([0.0], [10], [1], prefix_hashes=[(1, 2, 3)], prefix_unit=8)  # ceil(10/8) = 2
    with pytest.raises(AssertionError, match="past the prompt"):
        cols.check_invariants()
