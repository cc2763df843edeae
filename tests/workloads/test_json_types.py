"""JSON Lines traces: a number must be a JSON number and a count a JSON integer, never a string."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from workloads import TraceError, load_trace

MOONCAKE = {"timestamp": 0, "input_length": 600, "output_length": 4, "hash_ids": [1, 2]}
GENERIC = {"arrival_time": 0.5, "prompt_len": 10, "output_len": 3}


def _write(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("output_length", "1", "'1' is a JSON string (valid: a JSON integer 1..1099511627776; drop the quotes)"),
    ("input_length", "600", "is a JSON string"),
    ("output_length", 1.0, "1.0 is a JSON float (valid: a JSON integer"),
    ("output_length", [1], "[1] is a JSON array"),
    ("output_length", {"n": 1}, "is a JSON object"),
    ("output_length", True, "not a number"),
    ("timestamp", "5", "'5' is a JSON string (valid: a JSON number >= 0; drop the quotes)"),
])
def test_mooncake_rejects_non_integer_json_types(tmp_path: Path, key: str, value: object, needle: str) -> None:
    rows = [dict(MOONCAKE), {**MOONCAKE, "timestamp": 10, key: value}, {**MOONCAKE, "timestamp": 20}]
    p = _write(tmp_path / "m.jsonl", rows)
    with pytest.raises(TraceError) as e:
        load_trace(p, format="mooncake")
    assert (e.value.line, e.value.column) == (2, key) and needle in str(e.value), str(e.value)
    assert str(e.value).startswith(f"{p}:2: column '{key}'")
    r = load_trace(p, format="mooncake", skip_bad_rows=True)  # or skipped and counted
    assert len(r) == 2 and r.stats["skipped_by_column"] == {key: 1}


def test_mooncake_every_row_a_string_still_fails_at_the_first(tmp_path: Path) -> None:
    # a column of strings only is parsed by pyarrow as a string column: still rejected
    p = _write(tmp_path / "m.jsonl", [{**MOONCAKE, "output_length": "3"}, {**MOONCAKE, "output_length": "4"}])
    with pytest.raises(TraceError, match=r"m.jsonl:1: column 'output_length': '3' is a JSON string"):
        load_trace(p, format="mooncake")


def test_mooncake_integers_and_floats_where_allowed_load(tmp_path: Path) -> None:
    p = _write(tmp_path / "m.jsonl", [MOONCAKE, {**MOONCAKE, "timestamp": 2.5, "output_length": 7}])
    r = load_trace(p, format="mooncake")
    assert r.columns.output.tolist() == [4, 7] and r.columns.arrival.tolist() == [0.0, 0.0025]


@pytest.mark.parametrize(("key", "value", "needle"), [
    ("prompt_len", "10", "'10' is a JSON string"),
    ("n", "2", "'2' is a JSON string (valid: a JSON integer 1..65536; drop the quotes)"),
    ("beam_width", 2.0, "2.0 is a JSON float"),
    ("arrival_time", "1", "'1' is a JSON string"),
    ("spec_accept", "0.5", "'0.5' is a JSON string (valid: a JSON number 0..1; drop the quotes)"),
])
def test_generic_jsonl_rejects_strings_and_floats_for_integers(tmp_path: Path, key: str, value: object,
                                                                needle: str) -> None:
    p = _write(tmp_path / "g.jsonl", [GENERIC, {**GENERIC, "arrival_time": 1.0, key: value}])
    with pytest.raises(TraceError) as e:
        load_trace(p, format="generic")
    assert (e.value.line, e.value.column) == (2, key) and needle in str(e.value), str(e.value)


def test_generic_csv_cells_are_text_and_stay_accepted(tmp_path: Path) -> None:
    p = tmp_path / "g.csv"
    p.write_text('arrival_time,prompt_len,output_len,n\n0.5,"10",3,"2"\n')
    r = load_trace(p, format="generic")
    assert r.columns.prompt.tolist() == [10] and r.columns.n.tolist() == [2]


def test_generic_jsonl_null_in_an_optional_integer_takes_the_default(tmp_path: Path) -> None:
    p = _write(tmp_path / "g.jsonl", [{**GENERIC, "n": 2}, {**GENERIC, "arrival_time": 1.0, "n": None}])
    r = load_trace(p, format="generic")
    assert r.columns.n.tolist() == [2, 1]
