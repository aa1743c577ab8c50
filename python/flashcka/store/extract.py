"""Writing a feature store: one forward per model over a dataset, the chosen layers'
features pooled by ``tokens`` and written as safetensors shards.

Layout of a store folder::

    manifest.json                    sample IDs, data, and one entry per finished model
    models/<name>/shard-00000.safetensors  features of samples [start, stop), one tensor
                                     per layer (n_shard, d) in the dtype asked for
    models/<name>/progress.json      while a model is being extracted: the shards done
    cache/                           similarity results (see ``flashcka.store.cache``)

A model is written shard by shard; each shard and then ``progress.json`` are written
atomically. Started again with the same arguments, extraction skips the models in the
manifest and, for a model in progress, the batches whose samples are all in written shards
(no forward pass on them), and writes the same bytes as an uninterrupted run.
"""
from __future__ import annotations

import sys
import time
import warnings
from pathlib import Path

import torch
from torch import nn

from .._version import __version__
from .._warning import FlashCKAWarning
from ..models.batches import batch_mask, batch_size, forward, to_device
from ..models.hooks import TOKEN_MODES, Tokens, input_tensor, output_tensor
from ..models.selection import select_points
from . import _io

SHARD_BYTES = 256 << 20
DTYPES = {"float32": torch.float32, "float64": torch.float64, "float16": torch.float16,
          "bfloat16": torch.bfloat16}


def check_name(name) -> str:
    if not isinstance(name, str) or not name or "/" in name or "\\" in name \
            or name.startswith(".") or name != name.strip():
        raise ValueError(f"model names must be non-empty strings without '/' or '\\' that "
                         f"do not start with '.', got {name!r} (results name layers "
                         f"'model/layer')")
    return name


class FeatureRecorder:
    """Hooks ``points``; while active each hooked tensor becomes (n, d) features (pooled by
    ``tokens``, in ``dtype``, on the CPU). The first batch fixes the layers: (point, call)
    in the order they fire, named ``label`` or ``label#k`` for the k-th call; points from
    patterns whose tensor cannot be used are dropped there with a warning, exact names
    raise. Every later batch must give the same layers and widths."""

    def __init__(self, model: nn.Module, points, tokens: Tokens, dtype, name: str):
        self.points, self.tokens, self.dtype, self.name = points, tokens, dtype, name
        self.active, self.labels, self.dims = False, None, {}
        self.dropped: set[str] = set()
        self.handles = []
        modules = dict(model.named_modules())
        for p in points:
            mod = modules[p.module]
            if p.kind == "input":
                self.handles.append(mod.register_forward_pre_hook(
                    lambda m, a, k, p=p: self._record(p, None, (a, k)), with_kwargs=True))
            else:
                self.handles.append(mod.register_forward_hook(
                    lambda m, i, o, p=p: self._record(p, o, None)))

    def remove(self):
        for h in self.handles:
            h.remove()
        self.handles = []

    def start(self, n: int, mask) -> None:
        self.n, self.mask, self.calls, self.out = n, mask, {}, {}
        self.active = True

    def _record(self, p, output, call) -> None:
        if not self.active or p.label in self.dropped:
            return
        k = self.calls.get(p.label, 0)
        self.calls[p.label] = k + 1
        label = f"{p.label}#{k}" if k else p.label
        where = f"{self.name}: layer {label}"
        try:
            x = output_tensor(output, label) if call is None else input_tensor(*call, label)
            if x.dim() == 0 or x.shape[0] != self.n or not x.is_floating_point():
                raise ValueError(f"{where} gave a tensor of shape {tuple(x.shape)} and dtype "
                                 f"{x.dtype}; hook layers with floating features and the "
                                 f"batch ({self.n} samples) in dimension 0")
        except (TypeError, ValueError) as e:
            if self.labels is not None or p.exact:
                raise
            self.dropped.add(p.label)
            warnings.warn(f"{self.name}: {p.label} dropped: {e}", FlashCKAWarning, stacklevel=2)
            return
        f = self.tokens(x.detach(), self.mask, label)
        if f.dim() == 0 or f.shape[0] != self.n:
            raise ValueError(f"{where}: tokens gave shape {tuple(f.shape)}, not {self.n} "
                             f"samples in dimension 0")
        self.out[label] = f.reshape(self.n, -1).to("cpu", self.dtype)

    def finish(self, b: int) -> dict:
        self.active = False
        out, self.out = self.out, {}
        if self.labels is None:
            if not out:
                raise ValueError(f"{self.name}: no hooked layer gave features on batch {b}; "
                                 f"check the layers (a hook that never fired?)")
            self.labels = list(out)
            self.dims = {k: int(v.shape[1]) for k, v in out.items()}
        got = [k for k in out]
        if got != self.labels:
            raise ValueError(f"{self.name}: batch {b} gave layers {got}, the first batch "
                             f"{self.labels}; the same modules must run on every batch")
        for k, v in out.items():
            if v.shape[1] != self.dims[k]:
                raise ValueError(f"{self.name}: layer {k} has {v.shape[1]} features on batch "
                                 f"{b} but {self.dims[k]} on the first (pool tokens of "
                                 f"varying length with tokens='mean' or 'cls')")
        return out


