"""CKAResult: every malformed input is a ValueError/TypeError naming the field; stderr
round-trips; heatmaps at 0, a few and hundreds of layers, PNG and SVG."""
import json
import math

import numpy as np
import pytest

from flashcka import CKAResult


def _result(la=2, lb=3, stderr=True, seed=0):
    g = np.random.default_rng(seed)
    m = g.random((la, lb))
    m[0, -1] = np.nan
    se = g.random((la, lb)) / 10 if stderr else None
    return CKAResult(m, [f"a{i}" for i in range(la)], [f"b{j}" for j in range(lb)],
                     {"kernel": "linear", "unbiased": True, "sigma": None},
                     num_samples=40, num_batches=4, stderr=se)


@pytest.mark.parametrize("ext", ["json", "npz"])
def test_round_trip_with_stderr(tmp_path, ext):
    r = _result()
    back = CKAResult.load(r.save(tmp_path / f"r.{ext}"))
    assert back == r and back.stderr is not None
    assert back.stderr.tolist() == r.stderr.tolist()      # exact
    assert back != _result(stderr=False)                   # stderr takes part in ==
    assert "stderr" in repr(r)


def test_constructor_checks_every_field():
    m = np.zeros((2, 3))
    with pytest.raises(TypeError, match="names_a .*single string"):
        CKAResult(np.zeros((2, 1)), "ab", ["x"])
    with pytest.raises(ValueError, match=r"matrix has shape \(3, 2\).*transposed"):
        CKAResult(m.T, ["a", "b"], ["x", "y", "z"])
    with pytest.raises(ValueError, match=r"matrix has shape \(6,\)|matrix must be 2-D"):
        CKAResult(m.reshape(-1), ["a", "b"], ["x", "y", "z"])
    with pytest.raises(TypeError, match="matrix must hold real numbers"):
        CKAResult(m.astype(complex), ["a", "b"], ["x", "y", "z"])
    with pytest.raises(TypeError, match="matrix must hold real numbers"):
        CKAResult([["a", "b", "c"], ["d", "e", "f"]], ["a", "b"], ["x", "y", "z"])
    with pytest.raises(ValueError, match="stderr has shape"):
        CKAResult(m, ["a", "b"], ["x", "y", "z"], stderr=np.zeros((2, 2)))
    with pytest.raises(TypeError, match=r"names_b\[1\] must be a layer name"):
        CKAResult(m, ["a", "b"], ["x", None, "z"])
    with pytest.raises(TypeError, match="names_a must be a list"):
        CKAResult(m, {"a", "b"}, ["x", "y", "z"])
    with pytest.raises(TypeError, match="settings must be a dict"):
        CKAResult(m, ["a", "b"], ["x", "y", "z"], settings=[1])
    with pytest.raises(ValueError, match="num_samples"):
        CKAResult(m, ["a", "b"], ["x", "y", "z"], num_samples=-1)


def _good_dict():
    return _result().to_dict()


@pytest.mark.parametrize("mutate, exc, match", [
    (lambda d: d.pop("matrix"), ValueError, r"missing field\(s\) \['matrix'\]"),
    (lambda d: d.pop("names_b"), ValueError, "missing field"),
    (lambda d: d.update(names_a="a0"), TypeError, "names_a .*single string"),
    (lambda d: d.update(matrix=[[0.1, 0.2], [0.3, 0.4], [0.5, 0.6]]), ValueError,
     "matrix has 3 rows but there are 2 names_a"),
    (lambda d: d.update(matrix=[[0.1, 0.2, 0.3, 0.4, 0.5, 0.6]]), ValueError, "matrix has 1 rows"),
    (lambda d: d["matrix"].__setitem__(1, [0.1, 0.2]), ValueError,
     r"matrix\[1\] has 2 entries but there are 3 names_b"),
    (lambda d: d["matrix"][1].__setitem__(2, "x"), TypeError, r"matrix\[1\]\[2\] must be a number"),
    (lambda d: d.update(matrix="nope"), TypeError, "matrix must be a list of rows"),
    (lambda d: d["stderr"].pop(), ValueError, "stderr has 1 rows"),
    (lambda d: d.update(num_batches="4"), ValueError, "num_batches must be a non-negative int"),
    (lambda d: d.update(settings=[]), TypeError, "settings must be a dict"),
    (lambda d: d.update(format="other"), ValueError, "not a saved CKAResult"),
    (lambda d: d.update(version=7), ValueError, "version 7"),
])
def test_from_dict_malformed(mutate, exc, match):
    d = _good_dict()
    mutate(d)
    with pytest.raises(exc, match=match):
        CKAResult.from_dict(d)


