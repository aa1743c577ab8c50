"""Batches and model calls for ``compare``: moving a batch to the device, its sample
count and padding mask, running a model on it, and the errors that say the fix (a dict
batch passed as keyword arguments, a ``(label, input)`` batch, dtype and device
mismatches, ``device='cuda'`` without CUDA)."""
from __future__ import annotations

from collections.abc import Mapping

import torch


def forward(model, batch, adapt, b, side):
    """Run one model on one batch; an error that a wrong input mapping or a dtype/device
    mismatch explains is raised again saying the fix (the model's own error chained)."""
    try:
        return _call(model, batch, adapt)
    except (TypeError, RuntimeError, ValueError, IndexError) as e:
        try:
            hint = _forward_hint(e, model, batch, adapt, b, side)
        except Exception:  # noqa: BLE001 - a hint must never hide the model's own error
            hint = None
        if hint is None:
            raise
        try:
            said = type(e)(f"{side} failed on batch {b} ({type(e).__name__}: {e}); {hint}")
        except Exception:  # noqa: BLE001 - an exception type with another constructor
            raise e from None
        raise said from e


def _forward_hint(e, model, batch, adapt, b, side):
    """What to change when ``model(batch)`` raised ``e``, or None when no fix is known."""
    arg = "inputs_" + side[-1]
    msg = str(e)
    inputs = list(_tensors(adapt(batch) if adapt is not None else batch[0]
                           if isinstance(batch, (tuple, list)) and batch else batch))
    params = {p.dtype for p in model.parameters() if p.is_floating_point()}
    given = {t.dtype for t in inputs if t.is_floating_point()}
    if params and given and not given & params and isinstance(e, RuntimeError):
        want = ", ".join(sorted(str(d).replace("torch.", "") for d in params))
        got = ", ".join(sorted(str(d).replace("torch.", "") for d in given))
        x = "batch" if isinstance(batch, torch.Tensor) else "batch[0]" \
            if isinstance(batch, (tuple, list)) else "INPUT"
        return (f"{side} has {want} parameters but the batch's input is {got}: convert one "
                f"to the other, e.g. {side}.to(torch.{got.split(',')[0]}) or "
                f"{arg}=lambda batch: {x}.to(torch.{want.split(',')[0]})")
    devices = {p.device for p in model.parameters()}
    if devices and inputs and any(t.device not in devices for t in inputs) \
            and isinstance(e, RuntimeError) and "device" in msg:
        where = ", ".join(sorted(str(d) for d in devices))
        return (f"{side}'s parameters are on {where} but the batch was moved to "
                f"{inputs[0].device}: move the model ({side}.to('{inputs[0].device}')) or "
                f"pass device='{where.split(',')[0]}'")
    if adapt is not None:
        return None
    if isinstance(batch, Mapping) and isinstance(e, TypeError):
        return (f"a dict batch is passed as keyword arguments, {side}(**batch) with keys "
                f"{list(batch)}; if {side} takes one of them as its input, pass e.g. "
                f"{arg}=lambda batch: batch[{next(iter(batch))!r}] (a tensor is one "
                f"positional argument, a tuple several, a dict keyword arguments)")
    if isinstance(batch, (tuple, list)) and len(batch) > 1:
        first = batch[0]
        other = next((i for i, t in enumerate(batch[1:], 1) if isinstance(t, torch.Tensor)
                      and t.is_floating_point() and t.dim() > 1), None)
        looks_wrong = not isinstance(first, torch.Tensor) or not first.is_floating_point() \
            or first.dim() < 2
        if looks_wrong and other is not None:
            desc = (f"a {first.dtype} tensor of shape {tuple(first.shape)}"
                    if isinstance(first, torch.Tensor) else type(first).__name__)
            return (f"a {type(batch).__name__} batch gives its first item to the model, here "
                    f"{desc}; the input looks like item {other} (shape "
                    f"{tuple(batch[other].shape)}): pass {arg}=lambda batch: batch[{other}]")
    return None


def _call(model, batch, adapt=None):
    if adapt is not None:
        args = adapt(batch)
        if isinstance(args, Mapping):
            return model(**args)
        if isinstance(args, (tuple, list)):
            return model(*args)
        return model(args)
    if isinstance(batch, Mapping):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(batch[0])
    return model(batch)


def batch_mask(batch, mask, n, b):
    """The batch's (n, T) bool padding mask, or None."""
    if mask is None:
        return None
    if isinstance(mask, str):
        if not isinstance(batch, Mapping) or mask not in batch:
            keys = list(batch) if isinstance(batch, Mapping) else type(batch).__name__
            raise ValueError(f"mask={mask!r}: batch {b} has no such key (keys: {keys})")
        m = batch[mask]
    else:
        m = mask(batch)
    if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[0] != n:
        shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
        raise ValueError(f"mask of batch {b} must be an (n, T) = ({n}, T) tensor, got {shape}")
    return m != 0


def input_dtype(batch):
    t = next(_tensors(batch), None)
    return None if t is None else t.dtype


def to_device(batch, device):
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, Mapping):
        return {k: to_device(v, device) for k, v in batch.items()}
    if isinstance(batch, list):
        return [to_device(v, device) for v in batch]
    if isinstance(batch, tuple):
        return tuple(to_device(v, device) for v in batch)
    return batch


def batch_size(batch, b) -> int:
    """The batch's sample count: the leading size of its inputs' first tensor, skipping
    entries of leading size 1 that broadcast (``position_ids`` (1, T) before
    ``input_ids`` (B, T) made a batch of B "n = 1")."""
    sizes = [int(t.shape[0]) for t in _tensors(batch[0] if isinstance(batch, (tuple, list))
                                                 and batch else batch) if t.dim() > 0]
    if not sizes:
        raise TypeError(f"batch {b} holds no input tensor with a batch dimension (got "
                        f"{type(batch).__name__}); the loader must yield tensors, "
                        f"(input, target) tuples or dicts of tensors")
    return next((n for n in sizes if n > 1), sizes[0])


def _tensors(obj):
    """Every tensor in obj (nested tuples, lists and dicts), in order."""
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    values = obj.values() if isinstance(obj, Mapping) else obj \
        if isinstance(obj, (tuple, list)) else ()
    for v in values:
        yield from _tensors(v)


def device_arg(device, model) -> torch.device:
    """``device=`` as a torch.device (default: the model's); a CUDA device on a machine or
    torch build without one is refused, naming the fix."""
    if device is None:
        return _model_device(model)
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device={device!r} is not a device ({e}); pass e.g. 'cpu' or "
                         f"'cuda:0'") from None
    if dev.type == "meta":
        raise ValueError(f"device={device!r} holds shapes but no values to compare; pass "
                         f"device='cpu' or a GPU such as 'cuda:0'")
    if dev.type == "cuda" and not torch.cuda.is_available():
        why = "was built without CUDA" if torch.version.cuda is None else "sees no GPU"
        raise ValueError(f"device={device!r}, but this torch ({torch.__version__}) {why}; "
                         f"pass device='cpu' or leave device=None (the models' device)")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise ValueError(f"device={device!r}, but there are {torch.cuda.device_count()} CUDA "
                         f"devices; pass device='cuda:0' … or leave device=None")
    return dev


def _model_device(model) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")
