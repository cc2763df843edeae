"""The capacity search over the sweep executors: a known answer through a model point function,
resume (cut short, continued, nothing redone), failures, and real simulations reproducing exactly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis.capacity.runner import capacity_point, nominal_rate, run_capacity, scaled
from analysis.capacity.search import SearchSpec
from analysis.capacity.slo import parse_targets
from analysis.experiment import Experiment

SLOPE = {"paged": 1.0, "max": 4.0}  # p99 TTFT = SLOPE * rate / 10: with ttft_p99 <= 0.5, capacity 5 and 1.25
TARGETS = parse_targets(["ttft_p99=0.5", "tpot_p50=0.05"])
SPEC = SearchSpec(rel_tol=0.01)


def model_point(base: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A latency model with a known knee (module level: picklable for worker processes)."""
    if params["system"] == "boom" or params["rate"] == 4.0 and base.get("seed") == 99:
        raise RuntimeError("simulated crash")
    speedup = {"prefix-aware": 2.0}.get(params.get("router", ""), 1.0)
    return {"system": params["system"], "p99_ttft": SLOPE[params["system"]] * params["rate"] / 10 / speedup,
            "p50_tpot": 0.01}


def exp(**kw: Any) -> Experiment:
    return Experiment(systems=("paged", "max"), **kw)


