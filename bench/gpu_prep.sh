#!/usr/bin/env bash
# Companion of bench/gpu.sh, run on a CPU machine with the package registry, right before a
# GPU call: downloads into .whl/ (ignored by git) the wheels the GPU machine lacks, for its
# Python 3.12 / x86-64 (it has torch 2.11+cu130, Triton 3.6, scikit-build-core, pybind11,
# cmake, ninja, pytest, pytest-benchmark, numpy, tqdm, matplotlib, torchvision; no network),
# and records the commit, since the device receives the working tree without .git.
#   bash bench/gpu_prep.sh          then, with the device tool:
#   run(command="bash bench/gpu.sh", carry=[".whl"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
# The one build dependency missing there: OpenBLAS for the CPU kernels (the version here).
OPENBLAS=$(python -c "import importlib.metadata as m; print(m.version('scipy-openblas32'))" \
           2>/dev/null || echo 0.3.30.0.2)
mkdir -p .whl
rm -f .whl/*.whl
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "scipy-openblas32==$OPENBLAS"
# pytorch-cka (import name cka), for the peer job of bench/gpu_bench.py; pure Python, and
# everything it imports (torch, tqdm, matplotlib) is on the machine.
python -m pip download -q --no-deps --only-binary=:all: -d .whl "pytorch-cka==1.1.3"
{ git rev-parse HEAD; git diff --quiet HEAD -- . ':!.whl' || echo "dirty"; } > .whl/COMMIT
git diff HEAD -- . ':!.whl' > .whl/uncommitted.diff || true
ls -la .whl
SIZE=$(du -sm .whl | cut -f1)
echo "gpu_prep: .whl is ${SIZE} MiB (the tree and carried paths travel within 64 MiB)"
[ "$SIZE" -lt 48 ] || { echo "gpu_prep: .whl too large" >&2; exit 1; }
