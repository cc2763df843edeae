"""What a new user types wrong, through the real entry point: every case is one line on stderr naming the
option, file or field and the valid range, exit code 2, no traceback, and nothing allocated or run first."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from clikit import cli, entry
from paths import DATA

from sim.checks import MAX_NUM_BLOCKS
from sim.memory.block_pool import BlockPool

SMALL = ["-n", "20", "--no-plots"]




def one_error_line(err: str, cmd: str, needle: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith(f"pagesim {cmd}: error: ") and needle in lines[0], err


@pytest.mark.parametrize("cmd", ["run", "compare", "sweep"])
def test_out_that_is_an_existing_file(cmd: str, tmp_path: Path) -> None:
    f = tmp_path / "results.txt"
    f.write_text("keep me\n")
    extra = ["--rates", "2,4"] if cmd == "sweep" else []
    code, stdout, err = cli(cmd, *extra, "-n", "10", "--out", str(f))
    assert code == 2
    one_error_line(err, cmd, f"--out {f}: is an existing file (valid: a directory")
    assert f.read_text() == "keep me\n" and "requests" not in stdout  # refused before anything ran


@pytest.mark.parametrize("cmd", ["run", "sweep"])
def test_out_that_cannot_be_written(cmd: str, tmp_path: Path) -> None:
    f = tmp_path / "afile"
    f.write_text("")
    extra = ["--rates", "2,4"] if cmd == "sweep" else []
    code, _, err = cli(cmd, *extra, "-n", "10", "--out", str(f / "sub"))  # a directory under a file
    assert code == 2
    one_error_line(err, cmd, f"--out {f / 'sub'}: cannot write there (not a directory; valid: a writable")
    if os.geteuid() != 0:  # root writes through permissions; elsewhere a read-only folder is the case
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        code, _, err = cli(cmd, *extra, "-n", "10", "--out", str(ro / "x"))
        assert code == 2 and "cannot write there (permission denied" in err


def test_huge_pools_are_refused_before_allocating(tmp_path: Path) -> None:
    t0 = time.perf_counter()
    r = entry("replay", str(DATA / "replay" / "basic.jsonl"), "--num-blocks", str(10**12))
    assert r.returncode == 2 and r.stdout == ""
    one_error_line(r.stderr, "replay", "Invalid value for '--num-blocks'")
    assert str(MAX_NUM_BLOCKS) in r.stderr
    ops = tmp_path / "big.jsonl"
    ops.write_text('{"op": "config", "block_size": 16, "num_blocks": 1000000000000}\n'
                   '{"op": "allocate", "seq": 1, "n": 3}\n')
    r = entry("replay", str(ops))
    assert r.returncode == 2
    one_error_line(r.stderr, "replay", f"{ops}:1: field 'num_blocks' = 1000000000000 out of range "
                                       f"(valid: integer in [1, {MAX_NUM_BLOCKS:,}]")
    code, _, err = cli("run", "--kv-tokens", str(16 * 10**12), *SMALL, "--out", str(tmp_path / "o"))
    assert code == 2
    one_error_line(err, "run", "field 'kv_capacity_tokens' = 16000000000000 out of range (valid: None or integer "
                               "in [1, 4,294,967,296]")
    code, stdout, err = cli("run", "--kv-tokens", str(4 * 10**9), *SMALL, "--out", str(tmp_path / "o"))
    assert code == 2 and "KV pool" not in stdout
    one_error_line(err, "run", f"above the simulator's {MAX_NUM_BLOCKS:,} (valid: kv_capacity_tokens <= "
                               f"{MAX_NUM_BLOCKS * 16:,} for block_size 16")
    assert time.perf_counter() - t0 < 60  # nothing was allocated: a 10**12-block pool would not finish
    with pytest.raises(ValueError, match=r"num_blocks = 33554433 out of range \(valid: integer in \[1, 33,554,432\]"):
        BlockPool(MAX_NUM_BLOCKS + 1)


def test_kv_budget_beyond_the_gpu_is_refused_with_the_range(tmp_path: Path) -> None:
    code, _, err = cli("run", "--kv-gb", "1000000", *SMALL, "--out", str(tmp_path / "o"))
    assert code == 2
    one_error_line(err, "run", "field 'kv_budget_gb' = 1000000.0 out of range (valid: 0 < GiB <= 15.8, what "
                               "opt-13b's weights leave of a100-40gb's 40 GiB")
    code, _, err = cli("run", "--kv-gb", "50", "--gpu", "a100-80gb", *SMALL, "--out", str(tmp_path / "o2"))
    assert code == 0, err  # within what the larger GPU leaves


def test_trace_with_synthetic_options_is_a_conflict(tmp_path: Path) -> None:
    trace = str(tmp_path / "trace.csv")
    Path(trace).write_text("arrival_time,prompt_len,output_len\n0.0,100,20\n0.5,200,30\n")
    code, _, err = cli("run", "--trace", trace, "--preset", "alpaca", "--out", str(tmp_path / "o"))
    assert code == 2
    one_error_line(err, "run", f"--preset shapes a synthetic workload and conflict with --trace {trace} "
                               "(valid: either --trace, or --preset, --prompt-len, --output-len)")
    code, _, err = cli("compare", "--trace", trace, "--prompt-len", "fixed:10", "--output-len", "fixed:5",
                       "--out", str(tmp_path / "o"))
    assert code == 2
    one_error_line(err, "compare", "--prompt-len and --output-len shape a synthetic workload and conflict")
    cfg = tmp_path / "exp.toml"
    cfg.write_text(f'[workload]\ntrace = "{trace}"\n')
    code, _, err = cli("run", "--config", str(cfg), "--prompt-len", "fixed:10", "--out", str(tmp_path / "o"))
    assert code == 2 and "--prompt-len shapes a synthetic workload and conflict with --trace" in err


@pytest.mark.parametrize(("args", "cmd", "needle"), [
    (["run", "--foo"], "run", "No such option: --foo"),
    (["run", "-n", "x"], "run", "Invalid value for '--num-requests' / '-n'"),
    (["compare", "--blok-size", "8"], "compare", "No such option: --blok-size"),
    (["runn"], "", "No such command 'runn'. Did you mean 'run'?"),
    (["report"], "report", "Missing argument"),
])
def test_option_errors_are_one_line_and_exit_2(args: list[str], cmd: str, needle: str) -> None:
    r = entry(*args)
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr  # not click's 5-6 line usage box
    assert lines[0].startswith(f"pagesim {cmd}: error: ".replace("pagesim : ", "pagesim: ")), lines
    assert needle in lines[0] and "--help" in lines[0]


def test_help_and_version_still_exit_0() -> None:
    r = entry("run", "--help")
    assert r.returncode == 0 and "--wide" in r.stdout and r.stderr == ""
    r = entry("--version")
    assert r.returncode == 0 and r.stdout.startswith("pagesim ")
