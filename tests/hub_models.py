"""Test helper: import torchvision, timm and transformers where they can be made to load.

The registry's torchvision wheel is a CUDA build: next to the CPU torch its compiled ops
(``torchvision._C``) do not load, and ``import torchvision`` stops in its meta
registrations with "operator torchvision::nms does not exist". Defining the schemas of the
two ops it registers fake kernels for (``torchvision::nms``, ``torchvision::qnms``) with
``torch.library`` lets the import, and every model builder, go through; the ops themselves
stay unusable (no detection post-processing), which no CKA test needs.

This lives in the tests, never in the package: an installation whose torchvision matches its
torch imports normally and this helper then does nothing. Usage::

    from hub_models import need_timm, need_torchvision, need_transformers
    tv = need_torchvision()          # the module, or pytest.skip with the reason
"""
from __future__ import annotations

import importlib
import sys

import pytest
import torch

_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor qdets, Tensor scores, float iou_threshold) -> Tensor")
_LIB = None          # the torch.library.Library must stay alive for the schemas to stay
_FAILED: dict[str, str] = {}


def _purge(name: str) -> None:
    for k in [k for k in sys.modules if k == name or k.startswith(name + ".")]:
        del sys.modules[k]


def load_torchvision():
    """Import torchvision, defining the two op schemas first if its compiled ops do not
    load. Returns the module; raises ImportError (with the reason) when it still fails."""
    global _LIB
    if "torchvision" in _FAILED:
        raise ImportError(_FAILED["torchvision"])
    try:
        return importlib.import_module("torchvision")
    except ImportError as e:
        _FAILED["torchvision"] = f"torchvision is not installed ({e})"
        raise ImportError(_FAILED["torchvision"]) from None
    except RuntimeError as e:
        if "torchvision::nms does not exist" not in str(e):
            _FAILED["torchvision"] = f"import torchvision failed: {e}"
            raise ImportError(_FAILED["torchvision"]) from None
    _purge("torchvision")
    if _LIB is None:
        _LIB = torch.library.Library("torchvision", "DEF")
        for schema in _SCHEMAS:
            _LIB.define(schema)
    try:
        return importlib.import_module("torchvision")
    except Exception as e:   # noqa: BLE001 - any failure here means "cannot test"
        _purge("torchvision")
        _FAILED["torchvision"] = (f"import torchvision failed even with the nms/qnms schemas "
                                  f"defined: {type(e).__name__}: {e}")
        raise ImportError(_FAILED["torchvision"]) from None


def _need(name: str, needs_torchvision: bool):
    if needs_torchvision:
        try:
            load_torchvision()
        except ImportError as e:
            pytest.skip(f"{name} needs torchvision, which does not load here: {e}")
    try:
        return importlib.import_module(name)
    except Exception as e:   # noqa: BLE001
        pytest.skip(f"{name} does not import here: {type(e).__name__}: {e}")


def need_torchvision():
    """torchvision, or skip the test saying why it does not load."""
    try:
        return load_torchvision()
    except ImportError as e:
        pytest.skip(str(e))


def need_timm():
    """timm (which imports torchvision), or skip the test saying why."""
    return _need("timm", True)


def need_transformers():
    """transformers, or skip the test saying why. Its image processors import torchvision
    when present, so the schemas are defined first where torchvision is installed."""
    try:
        load_torchvision()
    except ImportError:
        pass
    return _need("transformers", False)
