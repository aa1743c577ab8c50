"""``compare``: minibatch CKA between every hooked layer of two models (or of one model)."""
from __future__ import annotations

import sys
import warnings
from contextlib import contextmanager

import torch
from torch import nn

from ..core import validate as _validate
from .. import backends
from ..core.engine import Settings
from ..core.calibrated_run import CalibratedRun
from .hooks import TOKEN_MODES, GramRecorder, RowContext, Tokens
from .selection import select_points
from .run import RunState, dist_info
from ..result import CKAResult
from .batches import batch_mask, batch_size, device_arg, forward, input_dtype, to_device


class CompareInterrupted(KeyboardInterrupt):
    """Ctrl-C during ``compare``'s batch loop: where it stopped and where a run with the
    same arguments resumes (``resume_batch``: the checkpoint's next batch, 0 without one)."""

    def __init__(self, batch: int, total, checkpoint, resume_batch: int):
        self.batch, self.total, self.checkpoint = batch, total, checkpoint
        self.resume_batch = resume_batch
        of = "" if total is None else f" of {total}"
        how = (f"checkpoint {checkpoint} holds the batches before {resume_batch}: run the same "
               f"compare() again to resume from batch {resume_batch}" if checkpoint is not None
               else "no checkpoint= was given, so a new run starts over; pass checkpoint=PATH "
               "to make runs resumable")
        super().__init__(f"compare stopped at batch {batch}{of}; {how}")


