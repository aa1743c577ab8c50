"""``Store``: a feature store opened for reading and comparing (see ``flashcka.extract``)."""
from __future__ import annotations

import hashlib
import sys
import time
from pathlib import Path

import torch

from ..measures.cka import cka_matrix
from ..measures.similarity import similarity_matrix
from ..result import CKAResult
from . import _io
from .cache import Cache
from .grams import KEEP_BYTES, GramRows, cka_block
from ..core.engine import Settings

DEFAULT_MAX_MEMORY = 4 << 30     # RSA and mutual kNN blocks
_SETTINGS = {"cka": ("kernel", "unbiased", "sigma", "threshold", "dtype"),
             "rsa": ("rsa_method", "dtype"), "mutual_knn": ("topk", "dtype")}
MEASURES = tuple(_SETTINGS)  # symmetric ones: one cache entry per pair (CKNNA is not)
_DEFAULTS = {"kernel": "linear", "unbiased": True, "sigma": None, "threshold": 1.0,
             "dtype": None, "rsa_method": "spearman", "topk": 10}


def read_manifest(root: Path) -> dict:
    path = root / _io.MANIFEST
    if not path.is_file():
        raise _io.StoreError(f"{root} is not a feature store (no {_io.MANIFEST}); write one "
                             f"with flashcka.extract or `flashcka extract`")
    m = _io.read_json(path, "manifest")
    if not isinstance(m, dict) or m.get("format") != _io.FORMAT:
        raise _io.StoreError(f"{path} is not a flashcka feature store manifest")
    if m.get("version") != _io.VERSION:
        raise _io.StoreError(f"{path}: store version {m.get('version')!r}; this flashcka "
                             f"reads {_io.VERSION}")
    if not isinstance(m.get("models"), dict):
        raise _io.StoreError(f"{path}: 'models' must be a dict")
    return m


def new_manifest(data) -> dict:
    return {"format": _io.FORMAT, "version": _io.VERSION, "data": data, "sample_ids": None,
            "models": {}}


def ids_sha256(ids) -> str:
    return hashlib.sha256(repr(list(ids)).encode()).hexdigest()


