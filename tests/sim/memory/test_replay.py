"""Op-log replay: hand-checked op files, malformed input, and the `pagesim replay` command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from paths import DATA as TEST_DATA
from paths import DOCS
from typer.testing import CliRunner

from analysis.cli import app
from sim.memory.replay import ReplayError, replay

DATA = TEST_DATA / "replay"
OPTIONS: dict[str, dict[str, Any]] = {  # settings not in the file's config line
    "basic": {}, "prefix": {}, "contiguous": {},
    "watermark": {"block_size": 4, "num_blocks": 10, "watermark": 0.2},
}


def run(text: str, **kw: Any) -> list[dict[str, Any]]:
    return list(replay(text.splitlines(), **kw))


@pytest.mark.parametrize("name", sorted(OPTIONS))
def test_hand_checked_files(name: str) -> None:
    got = list(replay((DATA / f"{name}.jsonl").read_text().splitlines(), **OPTIONS[name]))
    want = [json.loads(x) for x in (DATA / f"{name}.expected.jsonl").read_text().splitlines()]
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert {k: g.get(k, "<missing>") for k in w} == w, g
        assert ("error" in g) == (not g["ok"])  # a refused op says why


def test_output_fields_and_line_numbers() -> None:
    out = run('# c\n\n{"op":"allocate","seq":1,"n":3}\n{"op":"free","seq":1}', block_size=2, num_blocks=4)
    assert [r["line"] for r in out] == [3, 4] and [r["i"] for r in out] == [0, 1]
    for key in ("i", "op", "ok", "num_free_blocks", "seq_num_blocks", "num_cows", "total_cows"):
        assert key in out[0] and key in out[1]
    assert out[0]["can_allocate"] == "OK" and "can_allocate" not in out[1]


def test_integer_and_string_ids_are_distinct() -> None:
    out = run('{"op":"allocate","seq":1,"n":1}\n{"op":"free","seq":"1"}', block_size=2, num_blocks=4)
    assert out[1]["ok"] is False and "unknown sequence '1'" in out[1]["error"]


def test_engine_form_with_block_hashes() -> None:
    text = "\n".join(json.dumps(o) for o in [
        {"op": "allocate", "seq": "a", "n": 8, "block_hashes": [11, 12]},
        {"op": "allocate", "seq": "b", "n": 8, "block_hashes": [11, 13]},
        {"op": "allocate", "seq": "c", "n": 2},
        {"op": "append", "seq": "c", "n": 6, "block_hashes": [11, 12]},
        {"op": "free_before", "seq": "a", "token": 4},
    ])
    out = run(text, block_size=4, num_blocks=10, prefix_caching=True)
    assert [r["num_free_blocks"] for r in out] == [8, 7, 6, 5, 5]  # a's block 0 still shared with b
    assert out[1]["num_cached_tokens"] == 4 and out[4]["blocks_freed"] == 0


def test_append_tokens_after_unknown_tokens_are_not_hashed() -> None:
    text = "\n".join(json.dumps(o) for o in [
        {"op": "allocate", "seq": "a", "n": 2},
        {"op": "append", "seq": "a", "tokens": [1, 2]},
        {"op": "allocate", "seq": "b", "tokens": [9, 9, 1, 2]},
    ])
    out = run(text, block_size=4, num_blocks=10, prefix_caching=True)
    assert out[2]["num_cached_tokens"] == 0


@pytest.mark.parametrize(("text", "kw", "line", "match"), [
    ('{"op":"allocate","seq":1,"n":2', {}, 1, "not valid JSON"),
    ('[1, 2]', {}, 1, "expected a JSON object"),
    ('{"op":"grow","seq":1}', {}, 1, "unknown op \"grow\""),
    ('# x\n{"op":"allocate","n":2}', {}, 2, "lacks field"),
    ('{"op":"allocate","seq":1,"n":2,"size":3}', {}, 1, "unknown field.*size"),
    ('{"op":"allocate","seq":1,"n":2,"tokens":[1]}', {}, 1, "exactly one of 'n' or 'tokens'"),
    ('{"op":"allocate","seq":1}', {}, 1, "exactly one of 'n' or 'tokens'"),
    ('{"op":"allocate","seq":1,"n":-1}', {}, 1, "'n' = -1 out of range"),
    ('{"op":"allocate","seq":1,"tokens":[1,"a"]}', {}, 1, "'tokens' must be a list of integers"),
    ('{"op":"allocate","seq":1.5,"n":1}', {}, 1, "sequence id"),
    ('{"op":"allocate","seq":true,"n":1}', {}, 1, "sequence id"),
    ('{"op":"allocate","seq":1,"n":1}\n{"op":"append","seq":1,"n":0}', {}, 2, "'n' = 0 out of range"),
    ('{"op":"allocate","seq":1,"n":1}\n{"op":"append","seq":1,"tokens":[]}', {}, 2, "must not be empty"),
    ('{"op":"allocate","seq":1,"n":1}\n{"op":"config","block_size":2}', {}, 2, "config line must come"),
    ('{"op":"config","block_size":4,"num_blocks":4}', {"block_size": 8}, 1, "block_size = 4 conflicts"),
    ('{"op":"config","block_sise":4}', {}, 1, "unknown field.*block_sise"),
    ('{"op":"config","block_size":0,"num_blocks":4}\n{"op":"free","seq":1}', {}, 1, "block_size"),
    ('{"op":"config","block_size":2,"num_blocks":4,"watermark":1}', {}, 1, "watermark = 1 out of range"),
    ('{"op":"config","block_size":2,"num_blocks":4,"prefix_caching":1}', {}, 1, "true or false"),
    ('{"op":"config","kind":"ring"}', {}, 1, "kind"),
    ('{"op":"config","kind":"contiguous","capacity_tokens":8}', {"num_blocks": 2}, 1, "num_blocks given"),
    ('{"op":"config","kind":"contiguous","capacity_tokens":8,"placement":"x"}', {}, 1, "placement"),
    ('{"op":"config","kind":"contiguous","capacity_tokens":8}\n{"op":"fork","parent":1,"child":2}', {}, 2,
     "not defined for a contiguous cache"),
])
def test_malformed_input_names_the_line(text: str, kw: dict[str, Any], line: int, match: str) -> None:
    kw = {"block_size": 2, "num_blocks": 4} | kw if "config" not in text.splitlines()[0] else kw
    with pytest.raises(ReplayError, match=match) as e:
        run(text, **kw)
    assert e.value.line_no == line


def test_missing_settings() -> None:
    with pytest.raises(ReplayError, match="num_blocks not given"):
        run('{"op":"free","seq":1}', block_size=4)


# ---- the CLI -------------------------------------------------------------------------------------
runner = CliRunner()


def test_cli_replays_file_with_options() -> None:
    r = runner.invoke(app, ["replay", str(DATA / "watermark.jsonl"), "--block-size", "4",
                            "--num-blocks", "10", "--watermark", "0.2"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["can_allocate"] for x in lines[:3]] == ["NEVER", "OK", "LATER"]


def test_cli_errors_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"op":"allocate","seq":1,"n":1}\n{"op":"oops"}\n')
    r = runner.invoke(app, ["replay", str(bad), "--block-size", "4", "--num-blocks", "4"])
    assert r.exit_code == 2
    assert f"{bad}:2: unknown op" in r.stderr
    r = runner.invoke(app, ["replay", str(tmp_path / "none.jsonl")])
    assert r.exit_code == 2 and "no such file" in r.stderr
    r = runner.invoke(app, ["replay", str(DATA / "basic.jsonl"), "--block-size", "8"])
    assert r.exit_code == 2 and "basic.jsonl:2: config block_size = 4 conflicts" in r.stderr
    r = runner.invoke(app, ["replay", str(DATA / "basic.jsonl"), "--watermark", "1.5"])
    assert r.exit_code == 2 and "--watermark" in r.stderr
    binary = tmp_path / "bin.jsonl"
    binary.write_bytes(b"\xff\xfe\x00")
    r = runner.invoke(app, ["replay", str(binary), "--block-size", "4", "--num-blocks", "4"])
    assert r.exit_code == 2 and "not UTF-8" in r.stderr


def test_cli_reads_stdin() -> None:
    r = runner.invoke(app, ["replay", "-", "--block-size", "2", "--num-blocks", "3", "--prefix-caching"],
                      input='{"op":"allocate","seq":"a","tokens":[1,2,3]}\n'
                            '{"op":"allocate","seq":"b","tokens":[1,2]}\n')
    assert r.exit_code == 0, r.output
    recs = [json.loads(x) for x in r.stdout.splitlines()]
    assert [x["num_free_blocks"] for x in recs] == [1, 1] and recs[1]["num_cached_tokens"] == 2


def test_cli_subprocess_exit_code() -> None:
    """The real process end to end: one stderr line naming stdin and the line, exit code 2."""
    bad = subprocess.run([sys.executable, "-m", "analysis.cli", "replay", "-"], input='{"op":"free","seq":1}\n',
                         capture_output=True, text=True, check=False)
    assert bad.returncode == 2 and bad.stdout == ""
    assert bad.stderr.strip() == ("pagesim replay: error: <stdin>:1: block_size not given (pass it as an "
                                  "option or in a first {\"op\": \"config\", ...} line)")


def test_docs_memory_examples_run() -> None:
    """docs/memory.md: the Python examples run and the replay example prints what it shows."""
    import re

    doc = (DOCS / "memory.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", doc, re.S)
    assert len(blocks) == 2
    for i, code in enumerate(blocks):
        exec(compile(code, f"docs/memory.md python block {i}", "exec"), {})  # noqa: S102
    shown = re.search(r"\$ printf '%s\\n' (.*?)\| pagesim replay - (.*?)\n(.*?)```", doc, re.S)
    assert shown is not None
    ops = re.findall(r"'(\{.*?\})'", shown.group(1))
    r = runner.invoke(app, ["replay", "-", *shown.group(2).split()], input="\n".join(ops) + "\n")
    assert r.exit_code == 0, r.output
    assert r.stdout.splitlines() == [x for x in shown.group(3).splitlines() if x.startswith("{")]
