"""The native backend's instruction sets (FLASHCKA_SIMD), reproducibility and memory.

Every set this CPU runs is checked against the float64 reference here, each in a fresh
process (the set is chosen once a process); CI also runs the whole native test files once
per set (.ci/run). Then: the same call gives the same bits every time, whatever threads
run it; and a call on large n does not keep its n × n scratch."""
import os
import subprocess
import sys
import tempfile
import threading

import numpy as np
import pytest
import torch

import flashcka
from flashcka.backends import get
from reference import center_unbiased, gram_linear

native = get("native")
_ok, _why = native.usable()
pytestmark = [pytest.mark.native,
              pytest.mark.skipif(not _ok, reason=f"native backend not usable: {_why}")]


def _lib():
    from flashcka.backends.native import _load
    return _load()


# Under .ci/pytest-pkg (the Clang and sanitizer builds) a child imports that build too.
_BOOT = ("import sys, os; p = os.environ.get('FLASHCKA_TEST_PKG')\n"
         "if p:\n sys.meta_path[:] = [f for f in sys.meta_path if 'editable' not in "
         "type(f).__module__.lower() and 'skbc' not in type(f).__module__]; "
         "sys.path.insert(0, p)\n")


def _child(code: str, simd: str, *args):
    env = dict(os.environ, FLASHCKA_SIMD=simd)
    return subprocess.run([sys.executable, "-c", _BOOT + code, *args], env=env,
                          capture_output=True, text=True, timeout=300)


# Rows of awkward shapes (panel and chunk edges: 16/8-row panels, 256-column chunks, 6-row
# AVX2 blocks, strided and token layouts) and one pair stage, from the set FLASHCKA_SIMD
# names, saved for the parent to compare with the reference.
_ROWS = """
import sys, torch
from flashcka.backends import get
from flashcka.backends.native import _load
be = get('native'); print(_load().simd)
g = torch.Generator().manual_seed(int(sys.argv[2]))
cases = []
for n, d, dt in [(4, 1, torch.float32), (5, 3, torch.float64), (17, 255, torch.float32),
                 (33, 257, torch.float32), (97, 1000, torch.float32), (23, 513, torch.float64),
                 (130, 40, torch.float32), (9, 2049, torch.float64)]:
    x = torch.randn(n, d + 3, generator=g, dtype=dt)[:, 2:d + 2] * 3 + 1.5   # strided
    out = torch.empty(be.row_length(n, True), dtype=dt)
    be.centered_gram_rows([x], out, kernel='linear', sigma=None, threshold=1.0, unbiased=True)
    cases.append((x, out))
t = torch.randn(21, 7, 48, generator=g)[:, 1:]                               # (n, T, C)
out = torch.empty(be.row_length(21, True))
be.centered_gram_rows([t], out, kernel='linear', sigma=None, threshold=1.0, unbiased=True)
cases.append((t, out))
ga = torch.randn(70, 3001, generator=g); gb = torch.randn(5, 3001, generator=g)
torch.save((cases, ga, gb, be.pair(ga, gb), be.pair(ga, ga)), sys.argv[1])
"""


def _unpack(row, n):
    row = np.asarray(row.to(torch.float64))
    c = np.zeros((n, n))
    c[np.triu_indices(n, 1)] = row / np.sqrt(2)
    return c + c.T


