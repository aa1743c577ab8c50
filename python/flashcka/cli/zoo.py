"""``flashcka.extract`` and the ``flashcka extract`` / ``flashcka zoo`` commands: models as
the CLI names them (``flashcka.cli.specs``) and data specs (``flashcka.cli.data``) turned
into the store's model jobs (``flashcka.store``)."""
from __future__ import annotations

import shlex
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..store import ModelJob, Store, write_store
from ..store._io import file_sha256
from .data import ArrayBatches, Arrays, Batches, ImageBatches, Images, load_data
from .specs import SpecError, _plain_images, load_model


def extract(models, data, *, layers=None, out, tokens="mean", sample_ids=None,
            dtype=torch.float32, batch_size: int = 64, num_samples: int | None = None,
            image_size: int | None = None, weights=None, kwargs=None, seed: int = 0,
            mask=None, device=None, shard_size: int | None = None, progress=None,
            log=None) -> Store:
    """Run each model once over ``data`` and write the chosen layers' features to the
    feature store at ``out`` (created, or added to); returns the ``Store``.

    models: ``{name: nn.Module | spec}``, a spec being what the CLI takes (``timm:NAME``,
        ``torchvision:NAME``, ``hf:DIR``, ``module:factory``; random weights unless
        ``weights={name: local file}``; each built after ``torch.manual_seed(seed)``), or a
        list of specs (named by ``spec_name``). Names must not contain ``/``.
    data: an iterable of batches (a DataLoader of tensors, (input, ...) tuples or dicts,
        in a fixed order), or a CLI data spec (``digits``, ``imagefolder:PATH``,
        ``npz:PATH``, ``module:factory``): image data goes through each model's own
        preprocessing (spec models) or in [0, 1] (modules), ``batch_size`` at a time.
    layers: one ``layers`` spec for every model (as ``compare``'s; default the
        ``"blocks"`` preset), or ``{name: spec}``.
    tokens: ``"mean"`` (default), ``"cls"``, ``"flatten"`` or a callable, as in
        ``compare``; ``mask``: a key of dict batches (``"attention_mask"`` for npz text
        data by default) whose padding the pooling skips.
    sample_ids: default the data's own (image paths relative to the folder, indices
        otherwise), a sequence of IDs, or a key of dict batches (a user column).
    dtype: of the stored features (float32, float64, float16, bfloat16).

    The manifest records the sample IDs, each model's spec, weights hash (the file's, or
    the state dict's), preprocessing, layer names and widths, dtype and the flashcka
    version. Writes are atomic; called again (after a stop, or with new models) it skips
    the finished models and the written shards and gives the same bytes. A model already
    in the store with other settings, or data whose sample IDs differ from the store's,
    raises naming the difference.
    """
    named = _named(models)
    weights = dict(weights or {})
    kwargs = dict(kwargs or {})
    for opt, d in (("weights", weights), ("kwargs", kwargs)):
        if set(d) - set(named):
            raise ValueError(f"{opt} names models {sorted(set(d) - set(named))} that are not "
                             f"in models ({list(named)})")
    source = load_data(data, "data") if isinstance(data, str) else None
    loader, data_name = (None, source.name) if source is not None else (data, "loader")
    ids = sample_ids
    if source is not None and ids is None:
        ids = _source_ids(source, data)
    if isinstance(source, Arrays) and isinstance(source.data, dict) and mask is None \
            and "attention_mask" in source.data:
        mask = "attention_mask"
    jobs = {}
    for name, m in named.items():
        if isinstance(m, str):
            torch.manual_seed(seed)
            lm = load_model(m, weights=weights.get(name), image_size=image_size,
                            kwargs=kwargs.get(name), arg=f"models[{name!r}]")
            info = {"spec": m, "weights": lm.info.get("weights", "random"),
                    "preprocess": lm.info.get("preprocess")}
            if weights.get(name) is not None:
                info.update(weights_file=str(weights[name]),
                            weights_sha256=file_sha256(weights[name]))
            model, preprocess, wrap = lm.model, lm.preprocess, lm.wrap
        elif isinstance(m, nn.Module):
            if name in weights or name in kwargs:
                raise ValueError(f"weights/kwargs apply to spec models; models[{name!r}] is "
                                 f"a module already")
            model, info, wrap = m, {"spec": f"module {type(m).__name__}"}, None
            preprocess = _plain_images(image_size)
            if source is not None and isinstance(source, Images):
                info["preprocess"] = f"[0, 1] pixels" + (f", resized to {image_size}"
                                                           if image_size else "")
        else:
            raise TypeError(f"models[{name!r}] must be a torch.nn.Module or a spec string, "
                            f"got {type(m).__name__}")
        jobs[name] = _job(model, source, preprocess, wrap, batch_size, num_samples, info,
                          name)
    return write_store(jobs, loader, out=out, layers=layers, tokens=tokens, sample_ids=ids,
                       mask=mask, dtype=dtype, device=device, shard_size=shard_size,
                       progress=progress, data_name=data_name, log=log)


