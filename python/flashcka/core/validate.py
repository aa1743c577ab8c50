"""Input checks shared by every public entry point (docs/design.md §6).

Everything here runs before any native or Triton call: kernels receive only floating
tensors of consistent sample count, on one device, with non-empty features.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Mapping, Sequence

import torch

from .._warning import FlashCKAWarning  # noqa: F401 (validate.FlashCKAWarning)

KERNELS = ("linear", "rbf")
COMPUTE_DTYPES = (torch.float32, torch.float64)


def representations(xs, arg: str) -> tuple[list[torch.Tensor], list[str]]:
    """Normalise ``xs`` (a tensor, a sequence of tensors or a name -> tensor mapping) to
    a list of tensors and their names; the names are used in every message. NumPy arrays
    are taken as ``torch.from_numpy`` views (no copy)."""
    if isinstance(xs, torch.Tensor):
        tensors, names = [xs], [arg]
    elif type(xs).__name__ == "ndarray":
        tensors, names = [_from_numpy(xs, arg)], [arg]
    elif isinstance(xs, Mapping):
        names, tensors = [str(k) for k in xs.keys()], list(xs.values())
    elif isinstance(xs, Sequence) and not isinstance(xs, (str, bytes)):
        tensors, names = list(xs), [f"{arg}[{i}]" for i in range(len(xs))]
    else:
        raise TypeError(f"{arg} must be a tensor, a sequence of tensors or a dict of tensors; "
                        f"got {type(xs).__name__}")
    if not tensors:
        raise ValueError(f"{arg} is empty: give at least one representation")
    for i, name in enumerate(names):
        t = tensors[i]
        if type(t).__name__ == "ndarray":
            t = tensors[i] = _from_numpy(t, name)
        representation(t, name)
    return tensors, names


def as_tensor(x, name: str):
    """``x`` itself, or a NumPy array as a ``torch.from_numpy`` view (no copy)."""
    return _from_numpy(x, name) if type(x).__name__ == "ndarray" else x


def _from_numpy(a, name: str) -> torch.Tensor:
    """A NumPy array as a tensor sharing its memory; what torch cannot view is named."""
    try:
        return torch.from_numpy(a)
    except (TypeError, ValueError) as e:
        raise TypeError(f"{name} is a NumPy array that torch.from_numpy cannot take ({e}); "
                        f"pass a float32/float64 array, e.g. {name}.astype('float32')") from None


def representation(x, name: str) -> None:
    """One representation: a floating tensor of shape (n, ...) with at least one feature."""
    if not isinstance(x, torch.Tensor):
        hint = " (convert it with torch.from_numpy)" if type(x).__name__ == "ndarray" else ""
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}{hint}")
    if x.layout is not torch.strided or x.is_meta:
        storage(x, name)
    if not x.is_floating_point():  # (complex tensors are not floating point either)
        raise TypeError(f"{name} has dtype {x.dtype}; CKA needs real floating-point "
                        f"activations (float16, bfloat16, float32 or float64)")
    shape = x.shape
    if not shape:
        raise ValueError(f"{name} is a scalar; a representation has shape (n, ...)")
    if shape[0] == 0 or math.prod(shape[1:]) == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)}): a representation needs "
                         f"at least one sample and one feature")


def storage(x: torch.Tensor, name: str) -> None:
    """A dense tensor with data: sparse layouts and meta tensors are refused by name."""
    if x.layout != torch.strided:
        raise TypeError(f"{name} is a sparse tensor (layout {x.layout}); pass {name}.to_dense()")
    if x.is_meta:
        raise ValueError(f"{name} is a meta tensor: it has a shape but no values to compare; "
                         f"pass a tensor with data (e.g. materialise the model's weights)")


def upcast_float8(tensors: list) -> list:
    """float8 tensors as float32 (exact; torch has no reductions for them; the native
    backend reads them as they are)."""
    return [t.float() if t.is_floating_point() and t.element_size() == 1 else t
            for t in tensors]


def sample_count(groups: Sequence[tuple[list[torch.Tensor], list[str]]], unbiased: bool) -> int:
    """The common number of samples n of every representation; n >= 4 for unbiased
    estimators (Song et al. 2012 divide by n(n-3)), n >= 2 otherwise."""
    n, first = None, None
    for tensors, names in groups:
        for t, name in zip(tensors, names):
            if n is None:
                n, first = t.shape[0], name
            elif t.shape[0] != n:
                raise ValueError(f"{name} has {t.shape[0]} samples but {first} has {n}: every "
                                 f"representation must hold the same samples (dimension 0)")
    need = 4 if unbiased else 2
    if n < need:
        kind = "unbiased (debiased) estimators need n >= 4" if unbiased else \
            "the biased estimator needs n >= 2"
        raise ValueError(f"{first} has n = {n} samples; {kind}"
                         + ("; pass unbiased=False for the biased estimator" if unbiased else ""))
    return n


def device_of(groups: Sequence[tuple[list[torch.Tensor], list[str]]]) -> torch.device:
    device, first = None, None
    for tensors, names in groups:
        for t, name in zip(tensors, names):
            if device is None:
                device, first = t.device, name
            elif t.device != device:
                raise ValueError(f"{name} is on {t.device} but {first} is on {device}; "
                                 f"move them to one device")
    return device


def dtype_arg(dtype) -> None:
    """The ``dtype=`` keyword: None (choose from the inputs), float32 or float64."""
    if dtype is not None and (not isinstance(dtype, torch.dtype)
                              or dtype not in COMPUTE_DTYPES):
        raise ValueError(f"dtype must be torch.float32 or torch.float64, got {dtype}")


def compute_dtype(groups, dtype) -> torch.dtype:
    """float64 if asked or if any input is float64; float32 otherwise (bf16/fp16 upcast)."""
    dtype_arg(dtype)
    if dtype is not None:
        return dtype
    for tensors, _ in groups:
        if any(t.dtype == torch.float64 for t in tensors):
            return torch.float64
    return torch.float32


def kernel_args(kernel, sigma, threshold) -> None:
    """``kernel`` one of KERNELS; ``sigma`` None or a positive finite real number;
    ``threshold`` a positive finite real number (bools, strings, tensors refused)."""
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if sigma is not None:
        positive_number(sigma, "sigma")
    positive_number(threshold, "threshold")


def positive_number(v, arg: str) -> float:
    """A positive finite real number (int, float or NumPy scalar; not bool) as a float."""
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"{arg} must be a positive finite number, got {type(v).__name__} "
                        f"{v!r}")
    f = float(v)
    if not (0.0 < f < float("inf")):
        raise ValueError(f"{arg} must be a positive finite number, got {v!r}")
    return f


def flag(v, arg: str) -> bool:
    """A bool (Python or NumPy bool); anything else (\"no\", 0, None) is a TypeError."""
    if isinstance(v, bool) or (type(v).__module__ == "numpy"
                               and type(v).__name__ in ("bool_", "bool")):
        return bool(v)
    raise TypeError(f"{arg} must be True or False, got {type(v).__name__} {v!r}")


def route_arg(route, kernel) -> None:
    """``route=``: 'auto', 'gram', 'feature' (only for the linear kernel) or 'tiled'."""
    if not isinstance(route, str) or route not in ("auto", "gram", "feature", "tiled"):
        raise ValueError(f"route must be 'auto', 'gram', 'feature' or 'tiled', got {route!r}")
    if route == "feature" and kernel != "linear":
        raise ValueError(f"route='feature' needs kernel='linear', got kernel={kernel!r}")


def raise_non_finite(x: torch.Tensor, name: str, dtype: torch.dtype) -> None:
    """Called when a layer's centered Gram statistics came out non-finite: say why."""
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        idx = tuple(int(i) for i in bad.nonzero()[0])
        raise ValueError(f"{name} holds non-finite values ({int(bad.sum())} NaN/Inf entries; "
                         f"first at index {idx}: {x[idx].item()})")
    raise ValueError(f"{name} overflows {dtype} in its Gram matrix (largest |value| "
                     f"{x.abs().max().item():.3g}); pass dtype=torch.float64 or rescale it")
