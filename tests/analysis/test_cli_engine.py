"""`--engine` on run / compare / sweep: recorded in summary.csv, config and the printout; bad names exit 2."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from typer.testing import CliRunner

from analysis.cli import app

RUNNER = CliRunner()
SMALL = ["-n", "30", "--rate", "4", "--no-plots"]


def test_run_and_compare_record_the_engine_profile(tmp_path: Path) -> None:
    r = RUNNER.invoke(app, ["run", *SMALL, "--engine", "vllm-2023", "--out", str(tmp_path / "a")])
    assert r.exit_code == 0, r.output
    assert "engine profile: vllm-2023" in r.stdout and "latency model: roofline" in r.stdout
    s = pd.read_csv(tmp_path / "a" / "summary.csv")
    assert list(s["engine"]) == ["vllm-2023"] and list(s["latency_model"]) == ["roofline"]
    assert '"engine": "vllm-2023"' in (tmp_path / "a" / "config.json").read_text()
    r = RUNNER.invoke(app, ["compare", *SMALL, "--systems", "paged,max", "--engine", "ideal",
                            "--out", str(tmp_path / "b")])
    assert r.exit_code == 0, r.output
    assert set(pd.read_csv(tmp_path / "b" / "summary.csv")["engine"]) == {"ideal"}
    md = (tmp_path / "b" / "report.md").read_text()
    assert "Engine profile: ideal" in md and "Latency model: roofline" in md


def test_sweep_takes_the_engine(tmp_path: Path) -> None:
    r = RUNNER.invoke(app, ["sweep", "--block-sizes", "8,16", "--systems", "paged", "-n", "20", "--rate", "4",
                            "--engine", "vllm-2023", "--executor", "serial", "--no-progress", "--no-report",
                            "--out", str(tmp_path)])
    assert r.exit_code == 0, r.output
    assert set(pd.read_csv(tmp_path / "summary.csv")["engine"]) == {"vllm-2023"}


def test_unknown_engine_is_one_line_and_exit_2(tmp_path: Path) -> None:
    r = RUNNER.invoke(app, ["run", *SMALL, "--engine", "nope", "--out", str(tmp_path)])
    assert r.exit_code == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and "engine" in err[0] and "vllm-2023" in err[0] and "Traceback" not in r.output


def test_engines_lists_the_profiles_and_shows_one_with_its_sources() -> None:
    r = RUNNER.invoke(app, ["engines"])
    assert r.exit_code == 0 and all(n in r.stdout for n in ("basic", "ideal", "vllm-2023", "vllm-current"))
    r = RUNNER.invoke(app, ["engines", "vllm-2023"])
    assert r.exit_code == 0 and "seq_overhead_s: 0.000333" in r.stdout and "Vidur" in r.stdout
    r = RUNNER.invoke(app, ["engines", "nope"])
    assert r.exit_code == 2 and "unknown engine profile 'nope'" in r.stderr


def test_a_config_file_names_the_engine(tmp_path: Path) -> None:
    cfg = tmp_path / "exp.toml"
    cfg.write_text('engine = "ideal"\nsystems = ["paged"]\n[workload]\nnum_requests = 20\nrate = 4.0\n')
    r = RUNNER.invoke(app, ["run", "--config", str(cfg), "--no-plots", "--out", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    assert list(pd.read_csv(tmp_path / "o" / "summary.csv")["engine"]) == ["ideal"]
