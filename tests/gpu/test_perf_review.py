"""The machine-code review's parser (benchmarks/sass_review.py) on hand-written SASS, and the decode
performance model (benchmarks/decode_model.py): the terms it names as bounds follow from its inputs."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from gpu.bench.goal import GoalShape

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def _load(name: str):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses look their module up while the class is built
    spec.loader.exec_module(mod)
    return mod


SASS = """
        Function : k
        /*0000*/                   MOV R1, c[0x0][0x28] ;
        /*0010*/                   LDG.E.CONSTANT R3, desc[UR6][R4.64] ;
        /*0020*/                   LDG.E.128.CONSTANT R20, desc[UR8][R66.64] ;
        /*0030*/                   LDG.E.128.CONSTANT R24, desc[UR8][R66.64+0x20] ;
        /*0040*/                   LDG.E.128.CONSTANT R28, desc[UR8][R66.64+0x40] ;
        /*0050*/                   HADD2.F32 R65, -RZ, R24.H0_H0 ;
        /*0060*/                   LDG.E.128.CONSTANT R20, desc[UR8][R66.64+0x60] ;
        /*0070*/                   FADD R2, R65, R20 ;
        /*0080*/              @!P0 BRA 0x10 ;
        /*0090*/                   LDGSTS.E.BYPASS.128 [R35], desc[UR6][R22.64] ;
        /*00a0*/                   LDGSTS.E.BYPASS.128 [R35+0x4000], desc[UR6][R32.64] ;
        /*00b0*/                   DEPBAR.LE SB0, 0x1 ;
        /*00c0*/               @P1 BRA 0x90 ;
        /*00d0*/                   EXIT ;
"""


def test_sass_review_finds_the_loop_and_the_loads_in_flight():
    sr = _load("sass_review")
    rows = {r.kernel: r for r in sr.review(SASS, "^k$")}
    r = rows["k"]
    assert r.instructions == 8  # 0x10 .. 0x80: the loop with the most 16-byte loads
    assert (r.ldg128, r.ldgsts, r.ldg32) == (4, 0, 1)
    assert r.max_batch == 3  # three loads issued before HADD2 reads R24
    fn = sr.functions(SASS)["k"]
    assert sr.max_batch([t for a, t in fn if 0x90 <= a <= 0xc0]) == 2  # cp.async: copies before the wait


def test_model_bounds():
    dm = _load("decode_model")
    mha = GoalShape(64, 8192, 32, 32, "fp16")
    gqa = GoalShape(64, 8192, 32, 8, "fp16")
    assert dm.before(mha).bound == "hbm" and dm.after(mha).bound == "hbm"
    b, a = dm.before(gqa), dm.after(gqa)
    assert b.bound == "l2" and b.fraction == pytest.approx(dm.L2_BW / 4 / dm.PEAK)  # 4 heads re-read each tile
    assert a.fraction > 2 * b.fraction and a.ctas >= dm.SMS * 4  # the split fills the GPU
    assert all(0 < dm.after(s).fraction <= 1 for s in dm.goal_shapes())
