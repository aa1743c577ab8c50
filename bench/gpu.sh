#!/usr/bin/env bash
# One command on any CUDA machine: build flashcka, run the GPU tests and the GPU benchmarks.
#   bash bench/gpu.sh            (PYTHON=/path/to/python to pick the interpreter)
# Results: bench/results/<gpu-name>/{tests.log, bench_triton.json, bench_cuda.json, env.txt}
# (<gpu-name> is torch.cuda.get_device_name() as bench/conftest.py's machine_slug writes it).
# Build dependencies (scikit-build-core, pybind11, scipy-openblas32, cmake, ninja) and
# triton/pytest/pytest-benchmark must already be installed: the build is offline-safe
# (--no-build-isolation --no-deps).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}

"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device')"
SLUG=$("$PY" -c "import re, torch; print(re.sub(r'[^a-z0-9]+', '-', torch.cuda.get_device_name().lower()).strip('-'))")
OUT="bench/results/$SLUG"
mkdir -p "$OUT"

echo "== build (editable, CUDA kernels when a toolkit is found)"
FLASHCKA_CUDA=${FLASHCKA_CUDA:-AUTO} "$PY" -m pip install --no-build-isolation --no-deps -e .

{
  echo "commit: $(git rev-parse HEAD 2>/dev/null || echo unknown)$(git diff --quiet 2>/dev/null || echo -dirty)"
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>/dev/null || true
  "$PY" -c "import torch, triton, flashcka; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'triton', triton.__version__, 'flashcka', flashcka.__version__); print(flashcka.capabilities())"
} | tee "$OUT/env.txt"

echo "== GPU tests (TRITON_INTERPRET unset: real kernels)"
status=0
env -u TRITON_INTERPRET "$PY" -m pytest tests -m "triton or gpu" -q -rs 2>&1 | tee "$OUT/tests.log" || status=$?

echo "== GPU benchmarks"
env -u TRITON_INTERPRET "$PY" -m pytest bench/bench_triton.py -q \
    --benchmark-json="$OUT/bench_triton.json" --benchmark-columns=min,median,max || status=$?
# The shared suites (bench_gram.py, bench_pair.py, ...) on their cuda targets only.
env -u TRITON_INTERPRET "$PY" -m pytest bench -q -k "cuda" --ignore=bench/bench_triton.py \
    --bench-dtypes=float32,bfloat16 --benchmark-json="$OUT/bench_cuda.json" \
    --benchmark-columns=min,median,max || { rc=$?; [ "$rc" -eq 5 ] || status=$rc; }  # 5: none selected

echo "== results in $OUT (exit status $status)"
exit $status
