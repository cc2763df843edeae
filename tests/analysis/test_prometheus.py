"""`--metrics-format prometheus`: metrics.prom parses as the Prometheus text exposition format
(checked by a small parser written here, to the format's rules) and carries the run totals of
summary.csv; the monitor records and the report section that come with them."""

from __future__ import annotations

import math
import re
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from analysis.cli import app
from analysis.prometheus import METRICS, prometheus_text

NAME = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"')


def parse_exposition(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Samples of a text exposition, keyed by (name, sorted labels); AssertionError on a format error.

    Rules checked: a final newline; `# HELP name text` and `# TYPE name counter|gauge|...` at most once
    per family and TYPE before the family's samples; a family's samples are contiguous; names and
    label names match the format's regexes, label values are quoted with \\\\, \\" and \\n escapes;
    values are floats (NaN, +Inf, -Inf allowed); every series is unique; counters end in _total.
    """
    assert text.endswith("\n"), "the exposition must end with a newline"
    types: dict[str, str] = {}
    helps: set[str] = set()
    seen_families: list[str] = []
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("# HELP "):
            name = line.split(" ", 3)[2]
            assert NAME.fullmatch(name) and name not in helps, f"line {n}: bad or repeated HELP {name}"
            helps.add(name)
            continue
        if line.startswith("# TYPE "):
            parts = line.split(" ")
            assert len(parts) == 4 and NAME.fullmatch(parts[2]), f"line {n}: bad TYPE line"
            assert parts[3] in ("counter", "gauge", "histogram", "summary", "untyped"), f"line {n}: type {parts[3]}"
            assert parts[2] not in types and parts[2] not in seen_families, f"line {n}: TYPE after samples or twice"
            types[parts[2]] = parts[3]
            continue
        assert line and not line.startswith("#"), f"line {n}: blank or unknown comment"
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})? (\S+)", line)
        assert m, f"line {n}: not a sample: {line!r}"
        name, labels_text, value = m.group(1), m.group(3) or "", m.group(4)
        if not seen_families or seen_families[-1] != name:
            assert name not in seen_families, f"line {n}: samples of {name} are not contiguous"
            seen_families.append(name)
        labels = []
        rest = labels_text
        while rest:
            lm = LABEL.match(rest)
            assert lm, f"line {n}: bad label syntax in {labels_text!r}"
            labels.append((lm.group(1), lm.group(2)))
            rest = rest[lm.end():]
            assert rest == "" or rest.startswith(","), f"line {n}: labels must be comma separated"
            rest = rest[1:]
        assert len({k for k, _ in labels}) == len(labels), f"line {n}: repeated label name"
        v = float(value)  # accepts NaN, +Inf, -Inf; raises on anything else
        if types.get(name) == "counter":
            assert name.endswith("_total") and not math.isnan(v) and v >= 0, f"line {n}: counter {name} = {value}"
        key = (name, tuple(sorted(labels)))
        assert key not in out, f"line {n}: duplicate series {key}"
        out[key] = v
    assert set(types) == set(seen_families) == helps, "every family needs HELP and TYPE"
    return out


def test_run_writes_a_valid_exposition_with_the_run_totals(tmp_path: Path) -> None:
    out = tmp_path / "run"
    r = CliRunner().invoke(app, ["run", "-n", "60", "--rate", "20", "--kv-tokens", "6000", "--preemption", "swap",
                                 "--swap-prefetch", "--sampling", "n=2", "--metrics-format", "prometheus",
                                 "--no-plots", "--out", str(out)])
    assert r.exit_code == 0, r.output
    assert "metrics.prom" in r.output and "Allocator monitor" in r.output
    samples = parse_exposition((out / "metrics.prom").read_text())
    row = pd.read_csv(out / "summary.csv").iloc[0]
    sysl = (("system", "paged-16"),)

    def get(name: str, *labels: tuple[str, str]) -> float:
        return samples[(name, tuple(sorted(sysl + labels)))]

    assert get("pagesim_kv_blocks_allocated_total") == row["blocks_allocated"] > 0
    assert get("pagesim_kv_blocks_reused_total") == row["blocks_reused"] > 0  # forks of n = 2
    assert get("pagesim_kv_free_blocks") == pytest.approx(row["mean_free_blocks"])
    assert get("pagesim_kv_fragmentation_ratio", ("kind", "internal")) == pytest.approx(row["internal_frag_pct"] / 100)
    assert get("pagesim_kv_swap_bytes_total", ("direction", "out")) == row["swap_out_bytes"] > 0
    assert get("pagesim_preemptions_total") == row["num_preemptions"] > 0
    refs = [get("pagesim_kv_blocks_by_refcount", ("refs", b)) for b in ("1", "2", "3-4", "5-8", ">8")]
    assert refs == pytest.approx([row[c] for c in ("mean_refs_1", "mean_refs_2", "mean_refs_3_4", "mean_refs_5_8",
                                                   "mean_refs_gt8")])
    shares = sum(v for (n, _), v in samples.items() if n == "pagesim_kv_memory_share_ratio")
    assert shares == pytest.approx(1.0)
    mon = pd.read_parquet(out / "runs" / "paged-16" / "monitor.parquet")
    assert {"free_blocks", "alloc_rate_blocks_per_s", "reuse_rate", "refs_gt8", "kv_bytes_used"} <= set(mon.columns)
    assert mon["blocks_allocated_total"].iloc[-1] == row["blocks_allocated"]


def test_compare_labels_each_system_and_report_shows_the_monitor(tmp_path: Path) -> None:
    out = tmp_path / "cmp"
    r = CliRunner().invoke(app, ["compare", "--systems", "paged,oracle", "-n", "30", "--metrics-format", "prometheus",
                                 "--out", str(out)])
    assert r.exit_code == 0, r.output
    samples = parse_exposition((out / "metrics.prom").read_text())
    systems = {dict(lbl)["system"] for _, lbl in samples}
    assert systems == {"paged-16", "contig-oracle"}
    # The contiguous cache has no swap path: no swap traffic series for it.
    assert not any(n in ("pagesim_kv_swap_bytes_total", "pagesim_kv_swap_blocks_total")
                   and dict(lbl)["system"] == "contig-oracle" for n, lbl in samples)
    assert samples[("pagesim_kv_reuse_ratio", (("system", "contig-oracle"),))] == 0
    md = (out / "report.md").read_text()
    assert "## Allocator monitoring" in md and "plots/allocator_monitor.png" in md
    assert (out / "plots" / "allocator_monitor.png").stat().st_size > 10_000


def test_unknown_metrics_format_is_refused(tmp_path: Path) -> None:
    r = CliRunner().invoke(app, ["run", "-n", "5", "--metrics-format", "json", "--out", str(tmp_path / "x")])
    assert r.exit_code == 2 and "metrics format 'json' unknown (valid: none, prometheus)" in r.output
    assert not (tmp_path / "x").exists()  # refused before anything ran


def test_exposition_escapes_labels_and_keeps_series_unique() -> None:
    rows = [{"system": 'odd "name" \\ here', "mean_free_blocks": float("nan"), "blocks_allocated": float("nan"),
             "num_steps": 7.0},
            {"system": "paged-16", "num_steps": 3}, {"system": "paged-16", "num_steps": 4}]
    text = prometheus_text(rows)
    samples = parse_exposition(text)
    assert samples[("pagesim_scheduler_steps_total", (("system", 'odd \\"name\\" \\\\ here'),))] == 7
    assert samples[("pagesim_scheduler_steps_total", (("system", "paged-16#2"),))] == 4
    assert math.isnan(samples[("pagesim_kv_free_blocks", (("system", 'odd \\"name\\" \\\\ here'),))])
    assert not any(n == "pagesim_kv_blocks_allocated_total" for n, _ in samples)  # a NaN counter is left out
    assert all(m.type != "counter" or m.name.endswith("_total") for m in METRICS)
