"""Synthetic generators: seeded reproducibility, moments within tolerance, modes, shared prompts."""

from __future__ import annotations

import math

import numpy as np
import pytest

from sim.memory.prefix import block_hashes
from workloads import WORKLOAD_PRESETS, WorkloadConfig, WorkloadError, generate, summarize
from workloads.arrivals import Burst, Constant, Gamma, Poisson, make_arrivals
from workloads.columns import TraceColumns
from workloads.lengths import (
    Empirical,
    EmpiricalPairs,
    Fixed,
    Independent,
    LogNormal,
    Uniform,
    parse_length,
)
from workloads.modes import SamplingMix, SamplingMode, parse_mix
from workloads.synthetic import config_from_trace, generate_columns
from workloads.system_prompts import SystemPrompts

N = 40_000


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


# --- arrivals ----------------------------------------------------------------------------------

@pytest.mark.parametrize("rate", [0.5, 8.0])
def test_poisson_rate_and_cv(rate):
    t = Poisson(rate).times(N, rng())
    assert t[0] == 0.0 and np.all(np.diff(t) >= 0)
    gaps = np.diff(t)
    assert gaps.mean() == pytest.approx(1 / rate, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.03)


@pytest.mark.parametrize("cv", [0.5, 2.0, 4.0])
def test_gamma_cv(cv):
    gaps = np.diff(Gamma(5.0, cv).times(N, rng(1)))
    assert gaps.mean() == pytest.approx(0.2, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.08)


def test_gamma_is_burstier_than_poisson_in_counts():
    iod_p = summarize_times(Poisson(5.0).times(N, rng(2)))
    iod_g = summarize_times(Gamma(5.0, 3.0).times(N, rng(2)))
    assert iod_p == pytest.approx(1.0, abs=0.1) and iod_g > 3.0


def summarize_times(t: np.ndarray) -> float:
    return summarize(TraceColumns.build(t, np.ones(len(t)), np.ones(len(t))))["iod_1s"]


def test_constant_and_burst():
    assert Constant(4.0).times(3, rng()).tolist() == [0.0, 0.25, 0.5]
    assert Burst().times(3, rng()).tolist() == [0.0, 0.0, 0.0]
    assert isinstance(make_arrivals("poisson", math.inf), Burst)


@pytest.mark.parametrize("call,needle", [
    (lambda: Poisson(0.0), "rate"), (lambda: Poisson(-1.0), "rate"), (lambda: Gamma(1.0, 0.0), "cv"),
    (lambda: make_arrivals("weibull", 1.0), "unknown"), (lambda: make_arrivals("poisson", None), "needs a rate"),
])
def test_bad_arrival_options(call, needle):
    with pytest.raises(WorkloadError, match=needle):
        call()


# --- lengths -----------------------------------------------------------------------------------

def test_fixed_uniform_empirical():
    assert Fixed(7).sample(4, rng()).tolist() == [7, 7, 7, 7]
    u = Uniform(3, 9).sample(N, rng())
    assert (u.min(), u.max()) == (3, 9) and u.mean() == pytest.approx(6.0, abs=0.05)
    e = Empirical.of([1, 1, 1, 5]).sample(N, rng())
    assert set(e.tolist()) == {1, 5} and (e == 5).mean() == pytest.approx(0.25, abs=0.01)


@pytest.mark.parametrize("mean,sigma,hi", [(161.31, 1.0, None), (161.31, 1.0, 1024), (19.31, 0.6, 1024),
                                           (800.0, 2.0, 1500), (2.5, 1.5, None)])
def test_lognormal_mean_is_fitted_after_clipping(mean, sigma, hi):
    x = LogNormal(mean, sigma, hi=hi).sample(200_000, rng(3))
    assert x.min() >= 1 and (hi is None or x.max() <= hi)
    assert x.mean() == pytest.approx(mean, rel=0.02)


def test_lognormal_from_cv():
    d = LogNormal.from_cv(300.0, 1.5)
    x = d.sample(400_000, rng(4)).astype(float)
    assert x.mean() == pytest.approx(300.0, rel=0.02)
    assert x.std() / x.mean() == pytest.approx(1.5, rel=0.08)


def test_empirical_pairs_keep_correlation():
    pairs = EmpiricalPairs.of([10, 20, 30], [1, 2, 3])
    p, o = pairs.sample(1000, rng())
    assert np.all(p == o * 10)


@pytest.mark.parametrize("call,needle", [
    (lambda: LogNormal(0.5), "mean"), (lambda: LogNormal(3000, hi=2048), "mean"), (lambda: LogNormal(10, 0), "sigma"),
    (lambda: Uniform(5, 2), "hi"), (lambda: Fixed(0), "value"), (lambda: Empirical(()), "no values"),
    (lambda: EmpiricalPairs((1,), ()), "equal"), (lambda: parse_length("normal:3"), "not understood"),
])
def test_bad_length_options(call, needle):
    with pytest.raises(WorkloadError, match=needle):
        call()


def test_parse_length():
    assert parse_length("fixed:12") == Fixed(12)
    assert parse_length("uniform:1:4") == Uniform(1, 4)
    d = parse_length("lognormal:100:0.5:400")
    assert isinstance(d, LogNormal) and (d.mean, d.sigma, d.hi) == (100.0, 0.5, 400)


# --- presets and generate ----------------------------------------------------------------------

