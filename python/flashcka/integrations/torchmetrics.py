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

from ..core import engine as _engine, minibatch

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
        # The layer order (names, matched dict keys) and compute dtype live in _acc, for
        # every batch; the sums are the metric states.
        self._acc = minibatch.MinibatchCKA(num_layers_a, num_layers_b, **kwargs)
        la, lb = self._acc.num_layers_a, self._acc.num_layers_b
        shapes = {"cross": (la, lb), "hsic_a": (la,), "hsic_b": (lb,), "sq_c_a": (la,),
                  "sq_a": (la,), "sq_c_b": (lb,), "sq_b": (lb,)}
        for k, shape in shapes.items():
            self.add_state(k, torch.zeros(shape, dtype=torch.float64), dist_reduce_fx="sum")
        for k in ("num_batches", "num_samples"):
            self.add_state(k, torch.zeros((), dtype=torch.int64), dist_reduce_fx="sum")

    def update(self, xs, ys=None) -> None:
        """Add one minibatch (validated and computed first; a failing batch adds nothing).
        Dict batches are matched by key as in ``flashcka.MinibatchCKA``: a dict after
        sequence batches without names raises. States are summed in the inputs' units, so
        a batch whose HSICs leave float64's range raises (``flashcka.MinibatchCKA`` keeps
        per-layer units and takes it)."""
        acc = self._acc
        new = acc._prepare(xs, ys, alone=True)
        h = _engine.Hsics(new["cross"], new["hsic_a"], new["hsic_b"], new["pow_a"],
                          new["pow_b"])
        sums = {"cross": _engine.in_units(h, new["names_a"], new["names_b"]),
                "hsic_a": _self_in_units(h.self_a, h.ea, new["names_a"]),
                "hsic_b": _self_in_units(h.self_b, h.eb, new["names_b"]),
                **{k: new[k] for k in ("sq_c_a", "sq_a", "sq_c_b", "sq_b")}}
        acc._commit({**{k: new[k] for k in ("names_a", "names_b", "keyed_a", "keyed_b",
                                             "compute_dtype")},
                     "num_batches": acc.num_batches + 1})
        for k, v in sums.items():
            state = getattr(self, k)
            state += v.to(state.device)
        self.num_batches += 1
        self.num_samples += new["num_samples"]

    def compute(self) -> torch.Tensor:
        """Minibatch CKA of every pair over all batches (and ranks) -> (L_A, L_B) float64."""
        if int(self.num_batches) == 0:
            raise RuntimeError("MinibatchCKA.compute() before any update(): no batches added")
        zero = lambda sq_c: _engine.zero_variance(sq_c, None, None)  # noqa: E731
        return _engine.cka_from_hsic(self.cross, self.hsic_a, self.hsic_b, zero(self.sq_c_a),
                                     zero(self.sq_c_b), self._acc.names_a, self._acc.names_b)

    @property
    def names_a(self) -> list[str]:
        return list(self._acc.names_a)

    @property
    def names_b(self) -> list[str]:
        return list(self._acc.names_b)


def _self_in_units(v, e, names):
    """Self HSICs ``v · 2^(2e)`` in the inputs' units; outside float64's range raises."""
    out = _engine.ldexp(v, 2 * e)
    bad = ~torch.isfinite(out) | ((out.abs() < torch.finfo(torch.float64).tiny) & (v != 0))
    if bool(bad.any()):
        i = int(bad.nonzero()[0])
        raise ValueError(f"the HSIC of {names[i]} with itself leaves float64's range in the "
                         f"inputs' units, which torchmetrics states sum as they are; rescale "
                         f"the inputs or use flashcka.MinibatchCKA")
    return out
