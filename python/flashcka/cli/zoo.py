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
    raises naming the difference. One writer at a time: two processes extracting into one
    store at once may lose a manifest entry (extract into separate stores and open them
    together with ``Store(a, b)``).
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
    first = None if wrap is None else (       # hf vision models: pixel_values=
        lambda batch: wrap(batch[0] if isinstance(batch, (tuple, list)) else batch))
    if source is None:
        return ModelJob(model, None, first, info)
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
    return ModelJob(model, source.iterable, first, info)


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


# ------------------------------------------------------------------ the commands

def add_parsers(sub) -> None:
    """``flashcka extract`` and ``flashcka zoo`` (called by ``main._parser``)."""
    e = sub.add_parser("extract", help="run models once over a dataset and write their "
                       "features to a feature store",
                       description="One forward pass per model; the chosen layers' features, "
                       "pooled by --tokens, go to safetensors shards with a JSON manifest. "
                       "Run it again to resume, or with new models to add them.")
    e.add_argument("--models", nargs="+", default=None, metavar="[NAME=]SPEC",
                   help="timm:NAME, torchvision:NAME, hf:DIR or package.module:factory, "
                   "optionally named (default name: the spec with '.' for ':')")
    e.add_argument("--models-file", default=None, metavar="FILE",
                   help="one model a line: [NAME=]SPEC [--layers P ...] [--weights FILE] "
                   "[--kwargs JSON]; # comments")
    e.add_argument("--data", default="digits", metavar="SPEC",
                   help="digits (default), imagefolder:PATH, npz:PATH or package.module:factory")
    e.add_argument("--layers", nargs="+", default=None, metavar="PATTERN",
                   help="layers of every model (names, globs, blocks / sublayers; default "
                   "blocks); a --models-file line's --layers wins")
    e.add_argument("--weights", nargs="+", default=[], metavar="NAME=FILE",
                   help="local weights of a model (default: random initialisation)")
    e.add_argument("--tokens", choices=("mean", "cls", "flatten"), default="mean",
                   help="how tokens and spatial maps are pooled (default %(default)s)")
    e.add_argument("--dtype", choices=("float32", "float64", "float16", "bfloat16"),
                   default="float32", help="dtype of the stored features (default %(default)s)")
    e.add_argument("--out", required=True, metavar="DIR", help="the store's folder")
    e.add_argument("--batch-size", type=int, default=64,
                   help="images per forward pass (default %(default)s)")
    e.add_argument("--num-samples", type=int, default=None, metavar="N",
                   help="the first N samples (default: all)")
    e.add_argument("--image-size", type=int, default=None, metavar="S",
                   help="input resolution (default: each model's own)")
    e.add_argument("--seed", type=int, default=0,
                   help="random initialisation: each model built after torch.manual_seed(SEED)")
    e.add_argument("--device", default=None, help="e.g. cpu or cuda:0")
    e.add_argument("--shard-size", type=int, default=None, metavar="N",
                   help="samples per shard (default: about 256 MiB per shard)")
    e.add_argument("--no-progress", action="store_true",
                   help="no progress bars (default: shown when stderr is a terminal)")

    z = sub.add_parser("zoo", help="compare every model/layer of feature stores",
                       description="Similarity of every pair of model/layer in one or more "
                       "stores of the same samples (or, with --across-datasets, of the same "
                       "models on several datasets). Results are cached in the store.")
    z.add_argument("stores", nargs="+", metavar="STORE",
                   help="store folders (NAME=DIR to name a dataset with --across-datasets)")
    z.add_argument("--measure", choices=("cka", "rsa", "mutual_knn"), default="cka",
                   help="similarity measure (default %(default)s)")
    z.add_argument("--kernel", choices=("linear", "rbf"), default="linear",
                   help="CKA kernel (default %(default)s)")
    z.add_argument("--sigma", type=float, default=None,
                   help="RBF bandwidth (default: median heuristic)")
    z.add_argument("--biased", action="store_true", help="biased HSIC (default: debiased)")
    z.add_argument("--topk", type=int, default=10, help="neighbours for mutual_knn")
    z.add_argument("--rsa-method", choices=("spearman", "pearson"), default="spearman",
                   help="correlation of the RDMs (default %(default)s)")
    z.add_argument("--float64", action="store_true", help="compute in float64")
    z.add_argument("--models", nargs="+", default=None, metavar="NAME",
                   help="the models to compare (default: all)")
    z.add_argument("--model-layer", type=int, default=-1, metavar="INDEX",
                   help="the layer of each model in the model x model matrix (default -1: "
                   "its last)")
    z.add_argument("--grid", nargs="+", default=None, metavar="NAME",
                   help="also draw the layer x layer grid of these models")
    z.add_argument("--across-datasets", action="store_true",
                   help="each STORE is one dataset: model x model matrices per dataset and "
                   "their consistency (Ciernik et al. 2025)")
    z.add_argument("--format", choices=("png", "svg", "pdf"), default="png",
                   help="plot format (default %(default)s)")
    z.add_argument("--out", default="flashcka_zoo", metavar="DIR",
                   help="output folder (default %(default)s)")
    z.add_argument("--name", default="zoo", help="file stem of the outputs")
    z.add_argument("--no-progress", action="store_true",
                   help="no progress bars (default: shown when stderr is a terminal)")