def test_load_malformed_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="bad.json is not valid JSON"):
        CKAResult.load(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(TypeError, match="is a dict"):
        CKAResult.load(bad)
    d = _good_dict()
    del d["names_a"]
    bad.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=r"bad.json: saved CKAResult is missing field\(s\) \['names_a'\]"):
        CKAResult.load(bad)
    npz = tmp_path / "bad.npz"
    npz.write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable .npz"):
        CKAResult.load(npz)
    r = _result()
    with open(npz, "wb") as f:                       # transposed matrix in an npz
        np.savez(f, format=np.array("flashcka.CKAResult"), matrix=r.matrix.numpy().T,
                 names_a=np.array(r.names_a), names_b=np.array(r.names_b),
                 settings=np.array("{}"), num_samples=np.array(1), num_batches=np.array(1))
    with pytest.raises(ValueError, match="transposed"):
        CKAResult.load(npz)
    with open(npz, "wb") as f:
        np.savez(f, format=np.array("flashcka.CKAResult"), matrix=r.matrix.numpy(),
                 names_a=np.array(r.names_a), settings=np.array("{}"))
    with pytest.raises(ValueError, match=r"missing field\(s\) \['names_b'\]"):
        CKAResult.load(npz)


def test_plot_small_png_svg_and_stderr(tmp_path):
    r = _result(3, 4)
    png = r.plot(tmp_path / "r.png", stderr=True)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    svg = r.plot(tmp_path / "r.svg")
    text = svg.read_text()
    assert text.lstrip().startswith("<?xml") and "<svg" in text
    with pytest.raises(ValueError, match=".png, .svg or .pdf"):
        r.plot(tmp_path / "r.gif")
    with pytest.raises(ValueError, match="no stderr"):
        _result(stderr=False).plot(tmp_path / "x.png", stderr=True)


def test_plot_zero_layers_is_a_clear_error(tmp_path):
    r = CKAResult(np.zeros((0, 3)), [], ["x", "y", "z"])
    assert r.matrix.shape == (0, 3)
    with pytest.raises(ValueError, match="nothing to plot: this result has 0 layer"):
        r.plot(tmp_path / "empty.png")


def test_plot_hundreds_of_layers_thins_ticks_and_marks_blocks(tmp_path):
    names_a = [f"blocks.{b}.{s}" for b in range(60) for s in ("norm1:input", "attn", "norm2:input", "mlp", "out")]
    names_b = [f"layer{s}.{b}.conv{c}" for s in range(1, 5) for b in range(20) for c in (1, 2, 3)]
    m = np.random.default_rng(0).random((len(names_a), len(names_b)))
    r = CKAResult(m, names_a, names_b, {"model_a": "ViT", "model_b": "ResNet"})
    from matplotlib.figure import Figure
    calls = {}
    orig = Figure.savefig

    def spy(self, *a, **k):
        ax = self.axes[0]
        calls["x"] = len(ax.get_xticks())
        calls["y"] = len(ax.get_yticks())
        calls["lines"] = len(ax.lines)
        calls["ylabel"] = ax.get_ylabel()
        return orig(self, *a, **k)

    Figure.savefig = spy
    try:
        path = r.plot(tmp_path / "big.png")
    finally:
        Figure.savefig = orig
    assert path.stat().st_size > 20_000
    assert 10 <= calls["y"] < len(names_a) and 10 <= calls["x"] < len(names_b)
    assert calls["lines"] == 59 + 79                 # one line per block boundary
    assert "labelled" in calls["ylabel"]
    assert math.isfinite(r.matrix.sum().item())
    r.plot(tmp_path / "big.svg")
    assert (tmp_path / "big.svg").stat().st_size > 20_000
