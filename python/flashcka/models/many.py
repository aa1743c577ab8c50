"""``compare_many``: minibatch CKA over every pair of hooked layers of several models, one
forward pass per model per batch, through ``compare``'s batch loop, run state (resume,
torch.distributed) and recorders."""
from __future__ import annotations

from collections.abc import Mapping
from contextlib import ExitStack

import torch
from torch import nn

from .. import backends
from ..core import engine as _engine
from ..core.engine import Settings
from ..result import CKAResult
from .batches import device_arg, forward
from .compare import _check_args, _run, _token_name, _uncompiled
from .hooks import GramRecorder, RowContext
from .run import RunState, dist_info
from .selection import select_points


class _Models(nn.Module):
    """The models as one module for compare's loop: one call runs each model once on the
    batch (its own input mapping, errors naming it)."""

    def __init__(self, models: dict, inputs: dict):
        super().__init__()
        self.names = list(models)
        self.inner = nn.ModuleList(models.values())
        self.inputs, self.b = inputs, 0

    def forward(self, batch):
        for name, model in zip(self.names, self.inner):      # b: this run's batch count
            forward(model, batch, self.inputs[name], self.b, name)
        self.b += 1


class _Recorders:
    """The models' GramRecorders as one: rows of every model stacked, layers named
    ``model/layer``."""

    def __init__(self, recorders: list[GramRecorder]):
        self.recs, self.side = recorders, "models"

    @property
    def active(self):
        return any(r.active for r in self.recs)

    @active.setter
    def active(self, value):
        for r in self.recs:
            r.active = value

    @property
    def labels(self):
        return [f"{r.side}/{lb}" for r in self.recs for lb in r.labels]

    def start(self, n, mask):
        for r in self.recs:
            r.start(n, mask)

    def finish(self) -> bool:
        return all([r.finish() for r in self.recs])     # every recorder checks its calls

    def rows(self) -> _engine.Rows:
        rows = [r.rows() for r in self.recs]
        return _engine.Rows(torch.cat([r.g for r in rows]), torch.cat([r.sq_c for r in rows]),
                            torch.cat([r.sq for r in rows]),
                            torch.cat([r.scale for r in rows]))


def compare_many(models, loader, *, layers=None, tokens="flatten", mask=None, inputs=None,
                 max_batches: int | None = None, device=None, progress: bool | None = None,
                 kernel: str = "linear", unbiased: bool = True, sigma: float | None = None,
                 threshold: float = 1.0, dtype: torch.dtype | None = None,
                 backend: str = "auto", jackknife=True, checkpoint=None,
                 checkpoint_every: int = 10, distributed: bool | None = None,
                 shard: bool = False) -> CKAResult:
    """Minibatch CKA between every pair of hooked layers of all ``models`` (a dict
    name -> ``nn.Module``; names without ``/``) over the batches of ``loader``.

    Each batch runs through each model once; every hooked tensor becomes its centered Gram
    row at once (``compare``'s recorders), and all models' rows feed one accumulator, so
    the result holds every (model/layer, model/layer) pair: minibatch CKA
    ``Σ_b HSIC₁(K_b, L_b) / sqrt(Σ_b HSIC₁(K_b, K_b) · Σ_b HSIC₁(L_b, L_b))`` (Nguyen et al.
    2021). Memory: the L = Σ L_m Gram rows of one batch (L·n² entries), never activations;
    the pair stage costs 2·L²·n² flops a batch.

    layers: one spec for every model (as ``compare``'s ``layers_a``), or ``{name: spec}``;
    tokens: one mode, or ``{name: mode}``; inputs: one callable ``batch -> arguments``, or
    ``{name: callable}`` (a model missing from it takes the batch as ``compare`` does).
    Every other argument, resume (``checkpoint``) and torch.distributed included, is
    ``compare``'s. Returns a ``CKAResult`` over the names ``"model/layer"`` (both sides).
    """
    if not isinstance(models, Mapping) or not models:
        raise TypeError(f"models must be a non-empty dict name -> nn.Module, got "
                        f"{type(models).__name__}")
    for name, m in models.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ValueError(f"model names must be non-empty strings without '/', got "
                             f"{name!r} (layers are named 'model/layer')")
        if not isinstance(m, nn.Module):
            raise TypeError(f"models[{name!r}] must be a torch.nn.Module, got "
                            f"{type(m).__name__}")
    names = list(models)
    per = {}
    for arg, v in (("layers", layers), ("tokens", tokens), ("inputs", inputs)):
        if isinstance(v, Mapping):
            extra = sorted(set(v) - set(names))
            if extra:
                raise ValueError(f"{arg} names models {extra} that are not in models ({names})")
            per[arg] = {n: v.get(n, None if arg != "tokens" else "flatten") for n in names}
        else:
            per[arg] = dict.fromkeys(names, v)
    toks = {}
    for n in names:
        toks[n], _ = _check_args(models[n], None, per["tokens"][n], mask, per["inputs"][n],
                                 None, max_batches, dtype, backend)
    settings = Settings(kernel, unbiased, sigma, threshold)
    settings.check()
    fingerprint = {"models": {n: type(m).__name__ for n, m in models.items()},
                   "layers": {n: _spec(per["layers"][n]) for n in names},
                   "tokens": {n: _spec(per["tokens"][n]) for n in names}, "mask": _spec(mask),
                   "max_batches": max_batches, "kernel": kernel, "unbiased": settings.unbiased,
                   "sigma": settings.sigma, "threshold": settings.threshold,
                   "dtype": None if dtype is None else str(dtype),
                   "jackknife": _spec(jackknife)}
    run = RunState(settings, backend, jackknife, checkpoint, checkpoint_every, fingerprint,
                   dist_info(distributed), shard)
    with ExitStack() as stack:
        plain = {n: stack.enter_context(_uncompiled(m)) for n, m in models.items()}
        points = {n: select_points(m, per["layers"][n], f"layers[{n!r}]")
                  for n, m in plain.items()}
        device = device_arg(device, plain[names[0]])
        ctx = RowContext(settings, dtype, backend, device, list(plain.values()))
        modes = {m: m.training for model in plain.values() for m in model.modules()}
        recs: list[GramRecorder] = []
        try:
            for n, m in plain.items():
                recs.append(GramRecorder(m, points[n], ctx, n, toks[n]))
                m.eval()
            joined = _Models(plain, per["inputs"])
            _run([joined], [_Recorders(recs)], [lambda batch: (batch,)], ctx, loader, mask,
                 max_batches, progress, True, run)
        finally:
            for r in recs:
                r.remove()
            for m, flag in modes.items():
                m.training = flag
    acc = run.finish()
    matrix = acc.compute().cpu()
    info = {"kernel": kernel, "unbiased": settings.unbiased, "sigma": settings.sigma,
            "threshold": settings.threshold,
            "tokens": {n: _token_name(toks[n].mode) for n in names},
            "mask": mask if mask is None or isinstance(mask, str) else "callable",
            "backend": (ctx.be or backends.select(ctx.backend_name, acc.cross)).name,
            "dtype": str(ctx.ct).replace("torch.", ""), "models": names,
            "model_a": "zoo", "model_b": "zoo", "same_model": True}
    return CKAResult(matrix, list(acc.names_a), list(acc.names_b), info,
                     num_samples=acc.num_samples, num_batches=acc.num_batches,
                     stderr=acc.stderr(matrix))


def _spec(x):
    if isinstance(x, (list, tuple)):
        return [_spec(v) for v in x]
    return x.__name__ if isinstance(x, type) else x if x is None or isinstance(
        x, (str, int, float, bool)) else "callable" if callable(x) else repr(x)
