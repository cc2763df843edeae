"""Replicas through the experiment and the CLI: config round trip, bad values as one-line errors,
cluster rows and replicas.csv."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from analysis.api import REPLICAS_FILE, run
from analysis.experiment import ConfigError, Experiment, from_dict


def test_experiment_round_trip_and_title() -> None:
    e = Experiment(systems=("paged",), replicas=3, router="prefix-aware", router_load_factor=2.0)
    back = from_dict(e.to_dict())
    assert back == e and back.cluster_spec().label == " x3 prefix-aware"
    assert "x3 replicas (prefix-aware)" in e.title()
    assert Experiment().cluster_spec().replicas == 1


@pytest.mark.parametrize(("field", "value", "msg"), [("replicas", 0, "replicas"), ("router", "hash", "router"),
                                                     ("router_load_factor", 0.5, "load_factor")])
def test_bad_cluster_fields(field: str, value: object, msg: str) -> None:
    with pytest.raises(ConfigError, match=msg):
        from_dict({field: value})


def test_api_run_with_replicas_writes_cluster_rows(tmp_path: Path) -> None:
    df = run(out=tmp_path, systems=["paged", "max"], num_requests=30, replicas=2, router="least-outstanding",
             plots=False)
    assert df["system"].tolist() == ["paged-16 x2 least-outstanding", "contig-max x2 least-outstanding"]
    reps = pd.read_csv(tmp_path / REPLICAS_FILE)
    assert reps["replica"].tolist() == [0, 1, 0, 1]
    assert reps.groupby("system")["num_requests"].sum().tolist() == [30, 30]
    assert (df["num_requests"] == 30).all()


def test_cli_errors_are_one_line() -> None:
    for args, msg in ((["--replicas", "2", "--router", "hash"], "router"),
                      (["--replicas", "2", "--op-log"], "--op-log"),
                      (["--replicas", "0"], "replicas")):
        r = subprocess.run([sys.executable, "-m", "analysis.cli", "run", "-n", "5", *args], capture_output=True,
                           text=True, timeout=120)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and msg in r.stderr, (args, r.stderr)
