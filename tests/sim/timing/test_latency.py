"""Latency models: roofline terms, paged block rounding, KV dtypes, sliding window, params files."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from paths import DOCS

from sim.presets import SpecError, get_gpu, get_model
from sim.timing.batch_shape import _window_cumsum
from sim.timing.latency import (
    PARAMS_SCHEMA,
    BatchShape,
    CalibratedLatency,
    LatencyModel,
    RooflineLatency,
    decode_blocks_touched,
    load_latency_model,
)
from sim.timing.latency_params import PARAMS_DIR, default_param_targets, params_filename, roofline_params

OPT, A100 = get_model("opt-13b"), get_gpu("a100-40gb")


def decode(ctx: list[int], block_size: int | None = 16, **kw) -> BatchShape:
    return BatchShape.build(decode=ctx, block_size=block_size, **kw)


# ---- BatchShape ----------------------------------------------------------------------------------------------

def test_batch_shape_validates_and_converts() -> None:
    b = BatchShape(np.array([3, 4]), np.array([0, 10]), np.array([5]), None)
    assert b.prefill_chunk_lens.dtype == np.int64 and b.block_size == 0
    assert b.num_seqs == 3 and b.num_tokens() == 8
    assert BatchShape.build(decode=[9, 9], decode_tokens=[3, 1]).num_tokens() == 4
    with pytest.raises(SpecError, match=r"decode_context_lens\[1\] = 0 out of range \(valid: >= 1\)"):
        decode([4, 0])
    with pytest.raises(SpecError, match="prefill_context_lens has shape"):
        BatchShape(np.array([3, 4]), np.array([0]), np.zeros(0), 16)
    with pytest.raises(SpecError, match="num_decode_tokens_per_seq has shape"):
        BatchShape.build(decode=[5, 6], decode_tokens=[2])
    with pytest.raises(SpecError, match="block_size = -1"):
        decode([5], block_size=-1)


# ---- vectorized geometry vs brute force -----------------------------------------------------------------------

@settings(max_examples=200, deadline=None)
@given(n=st.integers(0, 300), w=st.one_of(st.none(), st.integers(1, 100)))
def test_window_cumsum_brute_force(n: int, w: int | None) -> None:
    expect = sum(j if w is None else min(j, w) for j in range(1, n + 1))
    assert int(_window_cumsum(np.array([n]), w)[0]) == expect


@settings(max_examples=200, deadline=None)
@given(L=st.integers(1, 400), b=st.integers(1, 64), w=st.one_of(st.none(), st.integers(1, 200)))
def test_blocks_touched_brute_force(L: int, b: int, w: int | None) -> None:
    first = 0 if w is None else max(0, L - w)  # attended token positions [first, L)
    expect = len({pos // b for pos in range(first, L)})
    assert int(decode_blocks_touched(np.array([L]), b, w)[0]) == expect


# ---- roofline -------------------------------------------------------------------------------------------------

def test_decode_step_is_weights_plus_kv_over_bandwidth() -> None:
    r = RooflineLatency(OPT, A100, overhead_s=1e-3, efficiency=0.5)
    ctx = [100, 2000, 33]
    bw = 1555e9 * 0.5
    read_tokens = 112 + 2000 + 48  # whole 16-token blocks
    expect = (OPT.num_params * 2 + 819200 * (read_tokens + 3)) / bw + 1e-3
    assert r.step_time(decode(ctx)) == pytest.approx(expect, rel=1e-12)
    br = r.breakdown(decode(ctx))
    assert sum(br.values()) == pytest.approx(r.step_time(decode(ctx)), rel=1e-12)
    assert br["comm"] == 0.0 and br["attn_prefill"] == 0.0


def test_paged_reads_last_block_whole_contiguous_exact() -> None:
    r = RooflineLatency(OPT, A100)
    t = {ctx: r.breakdown(decode([ctx]))["attn_decode"] for ctx in (16, 17, 32)}
    assert t[16] < t[17] == t[32]
    c = {ctx: r.breakdown(decode([ctx], block_size=0))["attn_decode"] for ctx in (16, 17, 32)}
    assert c[16] < c[17] < c[32] and c[17] < t[17]
    # Bigger blocks waste more reads on the last partial block.
    assert r.breakdown(decode([17], 64))["attn_decode"] > t[17]


def test_prefill_is_compute_bound_and_follows_flops() -> None:
    r = RooflineLatency(OPT, A100, efficiency=1.0)
    b = BatchShape.build(prefill=[2048])
    lin = r.breakdown(b)["linear"]
    flops = 2 * OPT.num_layers * OPT.layer_matmul_params() * 2048 + 2 * OPT.vocab_size * OPT.hidden_size
    assert lin == pytest.approx(flops / 312e12, rel=1e-12)
    assert lin > OPT.weight_bytes() / 1555e9  # compute-bound
    attn = r.breakdown(b)["attn_prefill"]
    assert attn == pytest.approx(4 * 40 * 40 * 128 * (2048 * 2049 / 2) / 312e12, rel=1e-12)
    # Chunked: the second half of the prompt attends to the first half too, so it costs more.
    first = r.breakdown(BatchShape.build(prefill=[1024]))["attn_prefill"]
    second = r.breakdown(BatchShape.build(prefill=[1024], prefill_context=[1024]))["attn_prefill"]
    assert first + second == pytest.approx(attn, rel=1e-12) and second > first


@settings(max_examples=60, deadline=None)
@given(chunks=st.lists(st.tuples(st.integers(1, 5000), st.integers(0, 5000)), min_size=1, max_size=40))
def test_prefill_term_small_and_large_batches_agree(chunks: list[tuple[int, int]]) -> None:
    """Few prefills take a plain-Python path, many a NumPy one: both give the closed form."""
    r = RooflineLatency(OPT, A100, efficiency=1.0)
    c, p = np.array(chunks).T
    pairs = float(sum(int(ci) * int(pi) + int(ci) * (int(ci) + 1) // 2 for ci, pi in chunks))
    nbytes = 819200.0 * (p.sum() + 2 * c.sum())
    expect = max(nbytes / 1555e9, 4 * 40 * 40 * 128 * pairs / 312e12)
    got = r.breakdown(BatchShape.build(prefill=c.tolist(), prefill_context=p.tolist()))["attn_prefill"]
    assert got == pytest.approx(expect, rel=1e-12)


def test_kv_dtype_scales_decode_bytes() -> None:
    r = RooflineLatency(get_model("llama-2-7b"), get_gpu("h100-sxm"))
    ctx = [4000] * 64
    fp16 = r.breakdown(decode(ctx))["attn_decode"]
    assert r.breakdown(decode(ctx, kv_dtype="fp8_e4m3"))["attn_decode"] == pytest.approx(fp16 / 2, rel=1e-12)
    assert r.breakdown(decode(ctx, kv_dtype="fp32"))["attn_decode"] == pytest.approx(fp16 * 2, rel=1e-12)
    assert r.breakdown(decode(ctx, kv_dtype="int8:per_head"))["attn_decode"] > fp16 / 2
    with pytest.raises(SpecError, match="kv_dtype 'fp5'"):
        r.step_time(decode(ctx, kv_dtype="fp5"))


def test_sliding_window_caps_decode_reads() -> None:
    r = RooflineLatency(get_model("mistral-7b"), get_gpu("a100-80gb"))
    t = {ctx: r.breakdown(decode([ctx]))["attn_decode"] for ctx in (4096, 8192, 30000)}
    assert t[4096] == pytest.approx(t[8192]) and t[30000] <= t[4096] * 1.01  # <= one extra block
    full = RooflineLatency(get_model("llama-3-8b"), get_gpu("a100-80gb"))  # same KV shape, no window
    assert full.breakdown(decode([30000]))["attn_decode"] > 5 * t[30000]


def test_batch_shares_weights_and_empty_batch_is_free() -> None:
    r = RooflineLatency(OPT, A100)
    a, b = r.step_time(decode([500])), r.step_time(decode([700]))
    assert r.step_time(decode([500, 700])) < a + b  # one weight read per step, not per sequence
    assert r.step_time(decode([])) == 0.0
    assert set(r.breakdown(decode([])).values()) == {0.0}


def test_speculative_verification_tokens_count() -> None:
    r = RooflineLatency(OPT, A100)
    one = r.breakdown(decode([1000] * 200))
    k4 = r.breakdown(decode([1000] * 200, decode_tokens=[5] * 200))
    assert k4["linear"] > one["linear"] and k4["attn_decode"] >= one["attn_decode"]


def _with_sums(b: BatchShape) -> BatchShape:
    """The same batch with the engine's optional precomputed decode sums."""
    dc, bs = b.decode_context_lens, b.block_size or 0
    return BatchShape(b.prefill_chunk_lens, b.prefill_context_lens, dc, bs, b.kv_dtype,
                      b.num_decode_tokens_per_seq, decode_ctx_sum=int(dc.sum()),
                      decode_blocks_sum=int(((dc + bs - 1) // bs).sum()) if bs else None)


@settings(max_examples=150, deadline=None)
@given(ctx=st.lists(st.integers(1, 5000), max_size=60), prefill=st.lists(st.integers(1, 3000), max_size=3),
       bs=st.sampled_from([0, 1, 8, 16, 32]), q=st.booleans(), dtype=st.sampled_from(["fp16", "fp8_e4m3", "int8:per_head"]),
       model=st.sampled_from(["opt-13b", "mistral-7b", "llama-2-70b"]))
def test_precomputed_sums_give_bit_identical_times(ctx: list[int], prefill: list[int], bs: int, q: bool,
                                                    dtype: str, model: str) -> None:
    """The engine's kept sums (and step_time's decode-only fast path) change no bit of any model's time."""
    m, g = get_model(model), get_gpu("a100-80gb")
    b = BatchShape.build(prefill=prefill, decode=ctx, block_size=bs, kv_dtype=dtype,
                         decode_tokens=[2] * len(ctx) if q else None)
    hinted = _with_sums(b)
    tp = 2 if model == "llama-2-70b" else 1
    for lm in (RooflineLatency(m, g, tensor_parallel=tp), CalibratedLatency(_calibrated(), m, g, tensor_parallel=tp)):
        plain = lm.step_time(b)
        assert lm.step_time(hinted) == plain
        assert plain == (sum(lm.terms(b)) + lm.overhead_s if b.num_seqs else 0.0)
        assert lm.breakdown(hinted) == lm.breakdown(b)


@settings(max_examples=150, deadline=None)
@given(ctx=st.lists(st.integers(1, 4096), max_size=80), bs=st.sampled_from([0, 1, 16, 32]),
       dtype=st.sampled_from(["fp16", "fp8_e4m3", "int8:per_head"]),
       model=st.sampled_from(["opt-13b", "mistral-7b", "llama-2-70b"]), fitted_linear=st.booleans())
def test_decode_step_time_from_sums_is_step_time(ctx: list[int], bs: int, dtype: str, model: str,
                                                 fitted_linear: bool) -> None:
    """The engine's decode-only shortcut: the same seconds as step_time, bit for bit (contexts within
    Mistral's 4096-token window, as the engine guarantees before using it)."""
    m, g = get_model(model), get_gpu("h100-sxm")
    tp = 2 if model == "llama-2-70b" else 1
    extra = {"linear": {"c0_s": 0.004, "c_tokens_s": 2e-6}} if fitted_linear else {}
    b = BatchShape.build(decode=ctx, block_size=bs, kv_dtype=dtype)
    arr = np.array(ctx, dtype=np.int64)
    blocks = int(((arr + bs - 1) // bs).sum()) if bs else 0
    for lm in (RooflineLatency(m, g, tensor_parallel=tp),
               CalibratedLatency(_calibrated(**extra), m, g, tensor_parallel=tp)):
        assert lm.decode_step_time(len(ctx), int(arr.sum()), blocks, bs, dtype) == lm.step_time(b)


def test_precomputed_sums_are_checked() -> None:
    ok = BatchShape(np.zeros(0), np.zeros(0), np.array([5, 17]), 16, decode_ctx_sum=22, decode_blocks_sum=3)
    assert ok.decode_ctx_sum == 22
    with pytest.raises(SpecError, match=r"decode_ctx_sum = 21 but the arrays give 22"):
        BatchShape(np.zeros(0), np.zeros(0), np.array([5, 17]), 16, decode_ctx_sum=21)
    with pytest.raises(SpecError, match=r"decode_blocks_sum = 2 but the arrays give 3"):
        BatchShape(np.zeros(0), np.zeros(0), np.array([5, 17]), 16, decode_blocks_sum=2)
    # Contiguous batches have no blocks: the blocks sum is not used there and not checked.
    assert BatchShape(np.zeros(0), np.zeros(0), np.array([5]), None, decode_blocks_sum=99).block_size == 0


def test_tensor_parallel_halves_weight_time_and_adds_comm() -> None:
    m, g = get_model("llama-2-70b"), get_gpu("h100-sxm")
    r2, r4 = RooflineLatency(m, g, tensor_parallel=2), RooflineLatency(m, g, tensor_parallel=4)
    b = decode([1000] * 8)
    assert r2.breakdown(b)["linear"] == pytest.approx(2 * r4.breakdown(b)["linear"])
    assert 0 < r2.breakdown(b)["comm"] < r4.breakdown(b)["comm"]
    with pytest.raises(SpecError, match="tensor_parallel = 3"):
        RooflineLatency(m, g, tensor_parallel=3)


def test_bad_options() -> None:
    with pytest.raises(SpecError, match="'efficiency' = 0"):
        RooflineLatency(OPT, A100, efficiency=0)
    with pytest.raises(SpecError, match="'overhead_s' = -1"):
        RooflineLatency(OPT, A100, overhead_s=-1)


# ---- params files and loading ------------------------------------------------------------------------------

def test_shipped_defaults_match_generator() -> None:
    targets = default_param_targets()
    names = {params_filename(m, g, tp) for m, g, tp in targets}
    assert names == {p.name for p in PARAMS_DIR.glob("*.json")}
    assert any(m.name == "Llama-2-70B" and tp == 2 for m, _, tp in targets)
    for m, g, tp in targets:
        shipped = json.loads((PARAMS_DIR / params_filename(m, g, tp)).read_text())
        assert shipped == json.loads(json.dumps(roofline_params(m, g, tensor_parallel=tp)))
        assert shipped["source"] == "roofline"


def test_shipped_file_loads_as_the_roofline() -> None:
    lm = load_latency_model(PARAMS_DIR / "roofline_opt-13b_a100-40gb.json", OPT, A100)
    assert isinstance(lm, RooflineLatency) and isinstance(lm, LatencyModel) and lm.name == "roofline"
    b = BatchShape.build(prefill=[300], decode=[100, 900, 17])
    assert lm.step_time(b) == RooflineLatency(OPT, A100).step_time(b)
    tp = load_latency_model(PARAMS_DIR / "roofline_llama-2-70b_h100-sxm_tp2.json")  # model/gpu from the file
    assert isinstance(tp, RooflineLatency) and tp.tensor_parallel == 2
    assert load_latency_model(None, "opt-13b", "a100-40gb").name == "roofline"
    assert load_latency_model("roofline", OPT, A100).step_time(b) == lm.step_time(b)


def _calibrated(**extra) -> dict:
    return {"schema": PARAMS_SCHEMA, "source": "calibrated", "overhead_s": 1e-3,
            "attn_decode": {"variants": {
                "paged": {"c0_s": 4e-6, "c_kv_bytes_s": 1e-12, "c_seqs_s": 1e-7, "c_blocks_s": 2e-8},
                "partitioned": {"c0_s": 2e-5, "c_kv_bytes_s": 0.8e-12, "c_seqs_s": 1e-7, "c_blocks_s": 2e-8}}},
            **extra}


def test_calibrated_decode_term_formula_and_variant_choice() -> None:
    lm = CalibratedLatency(_calibrated(), OPT, A100)
    roof = RooflineLatency(OPT, A100, overhead_s=1e-3)
    per_layer_token = 819200 / 40
    for ctx in ([10, 20], [30000] * 4):
        b = decode(ctx)
        blocks = sum(-(-c // 16) for c in ctx)
        x = np.array([1, per_layer_token * sum(ctx), len(ctx), blocks])
        paged = 4e-6 + 1e-12 * x[1] + 1e-7 * x[2] + 2e-8 * x[3]
        part = 2e-5 + 0.8e-12 * x[1] + 1e-7 * x[2] + 2e-8 * x[3]
        assert lm.breakdown(b)["attn_decode"] == pytest.approx(40 * min(paged, part), rel=1e-12)
        assert lm.step_time(b) == pytest.approx(40 * min(paged, part) + roof.breakdown(b)["linear"] + 1e-3)
    # Short contexts pick the paged kernel, long ones the partitioned one.
    assert lm.breakdown(decode([10]))["attn_decode"] == pytest.approx(40 * (4e-6 + 1e-12 * per_layer_token * 10
                                                                           + 1e-7 + 2e-8))
    # Contiguous batches without fitted contiguous rows: the paged family with 0 blocks.
    c = lm.breakdown(decode([10], block_size=0))["attn_decode"]
    assert c == pytest.approx(40 * (4e-6 + 1e-12 * per_layer_token * 10 + 1e-7))


def test_calibrated_optional_linear_and_prefill_blocks() -> None:
    lm = CalibratedLatency(_calibrated(linear={"c0_s": 0.01, "c_tokens_s": 1e-5},
                                       attn_prefill={"c0_s": 1e-5, "c_flops_s": 1e-14}), OPT, A100)
    b = BatchShape.build(prefill=[100], decode=[50, 60])
    br = lm.breakdown(b)
    assert br["linear"] == pytest.approx(0.01 + 1e-5 * 102)
    assert br["attn_prefill"] == pytest.approx(40 * (1e-5 + 1e-14 * 4 * 40 * 128 * (100 * 101 / 2)))


def test_load_calibrated_file_names_and_target_checks(tmp_path: Path) -> None:
    p = tmp_path / "h100_fit.json"
    p.write_text(json.dumps(_calibrated(model="OPT-13B", gpu="A100-40GB")))
    lm = load_latency_model(str(p), "opt-13b", "a100-40gb")
    assert isinstance(lm, CalibratedLatency) and lm.name == "calibrated:h100_fit.json"
    from_file = load_latency_model(p)  # presets from the file
    assert isinstance(from_file, CalibratedLatency) and from_file.model is OPT
    with pytest.raises(SpecError, match="made for gpu 'A100-40GB' but the run uses 'H100-SXM'"):
        load_latency_model(p, OPT, get_gpu("h100-sxm"))
    assert load_latency_model(_calibrated(), OPT, A100).name == "calibrated"


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("schema"), "missing key 'schema'"),
    (lambda d: d.update(schema="pagesim.latency/0"), "'schema' = 'pagesim.latency/0' is not supported"),
    (lambda d: d.update(source="guess"), "'source' = 'guess'"),
    (lambda d: d["attn_decode"]["variants"]["paged"].pop("c_blocks_s"),
     "missing key 'attn_decode.variants.paged.c_blocks_s'"),
    (lambda d: d["attn_decode"]["variants"]["paged"].update(c0_s=-1.0), "'attn_decode.variants.paged.c0_s' = -1.0"),
    (lambda d: d["attn_decode"]["variants"].update(fancy={}), "unknown variant 'attn_decode.variants.fancy'"),
    (lambda d: d["attn_decode"].update(variants={"contiguous": d["attn_decode"]["variants"]["paged"]}),
     "needs 'paged' or 'partitioned'"),
    (lambda d: d.update(efficiency=2), "'efficiency' = 2 out of range"),
    (lambda d: d.update(linear={"c0_s": 0.0}), "missing key 'linear.c_tokens_s'"),
])
def test_bad_params_files_name_the_key(tmp_path: Path, mutate, message: str) -> None:
    d = _calibrated()
    mutate(d)
    p = tmp_path / "bad.json"
    p.write_text(json.dumps(d))
    with pytest.raises(SpecError, match=f"latency params file {re.escape(str(p))}: .*{re.escape(message)}"):
        load_latency_model(p, OPT, A100)


def test_unreadable_params_files(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="cannot read"):
        load_latency_model(tmp_path / "missing.json", OPT, A100)
    p = tmp_path / "broken.json"
    p.write_text('{"schema": "pagesim.latency/1",\n "source": }')
    with pytest.raises(SpecError, match="invalid JSON at line 2, column 12"):
        load_latency_model(p, OPT, A100)
    with pytest.raises(SpecError, match="needs a model and a gpu"):
        load_latency_model(None)


def test_docs_examples_run() -> None:
    """The Python examples in docs/latency.md run as written (and their asserts hold)."""
    doc = (DOCS / "latency.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) >= 4
    for code in blocks:
        exec(compile(code, "docs/latency.md", "exec"), {})
