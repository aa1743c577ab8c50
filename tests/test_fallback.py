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
