"""core/sources.py: every kind of input read a block of rows at a time equals the same data
in memory; every check (n, dtype, finiteness as it streams) names the argument and layer."""
import sys

import numpy as np
import pytest
import torch

from flashcka import MinibatchCKA
from flashcka.core import sources as S

import reference as ref

h5py = pytest.importorskip("h5py")
st = pytest.importorskip("safetensors.torch")


def blocks(src, tile):
    """The whole layer read ``tile`` rows at a time."""
    return torch.cat([src.read(i, min(i + tile, src.n)) for i in range(0, src.n, tile)])


def kinds(tmp_path, x: np.ndarray):
    """Every way to give the layer ``x`` (n, ...) -> {kind: input}."""
    n = len(x)
    flat = x.reshape(n, -1)
    np.save(tmp_path / "c.npy", x)
    np.save(tmp_path / "f.npy", np.asfortranarray(flat))
    np.save(tmp_path / "be.npy", x.astype(x.dtype.newbyteorder(">")))
    mm = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=x.dtype, shape=x.shape)
    mm[:] = x
    mm.flush()
    st.save_file({"only": torch.from_numpy(x)}, str(tmp_path / "one.safetensors"))
    st.save_file({"a": torch.from_numpy(x), "b": torch.zeros(n, 2, dtype=torch.float64)},
                 str(tmp_path / "two.safetensors"))
    with h5py.File(tmp_path / "d.h5", "w") as f:
        f["g/x"] = x
        f["y"] = np.zeros((n, 1))
    h5 = h5py.File(tmp_path / "d.h5", "r")
    return {
        "tensor": torch.from_numpy(x), "tensor_noncontig": torch.from_numpy(flat.T.copy()).T,
        "ndarray": x, "memmap": np.load(tmp_path / "m.npy", mmap_mode="r"),
        "npy": str(tmp_path / "c.npy"), "npy_pathlike": tmp_path / "c.npy",
        "npy_fortran": str(tmp_path / "f.npy"), "npy_bigendian": str(tmp_path / "be.npy"),
        "safetensors_one": str(tmp_path / "one.safetensors"),
        "safetensors_key": f"{tmp_path / 'two.safetensors'}::a",
        "safetensors_pair": (str(tmp_path / "two.safetensors"), "a"),
        "h5_dataset": h5["g/x"], "h5_key": f"{tmp_path / 'd.h5'}::g/x",
    }


@pytest.mark.parametrize("n,shape", [(4, (3,)), (5, (1,)), (37, (2, 3)), (130, (7,)),
                                     (1, (5,))])
def test_every_kind_equals_memory(rng, tmp_path, n, shape):
    x = rng.standard_normal((n, *shape))
    want = torch.from_numpy(x.reshape(n, -1))
    for kind, v in kinds(tmp_path, x).items():
        src = S.open_rows(v, "xs")
        assert (src.n, src.d, src.dtype, src.name) == (n, want.shape[1], torch.float64, "xs"), kind
        for tile in (1, 3, 64, n):   # tiles of one row, awkward sizes, the whole file
            got = blocks(src, tile)
            assert got.shape == want.shape and torch.equal(got, want), (kind, tile)
        if n > 2:
            assert torch.equal(src.read(1, n - 1), want[1:n - 1]), kind


