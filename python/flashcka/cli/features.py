"""``flashcka compare --features-a FILE [--features-b FILE]``: full-batch CKA between
layers saved as feature files, without models.

FILE (``core.sources``): a ``.safetensors`` file (every tensor a layer, named by its key),
a folder of ``.npy`` files (every file a layer, named by its stem), an HDF5 file (every
dataset a layer), a single ``.npy`` file (one layer), or one tensor ``FILE::KEY``. Layers
are ordered naturally (``layer2`` before ``layer10``); trailing dimensions are flattened.
Every layer of both files must hold the same samples in the same order (dimension 0).
``--layers-a/-b`` pick layers by name or glob pattern (``fnmatch``). The files are read a
block of rows at a time by ``cka_matrix``'s tiled route, so they may exceed memory.
"""
from __future__ import annotations

import fnmatch
import os

from ..result import CKAResult
from .specs import SpecError

# compare's flags that describe models and their data, with their defaults
_MODEL_FLAGS = {"model_b": None, "weights_a": None, "weights_b": None, "kwargs_a": None,
                "kwargs_b": None, "image_size": None, "num_samples": None,
                "max_batches": None, "checkpoint": None, "device": None, "data": "digits",
                "tokens": "flatten"}


def compare_features(args) -> CKAResult:
    """CKA of every layer of ``--features-a`` with every layer of ``--features-b`` (or of
    A itself) -> CKAResult (num_batches 1: the exact full-batch estimator)."""
    from ..measures.cka import cka_matrix
    if args.features_a is None:
        raise SpecError("--features-b needs --features-a (the feature file of side A)")
    if args.model_a is not None:
        raise SpecError("give --model-a (run models) or --features-a (compare saved "
                        "features), not both")
    given = [f"--{k.replace('_', '-')}" for k, default in _MODEL_FLAGS.items()
             if getattr(args, k) != default]
    if given:
        raise SpecError(f"{', '.join(given)} appl{'ies' if len(given) == 1 else 'y'} to "
                        f"models, not to --features-a/--features-b")
    xs = _layers(args.features_a, args.layers_a, "--features-a", "--layers-a")
    ys = None if args.features_b is None else _layers(args.features_b, args.layers_b,
                                                      "--features-b", "--layers-b")
    try:
        m = cka_matrix(xs, ys, kernel=args.kernel, unbiased=not args.biased, sigma=args.sigma,
                       backend=args.backend, progress=False if args.no_progress else None)
    except TypeError as e:
        raise SpecError(str(e)) from None
    name = lambda f: os.path.basename(os.path.normpath(f))  # noqa: E731
    settings = {"kernel": args.kernel, "unbiased": not args.biased, "sigma": args.sigma,
                "threshold": 1.0, "backend": args.backend, "model_a": name(args.features_a),
                "model_b": name(args.features_b or args.features_a),
                "same_model": args.features_b is None, "data": "features",
                "features_a": str(args.features_a), "features_b": args.features_b}
    first = next(iter(xs.values()))
    return CKAResult(m.cpu(), list(xs), list(xs if ys is None else ys), settings,
                     num_samples=first.n, num_batches=1)


def _layers(path: str, patterns, flag: str, layers_flag: str) -> dict:
    """The layers of one feature file as name -> row source, picked by ``patterns``."""
    from ..core import sources
    try:
        srcs = sources.open_layers(path, flag)
    except (OSError, KeyError, TypeError, ImportError) as e:
        raise SpecError(str(e.args[0] if isinstance(e, KeyError) else e)) from None
    by_name = {s.name: s for s in srcs}
    if patterns is None:
        return by_name
    picked = []
    for p in patterns:
        hits = [k for k in by_name if fnmatch.fnmatchcase(k, p) and k not in picked]
        if not hits and not any(fnmatch.fnmatchcase(k, p) for k in picked):
            raise SpecError(f"{layers_flag} {p!r} matches no layer of {path}; it has "
                            f"{list(by_name)[:20]}")
        picked += hits
    return {k: by_name[k] for k in picked}
