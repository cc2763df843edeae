"""Experiment config: defaults, TOML round trip, one-line errors, system names, sampling, overrides."""

from __future__ import annotations

from pathlib import Path

import pytest

from analysis import results_io
from analysis.experiment import (
    ConfigError,
    Experiment,
    from_dict,
    load_experiment,
    parse_sampling,
    parse_system,
    sampling_columns,
    sweep_axes,
)
from sim.config import ContiguousCacheSpec, PagedCacheSpec
from sim.presets import get_model


def test_defaults_round_trip_through_dict_and_toml(tmp_path: Path) -> None:
    exp = Experiment()
    assert exp.workload.num_requests == 300 and exp.workload.rate == 4.0 and exp.model == "opt-13b"
    assert from_dict(exp.to_dict()) == exp
    results_io.write_config(tmp_path, exp.to_dict())
    assert load_experiment(tmp_path / "config.toml") == exp


def test_non_default_experiment_round_trips_through_toml(tmp_path: Path) -> None:
    exp = from_dict({"model": "llama-2-7b", "systems": ["paged-32+prefix", "pow2-best_fit"], "kv_budget_gb": 2.5,
                     "workload": {"preset": "alpaca", "sampling": "beam=4", "window": [0, 60]},
                     "scheduler": {"max_num_seqs": 32, "chunked_prefill": True}, "seed": 7})
    results_io.write_config(tmp_path, exp.to_dict())
    assert load_experiment(tmp_path / "config.toml") == exp


def test_trace_workload_keeps_none_for_all_requests_and_recorded_timing() -> None:
    exp = from_dict({"workload": {"trace": __file__}})
    assert exp.workload.num_requests is None and exp.workload.rate is None