def compare(model_a: nn.Module, model_b: nn.Module | None, loader, *, layers_a=None,
            layers_b=None, tokens="flatten", mask=None, inputs_a=None, inputs_b=None,
            max_batches: int | None = None, device=None, progress: bool | None = None,
            kernel: str = "linear", unbiased: bool = True, sigma: float | None = None,
            threshold: float = 1.0, dtype: torch.dtype | None = None,
            backend: str = "auto", jackknife=True, checkpoint=None,
            checkpoint_every: int = 10, distributed: bool | None = None,
            shard: bool = False, permutations: int = 0, bootstrap: int = 0,
            seed: int = 0) -> CKAResult:
    """Minibatch CKA (Nguyen, Raghu & Kornblith 2021) between every chosen layer of
    ``model_a`` and every chosen layer of ``model_b`` over the batches of ``loader``.

    Args:
        model_a, model_b: ``nn.Module``s (``torch.compile``'d ones too, see below).
            ``model_b=None`` compares ``model_a`` with itself from one forward pass per
            batch (``layers_b`` is then ignored).
        loader: an iterable of batches: a tensor (the input), a tuple/list whose first
            element is the input (``(input, target)``), or a dict passed as ``**kwargs``.
            Tensors are moved to ``device`` (default: the device of model_a's first
            parameter). The batch size ``n`` is dimension 0 of the batch's first tensor;
            batches with ``n < 4`` (``n < 2`` when biased) are skipped with a warning.
        layers_a, layers_b: what to hook, one item or a list of:
            a qualified module name (exact, as in ``model.named_modules()``); a glob
            pattern over those names, where ``*`` matches within one dotted level and
            ``**`` across levels (``"blocks.*"``: the direct children of ``blocks``;
            ``"**.attn"``: every ``attn`` at any depth; ``?`` is one character, ``[0-3]``
            a set); an ``nn.Module`` subclass (every module of that type); a preset:
            ``"blocks"`` (the input of the first block — the embedding/stem output — then
            every repeated block of ViTs, ResNets, ConvNeXt, Swin, HF encoders: the
            children of each ``nn.Sequential``/``nn.ModuleList``/``nn.ModuleDict`` whose
            children are composite modules, none of them mostly such a list itself; see
            ``selection.block_lists``) or
            ``"sublayers"`` (per transformer block, Raghu et al. 2021: its input, the
            attention branch output, the residual stream after attention, the MLP branch
            output, its output). A name or pattern may end in ``":input"`` to hook the
            module's input (a forward pre-hook: ``"blocks.3.norm2:input"`` is the
            residual stream after attention) or ``":output"`` (the default; write
            ``"blocks:output"`` for a module named like a preset). ``None``: the
            ``"blocks"`` preset, or for models without repeated blocks every
            non-container child of a container, else the leaf modules with parameters.
            A name or pattern matching nothing raises ``ValueError`` listing close names.
            A module named exactly that never fires (or whose tensor is unusable) raises;
            points from patterns, presets or types are skipped with one warning.
        tokens: how a hooked tensor becomes (n, d) features; one mode for both models or
            a pair ``(tokens_a, tokens_b)``. The tensor of an output is the output, or of a
            tuple/list its first tensor, of a dict or HF ``ModelOutput`` its
            ``last_hidden_state`` if present, else its first tensor value; of an input, the
            first positional tensor (else the ``hidden_states`` keyword). 3-D (n, T, C):
            ``"flatten"`` -> (n, T·C) with pad positions zeroed when ``mask`` applies;
            ``"cls"`` -> ``x[:, 0]`` (a warning when T is a square grid and T − 1 is not:
            no room for a class token); ``"mean"`` -> mean over T, over the unmasked
            tokens when ``mask`` applies. 4-D maps: ``"flatten"``; ``"mean"`` -> mean over
            the spatial positions of (n, C, H, W) or (n, H, W, C), the layout told by which
            two dimensions are equal (H = W; other shapes raise); ``"cls"`` raises. 2-D
            outputs pass through. A callable ``f(x)`` or ``f(x, mask)`` is applied as is.
        mask: padding mask for token layouts: ``None``, the key of a dict batch (e.g.
            ``"attention_mask"``), or a callable ``batch -> (n, T)`` tensor; nonzero =
            a real token. It applies to 3-D layers with T tokens (a warning names the
            others) and is passed to a two-argument ``tokens`` callable.
        inputs_a, inputs_b: callables ``batch -> arguments`` of each model: a tensor (one
            positional argument), a tuple/list (positional arguments) or a dict (keyword
            arguments), so that two models taking different inputs (a timm ViT: a tensor,
            an HF ViT: ``pixel_values=``) run on one loader. Default: as for ``loader``.
        max_batches: use at most this many batches of ``loader``.
        device: where batches go (``"cpu"``, ``"cuda:0"``); the models are not moved.
        progress: show a tqdm progress bar; default (None): when stderr is a terminal.
        kernel, unbiased, sigma, threshold, backend: as for ``MinibatchCKA``.
        dtype: compute dtype; default float64 when a parameter/buffer of either model,
            or any hooked tensor of the first batch, is float64, else float32. On the first
            batch the rows built before the first float64 tensor appears are computed in
            float32 and widened; pass ``dtype=torch.float64`` for float64 throughout.
        jackknife: error bars: ``True`` (default) keeps per-batch HSICs in up to 64 slots
            within 64 MiB (off, silently, when 2 slots of ``L_A·L_B`` float64 do not fit),
            ``False`` none, an int that many slots; ``result.stderr`` is then the
            leave-one-batch-out jackknife standard error of every entry (see
            ``flashcka.core.jackknife``; memory ``slots · (L_A·L_B + L_A + L_B + 1)`` float64).
        checkpoint, checkpoint_every: resume. With a path, the accumulator (with the loader
            position and a fingerprint of these arguments) is written atomically every
            ``checkpoint_every`` counted batches and at the end; a run started again with
            the same arguments and an existing file skips the batches already counted
            (without running the models on them; the loader must give the same batches in
            the same order) and ends with exactly the numbers of an uninterrupted run. The
            file is kept afterwards: delete it to start over. See ``flashcka.models.run``.
        distributed, shard: scale-out through torch.distributed. ``distributed=None``
            (default): when a process group is initialised with more than one rank (e.g.
            under ``torchrun``), each rank compares the batches its ``loader`` yields and the
            accumulators are summed over the ranks at the end, so every rank returns the
            result of all batches. Give each rank its own shard, e.g. a ``DataLoader`` with a
            ``DistributedSampler`` (or round-robin batches); ``compare`` does not shard a
            plain iterable unless ``shard=True``, which runs the models on loader batches
            ``b`` with ``b % world_size == rank`` only (every rank iterating the same loader).
            ``distributed=False``: never reduce; ``True``: require a process group.

        permutations: a permutation test of every pair with that many permutations
            (``flashcka.permutation_test``'s minibatch form: samples permuted within each
            batch, permutation k of loader batch b seeded by (seed, b, k), from the Gram
            rows the hooks built; memory ``permutations · L_A · L_B`` float64):
            ``result.pvalue``, ``null_mean``, ``null_std``, ``calibrated``, ``zscore``.
            Under torch.distributed batches are seeded by their global index and the
            nulls summed over the ranks (the numbers of one process); not with
            ``checkpoint=`` (yet).
        bootstrap: that many bootstrap resamples over samples
            (``flashcka.bootstrap_interval``, BCa 95%): ``result.ci_low``, ``ci_high``. For
            the full-batch estimator only: a run of one batch (else a ValueError).
        seed: seeds the permutations and the resamples.

    Returns:
        ``CKAResult`` with the (L_A, L_B) float64 matrix and the layer names. Layers are
        ordered by when they first appear in the first batch's forward pass; a module
        called k > 1 times per forward pass gives layers ``name#0 … name#(k-1)``; inputs
        are named ``name:input``; the ``"sublayers"`` preset's inner points are named by
        meaning (``blocks.3: attention branch``, ``blocks.3: residual after attention``,
        ``blocks.3: MLP branch``). One tensor hooked under two names (a block's output is
        the next block's input) is one layer named by both: ``blocks.3 = blocks.4:input``.

    One forward pass per batch per model, under ``torch.no_grad()`` with the models in
    eval mode. Each hooked tensor is turned into its centered Gram at once, written into
    the (L, m) row buffer, and released: activations are never collected. A
    ``torch.compile``'d model (``OptimizedModule`` or ``module.compile()``) is run through
    its original module: compiled graphs do not see hooks added after compilation, and
    tracing the hooks would break the graph; the uncompiled forward gives the same numbers.
    Every module's training flag (and compiled state) is restored and every hook removed,
    even on error.
    """
    settings = Settings(kernel, unbiased, sigma, threshold)
    settings.check()
    run = RunState(settings, backend, jackknife, checkpoint, checkpoint_every, _fingerprint(
        model_a, model_b, layers_a, layers_b, tokens, mask, max_batches, kernel,
        settings.unbiased, settings.sigma, settings.threshold, dtype, jackknife),
        dist_info(distributed), shard)
    tok_a, tok_b = _check_args(model_a, model_b, tokens, mask, inputs_a, inputs_b,
                               max_batches, dtype, backend)
    same = model_b is None
    calibration = CalibratedRun(permutations, bootstrap, seed, same, settings.unbiased,
                                progress=progress) if permutations or bootstrap else None
    if calibration is not None and checkpoint is not None:
        raise ValueError("permutations= and bootstrap= cannot be resumed from a checkpoint "
                         "yet: leave out checkpoint=")
    if bootstrap and run.dist is not None:
        raise ValueError("bootstrap= is for runs of one batch in one process, not under "
                         "torch.distributed (distributed=False runs this rank alone)")
    if calibration is not None and hasattr(loader, "__len__"):  # before any forward pass
        calibration.check_batches(min(len(loader), max_batches or len(loader)))
    with _uncompiled(model_a) as model_a, _uncompiled(model_b) as model_b:
        points_a = select_points(model_a, layers_a, "layers_a")
        points_b = points_a if same else select_points(model_b, layers_b, "layers_b")
        device = device_arg(device, model_a)
        models = [model_a] if same else [model_a, model_b]
        ctx = RowContext(settings, dtype, backend, device, models)
        modes = [{m: m.training for m in model.modules()} for model in models]
        recorders: list[GramRecorder] = []
        try:
            recorders.append(GramRecorder(model_a, points_a, ctx, "model_a", tok_a))
            if not same:
                recorders.append(GramRecorder(model_b, points_b, ctx, "model_b", tok_b))
            for model in models:
                model.eval()
            adapters = [inputs_a] if same else [inputs_a, inputs_b]
            _run(models, recorders, adapters, ctx, loader, mask, max_batches, progress, same,
                 run, calibration)
        finally:
            for r in recorders:
                r.remove()
            for saved in modes:
                for m, flag in saved.items():
                    m.training = flag
    acc = run.finish()
    if calibration is not None and run.dist is not None:
        calibration.all_reduce()
    matrix = acc.compute().cpu()
    info = {"kernel": kernel, "unbiased": settings.unbiased, "sigma": settings.sigma,
            "threshold": settings.threshold,
            "tokens": _token_name(tok_a.mode) if same or tok_a.mode is tok_b.mode
            else [_token_name(tok_a.mode), _token_name(tok_b.mode)],
            "mask": mask if mask is None or isinstance(mask, str) else "callable",
            "backend": (ctx.be or backends.select(ctx.backend_name, acc.cross)).name,
            "dtype": str(ctx.ct).replace("torch.", ""),
            "model_a": type(model_a).__name__,
            "model_b": type(model_a if same else model_b).__name__, "same_model": same}
    extra = {}
    if calibration is not None:
        extra, more = calibration.fields(list(acc.names_a), list(acc.names_b))
        info.update(more)
    return CKAResult(matrix, list(acc.names_a), list(acc.names_b), info,
                     num_samples=acc.num_samples, num_batches=acc.num_batches,
                     stderr=acc.stderr(matrix), **extra)


