"""pagesim replay against vLLM's own block managers on random op streams (tests/vllm_ref.py).

Needs the unpacked vLLM modules (tests/vllm_src.py): in $PAGESIM_VLLM_SRC or ~/.cache/pagesim/vllm,
put there by `python benchmarks/vllm_reference.py fetch` (two wheels, 265 MB + 240 MB downloaded once,
about 200 KB kept). Where they are missing, the fixtures fetch them under CI (CI=true) or with
PAGESIM_VLLM_FETCH=1, and otherwise (or when PyPI cannot be reached) these tests skip, saying so.
The comparison itself takes a few seconds.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

import numpy as np
import pytest
import vllm_ref
import vllm_src

NUM_STREAMS = 30


def _modules(version: str) -> Any:
    d = vllm_src.source_dir(version)
    if d is None and (os.environ.get("PAGESIM_VLLM_FETCH") == "1" or os.environ.get("CI") == "true"):
        try:
            d = vllm_src.fetch(version)
        except (subprocess.CalledProcessError, OSError, ValueError) as e:
            pytest.skip(f"vLLM {version} modules could not be fetched from PyPI ({e})")
    if d is None:
        pytest.skip(f"vLLM {version} modules not found under {vllm_src.cache_root()} (run "
                    f"`python benchmarks/vllm_reference.py fetch` or set PAGESIM_VLLM_FETCH=1)")
    return vllm_src.load_v0(d) if version == vllm_src.V0_VERSION else vllm_src.load_v1(d)


@pytest.fixture(scope="module")
def v0() -> Any:
    return _modules(vllm_src.V0_VERSION)


@pytest.fixture(scope="module")
def v1() -> Any:
    return _modules(vllm_src.V1_VERSION)


def _ref(kind: str, mods: Any, spec: vllm_ref.StreamSpec) -> Any:
    cls = vllm_ref.V0Ref if kind == "vllm-v0" else vllm_ref.V1Ref
    return cls(mods, spec.block_size, spec.num_blocks, spec.prefix_caching, spec.watermark)


def _streams(kind: str, mods: Any, semantics: str, prefix_caching: bool, n: int) -> list[vllm_ref.StreamResult]:
    out = []
    for seed in range(n):
        rng = np.random.default_rng(seed)
        spec = vllm_ref.StreamSpec.draw(rng, prefix_caching)
        out.append(vllm_ref.run_stream(_ref(kind, mods, spec), semantics, spec, rng))
    return out


@pytest.mark.slow
@pytest.mark.parametrize("prefix_caching", [False, True], ids=["naive", "prefix"])
@pytest.mark.parametrize("kind", ["vllm-v0", "vllm-v1"])
def test_semantics_agree_with_vllm_on_every_op(kind: str, prefix_caching: bool,
                                               request: pytest.FixtureRequest) -> None:
    mods = request.getfixturevalue("v0" if kind == "vllm-v0" else "v1")
    res = _streams(kind, mods, kind, prefix_caching, NUM_STREAMS)
    bad = [r.mismatch for r in res if r.mismatch]
    assert not bad, bad[0]
    assert all(300 <= r.num_ops <= 1000 for r in res)
    # The streams reach the interesting cases: refusals, copies (v0 forks), prefix-cache hits.
    assert sum(r.refused for r in res) > 100
    assert (sum(r.cows for r in res) > 100) == (kind == "vllm-v0")
    assert (sum(r.cache_hits for r in res) > 100) == prefix_caching


@pytest.mark.parametrize("semantics, kind", [("pagesim", "vllm-v0"), ("pagesim", "vllm-v1"),
                                             ("vllm-v1", "vllm-v0"), ("vllm-v0", "vllm-v1")])
def test_other_semantics_disagree(semantics: str, kind: str, request: pytest.FixtureRequest) -> None:
    """The harness sees a difference: every stream replayed with the wrong semantics diverges."""
    res = _streams(kind, request.getfixturevalue("v0" if kind == "vllm-v0" else "v1"), semantics, True, 5)
    assert all(r.mismatch for r in res)
