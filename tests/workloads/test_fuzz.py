"""Property-based tests: random malformed rows are reported at their line and column, or skipped
and counted; arbitrary bytes never escape as anything but a TraceError/WorkloadError."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from workloads import TraceError, WorkloadError, load_trace

SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

BAD_LENGTH = ["", "abc", "-5", "0", "NaN", "nan", "2.5", "inf", "-inf", "1e30", "0x10", "12abc", "true"]
BAD_TIME = ["", "abc", "-1", "NaN", "inf", "1.2.3"]


def write(name: str, text: str | bytes) -> Path:
    d = Path(tempfile.mkdtemp(prefix="pagesim-fuzz-"))
    p = d / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


rows_st = st.lists(st.tuples(st.floats(0, 5), st.integers(1, 5000), st.integers(1, 500)), min_size=2, max_size=30)


@SETTINGS
@given(rows=rows_st, data=st.data(), eol=st.sampled_from(["\n", "\r\n"]))
def test_generic_csv_one_bad_cell(rows, data, eol):
    times = np.cumsum([r[0] for r in rows])
    cells = [[f"{t:.6f}", str(p), str(o)] for t, (_, p, o) in zip(times, rows, strict=True)]
    i = data.draw(st.integers(0, len(rows) - 1), label="row")
    col = data.draw(st.integers(0, 2), label="column")
    bad = data.draw(st.sampled_from(BAD_TIME if col == 0 else BAD_LENGTH), label="value")
    cells[i][col] = bad
    text = eol.join(["arrival_time,prompt_len,output_len", *(",".join(c) for c in cells)])
    p = write("g.csv", text)
    name = ("arrival_time", "prompt_len", "output_len")[col]
    try:
        load_trace(p)
    except TraceError as err:
        assert (err.line, err.column) == (i + 2, name), str(err)
        assert str(p) in str(err) and "\n" not in str(err)
    else:
        raise AssertionError(f"bad value {bad!r} in {name} was accepted")
    r = load_trace(p, skip_bad_rows=True)
    assert r.stats["skipped_rows"] == 1 and len(r) == len(rows) - 1
    assert r.stats["skipped_by_column"] == {name: 1}
    assert i not in r.columns.req_id.tolist()


@SETTINGS
@given(rows=rows_st, data=st.data())
def test_backwards_time_is_reported_at_its_line(rows, data):
    times = list(np.cumsum([r[0] + 0.5 for r in rows]))
    i = data.draw(st.integers(1, len(rows) - 1), label="row")
    times[i] = times[i - 1] - data.draw(st.floats(0.01, 10.0), label="back")
    lines = ["arrival_time,prompt_len,output_len"] + [f"{max(t, 0.0):.6f},5,5" for t in times]
    p = write("g.csv", "\n".join(lines))
    try:
        load_trace(p)
    except TraceError as err:
        assert (err.line, err.column) == (i + 2, "arrival_time") and "backwards" in err.msg
    else:
        raise AssertionError("backwards time accepted")
    r = load_trace(p, skip_bad_rows=True)
    assert np.all(np.diff(r.columns.arrival) >= 0) and r.stats["skipped_rows"] >= 1
    assert len(load_trace(p, sort=True)) == len(rows)


_not_a_number = st.one_of(st.none(), st.booleans(), st.text(max_size=5), st.lists(st.integers(), max_size=2),
                         st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
                         st.sampled_from([float("nan"), float("inf"), float("-inf")]))
JUNK = {  # values that are wrong for each key (never accidentally valid)
    # numbers written as JSON strings ("1") and integral floats (1.0) for counts are wrong too
    "timestamp": st.one_of(_not_a_number, st.integers(-10**6, -1), st.floats(-1e9, -1e-3),
                           st.integers(0, 10**6).map(str)),
    "input_length": st.one_of(_not_a_number, st.integers(-10, 0), st.integers(2**41, 2**70),
                              st.floats(1.01, 1e4).filter(lambda x: x != int(x)),
                              st.integers(1, 5000).map(str), st.integers(1, 5000).map(float)),
    "output_length": st.one_of(_not_a_number, st.integers(-10, 0),
                               st.floats(0.01, 1e4).filter(lambda x: x != int(x)),
                               st.integers(1, 5000).map(str), st.integers(1, 5000).map(float)),
    "hash_ids": st.one_of(st.booleans(), st.text(max_size=5), st.integers(), st.floats(),
                          st.lists(st.integers(0, 9), min_size=3, max_size=6),  # > ceil(600/512) ids
                          st.lists(st.one_of(st.text(max_size=2), st.floats(), st.booleans(), st.none()),
                                   min_size=1, max_size=2)),
}


@SETTINGS
@given(n=st.integers(2, 20), data=st.data())
def test_mooncake_random_bad_values(n, data):
    recs = [{"timestamp": 1000 * k, "input_length": 600, "output_length": 3, "hash_ids": [0, k + 1]}
            for k in range(n)]
    i = data.draw(st.integers(0, n - 1), label="row")
    key = data.draw(st.sampled_from(sorted(JUNK)), label="key")
    value = data.draw(JUNK[key], label="value")
    recs[i][key] = value
    text = "\n".join(json.dumps(r) for r in recs) + "\n"
    p = write("m.jsonl", text)
    try:
        load_trace(p, format="mooncake")
    except TraceError as err:
        assert err.line == i + 1 and err.column == key, str(err)
    else:
        raise AssertionError(f"{key} = {value!r} accepted")
    r = load_trace(p, format="mooncake", skip_bad_rows=True)
    assert len(r) == n - 1 and r.stats["skipped_rows"] == 1 and r.stats["skipped_by_column"] == {key: 1}


@SETTINGS
@given(n=st.integers(1, 10), data=st.data())
def test_broken_json_lines_are_named(n, data):
    lines = [json.dumps({"arrival_time": k, "prompt_len": 3, "output_len": 2}) for k in range(n)]
    i = data.draw(st.integers(0, n - 1))
    cut = data.draw(st.integers(1, len(lines[i]) - 1))
    lines[i] = lines[i][:cut]
    p = write("g.jsonl", "\n".join(lines))
    try:
        load_trace(p, format="generic")
    except TraceError as err:
        assert err.line == i + 1
    else:
        raise AssertionError("truncated JSON accepted")


@SETTINGS
@given(blob=st.binary(max_size=300), name=st.sampled_from(["t.csv", "t.jsonl", "t.txt", "t.csv.gz"]),
       fmt=st.sampled_from([None, "azure", "mooncake", "generic", "sharegpt"]))
def test_arbitrary_bytes_give_clean_errors(blob, name, fmt):
    p = write(name, blob)
    try:
        load_trace(p, format=fmt, rate=1.0, rng=np.random.default_rng(0))
    except (TraceError, WorkloadError) as err:
        assert "\n" not in str(err)


@SETTINGS
@given(text=st.text(alphabet=st.sampled_from(list("0123456789,.-:\n\r TIMESTAMPContextTokensGeneratedTokensaeN")),
                    max_size=300))
def test_arbitrary_azure_like_text_gives_clean_errors(text):
    p = write("a.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n" + text)
    try:
        r = load_trace(p, format="azure")
    except (TraceError, WorkloadError) as err:
        assert "\n" not in str(err)
    else:
        r.columns.check_invariants()


optional_cell = {
    "n": st.one_of(st.none(), st.integers(1, 3)),
    "spec_k": st.one_of(st.none(), st.integers(0, 8)),
    "spec_accept": st.one_of(st.none(), st.floats(0, 1), st.integers(0, 1)),
    "cancel_time": st.one_of(st.none(), st.floats(0, 100)),
    "prefix_hashes": st.one_of(st.none(), st.lists(st.integers(-2**63, 2**63 - 1), max_size=2)),
    "req_id": st.one_of(st.none(), st.integers(0, 10**6)),
}


@SETTINGS
@given(rows=st.lists(st.fixed_dictionaries({}, optional={k: v for k, v in optional_cell.items()}),
                     min_size=1, max_size=12))
def test_jsonl_fast_path_matches_python_path(rows):
    """pyarrow's reader (clean files) and the Python reader must agree on every valid file."""
    recs = []
    for k, extra in enumerate(rows):
        rec = {"arrival_time": k * 0.5, "prompt_len": 2048, "output_len": 3, "prefix_unit": 1024, **extra}
        if rec.get("req_id") is not None:
            rec["req_id"] = k  # unique
        recs.append(rec)
    text = [json.dumps(r) for r in recs]
    fast = write("a.jsonl", "\n".join(text) + "\n")
    slow = write("b.jsonl", "\n".join(text[:1] + ["  "] + text[1:]) + "\n")  # forces the Python path
    try:
        a = load_trace(fast).specs
    except TraceError as err:
        with np.testing.assert_raises(TraceError) as e2:
            load_trace(slow)
        assert (err.column, err.msg) == (e2.exception.column, e2.exception.msg)
        return
    assert a == load_trace(slow).specs