def test_file_reads_leave_no_map(rng, tmp_path):
    """.npy and .safetensors are read with positional reads: a read is its own buffer."""
    x = rng.standard_normal((50, 4)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    src = S.open_rows(str(tmp_path / "x.npy"), "xs")
    assert type(src).__name__ == "FileRows" and not src.in_memory
    r = src.read(10, 20)
    r.zero_()                              # a copy: the file is untouched
    assert torch.equal(src.read(10, 20), torch.from_numpy(x[10:20]))


def test_low_precision_dtypes(rng, tmp_path):
    x = torch.from_numpy(rng.standard_normal((9, 5)))
    layers = {"bf16": x.to(torch.bfloat16), "f16": x.to(torch.float16), "f32": x.float()}
    st.save_file(layers, str(tmp_path / "low.safetensors"))
    for src in S.open_layers(str(tmp_path / "low.safetensors"), "xs"):
        assert src.dtype == layers[src.name].dtype
        assert torch.equal(blocks(src, 4), layers[src.name])
    np.save(tmp_path / "h.npy", x.numpy().astype(np.float16))
    assert S.open_rows(str(tmp_path / "h.npy"), "xs").dtype == torch.float16


def test_layers_of_a_file_or_folder(rng, tmp_path):
    """A file or folder alone: every tensor / dataset / .npy, in natural order."""
    xs = {f"layer{i}": rng.standard_normal((6, i + 1)) for i in (10, 2, 1)}
    st.save_file({k: torch.from_numpy(v) for k, v in xs.items()}, str(tmp_path / "m.safetensors"))
    (tmp_path / "dir").mkdir()
    for k, v in xs.items():
        np.save(tmp_path / "dir" / f"{k}.npy", v)
    (tmp_path / "dir" / "notes.txt").write_text("not a layer")
    with h5py.File(tmp_path / "m.h5", "w") as f:
        for k, v in xs.items():
            f[k] = v
    for path in ("m.safetensors", "dir", "m.h5"):
        srcs = S.open_layers(str(tmp_path / path), "xs")
        assert [s.name for s in srcs] == ["layer1", "layer2", "layer10"], path
        for s in srcs:
            assert torch.equal(blocks(s, 4), torch.from_numpy(xs[s.name])), path
    loaded = S.load(str(tmp_path / "dir"), "xs")
    assert list(loaded) == ["layer1", "layer2", "layer10"]
    assert torch.equal(loaded["layer2"], torch.from_numpy(xs["layer2"]))


def test_load_keeps_structure(rng, tmp_path):
    x, y = rng.standard_normal((8, 3)), torch.randn(8, 2)
    np.save(tmp_path / "x.npy", x)
    assert S.load(y, "xs") is y
    seq = S.load([str(tmp_path / "x.npy"), y], "xs")
    assert torch.equal(seq[0], torch.from_numpy(x)) and seq[1] is y
    d = S.load({"b": y, "a": str(tmp_path / "x.npy")}, "xs")
    assert list(d) == ["b", "a"] and torch.equal(d["a"], torch.from_numpy(x))
    assert torch.equal(S.load(str(tmp_path / "x.npy"), "xs"), torch.from_numpy(x))


def test_sequence_and_mapping_names(rng):
    x = rng.standard_normal((5, 2))
    assert [s.name for s in S.open_layers([x, x], "ys")] == ["ys[0]", "ys[1]"]
    srcs = S.open_layers({"conv": x, 3: x}, "ys")
    assert [(s.name, s.arg) for s in srcs] == [("conv", "ys"), ("3", "ys")]


def test_mismatched_n_names_both_layers(rng, tmp_path):
    np.save(tmp_path / "short.npy", rng.standard_normal((6, 2)))
    with pytest.raises(ValueError, match=r"short has 6 samples but xs\[0\]|"
                                         r"short has 6 samples but first has 7"):
        S.open_layers({"first": rng.standard_normal((7, 2)),
                       "short": str(tmp_path / "short.npy")}, "xs")
    with pytest.raises(ValueError, match=r"xs\[1\] has 6 samples but xs\[0\] has 7"):
        S.open_layers([rng.standard_normal((7, 2)), rng.standard_normal((6, 2))], "xs")


@pytest.mark.parametrize("bad", ["int", "complex", "bool"])
def test_bad_dtype_names_the_layer(tmp_path, bad):
    a = {"int": np.arange(12).reshape(4, 3), "complex": np.ones((4, 3), np.complex64),
         "bool": np.ones((4, 3), bool)}[bad]
    np.save(tmp_path / "bad.npy", a)
    for v in (a, str(tmp_path / "bad.npy"), torch.from_numpy(a)):
        with pytest.raises(TypeError, match=r"conv2 has dtype .*floating-point"):
            S.open_layers({"ok": np.ones((4, 1)), "conv2": v}, "xs")
    st.save_file({"i": torch.ones(4, 2, dtype=torch.int32)}, str(tmp_path / "i.safetensors"))
    with pytest.raises(TypeError, match=r"has dtype I32; CKA needs real floating-point"):
        S.open_rows(str(tmp_path / "i.safetensors"), "xs")


@pytest.mark.parametrize("kind", ["npy", "safetensors", "h5", "memmap", "tensor"])
def test_nan_in_third_tile_names_the_layer(rng, tmp_path, kind):
    tile, n = 5, 23
    x = rng.standard_normal((n, 3)).astype(np.float32)
    x[2 * tile + 3, 1] = np.nan                     # third tile, row 13
    if kind == "npy":
        np.save(tmp_path / "x.npy", x)
        v = str(tmp_path / "x.npy")
    elif kind == "safetensors":
        st.save_file({"x": torch.from_numpy(x)}, str(tmp_path / "x.safetensors"))
        v = str(tmp_path / "x.safetensors")
    elif kind == "h5":
        with h5py.File(tmp_path / "x.h5", "w") as f:
            f["x"] = x
        v = f"{tmp_path / 'x.h5'}::x"
    elif kind == "memmap":
        np.save(tmp_path / "x.npy", x)
        v = np.load(tmp_path / "x.npy", mmap_mode="r")
    else:
        v = torch.from_numpy(x)
    src = S.open_layers({"ok": np.zeros((n, 1)), "blocks.7": v}, "xs")[1]
    src.read(0, tile)
    src.read(tile, 2 * tile)                         # the first two tiles are fine
    with pytest.raises(ValueError, match=r"blocks\.7 holds non-finite values: nan at row 13, "
                                         r"feature 1 \(xs, found reading rows 10\.\.15\)"):
        src.read(2 * tile, 3 * tile)
    x[2 * tile + 3, 1] = np.inf
    with pytest.raises(ValueError, match=r"xs\[0\] holds non-finite values: inf at row 13"):
        S.open_layers([torch.from_numpy(x)], "xs")[0].read(10, 15)


def test_file_errors(rng, tmp_path):
    st.save_file({"a": torch.ones(4, 2), "b": torch.ones(4, 2)}, str(tmp_path / "two.safetensors"))
    with pytest.raises(ValueError, match=r"holds 2 tensors .*'a', 'b'.*::KEY"):
        S.open_rows(str(tmp_path / "two.safetensors"), "xs")
    with pytest.raises(KeyError, match=r"no tensor 'c'"):
        S.open_rows(f"{tmp_path / 'two.safetensors'}::c", "xs")
    with pytest.raises(FileNotFoundError, match=r"xs: no such file"):
        S.open_rows(str(tmp_path / "missing.npy"), "xs")
    with pytest.raises(ValueError, match=r"not a \.npy, \.safetensors or \.h5"):
        S.open_rows(__file__, "xs")
    np.save(tmp_path / "t.npy", np.ones((100, 10)))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[:-80])
    with pytest.raises(ValueError, match=r"t\.npy is not a valid \.npy file"):
        S.open_rows(str(tmp_path / "t.npy"), "xs")
    st.save_file({"a": torch.ones(100, 10)}, str(tmp_path / "t.safetensors"))
    raw = (tmp_path / "t.safetensors").read_bytes()
    (tmp_path / "t.safetensors").write_bytes(raw[:-80])
    with pytest.raises(ValueError, match=r"t\.safetensors is truncated"):
        S.open_rows(str(tmp_path / "t.safetensors"), "xs")
    with pytest.raises(ValueError, match=r"empty"):
        S.open_rows(np.ones((0, 3)), "xs")
    with pytest.raises(ValueError, match=r"empty"):
        S.open_rows(torch.ones(3, 0), "xs")
    with pytest.raises(TypeError, match=r"xs must be a tensor, a NumPy array, a path"):
        S.open_rows(3, "xs")
    with pytest.raises(IndexError, match=r"rows 2\.\.9 outside 0\.\.4"):
        S.open_rows(torch.ones(4, 1), "xs").read(2, 9)


