"""Workload loading and generation speed: a 1M-row generic trace (CSV and JSONL), the real traces,
and synthetic generation. Prints a table and, with --record, writes benchmarks/results/workloads.md.

Run: python benchmarks/bench_workloads.py [--rows 1000000] [--record]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from workloads import generate_columns, load_trace

ROOT = Path(__file__).resolve().parent.parent
TRACES = ROOT.parent / "shared" / "traces"


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def write_generic(d: Path, rows: int) -> tuple[Path, Path, Path]:
    """A generic trace of `rows` requests: 3-column CSV, and CSV and JSONL with n and prefix ids."""
    rng = np.random.default_rng(0)
    t = np.cumsum(rng.exponential(0.01, rows))
    p = rng.integers(1100, 4000, rows)  # >= 2 ids of 512 tokens fit in every prompt
    o = rng.integers(1, 1000, rows)
    n = np.where(rng.random(rows) < 0.3, 2, 1)
    csv_path, jsonl_path, plain_path = d / "big.csv", d / "big.jsonl", d / "plain.csv"
    with plain_path.open("w") as f:
        f.write("arrival_time,prompt_len,output_len\n")
        f.writelines(f"{t[i]:.6f},{p[i]},{o[i]}\n" for i in range(rows))
    with csv_path.open("w") as f:
        f.write("arrival_time,prompt_len,output_len,n,prefix_hashes,prefix_unit\n")
        for i in range(rows):
            f.write(f"{t[i]:.6f},{p[i]},{o[i]},{n[i]},{i % 7} {i % 5},512\n")
    with jsonl_path.open("w") as f:
        for i in range(rows):
            f.write(json.dumps({"arrival_time": round(float(t[i]), 6), "prompt_len": int(p[i]),
                                "output_len": int(o[i]), "n": int(n[i]), "prefix_hashes": [i % 7, i % 5],
                                "prefix_unit": 512}) + "\n")
    return plain_path, csv_path, jsonl_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--record", action="store_true", help="write benchmarks/results/workloads.md")
    args = ap.parse_args()
    rows: list[tuple[str, int, float, float]] = []  # case, requests, load s, specs s
    with tempfile.TemporaryDirectory() as tmp:
        plain_path, csv_path, jsonl_path = write_generic(Path(tmp), args.rows)
        for label, path in (("generic CSV, 3 columns", plain_path), ("generic CSV + n + prefix ids", csv_path),
                            ("generic JSONL + n + prefix ids", jsonl_path)):
            res, t_load = timed(lambda path=path: load_trace(path))
            _, t_specs = timed(lambda res=res: res.specs)
            rows.append((label, len(res), t_load, t_specs))
    for label, rel in (("Azure code 2023", "azure_llm_2023/AzureLLMInferenceTrace_code.csv"),
                       ("Mooncake conversation", "mooncake_fast25/conversation_trace.jsonl")):
        if (TRACES / rel).exists():
            res, t_load = timed(lambda rel=rel: load_trace(TRACES / rel))
            _, t_specs = timed(lambda res=res: res.specs)
            rows.append((label, len(res), t_load, t_specs))
    cols, t_gen = timed(lambda: generate_columns("sharegpt-mixed", args.rows, 10.0, np.random.default_rng(0)))
    _, t_specs = timed(cols.to_specs)
    rows.append(("generate sharegpt-mixed", len(cols), t_gen, t_specs))

    lines = ["| case | requests | parse+validate (s) | -> RequestSpecs (s) | Mreq/s (parse) |",
             "|---|---:|---:|---:|---:|"]
    for label, num, t_load, t_specs in rows:
        lines.append(f"| {label} | {num:,} | {t_load:.2f} | {t_specs:.2f} | {num / t_load / 1e6:.2f} |")
    _, t_cal = timed(lambda: sum(range(10**7)))
    lines.append(f"\nCPU calibration: `sum(range(10**7))` took {t_cal:.2f} s in this run "
                 "(about 0.15-0.25 s on an idle modern core; larger means a shared or slow machine).")
    table = "\n".join(lines)
    print(table)
    if args.record:
        out = ROOT / "benchmarks" / "results" / "workloads.md"
        out.write_text(f"# workloads benchmark\n\nMachine: {platform.processor() or platform.machine()}, "
                       f"Python {platform.python_version()}, one process. Command: "
                       f"`python benchmarks/bench_workloads.py --rows {args.rows} --record`.\n\n{table}\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
