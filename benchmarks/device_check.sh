#!/usr/bin/env bash
# device_check.sh OUTDIR [--dry-run] -- one GPU loan's worth of checks (< 10 minutes on an H100):
#   1. the GPU tests (`pytest -m gpu tests/gpu`: every kernel through cupy.RawModule vs the reference)
#   2. the goal grid (gpu.bench.goal_run: problems built on the device, paged and contiguous timed in
#      alternating rounds, read-bandwidth ceiling, split from the SM count) and its roofline fit
# and writes at most 8 files to OUTDIR: timings.csv, verdict.md, calibration.json, test_log.txt,
# goal_log.txt, env.txt (+ the summary printed at the end).
# --dry-run: the same steps on the CPU shim with tiny shapes and a few CPU tests (CI runs this).
# Needs Python with numpy, pytest and (for a GPU) cupy; installs nothing from the network: a missing
# cupy or CUDA header wheel is installed only from $PAGESIM_WHEELS (a folder of wheels) when given.
set -uo pipefail
usage() { echo "usage: $0 OUTDIR [--dry-run]" >&2; exit 2; }
[ $# -ge 1 ] || usage
OUT=$1; shift
DRY=0
for a in "$@"; do
  case "$a" in
    --dry-run) DRY=1 ;;
    *) echo "$0: unknown option '$a' (valid: --dry-run)" >&2; exit 2 ;;
  esac
done
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$OUT" || { echo "$0: cannot create OUTDIR '$OUT'" >&2; exit 2; }
OUT=$(cd "$OUT" && pwd)
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
cd "$ROOT"
START=$(date +%s)

have() { "$PY" -c "$1" >/dev/null 2>&1; }
install_local() {  # install a wheel from $PAGESIM_WHEELS only (no index)
  [ -n "${PAGESIM_WHEELS:-}" ] && [ -d "$PAGESIM_WHEELS" ] || return 1
  "$PY" -m pip install --quiet --no-index --find-links "$PAGESIM_WHEELS" "$@"
}

{
  echo "date: $(date -u +%FT%TZ)"
  echo "commit: $(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "python: $("$PY" --version 2>&1)"
  "$PY" -c "import numpy; print('numpy:', numpy.__version__)" 2>&1
  "$PY" -c "import cupy; print('cupy:', cupy.__version__)" 2>&1 | tail -1
  "$PY" -c "import simpy; print('simpy:', simpy.__version__)" 2>&1 | tail -1
  command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader
} > "$OUT/env.txt" 2>&1

if [ $DRY = 0 ]; then
  if ! have "import cupy"; then
    install_local cupy-cuda12x || install_local cupy-cuda13x || { echo "$0: cupy is not installed (set PAGESIM_WHEELS to a folder with its wheel)" >&2; exit 1; }
  fi
  if ! have "from gpu.backends.nvrtc import cuda_include_dir; cuda_include_dir()"; then
    install_local nvidia-cuda-runtime-cu12 || install_local nvidia-cuda-runtime \
      || { echo "$0: no CUDA headers (cuda_fp16.h): set PAGESIM_CUDA_INCLUDE or PAGESIM_WHEELS" >&2; exit 1; }
  fi
  have "from gpu.backends.base import gpu_available; assert gpu_available()" \
    || { echo "$0: no usable CUDA GPU (use --dry-run for the CPU path)" >&2; exit 1; }
fi

# 1. tests: on a GPU the `gpu`-marked half of tests/gpu; in a dry run a few CPU-shim cases
if [ $DRY = 1 ]; then
  # two CPU-shim cases whose builds (query groups 4 and 1, fp16, head_dim 128, block 16) the dry-run
  # grid reuses, so the dry run compiles nothing extra
  TESTS=("tests/gpu/test_attention.py::test_matches_reference[float16-paged-2-cpu]"
         "tests/gpu/test_attention.py::test_matches_reference[float16-paged-8-cpu]")
else
  TESTS=(tests/gpu -m gpu)
fi
# at most TEST_BUDGET_S (default 240 s: cold NVRTC builds of every instantiation dominate), so the
# goal grid always keeps its share of the 10 minutes; a timeout is reported as rc=124
timeout "${PAGESIM_TEST_BUDGET_S:-240}" "$PY" -m pytest -q -x -p no:cacheprovider "${TESTS[@]}" \
  > "$OUT/test_log.txt" 2>&1
TEST_RC=$?
echo "tests: rc=$TEST_RC ($(tail -1 "$OUT/test_log.txt"))"

# 2. the goal grid (its own time budget keeps the whole check under 10 minutes)
ELAPSED=$(( $(date +%s) - START ))
# shapes start only within BUDGET; one in progress may run ~10 s past it: 510 s + margin < 600 s
BUDGET=$(( 510 - ELAPSED )); [ $BUDGET -lt 60 ] && BUDGET=60
if [ $DRY = 1 ]; then GOAL=(--dry-run); else GOAL=(--backend cupy --budget-s "$BUDGET"); fi
"$PY" -m gpu.bench.goal_run "$OUT" "${GOAL[@]}" > "$OUT/goal_log.txt" 2>&1
GOAL_RC=$?
echo "goal grid: rc=$GOAL_RC ($(tail -1 "$OUT/goal_log.txt"))"
[ -f "$OUT/verdict.md" ] && tail -n 4 "$OUT/verdict.md"
echo "wrote $(ls "$OUT" | tr '\n' ' ')in $(( $(date +%s) - START )) s"
[ $TEST_RC = 0 ] && [ $GOAL_RC = 0 ]
