"""What `run`/`compare`/`sweep` print and report, through the entry point: 100-column tables by default
(--wide for all), the KV pool size, conclusions, rejections counted with reason and advice, defaults
fitted to a trace (the README's examples reject nothing), and the progress bar on a terminal."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from clikit import cli
from rich.console import Console


def test_default_compare_fits_100_columns_and_leads_with_the_answer(tmp_path: Path) -> None:
    out = tmp_path / "c"
    r = subprocess.run([sys.executable, "-m", "analysis.cli", "compare", "-n", "60", "--out", str(out),
                        "--no-plots", "--no-report"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    widths = [len(line.rstrip()) for line in r.stdout.splitlines()]
    assert max(widths) <= 100, max(widths)
    # The pool it simulates, in slots, GiB and blocks.
    lines = r.stdout.splitlines()
    i = lines.index("KV pool: 15,435 token slots = 11.8 GiB (opt-13b fp16, 800 KiB/token; max_model_len 2,048)")
    assert lines[i + 1: i + 3] == ["  paged-16: 964 blocks of 16 tokens",
                                   "  contig-max, contig-pow2, contig-oracle: one contiguous extent per request"]
    text = " ".join(r.stdout.split())
    assert "In short:" in text and "paged-16 holds the most requests at once: mean batch" in text
    assert "contig-max: " in text and "is waste (" in text
    s = pd.read_csv(out / "summary.csv")
    assert (s["num_rejected"] == 0).all()  # the default workload fits its model: nothing rejected
    # The full table is there on request.
    code, stdout, err = cli("compare", "-n", "40", "--out", str(tmp_path / "w"), "--no-plots", "--no-report",
                            "--wide")
    assert code == 0, err
    assert "token states %" in stdout and "swap on crit. path s" in stdout and max(
        len(x.rstrip()) for x in stdout.splitlines()) > 100


def test_rejections_are_loud_with_reason_and_advice(tmp_path: Path) -> None:
    out = tmp_path / "r"
    # Prompts longer than the context cannot be cut to fit: every request is rejected, and said so.
    code, stdout, err = cli("compare", "--systems", "paged,max", "-n", "30", "--prompt-len", "fixed:700",
                            "--output-len", "fixed:10", "--max-model-len", "512", "--out", str(out), "--no-plots")
    assert code == 0, err
    text = " ".join(stdout.split())
    assert ("all 2 systems: 30 of 30 requests (100%) rejected, prompt + output longer than max_model_len: "
            "raise --max-model-len or pick a --model with a longer context") in text
    s = pd.read_csv(out / "summary.csv")
    assert (s["num_rejected"] == 30).all() and (s["rejected_max_model_len"] == 30).all()
    md = (out / "report.md").read_text()
    assert "30 of 30 requests (100%) rejected, prompt + output longer than max_model_len" in md
    assert "| rejected |" in md


def test_synthetic_outputs_are_cut_to_the_context_and_said(tmp_path: Path) -> None:
    code, stdout, err = cli("run", "-n", "20", "--prompt-len", "fixed:400", "--output-len", "fixed:2000",
                            "--out", str(tmp_path / "s"), "--no-plots")
    assert code == 0, err
    assert "note: 20 of 20 synthetic requests would run past max_model_len" in " ".join(stdout.split())
    s = pd.read_csv(tmp_path / "s" / "summary.csv")
    assert s.loc[0, "num_rejected"] == 0 and s.loc[0, "num_finished"] == 20
    req = pd.read_parquet(tmp_path / "s" / "runs" / "paged-16" / "requests.parquet")
    assert (req["output_len"] == 2048 - 400).all()


@pytest.mark.parametrize(("rel", "extra", "model", "max_len"), [
    ("azure_llm_2023/AzureLLMInferenceTrace_code.csv", ["-n", "500", "--system", "paged-32"], "llama-3-8b", None),
    ("mooncake_fast25/synthetic_trace.jsonl", ["-n", "300", "--system", "paged-16+prefix"], "llama-3-8b", 135168),
    ("sharegpt_lengths/sharegpt_8k_filtered_stats_llama2_tokenizer.csv", ["-n", "300"], "llama-3-8b", None),
])
def test_readme_trace_examples_reject_nothing(rel: str, extra: list[str], model: str, max_len: int | None,
                                              tmp_path: Path, traces_dir: Path) -> None:
    out = tmp_path / "t"
    code, stdout, err = cli("run", "--trace", str(traces_dir / rel), *extra, "--out", str(out), "--no-plots")
    assert code == 0, err
    text = " ".join(stdout.split())
    assert "note: the workload's longest request is" in text and f"using --model {model}" in text
    s = pd.read_csv(out / "summary.csv")
    assert s.loc[0, "num_rejected"] == 0 and s.loc[0, "num_finished"] == s.loc[0, "num_requests"]
    cfg = (out / "config.toml").read_text()
    assert f'model = "{model}"' in cfg  # the saved config reruns the same choice
    assert (f"max_model_len = {max_len}" in cfg) == (max_len is not None)
    if "mooncake" in rel:  # prefix caching finds the trace's shared prefixes
        assert s.loc[0, "blocks_reused"] > 0 and "were served by the prefix cache" in text


def test_an_explicit_model_is_kept_and_its_rejections_counted(tmp_path: Path, traces_dir: Path) -> None:
    trace = traces_dir / "azure_llm_2023" / "AzureLLMInferenceTrace_code.csv"
    code, stdout, err = cli("run", "--trace", str(trace), "-n", "100", "--model", "opt-13b", "--out",
                            str(tmp_path / "t"), "--no-plots")
    assert code == 0, err
    s = pd.read_csv(tmp_path / "t" / "summary.csv")
    n = int(s.loc[0, "num_rejected"])
    assert n > 0 and "note: the workload" not in stdout
    assert f"paged-16: {n} of 100 requests ({n}%) rejected, prompt + output longer than max_model_len" in " ".join(
        stdout.split())


def test_sweep_prints_its_axes_and_a_conclusion_per_series(tmp_path: Path) -> None:
    code, stdout, err = cli("sweep", "--block-sizes", "8,32", "--rates", "2,8", "--systems", "paged", "-n", "30",
                            "--out", str(tmp_path / "s"), "--executor", "serial", "--no-progress")
    assert code == 0, err
    assert max(len(x.rstrip()) for x in stdout.splitlines()) <= 100
    heads = [x for x in stdout.splitlines() if x.startswith("┃ system")]
    assert heads and all(" block " in h and " rate " in h for h in heads)  # the swept axes, in every table
    assert "paged: the largest mean batch" in " ".join(stdout.split())
    md = (tmp_path / "s" / "report.md").read_text()
    assert "| block size (tokens) | rate (req/s) |" in md and "point_id" not in md and "| point |" not in md
    assert "Swept: block_size = 8, 32; rate = 2.0, 8.0." in md


def test_progress_bar_on_a_terminal_reads_the_running_engine() -> None:
    from analysis import api
    from analysis.cli import progress

    buf = io.StringIO()
    con = Console(file=buf, force_terminal=True, width=100)
    seen: list[tuple[str, int]] = []
    with progress.progress(con) as start:
        def hook(system: str, engine: object) -> object:
            seen.append((system, len(engine.specs)))  # type: ignore[attr-defined]
            return start(system, engine)
        df = api.run(api.experiment(num_requests=30, systems=["paged", "max"]), on_start=hook)  # type: ignore[arg-type]
    assert seen == [("paged", 30), ("max", 30)] and len(df) == 2
    assert "arrived" in buf.getvalue()  # the bar was drawn (transient: cleared at the end)
    quiet = io.StringIO()
    with progress.progress(Console(file=quiet, force_terminal=False)) as start:  # captured stderr: no bar
        assert start("x", object())() is None
    assert quiet.getvalue() == ""


def test_a_trace_sweep_fits_its_base_experiment_too(tmp_path: Path) -> None:
    trace = tmp_path / "long.csv"
    trace.write_text("arrival_time,prompt_len,output_len\n" + "".join(f"{i * 0.5},{2900 + i},100\n" for i in range(6)))
    code, stdout, err = cli("sweep", "--trace", str(trace), "--rates", "2,4", "--systems", "paged", "--out",
                            str(tmp_path / "s"), "--executor", "serial", "--no-progress", "--no-report")
    assert code == 0, err
    assert "using --model llama-2-13b" in " ".join(stdout.split())  # the first preset whose context holds 3005
    s = pd.read_csv(tmp_path / "s" / "summary.csv")
    assert len(s) == 2 and (s["num_rejected"] == 0).all() and (s["num_finished"] == 6).all()
    assert 'model = "llama-2-13b"' in (tmp_path / "s" / "config.toml").read_text()


def test_synthetic_prompts_beyond_the_context_get_a_fitted_model_and_a_rerunnable_config(tmp_path: Path) -> None:
    args = ["-n", "10", "--prompt-len", "fixed:3000", "--output-len", "fixed:3000", "--no-plots"]
    code, stdout, err = cli("run", *args, "--out", str(tmp_path / "a"))
    assert code == 0, err
    assert "using --model llama-3-8b" in " ".join(stdout.split())  # 6000 tokens: Llama-2's 4096 is too short
    code, _, err = cli("run", "--config", str(tmp_path / "a" / "config.toml"), "--out", str(tmp_path / "b"),
                       "--no-plots")
    assert code == 0, err
    a, b = (pd.read_csv(tmp_path / d / "summary.csv") for d in ("a", "b"))
    assert a.loc[0, "num_rejected"] == 0 and a.loc[0, "throughput_tps"] == b.loc[0, "throughput_tps"]
