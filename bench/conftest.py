"""Shared machinery of the pytest-benchmark suites (bench/bench_*.py).

* ``--quick`` (or ``FLASHCKA_BENCH_QUICK=1``) picks small sizes: with ``--benchmark-disable``
  every case runs once, as a CI smoke test (< 60 s on 2 cores).
* Fixtures parametrized here: ``target`` (a ``Target``: backend name + device; a backend that
  is not usable here, or does not accept the device, is a skipped case with the reason),
  ``dtype``, and one shape fixture per stage (``gram_shape``, ``pair_shape``, ``rbf_shape``,
  ``minibatch_shape``), full or quick.
* fixtures ``timeit(fn, *args)`` (pedantic timing, CUDA synchronized) and
  ``report(flops=..., bytes_read=...)``: the latter writes the achieved rate (GFLOP/s, GB/s)
  against the floor of docs/design.md §2 plus device name, versions and commit into
  ``benchmark.extra_info``: every recorded row says where it was measured.
"""
from __future__ import annotations

import os
import platform
import re
import subprocess
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

# (quick, full) sizes per stage. Full sizes are those of docs/design.md §2 and the issues.
SIZES = {
    # (n, d)
    "gram": ([(64, 1024)], [(256, 16384), (512, 16384), (256, 32768), (512, 32768)]),
    # (L_A, L_B, n): rows of n² entries each
    "pair": ([(8, 8, 64)], [(48, 48, 512), (24, 24, 256)]),
    # (n, d)
    "rbf": ([(64, 512)], [(256, 4096), (512, 4096)]),
    # (L_A, L_B, n, d)
    "minibatch": ([(4, 4, 64, 512)], [(24, 24, 256, 16384)]),
}
DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16}
BACKENDS = ("torch", "native", "triton")


def pytest_addoption(parser):
    group = parser.getgroup("flashcka bench")
    group.addoption("--quick", action="store_true", default=False,
                    help="small sizes only (CI smoke test; also FLASHCKA_BENCH_QUICK=1)")
    group.addoption("--bench-dtypes", default=None,
                    help="comma-separated dtypes to run (default float32,float64; "
                         "bfloat16 is accepted too)")


def pytest_configure(config):
    threads = os.environ.get("FLASHCKA_BENCH_THREADS")
    if threads:  # e.g. 1 on a shared 2-core box: fewer spin-wait stalls between threads
        torch.set_num_threads(int(threads))
    config.addinivalue_line("markers", "gpu: needs a CUDA device")
    config.addinivalue_line("python_files", "bench_*.py")  # pytest's default is test_*.py


def is_quick(config) -> bool:
    return bool(config.getoption("--quick")) or os.environ.get(
        "FLASHCKA_BENCH_QUICK", "") not in ("", "0")


# ---------------------------------------------------------------- targets (backend × device)
@dataclass(frozen=True)
class Target:
    backend: str
    device: str

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def __str__(self) -> str:
        return f"{self.backend}-{self.device}"


def backend_status(name: str, device: str, dtype: torch.dtype) -> tuple[bool, str]:
    """(runs here, reason when not) for backend ``name`` on ``device`` tensors of ``dtype``."""
    if device == "cuda" and not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        from flashcka import backends
        be = backends.get(name)
        ok, why = be.usable()
    except ImportError as e:  # backend module not there (not built / not written yet)
        return False, f"{type(e).__name__}: {e}"
    if not ok:
        return False, why
    if name == "triton" and device == "cpu":
        return False, "Triton on the CPU only runs interpreted (TRITON_INTERPRET=1): not timed"
    if not be.accepts(torch.empty(4, 4, dtype=dtype, device=device)):
        return False, f"{name} does not accept {device} {dtype}"
    return True, ""


def _devices() -> list[str]:
    return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def pytest_generate_tests(metafunc):
    quick = is_quick(metafunc.config)
    names = metafunc.fixturenames
    dtype_names = (metafunc.config.getoption("--bench-dtypes") or "float32,float64").split(",")
    if quick:
        dtype_names = dtype_names[:1]
    if "dtype" in names:
        metafunc.parametrize("dtype", [DTYPES[d] for d in dtype_names], ids=dtype_names)
    if "target" in names:
        params = []
        dt = DTYPES[dtype_names[0]]
        for device in _devices():
            for be in BACKENDS:
                ok, why = backend_status(be, device, dt)
                marks = () if ok else (pytest.mark.skip(reason=f"{be} on {device}: {why}"),)
                params.append(pytest.param(Target(be, device), id=f"{be}-{device}",
                                           marks=marks))
        metafunc.parametrize("target", params)
    for stage in SIZES:
        fixture = f"{stage}_shape"
        if fixture in names:
            shapes = SIZES[stage][0 if quick else 1]
            metafunc.parametrize(fixture, shapes, ids=["x".join(map(str, s)) for s in shapes])


