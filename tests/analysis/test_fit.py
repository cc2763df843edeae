"""Defaults fitted to a workload (analysis.fit), rejections by reason (analysis.rejections) and the
plain-language conclusions (analysis.conclusions), on small hand-made inputs."""

from __future__ import annotations

import pandas as pd
import pytest

from analysis.conclusions import conclusions
from analysis.experiment import Experiment
from analysis.fit import fit_workload, longest_request
from analysis.rejections import kind_of, rejection_kinds, rejection_lines
from sim.engine import simulate
from sim.request import RequestSpec


def specs(*lengths: tuple[int, int]) -> list[RequestSpec]:
    return [RequestSpec(i, float(i), p, o) for i, (p, o) in enumerate(lengths)]


def test_defaults_that_hold_the_workload_are_kept() -> None:
    exp = Experiment()
    fit = fit_workload(exp, specs((500, 500), (1000, 1048)))
    assert fit.experiment is exp and fit.notes == ()


def test_a_longer_trace_gets_a_model_whose_context_covers_it() -> None:
    fit = fit_workload(Experiment(), specs((100, 10), (7436, 25)))
    assert longest_request(specs((100, 10), (7436, 25))) == 7461
    assert fit.experiment.model == "llama-3-8b" and fit.experiment.max_model_len is None
    assert fit.experiment.gpu == "a100-40gb"
    assert "longest request is 7461 tokens, beyond opt-13b's 2048-token context" in fit.notes[0]


def test_beyond_every_preset_the_context_is_raised_and_said() -> None:
    fit = fit_workload(Experiment(), specs((134773, 382)))
    e = fit.experiment
    assert e.model == "llama-3-8b" and e.max_model_len == 135168 and e.max_model_len % 1024 == 0
    assert "--max-model-len 135168 (above the preset's 8192)" in fit.notes[0]


def test_a_pool_too_small_for_the_request_gets_a_larger_gpu() -> None:
    fit = fit_workload(Experiment(model="llama-2-7b", systems=("paged",)), specs((3000, 1000)) * 1, {"model"})
    assert fit.experiment.model == "llama-2-7b" and fit.experiment.gpu == "a100-40gb"  # 47K slots hold 4K
    big = specs((200_000, 10))
    fit = fit_workload(Experiment(model="llama-3-8b", max_model_len=210_000), big, {"model", "max_model_len"})
    assert fit.experiment.gpu == "a100-80gb" and "--gpu a100-80gb" in fit.notes[0]


@pytest.mark.parametrize("fixed", [{"model"}, {"max_model_len"}, {"model", "gpu", "max_model_len", "pool"}])
def test_settings_the_user_chose_are_never_changed(fixed: set[str]) -> None:
    exp = Experiment(max_model_len=2048) if "max_model_len" in fixed else Experiment()
    fit = fit_workload(exp, specs((7436, 25)), fixed)
    if "model" in fixed:
        assert fit.experiment.model == "opt-13b" and fit.experiment.max_model_len == exp.max_model_len
    assert fit.experiment.max_model_len == exp.max_model_len


def test_rejection_kinds_and_lines_come_from_the_engine_reasons() -> None:
    from sim.config import SchedulerConfig, SimConfig

    reqs = [*specs((100, 10), (3000, 10)), RequestSpec(2, 2.0, 50, 10, n=4)]
    res = simulate(reqs, SimConfig(scheduler=SchedulerConfig(max_num_seqs=2)), rng=0)
    kinds = rejection_kinds(res.requests)
    assert kinds == {"rejected_max_model_len": 1, "rejected_max_num_seqs": 1}
    lines = rejection_lines("paged-16", {"num_requests": 3, "num_rejected": 2, **kinds})
    assert lines == [
        "paged-16: 1 of 3 requests (33%) rejected, prompt + output longer than max_model_len: raise "
        "--max-model-len or pick a --model with a longer context",
        "paged-16: 1 of 3 requests (33%) rejected, more sequences (n / beam width) than max_num_seqs: raise "
        "--max-num-seqs"]
    assert kind_of("can never fit: needs 9 blocks").key == "pool" and kind_of("???").key == "other"
    # A summary without per-kind columns (older results) still says how many.
    assert rejection_lines("x", {"num_requests": 5, "num_rejected": 2}) == [
        "x: 2 of 5 requests rejected (reasons in runs/<system>/requests)"]


def test_conclusions_name_the_ratio_and_where_memory_goes() -> None:
    s = pd.DataFrame([
        {"system": "paged-16", "mean_batch_size": 30.0, "token_states_pct": 70.0, "reserved_pct": 1.0,
         "internal_frag_pct": 0.5, "external_frag_pct": 0.0, "speculative_pct": 0.0, "free_pct": 28.5,
         "throughput_tps": 800.0, "num_requests": 10, "num_rejected": 0},
        {"system": "contig-max", "mean_batch_size": 7.5, "token_states_pct": 20.0, "reserved_pct": 10.0,
         "internal_frag_pct": 60.0, "external_frag_pct": 5.0, "speculative_pct": 0.0, "free_pct": 5.0,
         "throughput_tps": 300.0, "num_requests": 10, "num_rejected": 0}])
    lines = conclusions(s)
    assert lines[0] == "paged-16 holds the most requests at once: mean batch 30.0, that is 4.0x contig-max (7.5)."
    assert ("contig-max: 21% of the KV memory in use holds tokens, 79% is waste (63% internal fragmentation, "
            "11% reserved for later tokens, 5% external fragmentation); 5% of the pool stayed free.") in lines
    assert "Throughput: paged-16 800, contig-max 300 output tokens/s." in lines


def test_conclusions_say_when_memory_was_not_the_limit() -> None:
    s = pd.DataFrame([{"system": "paged-16", "mean_batch_size": 6.1}, {"system": "contig-max", "mean_batch_size": 6.05}])
    assert conclusions(s) == ["All systems ran about as many requests at once (mean batch 6.0-6.1): the KV pool "
                              "did not limit the batch on this workload."]
