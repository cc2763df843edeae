"""Trace loaders on small hand-written files: formats, edge cases, and clear errors for bad input."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import pytest

from workloads import TraceError, WorkloadError, load_trace, sniff_format
from workloads.arrivals import Constant

AZURE_HEADER = "TIMESTAMP,ContextTokens,GeneratedTokens"


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    p = tmp_path / name
    p.write_bytes(text.encode() if isinstance(text, str) else text)
    return p


def azure_rows(*rows: str, eol: str = "\r\n", final: bool = False) -> str:
    return eol.join((AZURE_HEADER, *rows)) + (eol if final else "")


# --- Azure -------------------------------------------------------------------------------------

def test_azure_crlf_no_final_newline_seven_digit_fractions(tmp_path):
    p = write(tmp_path, "a.csv", azure_rows("2023-11-16 18:17:03.9799600,4808,10",
                                            "2023-11-16 18:17:04.0319637,3180,8",
                                            "2023-11-16 18:17:05.0000001,110,27"))
    r = load_trace(p)
    assert r.stats["format"] == "azure"
    assert [s.prompt_len for s in r.specs] == [4808, 3180, 110]
    assert [s.output_len for s in r.specs] == [10, 8, 27]
    # the 7th fractional digit (100 ns) is kept: 04.0319637 - 03.9799600 = 0.0520037 s
    assert r.specs[1].arrival_time == pytest.approx(0.0520037, abs=1e-9)
    assert r.specs[2].arrival_time == pytest.approx(1.0200401, abs=1e-9)
    assert r.frame()["line"].tolist() == [2, 3, 4]


@pytest.mark.parametrize("eol,final", [("\n", True), ("\n", False), ("\r\n", True)])
def test_azure_line_endings(tmp_path, eol, final):
    p = write(tmp_path, "a.csv", azure_rows("2023-11-16 18:00:00.0000000,5,6",
                                            "2023-11-16 18:00:01.5000000,7,8", eol=eol, final=final))
    r = load_trace(p, format="azure")
    assert len(r) == 2 and r.specs[1].arrival_time == pytest.approx(1.5)


def test_azure_utc_offsets_2024_style(tmp_path):
    p = write(tmp_path, "a.csv", azure_rows("2024-05-10 00:00:00.002880+00:00,5,6",
                                            "2024-05-10 02:00:01.002880+02:00,7,8"))
    r = load_trace(p)
    assert r.specs[1].arrival_time == pytest.approx(1.0)


def test_azure_blank_lines_do_not_shift_line_numbers(tmp_path):
    p = write(tmp_path, "a.csv", azure_rows("2023-11-16 18:00:00.0,5,6", "", "2023-11-16 18:00:01.0,x,8"))
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert (e.value.line, e.value.column) == (4, "ContextTokens")
    assert "not a number: 'x'" in str(e.value)


@pytest.mark.parametrize("cell,column,needle", [
    ("2023-11-16 18:00:01.0,0,8", "ContextTokens", "out of range"),
    ("2023-11-16 18:00:01.0,-3,8", "ContextTokens", "out of range"),
    ("2023-11-16 18:00:01.0,5,2.5", "GeneratedTokens", "not an integer"),
    ("2023-11-16 18:00:01.0,5,NaN", "GeneratedTokens", "missing"),
    ("2023-11-16 18:00:01.0,5,", "GeneratedTokens", "missing"),
    ("2023-11-16 18:00:01.0,inf,5", "ContextTokens", "not finite"),
    ("yesterday,5,6", "TIMESTAMP", "not a timestamp"),
    (",5,6", "TIMESTAMP", "missing"),
    ("2023-11-16 17:00:00.0,5,6", "TIMESTAMP", "backwards"),
])
def test_azure_bad_rows_name_file_line_column(tmp_path, cell, column, needle):
    p = write(tmp_path, "bad.csv", azure_rows("2023-11-16 18:00:00.0,5,6", cell, "2023-11-16 18:00:02.0,5,6"))
    with pytest.raises(TraceError) as e:
        load_trace(p)
    err = e.value
    assert (err.line, err.column) == (3, column)
    assert needle in str(err) and str(p) in str(err)
    assert "\n" not in str(err)
    # skipping instead: the bad row is counted, the others kept
    r = load_trace(p, skip_bad_rows=True)
    assert len(r) == 2 and r.stats["skipped_rows"] == 1
    assert r.stats["skipped_by_column"] == {column: 1}
    assert r.stats["skipped_examples"][0].startswith(f"{p}:3: column '{column}'")


def test_azure_earliest_bad_line_wins_across_columns(tmp_path):
    p = write(tmp_path, "bad.csv", azure_rows("2023-11-16 18:00:00.0,5,6", "2023-11-16 18:00:01.0,5,zz",
                                              "2023-11-16 18:00:02.0,0,6"))
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert (e.value.line, e.value.column) == (3, "GeneratedTokens")


def test_azure_sort_instead_of_rejecting_backwards(tmp_path):
    p = write(tmp_path, "a.csv", azure_rows("2023-11-16 18:00:05.0,5,6", "2023-11-16 18:00:00.0,7,8"))
    with pytest.raises(TraceError, match="backwards"):
        load_trace(p)
    r = load_trace(p, sort=True)
    assert [s.prompt_len for s in r.specs] == [7, 5]
    assert [s.arrival_time for s in r.specs] == [0.0, 5.0]


def test_azure_missing_column_and_ragged_row(tmp_path):
    p = write(tmp_path, "a.csv", "TIMESTAMP,ContextTokens\n2023-11-16 18:00:00.0,5\n")
    with pytest.raises(TraceError, match="GeneratedTokens") as e:
        load_trace(p, format="azure")
    assert e.value.line == 1
    p = write(tmp_path, "b.csv", azure_rows("2023-11-16 18:00:00.0,5,6", "2023-11-16 18:00:01.0,5,6,7"))
    with pytest.raises(TraceError, match="malformed CSV") as e:
        load_trace(p)
    assert e.value.line == 3


def test_all_rows_bad_when_skipping(tmp_path):
    p = write(tmp_path, "a.csv", azure_rows("2023-11-16 18:00:00.0,0,6", "2023-11-16 18:00:01.0,-1,6"))
    with pytest.raises(TraceError, match="no valid rows"):
        load_trace(p, skip_bad_rows=True)


# --- file-level errors -------------------------------------------------------------------------

@pytest.mark.parametrize("content,needle", [
    (b"", "empty file"), (b"\n\r\n  \n", "empty file"), (AZURE_HEADER.encode() + b"\r\n", "only a header"),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not a text file"), (b"\xff\xfe\xfa\xfb" * 10, "not a UTF-8"),
    (b"hello world\n", "unknown trace format"), (b"a,b,c\n1,2,3\n", "unknown trace format"),
])
def test_file_level_errors(tmp_path, content, needle):
    p = write(tmp_path, "t.csv", content)
    with pytest.raises(TraceError, match=needle) as e:
        load_trace(p)
    assert str(p) in str(e.value)


def test_missing_file_directory_unknown_format_name(tmp_path):
    with pytest.raises(TraceError, match="no such file"):
        load_trace(tmp_path / "nope.csv")
    with pytest.raises(TraceError, match="is a directory"):
        load_trace(tmp_path)
    p = write(tmp_path, "a.csv", azure_rows("2023-11-16 18:00:00.0,5,6"))
    with pytest.raises(WorkloadError, match="unknown .*valid: azure, mooncake, sharegpt, generic"):
        load_trace(p, format="parquet")


def test_json_array_and_unmatched_jsonl(tmp_path):
    with pytest.raises(TraceError, match="JSON array"):
        load_trace(write(tmp_path, "a.json", '[{"prompt_len": 1, "output_len": 2}]'), format="generic")
    with pytest.raises(TraceError, match="match no known format"):
        load_trace(write(tmp_path, "b.jsonl", '{"foo": 1}\n'))


def test_gzip_is_transparent(tmp_path):
    p = write(tmp_path, "a.csv.gz", gzip.compress(azure_rows("2023-11-16 18:00:00.0,5,6",
                                                             "2023-11-16 18:00:02.0,7,8").encode()))
    r = load_trace(p)
    assert r.stats["format"] == "azure" and r.specs[1].arrival_time == 2.0


# --- Mooncake ----------------------------------------------------------------------------------

def mooncake_line(ts: int, inp: int, out: int, ids: list[int]) -> str:
    return json.dumps({"timestamp": ts, "input_length": inp, "output_length": out, "hash_ids": ids})


def test_mooncake_small(tmp_path):
    p = write(tmp_path, "m.jsonl", "\n".join([mooncake_line(0, 1100, 5, [1, 2, 3]),
                                              mooncake_line(1500, 600, 7, [1, 9])]) + "\n")
    assert sniff_format(p) == "mooncake"
    r = load_trace(p)
    a, b = r.specs
    assert (a.prefix_hashes, a.prefix_unit, a.prompt_len, a.output_len) == ((1, 2, 3), 512, 1100, 5)
    assert b.arrival_time == 1.5 and b.prefix_hashes == (1, 9)
    assert r.stats["hash_refs"] == 5 and r.stats["hash_unique"] == 4
    assert r.stats["hash_repeat_ratio"] == pytest.approx(0.2)


@pytest.mark.parametrize("line,column,needle", [
    ('{"timestamp": 5, "input_length": 10, "output_length": 2}', "hash_ids", None),
    ('{"timestamp": 5, "input_length": 10, "output_length": 2, "hash_ids": [1, "a"]}', "hash_ids", "not a list"),
    ('{"timestamp": 5, "input_length": 600, "output_length": 2, "hash_ids": [1, 2, 3]}', "hash_ids", "at most"),
    ('{"timestamp": 5, "input_length": true, "output_length": 2, "hash_ids": [1]}', "input_length", "not a number"),
    ('{"timestamp": 5, "output_length": 2, "hash_ids": [1]}', "input_length", "missing"),
    ('{"timestamp": 5, "input_length": 10, "output_length": 0, "hash_ids": [1]}', "output_length", "out of range"),
    ('{"timestamp": -1, "input_length": 10, "output_length": 1, "hash_ids": [1]}', "timestamp", "out of range"),
    ('{"timestamp": 1, "input_length": 10, "output_length": 1, "hash_ids": [1]}', "timestamp", "backwards"),
    ('{"timestamp": 5, "input_length": 10, "output_length": 1, "hash_ids": [1]', None, "not valid JSON"),
    ('[5, 10, 1]', None, "not a JSON object"),
])
def test_mooncake_bad_rows(tmp_path, line, column, needle):
    good = mooncake_line(2, 10, 1, [7])
    p = write(tmp_path, "m.jsonl", "\n".join([good, "", line, mooncake_line(9, 10, 1, [7])]))
    if needle is None:  # a missing hash_ids key means no prefix info, which is allowed
        r = load_trace(p, format="mooncake")
        assert r.specs[1].prefix_hashes == ()
        return
    with pytest.raises(TraceError) as e:
        load_trace(p, format="mooncake")
    assert (e.value.line, e.value.column) == (3, column) and needle in str(e.value)
    r = load_trace(p, format="mooncake", skip_bad_rows=True)
    assert len(r) == 2 and r.stats["skipped_rows"] == 1


# --- length tables -----------------------------------------------------------------------------

def test_length_table_needs_arrivals_and_checks_totals(tmp_path):
    text = "num_prefill_tokens,num_decode_tokens,num_total_tokens,pd_ratio\n10,5,15,2.0\n3,4,7,0.75\n"
    p = write(tmp_path, "s.csv", text)
    with pytest.raises(WorkloadError, match="no arrival times"):
        load_trace(p)
    r = load_trace(p, arrival=Constant(2.0), rng=np.random.default_rng(0))
    assert [(s.arrival_time, s.prompt_len, s.output_len) for s in r.specs] == [(0.0, 10, 5), (0.5, 3, 4)]
    bad = write(tmp_path, "t.csv", text.replace("3,4,7,", "3,4,8,"))
    with pytest.raises(TraceError, match="num_total_tokens") as e:
        load_trace(bad, rate=1.0, rng=np.random.default_rng(0))
    assert e.value.line == 3


def test_length_table_shuffle_is_seeded(tmp_path):
    rows = "\n".join(f"{i},{i}" for i in range(1, 51))
    p = write(tmp_path, "s.csv", "num_prefill_tokens,num_decode_tokens\n" + rows)
    a = load_trace(p, rate=5.0, rng=np.random.default_rng(3), shuffle=True)
    b = load_trace(p, rate=5.0, rng=np.random.default_rng(3), shuffle=True)
    assert [s.prompt_len for s in a.specs] == [s.prompt_len for s in b.specs]
    assert sorted(s.prompt_len for s in a.specs) == list(range(1, 51))
    assert [s.prompt_len for s in a.specs] != list(range(1, 51))
    assert all(s.req_id == s.prompt_len - 1 for s in a.specs)  # ids stay the source row


# --- generic schema ----------------------------------------------------------------------------

def test_generic_csv_all_fields(tmp_path):
    text = ("arrival_time,prompt_len,output_len,n,beam_width,spec_k,spec_accept,prefix_hashes,prefix_unit,"
            "cancel_time,req_id\n"
            "0.0,100,10,2,,,,\"[5, 6]\",64,,a\n"
            "0.5,200,3,,4,,,5 7,64,1.5,b\n"
            "1.0,8,1,,,4,0.7,,,,c\n")
    p = write(tmp_path, "g.csv", text)
    r = load_trace(p)
    a, b, c = r.specs
    assert (a.req_id, a.n, a.beam_width, a.prefix_hashes, a.prefix_unit) == ("a", 2, 1, (5, 6), 64)
    assert (b.beam_width, b.prefix_hashes, b.cancel_time) == (4, (5, 7), 1.5)
    assert (c.spec_k, c.spec_accept, c.prefix_hashes, c.cancel_time) == (4, 0.7, (), None)


def test_generic_jsonl_and_length_only(tmp_path):
    rows = [{"arrival_time": 0.25 * i, "prompt_len": 10 + i, "output_len": 5, "prefix_hashes": [1, i]}
            for i in range(4)]
    p = write(tmp_path, "g.jsonl", "\n".join(json.dumps(r) for r in rows))
    with pytest.raises(TraceError, match="prefix_unit"):
        load_trace(p)
    r = load_trace(p, prefix_unit=8)
    assert [s.prefix_hashes for s in r.specs] == [(1, 0), (1, 1), (1, 2), (1, 3)]
    assert r.specs[3].arrival_time == 0.75 and r.stats["file_kind"] == "jsonl"
    q = write(tmp_path, "h.csv", "prompt_len,output_len\n5,6\n7,8\n")
    r = load_trace(q, rate=4.0, arrival="constant", rng=np.random.default_rng(0))
    assert [s.arrival_time for s in r.specs] == [0.0, 0.25]


@pytest.mark.parametrize("row,column,needle", [
    ("0.5,10,5,2,2", "beam_width", "cannot both"),
    ("0.5,10,5,0,1", "n", "out of range"),
    ("0.5,10,5,1,1,-1", "spec_k", "out of range"),
    ("0.5,10,5,1,1,2,1.5", "spec_accept", "out of range"),
    ("0.5,10,5,1,1,2,0.5,1 2 x", "prefix_hashes", "not a list"),
    ("0.5,10,5,1,1,2,0.5,1 2 3 4,4", "prefix_hashes", "extend past"),
    ("-0.5,10,5", "arrival_time", "out of range"),
    ("0.5,10,5,1,1,0,0,,8,-2", "cancel_time", "out of range"),
    ("0.5,10,5,1,1,0,0,,8,,r1", "req_id", "duplicate"),
    ("0.5,10,5,1,1,0,0,,8,,", "req_id", "missing"),
])
def test_generic_bad_rows(tmp_path, row, column, needle):
    header = "arrival_time,prompt_len,output_len,n,beam_width,spec_k,spec_accept,prefix_hashes,prefix_unit," \
             "cancel_time,req_id"
    first = "0.0,10,5,1,1,0,0,,8,,r1"
    cells = row.split(",")
    if len(cells) < 11:
        cells = cells + [""] * (10 - len(cells)) + ["r2"]
    p = write(tmp_path, "g.csv", "\n".join([header, first, ",".join(cells)]) + "\n")
    with pytest.raises(TraceError) as e:
        load_trace(p)
    assert (e.value.line, e.value.column) == (3, column) and needle in str(e.value)


def test_generic_unknown_column_is_rejected_unless_allowed(tmp_path):
    p = write(tmp_path, "g.csv", "arrival_time,prompt_len,output_len,beam\n0,5,5,4\n")
    with pytest.raises(TraceError, match="unknown column") as e:
        load_trace(p)
    assert e.value.column == "beam"
    r = load_trace(p, allow_extra_columns=True)
    assert r.specs[0].beam_width == 1 and r.stats["ignored_columns"] == ["beam"]


def test_generic_missing_required_column(tmp_path):
    p = write(tmp_path, "g.jsonl", '{"arrival_time": 0, "prompt_len": 3}\n')
    with pytest.raises(TraceError, match="missing required column") as e:
        load_trace(p, format="generic")
    assert e.value.column == "output_len"


def test_trace_error_pickles():
    import pickle

    err = pickle.loads(pickle.dumps(TraceError("f.csv", 3, "x", "bad")))
    assert str(err) == "f.csv:3: column 'x': bad"


def test_mooncake_key_missing_everywhere_is_a_file_error(tmp_path):
    p = write(tmp_path, "m.jsonl", '{"timestamp": 0, "input_length": 5, "hash_ids": [1]}\n' * 3)
    with pytest.raises(TraceError, match="missing key in every row") as e:
        load_trace(p, format="mooncake")
    assert e.value.column == "output_length"


def test_jsonl_fast_and_python_paths_agree(tmp_path):
    """A clean file takes the pyarrow path; a whitespace-only line forces the Python paths."""
    rows = [json.dumps({"arrival_time": 0.5 * i, "prompt_len": 600 + i, "output_len": 1 + i % 3,
                        "n": 1 + i % 2, "prefix_hashes": [0, i], "prefix_unit": 512, "req_id": f"r{i}",
                        "spec_accept": 0.25, "cancel_time": None}) for i in range(50)]
    clean = write(tmp_path, "a.jsonl", "\n".join(rows) + "\n")
    odd = write(tmp_path, "b.jsonl", "\n".join(rows[:10] + ["   "] + rows[10:]) + "\n")
    a, b = load_trace(clean), load_trace(odd)
    assert a.specs == b.specs and len(a) == 50
    assert a.specs[3].prefix_hashes == (0, 3) and a.specs[3].req_id == "r3" and a.specs[3].cancel_time is None
    assert a.frame()["line"].tolist()[9:12] == [10, 11, 12]
    assert b.frame()["line"].tolist()[9:12] == [10, 12, 13]


def test_arrival_options_on_a_timestamped_file_are_refused(tmp_path):
    p = write(tmp_path, "a.csv", azure_rows("2023-11-16 18:00:00.0,5,6", "2023-11-16 18:00:01.0,5,6"))
    for kw in ({"rate": 5.0}, {"arrival": "gamma"}, {"shuffle": True}):
        with pytest.raises(WorkloadError, match="target_rate"):
            load_trace(p, rng=np.random.default_rng(0), **kw)


def test_null_ids_in_a_first_row_do_not_scramble_later_rows(tmp_path):
    # pyarrow's JSON reader scrambles list items when row 1 has [null, null]; the loader must not
    lines = ['{"timestamp": 0, "input_length": 600, "output_length": 3, "hash_ids": [null, null]}'] + [
        json.dumps({"timestamp": k, "input_length": 600, "output_length": 3, "hash_ids": [0, k]})
        for k in (2, 3)]
    p = write(tmp_path, "m.jsonl", "\n".join(lines))
    with pytest.raises(TraceError, match="not a list of integer ids") as e:
        load_trace(p)
    assert e.value.line == 1
    r = load_trace(p, skip_bad_rows=True)
    assert [s.prefix_hashes for s in r.specs] == [(0, 2), (0, 3)]