def test_missing_h5py_is_named(monkeypatch, tmp_path):
    with h5py.File(tmp_path / "x.h5", "w") as f:
        f["x"] = np.ones((4, 2))
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match=r"needs the h5py package \(pip install h5py\)"):
        S.open_rows(f"{tmp_path / 'x.h5'}::x", "xs")


def test_minibatch_reads_each_batch(rng, tmp_path):
    """MinibatchCKA.update with batches in .npy files and a .safetensors file equals the
    float64 reference's minibatch CKA."""
    batches = [[rng.standard_normal((n, d)) for d in (3, 6)] for n in (9, 14)]
    m = MinibatchCKA(2, 2)
    for b, (x0, x1) in enumerate(batches):
        np.save(tmp_path / f"x{b}.npy", x0)
        st.save_file({"l": torch.from_numpy(x1)}, str(tmp_path / f"y{b}.safetensors"))
        m.update([str(tmp_path / f"x{b}.npy"), x1], [f"{tmp_path / f'y{b}.safetensors'}::l",
                                                     torch.from_numpy(x0)])
    want = ref.minibatch_cka([[x0, x1] for x0, x1 in batches],
                             [[x1, x0] for x0, x1 in batches])
    np.testing.assert_allclose(m.compute().numpy(), want, rtol=1e-12, atol=0)


