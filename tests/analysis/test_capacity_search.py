"""The capacity search as pure functions, on evaluators with a known answer; SLO parsing and verdicts."""

from __future__ import annotations

import math

import pytest

from analysis.capacity.search import SearchSpec, answer, bracket, next_rates, search
from analysis.capacity.slo import judge, parse_target, parse_targets


@pytest.mark.parametrize("truth", [0.05, 0.7, 1.0, 5.3, 97.0, 600.0])
@pytest.mark.parametrize("per_round", [1, 3])
def test_search_finds_a_known_threshold_within_tolerance(truth: float, per_round: int) -> None:
    spec = SearchSpec(rel_tol=0.02, per_round=per_round)
    seen: list[float] = []

    def meets(rate: float) -> bool:
        seen.append(rate)
        return rate <= truth

    c = search(meets, spec)
    assert c.reason == "converged"
    assert c.capacity <= truth < c.lowest_fail  # never reports a failing rate
    assert c.lowest_fail / c.capacity - 1 <= 0.02 + 1e-9
    assert len(seen) == len(set(seen)) == c.evaluations  # no rate evaluated twice


def test_bisection_path_is_hand_computable() -> None:
    # start 1, growth 2: 1 ok, 2 ok, 4 fails; geometric midpoints sqrt(2*4) = 2.82843 (ok), then
    # sqrt(2.82843*4) = 3.36359 (fails); 3.36359 / 2.82843 - 1 = 0.189 <= rel_tol 0.2: done
    spec = SearchSpec(start=1.0, growth=2.0, rel_tol=0.2)
    res: dict[float, bool] = {}
    path = []
    while todo := next_rates(res, spec):
        assert len(todo) == 1
        path.append(todo[0])
        res[todo[0]] = todo[0] <= 3.0
    assert path == [1.0, 2.0, 4.0, 2.82843, 3.36359]
    c = answer(res, spec)
    assert (c.capacity, c.lowest_fail, c.evaluations) == (2.82843, 3.36359, 5)


def test_limits_min_and_max_rate() -> None:
    spec = SearchSpec(start=1.0, min_rate=0.1, max_rate=16.0)
    high = search(lambda r: True, spec)
    assert (high.capacity, high.lowest_fail, high.reason) == (16.0, None, "max_rate")
    low = search(lambda r: False, spec)
    assert (low.capacity, low.lowest_fail, low.reason) == (0.0, 0.1, "min_rate")


def test_non_monotone_blip_only_lowers_the_answer() -> None:
    # passes up to 10 except a failing blip around 4, which the growing phase (1, 2, 4) lands on: the
    # bracket closes below the blip rather than reporting a rate above a failure
    c = search(lambda r: r <= 10 and not 3.9 <= r <= 4.1, SearchSpec(rel_tol=0.01))
    assert 2.0 <= c.capacity < 3.9 and c.lowest_fail is not None and 3.9 <= c.lowest_fail <= 4.0


def test_search_is_stateless_so_a_resumed_search_ends_the_same() -> None:
    spec = SearchSpec(rel_tol=0.01)
    full = search(lambda r: r <= 7.7, spec)
    res: dict[float, bool] = {}
    for _ in range(3):  # interrupted after three evaluations, then continued from the results alone
        (r,) = next_rates(res, spec)
        res[r] = r <= 7.7
    while todo := next_rates(res, spec):
        res.update({r: r <= 7.7 for r in todo})
    assert answer(res, spec) == full


def test_bracket_takes_the_lowest_failure() -> None:
    b = bracket({1.0: True, 2.0: False, 3.0: True, 4.0: False}, SearchSpec())
    assert (b.lo, b.hi, b.done) == (1.0, 2.0, False)


@pytest.mark.parametrize("bad", [{"start": 0}, {"growth": 1.0}, {"rel_tol": -1}, {"per_round": 0},
                                 {"start": 5.0, "max_rate": 4.0}])
def test_bad_search_spec(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="capacity search"):
        SearchSpec(**bad)


def test_targets_parse_and_judge() -> None:
    ts = parse_targets(["ttft_p99=2", "tpot_p50=0.05", "norm_mean=0.1"])
    assert [t.key for t in ts] == ["p99_ttft", "p50_tpot", "mean_normalized_latency_s_per_token"]
    v = judge({"p99_ttft": 1.0, "p50_tpot": 0.06, "mean_normalized_latency_s_per_token": 0.05}, ts)
    assert not v.ok and v.binding == "tpot_p50" and v.ratios["tpot_p50"] == pytest.approx(1.2)
    v = judge({"p99_ttft": 3.0, "p50_tpot": 0.06, "mean_normalized_latency_s_per_token": 0.05}, ts)
    assert v.binding == "ttft_p99"  # the target violated by most
    assert judge({"p99_ttft": 2.0, "p50_tpot": 0.05, "mean_normalized_latency_s_per_token": 0.1}, ts).ok
    nan = judge({"p99_ttft": math.nan}, ts[:1])  # no finished request: fails
    assert not nan.ok and nan.ratios["ttft_p99"] == math.inf
    assert parse_target("e2e_mean=30").key == "mean_e2e_s"


@pytest.mark.parametrize("text", ["ttft=2", "ttft_p95=2", "lat_p99=1", "ttft_p99=-1", "ttft_p99=x", "ttft_p99"])
def test_bad_target(text: str) -> None:
    with pytest.raises(ValueError, match="--slo"):
        parse_target(text)


def test_targets_none_or_twice() -> None:
    with pytest.raises(ValueError, match="no --slo"):
        parse_targets([])
    with pytest.raises(ValueError, match="given twice"):
        parse_targets(["ttft_p99=1", "ttft_p99=2"])
