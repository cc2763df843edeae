"""How long the user-facing commands take: default `pagesim compare`, its phases, and a sweep.

Target (issue #5): the default `pagesim compare` (OPT-13B, A100-40GB, 300 ShareGPT-like requests)
finishes in well under a minute on one core. Prints the figures and writes them to
benchmarks/results/cli.txt.

    python benchmarks/bench_cli.py            # ~1-2 min
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results" / "cli.txt"


def timed(label: str, fn: Callable[[], Any], lines: list[str]) -> Any:
    t0 = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t0
    lines.append(f"{label:<58} {dt:8.2f} s")
    print(lines[-1], flush=True)
    return out


def main() -> None:
    lines = [f"# pagesim CLI timings ({platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} CPUs, Python {platform.python_version()}, {time.strftime('%Y-%m-%d')})"]
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        timed("pagesim --version (import cost)",
              lambda: subprocess.run([sys.executable, "-m", "analysis.cli", "--version"], check=True,
                                     capture_output=True, env=env), lines)
        timed("pagesim compare (defaults; simulate + plots + report)",
              lambda: subprocess.run([sys.executable, "-m", "analysis.cli", "compare", "--out", f"{tmp}/cmp"],
                                     check=True, capture_output=True, env=env), lines)
        from analysis import api, report
        from analysis.results_io import load_results

        exp = api.experiment()
        specs, _ = timed("  build workload (300 requests)", lambda: api.build_workload(exp), lines)
        for system in exp.systems:
            timed(f"  simulate {system}", functools.partial(api.simulate_system, exp, system, specs), lines)
        bundle = load_results(f"{tmp}/cmp")
        timed("  draw plots (3 figures, PNG + SVG)", lambda: report.render_plots(bundle), lines)
        timed("  write report (plots reused)", lambda: report.build_report(f"{tmp}/cmp"), lines)
        axes = {"block_size": [8, 16, 32, 64]}
        timed("sweep 4 points x 300 requests, serial",
              lambda: api.sweep(axes, out=f"{tmp}/s1", executor="serial", systems=["paged"]), lines)
        timed("sweep 4 points x 300 requests, 2 worker processes",
              lambda: api.sweep(axes, out=f"{tmp}/s2", executor="process", workers=2, systems=["paged"]), lines)
    lines.append(f"# load average during the run (shared machine): {os.getloadavg()[0]:.1f}")
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
