"""``compare``: minibatch CKA between every hooked layer of two models (or of one model)."""
from __future__ import annotations

import warnings
from collections.abc import Mapping

import torch
from torch import nn

from . import _validate, backends
from ._engine import Settings
from .hooks import TOKEN_MODES, GramRecorder, select_layers
from .minibatch import MinibatchCKA
from .result import CKAResult


class _Context:
    """What every hook of one compare() call shares: settings, backend, compute dtype."""

    def __init__(self, settings, tokens, dtype, backend, device):
        self.settings, self.tokens, self.dtype = settings, tokens, dtype
        self.backend_name, self.device = backend, device
        self.be = self.ct = None
        self.first_counts: dict[str, dict[str, int]] = {}

    def prepare(self, x: torch.Tensor) -> None:
        """Fix the backend and compute dtype on the first hooked output of the run."""
        if self.be is None:
            self.be = backends.select(self.backend_name, x)
            self.ct = self.dtype or (torch.float64 if x.dtype == torch.float64 else torch.float32)
            self.device = x.device

    def row_length(self, n: int) -> int:
        return self.be.row_length(n, self.settings.unbiased)


def compare(model_a: nn.Module, model_b: nn.Module | None, loader, *, layers_a=None,
            layers_b=None, tokens="flatten", max_batches: int | None = None, device=None,
            progress: bool = True, kernel: str = "linear", unbiased: bool = True,
            sigma: float | None = None, threshold: float = 1.0, dtype: torch.dtype | None = None,
            backend: str = "auto") -> CKAResult:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021) between every chosen layer of
    ``model_a`` and every chosen layer of ``model_b`` over the batches of ``loader``.

    Args:
        model_a, model_b: ``nn.Module``s. ``model_b=None`` compares ``model_a`` with itself
            from one forward pass per batch (``layers_b`` is then ignored).
        loader: an iterable of batches: a tensor (the input), a tuple/list whose first
            element is the input (``(input, target)``), or a dict passed as ``**kwargs``.
            Tensors are moved to ``device`` (default: the device of model_a's first
            parameter). The batch size ``n`` is dimension 0 of the first input tensor;
            batches with ``n < 4`` (``n < 2`` when biased) are skipped with a warning.
        layers_a, layers_b: which modules to hook: a qualified module name (exact, as in
            ``model.named_modules()``), a glob pattern (``fnmatch`` on qualified names, e.g.
            ``"blocks.*.attn"``; ``*`` also matches dots), an ``nn.Module`` subclass (every
            module of that type), or a list mixing these. A name or pattern that matches
            nothing raises ``ValueError`` listing close names. ``None`` picks the model's
            blocks: descending the module tree, every child of an ``nn.Sequential``,
            ``nn.ModuleList`` or ``nn.ModuleDict`` that is not itself such a container
            (blocks are not descended into); without any such container, the leaf modules
            that own parameters.
        tokens: how outputs become (n, d) features. The hooked output is a tensor; of a
            tuple/list its first tensor; of a dict or HF ``ModelOutput`` its
            ``last_hidden_state`` if present, else its first tensor value. For 3-D outputs
            (n, T, C): ``"flatten"`` -> (n, T·C), ``"cls"`` -> ``x[:, 0]``, ``"mean"`` ->
            mean over T. A callable ``f(tensor) -> tensor`` is applied to every output.
            Other ranks (e.g. 4-D conv maps) are flattened to (n, d).
        max_batches: use at most this many batches of ``loader``.
        progress: show a tqdm progress bar.
        kernel, unbiased, sigma, threshold, dtype, backend: as for ``MinibatchCKA``.

    Returns:
        ``CKAResult`` with the (L_A, L_B) float64 matrix and the layer names. Layers are
        ordered by when they first produce output in the first batch's forward pass; a
        module called k > 1 times per forward pass gives layers ``name#0 … name#(k-1)``.

    Hooks run under ``torch.no_grad()`` with the models in eval mode; each hooked output is
    turned into its centered Gram at once, written into a preallocated (L, m) row buffer,
    and released: activations are never collected. The first batch goes through each model
    twice: a discovery pass (which modules fire, how often; no Grams) sizes the buffer,
    then the real pass.
    Every module's training flag is restored and every hook removed, even on error.
    """
    settings = Settings(kernel, unbiased, sigma, threshold)
    settings.check()
    _check_args(model_a, model_b, tokens, max_batches, dtype, backend)
    same = model_b is None
    names_a = select_layers(model_a, layers_a, "layers_a")
    names_b = names_a if same else select_layers(model_b, layers_b, "layers_b")
    if device is None:
        device = _model_device(model_a)
    device = torch.device(device)
    ctx = _Context(settings, tokens, dtype, backend, device)
    models = [model_a] if same else [model_a, model_b]
    modes = [{m: m.training for m in model.modules()} for model in models]
    recorders: list[GramRecorder] = []
    try:
        recorders.append(GramRecorder(model_a, names_a, ctx, "model_a"))
        if not same:
            recorders.append(GramRecorder(model_b, names_b, ctx, "model_b"))
        for model in models:
            model.eval()
        acc, skipped = _run(models, recorders, ctx, loader, max_batches, progress, same)
    finally:
        for r in recorders:
            r.remove()
        for saved in modes:
            for m, flag in saved.items():
                m.training = flag
    if acc is None:
        raise ValueError(f"loader gave no usable batches (skipped {skipped} with fewer than "
                         f"{4 if unbiased else 2} samples)")
    matrix = acc.compute().cpu()
    info = {"kernel": kernel, "unbiased": unbiased, "sigma": sigma, "threshold": threshold,
            "tokens": tokens if isinstance(tokens, str) else "callable",
            "backend": ctx.be.name, "dtype": str(ctx.ct).replace("torch.", ""),
            "model_a": type(model_a).__name__,
            "model_b": type(model_a if same else model_b).__name__, "same_model": same}
    return CKAResult(matrix, list(acc.names_a), list(acc.names_b), info,
                     num_samples=acc.num_samples, num_batches=acc.num_batches)


@torch.no_grad()
def _run(models, recorders, ctx, loader, max_batches, progress, same):
    from tqdm.auto import tqdm
    total = max_batches
    if total is None and hasattr(loader, "__len__"):
        total = len(loader)
    elif total is not None and hasattr(loader, "__len__"):
        total = min(total, len(loader))
    need = 4 if ctx.settings.unbiased else 2
    acc, skipped = None, 0
    bar = tqdm(loader, total=total, disable=not progress, desc="flashcka compare",
               unit="batch", leave=False)
    try:
        for b, batch in enumerate(bar):
            if max_batches is not None and b >= max_batches:
                break
            batch = _to_device(batch, ctx.device)
            n = _batch_size(batch, b)
            if n < need:
                skipped += 1
                warnings.warn(f"compare: skipping batch {b} with n = {n} samples (the "
                              f"{'unbiased' if ctx.settings.unbiased else 'biased'} estimator "
                              f"needs n >= {need})", _validate.FlashCKAWarning, stacklevel=3)
                continue
            rows = []
            for model, rec in zip(models, recorders):
                if rec.labels is None:             # first batch: discover the layers
                    _pass(model, rec, batch, n, discover=True)
                    rec.finish_discovery()
                _pass(model, rec, batch, n)
                rows.append(rec.finish())
            if acc is None:
                la = recorders[0].labels
                lb = la if same else recorders[1].labels
                acc = MinibatchCKA(len(la), None if same else len(lb), kernel=ctx.settings.kernel,
                                   unbiased=ctx.settings.unbiased, sigma=ctx.settings.sigma,
                                   threshold=ctx.settings.threshold, dtype=ctx.ct,
                                   backend=ctx.backend_name, names_a=la,
                                   names_b=None if same else lb)
            acc.add_rows(ctx.be, rows[0], rows[0] if same else rows[1], n, ctx.ct)
    finally:
        bar.close()
    return acc, skipped


def _pass(model, rec, batch, n, discover=False):
    rec.start(n, discover)
    try:
        _forward(model, batch)
    finally:
        rec.active = False


def _forward(model, batch):
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def _to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: _to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [_to_device(v, device) for v in batch]
    if isinstance(batch, tuple):
        return tuple(_to_device(v, device) for v in batch)
    return batch


def _batch_size(batch, b) -> int:
    first = _first_tensor(batch[0] if isinstance(batch, (tuple, list)) and batch else batch)
    if first is None or first.dim() == 0:
        raise TypeError(f"batch {b} holds no input tensor with a batch dimension (got "
                        f"{type(batch).__name__}); the loader must yield tensors, "
                        f"(input, target) tuples or dicts of tensors")
    return int(first.shape[0])


def _first_tensor(obj):
    if isinstance(obj, torch.Tensor):
        return obj
    values = obj.values() if isinstance(obj, Mapping) else obj \
        if isinstance(obj, (tuple, list)) else ()
    for v in values:
        t = _first_tensor(v)
        if t is not None:
            return t
    return None


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


def _check_args(model_a, model_b, tokens, max_batches, dtype, backend):
    for arg, m in (("model_a", model_a), ("model_b", model_b)):
        if m is not None and not isinstance(m, nn.Module):
            raise TypeError(f"{arg} must be a torch.nn.Module, got {type(m).__name__}")
    if model_a is None:
        raise TypeError("model_a must be a torch.nn.Module, got None")
    if not (callable(tokens) or tokens in TOKEN_MODES):
        raise ValueError(f"tokens must be one of {TOKEN_MODES} or a callable, got {tokens!r}")
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    _validate.dtype_arg(dtype)
    backends.check_name(backend)
