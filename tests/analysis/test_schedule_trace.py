"""Schedule traces (Trace Event Format for Perfetto / chrome://tracing): structure, contents, and the
validator itself catching each kind of malformed event."""

from __future__ import annotations

import copy
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from analysis.schedule_trace import (
    EVENT_TID,
    STEP_TID,
    load_and_validate,
    trace_events,
    validate,
    write_trace,
)
from sim.cluster import ClusterSpec, simulate_cluster
from sim.config import PagedCacheSpec, SchedulerConfig, SimConfig
from sim.engine import simulate
from workloads import generate

# A pool small enough to preempt and swap: the trace must show those events.
TIGHT = SimConfig(cache=PagedCacheSpec(block_size=16), kv_capacity_tokens=3000,
                  scheduler=SchedulerConfig(preemption_mode="swap"))


@pytest.fixture(scope="module")
def reqs() -> list[Any]:
    return generate("sharegpt", 80, rate=20.0, rng=np.random.default_rng(2))


def test_single_run_trace_is_valid_and_complete(tmp_path: Path, reqs: list[Any]) -> None:
    res = simulate(reqs, TIGHT, rng=0)
    assert res.summary["num_preemptions"] > 0 and res.summary["num_swap_out_blocks"] > 0
    path = write_trace(tmp_path / "t.json", [res])
    assert load_and_validate(path) == []
    ev = json.loads(path.read_text())["traceEvents"]
    steps = [e for e in ev if e["ph"] == "X"]
    assert len(steps) == len(res.steps) and all(e["tid"] == STEP_TID for e in steps)
    assert sum(e["args"]["prefill_tokens"] + e["args"]["decode_tokens"] for e in steps) == \
        res.summary["num_prefill_tokens"] + res.summary["num_decode_tokens"]
    assert steps[0]["ts"] == res.steps[0].start_s * 1e6 and steps[5]["dur"] == res.steps[5].duration_s * 1e6
    inst = {name: sum(e["args"]["count"] for e in ev if e["ph"] == "i" and e["name"] == name)
            for name in ("preempt", "swap out", "swap in")}
    assert inst["preempt"] == sum(s.num_preempted for s in res.steps) > 0
    assert inst["swap out"] == res.summary["num_swap_out_blocks"] > 0
    assert all(e["tid"] == EVENT_TID for e in ev if e["ph"] == "i")
    free = [e["args"]["free"] for e in ev if e["ph"] == "C" and e["name"] == "kv blocks"]
    assert free == [s.blocks_free for s in res.steps]
    # one wait+prefill and one decode span per request that got its first token, ending at finish
    fin = [r for r in res.requests if r.status == "finished"]
    begins = [e for e in ev if e["ph"] == "b"]
    assert len(begins) == 2 * len(fin) and len(fin) > 70
    r0 = fin[0]
    ends = {e["name"]: e["ts"] for e in ev if e["ph"] == "e" and e["id"] == f"0:{r0.req_id}"}
    assert ends == {"wait+prefill": r0.first_token_s * 1e6, "decode": r0.finish_s * 1e6}
    assert len([e for e in trace_events([res], requests=False) if e["ph"] in "be"]) == 0


def test_cluster_trace_has_one_track_per_replica(tmp_path: Path, reqs: list[Any]) -> None:
    c = simulate_cluster(reqs, TIGHT, ClusterSpec(3, "least-outstanding"), rng=0)
    ev = trace_events(c.replicas)
    names = [e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"]
    assert names == [f"replica {i}: paged-16" for i in range(3)]
    for pid, r in enumerate(c.replicas):
        assert sum(1 for e in ev if e["ph"] == "X" and e["pid"] == pid) == len(r.steps) > 0
    assert validate({"traceEvents": ev}) == []


def good() -> dict[str, Any]:
    return {"traceEvents": [
        {"name": "process_name", "ph": "M", "pid": 0, "tid": 0, "args": {"name": "r0"}},
        {"name": "decode", "ph": "X", "pid": 0, "tid": 1, "ts": 0.0, "dur": 10.0, "args": {}},
        {"name": "decode", "ph": "X", "pid": 0, "tid": 1, "ts": 10.0, "dur": 5.0},
        {"name": "kv blocks", "ph": "C", "pid": 0, "tid": 0, "ts": 0.0, "args": {"free": 3}},
        {"name": "kv blocks", "ph": "C", "pid": 0, "tid": 0, "ts": 10.0, "args": {"free": 2}},
        {"name": "preempt", "ph": "i", "s": "t", "pid": 0, "tid": 2, "ts": 10.0},
    ], "displayTimeUnit": "ms"}


def span(phases: list[tuple[str, float]]) -> dict[str, Any]:
    d = good()
    d["traceEvents"] += [{"name": "decode", "cat": "request", "id": "0:7", "ph": ph, "ts": ts, "pid": 0}
                         for ph, ts in phases]
    return d


def broken(i: int, **change: Any) -> dict[str, Any]:
    d = copy.deepcopy(good())
    e = d["traceEvents"][i]
    for k, v in change.items():
        if v is None:
            e.pop(k)
        else:
            e[k] = v
    return d


@pytest.mark.parametrize(("doc", "msg"), [
    (broken(1, dur=None), "missing dur"),
    (broken(2, ts=5.0), "overlaps"),
    (broken(1, ph="Q"), "phase 'Q'"),
    (broken(1, ts=-1.0), "ts = -1.0"),
    (broken(1, ts=float("nan")), "ts = nan"),
    (broken(1, pid="0"), "pid = '0' is not an integer"),
    (broken(4, ts=-0.0 + 0.0, args={"free": "x"}), "counter args"),
    (broken(4, ts=0.0), ""),  # equal timestamps are fine
    (broken(3, ts=20.0), "before the previous sample"),
    (broken(5, s="z"), "instant scope"),
    (broken(0, name="process_title"), "metadata"),
    (span([("b", 5.0), ("e", 4.0)]), "before its begin"),
    (span([("e", 4.0)]), "without an open begin"),
    (span([("b", 4.0)]), "never ends"),
    (span([("b", 4.0), ("b", 5.0), ("e", 6.0)]), "begins again"),
    (span([("b", 4.0), ("e", 6.0)]), ""),
    ([], "traceEvents"),
])
def test_validator_catches_each_problem(doc: Any, msg: str) -> None:
    errs = validate(doc)
    if msg:
        assert errs and msg in errs[0], errs
    else:
        assert errs == []


def test_good_document_and_strict_json(tmp_path: Path) -> None:
    assert validate(good()) == []
    p = tmp_path / "nan.json"
    p.write_text('{"traceEvents": [{"name": "x", "ph": "X", "pid": 0, "tid": 1, "ts": NaN, "dur": 1}]}')
    assert "not valid JSON" in load_and_validate(p)[0]


def test_cli_trace_out_with_replicas(tmp_path: Path) -> None:
    trace = tmp_path / "sched.json"
    r = subprocess.run([sys.executable, "-m", "analysis.cli", "run", "-n", "40", "--rate", "8", "--replicas", "2",
                        "--router", "round-robin", "--trace-out", str(trace), "--out", str(tmp_path / "o"),
                        "--no-plots"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert load_and_validate(trace) == []
    doc = json.loads(trace.read_text())
    names = [e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"]
    assert names == ["paged-16 x2 round-robin / replica 0", "paged-16 x2 round-robin / replica 1"]
    assert "Per replica" in r.stdout
