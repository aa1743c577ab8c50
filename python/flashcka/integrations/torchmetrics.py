"""``MinibatchCKA`` as a ``torchmetrics.Metric`` (extra: ``pip install flashcka[torchmetrics]``).

Minibatch CKA (Nguyen, Raghu & Kornblith 2021) between L_A layers of one model and L_B of
another, in a Lightning validation loop::

    from flashcka.integrations.torchmetrics import MinibatchCKA
    self.cka = MinibatchCKA(len(layers_a), len(layers_b))      # in __init__
    self.cka.update(acts_a, acts_b)                            # each validation step
    matrix = self.cka.compute()                                # (L_A, L_B) float64

The constructor is ``flashcka.MinibatchCKA``'s (plus torchmetrics' own keywords such as
``sync_on_compute`` or ``process_group``); ``update(xs, ys=None)`` takes the same batches.
The metric states are flashcka's float64 accumulators — ``cross`` (L_A, L_B), ``hsic_a``,
``hsic_b``, ``sq_c_a``, ``sq_a``, ``sq_c_b``, ``sq_b``, ``num_batches``, ``num_samples`` —
every one reduced by sum, which is exact for minibatch CKA: torchmetrics' DDP sync (or
``merge_state``) gives the CKA of all ranks' batches. ``forward`` returns the batch's own
CKA and adds the batch to the totals, as for every torchmetrics metric.
"""
from __future__ import annotations

import torch
from torchmetrics import Metric

from .. import minibatch

__all__ = ["MinibatchCKA"]

_TM_KEYWORDS = ("compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn",
                "distributed_available_fn", "sync_on_compute", "compute_with_cache")


class MinibatchCKA(Metric):
    """torchmetrics wrapper of ``flashcka.MinibatchCKA`` (same constructor and ``update``);
    ``compute()`` -> (L_A, L_B) float64, NaN (with a warning) for zero-variance layers."""

    full_state_update = False
    is_differentiable = False
    higher_is_better = True

    def __init__(self, num_layers_a: int, num_layers_b: int | None = None, **kwargs):
        tm = {k: kwargs.pop(k) for k in _TM_KEYWORDS if k in kwargs}
        super().__init__(**tm)
        if kwargs.get("jackknife"):
            raise ValueError("jackknife standard errors are not synchronised by torchmetrics; "
                             "use flashcka.MinibatchCKA for them")
        self._acc = minibatch.MinibatchCKA(num_layers_a, num_layers_b, **kwargs)
        la, lb = self._acc.num_layers_a, self._acc.num_layers_b
        shapes = {"cross": (la, lb), "hsic_a": (la,), "hsic_b": (lb,), "sq_c_a": (la,),
                  "sq_a": (la,), "sq_c_b": (lb,), "sq_b": (lb,)}
        for k in minibatch.MinibatchCKA._TENSORS:
            self.add_state(k, torch.zeros(shapes[k], dtype=torch.float64), dist_reduce_fx="sum")
        for k in ("num_batches", "num_samples", "float32_batches"):
            self.add_state(k, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, xs, ys=None) -> None:
        """Add one minibatch (validated first; a failing batch adds nothing)."""
        acc = self._acc
        acc.reset()
        acc.update(xs, ys)
        for k in acc._TENSORS:
            state = getattr(self, k)
            state += getattr(acc, k).to(state.device)
        self.num_batches += 1
        self.num_samples += acc.num_samples
        self.float32_batches += int(acc.compute_dtype != torch.float64)

    def compute(self) -> torch.Tensor:
        """Minibatch CKA of every pair over all batches (and ranks) -> (L_A, L_B) float64."""
        nb = int(self.num_batches)
        if nb == 0:
            raise RuntimeError("MinibatchCKA.compute() before any update(): no batches added")
        acc = self._acc
        acc.reset()
        for k in acc._TENSORS:
            setattr(acc, k, getattr(self, k).clone())
        acc.num_batches, acc.num_samples = nb, int(self.num_samples)
        acc.compute_dtype = torch.float32 if int(self.float32_batches) else torch.float64
        return acc.compute()

    @property
    def names_a(self) -> list[str]:
        return list(self._acc.names_a)

    @property
    def names_b(self) -> list[str]:
        return list(self._acc.names_b)