def _check_tokens(tokens):
    if not (callable(tokens) or (isinstance(tokens, str) and tokens in TOKEN_MODES)):
        raise ValueError(f"tokens must be one of {TOKEN_MODES} or a callable, got {tokens!r}")
    return Tokens(tokens)


def dtype_arg(dtype) -> torch.dtype:
    if isinstance(dtype, str) and dtype in DTYPES:
        return DTYPES[dtype]
    if dtype in DTYPES.values():
        return dtype
    raise ValueError(f"dtype must be one of {sorted(DTYPES)}, got {dtype!r}")


def _ids_of(batch, sample_ids, start: int, n: int, b: int) -> list:
    if sample_ids is None:
        return list(range(start, start + n))
    if isinstance(sample_ids, str):
        if not isinstance(batch, dict) or sample_ids not in batch:
            raise ValueError(f"sample_ids={sample_ids!r}: batch {b} has no such key")
        col = batch[sample_ids]
        vals = col.tolist() if isinstance(col, torch.Tensor) else list(col)
        if len(vals) != n:
            raise ValueError(f"sample_ids={sample_ids!r}: batch {b} has {len(vals)} IDs for "
                             f"{n} samples")
        return [_id(v) for v in vals]
    if start + n > len(sample_ids):
        raise ValueError(f"sample_ids has {len(sample_ids)} IDs but the loader gave more "
                         f"samples (batch {b} ends at {start + n})")
    return [_id(v) for v in sample_ids[start:start + n]]


def _id(v):
    """A sample ID as the manifest keeps it: an int (NumPy/torch integers too) or a str."""
    if isinstance(v, bool) or not isinstance(v, int) and not hasattr(v, "__index__"):
        return str(v)
    return int(v.__index__())


