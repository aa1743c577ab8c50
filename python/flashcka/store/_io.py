"""Files of a feature store: atomic writes, hashes, the manifest, safetensors shards.

Every file is written to a temporary name in the same folder, flushed, fsynced and moved
into place with ``os.replace`` (as ``models/run.py`` writes checkpoints): a run stopped at
any point leaves either the old file or the new one, never half of one. Contents are
deterministic (keys in the order they were added, no times), so a resumed run writes the
same bytes.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch

FORMAT = "flashcka.store"
VERSION = 1
MANIFEST = "manifest.json"


class StoreError(ValueError):
    """A store that cannot be used as asked: corrupt files, mismatched sample IDs."""


def safetensors_torch():
    """``safetensors.torch``, or an ImportError saying how to install it."""
    try:
        import safetensors.torch as st
    except ImportError:
        raise ImportError("the feature store writes safetensors files: pip install "
                          "'flashcka[store]' (or pip install safetensors)") from None
    return st


def atomic_write(path: Path, data: bytes, sync: bool = True) -> None:
    """``sync=False`` for caches: no fsync (a file lost to a power cut fails its checksum
    and is recomputed), still never half-written under its name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json(path: Path, obj) -> None:
    atomic_write(path, (json.dumps(obj, indent=1) + "\n").encode())


def read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise StoreError(f"{what} {path} cannot be read ({e}); it is corrupt or was "
                         f"edited") from None


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 of a tensor's bytes (C order), its dtype and shape."""
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().contiguous().cpu().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def state_sha256(model: torch.nn.Module) -> str:
    """sha256 of a module's state dict (names, dtypes, shapes, values), in order."""
    h = hashlib.sha256()
    for k, v in model.state_dict().items():
        h.update(k.encode())
        h.update(tensor_sha256(v).encode())
    return h.hexdigest()


def write_shard(path: Path, tensors: dict) -> None:
    """One safetensors file (``tensors``: name -> contiguous CPU tensor), atomically."""
    st = safetensors_torch()
    atomic_write(path, st.save({k: v.contiguous() for k, v in tensors.items()}))


def read_tensor(path: Path, key: str, sha256: str) -> torch.Tensor:
    """Tensor ``key`` of shard ``path``, checked against its recorded hash: a truncated,
    edited or unreadable shard raises a StoreError naming the file, never a wrong value."""
    safetensors_torch()
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            t = f.get_tensor(key)
    except Exception as e:  # noqa: BLE001 - SafetensorError, OSError, a missing key
        raise StoreError(f"shard {path} cannot be read ({type(e).__name__}: {e}); the file "
                         f"is corrupt or missing: extract this model again") from None
    if tensor_sha256(t) != sha256:
        raise StoreError(f"shard {path}: layer {key!r} does not match its recorded hash; the "
                         f"file is corrupt: extract this model again")
    return t


def check_ids(ids, ref, what: str, ref_what: str) -> None:
    """Raise naming the first position where sample IDs ``ids`` and ``ref`` differ."""
    if list(ids) == list(ref):
        return
    for i, (a, b) in enumerate(zip(ids, ref)):
        if a != b:
            raise StoreError(f"sample IDs differ: {what} has {a!r} at position {i} where "
                             f"{ref_what} has {b!r}; the samples must be the same, in the same "
                             f"order (nothing is reordered)")
    raise StoreError(f"sample IDs differ: {what} has {len(ids)} samples, {ref_what} "
                     f"{len(ref)} (the first {min(len(ids), len(ref))} agree)")
