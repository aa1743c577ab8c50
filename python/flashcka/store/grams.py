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

    def rows(self, layers: list[tuple[str, str]], keys: list[str]) -> _engine.Rows:
        """Rows of ``layers`` ((model, layer) pairs), read from disk or computed (all the
        missing ones in one call) and written."""
        got: dict[int, tuple] = {}
        for i, k in enumerate(keys):
            r = self._read(k)
            if r is not None:
                got[i] = r
        todo = [i for i in range(len(keys)) if i not in got]
        if todo:
            names = [f"{layers[i][0]}/{layers[i][1]}" for i in todo]
            xs, names = _validate.representations(
                {nm: self.store.features(*layers[i]) for nm, i in zip(names, todo)}, "store")
            for x, nm in zip(xs, names):
                _validate.representation(x, nm)
            r = _engine.gram_rows(self.be, xs, names, self.n, self.ct, self.s)
            scale = r.scale if r.scale is not None else torch.ones_like(r.sq_c)
            for j, i in enumerate(todo):
                one = (r.g[j], r.sq_c[j], r.sq[j], scale[j])
                self._write(keys[i], one)
                got[i] = one
        g = torch.stack([got[i][0] for i in range(len(keys))])
        return _engine.Rows(g, *(torch.stack([got[i][k] for i in range(len(keys))])
                                 for k in (1, 2, 3)))

    def _read(self, key: str):
        path = self._path(key)
        if not path.is_file():
            return None
        st = _io.safetensors_torch()
        try:
            d = st.load_file(str(path))
            ok = _digest(d["g"], d["stats"]) == _meta(path).get("crc32") \
                and d["g"].shape == (self.m,) and d["g"].dtype == self.ct
        except Exception:  # noqa: BLE001 - a damaged cache file is recomputed
            ok = False
        if not ok:
            warnings.warn(f"Gram cache file {path} is damaged; recomputing it",
                          FlashCKAWarning, stacklevel=3)
            return None
        return d["g"], d["stats"][0], d["stats"][1], d["stats"][2]

    def _write(self, key: str, one) -> None:
        st = _io.safetensors_torch()
        g = one[0].contiguous()
        stats = torch.stack([one[1], one[2], one[3]]).to(torch.float64)
        data = st.save({"g": g, "stats": stats}, metadata={"crc32": _digest(g, stats),
                                                           "key": key})
        _io.atomic_write(self._path(key), data)


def _digest(g, stats) -> str:
    crc = 0
    for t in (g, stats):
        crc = zlib.crc32(t.contiguous().reshape(-1).view(torch.uint8).numpy(), crc)
    return f"{crc:08x}"


def _meta(path: Path) -> dict:
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        return f.metadata() or {}


def cka_block(grams: GramRows, layers, keys, rows: list[int], cols: list[int]) -> torch.Tensor:
    """CKA of layers ``rows`` × ``cols`` (indices into ``layers``/``keys``) from the kept
    Gram rows: the Gram route of ``cka_matrix`` (same pair stage, same zero-variance and
    scale handling), every row read or computed once."""
    union = sorted(set(rows) | set(cols))
    at = {i: j for j, i in enumerate(union)}
    r = grams.rows([layers[i] for i in union], [keys[i] for i in union])

    def pick(idx):
        sel = torch.tensor([at[i] for i in idx])
        return _engine.Rows(r.g[sel], r.sq_c[sel], r.sq[sel], r.scale[sel])
    same = rows == cols                   # one set of layers: the symmetric pair stage
    ra = pick(rows) if not same or len(union) != len(rows) else r
    rb = ra if same else pick(cols)
    na = [f"{layers[i][0]}/{layers[i][1]}" for i in rows]
    nb = na if same else [f"{layers[i][0]}/{layers[i][1]}" for i in cols]
    const_a = _constant(ra, _Lazy(grams.store, [layers[i] for i in rows]), na, grams.ct)
    const_b = const_a if same else _constant(
        rb, _Lazy(grams.store, [layers[i] for i in cols]), nb, grams.ct)
    h = _engine.hsic_from_rows(grams.be, ra, rb, same, grams.n, grams.s.unbiased, na, nb)
    return _engine.cka_from_hsic(h.cross, h.self_a, h.self_b, const_a, const_b, na, nb)


class _Lazy:
    """Features read only when asked (the zero-variance check looks at flagged layers)."""

    def __init__(self, store, layers):
        self.store, self.layers = store, layers

    def __getitem__(self, i):
        return self.store.features(*self.layers[i])
