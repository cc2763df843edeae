"""Every loader on the real public traces in ../shared/traces, checked against that README's numbers."""

from __future__ import annotations

import numpy as np
import pytest

from sim.memory.prefix import block_hashes
from workloads import load_trace, summarize

AZURE = "azure_llm_2023/AzureLLMInferenceTrace_code.csv"
CONV = "mooncake_fast25/conversation_trace.jsonl"
SYNTH = "mooncake_fast25/synthetic_trace.jsonl"
SHAREGPT = "sharegpt_lengths/sharegpt_8k_filtered_stats_llama2_tokenizer.csv"


def check_dist(got: dict, mean: float, p50: float, p90: float, p99: float, lo: float, hi: float) -> None:
    assert got["mean"] == pytest.approx(mean, abs=0.051)
    assert (got["p50"], got["min"], got["max"]) == (p50, lo, hi)
    assert got["p90"] == pytest.approx(p90, abs=0.051)
    assert got["p99"] == pytest.approx(p99, abs=0.051)


def test_azure_code_2023(traces_dir):
    r = load_trace(traces_dir / AZURE)
    assert r.stats["format"] == "azure" and r.stats["skipped_rows"] == 0
    assert r.stats["start_time"].startswith("2023-11-16 18:17:03.97996")
    s = summarize(r.columns)
    assert s["rows"] == 8819
    assert s["span_s"] == pytest.approx(3435.948056, abs=1e-6)  # 19:14:19.9280160 - 18:17:03.9799600
    assert s["mean_rate"] == pytest.approx(2.567, abs=5e-4)
    assert s["interarrival_cv"] == pytest.approx(13.2, abs=0.05)
    assert s["iod_1s"] == pytest.approx(13.2, abs=0.05)
    assert s["max_per_second"] == 67
    check_dist(s["prompt"], 2047.8, 1469, 5187.6, 7436, 3, 7437)
    check_dist(s["output"], 27.9, 13, 55, 251.5, 6, 1899)
    assert np.all(np.diff(r.columns.arrival) > 0)  # sorted, no two equal


def test_mooncake_conversation(traces_dir):
    r = load_trace(traces_dir / CONV)
    assert r.stats["format"] == "mooncake"
    s = summarize(r.columns)
    assert s["rows"] == 12031 and s["span_s"] == pytest.approx(3536.999)
    assert s["mean_rate"] == pytest.approx(3.401, abs=5e-4)
    assert s["interarrival_cv"] == pytest.approx(3.03, abs=0.005)
    assert s["iod_1s"] == pytest.approx(7.9, abs=0.05)
    assert len(np.unique(r.columns.arrival)) == 1180
    check_dist(s["prompt"], 12035.1, 6909, 27367, 85400.4, 891, 126195)
    check_dist(s["output"], 342.6, 350, 597, 1118.5, 1, 2000)
    assert (r.stats["hash_refs"], r.stats["hash_unique"]) == (288500, 182790)
    assert r.stats["hash_repeat_ratio"] == pytest.approx(0.366, abs=5e-4)
    assert all(s.prefix_hashes[0] == 0 and s.prefix_unit == 512 for s in r.specs)
    blocks = np.array([len(s.prefix_hashes) for s in r.specs])
    assert blocks.mean() == pytest.approx(24.0, abs=0.05) and np.median(blocks) == 14


def test_mooncake_synthetic(traces_dir):
    r = load_trace(traces_dir / SYNTH)
    s = summarize(r.columns)
    assert s["rows"] == 3993 and s["span_s"] == pytest.approx(1022.025)
    assert s["mean_rate"] == pytest.approx(3.907, abs=5e-4)
    assert s["interarrival_cv"] == pytest.approx(1.01, abs=0.005)
    assert s["iod_1s"] == pytest.approx(1.09, abs=0.005)
    check_dist(s["prompt"], 15325.5, 11587, 38611.2, 66456.2, 13, 191378)
    check_dist(s["output"], 149.1, 69, 389, 768.1, 1, 893)
    assert (r.stats["hash_refs"], r.stats["hash_unique"]) == (121877, 43924)
    assert r.stats["hash_repeat_ratio"] == pytest.approx(0.640, abs=5e-4)


def test_sharegpt_length_table(traces_dir):
    r = load_trace(traces_dir / SHAREGPT, rate=4.0, rng=np.random.default_rng(7))
    assert r.stats["format"] == "sharegpt"
    s = summarize(r.columns)
    assert s["rows"] == 30731
    check_dist(s["prompt"], 2340.0, 1730, 5696, 7433.7, 1, 8141)
    check_dist(s["output"], 438.7, 415, 834, 998, 2, 1024)
    assert s["mean_rate"] == pytest.approx(4.0, rel=0.03) and s["interarrival_cv"] == pytest.approx(1.0, abs=0.03)
    assert max(x.total_len for x in r.specs) == 8149


def test_options_on_a_real_trace(traces_dir):
    r = load_trace(traces_dir / AZURE, window=(600.0, 1200.0), max_model_len=4096, too_long="drop",
                   first_n=500, target_rate=10.0)
    assert len(r) == 500 and r.stats["rows_loaded"] == 500
    assert r.stats["outside_window"] + r.stats["dropped_too_long"] + r.stats["beyond_first_n"] + 500 == 8819
    assert summarize(r.columns)["mean_rate"] == pytest.approx(10.0)
    assert max(s.total_len for s in r.specs) <= 4096


# --- prefix ids -> simulator block hashes (sim.memory.prefix) ------------------------------------------

def reference_keys(prompt_len: int, ids: tuple[int, ...], unit: int, block: int,
                   intern: dict[tuple[int, int], int]) -> list[tuple[int, int]]:
    """Independent statement of the mapping: block k is shareable iff it is full and inside the
    covered prompt; two blocks k are equal iff the ids of every unit up to the block's end are equal.
    Id prefixes are interned to small ints (prefix j = intern[(prefix j-1, ids[j])]) to stay O(1)."""
    prefix, key = [], -1
    for i in ids:
        key = intern.setdefault((key, i), len(intern))
        prefix.append(key)
    covered = min(len(ids) * unit, prompt_len)
    return [(k, prefix[((k + 1) * block - 1) // unit]) for k in range(covered // block)]


@pytest.mark.parametrize("block,rows", [(512, None), (16, 400), (48, 400), (2048, None)])
def test_mooncake_ids_map_to_block_hashes(traces_dir, block, rows):
    specs = load_trace(traces_dir / CONV, first_n=rows).specs
    got = [block_hashes(s, block) for s in specs]
    intern: dict[tuple[int, int], int] = {}
    ref = [reference_keys(s.prompt_len, s.prefix_hashes, s.prefix_unit, block, intern) for s in specs]
    assert [len(g) for g in got] == [len(k) for k in ref]
    assert all(len(g) == s.prompt_len // block for g, s in zip(got, specs, strict=True) if block <= 512)
    flat_got = [h for g in got for h in g]
    flat_ref = [k for ks in ref for k in ks]
    # the same partition of blocks into "equal content" classes, so the same reuse
    assert len(set(flat_got)) == len(set(flat_ref))
    assert len(set(zip(flat_got, flat_ref, strict=True))) == len(set(flat_ref))
    if block == 512 and rows is None:  # full 512-token blocks only: the last, partial block never shares
        full_refs = len(flat_ref)
        assert full_refs == sum(s.prompt_len // 512 for s in specs) < 288500
        assert 1 - len(set(flat_got)) / full_refs > 0.366  # full blocks are the shared ones
