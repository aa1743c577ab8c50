"""Centered Gram rows of a store's layers, kept on disk so that CKA against a new model
costs that model's Grams and the pair products only.

For CKA on the Gram route the per-layer work is the centered Gram (about n²·d flops a
layer, docs/design.md §2) and each pair costs one row product (n² flops). Keeping each
layer's row (``core.engine.Rows``: the packed centered Gram of its features, scaled by a
power of two, with ‖X_c‖², ‖X‖² and the scale) in ``cache/grams/<settings>/`` means a model
added later computes its own Grams and reads the others'. A row file is keyed by the
layer's feature key (``Store.key``: name and content hash), the kernel settings, the
compute dtype, the backend (its row layout) and n; it carries a CRC-32 of its values and
is recomputed, with a warning, when it does not match. (CRC-32 catches every single-bit
change and burst, and other damage but for odds of 2⁻³², at half the cost of sha256,
which here costs about a quarter of the Gram itself at d ≈ 350.) The rows take
``n(n−1)/2`` values a layer (n = 2,000: 8 MB in float32), so they are kept only while the
selected layers' rows fit ``KEEP_BYTES`` (``Store.similarity(keep_grams=...)``);
otherwise ``Store.similarity`` uses ``cka_matrix`` (feature, Gram or tiled route).
"""
from __future__ import annotations

import hashlib
import json
import warnings
import zlib
from pathlib import Path

import torch

from .. import backends
from .._warning import FlashCKAWarning
from ..core import engine as _engine, validate as _validate
from ..core.engine import Settings
from ..measures.cka import _constant
from . import _io

KEEP_BYTES = 2 << 30


class GramRows:
    """The centered Gram rows of store layers for one set of CKA settings."""

    def __init__(self, store, root: Path, settings: Settings, ct, backend: str, n: int):
        self.store, self.s, self.ct, self.n = store, settings, ct, n
        self.be = backends.select(backend, torch.empty(0, dtype=ct))
        self.m = self.be.row_length(n, settings.unbiased)
        tag = json.dumps([settings.kernel, settings.unbiased, settings.sigma,
                          settings.threshold, str(ct), self.be.name, n])
        self.dir = Path(root) / "cache" / "grams" / hashlib.sha256(tag.encode()).hexdigest()[:20]

    def bytes(self, count: int) -> int:
        return count * self.m * self.ct.itemsize

    def _path(self, key: str) -> Path:
        return self.dir / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.safetensors"

    def rows(self, layers: list[tuple[str, str]], keys: list[str]):
        """Rows of ``layers`` ((model, layer) pairs) in one (L, m) buffer: the kept ones
        read straight into it (one copy from the page cache), the others computed into its
        tail (all in one ``gram_rows`` call) and written. Returns (Rows, order): row j of
        the buffer is layer ``order[j]`` (an index into ``layers``)."""
        L = len(keys)
        g = torch.empty(L, self.m, dtype=self.ct)
        stats = torch.ones(L, 3, dtype=torch.float64)
        order = []
        for i, k in enumerate(keys):
            j = len(order)
            if self._read(k, g[j], stats[j]):
                order.append(i)
        todo = [i for i in range(L) if i not in set(order)]
        if todo:
            k0 = len(order)
            names = [f"{layers[i][0]}/{layers[i][1]}" for i in todo]
            xs, names = _validate.representations(
                {nm: self.store.features(*layers[i]) for nm, i in zip(names, todo)}, "store")
            for x, nm in zip(xs, names):
                _validate.representation(x, nm)
            r = _engine.gram_rows(self.be, xs, names, self.n, self.ct, self.s, out=g[k0:])
            stats[k0:, 0], stats[k0:, 1] = r.sq_c, r.sq
            if r.scale is not None:
                stats[k0:, 2] = r.scale
            for j, i in enumerate(todo, k0):
                self._write(keys[i], g[j], stats[j])
            order += todo
        return _engine.Rows(g, stats[:, 0], stats[:, 1], stats[:, 2]), order

    def _read(self, key: str, out: torch.Tensor, stats: torch.Tensor) -> bool:
        """Read the kept row of ``key`` into ``out`` (m,) and ``stats`` (3,); False when
        there is none, or (with a warning) when it is damaged."""
        path = self._path(key)
        if not path.is_file():
            return False
        try:
            with open(path, "rb") as f:
                head = json.loads(f.read(int.from_bytes(f.read(8), "little")))
                base = f.tell()
                for name, t in (("g", out), ("stats", stats)):
                    info = head[name]
                    lo, hi = info["data_offsets"]
                    if hi - lo != t.numel() * t.element_size() or \
                            info["dtype"] != _ST_DTYPES[t.dtype]:
                        raise ValueError(f"{name}: {info}")
                    f.seek(base + lo)
                    if f.readinto(memoryview(t.numpy()).cast("B")) != hi - lo:
                        raise ValueError(f"{name}: short read")
            ok = _digest(out, stats) == head.get("__metadata__", {}).get("crc32")
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
            ok = False
        if not ok:
            warnings.warn(f"Gram cache file {path} is damaged; recomputing it",
                          FlashCKAWarning, stacklevel=3)
        return ok

    def _write(self, key: str, g: torch.Tensor, stats: torch.Tensor) -> None:
        st = _io.safetensors_torch()
        data = st.save({"g": g.contiguous(), "stats": stats.contiguous()},
                       metadata={"crc32": _digest(g, stats), "key": key})
        _io.atomic_write(self._path(key), data, sync=False)


