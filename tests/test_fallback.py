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
