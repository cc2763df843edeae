"""`pagesim run | compare | sweep | report` through the real entry point (typer runner and a subprocess)."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd
import pytest
from clikit import cli, entry

from sim.records.results import SUMMARY_KEYS

PCTS = ["token_states_pct", "reserved_pct", "internal_frag_pct", "external_frag_pct", "speculative_pct", "free_pct"]
SMALL = ["-n", "40", "--rate", "4"]




def test_version_and_bare_command() -> None:
    r = entry("--version")
    assert r.returncode == 0 and r.stdout.strip() == "pagesim 0.1.0"
    r = entry()
    assert r.returncode == 0
    for cmd in ("run", "compare", "sweep", "report", "replay"):
        assert cmd in r.stdout


def test_compare_writes_everything_and_config_reproduces(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    r = entry("compare", *SMALL, "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "KV-cache memory breakdown" in r.stdout and "contig-oracle" in r.stdout
    s = pd.read_csv(out / "summary.csv")
    assert s["system"].tolist() == ["paged-16", "contig-max", "contig-pow2", "contig-oracle"]
    assert list(s.columns[: len(SUMMARY_KEYS)]) == list(SUMMARY_KEYS)
    assert (s[PCTS].sum(axis=1) - 100).abs().max() < 0.01
    assert (s["num_requests"] == 40).all()
    # The paper's point: contiguous max-length reservation wastes far more than paging.
    assert s.loc[1, "internal_frag_pct"] > s.loc[0, "internal_frag_pct"] + 10
    for name in ("memory_breakdown", "memory_over_time", "latency_cdf"):
        for ext in ("png", "svg"):
            assert (out / "plots" / f"{name}.{ext}").stat().st_size > 1000
    assert "<section id=\"memory-breakdown\">" in (out / "report.html").read_text()
    for kind in ("requests", "steps", "memory"):
        assert not pd.read_parquet(out / "runs" / "paged-16" / f"{kind}.parquet").empty
    # The saved effective configuration reruns to the same numbers.
    code, _, err = cli("run", "--config", str(out / "config.toml"), "--out", str(tmp_path / "again"),
                       "--no-plots")
    assert code == 0, err
    again = pd.read_csv(tmp_path / "again" / "summary.csv")
    pd.testing.assert_frame_equal(s[list(SUMMARY_KEYS)], again[list(SUMMARY_KEYS)])
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == json.loads(
        (out / "config.json").read_text())


def test_run_one_system_with_csv_and_op_log(tmp_path: Path) -> None:
    out = tmp_path / "r"
    code, stdout, err = cli("run", "--system", "paged-32", "-n", "30", "--out", str(out), "--csv", "--op-log",
                            "--no-plots", "--sampling", "n=2", "--seed", "3")
    assert code == 0, err
    s = pd.read_csv(out / "summary.csv")
    assert s["system"].tolist() == ["paged-32"] and s.loc[0, "block_size"] == 32 and s.loc[0, "n"] == 2
    d = out / "runs" / "paged-32"
    req = pd.read_csv(d / "requests.csv")
    assert len(req) == 30 and (req["n"] == 2).all()
    ops = (d / "ops.jsonl").read_text().splitlines()
    assert len(ops) > 30 and "op" in json.loads(ops[0])
    assert not (out / "plots").exists()


def test_run_a_real_trace(tmp_path: Path, traces_dir: Path) -> None:
    trace = traces_dir / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv"
    code, _, err = cli("run", "--trace", str(trace), "-n", "60", "--system", "paged", "--model", "llama-2-7b",
                       "--gpu", "a100-80gb", "--out", str(tmp_path / "t"), "--no-plots")
    assert code == 0, err
    s = pd.read_csv(tmp_path / "t" / "summary.csv")
    assert s.loc[0, "num_requests"] == 60
    cfg = json.loads((tmp_path / "t" / "config.json").read_text())
    assert cfg["workload"]["trace"] == str(trace) and cfg["workload"]["rate"] is None


@pytest.mark.parametrize(("args", "needle"), [
    (["run", "--system", "bogus"], "system 'bogus' not understood (valid: paged"),
    (["run", "--model", "gpt-5"], "field 'model' = 'gpt-5' out of range (valid: opt-13b"),
    (["run", "--rate", "-1"], "field 'workload.rate' = -1.0 out of range"),
    (["run", "--trace", "/nonexistent/trace.csv"], "workload.trace = '/nonexistent/trace.csv': file not found"),
    (["run", "--window", "5"], "--window '5' not understood"),
    (["run", "--sampling", "beam=x"], "sampling 'beam=x' not understood"),
    (["run", "--preset", "nope"], "field 'workload.preset' = 'nope' out of range (valid: sharegpt"),
    (["run", "--trace", __file__, "--format", "csv"], "field 'workload.format' = 'csv' out of range (valid: azure"),
    (["run", "--trace", __file__], "matches none of"),
    (["compare", "--systems", "paged,contig-huge"], "system 'contig-huge' not understood"),
    (["run", "--block-size", "0"], "block_size"),
    (["sweep", "--rates", "1,x"], "sweep axis 'rate': cannot read '1,x'"),
    (["sweep", "--rates", "1", "--executor", "threads"], "--executor 'threads' unknown (valid: process, serial, dask)"),
    (["sweep"], "no sweep axis given"),
    (["sweep", "--grid", "block_size"], "--grid 'block_size' not understood"),
    (["report", "/nonexistent/results"], "/nonexistent/results: results directory not found"),
])
def test_bad_input_is_one_line_and_exit_2(args: list[str], needle: str, tmp_path: Path) -> None:
    code, _, err = cli(*args, *(["--out", str(tmp_path / "o")] if args[0] != "report" else []))
    assert code == 2
    errors = [x for x in err.strip().splitlines() if "error" in x]
    assert len(errors) == 1 and errors[0].startswith(f"pagesim {args[0]}: error: ") and needle in errors[0], err
    assert err.strip().splitlines()[-1] == errors[0]
    assert "Traceback" not in err


def test_bad_config_file_names_the_file_and_field(tmp_path: Path) -> None:
    bad = tmp_path / "exp.toml"
    bad.write_text('model = "opt-13b"\n[workload]\nrat = 3\n')
    code, _, err = cli("run", "--config", str(bad), "--out", str(tmp_path / "o"))
    assert code == 2 and f"{bad}: unknown field 'workload.rate'" not in err
    assert "unknown field 'workload.rat' (did you mean 'rate'?)" in err and str(bad) in err
    bad.write_text("model = \n")
    code, _, err = cli("run", "--config", str(bad))
    assert code == 2 and "invalid TOML" in err and str(bad) in err
    code, _, err = cli("run", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml: experiment file not found" in err


def test_unknown_option_is_a_usage_error() -> None:
    code, _, err = cli("compare", "--blok-size", "8")
    assert code == 2 and "--blok-size" in err


class _Ids(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.ids: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.ids.append(dict(attrs)["id"] or "")


def test_sweep_block_sizes_then_resume_then_report(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    args = ["sweep", "--block-sizes", "8,32", "--systems", "paged,max", "-n", "30", "--out", str(out),
            "--executor", "serial", "--no-progress"]
    code, stdout, err = cli(*args)
    assert code == 0, err
    assert "3 points: 3 run, 0 already done, 0 failed" in stdout  # max runs once, not per block size
    s = pd.read_csv(out / "summary.csv")
    assert sorted(s["system"]) == ["contig-max", "paged-32", "paged-8"] and (s["status"] == "ok").all()
    assert (s[PCTS].sum(axis=1) - 100).abs().max() < 0.01
    p8, p32 = (s[s["system"] == f"paged-{b}"].iloc[0] for b in (8, 32))
    assert p32["internal_frag_pct"] > p8["internal_frag_pct"]  # bigger blocks, bigger unused tails
    code, stdout, err = cli(*args, "--resume", "--no-report")
    assert code == 0 and "3 points: 0 run, 3 already done" in stdout, err
    assert len((out / "points.jsonl").read_text().splitlines()) == 3
    code, stdout, _ = cli(*args)  # no --resume on an existing sweep: refuse, do not duplicate
    assert code == 2 and len((out / "points.jsonl").read_text().splitlines()) == 3
    p = _Ids()
    p.feed((out / "report.html").read_text())
    assert "sweep" in p.ids and "memory-breakdown" in p.ids
    assert (out / "plots" / "block_size_sweep.png").is_file()
    code, stdout, _ = cli("report", str(out))
    assert code == 0 and "report.html" in stdout


def test_sweep_axes_from_a_toml_file(tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text('systems = ["paged"]\n[workload]\nnum_requests = 25\n[sweep.axes]\nrate = [2.0, 8.0]\n')
    code, stdout, err = cli("sweep", "--config", str(exp), "--out", str(tmp_path / "s"), "--executor", "serial",
                            "--no-progress", "--no-report")
    assert code == 0, err
    s = pd.read_csv(tmp_path / "s" / "summary.csv")
    assert s["rate"].tolist() == [2.0, 8.0] and (s["num_requests"] == 25).all()


def test_cli_constants_mirror_the_modules_they_avoid_importing() -> None:
    from analysis import frames, sweep
    from analysis.cli import simulate as cmd_simulate
    from analysis.cli import tables

    assert cmd_simulate.EXECUTORS == sweep.EXECUTORS
    assert tables.BREAKDOWN_PCT_COLUMNS == frames.BREAKDOWN_PCT_COLUMNS
