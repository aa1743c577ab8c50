"""Layer selection and the forward-hook recorder behind ``flashcka.compare``.

Selection (``select_layers``) turns names, glob patterns and module types into module
names. The recorder (``GramRecorder``) hooks those modules; each hooked output becomes its
centered Gram row inside the hook (``_engine.gram_row``) and the activation is let go, so
memory holds ``L`` Gram rows per model, never ``L`` activations (DESIGN.md §5).
"""
from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Mapping

import torch
from torch import nn

from . import _engine, _validate

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
TOKEN_MODES = ("flatten", "cls", "mean")
_GLOB_CHARS = set("*?[")


# ------------------------------------------------------------------ layer selection

def default_layers(model: nn.Module) -> list[str]:
    """The "blocks" of a model: descend the module tree from the root; every child of an
    ``nn.Sequential``/``nn.ModuleList``/``nn.ModuleDict`` that is not itself such a
    container is a block (and is not descended into); other modules are descended into.
    A model without any such container gets its leaf modules that own parameters."""
    found: list[str] = []

    def visit(module: nn.Module, prefix: str, in_container: bool) -> None:
        for name, child in module.named_children():
            qual = f"{prefix}.{name}" if prefix else name
            if isinstance(child, CONTAINERS):
                visit(child, qual, True)
            elif in_container:
                found.append(qual)
            else:
                visit(child, qual, False)

    visit(model, "", isinstance(model, CONTAINERS))
    if not found:
        found = [name for name, m in model.named_modules()
                 if name and not any(True for _ in m.children())
                 and any(True for _ in m.parameters(recurse=False))]
    if not found:
        raise ValueError(f"{type(model).__name__} has no nn.Sequential/nn.ModuleList blocks and "
                         f"no leaf modules with parameters: pass the layers to hook explicitly")
    return found


def select_layers(model: nn.Module, spec, arg: str) -> list[str]:
    """Qualified names of the modules of ``model`` chosen by ``spec`` (see ``compare``),
    in ``model.named_modules()`` order, each once. ``arg`` names the argument in errors."""
    if spec is None:
        return default_layers(model)
    items = list(spec) if isinstance(spec, (list, tuple, set)) else [spec]
    if not items:
        raise ValueError(f"{arg} is empty: give module names, glob patterns or module types "
                         f"(or None for the default blocks)")
    modules = dict(model.named_modules())
    names = [n for n in modules if n]
    chosen: set[str] = set()
    for item in items:
        if isinstance(item, type) and issubclass(item, nn.Module):
            hits = [n for n, m in modules.items() if isinstance(m, item)]
            if not hits:
                present = sorted({type(m).__name__ for m in modules.values()})
                raise ValueError(f"{arg}: no module of {type(model).__name__} is an instance of "
                                 f"{item.__name__}; module types present: {present}")
        elif isinstance(item, str):
            if item in modules:
                hits = [item]
            elif _GLOB_CHARS & set(item):
                hits = [n for n in names if fnmatch.fnmatchcase(n, item)]
            else:
                hits = []
            if not hits:
                close = difflib.get_close_matches(item, names, n=5, cutoff=0.5)
                raise ValueError(f"{arg}: {item!r} matches no module of {type(model).__name__}; "
                                 f"close names: {close or 'none'} "
                                 f"({len(names)} modules, e.g. {names[:6]})")
        else:
            raise TypeError(f"{arg} items must be module names, glob patterns (str) or "
                            f"nn.Module subclasses; got {item!r} ({type(item).__name__})")
        chosen.update(hits)
    return [n for n in modules if n in chosen]


# ------------------------------------------------------------------ hooked outputs

def output_tensor(out, name: str) -> torch.Tensor:
    """The tensor of a module's output: a tensor itself; the first tensor of a tuple or
    list; of a dict (or HF ``ModelOutput``) ``last_hidden_state`` if present, else the first
    tensor value."""
    if isinstance(out, torch.Tensor):
        return out
    if isinstance(out, Mapping) or hasattr(out, "last_hidden_state"):
        lhs = out.get("last_hidden_state") if isinstance(out, Mapping) else \
            getattr(out, "last_hidden_state", None)
        if isinstance(lhs, torch.Tensor):
            return lhs
        values = out.values() if isinstance(out, Mapping) else ()
        for v in values:
            if isinstance(v, torch.Tensor):
                return v
    elif isinstance(out, (tuple, list)):
        for v in out:
            if isinstance(v, torch.Tensor):
                return v
    raise TypeError(f"layer {name} returned {type(out).__name__}, which holds no tensor; "
                    f"hook a module that returns a tensor, a tuple/list or a dict of tensors")


def apply_tokens(x: torch.Tensor, tokens) -> torch.Tensor:
    """``tokens`` on one output: a callable is applied to every output; the strings act on
    3-D (n, T, C) outputs only: "flatten" -> (n, T·C), "cls" -> x[:, 0], "mean" -> mean over
    T. Other ranks pass through (the Gram flattens (n, ...) to (n, d))."""
    if callable(tokens):
        return tokens(x)
    if x.dim() == 3:
        if tokens == "cls":
            return x[:, 0]
        if tokens == "mean":
            return x.mean(1)
    return x