def run(args) -> int:
    if args.command == "zoo":
        return run_zoo(args)
    try:
        return run_extract(args)
    except KeyboardInterrupt:
        import sys
        print("\nflashcka extract: stopped (Ctrl-C); the shards written are kept: run the "
              "same command to resume", file=sys.stderr)
        return 130


def run_extract(args) -> int:
    import json
    if not args.models and not args.models_file:
        raise SpecError("give --models SPEC ... or --models-file FILE")
    entries = [(n, s, {}) for n, s in map(split_named, args.models or [])]
    if args.models_file:
        entries += read_models_file(args.models_file)
    names = [n for n, _, _ in entries]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise SpecError(f"--models: the name(s) {dup} are given twice; name them NAME=SPEC")
    weights = {}
    for w in args.weights:
        name, eq, path = w.partition("=")
        if not eq or name not in names:
            raise SpecError(f"--weights takes NAME=FILE with NAME one of {names}, got {w!r}")
        weights[name] = path
    for n, _, o in entries:
        if o.get("weights"):
            weights[n] = o["weights"]
    kwargs = {}
    for n, _, o in entries:
        if o.get("kwargs"):
            try:
                kwargs[n] = json.loads(o["kwargs"])
            except json.JSONDecodeError as e:
                raise SpecError(f"--models-file: --kwargs of {n} is not JSON: {e}") from None
    layers = {n: o.get("layers") or args.layers for n, _, o in entries}
    for opt in ("batch_size", "num_samples", "shard_size"):
        v = getattr(args, opt)
        if v is not None and v < 1:
            raise SpecError(f"--{opt.replace('_', '-')} must be >= 1, got {v}")
    store = extract({n: s for n, s, _ in entries}, args.data, layers=layers, out=args.out,
                    tokens=args.tokens, dtype=args.dtype, batch_size=args.batch_size,
                    num_samples=args.num_samples, image_size=args.image_size, weights=weights,
                    kwargs=kwargs, seed=args.seed, device=args.device,
                    shard_size=args.shard_size, progress=False if args.no_progress else None)
    print(repr(store))
    return 0


def run_zoo(args) -> int:
    import json
    import time
    from ..store import plots
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {"cka": {"kernel": args.kernel, "sigma": args.sigma, "unbiased": not args.biased},
                "rsa": {"rsa_method": args.rsa_method},
                "mutual_knn": {"topk": args.topk}}[args.measure]
    if args.float64:
        settings["dtype"] = torch.float64
    progress = False if args.no_progress else None
    stem, fmt = out / args.name, args.format
    written = []
    if args.across_datasets:
        from ..analysis import cross_dataset_consistency
        named = dict(split_dataset(s) for s in args.stores)
        if len(named) < 2:
            raise SpecError("--across-datasets needs two or more stores (one per dataset)")
        mats = {}
        for ds, path in named.items():
            t0 = time.perf_counter()
            st = Store(path)
            models = args.models or st.models
            r = st.model_matrix(args.measure, args.model_layer, models, progress=progress,
                                **settings)
            if list(r.names_a) != list(mats[next(iter(mats))].names_a if mats else r.names_a):
                raise SpecError(f"store {path} holds other models than the first store; "
                                f"pass --models")
            mats[ds] = r
            written += [r.save(f"{stem}_{ds}_models.json"),
                        plots.clustered_heatmap(r, f"{stem}_{ds}_models.{fmt}")]
            print(f"{ds}: {len(models)} models, {st.last['computed_pairs']} pairs computed, "
                  f"{st.last['cached_pairs']} from the cache, {time.perf_counter() - t0:.1f} s")
        c = cross_dataset_consistency({k: v.matrix for k, v in mats.items()})
        (out / f"{args.name}_consistency.json").write_text(json.dumps(
            {k: (v.tolist() if isinstance(v, torch.Tensor) else v) for k, v in c.items()},
            indent=1))
        written += [out / f"{args.name}_consistency.json",
                    plots.consistency_plot(c, f"{stem}_consistency.{fmt}", list(mats.values()))]
        print(f"consistency ({c['method']}): " + ", ".join(
            f"{a}~{b} {float(c['correlation'][i, j]):.3f}" for i, a in enumerate(c["datasets"])
            for j, b in enumerate(c["datasets"]) if i < j))
    else:
        t0 = time.perf_counter()
        st = Store(*args.stores)
        r = st.similarity(args.measure, args.models, progress=progress, **settings)
        print(f"{st!r}: {len(r.names_a)} layers, {st.last['computed_pairs']} pairs computed, "
              f"{st.last['cached_pairs']} from the cache, {time.perf_counter() - t0:.1f} s")
        written.append(r.save(f"{stem}.json"))
        models = args.models or st.models
        if len(models) >= 2:
            mm = st.model_matrix(args.measure, args.model_layer, models, progress=progress,
                                 **settings)
            written += [mm.save(f"{stem}_models.json"),
                        plots.clustered_heatmap(mm, f"{stem}_models.{fmt}")]
        if args.grid:
            written.append(plots.layer_grid(r, args.grid, f"{stem}_layers.{fmt}"))
    print("wrote " + ", ".join(str(p) for p in written))
    return 0


def split_dataset(text: str) -> tuple[str, str]:
    name, eq, path = text.partition("=")
    return (name, path) if eq and name else (Path(text).name, text)
