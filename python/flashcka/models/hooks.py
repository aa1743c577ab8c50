"""The hook recorder behind ``flashcka.compare``: hooked tensors -> centered Gram rows.

``GramRecorder`` hooks the chosen ``Point``s (module outputs, or inputs through forward
pre-hooks). Each hooked tensor becomes its centered Gram row inside the hook
(``_engine.gram_row``) and is let go, so memory holds ``L`` Gram rows per model, never
``L`` activations (docs/design.md §5). One forward pass per batch: on the first batch rows are
written as the layers appear, into a buffer sized for every hooked point (grown if a
module is called more often), and that order fixes the layers for the run.
"""
from __future__ import annotations

import inspect
import math
import warnings
import weakref
from collections.abc import Mapping

import torch
from torch import nn

from ..core import batched_rows as _batched, engine as _engine, validate as _validate
from .. import backends
from .selection import Point, select_points  # noqa: F401  (re-exported)

TOKEN_MODES = ("flatten", "cls", "mean")


# ------------------------------------------------------------------ hooked tensors

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


def input_tensor(args, kwargs, name: str) -> torch.Tensor:
    """The tensor of a module's input: its first positional tensor, else the keyword
    ``hidden_states``, else the first tensor keyword."""
    for v in args:
        if isinstance(v, torch.Tensor):
            return v
    if isinstance(kwargs.get("hidden_states"), torch.Tensor):
        return kwargs["hidden_states"]
    for v in kwargs.values():
        if isinstance(v, torch.Tensor):
            return v
    raise TypeError(f"layer {name} was called without a tensor argument; hook its output "
                    f"or another module")


class Tokens:
    """How one side's hooked tensors become (n, d) features (``tokens`` of ``compare``).

    3-D (n, T, C): "flatten" -> (n, T·C), pad positions zeroed when a mask of T tokens is
    given; "cls" -> x[:, 0]; "mean" -> mean over T (over the unmasked tokens with a mask).
    4-D maps: "flatten"; "mean" averages the spatial positions of (n, C, H, W) or
    (n, H, W, C), told apart by which pair of dimensions is square (ambiguous shapes
    raise); "cls" raises (a map has no class token). 2-D outputs pass through.
    A callable ``f(x)`` or ``f(x, mask)`` (mask: (n, T) bool or None) is applied as is."""

    def __init__(self, mode):
        self.mode = mode
        self.pass_mask = callable(mode) and _takes_two(mode)
        self.warned: set[str] = set()

    def __call__(self, x: torch.Tensor, mask, label: str) -> torch.Tensor:
        mode = self.mode
        if callable(mode):
            y = mode(x, mask) if self.pass_mask else mode(x)
            if not isinstance(y, torch.Tensor):
                raise TypeError(f"tokens callable returned {type(y).__name__} for layer "
                                f"{label}; it must return a tensor")
            return y
        if x.dim() == 3:
            m = mask if mask is not None and mask.shape[1] == x.shape[1] else None
            if mask is not None and m is None and mode != "cls":
                self._warn(label, f"the mask has {mask.shape[1]} tokens but layer {label} "
                                  f"has {x.shape[1]}: its tokens are not masked")
            if mode == "cls":
                t = x.shape[1]
                if mask is None and _is_square(t) and not _is_square(t - 1):
                    self._warn(label, f"tokens='cls' on layer {label}: its {t} tokens form a "
                                      f"square grid, so it likely has no class token; 'cls' "
                                      f"takes its first token")
                return x[:, 0]
            if mode == "mean":
                if m is None:
                    return x.mean(1)
                w = m.to(x.dtype)[:, :, None]
                count = w.sum(1)
                if bool((count == 0).any()):
                    raise ValueError(f"layer {label}: a sample's mask has no valid token")
                return (x * w).sum(1) / count
            if m is not None and not bool(m.all()):
                return (x * m.to(x.dtype)[:, :, None]).reshape(x.shape[0], -1)
            return x
        if x.dim() == 4 and mode in ("cls", "mean"):
            if mode == "cls":
                raise ValueError(f"tokens='cls' on layer {label} of shape {tuple(x.shape)}: "
                                 f"a spatial map has no class token; use 'mean' or 'flatten' "
                                 f"(or per-model tokens=(a, b))")
            s = x.shape
            nchw, nhwc = s[2] == s[3] != s[1], s[1] == s[2] != s[3]
            if nchw == nhwc:
                raise ValueError(f"tokens='mean' on layer {label} of shape {tuple(s)}: cannot "
                                 f"tell (n, C, H, W) from (n, H, W, C); pass a callable, "
                                 f"e.g. tokens=lambda x: x.mean((2, 3))")
            return x.mean((2, 3) if nchw else (1, 2))
        return x

    def _warn(self, label, msg):
        if label not in self.warned:
            self.warned.add(label)
            warnings.warn(msg, _validate.FlashCKAWarning, stacklevel=4)


