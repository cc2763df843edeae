"""The report: self-contained HTML (parsed for its sections and embedded images) and Markdown."""

from __future__ import annotations

import base64
from html.parser import HTMLParser
from pathlib import Path

import pytest
from simfakes import fake_result

from analysis import report, results_io
from analysis.sweep import expand_grid, run_sweep


class _Sections(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sections: list[str] = []
        self.images: list[str] = []
        self.external: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "section":
            self.sections.append(a["id"] or "")
        if tag == "img":
            self.images.append(a["src"] or "")
        if tag in ("link", "script") and (a.get("href") or a.get("src")):
            self.external.append(tag)


def _compare_dir(tmp_path: Path) -> Path:
    runs = [fake_result("paged(B=16)"), fake_result("contiguous-max", seed=1)]
    for r in runs:
        results_io.save_run(tmp_path, r)
    results_io.write_summary(tmp_path, runs)
    results_io.write_config(tmp_path, {"model": "opt-13b", "gpu": "a100-40gb",
                                       "workload": {"preset": "sharegpt", "num_requests": 20}})
    return tmp_path


def test_compare_report_has_sections_and_embedded_pngs(tmp_path: Path) -> None:
    html_path, md_path = report.build_report(_compare_dir(tmp_path))
    p = _Sections()
    p.feed(html_path.read_text())
    assert p.sections == ["conclusions", "memory-breakdown", "performance", "memory-over-time", "about",
                          "configuration"]
    assert len(p.images) == 3 and not p.external
    for src in p.images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:4] == b"\x89PNG"
    assert "opt-13b on a100-40gb, sharegpt-like synthetic, 20 requests" in html_path.read_text()
    md = md_path.read_text()
    assert "## Where the KV-cache memory goes" in md and "| system |" in md
    # The answer first, in words; human column names; the configuration as the TOML that reruns it.
    assert md.index("## In short") < md.index("## Where the KV-cache memory goes")
    assert "holds the most requests at once: mean batch" in md and "of the KV memory in use holds tokens" in md
    assert "| output tokens/s |" in md and "throughput_tps" not in md and "mean_batch_size" not in md
    assert "```toml" in md and 'model = "opt-13b"' in md and '"model": "opt-13b"' not in md
    assert "](plots/memory_breakdown.png)" in md and (tmp_path / "plots" / "memory_breakdown.svg").is_file()


def test_sweep_report_has_sweep_figures_and_failed_points(tmp_path: Path) -> None:
    from simfakes import slow_point

    pts = expand_grid({"x": [8, 16, 32]}, {"fail": [32]})
    run_sweep(pts, slow_point, tmp_path, executor="serial", progress=False)
    results_io.write_config(tmp_path, {"model": "m"})
    html_path, md_path = report.build_report(tmp_path)
    p = _Sections()
    p.feed(html_path.read_text())
    assert "sweep" in p.sections
    text = html_path.read_text()
    assert "3 points over" in text and "2 finished, 1 failed." in text and "failed on purpose" in text
    assert (tmp_path / "plots" / "block_size_sweep.png").is_file()


def test_report_of_a_non_results_dir_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="summary.csv"):
        report.build_report(tmp_path)


def test_markdown_table_escapes_pipes() -> None:
    import pandas as pd

    t = report.markdown_table(pd.DataFrame({"a|b": [1.23456789], "c": ["x|y"]}))
    assert t.splitlines() == ["| a\\|b | c |", "|---|---|", "| 1.235 | x\\|y |"]


@pytest.mark.parametrize(("sampling", "panels"), [("greedy", ["1", "2"]), ("n=2", ["1", "2", "3", "4"])])
def test_allocator_figure_drops_empty_panels_and_counts_token_slots(sampling: str, panels: list[str],
                                                                   tmp_path: Path) -> None:
    import re

    from analysis import api

    api.run(api.experiment(num_requests=30, systems=["paged", "max"], sampling=sampling), tmp_path)
    svg = (tmp_path / "plots" / "allocator_monitor.svg").read_text()
    # No sharing (greedy): the reuse and ref-count panels would be all zeros, so they are left out.
    assert sorted(set(re.findall(r'id="axes_(\d+)"', svg))) == panels
    bundle = results_io.load_results(tmp_path)
    # Allocation rates are drawn in token slots: a paged block counts its 16 slots, a contiguous unit one.
    assert report._slots_per_block(bundle.summary) == {"paged-16": 16, "contig-max": 1}


def test_sweep_figures_name_the_slice_they_show() -> None:
    import pandas as pd

    pts = pd.DataFrame({"system": ["paged-8", "paged-8", "paged-32", "paged-32", "contig-max", "contig-max"],
                        "block_size": [8, 8, 32, 32, 0, 0], "rate": [2.0, 8.0, 2.0, 8.0, 2.0, 8.0]})
    rows, at = report._fixed_others(pts, "block_size", ["system", "block_size", "rate"])
    assert at == " at rate=2" and rows["rate"].tolist() == [2.0, 2.0, 2.0]
    rows, at = report._fixed_others(pts, "rate", ["system", "block_size", "rate"])
    assert at == " at block_size=8" and sorted(rows["system"].unique()) == ["contig-max", "paged-8"]
