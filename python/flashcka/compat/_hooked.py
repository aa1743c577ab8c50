"""The hook recorder shared by the torch-cka and pytorch-cka adapters.

Both originals keep, per hooked module, the output of its *last* call in a forward pass
and compare a fixed list of modules. This recorder does the same with flashcka's
machinery: each output becomes its centered Gram row at once (``_engine.gram_row``) and
the activation is let go; rows go to a ``MinibatchCKA`` through ``add_rows``. The layer
list is known before the first batch, so there is no discovery pass.
"""
from __future__ import annotations

import torch
from torch import nn

from ..core import engine as _engine, validate as _validate
from .. import backends
from ..models.hooks import output_tensor


class LastCallRecorder:
    """Hooks ``names`` of ``model``; while active, the output of each call becomes the row
    of its module (a later call of the same module overwrites it, as in the originals)."""

    def __init__(self, model: nn.Module, names: list[str], settings, dtype, backend, side):
        self.names, self.settings, self.dtype, self.backend, self.side = \
            list(names), settings, dtype, backend, side
        self.index = {name: i for i, name in enumerate(self.names)}
        self.be = self.ct = self.g = None
        self.active = False
        modules = dict(model.named_modules())
        self.handles = [modules[name].register_forward_hook(self._hook(name))
                        for name in self.names]

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles = []

    def start(self, n: int) -> None:
        self.n, self.fired, self.active = n, set(), True

    def _hook(self, name):
        def hook(module, inputs, output):
            if self.active:
                self._record(name, output)
        return hook

    def _record(self, name, output) -> None:
        label = f"{self.side} layer {name!r}"
        x = output_tensor(output, label).detach()
        _validate.representation(x, label)
        if x.dim() == 1:
            x = x[:, None]
        if x.shape[0] != self.n:
            raise ValueError(f"{label} output has {x.shape[0]} samples (shape "
                             f"{tuple(x.shape)}) but the batch has {self.n}")
        if self.be is None:
            self.be = backends.select(self.backend, x)
            self.ct = self.dtype or (torch.float64 if x.dtype == torch.float64
                                     else torch.float32)
        m = self.be.row_length(self.n, self.settings.unbiased)
        if self.g is None or self.g.shape[1] != m or self.g.device != x.device:
            self.g = None
            self.g = torch.empty(len(self.names), m, dtype=self.ct, device=x.device)
            self.sq_c = torch.empty(len(self.names), dtype=torch.float64, device=x.device)
            self.sq = torch.empty_like(self.sq_c)
            self.scale = torch.ones_like(self.sq_c)
        i = self.index[name]
        self.sq_c[i], self.sq[i] = _engine.gram_row(self.be, x, label, self.g[i], self.n,
                                                    self.ct, self.settings,
                                                    scale_out=self.scale[i:i + 1])
        self.fired.add(name)

    def finish(self) -> _engine.Rows:
        self.active = False
        silent = [n for n in self.names if n not in self.fired]
        if silent:
            raise ValueError(f"{self.side}: hook(s) on {silent} did not fire in the forward "
                             f"pass; those modules are not used by forward() — choose other "
                             f"layers")
        _engine.check_finite(self.sq_c, [f"{self.side} layer {n!r}" for n in self.names],
                             self.ct)
        return _engine.Rows(self.g, self.sq_c, self.sq, self.scale)


def forward_pass(model, rec: LastCallRecorder, x, n: int) -> _engine.Rows:
    """Run ``model(x)`` with ``rec`` recording; returns the batch's rows."""
    rec.start(n)
    try:
        model(x)
    finally:
        rec.active = False
    return rec.finish()


def module_states(models) -> list[dict]:
    """Every module's training flag, to restore after the run."""
    return [{m: m.training for m in model.modules()} for model in models]


def restore_states(saved) -> None:
    for states in saved:
        for m, flag in states.items():
            m.training = flag
