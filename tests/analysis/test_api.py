"""The Python API: workloads are reproducible, run/compare/sweep return tables, sweep points dedupe."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from analysis import api
from analysis.experiment import ConfigError


def test_workload_is_reproducible_and_sampling_applies_to_every_request() -> None:
    a, _ = api.build_workload(api.experiment(num_requests=30, seed=1))
    b, _ = api.build_workload(api.experiment(num_requests=30, seed=1))
    c, _ = api.build_workload(api.experiment(num_requests=30, seed=2))
    assert a == b and a != c and len(a) == 30
    beams, _ = api.build_workload(api.experiment(num_requests=20, sampling="beam=3"))
    assert {s.beam_width for s in beams} == {3}


def test_trace_workload_first_n_and_rescaled_rate(traces_dir: Path) -> None:
    trace = str(traces_dir / "mooncake_fast25" / "conversation_trace.jsonl")
    specs, stats = api.build_workload(api.experiment(trace=trace, num_requests=100, rate=None))
    assert len(specs) == 100 and stats["format"] == "mooncake" and specs[0].prefix_hashes
    fast, _ = api.build_workload(api.experiment(trace=trace, num_requests=100, rate=50.0))
    span = fast[-1].arrival_time - fast[0].arrival_time
    assert 99 / span == pytest.approx(50.0, rel=0.05)


def test_run_without_out_writes_nothing_and_returns_one_row_per_system(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    df = api.compare(num_requests=20, systems=["paged", "oracle"])
    assert df["system"].tolist() == ["paged-16", "contig-oracle"] and not list(tmp_path.iterdir())


def test_sweep_dedupes_contiguous_over_block_sizes_and_validates_first(tmp_path: Path) -> None:
    out = api.sweep_outcome({"system": ["paged", "max"], "block_size": [8, 16]}, None, tmp_path / "a",
                            executor="serial", num_requests=15)
    assert out.total == 3 and out.ran == 3
    assert sorted(out.summary["system"]) == ["contig-max", "paged-16", "paged-8"]
    assert set(out.summary["series"]) == {"paged", "max"}
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["sweep"]["axes"] == {"system": ["paged", "max"], "block_size": [8, 16]}
    with pytest.raises(ConfigError, match="system 'bogus'"):
        api.sweep({"system": ["paged", "bogus"]}, out=tmp_path / "b", executor="serial")
    assert not (tmp_path / "b" / "points.jsonl").exists()


def test_resume_with_a_changed_base_reruns_points(tmp_path: Path) -> None:
    kw: dict[str, Any] = {"executor": "serial", "num_requests": 10}
    api.sweep({"block_size": [8]}, None, tmp_path, systems=["paged"], **kw)
    same = api.sweep_outcome({"block_size": [8]}, None, tmp_path, systems=["paged"], resume=True, **kw)
    assert (same.ran, same.skipped) == (0, 1)
    changed = api.sweep_outcome({"block_size": [8]}, None, tmp_path, systems=["paged"], resume=True, seed=5, **kw)
    assert (changed.ran, changed.skipped) == (1, 0) and len(changed.summary) == 1


def test_sweep_on_a_dask_cluster_with_the_real_point_function(tmp_path: Path) -> None:
    from dask.distributed import Client, LocalCluster

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0") as cluster, \
            Client(cluster) as client:
        df = api.sweep({"rate": [2.0, 8.0]}, None, tmp_path, executor="dask", client=client, systems=["paged"],
                       num_requests=20)
    assert (df["status"] == "ok").all() and df["rate"].tolist() == [2.0, 8.0]
    assert df.loc[1, "throughput_rps"] > df.loc[0, "throughput_rps"]
    assert len(pd.read_csv(tmp_path / "summary.csv")) == 2


def test_sweep_in_worker_processes_with_the_real_point_function(tmp_path: Path) -> None:
    df = api.sweep({"block_size": [8, 32]}, None, tmp_path, executor="process", workers=2, systems=["paged"],
                   num_requests=15)
    assert (df["status"] == "ok").all() and df["system"].tolist() == ["paged-8", "paged-32"]