@pytest.fixture
def quick(request) -> bool:
    return is_quick(request.config)


@pytest.fixture
def rounds(request) -> dict:
    """Keyword arguments for ``benchmark.pedantic``: few rounds at full size (the cases take
    0.05–2 s each), a warm-up round always (first-call allocations, thread-pool start)."""
    return {"rounds": 3 if is_quick(request.config) else 5, "iterations": 1,
            "warmup_rounds": 1}


@pytest.fixture
def timeit(benchmark, rounds, target):
    """``timeit(fn, *args)``: time fn on the case's target; returns fn's result."""
    return lambda fn, *args: _timeit(benchmark, rounds, target, fn, *args)


@pytest.fixture
def report(benchmark, target):
    """``report(flops=..., bytes_read=..., **extra)``: rates and provenance into extra_info."""
    return lambda **kw: _report(benchmark, target, **kw)


def skip_unless(target: Target, dtype: torch.dtype) -> None:
    """Skip a case whose dtype the target's backend does not take."""
    ok, why = backend_status(target.backend, target.device, dtype)
    if not ok:
        pytest.skip(f"{target}: {why}")


@pytest.fixture(autouse=True)
def _dtype_supported(request):
    """Skip (target, dtype) combinations the backend does not accept."""
    names = request.fixturenames
    if "target" in names and "dtype" in names:
        skip_unless(request.getfixturevalue("target"), request.getfixturevalue("dtype"))


# ---------------------------------------------------------------- the scripts' helpers
def call_seconds(fn, cuda: bool) -> float:
    """Seconds of one call of fn: CUDA events around it when ``cuda`` (the GPU's time for
    the work fn queues), perf_counter otherwise."""
    if not cuda:
        t = time.perf_counter()
        fn()
        return time.perf_counter() - t
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record()
    fn()
    b.record()
    b.synchronize()
    return a.elapsed_time(b) / 1e3


def repeat_times(fn, repeat: int) -> list[float]:
    """Wall times (s) of ``repeat`` calls of fn, after one warm-up call."""
    fn()
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def proc_status() -> dict:
    """This process's peak and current memory (bytes): VmHWM, VmRSS, RssAnon, RssFile of
    /proc/self/status (Linux)."""
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[k] = int(v.split()[0]) * 1024
    return out


# ---------------------------------------------------------------- provenance
@lru_cache(None)
def device_name(device: str = "cpu") -> str:
    if device == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_slug() -> str:
    """bench/results/<slug>/: the GPU's name where one is present, else the CPU's."""
    name = device_name("cuda" if torch.cuda.is_available() else "cpu")
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")
    return f"{slug}-{os.cpu_count()}cpu" if not torch.cuda.is_available() else slug


@lru_cache(None)
def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10)
        sha = out.stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=ROOT, capture_output=True, text=True, timeout=10).stdout
        return sha + ("-dirty" if dirty.strip() else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@lru_cache(None)
def versions() -> dict:
    import flashcka
    v = {"torch": torch.__version__, "flashcka": flashcka.__version__,
         "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        v["cuda"] = torch.version.cuda
    try:
        import triton
        v["triton"] = triton.__version__
    except ImportError:
        pass
    return v


def pytest_benchmark_update_machine_info(config, machine_info):
    machine_info["device_cpu"] = device_name("cpu")
    if torch.cuda.is_available():
        machine_info["device_gpu"] = device_name("cuda")
    machine_info["machine_slug"] = machine_slug()
    machine_info.update(versions())


def _report(benchmark, target: Target, *, flops: float | None = None,
           bytes_read: float | None = None, **extra) -> None:
    """Record the achieved rate (from the median time) and provenance in extra_info."""
    info = benchmark.extra_info
    info.update(extra)
    info.update(backend=target.backend, device=device_name(target.device),
                commit=git_commit(), **versions())
    stats = getattr(benchmark, "stats", None)
    median = stats.stats.median if stats is not None and getattr(stats, "stats", None) else None
    if flops is not None:
        info["flops"] = flops
        if median:
            info["gflops_per_s"] = round(flops / median / 1e9, 2)
    if bytes_read is not None:
        info["bytes_read"] = bytes_read
        if median:
            info["gbytes_per_s"] = round(bytes_read / median / 1e9, 2)
    if "samples" in extra and median:
        info["samples_per_s"] = round(extra["samples"] / median, 1)


def _timeit(benchmark, rounds: dict, target: Target, fn, *args):
    """Time ``fn(*args)`` (synchronizing a CUDA device after each call); returns its result."""
    def call():
        out = fn(*args)
        target.sync()
        return out
    return benchmark.pedantic(call, **rounds)