class Store:
    """A feature store, or several with the same samples opened as one zoo.

    ``Store(path, *more)``: every store's sample IDs must be equal (same samples, same
    order), else a ``StoreError`` names the first mismatch; model names must be unique
    across them. Similarity results are cached in the first store's ``cache/`` folder.

    ``.models``: model names in the order they were added; ``.sample_ids``; ``.layers(m)``;
    ``.features(m, layer)``: the (n, d) tensor, read when asked and checked against its
    recorded hashes; ``.similarity(...)``: every pair of ``"model/layer"``.
    """

    def __init__(self, path, *more):
        self.roots = [Path(p) for p in (path, *more)]
        self._entries: dict[str, tuple[Path, dict]] = {}
        self.sample_ids = None
        self.data = None
        for root in self.roots:
            m = read_manifest(root)
            ids = m.get("sample_ids")
            if ids is not None:
                if self.sample_ids is None:
                    self.sample_ids, first, self.data = ids, root, m.get("data")
                else:
                    _io.check_ids(ids, self.sample_ids, f"store {root}", f"store {first}")
            for name, entry in m["models"].items():
                if name in self._entries:
                    raise _io.StoreError(f"model {name!r} is in both {self._entries[name][0]} "
                                         f"and {root}; open stores with distinct model names")
                if entry.get("sample_ids_sha256") != ids_sha256(ids or []):
                    own = _io.read_json(root / "models" / name / "sample_ids.json",
                                        "sample ID file")
                    _io.check_ids(own, ids or [], f"model {name!r}", f"store {root}")
                self._entries[name] = (root, entry)
        self.last: dict = {}

    def __repr__(self) -> str:
        n = len(self.sample_ids or [])
        return (f"Store({', '.join(str(r) for r in self.roots)}: {len(self.models)} models, "
                f"{n} samples, {self.disk_bytes() / 2**20:.1f} MiB)")

    @property
    def models(self) -> list[str]:
        return list(self._entries)

    def entry(self, model: str) -> dict:
        if model not in self._entries:
            raise KeyError(f"no model {model!r} in the store; it has {self.models}")
        return self._entries[model][1]

    def layers(self, model: str) -> list[str]:
        return [d["name"] for d in self.entry(model)["layers"]]

    def disk_bytes(self) -> int:
        return sum(e.get("bytes", 0) for _, e in self._entries.values())

    def features(self, model: str, layer: str) -> torch.Tensor:
        """The (n, d) features of ``layer`` of ``model``, read from its shards now, each
        checked against its recorded hash (a corrupt file raises, naming it)."""
        entry = self.entry(model)
        if layer not in self.layers(model):
            raise KeyError(f"model {model!r} has no layer {layer!r}; it has "
                           f"{self.layers(model)}")
        root = self._entries[model][0]
        parts = [_io.read_tensor(root / "models" / model / s["file"], layer, s["sha256"][layer])
                 for s in entry["shards"]]
        x = parts[0] if len(parts) == 1 else torch.cat(parts)
        if x.shape[0] != entry["num_samples"]:
            raise _io.StoreError(f"model {model!r} layer {layer!r}: its shards hold "
                                 f"{x.shape[0]} samples, the manifest says "
                                 f"{entry['num_samples']}")
        return x

    def key(self, model: str, layer: str) -> str:
        """The cache key of a layer: its name and a hash of its features' hashes."""
        h = hashlib.sha256()
        for s in self.entry(model)["shards"]:
            h.update(s["sha256"][layer].encode())
        return f"{model}/{layer}@{h.hexdigest()[:16]}"

    def _select(self, models, layers) -> list[tuple[str, str]]:
        models = self.models if models is None else list(models)
        for m in models:
            self.entry(m)
        out = []
        for m in models:
            have = self.layers(m)
            want = layers.get(m, have) if isinstance(layers, dict) else have \
                if layers is None else [have[layers]] if isinstance(layers, int) \
                else list(layers)
            if isinstance(want, (str, int)):
                want = [have[want]] if isinstance(want, int) else [want]
            for lay in want:
                if lay not in have:
                    raise KeyError(f"model {m!r} has no layer {lay!r}; it has {have}")
                out.append((m, lay))
        if not out:
            raise ValueError("no layers selected: the store is empty or models=[]")
        return out

    def similarity(self, measure: str = "cka", models=None, layers=None, *,
                   max_memory: int | None = None, backend: str = "auto",
                   keep_grams: bool | None = None, progress=None,
                   **settings) -> CKAResult:
        """``measure`` between every pair of the chosen ``"model/layer"``s -> CKAResult
        (names ``"model/layer"``, both sides the same list).

        measure, settings: as ``flashcka.similarity_matrix`` — ``"cka"`` (``kernel``
        "linear" or "rbf", ``unbiased``, ``sigma``, ``threshold``), ``"rsa"``
        (``rsa_method``), ``"mutual_knn"`` (``topk``) — symmetric measures, one cache
        entry per pair; ``dtype`` for all (default: the features' dtype; pass
        ``torch.float64`` for float64 throughout). models: names (default all); layers:
        None (all), a list of layer names, an index into each model's layers (``-1``: the
        last), or ``{model: names}``.

        Full batch over all n samples. Pairs already in the cache for these settings and
        these very features are read from it; the others are computed in blocks of
        ``(rows, columns)`` — only the rows and columns that have a missing pair, so adding
        a model computes its pairs only — then written to the cache. CKA: each layer's
        centered Gram row is kept in the store (``flashcka.store.grams``) when the
        selected layers' rows fit ``keep_grams``' budget (None: 2 GiB and ``max_memory``;
        True: always; False: never), so an added model costs its own Grams and the row
        products of its pairs; otherwise one ``cka_matrix(rows, columns,
        max_memory=max_memory)`` call, which streams sample tiles (the tiled route) when
        the Grams would exceed ``max_memory`` (default: the memory available). RSA and
        mutual kNN: blocks of layers within ``max_memory`` (default 4 GiB) of per-layer
        n × n work (about 8·n² bytes a layer). The features
        of a block's layers are held in memory (n·d values each). ``self.last`` tells how
        many pairs were computed and read, and the seconds taken."""
        if measure not in MEASURES:
            raise ValueError(f"measure must be one of {tuple(_SETTINGS)}, got {measure!r}")
        unknown = sorted(set(settings) - set(_SETTINGS[measure]))
        if unknown:
            raise TypeError(f"similarity(measure={measure!r}) takes settings "
                            f"{list(_SETTINGS[measure])}, not {unknown}")
        if max_memory is not None and (isinstance(max_memory, bool) or not isinstance(
                max_memory, int) or max_memory < 1):
            raise ValueError(f"max_memory must be a positive int (bytes) or None, got "
                             f"{max_memory!r}")
        full = {k: settings.get(k, _DEFAULTS[k]) for k in _SETTINGS[measure]}
        key_settings = {"measure": measure, **{k: (str(v).replace("torch.", "")
                                                   if k == "dtype" and v is not None else v)
                                               for k, v in full.items()}}
        if measure == "cka":                   # checked before any cache lookup
            s = Settings(full["kernel"], full["unbiased"], full["sigma"], full["threshold"])
            s.check()
            full.update(unbiased=s.unbiased, sigma=s.sigma, threshold=s.threshold)
            key_settings.update(unbiased=s.unbiased, sigma=s.sigma, threshold=s.threshold)
        t0 = time.perf_counter()
        sel = self._select(models, layers)
        keys = [self.key(m, lay) for m, lay in sel]
        cache = Cache(self.roots[0], key_settings)
        L = len(sel)
        missing = {(i, j) for i in range(L) for j in range(i, L)
                   if cache.get(keys[i], keys[j]) is None}
        computed = len(missing)
        n = len(self.sample_ids or [])
        budget = DEFAULT_MAX_MEMORY if max_memory is None else max_memory
        chunk = 2 * L if measure == "cka" else max(2, budget // (8 * n * n + 1))
        rows = _cover(missing, L)
        grams = None
        if measure == "cka" and missing and keep_grams is not False:
            grams = self._grams(full, backend, n, L, max_memory, keep_grams)
        feats: dict[int, torch.Tensor] = {}
        blocks = []
        for r0 in range(0, len(rows), max(1, chunk // 2)):
            rb = rows[r0:r0 + max(1, chunk // 2)]
            cols = sorted({j for (a, b) in missing for j in (a, b)
                           if (a in rb or b in rb)})
            step = max(1, chunk - len(rb))
            for c0 in range(0, len(cols), step):
                blocks.append((rb, cols[c0:c0 + step]))
        from tqdm.auto import tqdm
        if progress is None:
            progress = sys.stderr is not None and sys.stderr.isatty()
        for rb, cb in tqdm(blocks, disable=not progress or not blocks, unit="block",
                           desc=f"flashcka zoo {measure}", leave=False):
            need = {(a, b) for a in rb for b in cb if (min(a, b), max(a, b)) in missing}
            if not need:
                continue
            rb = sorted({a for a, _ in need})
            cb = sorted({b for _, b in need})
            for i in set(rb) | set(cb):
                if i not in feats and grams is None:
                    feats[i] = self.features(*sel[i])
            xs = {f"{sel[i][0]}/{sel[i][1]}": feats.get(i) for i in rb}
            ys = None if rb == cb else {f"{sel[i][0]}/{sel[i][1]}": feats.get(i) for i in cb}
            if grams is not None:
                block, rb, cb = cka_block(grams, sel, keys, rb, cb)
            elif measure == "cka":
                block = cka_matrix(xs, ys, backend=backend, max_memory=max_memory,
                                   progress=progress, **full)
            else:
                block = similarity_matrix(xs, ys, measure=measure, backend=backend,
                                          max_bytes=budget, **full)
            for a, i in enumerate(rb):
                for b, j in enumerate(cb):
                    p = (min(i, j), max(i, j))
                    if p in missing:
                        cache.put(keys[i], keys[j], float(block[a, b]))
                        missing.discard(p)
            for i in list(feats):                 # keep what later blocks still need
                if not any(i in p for p in missing):
                    del feats[i]
        cache.save()
        mat = torch.empty(L, L, dtype=torch.float64)
        for i in range(L):
            for j in range(i, L):
                mat[i, j] = mat[j, i] = cache.get(keys[i], keys[j])
        names = [f"{m}/{lay}" for m, lay in sel]
        self.last = {"computed_pairs": computed, "cached_pairs": L * (L + 1) // 2 - computed,
                     "seconds": time.perf_counter() - t0}
        info = {"measure": measure, **key_settings, "model_a": "zoo", "model_b": "zoo",
                "same_model": True, "data": self.data, "store": str(self.roots[0])}
        return CKAResult(mat, names, names, info, num_samples=n, num_batches=1)

    def _grams(self, full, backend, n, L, max_memory, keep):
        """The kept Gram rows for these CKA settings, or None when they are not kept."""
        s = Settings(full["kernel"], full["unbiased"], full["sigma"], full["threshold"])
        s.check()
        wide = any(self.entry(m)["fingerprint"]["dtype"] == "float64" for m in self.models)
        ct = full["dtype"] or (torch.float64 if wide else torch.float32)
        g = GramRows(self, self.roots[0], s, ct, backend, n)
        budget = KEEP_BYTES if max_memory is None else min(KEEP_BYTES, max_memory)
        return g if keep or g.bytes(L) <= budget else None

    def model_matrix(self, measure: str = "cka", layer=-1, models=None, **kw) -> CKAResult:
        """Model × model similarity at one layer per model (``layer``: an index into each
        model's layers, default the last, or ``{model: name}``); names are the models."""
        r = self.similarity(measure, models, layers={m: [self.layers(m)[layer]]
                                                     if isinstance(layer, int) else
                                                     [layer[m]] for m in
                                                     (models or self.models)}, **kw)
        names = [n.split("/", 1)[0] for n in r.names_a]
        return CKAResult(r.matrix, names, names, r.settings, num_samples=r.num_samples,
                         num_batches=1)


def _cover(missing, L) -> list[int]:
    """Rows whose blocks hold every missing pair: greedily the layer with the most
    missing pairs first (a new model's layers when one was added)."""
    if len(missing) == L * (L + 1) // 2:
        return list(range(L))                      # nothing cached: one symmetric block
    left = set(missing)
    rows = []
    while left:
        count: dict[int, int] = {}
        for a, b in left:
            count[a] = count.get(a, 0) + 1
            if b != a:
                count[b] = count.get(b, 0) + 1
        best = max(sorted(count), key=lambda i: count[i])
        rows.append(best)
        left = {p for p in left if best not in p}
    return sorted(rows)
