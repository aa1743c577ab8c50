"""What is built and usable in this process: ``flashcka.capabilities()``."""
from __future__ import annotations

import torch


def capabilities() -> dict:
    """Backends with (usable, reason), the compiled module's features, and versions."""
    from .._version import __version__
    from .. import backends
    info = {"flashcka": __version__, "torch": torch.__version__,
            "cuda_available": torch.cuda.is_available(), "backends": {}}
    for name in backends.NAMES[1:]:
        try:
            ok, why = backends.get(name).usable()
        except Exception as e:  # an import error of an optional backend is a reason, not a crash
            ok, why = False, f"{type(e).__name__}: {e}"
        info["backends"][name] = {"usable": ok, "reason": why}
    try:
        from .. import _C
        keys = ("has_", "blas", "simd", "threads")
        info["native"] = {k: getattr(_C, k) for k in dir(_C)
                          if k.startswith(keys) and not callable(getattr(_C, k))}
    except ImportError as e:
        info["native"] = {"error": str(e)}
    info["auto_cpu"] = backends.get("native").auto_rule()
    from .specs import hub_status
    info["hub"] = hub_status()
    try:
        import triton
        info["triton"] = triton.__version__
    except ImportError:
        info["triton"] = None
    return info


def format_capabilities(info: dict) -> str:
    lines = [f"flashcka {info['flashcka']}  torch {info['torch']}  triton {info['triton']}  "
             f"CUDA available: {info['cuda_available']}"]
    for name, b in info["backends"].items():
        state = "usable" if b["usable"] else f"not usable: {b['reason']}"
        lines.append(f"  backend {name:7s} {state}")
    lines.append(f"  compiled module: {info['native']}")
    lines.append(f"  backend='auto' on CPU tensors runs native for {info['auto_cpu']}; "
                 f"FLASHCKA_SIMD=avx512|avx2|0 forces a kernel set")
    for name, state in info.get("hub", {}).items():
        lines.append(f"  {name}: {state}")
    return "\n".join(lines)
