"""Trace options: time window, first N, rate scaling and the max_model_len rule, with their counts."""

from __future__ import annotations

import numpy as np
import pytest

from workloads import WorkloadError
from workloads.columns import TraceColumns
from workloads.frames import summarize
from workloads.transforms import (
    TraceOptions,
    apply_options,
    first_n,
    limit_length,
    mean_rate,
    scale_to_rate,
    time_window,
)


def cols(arrival, prompt=None, output=None, **kw) -> TraceColumns:
    k = len(arrival)
    c = TraceColumns.build(np.asarray(arrival, float), prompt if prompt is not None else [10] * k,
                           output if output is not None else [5] * k, **kw)
    c.check_invariants()
    return c


def test_window_rebases_and_counts():
    c, st = time_window(cols([0, 1, 2, 3, 4, 5]), 2.0, 4.0)
    assert c.arrival.tolist() == [0.0, 1.0] and c.req_id.tolist() == [2, 3]
    assert st["outside_window"] == 4
    c.check_invariants()


def test_first_n():
    c, st = first_n(cols([0, 1, 2]), 2)
    assert c.req_id.tolist() == [0, 1] and st["beyond_first_n"] == 1
    c, st = first_n(cols([0, 1, 2]), 10)
    assert len(c) == 3 and st["beyond_first_n"] == 0


@pytest.mark.parametrize("target", [0.5, 3.0, 100.0])
def test_rate_scaling_hits_target_and_keeps_shape(target):
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.exponential(0.5, 200))
    c0 = cols(t)
    c, st = scale_to_rate(c0, target)
    assert mean_rate(c.arrival) == pytest.approx(target)
    assert st["rate_before"] == pytest.approx(mean_rate(c0.arrival))
    gaps0, gaps = np.diff(c0.arrival), np.diff(c.arrival)
    assert np.allclose(gaps / gaps0, gaps[0] / gaps0[0])  # every gap scaled by the same factor
    assert summarize(c)["interarrival_cv"] == pytest.approx(summarize(c0)["interarrival_cv"])


def test_rate_scaling_needs_gaps():
    with pytest.raises(WorkloadError, match="same instant"):
        scale_to_rate(cols([1.0, 1.0]), 2.0)


def test_max_model_len_clip():
    c = cols([0, 1, 2, 3], prompt=[100, 60, 40, 300], output=[10, 50, 10, 5],
             prefix_hashes=[(1, 2, 3, 4), (1,), (), (7, 8, 9, 10, 11)], prefix_unit=32)
    out, st = limit_length(c, 100, "clip")
    assert out.prompt.tolist() == [99, 60, 40, 99]
    assert out.output.tolist() == [1, 40, 10, 1]
    assert (st["too_long"], st["clipped_prompt"], st["clipped_output"], st["dropped_too_long"]) == (3, 2, 3, 0)
    assert out.prefix_hashes[3] == (7, 8, 9, 10)  # ids past the shortened prompt are cut
    assert c.prompt.tolist() == [100, 60, 40, 300]  # input untouched
    out.check_invariants()
    assert all(s.total_len <= 100 for s in out.to_specs())


def test_max_model_len_drop_and_error():
    c = cols([0, 1, 2], prompt=[100, 60, 40], output=[10, 50, 10], line=np.array([2, 3, 4]))
    out, st = limit_length(c, 100, "drop")
    assert out.req_id.tolist() == [2] and st["dropped_too_long"] == 2
    with pytest.raises(WorkloadError, match=r"request 0 \(line 2\).*max_model_len 100"):
        limit_length(c, 100, "error")


def test_apply_options_order():
    # 10 requests 1 s apart; request 3 is too long. window [2, 9) -> 2..8; drop 3 -> 2,4,5,6,7,8; first 4.
    c = cols(np.arange(10.0), prompt=[10, 10, 10, 500, 10, 10, 10, 10, 10, 10])
    out, st = apply_options(c, TraceOptions(window=(2.0, 9.0), max_model_len=100, too_long="drop",
                                            first_n=4, target_rate=2.0))
    assert out.req_id.tolist() == [2, 4, 5, 6]
    assert mean_rate(out.arrival) == pytest.approx(2.0) and out.arrival[0] == 0.0
    assert (st["outside_window"], st["dropped_too_long"], st["beyond_first_n"]) == (3, 1, 2)


def test_time_scale():
    out, st = apply_options(cols([0.0, 1.0, 3.0]), TraceOptions(time_scale=0.5))
    assert out.arrival.tolist() == [0.0, 0.5, 1.5] and st["time_scale"] == 0.5


@pytest.mark.parametrize("kw,needle", [
    ({"window": (5.0, 2.0)}, "window"), ({"window": (-1.0, 2.0)}, "window"), ({"first_n": 0}, "first_n"),
    ({"target_rate": 0.0}, "target_rate"), ({"target_rate": float("nan")}, "target_rate"),
    ({"time_scale": -1.0}, "time_scale"), ({"target_rate": 1.0, "time_scale": 2.0}, "both"),
    ({"max_model_len": 1}, "max_model_len"), ({"too_long": "truncate"}, "too_long"),
])
def test_bad_options_are_named(kw, needle):
    with pytest.raises(WorkloadError, match=needle):
        TraceOptions(**kw)
