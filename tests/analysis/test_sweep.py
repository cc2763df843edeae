"""Sweeps: stable ids, failed points recorded, process/serial/dask executors, resume after a kill or Ctrl-C."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from paths import TESTS
from simfakes import point_lines, slow_point

from analysis.sweep import expand_grid, point_id, run_sweep

REPO = TESTS.parent


def test_point_ids_are_stable_and_grid_is_a_product() -> None:
    pts = expand_grid({"a": [1, 2], "b": ["x", "y", "x"]}, {"c": 0})
    assert [p.params for p in pts] == [{"c": 0, "a": 1, "b": "x"}, {"c": 0, "a": 1, "b": "y"},
                                       {"c": 0, "a": 2, "b": "x"}, {"c": 0, "a": 2, "b": "y"}]
    assert pts[0].point_id == point_id({"b": "x", "a": 1, "c": 0})  # key order does not matter
    assert len({p.point_id for p in pts}) == 4
    with pytest.raises(ValueError, match="axis 'b' has no values"):
        expand_grid({"a": [1], "b": []})


def test_failed_point_is_recorded_and_the_sweep_goes_on(tmp_path: Path) -> None:
    pts = expand_grid({"x": [1, 2, 3]}, {"fail": [2]})
    out = run_sweep(pts, slow_point, tmp_path, executor="serial", progress=False)
    assert (out.total, out.ran, out.failed, out.interrupted) == (3, 3, 1, False)
    s = pd.read_csv(tmp_path / "summary.csv")
    assert s["status"].tolist() == ["ok", "failed", "ok"]
    assert s.loc[1, "error"] == "RuntimeError: point x=2 failed on purpose"
    assert s.loc[2, "throughput_rps"] == 6.0 and s["x"].tolist() == [1, 2, 3]
    rec = [json.loads(x) for x in point_lines(tmp_path)][1]
    assert "Traceback" in rec["traceback"] and rec["params"] == {"fail": [2], "x": 2}


def test_existing_sweep_needs_resume_and_resume_skips_done(tmp_path: Path) -> None:
    calls = tmp_path / "calls.txt"
    base = {"calls_file": str(calls), "fail": [2]}
    run_sweep(expand_grid({"x": [1, 2]}, base), slow_point, tmp_path, executor="serial", progress=False)
    with pytest.raises(ValueError, match="--resume"):
        run_sweep(expand_grid({"x": [1, 2]}, base), slow_point, tmp_path, executor="serial", progress=False)
    # A grown grid: only the new point runs; the failed one is kept as failed.
    out = run_sweep(expand_grid({"x": [1, 2, 3]}, base), slow_point, tmp_path, executor="serial",
                    progress=False, resume=True)
    assert (out.ran, out.skipped) == (1, 2)
    assert calls.read_text().split() == ["1", "2", "3"]
    out = run_sweep(expand_grid({"x": [1, 2, 3]}, base), slow_point, tmp_path, executor="serial",
                    progress=False, resume=True, retry_failed=True)
    assert (out.ran, out.skipped, out.failed) == (1, 2, 1)
    assert len(pd.read_csv(tmp_path / "summary.csv")) == 3


def test_process_executor_matches_serial_and_uses_workers(tmp_path: Path) -> None:
    pts = expand_grid({"x": [1, 2, 3, 4]}, {"sleep": 0.2})
    out = run_sweep(pts, slow_point, tmp_path / "p", executor="process", workers=2, progress=False)
    assert out.ran == 4 and out.failed == 0
    s = pd.read_csv(tmp_path / "p" / "summary.csv")
    assert s["throughput_rps"].tolist() == [2.0, 4.0, 6.0, 8.0]  # grid order, not finishing order
    assert os.getpid() not in set(s["pid"]) and s["pid"].nunique() == 2


def test_bad_executor_and_workers(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="valid: process, serial, dask"):
        run_sweep([], slow_point, tmp_path, executor="threads")
    with pytest.raises(ValueError, match="workers = 0"):
        run_sweep([], slow_point, tmp_path, workers=0)


_SCRIPT = textwrap.dedent("""
    import sys
    sys.path[:0] = [{tests!r}, {repo!r}]
    from simfakes import slow_point
    from analysis.sweep import expand_grid, run_sweep
    pts = expand_grid({{"x": list(range(1, 11))}}, {base!r})
    out = run_sweep(pts, slow_point, {out!r}, executor="process", workers=2, progress=False, resume=True)
    print("interrupted" if out.interrupted else "complete", out.ran, flush=True)
    sys.exit(130 if out.interrupted else 0)