def log_ids(out: Path) -> list[str]:
    return [json.loads(line)["point_id"] for line in (out / "points.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("executor", ["serial", "process"])
def test_known_answer_through_the_runner(tmp_path: Path, executor: str) -> None:
    res = run_capacity(exp(), TARGETS, tmp_path, SPEC, executor=executor, workers=2, point_fn=model_point)
    cap = res.capacity.set_index("system")
    assert 5.0 / 1.01 <= cap.loc["paged", "capacity_rps"] <= 5.0 < cap.loc["paged", "lowest_fail_rps"]
    assert 1.25 / 1.01 <= cap.loc["max", "capacity_rps"] <= 1.25 < cap.loc["max", "lowest_fail_rps"]
    assert (cap["binding"] == "ttft_p99").all() and (cap["reason"] == "converged").all()
    assert cap.loc["max", "ratio_vs_paged"] == pytest.approx(0.25, rel=0.02)
    assert pd.read_csv(tmp_path / "capacity.csv")["capacity_rps"].tolist() == res.capacity["capacity_rps"].tolist()
    ids = log_ids(tmp_path)
    assert len(ids) == len(set(ids)) == len(res.points) == res.ran  # every point once, written as it ran


def test_k_ary_rounds_reach_the_same_bracket_in_fewer_rounds(tmp_path: Path) -> None:
    spec3 = SearchSpec(rel_tol=0.01, per_round=3)
    res = run_capacity(exp(), TARGETS, tmp_path, spec3, executor="process", workers=2, point_fn=model_point)
    cap = res.capacity.set_index("system")
    assert 5.0 / 1.01 <= cap.loc["paged", "capacity_rps"] <= 5.0 < cap.loc["paged", "lowest_fail_rps"]
    one = run_capacity(exp(), TARGETS, tmp_path / "one", SPEC, executor="serial", point_fn=model_point)
    # three rates per round: more points, but the rounds (what a parallel run waits for) are fewer
    assert res.capacity["evaluations"].sum() > one.capacity["evaluations"].sum()
    assert res.rounds < one.rounds


def test_known_answer_on_a_dask_cluster(tmp_path: Path) -> None:
    from dask import distributed

    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster, distributed.Client(cluster) as client:
        res = run_capacity(exp(), TARGETS, tmp_path, SPEC, executor="dask", client=client, point_fn=model_point)
    serial = run_capacity(exp(), TARGETS, tmp_path / "serial", SPEC, executor="serial", point_fn=model_point)
    pd.testing.assert_frame_equal(res.capacity, serial.capacity)  # the executor does not change the answer


def test_cut_short_then_resumed_gives_the_same_answer_without_redoing_points(tmp_path: Path) -> None:
    full = run_capacity(exp(), TARGETS, tmp_path / "full", SPEC, executor="serial", point_fn=model_point)
    part = tmp_path / "part"
    cut = run_capacity(exp(), TARGETS, part, SPEC, executor="serial", point_fn=model_point, max_rounds=3)
    assert (cut.capacity["reason"] == "unfinished").all()
    done = log_ids(part)
    res = run_capacity(exp(), TARGETS, part, SPEC, executor="serial", point_fn=model_point, resume=True)
    pd.testing.assert_frame_equal(res.capacity, full.capacity)
    assert res.reused == len(done) and res.ran == len(full.points) - len(done)
    assert log_ids(part)[: len(done)] == done and len(set(log_ids(part))) == len(log_ids(part))
    again = run_capacity(exp(), TARGETS, part, SPEC, executor="serial", point_fn=model_point, resume=True)
    assert again.ran == 0  # a finished search resumes to the same answer at no cost
    # new targets reuse the simulated points: only rates not yet evaluated run
    looser = run_capacity(exp(), parse_targets(["ttft_p99=0.6"]), part, SPEC, executor="serial",
                          point_fn=model_point, resume=True)
    assert looser.capacity.set_index("system").loc["paged", "capacity_rps"] == pytest.approx(6.0, rel=0.011)
    assert looser.reused > 0


def test_one_search_per_system_and_router(tmp_path: Path) -> None:
    e = Experiment(systems=("paged",), replicas=2, prefix_caching=True)
    res = run_capacity(e, TARGETS, tmp_path, SPEC, executor="serial", point_fn=model_point,
                       vary={"router": ["round-robin", "prefix-aware"]})
    cap = res.capacity.set_index("series")
    assert list(cap.index) == ["paged@router=round-robin", "paged@router=prefix-aware"]
    assert cap.loc["paged@router=prefix-aware", "capacity_rps"] == pytest.approx(10.0, rel=0.011)
    assert cap.loc["paged@router=prefix-aware", "ratio_vs_paged@router=round-robin"] == pytest.approx(2.0, rel=0.03)
    assert cap["label"].tolist() == ["paged router=round-robin", "paged router=prefix-aware"]
    assert set(res.points["router"]) == {"round-robin", "prefix-aware"}
    with pytest.raises(ValueError, match="router"):
        run_capacity(e, TARGETS, tmp_path / "bad", SPEC, executor="serial", point_fn=model_point,
                     vary={"router": ["hash"]})


def test_adding_a_system_keeps_the_simulated_points(tmp_path: Path) -> None:
    run_capacity(Experiment(systems=("paged",)), TARGETS, tmp_path, SPEC, executor="serial", point_fn=model_point)
    more = run_capacity(exp(), TARGETS, tmp_path, SPEC, executor="serial", point_fn=model_point, resume=True)
    assert more.reused > 0 and set(more.points.loc[~more.points["series"].eq("paged"), "series"]) == {"max"}
    assert more.ran == int((more.points["series"] == "max").sum())  # only the new system's points ran


def test_existing_search_needs_resume(tmp_path: Path) -> None:
    run_capacity(exp(), TARGETS, tmp_path, SPEC, executor="serial", point_fn=model_point, max_rounds=1)
    with pytest.raises(ValueError, match="resume"):
        run_capacity(exp(), TARGETS, tmp_path, SPEC, executor="serial", point_fn=model_point)


def test_a_crashing_point_stops_that_systems_search_only(tmp_path: Path) -> None:
    res = run_capacity(exp(seed=99), TARGETS, tmp_path, SPEC, executor="serial", point_fn=model_point)
    cap = res.capacity.set_index("system")
    assert cap.loc["paged", "reason"].startswith("error: rate 4: RuntimeError: simulated crash")
    assert cap.loc["max", "reason"] == "converged"  # its search never tried rate 4 (it failed at 2)
    assert res.failed and "paged" in res.failed[0]


def test_scaling_keeps_the_pattern(tmp_path: Path) -> None:
    from analysis.api import build_workload

    e = Experiment(systems=("paged",)).with_overrides({"num_requests": 20, "rate": 4.0})
    specs, _ = build_workload(e)
    assert nominal_rate(e, specs) == 4.0
    fast = scaled(specs, 0.5)
    assert [f.arrival_time for f in fast] == [s.arrival_time * 0.5 for s in specs]
    assert [(f.prompt_len, f.output_len) for f in fast] == [(s.prompt_len, s.output_len) for s in specs]


def test_real_capacity_reproduces_and_paged_beats_max(tmp_path: Path) -> None:
    e = Experiment(systems=("paged", "max")).with_overrides({"num_requests": 60})
    targets = parse_targets(["ttft_p99=2", "tpot_p50=0.05"])
    spec = SearchSpec(rel_tol=0.1)
    one = run_capacity(e, targets, tmp_path / "a", spec, executor="serial")
    two = run_capacity(e, targets, tmp_path / "b", spec, executor="serial")
    pd.testing.assert_frame_equal(one.capacity, two.capacity)  # same seeds, same answer
    cap = one.capacity.set_index("system")["capacity_rps"]
    assert cap["paged"] > 1.5 * cap["max"] > 0
    # the point function alone: a rate's row is the same every time
    base = e.to_dict()
    a, b = (pd.Series(capacity_point(base, {"system": "paged", "rate": 2.0})) for _ in range(2))
    pd.testing.assert_series_equal(a, b)


def test_cli_capacity(tmp_path: Path) -> None:
    out = tmp_path / "cap"
    args = [sys.executable, "-m", "analysis.cli", "capacity", "--slo", "ttft_p99=2", "-n", "40",
            "--systems", "paged,max", "--executor", "serial", "--rel-tol", "0.2", "--out", str(out)]
    r = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "Capacity (highest rate meeting every target)" in r.stdout and "contig-max" in r.stdout
    cap = pd.read_csv(out / "capacity.csv")
    assert cap["system"].tolist() == ["paged", "max"] and (cap["capacity_rps"] > 0).all()
    assert (out / "plots" / "capacity_latency.png").stat().st_size > 1000
    r2 = subprocess.run([*args, "--resume"], capture_output=True, text=True, timeout=300)
    assert r2.returncode == 0 and "(0 run now" in r2.stdout
    bad = subprocess.run([sys.executable, "-m", "analysis.cli", "capacity", "--slo", "ttft_p95=2"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--slo 'ttft_p95=2'" in bad.stderr
    r3 = subprocess.run(args, capture_output=True, text=True, timeout=60)  # exists, no --resume
    assert r3.returncode == 2 and "resume" in r3.stderr
