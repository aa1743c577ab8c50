"""Backend registry and selection (docs/design.md §4).

``select(name, device)`` returns the backend for a call: ``"torch"`` (pure PyTorch, any
device), ``"native"`` (flashcka._C: C++ CPU kernels), ``"triton"`` (GPU kernels; CPU
tensors too when TRITON_INTERPRET=1) or ``"auto"``: native for CPU tensors and Triton for
CUDA tensors where they are built and usable, the torch backend otherwise — and the torch
backend whenever the result must carry an autograd graph (only it differentiates).
"""
from __future__ import annotations

import warnings

import torch

from .._warning import FlashCKAWarning
from .base import Backend, ZeroBandwidthError, float64_shift
from .torch_backend import TorchBackend

NAMES = ("auto", "torch", "native", "triton")
_instances: dict[str, Backend] = {"torch": TorchBackend()}
_warned: set[str] = set()


def check_name(name: str) -> None:
    if name not in NAMES:
        raise ValueError(f"backend must be one of {NAMES}, got {name!r}")


def get(name: str) -> Backend:
    """The backend object called ``name`` (created on first use)."""
    check_name(name)
    if name == "auto":
        raise ValueError("get() takes a concrete backend name; use select() for 'auto'")
    if name not in _instances:
        if name == "native":
            from .native import NativeBackend
            _instances[name] = NativeBackend()
        else:
            from .triton_backend import TritonBackend
            _instances[name] = TritonBackend()
    return _instances[name]


def select(name: str, x: torch.Tensor, *, grad: bool = False) -> Backend:
    """The backend to run on tensors like ``x`` (device and dtype).

    ``grad``: the result must carry an autograd graph. Then "auto" gives the torch
    backend (plain torch operations, differentiable on every device), and a forced
    backend that cannot differentiate raises a ValueError saying so."""
    check_name(name)
    if grad:
        if name == "auto":
            return get("torch")
        if not get(name).differentiable:
            raise ValueError(
                f"backend={name!r} cannot differentiate: an input requires grad, and its "
                f"kernels return detached results. Use backend='torch' or 'auto' for a "
                f"result that carries the graph, or detach the inputs / use torch.no_grad()")
    if name == "auto":
        for candidate in _auto_order(x.device):
            try:
                be = get(candidate)
                ok, why = be.usable()
            except ImportError as e:
                ok, why = False, f"{type(e).__name__}: {e}"
            if ok and be.accepts(x) and be.preferred(x):
                if candidate == "triton":   # first use per dtype: checked against torch
                    from .triton_backend import fail_safe
                    if not fail_safe(be, x, strict=False):
                        return get("torch")
                return be
            if not ok and candidate not in _warned:
                _warned.add(candidate)
                warnings.warn(f"flashcka: the {candidate} backend is not usable ({why}); "
                              f"using the torch backend", FlashCKAWarning, stacklevel=3)
        return get("torch")
    be = get(name)
    ok, why = be.usable()
    if not ok:
        raise RuntimeError(f"backend={name!r} is not usable here: {why}")
    if not be.accepts(x):
        raise ValueError(f"backend={name!r} does not run on {x.device} tensors of dtype "
                         f"{x.dtype}; use backend='auto' or 'torch'")
    if name == "triton":
        from .triton_backend import fail_safe
        fail_safe(be, x, strict=True)    # raises if its first-use check failed
    return be


def _auto_order(device: torch.device) -> tuple[str, ...]:
    if device.type == "cuda":
        return ("triton",)
    if device.type == "cpu":
        return ("native",)
    return ()


__all__ = ["Backend", "ZeroBandwidthError", "NAMES", "check_name", "get", "select"]