_ST_DTYPES = {torch.float32: "F32", torch.float64: "F64"}


def _digest(g, stats) -> str:
    crc = 0
    for t in (g, stats):
        crc = zlib.crc32(t.contiguous().reshape(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


def cka_block(grams: GramRows, layers, keys, rows: list[int], cols: list[int]):
    """CKA of layers ``rows`` × ``cols`` (indices into ``layers``/``keys``) from the kept
    Gram rows: the Gram route of ``cka_matrix`` (same pair stage, same zero-variance and
    scale handling), every row read or computed once. Returns (matrix, rows, cols) with
    the rows and columns in the order of the matrix."""
    union = list(dict.fromkeys(cols + rows))
    r, order = grams.rows([layers[i] for i in union], [keys[i] for i in union])
    order = [union[j] for j in order]              # buffer row -> layer index

    def side(want):
        if set(want) == set(order):
            return r, order                          # the whole buffer: no copy
        idx = [j for j, i in enumerate(order) if i in set(want)]
        sel = torch.tensor(idx)
        return (_engine.Rows(r.g[sel], r.sq_c[sel], r.sq[sel], r.scale[sel]),
                [order[j] for j in idx])
    same = set(rows) == set(cols)        # one set of layers: the symmetric pair stage
    rb, cols = side(cols)
    ra, rows = (rb, cols) if same else side(rows)
    na = [f"{layers[i][0]}/{layers[i][1]}" for i in rows]
    nb = na if same else [f"{layers[i][0]}/{layers[i][1]}" for i in cols]
    const_a = _constant(ra, _Lazy(grams.store, [layers[i] for i in rows]), na, grams.ct)
    const_b = const_a if same else _constant(
        rb, _Lazy(grams.store, [layers[i] for i in cols]), nb, grams.ct)
    h = _engine.hsic_from_rows(grams.be, ra, rb, same, grams.n, grams.s.unbiased, na, nb)
    return _engine.cka_from_hsic(h.cross, h.self_a, h.self_b, const_a, const_b, na,
                                 nb), rows, cols


class _Lazy:
    """Features read only when asked (the zero-variance check looks at flagged layers)."""

    def __init__(self, store, layers):
        self.store, self.layers = store, layers

    def __getitem__(self, i):
        return self.store.features(*self.layers[i])