@torch.no_grad()
def _run(models, recorders, adapters, ctx, loader, mask, max_batches, progress, same, run,
         calibration=None):
    """The batch loop: each batch this process runs goes through the models once and its
    Gram rows into ``run`` (which owns the accumulator, the counts and the checkpoint), and
    into ``calibration`` (a ``CalibratedRun``: permutation nulls, bootstrap) if given."""
    from tqdm.auto import tqdm
    total = max_batches
    if total is None and hasattr(loader, "__len__"):
        total = len(loader)
    elif total is not None and hasattr(loader, "__len__"):
        total = min(total, len(loader))
    need = 4 if ctx.settings.unbiased else 2
    if run.resumed:                              # the checkpoint's accumulator fixes the dtype
        ctx.ct, ctx.fixed = run.acc.compute_dtype, True
        of = "" if total is None else f" of {total}"
        done = " (every batch counted already)" if run.next_batch == total else ""
        print(f"flashcka compare: resumed from batch {run.next_batch}{of} (checkpoint "
              f"{run.path}){done}", file=sys.stderr)
    if progress is None:
        progress = sys.stderr is not None and sys.stderr.isatty()
    bar = tqdm(loader, total=total, disable=not progress, desc="flashcka compare",
               unit="batch", leave=False)
    b = run.next_batch
    try:
        for b, batch in enumerate(bar):
            if max_batches is not None and b >= max_batches:
                break
            if not run.runs(b):                  # counted before a resume, or another rank's
                continue
            batch = to_device(batch, ctx.device)
            n = batch_size(batch, b)
            if n < need:
                run.skip(b)
                warnings.warn(f"compare: skipping batch {b} with n = {n} samples (the "
                              f"{'unbiased' if ctx.settings.unbiased else 'biased'} estimator "
                              f"needs n >= {need})", _validate.FlashCKAWarning, stacklevel=4)
                continue
            if not ctx.fixed and input_dtype(batch) == torch.float64:
                ctx.ct = torch.float64
            bmask = batch_mask(batch, mask, n, b)
            for model, rec, adapt in zip(models, recorders, adapters):
                done = False
                while not done:      # again, once a run at most: GramRecorder.finish
                    rec.start(n, bmask)
                    try:
                        forward(model, batch, adapt, b, rec.side)
                    finally:
                        rec.active = False
                    done = rec.finish()
            rows = [rec.rows() for rec in recorders]
            ctx.fixed = True                     # the compute dtype is fixed from here on
            run.add(b, ctx.be, rows[0], rows[0] if same else rows[1], n, ctx.ct,
                    recorders[0].labels, None if same else recorders[1].labels)
            if calibration is not None:
                calibration.add_rows(ctx.be, rows[0], rows[0] if same else rows[1], n,
                                     run.acc.names_a, run.acc.names_b, run.index(b))
    except KeyboardInterrupt:
        raise CompareInterrupted(b, total, run.path, run.saved_batch) from None
    finally:
        bar.close()


