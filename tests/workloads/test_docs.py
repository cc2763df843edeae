"""The Python examples in docs/workloads.md really run (from the repository root, like a user)."""

from __future__ import annotations

import contextlib
import io
import os
import re

import pytest
from paths import REPO

DOC = REPO / "docs" / "workloads.md"
BLOCKS = re.findall(r"```python\n(.*?)```", DOC.read_text(), flags=re.S)


def test_doc_has_examples():
    assert len(BLOCKS) >= 5


@pytest.mark.parametrize("index", range(len(BLOCKS)))
def test_doc_example_runs(index, traces_dir, monkeypatch):
    monkeypatch.chdir(REPO)  # the examples use ../shared/traces relative to the checkout
    assert (REPO.parent / "shared" / "traces") == traces_dir
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(BLOCKS[index], f"{DOC}:block{index}", "exec"), {"__name__": "__doc_example__"})
    printed = out.getvalue()
    # every '# value' comment after a print states what it prints (checked where exact)
    for line in BLOCKS[index].splitlines():
        m = re.match(r"\s*print\((.*)\)\s+#\s+(.*)$", line)
        if m and not m.group(2).startswith(("about", "...", "sim.", "3 prompt_len")):
            expected = re.split(r"  | \(", m.group(2))[0]
            assert expected in printed, (line, printed)
    assert os.getcwd() == str(REPO)