def _is_square(t: int) -> bool:
    return t > 0 and math.isqrt(t) ** 2 == t


def _takes_two(fn) -> bool:
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.name == "mask" for p in params):
        return True
    pos = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(pos) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


# ------------------------------------------------------------------ recorder

class RowContext:
    """What every recorder of one compare() call shares: settings, backend, compute dtype,
    device."""

    def __init__(self, settings, dtype, backend, device, models):
        self.settings, self.backend_name, self.device = settings, backend, device
        self.be = None
        self.fixed = dtype is not None           # dtype= given: never widened
        wide = any(t.dtype == torch.float64 for m in models
                   for t in (*m.parameters(), *m.buffers()))
        self.ct = dtype or (torch.float64 if wide else None)

    def prepare(self, x: torch.Tensor) -> None:
        """On the first batch: fix the backend from the first hooked tensor and widen the
        compute dtype to float64 when a float64 tensor appears (unless dtype= was given)."""
        if self.be is None:
            self.be = backends.select(self.backend_name, x)
            self.device = x.device
        if self.ct is None:
            self.ct = torch.float64 if x.dtype == torch.float64 else torch.float32
        elif x.dtype == torch.float64 and not self.fixed:
            self.ct = torch.float64

    def row_length(self, n: int) -> int:
        return self.be.row_length(n, self.settings.unbiased)


