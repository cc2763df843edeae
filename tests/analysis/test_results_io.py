"""Results directory: tables, summary.csv, config TOML/JSON round trip, the durable point log."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import tomllib
from simfakes import fake_result

from analysis import results_io as rio
from sim.records.results import SUMMARY_KEYS


def test_save_run_and_summary_round_trip(tmp_path: Path) -> None:
    a, b = fake_result("paged(B=16)", n_req=9), fake_result("contiguous-max", seed=2)
    for r in (a, b):
        d = rio.save_run(tmp_path, r, csv=True)
        assert (d / "requests.parquet").is_file() and (d / "memory.csv").is_file()
    rio.write_summary(tmp_path, [a, b])
    s = pd.read_csv(tmp_path / "summary.csv")
    assert list(s.columns[: len(SUMMARY_KEYS)]) == list(SUMMARY_KEYS)
    assert s["system"].tolist() == ["paged(B=16)", "contiguous-max"]
    rio.write_config(tmp_path, {"model": "opt-13b"})
    bundle = rio.load_results(tmp_path)
    assert len(bundle.requests) == 9 + 20 and set(bundle.memory["system"]) == {"paged(B=16)", "contiguous-max"}
    assert bundle.config == {"model": "opt-13b"}
    assert pd.read_parquet(tmp_path / "summary.parquet")["system"].tolist() == s["system"].tolist()


def test_mixed_request_ids_survive_parquet(tmp_path: Path) -> None:
    r = fake_result(n_req=3)
    r.requests[0].req_id = "conv-7"
    d = rio.save_run(tmp_path, r)
    assert pd.read_parquet(d / "requests.parquet")["req_id"].tolist() == ["conv-7", "1", "2"]


def test_toml_round_trip_drops_none_keeps_nesting(tmp_path: Path) -> None:
    cfg: dict[str, Any] = {"model": "opt-13b", "systems": ["paged", "max"], "kv_capacity_tokens": None, "seed": 3,
           "frac": 0.9, "on": True, "workload": {"preset": "sharegpt", "rate": 2.5, "trace": None},
           "scheduler": {"max_num_seqs": 64}, "weird key": "a\"b"}
    rio.write_config(tmp_path, cfg)
    back = tomllib.loads((tmp_path / "config.toml").read_text())
    expected = {k: v for k, v in cfg.items() if v is not None}
    expected["workload"] = {"preset": "sharegpt", "rate": 2.5}
    assert back == expected
    assert json.loads((tmp_path / "config.json").read_text())["kv_capacity_tokens"] is None


def test_slug_is_filesystem_safe() -> None:
    assert rio.slug("paged(B=16)") == "paged_B_16"
    assert rio.slug("a/b c") == "a_b_c" and rio.slug("///") == "run"


def test_point_log_ignores_torn_line_and_last_wins(tmp_path: Path) -> None:
    log = rio.PointLog(tmp_path / "points.jsonl")
    log.append({"point_id": "p1", "status": "failed", "error": "x"})
    log.append({"point_id": "p2", "status": "ok", "row": {"v": float("nan")}})
    log.append({"point_id": "p1", "status": "ok"})
    with open(log.path, "a") as f:
        f.write('{"point_id": "p3", "sta')  # a kill in the middle of a write
    recs = log.read()
    assert set(recs) == {"p1", "p2"} and recs["p1"]["status"] == "ok"
    assert recs["p2"]["row"]["v"] is None
    log.repair()
    log.append({"point_id": "p3", "status": "ok"})
    assert set(log.read()) == {"p1", "p2", "p3"}
    with pytest.raises(ValueError, match="point_id"):
        log.append({"status": "ok"})


def test_missing_results_dir_errors_name_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope"):
        rio.load_results(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="summary.csv"):
        rio.load_results(tmp_path)
    with pytest.raises(ValueError, match="valid: requests, steps, memory"):
        rio.read_runs(tmp_path, "bogus")
