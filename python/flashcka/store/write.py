"""``write_store``: extract several models into one store, adding to what is there."""
from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from . import _io
from .extract import _check_tokens, check_name, dtype_arg, extract_model, model_fingerprint
from .store import Store, ids_sha256, new_manifest, read_manifest


@dataclass
class ModelJob:
    """A model to extract with its own batches and input mapping (``loader=None``: the
    shared data; ``inputs``: batch -> the model's arguments); ``info``: what the manifest
    records about it (spec, weights_sha256, weights_file, preprocess)."""
    model: nn.Module
    loader: object = None
    inputs: Callable | None = None
    info: dict = field(default_factory=dict)


def write_store(models, data=None, *, out, layers=None, tokens="mean", sample_ids=None,
                mask=None, inputs=None, dtype=torch.float32, device=None,
                shard_size: int | None = None, progress=None, data_name: str = "loader",
                log=None) -> Store:
    """Extract ``models`` (name -> ``nn.Module`` or ``ModelJob``) over ``data`` (an
    iterable of batches) into the store at ``out``; models already there with the same
    settings are skipped, one there with other settings is an error. ``layers``: one
    spec for every model, or ``{name: spec}``. Prints a summary of time and disk use."""
    if not isinstance(models, Mapping) or not models:
        raise TypeError(f"models must be a non-empty dict name -> model, got "
                        f"{type(models).__name__}")
    root = Path(out)
    tok, dtype = _check_tokens(tokens), dtype_arg(dtype)
    jobs = {}
    for name, m in models.items():
        check_name(name)
        job = m if isinstance(m, ModelJob) else ModelJob(m)
        if not isinstance(job.model, nn.Module):
            raise TypeError(f"models[{name!r}] must be a torch.nn.Module (or a spec string "
                            f"for flashcka.extract), got {type(job.model).__name__}")
        if job.loader is None and data is None:
            raise ValueError(f"models[{name!r}] has no data: pass data=")
        jobs[name] = job
    if isinstance(layers, Mapping):
        unknown = sorted(set(layers) - set(jobs))
        if unknown:
            raise ValueError(f"layers names models {unknown} that are not in models "
                             f"({list(jobs)})")
    log = log or (lambda msg: print(msg, file=sys.stderr))
    root.mkdir(parents=True, exist_ok=True)
    if not (root / _io.MANIFEST).exists():
        _io.write_json(root / _io.MANIFEST, new_manifest(data_name))
    t0 = time.perf_counter()
    done_now = []
    for name, job in jobs.items():
        lay = layers.get(name) if isinstance(layers, Mapping) else layers
        manifest = read_manifest(root)
        fp = model_fingerprint(job.model, lay, tok, dtype, mask, sample_ids,
                               {"data": manifest.get("data"), **job.info})
        have = manifest["models"].get(name)
        if have is not None:
            if have["fingerprint"] != fp:
                diff = sorted(k for k in set(fp) | set(have["fingerprint"])
                              if fp.get(k) != have["fingerprint"].get(k))
                raise _io.StoreError(f"model {name!r} is already in {root} with other "
                                     f"settings ({', '.join(diff)} differ); use another name "
                                     f"or delete {root / 'models' / name} and its manifest "
                                     f"entry")
            log(f"flashcka extract: {name}: already in the store, skipped")
            continue
        entry = extract_model(root, name, job.model, job.loader if job.loader is not None
                              else data, layers=lay, tokens=tokens, mask=mask,
                              inputs=job.inputs or inputs, dtype=dtype, device=device,
                              sample_ids=sample_ids, store_ids=manifest.get("sample_ids"),
                              shard_size=shard_size, progress=progress,
                              info={"data": manifest.get("data"), **job.info,
                                    "weights_sha256": fp["weights_sha256"]})
        ids, seconds = entry.pop("sample_ids"), entry.pop("seconds")
        folder = root / "models" / name
        _io.write_json(folder / "sample_ids.json", ids)
        entry["sample_ids_sha256"] = ids_sha256(ids)
        manifest = read_manifest(root)               # unchanged by others: re-read anyway
        if manifest.get("sample_ids") is None:
            manifest["sample_ids"] = ids
        manifest["models"][name] = entry
        _io.write_json(root / _io.MANIFEST, manifest)
        (folder / "progress.json").unlink(missing_ok=True)
        done_now.append(name)
        log(f"flashcka extract: {name}: {entry['num_samples']} samples, "
            f"{len(entry['layers'])} layers, {entry['bytes'] / 2**20:.1f} MiB in "
            f"{seconds:.1f} s")
    store = Store(root)
    log(f"flashcka extract: {len(done_now)} model(s) extracted in "
        f"{time.perf_counter() - t0:.1f} s; the store holds {len(store.models)} models, "
        f"{store.disk_bytes() / 2**20:.1f} MiB ({root})")
    return store


def remove_model(root, name: str) -> None:
    """Delete a model (its shards and manifest entry) from a store."""
    root = Path(root)
    manifest = read_manifest(root)
    manifest["models"].pop(name, None)
    _io.write_json(root / _io.MANIFEST, manifest)
    shutil.rmtree(root / "models" / name, ignore_errors=True)
