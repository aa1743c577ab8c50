"""Without the compiled module the package still works, through the torch backend, and
says so once."""
import subprocess
import sys
import textwrap


def test_missing_compiled_module_falls_back_to_torch_and_warns_once():
    code = textwrap.dedent("""
        import sys, warnings
        sys.modules["flashcka._C"] = None          # as if the extension were not built
        import torch, flashcka
        x, y = torch.randn(20, 5, dtype=torch.float64), torch.randn(20, 3, dtype=torch.float64)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            a = flashcka.cka_matrix([x], [y], route="gram")
            b = flashcka.cka_matrix([x], [y], route="gram", backend="torch")
            flashcka.cka_matrix([x], [y], route="gram")
        native = [w for w in caught if "native backend is not usable" in str(w.message)]
        assert len(native) == 1, [str(w.message) for w in caught]
        assert torch.equal(a, b)
        assert not flashcka.capabilities()["backends"]["native"]["usable"]
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().endswith("ok")


def test_ci_fails_when_native_is_required_but_missing(tmp_path):
    """FLASHCKA_REQUIRE_NATIVE=1 (set by .ci/run) turns a missing _C into a session error."""
    import os
    (tmp_path / "test_one.py").write_text("def test_ok():\n    pass\n")
    code = textwrap.dedent(f"""
        import sys
        sys.modules["flashcka._C"] = None          # as if the extension were not built
        import pytest
        sys.exit(pytest.main(["-q", "-p", "no:cacheprovider", "--rootdir", {str(tmp_path)!r},
                              "-c", {os.devnull!r}, "-p", "conftest",
                              {str(tmp_path / "test_one.py")!r}]))
    """)
    tests_dir = os.path.dirname(os.path.abspath(__file__))
    env = dict(os.environ, FLASHCKA_REQUIRE_NATIVE="1",
               PYTHONPATH=tests_dir + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode != 0, out.stdout
    assert "native backend is not usable" in out.stdout + out.stderr, out.stdout + out.stderr
    env["FLASHCKA_REQUIRE_NATIVE"] = "0"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert out.returncode == 0, out.stdout + out.stderr


# ------------------------------------------------------------------ Triton fail-safe
# backend="auto" checks the Triton kernels against the torch backend on first use per
# dtype; on failure it warns once (FlashCKAWarning with the error and the device name) and
# uses torch for the rest of the process; backend="triton" raises. Forced on the CPU: the
# kernels run in the Triton interpreter and "auto" is made to pick Triton for CPU tensors.

_TRITON_CASE = textwrap.dedent("""
    import os, sys, warnings
    os.environ["TRITON_INTERPRET"] = "1"
    import torch, flashcka
    from flashcka import backends
    from flashcka.backends import triton_launch
    backends._auto_order = lambda device: ("triton",)
    MODE = sys.argv[1]
    if MODE.startswith("raise"):       # a kernel that fails to compile or launch
        class Broken:
            def __getitem__(self, grid):
                raise RuntimeError("boom: forced compile failure")
        triton_launch._k._gram_stats_kernel = Broken()
    elif MODE == "wrong":              # a kernel that runs but writes wrong numbers
        real = triton_launch.center_pack_triton
        def wrong(k, rowsum, out, *, unbiased):
            real(k, rowsum, out, unbiased=unbiased)
            out[::7] *= 1.01
            return out
        triton_launch.center_pack_triton = wrong
    g = torch.Generator().manual_seed(0)
    xs = [torch.randn(20, 30, generator=g) for _ in range(2)]
    if MODE == "raise_explicit_first":
        try:
            flashcka.cka_matrix(xs, route="gram", backend="triton")
        except RuntimeError as e:
            print("FIRST raised", e)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        a = flashcka.cka_matrix(xs, route="gram")
        b = flashcka.cka_matrix([x.double() for x in xs], route="gram")
        flashcka.cka_matrix(xs, route="gram")
    ours = [str(w.message) for w in caught if issubclass(w.category, flashcka.FlashCKAWarning)]
    print("WARNINGS", len(ours))
    for m in ours:
        print("MSG", m)
    print("AUTO", backends.select("auto", xs[0]).name)
    t = flashcka.cka_matrix(xs, route="gram", backend="torch")
    print("EQUAL_TORCH", bool(torch.equal(a, t)))
    try:
        flashcka.cka_matrix(xs, route="gram", backend="triton")
        print("EXPLICIT ok")
    except RuntimeError as e:
        print("EXPLICIT raised", e)
""")


def _run_triton_case(mode):
    import pytest
    pytest.importorskip("triton")
    out = subprocess.run([sys.executable, "-c", _TRITON_CASE, mode], capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_triton_failing_kernel_falls_back_to_torch_once():
    out = _run_triton_case("raise")
    assert "WARNINGS 1" in out, out                       # once, not per call or dtype
    assert "boom: forced compile failure" in out and "cpu (Triton interpreter)" in out, out
    assert "using the torch backend for the rest of this process" in out, out
    assert "AUTO torch" in out and "EQUAL_TORCH True" in out, out
    assert "EXPLICIT raised backend='triton'" in out and "boom" in out.split("EXPLICIT")[1]


def test_triton_wrong_numbers_fall_back_to_torch():
    out = _run_triton_case("wrong")
    assert "WARNINGS 1" in out, out
    assert "max error" in out and "> tolerance" in out, out
    assert "AUTO torch" in out and "EQUAL_TORCH True" in out, out
    assert "EXPLICIT raised" in out, out


def test_triton_healthy_kernels_are_used_without_warning():
    out = _run_triton_case("ok")
    assert "WARNINGS 0" in out, out
    assert "AUTO triton" in out and "EXPLICIT ok" in out, out


def test_triton_failure_seen_by_an_explicit_call_still_warns_auto_once():
    out = _run_triton_case("raise_explicit_first")
    assert "FIRST raised backend='triton'" in out and "boom" in out, out
    assert "WARNINGS 1" in out and "AUTO torch" in out and "EQUAL_TORCH True" in out, out
