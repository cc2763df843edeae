"""Interrupting and re-running the CLI: Ctrl-C of a Dask sweep, re-used --out folders, lean runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from clikit import cli

from analysis.results_io import load_results

REPO = Path(__file__).resolve().parents[2]


def _popen(*args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "analysis.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=REPO, env=env, start_new_session=True)


def test_ctrl_c_of_a_dask_sweep_prints_one_clean_message(tmp_path: Path) -> None:
    pytest.importorskip("dask.distributed", reason="the Dask executor needs dask[distributed]")
    out = tmp_path / "sweep"
    proc = _popen("sweep", "--executor", "dask", "--workers", "1", "--systems", "paged", "--rates", "1,2,3,4,5,6",
                  "-n", "3000", "--no-progress", "--no-report", "--out", str(out))
    try:
        t0 = time.monotonic()
        while not (out / "points.jsonl").exists():  # the cluster is up and a point has finished
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() - t0 < 180, "the Dask sweep made no progress"
            time.sleep(0.1)
        t1 = time.monotonic()
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C sends: every process of the group
        stdout, stderr = proc.communicate(timeout=60)
        assert time.monotonic() - t1 < 60
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "KeyboardInterrupt" not in stderr, stderr
    lines = [x for x in stderr.splitlines() if x.strip()]
    # the "sweep over ... -> DIR" banner (wrapped to the terminal width) and the one interrupted message
    assert lines[0].startswith("sweep over"), stderr
    banner = next(i for i, x in enumerate(lines) if str(out) in x or x.rstrip().endswith("->"))
    rest = lines[banner + 1:]
    rest = rest[1:] if rest and rest[0].strip() == str(out) else rest
    assert len(rest) == 1 and "interrupted" in rest[0] and "--resume" in rest[0], stderr



def test_reusing_an_out_folder_never_mixes_runs(tmp_path: Path) -> None:
    out = tmp_path / "o"
    code, _, err = cli("run", "--system", "paged-32", "-n", "30", "--no-plots", "--out", out)
    assert code == 0, err
    code, _, err = cli("run", "--system", "max", "-n", "30", "--no-plots", "--out", out)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert f"--out {out}: already holds results" in err and "--overwrite" in err
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["paged-32"]  # untouched
    (out / "notes.txt").write_text("mine")
    code, _, err = cli("run", "--system", "max", "-n", "30", "--no-plots", "--overwrite", "--out", out)
    assert code == 0, err
    assert sorted(p.name for p in (out / "runs").iterdir()) == ["contig-max"]
    assert pd.read_csv(out / "summary.csv")["system"].tolist() == ["contig-max"]
    assert set(load_results(out).requests["system"]) == {"contig-max"}  # what the report reads
    assert (out / "notes.txt").read_text() == "mine"  # only pagesim's own outputs are cleared
    # a sweep into a run's folder, or resuming a sweep that is not there, is refused too
    code, _, err = cli("sweep", "--block-sizes", "8,16", "-n", "20", "--no-progress", "--out", out)
    assert code == 2 and "already holds results" in err, err
    code, _, err = cli("sweep", "--block-sizes", "8,16", "-n", "20", "--no-progress", "--resume", "--out", out)
    assert code == 2 and "no sweep to resume" in err, err
    code, _, err = cli("sweep", "--block-sizes", "8,16", "-n", "20", "--systems", "paged", "--no-progress",
                       "--no-report", "--overwrite", "--out", out)
    assert code == 0, err
    assert not (out / "runs").exists() and len(pd.read_csv(out / "summary.csv")) == 2


def test_lean_run_streams_records_that_match_the_full_run(tmp_path: Path) -> None:
    code, _, err = cli("run", "-n", "400", "--rate", "4", "--no-plots", "--out", tmp_path / "full")
    assert code == 0, err
    code, _, err = cli("run", "-n", "400", "--rate", "4", "--lean", "--csv", "--out", tmp_path / "lean")
    assert code == 0, err
    assert "--lean: no plots or report" in err and "400 requests" in err
    run_full, run_lean = tmp_path / "full" / "runs" / "paged-16", tmp_path / "lean" / "runs" / "paged-16"
    a = pd.read_parquet(run_full / "requests.parquet").sort_values("req_id", ignore_index=True)
    b = pd.read_parquet(run_lean / "requests.parquet").sort_values("req_id", ignore_index=True)
    pd.testing.assert_frame_equal(a, b, check_dtype=False)
    assert len(pd.read_csv(run_lean / "requests.csv")) == 400
    assert pd.read_parquet(run_lean / "steps.parquet").empty and not (run_lean / "monitor.parquet").exists()
    assert len(pd.read_parquet(run_lean / "memory.parquet")) > 10  # one sample per simulated second
    sf, sl = pd.read_csv(tmp_path / "full" / "summary.csv"), pd.read_csv(tmp_path / "lean" / "summary.csv")
    for k in ("num_requests", "num_finished", "num_rejected", "num_steps", "throughput_rps", "mean_ttft_s",
              "mean_tpot_s", "mean_batch_size"):
        assert sl.loc[0, k] == pytest.approx(sf.loc[0, k], rel=1e-9), k
    assert sl.loc[0, "p99_ttft"] == pytest.approx(sf.loc[0, "p99_ttft"], rel=4e-4)