""")
GATE_FROM = 5  # points x >= 5 wait for the gate file: the sweep cannot end before the test interrupts it


def _base(tmp_path: Path) -> dict[str, object]:
    return {"sleep": 0.25, "calls_file": str(tmp_path / "calls.txt"), "gate": str(tmp_path / "gate"),
            "gate_from": GATE_FROM}


def _start(tmp_path: Path) -> subprocess.Popen[str]:
    script = _SCRIPT.format(tests=str(TESTS), repo=str(REPO), base=_base(tmp_path), out=str(tmp_path / "out"))
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)


def _wait_for_points(out: Path, n: int, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    t0 = time.monotonic()
    while len(point_lines(out)) < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "sweep made no progress"
        time.sleep(0.05)


def _resume_and_check(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (tmp_path / "gate").touch()  # let the held-back points run now
    before = {json.loads(x)["point_id"] for x in point_lines(out) if x.endswith("}")}
    calls_before = (tmp_path / "calls.txt").read_text().split()
    pts = expand_grid({"x": list(range(1, 11))}, _base(tmp_path))
    res = run_sweep(pts, slow_point, out, executor="serial", progress=False, resume=True)
    assert res.skipped == len(before) and res.ran == 10 - len(before)
    ids = [json.loads(x)["point_id"] for x in point_lines(out)]
    assert len(ids) == len(set(ids)) == 10  # nothing redone, nothing duplicated
    calls_after = (tmp_path / "calls.txt").read_text().split()[len(calls_before):]
    done_x = {p.params["x"] for p in pts if p.point_id in before}
    assert not done_x & {int(x) for x in calls_after}
    assert sorted(pd.read_csv(out / "summary.csv")["x"]) == list(range(1, 11))


def test_resume_after_killing_a_sweep_midway(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    _wait_for_points(tmp_path / "out", 3, proc)
    os.killpg(proc.pid, signal.SIGKILL)  # the whole group: parent and its worker processes
    proc.wait(timeout=30)
    assert 3 <= len(point_lines(tmp_path / "out")) < GATE_FROM
    _resume_and_check(tmp_path)


def test_ctrl_c_keeps_finished_points_and_exits_cleanly(tmp_path: Path) -> None:
    proc = _start(tmp_path)
    _wait_for_points(tmp_path / "out", 2, proc)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends
    stdout, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stdout.startswith("interrupted")
    assert "Traceback" not in stderr
    kept = len(point_lines(tmp_path / "out"))
    assert int(stdout.split()[1]) == kept and len(pd.read_csv(tmp_path / "out" / "summary.csv")) == kept
    _resume_and_check(tmp_path)


def _children(pid: int) -> list[int]:
    """Processes whose parent is `pid` (Linux /proc)."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                stat = (d / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d.name))
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")  # a zombie has exited


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="lists worker processes through Linux /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_no_worker_outlives_a_killed_sweep(tmp_path: Path, sig: signal.Signals) -> None:
    proc = _start(tmp_path)
    try:
        _wait_for_points(tmp_path / "out", 2, proc)
        workers = _children(proc.pid)
        assert len(workers) == 2, workers
        os.kill(proc.pid, sig)  # the parent alone, as `kill` or a job scheduler does
        stdout, stderr = proc.communicate(timeout=60)
        t0 = time.monotonic()
        while any(map(_alive, workers)) and time.monotonic() - t0 < 10:
            time.sleep(0.05)
        assert not [w for w in workers if _alive(w)], "worker processes outlived their sweep"
        if sig == signal.SIGTERM:  # handled like Ctrl-C: finished points kept, a clean exit
            assert proc.returncode == 130 and stdout.startswith("interrupted"), stderr
            assert "Traceback" not in stderr
        _resume_and_check(tmp_path)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # leave nothing behind if the test failed


def test_dask_local_cluster(tmp_path: Path) -> None:
    from dask import distributed
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False,
                                  dashboard_address=":0") as cluster:
        pts = expand_grid({"x": [1, 2, 3]}, {"fail": [3]})
        out = run_sweep(pts, slow_point, tmp_path, executor="dask", scheduler=cluster.scheduler_address,
                        progress=False)
    assert (out.ran, out.failed) == (3, 1)
    s = pd.read_csv(tmp_path / "summary.csv")
    assert s["status"].tolist() == ["ok", "ok", "failed"] and s.loc[1, "throughput_rps"] == 4.0
