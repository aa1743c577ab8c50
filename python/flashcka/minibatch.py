"""Minibatch CKA for all layer pairs (Nguyen, Raghu & Kornblith 2021)."""
from __future__ import annotations

import torch

from . import _engine, _validate, backends
from ._engine import Settings


class MinibatchCKA:
    """Accumulates minibatch CKA between L_A layers of one model and L_B of another.

    Over batches b = 1..k (each of its own size n_b ≥ 4 when unbiased)::

        CKA_ij = Σ_b HSIC(K_i^b, L_j^b) / sqrt(Σ_b HSIC(K_i^b, K_i^b) · Σ_b HSIC(L_j^b, L_j^b))

    each HSIC normalised by its own batch's n_b(n_b − 3) (unbiased, HSIC₁) or (n_b − 1)²
    (biased). Accumulators are float64. With ``num_layers_b=None`` the layers of one model
    are compared with each other (``update(xs)``, one Gram per layer per batch).
    RBF with ``sigma=None`` applies the median heuristic to each batch separately.

    ``update(xs, ys=None)``: xs a sequence (or name -> tensor dict) of L_A tensors (n_b, ...).
    ``compute()``: (L_A, L_B) float64. ``state_dict()``/``load_state_dict()`` resume a run;
    ``all_reduce()`` sums the accumulators over torch.distributed ranks.
    """

    def __init__(self, num_layers_a: int, num_layers_b: int | None = None, *,
                 kernel: str = "linear", unbiased: bool = True, sigma: float | None = None,
                 threshold: float = 1.0, dtype: torch.dtype | None = None,
                 backend: str = "auto", names_a=None, names_b=None):
        for arg, v in (("num_layers_a", num_layers_a), ("num_layers_b", num_layers_b)):
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ValueError(f"{arg} must be a positive int, got {v!r}")
        self.settings = Settings(kernel, unbiased, sigma, threshold)
        self.settings.check()
        _validate.dtype_arg(dtype)
        backends.check_name(backend)
        self.same = num_layers_b is None
        self.num_layers_a = num_layers_a
        self.num_layers_b = num_layers_a if self.same else num_layers_b
        self.dtype, self.backend = dtype, backend
        self.names_a = self._names(names_a, num_layers_a, "a")
        self.names_b = self.names_a if self.same else self._names(names_b, self.num_layers_b, "b")
        self.reset()

    @staticmethod
    def _names(names, count, side):
        if names is None:
            return [f"{side}[{i}]" for i in range(count)]
        names = [str(n) for n in names]
        if len(names) != count:
            raise ValueError(f"names_{side} has {len(names)} names for {count} layers")
        return names

    def reset(self) -> None:
        """Forget every batch."""
        self.cross = self.hsic_a = self.hsic_b = None
        self.sq_c_a = self.sq_a = self.sq_c_b = self.sq_b = None
        self.num_batches = 0
        self.num_samples = 0
        self.compute_dtype = None

    # ------------------------------------------------------------------ accumulation
    @torch.no_grad()
    def update(self, xs, ys=None) -> None:
        """Add one minibatch: xs (L_A tensors (n, ...)), ys (L_B tensors, same n; None
        when comparing one model with itself). Validates everything before adding, so a
        failing batch leaves the accumulated state untouched."""
        xa, na = _validate.representations(xs, "xs")
        self._check_count(xa, self.num_layers_a, "xs")
        if self.same:
            if ys is not None:
                raise ValueError("this MinibatchCKA compares one model with itself "
                                 "(num_layers_b=None): call update(xs) without ys")
            groups = [(xa, self._layer_names(na, self.names_a, xs))]
        else:
            if ys is None:
                raise ValueError(f"ys is missing: this MinibatchCKA compares "
                                 f"{self.num_layers_a} layers with {self.num_layers_b}")
            xb, nb = _validate.representations(ys, "ys")
            self._check_count(xb, self.num_layers_b, "ys")
            groups = [(xa, self._layer_names(na, self.names_a, xs)),
                      (xb, self._layer_names(nb, self.names_b, ys))]
        s = self.settings
        n = _validate.sample_count(groups, s.unbiased)
        _validate.device_of(groups)
        ct = self.compute_dtype or _validate.compute_dtype(groups, self.dtype)
        be = backends.select(self.backend, xa[0])
        ra = _engine.gram_rows(be, *groups[0], n, ct, s)
        rb = ra if self.same else _engine.gram_rows(be, *groups[1], n, ct, s)
        self.add_rows(be, ra, rb, n, ct)

    def add_rows(self, be, ra: _engine.Rows, rb: _engine.Rows, n: int, ct) -> None:
        """Add one batch given its centered Gram rows (used by ``update`` and by the hooks
        of ``compare``, which build rows as each layer's output appears)."""
        cross, ha, hb = _engine.hsic_from_rows(be, ra, rb, self.same, n, self.settings.unbiased)
        if self.cross is None:
            dev = cross.device
            z = lambda k: torch.zeros(k, dtype=torch.float64, device=dev)  # noqa: E731
            self.cross = torch.zeros_like(cross)
            self.hsic_a, self.sq_c_a, self.sq_a = z(self.num_layers_a), z(self.num_layers_a), \
                z(self.num_layers_a)
            self.hsic_b, self.sq_c_b, self.sq_b = z(self.num_layers_b), z(self.num_layers_b), \
                z(self.num_layers_b)
            self.compute_dtype = ct
        self.cross += cross.to(self.cross.device)
        self.hsic_a += ha.to(self.cross.device)
        self.hsic_b += hb.to(self.cross.device)
        self.sq_c_a += ra.sq_c.to(self.cross.device)
        self.sq_a += ra.sq.to(self.cross.device)
        self.sq_c_b += rb.sq_c.to(self.cross.device)
        self.sq_b += rb.sq.to(self.cross.device)
        self.num_batches += 1
        self.num_samples += n

    def compute(self) -> torch.Tensor:
        """Minibatch CKA of every pair -> (L_A, L_B) float64; NaN (with a warning naming
        the layer) for zero-variance layers."""
        if self.num_batches == 0:
            raise RuntimeError("MinibatchCKA.compute() before any update(): no batches added")
        ct = self.compute_dtype
        return _engine.cka_from_hsic(self.cross, self.hsic_a, self.hsic_b,
                                     _engine.zero_variance(self.sq_c_a, self.sq_a, ct),
                                     _engine.zero_variance(self.sq_c_b, self.sq_b, ct),
                                     self.names_a, self.names_b)

    # ------------------------------------------------------------------ state
    _TENSORS = ("cross", "hsic_a", "hsic_b", "sq_c_a", "sq_a", "sq_c_b", "sq_b")

    def state_dict(self) -> dict:
        """Everything needed to resume: accumulators (float64), counts and settings."""
        s = self.settings
        return {
            "version": 1,
            "settings": {"kernel": s.kernel, "unbiased": s.unbiased, "sigma": s.sigma,
                         "threshold": s.threshold, "num_layers_a": self.num_layers_a,
                         "num_layers_b": None if self.same else self.num_layers_b},
            "names_a": list(self.names_a), "names_b": list(self.names_b),
            "num_batches": self.num_batches, "num_samples": self.num_samples,
            "compute_dtype": None if self.compute_dtype is None else str(self.compute_dtype),
            **{k: None if getattr(self, k) is None else getattr(self, k).detach().cpu().clone()
               for k in self._TENSORS},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; the settings and layer counts must match this one."""
        mine = self.state_dict()["settings"]
        if state.get("settings") != mine:
            raise ValueError(f"state_dict settings {state.get('settings')} do not match this "
                             f"MinibatchCKA's {mine}")
        self.names_a = list(state["names_a"])
        self.names_b = self.names_a if self.same else list(state["names_b"])
        self.num_batches = int(state["num_batches"])
        self.num_samples = int(state["num_samples"])
        cd = state["compute_dtype"]
        self.compute_dtype = None if cd is None else getattr(torch, cd.replace("torch.", ""))
        for k in self._TENSORS:
            v = state[k]
            setattr(self, k, None if v is None else v.to(torch.float64).clone())

    def all_reduce(self, group=None) -> None:
        """Sum the accumulators and counts over the ranks of a torch.distributed group, so
        that every rank's ``compute()`` gives the CKA of all ranks' batches."""
        import torch.distributed as dist
        if self.cross is None:
            raise RuntimeError("all_reduce() before any update() on this rank")
        flat = torch.cat([getattr(self, k).reshape(-1) for k in self._TENSORS]
                         + [torch.tensor([self.num_batches, self.num_samples],
                                         dtype=torch.float64, device=self.cross.device)])
        dist.all_reduce(flat, group=group)
        offset = 0
        for k in self._TENSORS:
            t = getattr(self, k)
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        self.num_batches, self.num_samples = int(flat[-2]), int(flat[-1])

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_count(tensors, expected, arg):
        if len(tensors) != expected:
            raise ValueError(f"{arg} has {len(tensors)} representations; this MinibatchCKA "
                             f"was made for {expected}")

    @staticmethod
    def _layer_names(given, configured, original):
        """Messages name layers by the dict keys given, else by the configured names."""
        from collections.abc import Mapping
        return given if isinstance(original, Mapping) else configured