def extract_model(root, name: str, model: nn.Module, loader, *, layers=None,
                  tokens="mean", mask=None, inputs=None, dtype=torch.float32, device=None,
                  sample_ids=None, store_ids=None, shard_size: int | None = None,
                  progress=None, info: dict | None = None) -> dict:
    """Extract one model into the store at ``root``; returns its manifest entry (not yet
    in the manifest: the caller adds it). ``store_ids``: the store's sample IDs, checked
    shard by shard (None for the first model). See ``flashcka.extract``."""
    from tqdm.auto import tqdm
    root, name = Path(root), check_name(name)
    tok, dtype = _check_tokens(tokens), dtype_arg(dtype)
    if shard_size is not None and (isinstance(shard_size, bool) or not isinstance(
            shard_size, int) or shard_size < 1):
        raise ValueError(f"shard_size must be a positive int or None, got {shard_size!r}")
    folder = root / "models" / name
    info = dict(info or {})
    fingerprint = model_fingerprint(model, layers, tok, dtype, mask, sample_ids, info)
    state = {"fingerprint": fingerprint, "shard_size": shard_size, "shards": [],
             "layers": None, "sample_ids": []}
    ppath = folder / "progress.json"
    if ppath.exists():
        old = _io.read_json(ppath, "progress file")
        diff = sorted(k for k in set(old.get("fingerprint", {})) | set(fingerprint)
                      if old.get("fingerprint", {}).get(k) != fingerprint.get(k))
        if diff:
            raise _io.StoreError(f"{ppath} is an unfinished extraction of {name!r} with other "
                                 f"arguments ({', '.join(diff)} differ); delete {folder} to "
                                 f"start it over, or use another name")
        state = old
        for s in state["shards"]:          # a listed shard that is gone: start over
            if not (folder / s["file"]).is_file():
                raise _io.StoreError(f"{ppath} lists {s['file']}, which is missing; delete "
                                     f"{folder} to extract {name!r} again")
    done = sum(s["stop"] - s["start"] for s in state["shards"])
    if store_ids is not None:
        _io.check_ids(state["sample_ids"], store_ids[:len(state["sample_ids"])],
                      f"model {name!r}", "the store")
    if done:
        print(f"flashcka extract: {name}: resuming after {done} samples "
              f"({len(state['shards'])} shards written)", file=sys.stderr)
    points = select_points(getattr(model, "_orig_mod", model), layers, f"layers[{name!r}]")
    model = getattr(model, "_orig_mod", model)
    rec = FeatureRecorder(model, points, tok, dtype, name)
    if state["layers"] is not None:
        rec.labels = [d["name"] for d in state["layers"]]
        rec.dims = {d["name"]: d["dim"] for d in state["layers"]}
    modes = {m: m.training for m in model.modules()}
    total = len(loader) if hasattr(loader, "__len__") else None
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()
    t0 = time.perf_counter()
    buf: dict = {}
    buf_ids: list = []
    pos = 0
    try:
        model.eval()
        bar = tqdm(loader, total=total, disable=not progress, unit="batch",
                   desc=f"flashcka extract {name}", leave=False)
        with torch.no_grad():
            for b, batch in enumerate(bar):
                n = batch_size(batch, b)
                if pos + n <= done:
                    pos += n
                    continue
                if device is not None:
                    batch = to_device(batch, device)
                rec.start(n, batch_mask(batch, mask, n, b))
                try:
                    forward(model, batch, inputs, b, name)
                finally:
                    rec.active = False
                feats = rec.finish(b)
                if state["layers"] is None:
                    state["layers"] = [{"name": k, "dim": rec.dims[k]} for k in rec.labels]
                skip = max(0, done - pos)
                for k, v in feats.items():
                    buf.setdefault(k, []).append(v[skip:])
                buf_ids += _ids_of(batch, sample_ids, pos, n, b)[skip:]
                pos += n
                if state["shard_size"] is None:
                    per = sum(d["dim"] for d in state["layers"]) * dtype.itemsize
                    state["shard_size"] = max(1, SHARD_BYTES // max(per, 1))
                while len(buf_ids) >= state["shard_size"]:
                    buf, buf_ids = _flush(folder, state, buf, buf_ids, store_ids, name,
                                          state["shard_size"])
        if buf_ids:
            _flush(folder, state, buf, buf_ids, store_ids, name, len(buf_ids))
    finally:
        rec.remove()
        for m, flag in modes.items():
            m.training = flag
    if not state["shards"]:
        raise ValueError(f"{name}: the loader gave no samples")
    n_total = state["shards"][-1]["stop"]
    if store_ids is not None:
        _io.check_ids(state["sample_ids"], store_ids, f"model {name!r}", "the store")
    entry = {"fingerprint": fingerprint, "layers": state["layers"], "shards": state["shards"],
             "num_samples": n_total, "flashcka_version": __version__,
             "bytes": sum((folder / s["file"]).stat().st_size for s in state["shards"]),
             **{k: v for k, v in info.items() if k not in fingerprint}}
    entry["sample_ids"] = state["sample_ids"]
    entry["seconds"] = time.perf_counter() - t0     # not written: the manifest has no times
    return entry


def model_fingerprint(model, layers, tok, dtype, mask, sample_ids, info) -> dict:
    """What a model's extraction must agree on to be resumed or skipped as done."""
    return {"layers": _spec(layers), "tokens": tok.mode if isinstance(tok.mode, str)
            else "callable", "dtype": str(dtype).replace("torch.", ""), "mask": _spec(mask),
            "sample_ids": _spec(sample_ids) if isinstance(sample_ids, (str, type(None)))
            else "list", "class": type(getattr(model, "_orig_mod", model)).__name__,
            "weights_sha256": info.get("weights_sha256") or _io.state_sha256(model),
            **{k: info[k] for k in ("spec", "data", "preprocess") if k in info}}


def _flush(folder, state, buf, buf_ids, store_ids, name, size):
    """Write the first ``size`` buffered samples as the next shard, then progress.json."""
    cat = {k: torch.cat(v) if len(v) > 1 else v[0] for k, v in buf.items()}
    start = state["shards"][-1]["stop"] if state["shards"] else 0
    ids = buf_ids[:size]
    if store_ids is not None:
        _io.check_ids(ids, store_ids[start:start + size], f"model {name!r} (samples "
                      f"{start}..{start + size - 1})", "the store")
    k = len(state["shards"])
    tensors = {lab: cat[lab][:size].contiguous() for lab in cat}
    fname = f"shard-{k:05d}.safetensors"
    _io.write_shard(folder / fname, tensors)
    state["shards"].append({"file": fname, "start": start, "stop": start + size,
                            "sha256": {lab: _io.tensor_sha256(t) for lab, t in tensors.items()}})
    state["sample_ids"] = state["sample_ids"] + ids
    _io.write_json(folder / "progress.json", state)
    return {lab: [t[size:]] for lab, t in cat.items()}, buf_ids[size:]


def _spec(x):
    if isinstance(x, (list, tuple)):
        return [_spec(v) for v in x]
    if isinstance(x, dict):
        return {str(k): _spec(v) for k, v in x.items()}
    if isinstance(x, type):
        return x.__name__
    if x is None or isinstance(x, (str, int, float, bool)):
        return x
    return "callable" if callable(x) else repr(x)