def _fingerprint(model_a, model_b, layers_a, layers_b, tokens, mask, max_batches, kernel,
                 unbiased, sigma, threshold, dtype, jackknife) -> dict:
    """What a checkpoint must agree on to be resumed (plain values only)."""
    def spec(x):
        if isinstance(x, (list, tuple)):
            return [spec(v) for v in x]
        return x.__name__ if isinstance(x, type) else x if x is None or isinstance(
            x, (str, int, float, bool)) else "callable" if callable(x) else repr(x)
    return {"model_a": type(model_a).__name__,
            "model_b": None if model_b is None else type(model_b).__name__,
            "layers_a": spec(layers_a), "layers_b": spec(layers_b), "tokens": spec(tokens),
            "mask": spec(mask), "max_batches": max_batches, "kernel": kernel,
            "unbiased": unbiased, "sigma": sigma, "threshold": threshold,
            "dtype": None if dtype is None else str(dtype), "jackknife": spec(jackknife)}


@contextmanager
def _uncompiled(model):
    """The module to hook and run: ``model._orig_mod`` of a ``torch.compile`` wrapper;
    a ``module.compile()``'d module with its compiled call switched off meanwhile."""
    if model is None:
        yield None
        return
    inner = getattr(model, "_orig_mod", None)
    if isinstance(inner, nn.Module) and type(model).__name__ == "OptimizedModule":
        yield inner
        return
    compiled = getattr(model, "_compiled_call_impl", None)
    if compiled is None:
        yield model
        return
    model._compiled_call_impl = None
    try:
        yield model
    finally:
        model._compiled_call_impl = compiled