# ------------------------------------------------------------------ recorder

class GramRecorder:
    """Hooks ``names`` of ``model``; while ``active``, each call's output becomes one centered
    Gram row, written into a preallocated (L, m) buffer. A discovery pass on the first batch
    fixes the layers (module, call index) in the order they first produce output; every
    batch must then call each module as often."""

    def __init__(self, model: nn.Module, names: list[str], ctx, side: str):
        self.model, self.names, self.ctx, self.side = model, names, ctx, side
        self.active = False
        self.labels: list[str] | None = None      # fixed after the first batch
        self._index: dict[tuple[str, int], int] = {}
        self._calls: dict[str, int] = {}
        self.g = self.sq_c = self.sq = None
        self.handles = []
        modules = dict(model.named_modules())
        for name in names:
            self.handles.append(modules[name].register_forward_hook(self._hook(name)))

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    # -- per batch
    def start(self, n: int, discover: bool = False) -> None:
        """Begin a forward pass on a batch of n. ``discover`` (first batch only) counts the
        calls and checks the outputs without building Grams, so the (L, m) row buffer can be
        allocated once, at its exact size."""
        self._calls = {name: 0 for name in self.names}
        self._order: list[tuple[str, int]] = []
        self.n, self.discovering = n, discover
        if not discover:
            m = self.ctx.row_length(n)
            if self.g is None or self.g.shape[1] != m:
                L, dev = len(self.labels), self.ctx.device
                self.g = None                                  # free the old rows first
                self.g = torch.empty(L, m, dtype=self.ctx.ct, device=dev)
                self.sq_c = torch.empty(L, dtype=torch.float64, device=dev)
                self.sq = torch.empty(L, dtype=torch.float64, device=dev)
        self.active = True

    def _hook(self, name: str):
        def hook(module, inputs, output):
            if self.active:
                self._record(name, output)
        return hook

    def _record(self, name: str, output) -> None:
        k = self._calls[name]
        self._calls[name] = k + 1
        label = f"{name}#{k}" if k else name
        x = apply_tokens(output_tensor(output, label), self.ctx.tokens)
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"tokens callable returned {type(x).__name__} for layer {label}; "
                            f"it must return a tensor")
        _validate.representation(x, f"layer {label}")
        x = x.detach()
        if x.dim() == 1:
            x = x[:, None]
        if x.shape[0] != self.n:
            raise ValueError(f"layer {label} output has {x.shape[0]} samples (shape "
                             f"{tuple(x.shape)}) but the batch has {self.n}; hook layers whose "
                             f"output keeps the batch in dimension 0")
        self.ctx.prepare(x)
        if self.discovering:
            self._order.append((name, k))
            return
        i = self._index.get((name, k))
        if i is None:
            raise ValueError(f"{self.side}: module {name} was called more than "
                             f"{self.ctx.first_counts[self.side][name]} time(s) in this "
                             f"forward pass, unlike in the first batch's")
        label = self.labels[i]
        sq_c, sq = _engine.gram_row(self.ctx.be, x, f"layer {label}", self.g[i], self.n,
                                    self.ctx.ct, self.ctx.settings)
        if x.device.type == "cpu":  # precise message now; CUDA: one check per batch
            _engine.check_finite(sq_c.view(1), [f"layer {label}"], self.ctx.ct, [x])
        self.sq_c[i], self.sq[i] = sq_c, sq

    def finish_discovery(self) -> None:
        """After the first batch's discovery pass: fix the layers (in the order they first
        produced output) and their names."""
        self.active = False
        silent = [n for n, c in self._calls.items() if c == 0]
        if silent:
            raise ValueError(f"{self.side}: hook(s) on {silent} never fired in the first "
                             f"batch's forward pass; those modules are not used by "
                             f"{type(self.model).__name__}.forward — choose other layers")
        self.labels = [f"{n}#{k}" if self._calls[n] > 1 else n for n, k in self._order]
        self._index = {key: i for i, key in enumerate(self._order)}
        self.ctx.first_counts[self.side] = dict(self._calls)

    def finish(self) -> _engine.Rows:
        """End a batch's forward pass: check the calls and return its Rows."""
        self.active = False
        want = self.ctx.first_counts[self.side]
        for n, c in self._calls.items():
            if c != want[n]:
                raise ValueError(f"{self.side}: module {n} was called {c} time(s) in this "
                                 f"batch's forward pass but {want[n]} in the first batch's; "
                                 f"compare needs the same calls on every batch")
        _engine.check_finite(self.sq_c, [f"layer {lb}" for lb in self.labels], self.ctx.ct)
        return _engine.Rows(self.g, self.sq_c, self.sq)
