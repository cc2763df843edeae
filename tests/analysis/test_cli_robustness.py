"""Interrupting and re-running the CLI: Ctrl-C of a Dask sweep, re-used --out folders, lean runs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
    # the "sweep over ..." banner and the one interrupted message, nothing else
    assert len(lines) <= 2 and "interrupted" in lines[-1] and "--resume" in lines[-1], stderr