def _token_name(mode):
    return mode if isinstance(mode, str) else "callable"


def _check_args(model_a, model_b, tokens, mask, inputs_a, inputs_b, max_batches, dtype,
                backend):
    for arg, m in (("model_a", model_a), ("model_b", model_b)):
        if m is not None and not isinstance(m, nn.Module):
            raise TypeError(f"{arg} must be a torch.nn.Module, got {type(m).__name__}")
    if model_a is None:
        raise TypeError("model_a must be a torch.nn.Module, got None")
    pair = tokens if isinstance(tokens, tuple) and len(tokens) == 2 else (tokens, tokens)
    for t in pair:
        if not (callable(t) or (isinstance(t, str) and t in TOKEN_MODES)):
            raise ValueError(f"tokens must be one of {TOKEN_MODES}, a callable, or a pair "
                             f"(tokens_a, tokens_b) of those; got {tokens!r}")
    if mask is not None and not (isinstance(mask, str) or callable(mask)):
        raise TypeError(f"mask must be None, a batch key (str) or a callable batch -> (n, T) "
                        f"mask; got {type(mask).__name__}")
    for arg, f in (("inputs_a", inputs_a), ("inputs_b", inputs_b)):
        if f is not None and not callable(f):
            raise TypeError(f"{arg} must be a callable batch -> model arguments, got "
                            f"{type(f).__name__}")
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")
    _validate.dtype_arg(dtype)
    backends.check_name(backend)
    return Tokens(pair[0]), Tokens(pair[1])
