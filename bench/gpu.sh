#!/usr/bin/env bash
# One call on a GPU machine (<= 520 s: build 150 s, tests 210 s at most, benchmarks the rest): install carried wheels, build flashcka, run the GPU
# tests, run the GPU benchmarks (bench/gpu_bench.py: Gram + centring vs torch.matmul, pair
# stage vs HBM bandwidth, MinibatchCKA.update vs model forward time, the million-pair job,
# pytorch-cka's job, the tiled route at n = 100,000), and write JSON, the
# environment and the commit into the output folder. Exit status non-zero on any failure.
#
#   bash bench/gpu_prep.sh                    (CPU machine with the registry: fills .whl/)
#   bash bench/gpu.sh                         (GPU machine; device tool: carry [".whl"])
#   bash bench/gpu.sh --dry-run               (CPU: the same steps, TRITON_INTERPRET=1, tiny
#                                              sizes, the installed flashcka; CI runs this)
# Output: $OUT if set (the device tool brings it back), else bench/results/gpu-run/
# (dry run: /tmp/flashcka-gpu-dry). Files: env.txt, build.log, tests.log, bench.json,
# bench.md, summary.txt, sweep.json, sweep.txt (at most 8 files: what the device tool returns).
set -uo pipefail
cd "$(dirname "$0")/.."
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
PY=${PYTHON:-python3}
command -v "$PY" >/dev/null || PY=python
if [ "$DRY" = 1 ]; then
  DEST=${OUT:-/tmp/flashcka-gpu-dry}
  export TRITON_INTERPRET=1
else
  DEST=${OUT:-bench/results/gpu-run}
  unset TRITON_INTERPRET
fi
mkdir -p "$DEST"
: > "$DEST/summary.txt"
export PYTHONUNBUFFERED=1
status=0
T0=$(date +%s)
step() { echo "== [$(( $(date +%s) - T0 )) s] $*" | tee -a "$DEST/summary.txt"; }
fail() { echo "FAILED: $*" | tee -a "$DEST/summary.txt"; status=1; }

step "1/6 wheels"
if compgen -G ".whl/*.whl" >/dev/null; then
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/flashcka-site .whl/*.whl || fail "wheel install"
  export PYTHONPATH=/tmp/flashcka-site${PYTHONPATH:+:$PYTHONPATH}
elif [ "$DRY" = 1 ]; then
  echo "dry run: no .whl/ (bench/gpu_prep.sh fills it); using this machine's packages"
else
  fail "no .whl/: run bench/gpu_prep.sh first and carry .whl"
fi

step "2/6 environment"
{
  # .whl/COMMIT first: the device's copy of .git can be older than the working tree it
  # receives (seen on the first H200 call: HEAD was the session's first commit).
  if [ -f .whl/COMMIT ]; then
    echo "commit (from bench/gpu_prep.sh): $(tr '\n' ' ' < .whl/COMMIT)"
  elif git rev-parse HEAD >/dev/null 2>&1; then
    echo "commit: $(git rev-parse HEAD)$(git diff --quiet HEAD 2>/dev/null || echo ' dirty')"
  else
    echo "commit: unknown"
  fi
  date -u +"date: %Y-%m-%dT%H:%M:%SZ"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv \
      2>/dev/null || echo "nvidia-smi: none"
  "$PY" -c "import sys, torch, triton; print('python', sys.version.split()[0], 'torch', \
torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, \
'gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None)"
} > "$DEST/env.txt" 2>&1 || fail "environment"
cat "$DEST/env.txt"
if [ "$DRY" = 0 ]; then
  "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" \
      || { fail "no CUDA device"; exit 1; }
fi

step "3/6 build"
if [ "$DRY" = 1 ]; then
  echo "dry run: build skipped (CI installed flashcka); checking it imports" > "$DEST/build.log"
  "$PY" -m flashcka info >> "$DEST/build.log" 2>&1 || fail "flashcka import"
else
  # Offline, no isolation: scikit-build-core, pybind11, cmake, ninja are on the machine;
  # scipy-openblas32 comes from .whl (PYTHONPATH, inherited by the build).
  export CMAKE_BUILD_PARALLEL_LEVEL=$(nproc)
  if ! timeout -k 5 150 "$PY" -m pip install --no-build-isolation --no-deps --no-index -v . \
      > "$DEST/build.log" 2>&1; then
    fail "build (see build.log); the Triton tests and benchmarks go on from the source tree"
    export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}   # flashcka without _C
  fi
  tail -3 "$DEST/build.log"
fi

step "4/6 GPU tests"
TESTS=(tests/test_triton.py tests/test_triton_grid.py tests/test_fallback.py
       tests/test_triton_gram_fast.py tests/test_rows_batched.py)
# Dry run: the same selections collected, not run (CI's test suite has just run them all
# under the interpreter); a GPU runs them.
COLLECT=()
[ "$DRY" = 1 ] && COLLECT=(--collect-only)
QUICK=${GPU_QUICK:-0}    # GPU_QUICK=1: 60 s of tests, no tiled-route tests (a short lease)
timeout -k 5 $(( QUICK ? 60 : 120 )) "$PY" -m pytest -q -x -p no:cacheprovider -rs \
    "${COLLECT[@]}" "${TESTS[@]}" > "$DEST/tests.log" 2>&1 || fail "GPU tests (see tests.log)"
tail -3 "$DEST/tests.log"
if [ "$QUICK" = 0 ]; then
  # The tiled route's Triton tile kernel (tests/test_tiled.py: against the float64 reference).
  timeout -k 5 90 "$PY" -m pytest -q -x -p no:cacheprovider -rs "${COLLECT[@]}" \
      tests/test_tiled.py -k triton >> "$DEST/tests.log" 2>&1 \
      || fail "tiled-route GPU tests (see tests.log)"
  tail -1 "$DEST/tests.log"
fi

step "5/6 benchmarks"
# Whatever is left of GPU_SECONDS (default 520 s; a device call's limit is 600 s): no case
# starts past the budget (those are reported as skipped); the timeout lets the last finish.
SWEEP=${GPU_SWEEP:-1}     # GPU_SWEEP=0: no step 6 (its 50 s go to the benchmarks)
LEFT=$(( ${GPU_SECONDS:-520} - 50 * SWEEP - ($(date +%s) - T0) ))
[ "$LEFT" -gt 60 ] || LEFT=60
BARGS=(--out "$DEST" --budget $(( LEFT - (QUICK ? 40 : 100) )))
[ "$DRY" = 1 ] && BARGS+=(--dry-run)
timeout -k 5 "$LEFT" "$PY" bench/gpu_bench.py "${BARGS[@]}" || fail "benchmarks"

step "6/6 Gram configurations (bench/gpu_sweep.py: the launcher's and alternatives)"
if [ "$SWEEP" = 1 ]; then
  SARGS=(--out "$DEST/sweep.json" --seconds 35)
  [ "$DRY" = 1 ] && SARGS+=(--dry-run)
  timeout -k 5 60 "$PY" bench/gpu_sweep.py "${SARGS[@]}" > "$DEST/sweep.txt" 2>&1 \
      || fail "Gram sweep (see sweep.txt)"
  tail -30 "$DEST/sweep.txt"
else
  echo "skipped (GPU_SWEEP=0)"
fi

step "done: exit status $status, results in $DEST"
exit $status