@pytest.mark.parametrize("simd", ["avx512", "avx2", "0"])
def test_each_instruction_set_against_the_reference(simd, rng):
    if simd not in _lib().simd_supported:
        pytest.skip(f"this CPU cannot run {simd}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "rows.pt")
        r = _child(_ROWS, simd, path, str(int(rng.integers(2 ** 31))))
        assert r.returncode == 0, r.stderr
        want = {"avx512": "AVX-512 packed SYRK", "avx2": "AVX2+FMA packed SYRK",
                "0": "OpenBLAS SYRK"}[simd]
        assert r.stdout.strip() == want
        cases, ga, gb, pab, paa = torch.load(path)
    for x, out in cases:
        ref = center_unbiased(gram_linear(x.numpy()))
        eps = torch.finfo(x.dtype).eps
        err = np.abs(_unpack(out, x.shape[0]) - ref).max()
        # rounding bound of the centred Gram: d·eps·max‖x_c‖² (a few times over)
        xc = x.double().reshape(x.shape[0], -1)
        xc = xc - xc.mean(0)
        bound = 8 * xc.shape[1] * eps * float((xc * xc).sum(1).max())
        assert err <= bound, (tuple(x.shape), err, bound)
    for a, b, got in ((ga, gb, pab), (ga, ga, paa)):
        ref = a.double() @ b.double().T
        gamma = a.shape[1] * torch.finfo(torch.float32).eps
        assert ((got - ref).abs() <= gamma * (a.double().abs() @ b.double().abs().T)).all()


def test_an_impossible_instruction_set_is_refused_by_name():
    code = ("import torch, warnings, flashcka; from flashcka.backends import get;"
            "ok, why = get('native').usable(); print(ok); print(why);"
            "x = torch.randn(9, 5)\n"
            "try:\n flashcka.cka(x, x, backend='native')\n"
            "except RuntimeError as e:\n print('refused:', e)\n"
            "with warnings.catch_warnings(record=True) as w:\n"
            " warnings.simplefilter('always'); flashcka.cka(x, x + 1)\n"
            " print('warned:', [str(m.message) for m in w])")
    r = _child(code, "sse9")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "False" and "FLASHCKA_SIMD=sse9" in lines[1]
    assert "refused:" in r.stdout and "FLASHCKA_SIMD=sse9" in r.stdout.split("refused:")[1]
    assert "native backend is not usable" in r.stdout.split("warned:")[1]


def test_bitwise_reproducible_whatever_threads_run_it():
    """Issue 25 item 10: 20 identical calls gave 19 distinct values (threads pulled work in
    turn, so the order of the sums followed thread timing). Now the split is fixed: every
    call gives the same bits, also from several Python threads at once (a busy pool runs
    the same slots on fewer threads)."""
    g = torch.Generator().manual_seed(3)
    xs = [torch.randn(64, 65536, generator=g) + 1, torch.randn(64, 65536, generator=g)]
    xs[1] += 0.5 * xs[0]
    ys = [torch.randn(48, 300, generator=g) for _ in range(70)]  # packed pair stage
    first = (flashcka.cka_matrix(xs, backend="native"),
             flashcka.cka_matrix(ys, backend="native"))
    results = []
    for _ in range(20):
        results.append((flashcka.cka_matrix(xs, backend="native"),
                        flashcka.cka_matrix(ys, backend="native")))

    def worker():
        for _ in range(3):
            results.append((flashcka.cka_matrix(xs, backend="native"),
                            flashcka.cka_matrix(ys, backend="native")))

    threads = [threading.Thread(target=worker) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 29
    for a, b in results:
        assert torch.equal(a, first[0]) and torch.equal(b, first[1])


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs /proc")
def test_no_large_scratch_kept_after_a_call():
    """Issue 25 item 8: the per-thread n × n scratch stayed resident (+1.1 GB after one
    call at n = 16,000). n = 6,000: a 137 MiB float triangle per working thread; what
    stays afterwards is at most the 64 MiB a thread may keep (csrc/gram_cpu.cpp)."""
    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(6000, 8, generator=g) for _ in range(2)]
    before = _rss_mb()
    out = flashcka.cka_matrix(xs, kernel="rbf", backend="native")
    assert torch.isfinite(out).all()
    del out
    kept = _rss_mb() - before
    assert kept < 64 * torch.get_num_threads() + 40, f"{kept:.0f} MB kept"


@pytest.mark.parametrize("simd", ["avx2", "0"])
def test_auto_picks_what_was_measured_faster(simd):
    """backend='auto' on CPU tensors: native on every shape with the vector kernels; on the
    OpenBLAS path, the torch backend for few samples of many features (n <= 64, d >= 4096),
    where it was measured as fast or faster. `flashcka info` says which."""
    if simd not in _lib().simd_supported:
        pytest.skip(f"this CPU cannot run {simd}")
    code = ("import torch; from flashcka.backends import select;"
            "print([select('auto', torch.zeros(n, d)).name for n, d in "
            "((64, 4096), (16, 16384), (65, 4096), (64, 4095), (512, 256))])")
    r = _child(code, simd)
    assert r.returncode == 0, r.stderr
    want = {"avx2": ["native"] * 5, "0": ["torch", "torch", "native", "native", "native"]}
    assert r.stdout.strip() == str(want[simd])
    info = _child("import flashcka.cli as c; c.main(['info'])", simd)
    assert ("every shape" if simd == "avx2" else "n <= 64 with d >= 4096") in info.stdout
