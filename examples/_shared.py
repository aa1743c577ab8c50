"""What the example scripts share: model specs, the digits data, small training runs.

A model spec is ``demo:vit`` / ``demo:resnet`` (flashcka's tiny demo models, trained here
for a few seeded epochs on scikit-learn's 8×8 digits unless ``--epochs 0``), any spec
``flashcka.cli.specs`` understands when that module is present (``timm:NAME``,
``torchvision:NAME``, ``hf:DIR``), or ``package.module:factory`` (a callable returning an
``nn.Module``; called with no arguments).
"""
from __future__ import annotations

import argparse
import importlib
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

DEMO = {"demo:vit": "TinyViT", "demo:resnet": "TinyResNet"}


class _Help(argparse.HelpFormatter):
    """Every option's default in its help: ``(default: X)`` unless the text says it."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or any(action.default is v for v in (None, argparse.SUPPRESS,
                                                                    False)):
            return text
        return f"{text} (default: %(default)s)"


def thinned(labels, room: int = 30):
    """(positions, labels) of every k-th label, at most ``room`` of them: 60 layers stay
    readable on a plot axis a few inches long."""
    step = max(1, -(-len(labels) // room))
    idx = list(range(0, len(labels), step))
    return idx, [labels[i] for i in idx]


def parser(doc: str) -> argparse.ArgumentParser:
    """The examples' argument parser: the module docstring's first paragraph as its
    description, each option's default said in its help."""
    return argparse.ArgumentParser(description=doc.split("\n\n")[0], formatter_class=_Help)
DEMO_LAYERS = {"demo:vit": "VIT_LAYERS", "demo:resnet": "RESNET_LAYERS"}


def digits(test_size: int = 500):
    """(x_train, y_train, x_test, y_test) of the 8×8 digits, as flashcka demo uses them."""
    from flashcka.cli.demo import load_digits_split
    return load_digits_split(test_size=test_size)


def load_model(spec: str, *, epochs: int | None, data=None, seed: int = 0,
               log=print) -> torch.nn.Module:
    """Build (and for demo models, briefly train) the model named by ``spec``."""
    if spec in DEMO:
        from flashcka.cli import demo
        from flashcka import models
        torch.manual_seed(seed)
        model = getattr(models, DEMO[spec])()
        ep = epochs if epochs is not None else (12 if spec == "demo:vit" else 6)
        if ep > 0:
            x, y = data[0], data[1]
            lr = 1e-3 if spec == "demo:vit" else 3e-3
            threads = torch.get_num_threads()
            torch.set_num_threads(1)         # tiny models train faster on one thread
            try:
                demo.train(model, x, y, epochs=ep, lr=lr, seed=seed)
            finally:
                torch.set_num_threads(threads)
            acc = demo.accuracy(model, data[2], data[3])
            log(f"{spec}: trained {ep} epochs on digits, test accuracy {acc:.3f}")
        else:
            log(f"{spec}: untrained (random init, seed {seed})")
        return model.eval()
    try:
        from flashcka.cli import specs  # the command line's model specs (timm:, torchvision:, hf:)
    except ImportError:
        specs = None
    if specs is not None:
        lm = specs.load_model(spec, arg="--model")
        _ADAPTERS[id(lm.model)] = lm.wrap
        log(f"{spec}: {type(lm.model).__name__} (random weights unless the spec loads them)")
        return lm.model.eval()
    if _is_module_factory(spec):
        mod, _, factory = spec.partition(":")
        model = getattr(importlib.import_module(mod), factory)()
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"{spec} returned {type(model).__name__}, not an nn.Module")
        return model.eval()
    raise ValueError(f"unknown model spec {spec!r}: use demo:vit, demo:resnet or "
                     f"package.module:factory")


_ADAPTERS: dict = {}


def adapter(model):
    """How a tensor batch becomes ``model``'s arguments (``compare(inputs_a=...)``), or None."""
    return _ADAPTERS.get(id(model))


def forward(model, x):
    """Call ``model`` on the tensor batch ``x`` through its adapter."""
    a = adapter(model)
    args = x if a is None else a(x)
    return model(**args) if isinstance(args, dict) else model(args)


def _is_module_factory(spec: str) -> bool:
    head = spec.split(":", 1)[0]
    return ":" in spec and head not in ("timm", "torchvision", "hf", "demo") and \
        all(p.isidentifier() for p in head.split("."))


def default_layers(spec: str):
    """The demo's layer selection for demo models; None (the model's blocks) otherwise."""
    if spec in DEMO_LAYERS:
        from flashcka.cli import demo
        return getattr(demo, DEMO_LAYERS[spec])
    return None


def batches(x, batch_size: int):
    return [x[i:i + batch_size] for i in range(0, len(x), batch_size)]


def images(parser, args, specs, data):
    """The stimuli: the digits test images (demo models), else ``--samples`` seeded random
    inputs of ``--input-shape C,H,W`` (required for non-demo models)."""
    if args.input_shape is None:
        if not all(s.startswith("demo:") for s in specs):
            parser.error("--input-shape C,H,W is needed for non-demo models")
        return data[2]
    shape = tuple(int(s) for s in args.input_shape.split(","))
    return torch.randn(args.samples, *shape, generator=torch.Generator().manual_seed(0))