def spec_name(spec: str) -> str:
    """A model's default name in a store: ``timm:vit_tiny`` -> ``timm.vit_tiny``,
    ``hf:path/to/dir`` -> ``hf.dir``, ``pkg.mod:fn`` -> ``pkg.mod.fn``."""
    prefix, _, rest = spec.partition(":")
    if prefix == "hf":
        rest = Path(rest).name
    return f"{prefix}.{rest}" if rest else prefix


def _named(models) -> dict:
    if isinstance(models, Mapping):
        if not models:
            raise ValueError("models is empty")
        return dict(models)
    if isinstance(models, (list, tuple)) and models and all(isinstance(m, str) for m in models):
        named = {spec_name(m): m for m in models}
        if len(named) != len(models):
            raise ValueError(f"models: two specs give one name ({models}); pass a dict")
        return named
    raise TypeError(f"models must be a dict name -> module or spec, or a list of specs; got "
                    f"{type(models).__name__}")


def _source_ids(source, spec: str) -> list | None:
    """Image files: their paths relative to the image folder; otherwise indices."""
    if isinstance(source, Images) and source.items and isinstance(source.items[0], (str, Path)):
        root = Path(spec.partition(":")[2]).expanduser()
        return [Path(p).relative_to(root).as_posix() for p in source.items]
    if isinstance(source, (Images, Arrays)):
        return list(range(len(source)))
    return None


def _job(model, source, preprocess, wrap, batch_size, num_samples, info, name) -> ModelJob:
    if source is None:
        return ModelJob(model, None, None, info)
    if isinstance(source, Images):
        if preprocess is None:
            raise SpecError(f"models[{name!r}] takes no images (it has no image "
                            f"preprocessing); give it model-ready inputs with npz:PATH data")
        loader = ImageBatches(source, [preprocess], batch_size, num_samples)
        return ModelJob(model, loader, lambda batch, w=wrap: batch[0] if w is None
                        else w(batch[0]), info)
    if isinstance(source, Arrays):
        loader = ArrayBatches(source, batch_size, num_samples)
        return ModelJob(model, loader, None if isinstance(source.data, dict) else wrap, info)
    assert isinstance(source, Batches)
    if num_samples is not None:
        raise SpecError("num_samples applies to digits, imagefolder: and npz: data, not to a "
                        "factory's batches")
    return ModelJob(model, source.iterable, None, info)


def read_models_file(path) -> list[tuple[str, str, dict]]:
    """``--models-file``: one model a line, ``[NAME=]SPEC [--layers P ...] [--weights FILE]
    [--kwargs JSON]``; ``#`` starts a comment. Returns (name, spec, options) triples."""
    import argparse
    p = argparse.ArgumentParser(prog="--models-file line", add_help=False)
    p.add_argument("spec")
    p.add_argument("--layers", nargs="+", default=None)
    p.add_argument("--weights", default=None)
    p.add_argument("--kwargs", default=None)
    out = []
    try:
        lines = Path(path).read_text().splitlines()
    except OSError as e:
        raise SpecError(f"--models-file {path}: cannot read it ({e.strerror or e})") from None
    for i, line in enumerate(lines, 1):
        words = shlex.split(line, comments=True)
        if not words:
            continue
        try:
            a = p.parse_args(words)
        except SystemExit:
            raise SpecError(f"--models-file {path}:{i}: cannot parse {line.strip()!r}; write "
                            f"[NAME=]SPEC [--layers P ...] [--weights FILE] [--kwargs JSON]") \
                from None
        name, spec = split_named(a.spec)
        out.append((name, spec, {"layers": a.layers, "weights": a.weights,
                                 "kwargs": a.kwargs}))
    if not out:
        raise SpecError(f"--models-file {path} lists no models")
    return out


def split_named(text: str) -> tuple[str, str]:
    """``NAME=SPEC`` -> (NAME, SPEC); a bare SPEC is named by ``spec_name``."""
    name, eq, spec = text.partition("=")
    if eq and name and ":" not in name:
        return name, spec
    return spec_name(text), text