@pytest.mark.parametrize("name,prompt,output", [("sharegpt", 161.31, 337.99), ("alpaca", 19.31, 58.45)])
def test_preset_means_match_the_vllm_paper(name, prompt, output):
    s = summarize(generate_columns(name, N, 10.0, rng(5)))
    assert s["prompt"]["mean"] == pytest.approx(prompt, rel=0.03)
    assert s["output"]["mean"] == pytest.approx(output, rel=0.03)
    assert s["mean_rate"] == pytest.approx(10.0, rel=0.03)


def test_generate_is_reproducible_and_seed_dependent():
    a = generate("sharegpt-mixed", 500, 5.0, rng(11))
    b = generate("sharegpt-mixed", 500, 5.0, rng(11))
    c = generate("sharegpt-mixed", 500, 5.0, rng(12))
    assert a == b and a != c
    assert [s.req_id for s in a] == list(range(500))


def test_every_preset_generates_valid_specs():
    for name, cfg in WORKLOAD_PRESETS.items():
        cols = generate_columns(name, 2000, 4.0, rng(6))
        cols.check_invariants()
        assert cfg.description and len(cols.to_specs()) == 2000


def test_bursty_preset_has_its_cv():
    s = summarize(generate_columns("sharegpt-bursty", N, 10.0, rng(8)))
    assert s["interarrival_cv"] == pytest.approx(4.0, rel=0.1)


def test_sampling_mix_fractions():
    cols = generate_columns("sharegpt-mixed", N, 5.0, rng(9))
    beam = cols.beam_width == 4
    par = cols.n == 2
    spec = cols.spec_k == 4
    assert beam.mean() == pytest.approx(0.2, abs=0.01)
    assert par.mean() == pytest.approx(0.3, abs=0.01)
    assert spec.mean() == pytest.approx(0.1, abs=0.01)
    assert not np.any(beam & par) and np.all(cols.spec_accept[spec] == 0.7)
    assert np.all((cols.n == 1) | par) and np.all((cols.beam_width == 1) | beam)


def test_parse_mix_and_bad_mix():
    mix = parse_mix("0.2:beam:4,0.3:parallel:2,0.1:spec:4:0.7")
    assert mix == parse_mix("mixed")
    for text, needle in [("0.7:beam:4,0.7:parallel:2", "sum"), ("0.2:beam", "cannot read"),
                         ("0.2:parallel:0", "out of range"), ("1.5:beam:2", "out of range")]:
        with pytest.raises(WorkloadError, match=needle):
            parse_mix(text)
    with pytest.raises(WorkloadError, match="cannot both"):
        SamplingMode(n=2, beam_width=2)


def test_system_prompts_share_blocks_at_any_block_size():
    pool = SystemPrompts(count=3, length=Uniform(130, 300), prob=0.5)
    cfg = WorkloadConfig(lengths=Independent(Fixed(50), Fixed(10)), system_prompts=pool)
    specs = generate(cfg, 4000, 10.0, rng(10))
    users = [s for s in specs if s.prefix_hashes]
    assert len(users) / len(specs) == pytest.approx(0.5, abs=0.03)
    assert {s.prefix_hashes for s in users} == {(0,), (1,), (2,)}
    for s in users:  # the prompt is the shared prefix (prefix_unit tokens) plus the user's 50
        assert s.prompt_len == s.prefix_unit + 50 and 130 <= s.prefix_unit <= 300
    for s in specs:
        if not s.prefix_hashes:
            assert s.prompt_len == 50
    for block in (16, 32, 128):
        by_prefix: dict[tuple, set] = {}
        for s in users:
            h = block_hashes(s, block)
            assert len(h) == s.prefix_unit // block  # every full block inside the prefix, nothing after it
            by_prefix.setdefault(s.prefix_hashes, set()).add(h)
        assert all(len(v) == 1 for v in by_prefix.values())  # identical hashes within a prefix
        firsts = {next(iter(v))[0] for v in by_prefix.values()}
        assert len(firsts) == 3  # and different across prefixes


def test_zipf_popularity_skews_choice():
    idx, _ = SystemPrompts(count=10, popularity="zipf", zipf_s=1.2).assign(N, rng(2))
    counts = np.bincount(idx, minlength=10)
    assert counts[0] > 2 * counts[2] > 0 and np.all(np.diff(counts[:5]) < 0)


def test_config_from_trace_resamples_pairs():
    cols = TraceColumns.build(np.arange(3.0), np.array([100, 200, 300]), np.array([1, 2, 3]))
    specs = generate(config_from_trace(cols, arrival="constant"), 300, 3.0, rng())
    assert {(s.prompt_len, s.output_len) for s in specs} == {(100, 1), (200, 2), (300, 3)}
    assert specs[1].arrival_time == pytest.approx(1 / 3)


def test_generate_rejects_bad_arguments():
    with pytest.raises(WorkloadError, match="unknown .*sharegpt"):
        generate("sharegpt4", 10, 1.0, rng())
    with pytest.raises(WorkloadError, match="num_requests"):
        generate("sharegpt", 0, 1.0, rng())
    with pytest.raises(WorkloadError, match="fractions sum"):
        SamplingMix(((0.6, SamplingMode(n=2)), (0.6, SamplingMode(beam_width=2))))
    with pytest.raises(WorkloadError, match="prob"):
        SystemPrompts(prob=1.5)
