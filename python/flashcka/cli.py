"""The ``flashcka`` command (also ``python -m flashcka``).

    flashcka info                       what is built and usable here
    flashcka demo [--out DIR] [--epochs N] [--quick]
    flashcka compare --model-a pkg.mod:factory [--model-b pkg.mod:factory]
                     --data pkg.mod:factory [--layers-a PATTERN ...] [--layers-b ...]
                     [--tokens flatten|cls|mean] [--max-batches N] [--kernel linear|rbf]
                     [--biased] [--out DIR] [--device DEV] [--backend NAME]

Factories are zero-argument callables named ``module:attribute`` (the current directory is
importable); the data factory returns an iterable of batches (see ``flashcka.compare``).
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path


def load_factory(spec: str, arg: str):
    """Import ``module:attr`` and call it with no arguments."""
    if ":" not in spec:
        raise SystemExit(f"flashcka: {arg} must look like 'package.module:factory', got {spec!r}")
    mod_name, attr = spec.split(":", 1)
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(mod_name)
    except ImportError as e:
        raise SystemExit(f"flashcka: {arg}: cannot import module {mod_name!r}: {e}") from None
    obj = module
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise SystemExit(f"flashcka: {arg}: module {mod_name!r} has no attribute {attr!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise SystemExit(f"flashcka: {arg}: {spec!r} is not callable")
    return obj()


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="flashcka", description="Fast, exact CKA between the "
                                "layers of neural networks.")
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("info", help="print the backends and compiled features usable here")

    d = sub.add_parser("demo", help="train a tiny ViT and ResNet on 8x8 digits and compare "
                       "all their layers (about a minute on 2 CPU cores)")
    d.add_argument("--out", default="flashcka_demo", help="output folder (default %(default)s)")
    d.add_argument("--epochs", type=int, default=None, help="training epochs for both models")
    d.add_argument("--quick", action="store_true", help="tiny run (1 epoch, few samples)")
    d.add_argument("--no-progress", action="store_true", help="hide progress bars")

    c = sub.add_parser("compare", help="minibatch CKA between the layers of two models")
    c.add_argument("--model-a", required=True, metavar="MODULE:FACTORY")
    c.add_argument("--model-b", default=None, metavar="MODULE:FACTORY",
                   help="omit to compare model A with itself")
    c.add_argument("--data", required=True, metavar="MODULE:FACTORY",
                   help="returns an iterable of batches")
    c.add_argument("--layers-a", nargs="+", default=None, metavar="PATTERN",
                   help="module names or glob patterns (default: the model's blocks)")
    c.add_argument("--layers-b", nargs="+", default=None, metavar="PATTERN")
    c.add_argument("--tokens", choices=("flatten", "cls", "mean"), default="flatten")
    c.add_argument("--max-batches", type=int, default=None)
    c.add_argument("--kernel", choices=("linear", "rbf"), default="linear")
    c.add_argument("--sigma", type=float, default=None, help="RBF bandwidth (default: median "
                   "heuristic)")
    c.add_argument("--biased", action="store_true", help="biased HSIC (default: debiased)")
    c.add_argument("--backend", default="auto", choices=("auto", "torch", "native", "triton"))
    c.add_argument("--device", default=None, help="e.g. cpu or cuda:0 (default: model A's)")
    c.add_argument("--out", default="flashcka_out", help="output folder (default %(default)s)")
    c.add_argument("--name", default="cka", help="file stem of the outputs (default %(default)s)")
    c.add_argument("--no-progress", action="store_true")
    return p


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "info":
        from ._capabilities import capabilities, format_capabilities
        print(format_capabilities(capabilities()))
        return 0
    if args.command == "demo":
        from . import demo
        if args.epochs is not None and args.epochs < 1:
            raise SystemExit(f"flashcka: --epochs must be >= 1, got {args.epochs}")
        demo.run(args.out, epochs=args.epochs, quick=args.quick, progress=not args.no_progress)
        return 0
    return _compare(args)


def _compare(args) -> int:
    from .compare import compare
    model_a = load_factory(args.model_a, "--model-a")
    model_b = None if args.model_b is None else load_factory(args.model_b, "--model-b")
    data = load_factory(args.data, "--data")
    result = compare(model_a, model_b, data, layers_a=args.layers_a, layers_b=args.layers_b,
                     tokens=args.tokens, max_batches=args.max_batches, device=args.device,
                     progress=not args.no_progress, kernel=args.kernel,
                     unbiased=not args.biased, sigma=args.sigma, backend=args.backend)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    png = result.plot(out / f"{args.name}.png")
    js = result.save(out / f"{args.name}.json")
    print(repr(result))
    print(f"wrote {png} and {js}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