class GramRecorder:
    """Hooks ``points`` of ``model``; while ``active``, each hooked tensor becomes one
    centered Gram row of the (L, m) buffer ``g``. The first batch fixes the layers:
    (point, call index) in the order they first appear; points that never fire, or whose
    tensor cannot be used, are dropped there (a warning; an error for exact names).
    Every later batch must call each kept module as often."""

    def __init__(self, model: nn.Module, points: list[Point], ctx, side: str, tokens: Tokens):
        self.model, self.points, self.ctx, self.side, self.tokens = model, points, ctx, side, tokens
        self.active = False
        self.labels: list[str] | None = None        # fixed after the first batch
        self._index: dict[tuple[str, int], int] = {}
        self._want: dict[str, int] = {}
        self._calls: dict[str, int] = {}
        self._dropped: dict[str, str] = {}          # label -> why (first batch)
        self.g = None
        # After the first batch, linear rows from a backend without a fused all-layer call
        # (torch, Triton) on a device whose reads cost a synchronisation (a GPU:
        # ``batched_rows.reads_are_free``) are made there with no host read per layer; ``finish``
        # reads the batch's stats once (``_engine.needs_redo``) and, should a layer need
        # ``gram_row``'s exact path (constant, scaled, non-finite), asks for the forward
        # pass again and goes layer by layer from there on.
        self.deferred = False
        self._st: torch.Tensor | None = None      # (4, L) batched_rows stats, deferred
        self._nd: list[int] = []                  # each layer's number of values
        self.handles: dict[str, object] = {}
        modules = dict(model.named_modules())
        for p in points:
            mod = modules[p.module]
            if p.kind == "input":
                h = mod.register_forward_pre_hook(self._in_hook(p), with_kwargs=True)
            else:
                h = mod.register_forward_hook(self._out_hook(p))
            self.handles[p.label] = h

    def remove(self) -> None:
        for h in self.handles.values():
            h.remove()
        self.handles = {}

    def _out_hook(self, p: Point):
        label = p.label

        def hook(module, inputs, output):
            if self.active:
                self._record(p, label, output, None)
        return hook

    def _in_hook(self, p: Point):
        label = p.label

        def hook(module, args, kwargs):
            if self.active:
                self._record(p, label, None, (args, kwargs))
        return hook

    # -- per batch
    def start(self, n: int, mask) -> None:
        """Begin a forward pass on a batch of n samples (mask: (n, T) bool or None)."""
        self.n, self.mask = n, mask
        self._calls = dict.fromkeys(self.handles, 0)
        first = self.labels is None
        if first:
            self._order: list[tuple[str, int]] = []
            self._seen: dict = {}          # id(tensor) -> (weakref, version, key) of a row
            self._twins: dict[tuple[str, int], tuple[str, int]] = {}
        m = self.ctx.row_length(n) if self.ctx.be is not None else None
        if not first and (self.g is None or self.g.shape[1] != m):
            self.g = None                                     # free the old rows first
            self.g = torch.empty(len(self.labels), m, dtype=self.ctx.ct, device=self.ctx.device)
        if self.deferred:
            self._st = torch.zeros(4, len(self.labels), dtype=torch.float64,
                                   device=self.ctx.device)
        self.active = True

    def _record(self, p: Point, label: str, output, call) -> None:
        k = self._calls[label]
        self._calls[label] = k + 1
        name = f"{label}#{k}" if k else label
        first = self.labels is None
        if first:
            if label in self._dropped:
                return
            x = self._tensor(p, name, output, call, first=True)
            if x is None:
                return
            twin = self._twin_of(self._raw)
            if twin is not None:       # the tensor of an earlier point: one row, two names
                self._twins[(label, k)] = twin
                return
            i = len(self._order)
            self._order.append((label, k))
            self._seen[id(self._raw)] = (weakref.ref(self._raw), self._raw._version, (label, k))
            self._ensure_rows(i + 1, x)
        else:
            if (label, k) in self._twins:
                return
            i = self._index.get((label, k))
            if i is None:
                if label in self._dropped:
                    return
                raise ValueError(f"{self.side}: module {p.module} was called more than "
                                 f"{self._want[label]} time(s) in this forward pass, unlike "
                                 f"in the first batch's")
            x = self._tensor(p, name, output, call)
            if self.deferred:
                self._st[:, i] = _batched.layer_row(self.ctx.be, x, self.g[i], self.ctx.ct,
                                                    self.ctx.settings.unbiased)
                self._nd[i] = x.numel()
                return
        sq_c, sq = _engine.gram_row(self.ctx.be, x, f"layer {name}", self.g[i], self.n,
                                    self.ctx.ct, self.ctx.settings, scale_out=self.scale[i])
        # into preallocated buffers: small tensors kept alive across the forward pass,
        # between freed activations, would fragment the heap (+1 GB RSS over 960 layers)
        self.sq_c[i] = sq_c
        self.sq[i] = sq

    def _twin_of(self, raw: torch.Tensor):
        """The (label, call) of an earlier point of this forward pass that hooked this very
        tensor, unchanged since (same object, same version counter), or None. A block's
        output is the next block's input: ``sublayers`` hooks both."""
        ref, version, key = self._seen.get(id(raw), (None, None, None))
        return key if ref is not None and ref() is raw and raw._version == version else None

    def _tensor(self, p: Point, name: str, output, call, first: bool = False):
        """The layer's (n, d) features. First batch: None (the point dropped, once, with
        the reason) when a point from a pattern/preset/type has no floating tensor with
        the batch in dimension 0; exact names raise. Token-mode errors always raise."""
        try:
            x = output_tensor(output, name) if call is None else input_tensor(*call, name)
            if first:
                self._raw = x                          # for _twin_of (first batch only)
            if x.dim() == 0 or x.shape[0] != self.n:
                raise ValueError(f"layer {name} has {x.shape[0] if x.dim() else 0} samples "
                                 f"(shape {tuple(x.shape)}) but the batch has {self.n}; hook "
                                 f"layers that keep the batch in dimension 0")
            if not x.is_floating_point():
                _validate.representation(x, f"layer {name}")
        except (TypeError, ValueError) as e:
            if not first or p.exact:
                raise
            self._dropped[p.label] = str(e)
            return None
        x = self.tokens(x, self.mask, name)
        if not (isinstance(x, torch.Tensor) and x.is_floating_point() and x.dim()
                and x.numel()):                  # the common case costs three checks
            _validate.representation(x, f"layer {name}")
        if x.shape[0] != self.n:
            raise ValueError(f"tokens gave {x.shape[0]} samples for layer {name} (shape "
                             f"{tuple(x.shape)}) but the batch has {self.n}")
        if x.requires_grad:
            x = x.detach()
        if x.dim() == 1:
            x = x[:, None]
        if first:
            self.ctx.prepare(x)
        return x

    def _ensure_rows(self, need: int, x: torch.Tensor) -> None:
        """First batch: a buffer with room for every hooked point (more if a module is
        called again), in the compute dtype (widened if it changed)."""
        ct, m = self.ctx.ct, self.ctx.row_length(self.n)
        g = self.g
        if g is not None and g.shape[0] >= need and g.dtype == ct:
            return
        cap = max(need, len(self.handles) if g is None else 2 * g.shape[0])
        new = torch.empty(cap, m, dtype=ct, device=x.device)
        stats = torch.ones(3, cap, dtype=torch.float64, device=x.device)
        if g is not None:
            done = len(self._order) - 1
            new[:done].copy_(g[:done])
            stats[:, :done].copy_(torch.stack([self.scale, self.sq_c, self.sq])[:, :done])
        self.g = None
        self.g = new
        self.scale, self.sq_c, self.sq = stats.unbind(0)

    def finish(self) -> bool:
        """End a batch's forward pass: check the calls (first batch: fix the layers).
        Returns False when the batch's forward pass must run again (a deferred row needs
        ``gram_row``: from then on every layer goes through it), else True."""
        self.active = False
        if self.labels is None:
            self._fix_layers()
            self.deferred = (self.ctx.settings.kernel == "linear"
                             and not hasattr(self.ctx.be, "centered_gram_rows")
                             and not _batched.reads_are_free(self.ctx.device))
            self._nd = [0] * len(self.labels)
            return True
        for label, want in self._want.items():
            if self._calls[label] != want:
                raise ValueError(f"{self.side}: {label} was called {self._calls[label]} "
                                 f"time(s) in this batch's forward pass but {want} in the "
                                 f"first batch's; compare needs the same calls on every "
                                 f"batch")
        if not self.deferred:
            return True
        st, self._st = self._st, None
        values, flags, _, amax = st.tolist()               # the batch's one host read
        if any(_engine.needs_redo(v, c, a, self.ctx.ct, nd)
               for v, c, a, nd in zip(values, flags, amax, self._nd)):
            self.deferred = False
            return False
        self.sq_c.copy_(st[0])
        self.sq.copy_(st[0] + self.n * st[2])
        self.scale.fill_(1.0)
        return True

    def rows(self) -> _engine.Rows:
        """The batch's Rows (after ``finish`` of every side: the other side may have
        widened the compute dtype on the first batch)."""
        _engine.check_finite(self.sq_c, [f"layer {lb}" for lb in self.labels], self.ctx.ct)
        if self.g.dtype != self.ctx.ct:
            self.g = self.g.to(self.ctx.ct)
        return _engine.Rows(self.g, self.sq_c, self.sq, self.scale)

    def _fix_layers(self) -> None:
        """After the first batch: drop the points that never fired (an error for exact
        names, one warning for the rest), fix the layer names and order."""
        silent = [p for p in self.points if self._calls[p.label] == 0]
        exact = [p.label for p in silent if p.exact]
        if exact:
            raise ValueError(f"{self.side}: hook(s) on {exact} never fired in the first "
                             f"batch's forward pass; those modules are not used by "
                             f"{type(self.model).__name__}.forward — choose other layers")
        for p in silent:
            self._dropped[p.label] = "never fired"
        if self._dropped:
            why = "; ".join(f"{lb}: {r}" for lb, r in list(self._dropped.items())[:5])
            warnings.warn(f"{self.side}: skipping {len(self._dropped)} of {len(self.points)} "
                          f"hooked points chosen by pattern/preset/type ({why}"
                          f"{' …' if len(self._dropped) > 5 else ''})",
                          _validate.FlashCKAWarning, stacklevel=5)
            for label in self._dropped:
                self.handles.pop(label).remove()
        if not self._order:
            raise ValueError(f"{self.side}: none of the {len(self.points)} hooked points "
                             f"gave a usable tensor ({'; '.join(self._dropped.values())})")
        keep = [j for j, (lb, _) in enumerate(self._order) if lb not in self._dropped]
        if len(keep) < len(self._order):        # a later call of a point was unusable
            idx = torch.tensor(keep, device=self.g.device)
            self.g, self.scale = self.g[idx], self.scale[idx]
            self.sq_c, self.sq = self.sq_c[idx], self.sq[idx]
            self._order = [self._order[j] for j in keep]
        if not self._order:
            raise ValueError(f"{self.side}: none of the {len(self.points)} hooked points "
                             f"gave a usable tensor ({'; '.join(self._dropped.values())})")
        self._want = {label: self._calls[label] for label in self.handles}

        def name(key):
            return f"{key[0]}#{key[1]}" if self._want[key[0]] > 1 else key[0]
        also = {key: "" for key in self._order}
        for twin, key in self._twins.items():
            if key in also:
                also[key] += f" = {name(twin)}"
        self.labels = [name(key) + also[key] for key in self._order]
        self._seen, self._raw = {}, None
        self._index = {key: i for i, key in enumerate(self._order)}
        L = len(self._order)
        self.scale, self.sq_c, self.sq = self.scale[:L], self.sq_c[:L], self.sq[:L]
        if self.g.dtype != self.ctx.ct:
            self.g = self.g[:L].to(self.ctx.ct)
        else:
            self.g = self.g[:L]
