"""Simulator speed: wall time, CPU time, peak RSS and simulated/wall ratio for ShareGPT-like runs.

Each size runs in its own subprocess (one core, clean peak RSS from getrusage). Default setup: OPT-13B
on an A100-40GB (~15.4K KV slots), paged-16, roofline latency, the `sharegpt` workload preset with
Poisson arrivals. "full" keeps every record (a memory sample and a StepRecord per step); "lean" keeps
request records only (record_steps=False, one memory sample per simulated second); "stream" is lean
with the records streamed to Parquet in chunks (analysis.record_writer, what `pagesim run --lean`
does) and the requests streamed in from the workload columns (TraceColumns.iter_specs), so memory
stays bounded by the live requests plus the workload columns (~88 bytes per request).

    python benchmarks/bench_engine.py                      # 1k, 10k full; 1k, 10k, 100k lean
    python benchmarks/bench_engine.py --sizes 1000 --modes full --rate 4
    python benchmarks/bench_engine.py --write benchmarks/results/engine.md
    python benchmarks/bench_engine.py --repeat 3           # best of 3 runs each (a shared machine)
    python benchmarks/bench_engine.py --modes stream --sizes 100000 1000000
    python benchmarks/bench_engine.py --columns 10000000    # RSS of a 10M-request workload's columns only

Before/after comparisons: `--repo DIR` runs the simulator of another checkout of this repository,
e.g. `git archive 8e77fe4 | tar -x -C /tmp/before` (the workload generator and the measurement are
this script's, the simulator is DIR's).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
import timeit
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def one(n: int, rate: float, mode: str, seed: int) -> dict[str, object]:
    """Run one simulation in this process and return its figures."""
    import numpy as np

    from sim.config import SimConfig
    from sim.engine import simulate
    from workloads.synthetic import generate

    lean = mode in ("lean", "stream")
    config = SimConfig(record_steps=not lean, memory_sample_interval_s=1.0 if lean else None)
    if mode == "stream":
        import tempfile

        from analysis.record_writer import RecordFileWriter
        from workloads.synthetic import generate_columns

        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        w0, c0 = time.perf_counter(), time.process_time()
        cols = generate_columns("sharegpt", n, rate, np.random.default_rng(seed))
        with tempfile.TemporaryDirectory() as tmp, RecordFileWriter(Path(tmp), "paged-16") as sink:
            res = simulate(cols.iter_specs(), config, rng=seed, record_sink=sink)
            rows = sink.rows("requests")
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
        assert rows == n, f"{rows} request records written for {n} requests"
    else:
        reqs = generate("sharegpt", n, rate, np.random.default_rng(seed))
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        w0, c0 = time.perf_counter(), time.process_time()
        res = simulate(reqs, config, rng=seed)
        wall, cpu = time.perf_counter() - w0, time.process_time() - c0
    s = res.summary
    return {
        "requests": n, "rate": rate, "mode": mode, "wall_s": wall, "cpu_s": cpu,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rss_before_run_mb": rss0 / 1024,
        "steps": s["num_steps"], "us_per_step": 1e6 * cpu / max(s["num_steps"], 1),
        "sim_s": s["duration_s"], "sim_per_wall": s["duration_s"] / wall,
        "finished": s["num_finished"], "rejected": s["num_rejected"], "preemptions": s["num_preemptions"],
        "mean_batch": s["mean_batch_size"], "memory_samples": len(res.memory), "step_records": len(res.steps),
    }


def machine() -> str:
    """A line describing the machine and a pure-Python / small-NumPy speed reference."""
    py = min(timeit.repeat("sum(range(100))", number=20000, repeat=5)) / 20000 * 1e6
    npy = min(timeit.repeat("a + 5", setup="import numpy as np; a = np.arange(30)", number=20000,
                            repeat=5)) / 20000 * 1e6
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, Python "
            f"{platform.python_version()}; reference: sum(range(100)) {py:.2f} us, small NumPy add "
            f"{npy:.2f} us; load average {load:.2f} when started")


def table(rows: list[dict[str, object]]) -> str:
    """Markdown table of the runs."""
    head = ("| requests | mode | wall s | CPU s | peak RSS MB | steps | us/step | simulated s | sim/wall | "
            "finished | rejected | preemptions | mean batch |")
    lines = [head, "|" + "---:|" * 13]
    for r in rows:
        lines.append(
            f"| {r['requests']:,} | {r['mode']} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_rss_mb']:.0f} | "
            f"{r['steps']:,} | {r['us_per_step']:.1f} | {r['sim_s']:,.0f} | {r['sim_per_wall']:,.0f} | "
            f"{r['finished']:,} | {r['rejected']:,} | {r['preemptions']:,} | {r['mean_batch']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000])
    ap.add_argument("--modes", nargs="+", default=["full", "lean"], choices=["full", "lean", "stream"])
    ap.add_argument("--columns", type=int, help="only build N requests' workload columns; print the peak RSS")
    ap.add_argument("--full-max", type=int, default=10000, help="largest size run in full mode")
    ap.add_argument("--rate", type=float, default=2.0, help="requests per second (the paper's 2 req/s)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--write", type=Path, help="also write a Markdown report here")
    ap.add_argument("--repo", type=Path, default=REPO, help="checkout whose simulator runs (default: this one)")
    ap.add_argument("--repeat", type=int, default=1, help="runs per point; the one with the least CPU time is kept")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="full", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.one:
        print(json.dumps(one(a.one, a.rate, a.mode, a.seed)))
        return
    if a.columns:
        import numpy as np

        from workloads.synthetic import generate_columns

        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        t0 = time.perf_counter()
        cols = generate_columns("sharegpt", a.columns, a.rate, np.random.default_rng(a.seed))
        print(json.dumps({"requests": len(cols), "seconds": round(time.perf_counter() - t0, 2),
                          "rss_before_mb": round(rss0), "peak_rss_mb": round(
                              resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))
        return
    if not (a.repo / "sim" / "engine.py").is_file():
        ap.error(f"--repo {a.repo}: no sim/engine.py there (valid: a checkout of this repository)")
    if a.repeat < 1:
        ap.error(f"--repeat {a.repeat} out of range (valid: >= 1)")
    info = machine()
    print(info, flush=True)
    rows = []
    for mode in a.modes:
        for n in a.sizes:
            if mode == "full" and n > a.full_max:
                continue
            cmd = [sys.executable, __file__, "--one", str(n), "--mode", mode, "--rate", str(a.rate),
                   "--seed", str(a.seed)]
            # The simulator under test comes first on the path; workloads from this checkout if it has none.
            path = os.pathsep.join(dict.fromkeys([str(a.repo.resolve()), str(REPO)]))
            env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
            runs = []
            for _ in range(a.repeat):
                out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env, cwd=a.repo)
                runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            row = min(runs, key=lambda r: r["cpu_s"])
            row["cpu_s_runs"] = [round(r["cpu_s"], 2) for r in runs]
            rows.append(row)
            print(f"{n:>7,} {mode:4s}: wall {row['wall_s']:.2f} s, CPU {row['cpu_s']:.2f} s, "
                  f"peak RSS {row['peak_rss_mb']:.0f} MB, {row['steps']:,} steps "
                  f"({row['us_per_step']:.1f} us/step), sim/wall {row['sim_per_wall']:,.0f}", flush=True)
    md = table(rows)
    print(md)
    if a.write:
        a.write.parent.mkdir(parents=True, exist_ok=True)
        a.write.write_text(f"Machine: {info}\n\nSimulator: {a.repo}; rate {a.rate} req/s, seed {a.seed}, best of "
                           f"{a.repeat}.\n\n{md}\n")


if __name__ == "__main__":
    main()
