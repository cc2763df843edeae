"""The Python examples in docs/capacity.md run as written (and their asserts hold)."""

from __future__ import annotations

import contextlib
import io
import re

from paths import DOCS


def test_capacity_doc_examples_run() -> None:
    blocks = re.findall(r"```python\n(.*?)```", (DOCS / "capacity.md").read_text(), flags=re.S)
    assert blocks
    for i, code in enumerate(blocks):
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"docs/capacity.md:block{i}", "exec"), {"__name__": "__doc_example__"})
