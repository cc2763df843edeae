"""Machine-code review of the decode kernels (no GPU needed; needs nvcc and cuobjdump on PATH, e.g. the
nvidia-cuda-cuobjdump wheel's bin/): compile paged_attention.cu for sm_90 with nvcc, disassemble, and
for each decode kernel's main loop (the backward branch holding the most 16-byte global loads or
cp.async copies) report:
  instructions per iteration, 16-byte global loads (LDG.E.128) and async copies (LDGSTS.128) in it,
  the largest batch of 16-byte loads a warp has in flight before the first instruction that reads one
  (LDGSTS: copies issued before the DEPBAR wait; `DEPBAR.LE SB0, n` with n > 0 means n groups stay in
  flight while the warp computes), and the 4-byte loads (block-table entries, scales) in the loop.
Run: python benchmarks/sass_review.py [--kernel-dir gpu/kernels] [-D QUERY_GROUP=4 ...] [--kernels REGEX]
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

_INS = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_FUNC = re.compile(r"Function : (\w+)")
_BRA = re.compile(r"\bBRA\s+(?:`\(\.L_x_\d+\)\s*)?0x([0-9a-f]+)")
_REG = re.compile(r"\bR(\d+)\b")


@dataclass(slots=True)
class LoopReport:
    kernel: str
    instructions: int
    ldg128: int
    ldgsts: int
    ldg32: int
    max_batch: int
    depbar: str


def functions(sass: str) -> dict[str, list[tuple[int, str]]]:
    """(address, instruction text without predicate-free trailing ';') per function."""
    out: dict[str, list[tuple[int, str]]] = {}
    cur = None
    for line in sass.splitlines():
        if m := _FUNC.search(line):
            cur = m.group(1)
            out[cur] = []
        elif cur and (m := _INS.search(line)):
            out[cur].append((int(m.group(1), 16), m.group(2)))
    return out


def _opcode(ins: str) -> str:
    parts = ins.split()
    return parts[1] if parts[0].startswith("@") and len(parts) > 1 else parts[0]


def main_loop(ins: list[tuple[int, str]]) -> list[str]:
    """The body of the backward branch holding the most 16-byte global loads / copies (the KV loop;
    the shortest such range when several hold as many)."""
    best: list[str] = []
    best_key = (0, 0)
    for addr, text in ins:
        m = _BRA.search(text)
        if not m or int(m.group(1), 16) >= addr:
            continue
        body = [t for a, t in ins if int(m.group(1), 16) <= a <= addr]
        key = (sum(_opcode(t).startswith(("LDG.E.128", "LDGSTS")) for t in body), -len(body))
        if key[0] and key > best_key:
            best, best_key = body, key
    return best


def _dest_regs(text: str, width: int) -> set[int]:
    m = _REG.search(text.split(None, 2)[-1] if text.startswith("@") else text.split(None, 1)[-1])
    return set(range(int(m.group(1)), int(m.group(1)) + width)) if m else set()


def max_batch(body: list[str]) -> int:
    """Largest number of 16-byte loads issued before an instruction reads one of their registers
    (LDG.E.128), or before the cp.async wait (LDGSTS)."""
    best, pending, batch, copies = 0, set(), 0, 0
    for t in body:
        op = _opcode(t)
        if op.startswith("LDGSTS"):
            copies += 1
            continue
        if op.startswith("DEPBAR"):
            best, copies = max(best, copies), 0
            continue
        if op.startswith("LDG.E.128"):
            pending |= _dest_regs(t, 4)
            batch += 1
            continue
        srcs = {int(r) for r in _REG.findall(t.split(",", 1)[1] if "," in t else "")}
        if pending and srcs & pending:
            best, pending, batch = max(best, batch), set(), 0
    return max(best, batch, copies)


def review(cubin_sass: str, pattern: str) -> list[LoopReport]:
    rows = []
    for name, ins in functions(cubin_sass).items():
        if not re.search(pattern, name):
            continue
        body = main_loop(ins)
        ops = [_opcode(t) for t in body]
        dep = next((t for t in body if _opcode(t).startswith("DEPBAR")), "")
        rows.append(LoopReport(name, len(body), sum(o.startswith("LDG.E.128") for o in ops),
                               sum(o.startswith("LDGSTS") for o in ops),
                               sum(o.startswith("LDG.E") and not o.startswith(("LDG.E.128", "LDG.E.64", "LDG.E.U16"))
                                   for o in ops), max_batch(body), dep.split(None, 1)[-1] if dep else "-"))
    return rows


def disassemble(kernel_dir: Path, defines: list[str], arch: str = "sm_90") -> str:
    nvcc, cuobjdump = shutil.which("nvcc"), shutil.which("cuobjdump")
    if not nvcc or not cuobjdump:
        raise SystemExit("sass_review: needs nvcc and cuobjdump on PATH (pip install nvidia-cuda-cuobjdump)")
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        subprocess.run([nvcc, "-cubin", f"-arch={arch}", "-std=c++17", *(f"-D{d}" for d in defines),
                        "-o", str(cubin), str(kernel_dir / "paged_attention.cu")], check=True)
        return subprocess.run([cuobjdump, "-sass", str(cubin)], check=True, capture_output=True, text=True).stdout


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kernel-dir", type=Path, default=Path(__file__).resolve().parents[1] / "gpu" / "kernels")
    ap.add_argument("-D", dest="defines", action="append", default=[], help="NAME=VALUE (repeatable)")
    ap.add_argument("--kernels", default=r"^paged_decode_(f16|f16_fp8)$")
    a = ap.parse_args(argv)
    rows = review(disassemble(a.kernel_dir, a.defines), a.kernels)
    print(f"defines: {' '.join(a.defines) or '(defaults)'}")
    print("| kernel | instr / iteration | LDG.128 | LDGSTS.128 | 4-byte LDG | max 16-B loads in flight before use | wait |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r.kernel} | {r.instructions} | {r.ldg128} | {r.ldgsts} | {r.ldg32} | {r.max_batch} | {r.depbar} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