@pytest.mark.parametrize(("data", "needle"), [
    ({"modle": "opt-13b"}, "unknown field 'modle' (did you mean 'model'?)"),
    ({"workload": {"rat": 1}}, "unknown field 'workload.rat' (did you mean 'rate'?)"),
    ({"workload": 3}, "[workload] must be a table"),
    ({"gpu": "v100"}, "field 'gpu' = 'v100' out of range (valid: a100-40gb"),
    ({"systems": []}, "field 'systems'"),
    ({"seed": -1}, "field 'seed' = -1 out of range (valid: integer >= 0)"),
    ({"kv_budget_gb": 0}, "field 'kv_budget_gb' = 0 out of range (valid: GiB > 0)"),
    ({"kv_budget_gb": 1.0, "kv_capacity_tokens": 100}, "choose one"),
    ({"kv_capacity_tokens": 0}, "kv_capacity_tokens"),
    ({"latency": "/no/params.json"}, "parameters file not found"),
    ({"workload": {"num_requests": 0}}, "field 'workload.num_requests' = 0"),
    ({"workload": {"window": [5, 1]}}, "field 'workload.window'"),
    ({"scheduler": {"preemption_mode": "drop"}}, "scheduler.preemption_mode"),
    ({"placement": "worst_fit", "systems": ["max"]}, "cache.placement"),
])
def test_bad_values_are_one_line_errors_naming_the_field(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict(data, source="exp.toml")
    msg = str(e.value)
    assert msg.startswith("exp.toml: ") and needle in msg and "\n" not in msg


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    p = tmp_path / "bad.toml"
    p.write_text("model = \"opt-13b\"\nseed = = 3\n")
    with pytest.raises(ConfigError, match=r"bad.toml: invalid TOML: .*line"):
        load_experiment(p)
    with pytest.raises(FileNotFoundError, match="nope.toml: experiment file not found"):
        load_experiment(tmp_path / "nope.toml")


@pytest.mark.parametrize(("name", "spec"), [
    ("paged", PagedCacheSpec(16)),
    ("PAGED-32", PagedCacheSpec(32)),
    ("paged-8+prefix", PagedCacheSpec(8, prefix_caching=True)),
    ("max", ContiguousCacheSpec("max")),
    ("contig-pow2", ContiguousCacheSpec("pow2")),
    ("oracle-buddy", ContiguousCacheSpec("oracle", "buddy")),
    ("contig-max-best_fit", ContiguousCacheSpec("max", "best_fit")),
])
def test_system_names(name: str, spec: object) -> None:
    assert parse_system(name) == spec


@pytest.mark.parametrize("name", ["paged-", "paged-x", "pagedd", "contig", "max-worst", "lru"])
def test_bad_system_names(name: str) -> None:
    with pytest.raises(ConfigError, match="not understood .valid: paged"):
        parse_system(name)


def test_sampling_modes() -> None:
    assert sampling_columns("n=4") == {"n": 4, "beam_width": 1}
    assert sampling_columns("beam=3") == {"n": 1, "beam_width": 3}
    assert sampling_columns("greedy") == {"n": 1, "beam_width": 1}
    assert sampling_columns("mixed") == {} and sampling_columns(None) == {}
    (frac, mode), = parse_sampling("spec=4@0.5").modes
    assert frac == 1.0 and (mode.spec_k, mode.spec_accept) == (4, 0.5)
    for bad in ("n=0", "beam=x", "spec=2@3", "x=1", "nonsense"):
        with pytest.raises(ConfigError, match="not understood"):
            parse_sampling(bad)


def test_kv_budget_sets_capacity_from_the_model() -> None:
    exp = from_dict({"kv_budget_gb": 2.0, "systems": ["max"]})
    per_token = get_model("opt-13b").kv_bytes_per_token("fp16")
    assert exp.sim_config("max").kv_capacity_tokens == int(2 * (1 << 30) // per_token)


def test_overrides() -> None:
    exp = Experiment().with_overrides({"system": "paged-32", "rate": 8, "scheduler.max_num_seqs": 16,
                                       "workload.arrival": "gamma", "block_size": 64})
    assert exp.systems == ("paged-32",) and exp.workload.rate == 8 and exp.scheduler.max_num_seqs == 16
    assert exp.workload.arrival == "gamma" and exp.cache_spec("paged") == PagedCacheSpec(64)
    with pytest.raises(ConfigError, match="unknown section 'cache'"):
        Experiment().with_overrides({"cache.block_size": 8})
    with pytest.raises(ConfigError, match="unknown field 'blocksize'"):
        Experiment().with_overrides({"blocksize": 8})


def test_sweep_axes_from_toml(tmp_path: Path) -> None:
    p = tmp_path / "s.toml"
    p.write_text('model = "opt-13b"\n[sweep.axes]\nblock_size = [8, 16]\nsystem = ["paged"]\n')
    assert sweep_axes(p) == {"block_size": [8, 16], "system": ["paged"]}
    assert load_experiment(p).model == "opt-13b"  # the sweep table does not upset `run --config`
    p.write_text("[sweep.axes]\nrate = []\n")
    with pytest.raises(ConfigError, match="sweep axis 'rate'"):
        sweep_axes(p)


def test_semantics_by_system_name_and_field() -> None:
    assert parse_system("paged-32+prefix@vllm-v1") == PagedCacheSpec(32, True, semantics="vllm-v1")
    assert parse_system("paged", semantics="vllm-v0").semantics == "vllm-v0"
    with pytest.raises(ConfigError, match="semantics 'v9' not understood"):
        parse_system("paged@v9")
    e = Experiment().with_overrides({"semantics": "vllm-v0", "scheduler.policy": "vllm-v0"})
    assert e.sim_config("paged-16").cache.semantics == "vllm-v0" and e.scheduler.policy == "vllm-v0"
    assert e.sim_config("paged-16@vllm-v1").cache.semantics == "vllm-v1"
    with pytest.raises(ConfigError, match="semantics"):
        Experiment(semantics="v3")