def _rss_file_kib() -> int:
    try:
        status = open("/proc/self/status").read()
    except OSError:
        pytest.skip("no /proc/self/status")
    line = [x for x in status.splitlines() if x.startswith("RssFile:")]
    if not line:
        pytest.skip("no RssFile in /proc/self/status")
    return int(line[0].split()[1])


def test_streaming_a_memmap_keeps_it_out_of_rss(tmp_path):
    """A read-only memmap streamed in tiles: its pages leave the process once copied
    (else RSS grows to the file's size); the rows are still right, views included."""
    n, d = 16384, 768                                     # 48 MiB
    mm = np.lib.format.open_memmap(tmp_path / "m.npy", mode="w+", dtype=np.float32,
                                   shape=(n, d))
    mm[:] = np.arange(n, dtype=np.float32)[:, None]
    mm.flush()
    del mm
    a = np.load(tmp_path / "m.npy", mmap_mode="r")
    before = _rss_file_kib()
    for v, first in ((a, 0), (a[5:], 5)):
        src = S.open_rows(v, "xs")
        for i in range(0, src.n, 1000):
            r = src.read(i, min(i + 1000, src.n))
            assert r[0, 0].item() == first + i and r[-1, -1].item() == first + i + len(r) - 1
    assert _rss_file_kib() - before < 8 * 1024


def test_load_takes_opened_sources(rng):
    x = rng.standard_normal((6, 2))
    src = S.open_rows(x, "other", "elsewhere")
    assert torch.equal(S.load({"k": src}, "xs")["k"], torch.from_numpy(x))
    assert torch.equal(S.load([src], "xs")[0], torch.from_numpy(x))


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_every_non_finite_value_is_found(rng, dtype, bad):
    x = torch.from_numpy(rng.standard_normal((7, 5))).to(dtype)
    for r, c in ((0, 0), (3, 2), (6, 4)):
        y = x.clone()
        y[r, c] = bad
        with pytest.raises(ValueError, match=rf"at row {r}, feature {c} "):
            S.open_rows(y, "xs").read(0, 7)
    assert torch.equal(S.open_rows(x, "xs").read(0, 7), x)
