"""Minibatch CKA for all layer pairs (Nguyen, Raghu & Kornblith 2021)."""
from __future__ import annotations

import torch

from . import _engine, _validate, backends
from ._engine import Settings
from .jackknife import BatchJackknife, auto_groups


class MinibatchCKA:
    """Accumulates minibatch CKA between L_A layers of one model and L_B of another.

    Over batches b = 1..k (each of its own size n_b ≥ 4 when unbiased)::

        CKA_ij = Σ_b HSIC(K_i^b, L_j^b) / sqrt(Σ_b HSIC(K_i^b, K_i^b) · Σ_b HSIC(L_j^b, L_j^b))

    each HSIC normalised by its own batch's n_b(n_b − 3) (unbiased, HSIC₁) or (n_b − 1)²
    (biased). Accumulators are float64. With ``num_layers_b=None`` the layers of one model
    are compared with each other (``update(xs)``, one Gram per layer per batch).
    RBF with ``sigma=None`` applies the median heuristic to each batch separately.

    ``update(xs, ys=None)``: xs a sequence (or name -> tensor dict) of L_A tensors (n_b, ...).
    Dict batches are matched by key, never by order: the keys must be exactly the layer
    names (``names_a``/``names_b`` if given, else the keys of the first dict batch); a
    missing or unknown key raises a ValueError naming it. Sequences are positional.
    ``compute()``: (L_A, L_B) float64. ``state_dict()``/``load_state_dict()`` resume a run;
    ``all_reduce()`` sums the accumulators over torch.distributed ranks.
    """

    def __init__(self, num_layers_a: int, num_layers_b: int | None = None, *,
                 kernel: str = "linear", unbiased: bool = True, sigma: float | None = None,
                 threshold: float = 1.0, dtype: torch.dtype | None = None,
                 backend: str = "auto", names_a=None, names_b=None, jackknife=0):
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
        if self.same and names_b is not None:
            raise ValueError("names_b is given but num_layers_b is None (one model compared "
                             "with itself): its layers are named by names_a")
        self.names_a = self._names(names_a, num_layers_a, "a")
        self.names_b = self.names_a if self.same else self._names(names_b, self.num_layers_b, "b")
        # Whether the names are the layers' keys (given, or adopted from a dict batch):
        # dict batches are then matched to them by key.
        self.keyed_a = names_a is not None
        self.keyed_b = self.keyed_a if self.same else names_b is not None
        self.jackknife_groups = auto_groups(self.num_layers_a, self.num_layers_b, jackknife)
        self.reset()

    @staticmethod
    def _names(names, count, side):
        if names is None:  # messages then name a layer by its place in update()'s argument
            return [f"{'xs' if side == 'a' else 'ys'}[{i}]" for i in range(count)]
        if isinstance(names, (str, bytes)) or not hasattr(names, "__iter__"):
            raise TypeError(f"names_{side} must be a sequence of layer names, got "
                            f"{type(names).__name__} {names!r}")
        names = [str(n) for n in names]
        if len(names) != count:
            raise ValueError(f"names_{side} has {len(names)} names for {count} layers")
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise ValueError(f"names_{side} repeats {dup}: layer names must be unique")
        return names

    def reset(self) -> None:
        """Forget every batch."""
        self.cross = self.hsic_a = self.hsic_b = None
        self.sq_c_a = self.sq_a = self.sq_c_b = self.sq_b = None
        self.num_batches = 0
        self.num_samples = 0
        self.compute_dtype = None
        self.jackknife = BatchJackknife(self.num_layers_a, self.num_layers_b,  # see stderr()
                                        self.jackknife_groups) if self.jackknife_groups else None

    # ------------------------------------------------------------------ accumulation
    @torch.no_grad()
    def update(self, xs, ys=None) -> None:
        """Add one minibatch: xs (L_A tensors (n, ...)), ys (L_B tensors, same n; None
        when comparing one model with itself). Validates everything before adding, so a
        failing batch leaves the accumulated state untouched."""
        if self.same and ys is not None:
            raise ValueError("this MinibatchCKA compares one model with itself "
                             "(num_layers_b=None): call update(xs) without ys")
        if not self.same and ys is None:
            raise ValueError(f"ys is missing: this MinibatchCKA compares "
                             f"{self.num_layers_a} layers with {self.num_layers_b}")
        xa, na, adopt_a = self._ordered(xs, "xs", "a")
        if self.same:
            groups = [(xa, na)]
        else:
            xb, nb, adopt_b = self._ordered(ys, "ys", "b")
            groups = [(xa, na), (xb, nb)]
        s = self.settings
        n = _validate.sample_count(groups, s.unbiased)
        _validate.device_of(groups)
        ct = self.compute_dtype or _validate.compute_dtype(groups, self.dtype)
        be = backends.select(self.backend, xa[0])
        ra = _engine.gram_rows(be, *groups[0], n, ct, s)
        rb = ra if self.same else _engine.gram_rows(be, *groups[1], n, ct, s)
        for rows, (tensors, names) in zip((ra, rb), groups):
            self._check_constant_rows(rows, tensors, names, ct)
        # Names from the first dict batch are adopted with it (messages of the pair stage
        # name them) and only if the batch goes in.
        before = (self.names_a, self.names_b, self.keyed_a, self.keyed_b)
        if adopt_a:
            self.names_a, self.keyed_a = list(na), True
            if self.same:
                self.names_b, self.keyed_b = self.names_a, True
        if not self.same and adopt_b:
            self.names_b, self.keyed_b = list(nb), True
        try:
            self.add_rows(be, ra, rb, n, ct)
        except Exception:
            self.names_a, self.names_b, self.keyed_a, self.keyed_b = before
            raise

    def _ordered(self, xs, arg, side):
        """xs as (tensors, names) in this accumulator's layer order, plus whether its dict
        keys are to be adopted as the layer names. A dict is matched by key to the names
        (given, or from the first dict batch); a sequence is positional."""
        from collections.abc import Mapping
        tensors, given = _validate.representations(xs, arg)
        expected = self.num_layers_a if side == "a" else self.num_layers_b
        names = self.names_a if side == "a" else self.names_b
        keyed = self.keyed_a if side == "a" else self.keyed_b
        if not isinstance(xs, Mapping):
            self._check_count(tensors, expected, arg)
            return tensors, names, False
        if not keyed:
            if self.num_batches:
                raise ValueError(f"{arg} is a dict but the earlier batches were sequences and "
                                 f"this MinibatchCKA has no layer names to match its keys "
                                 f"{given} to: pass names_{side}=[...] when creating it")
            self._check_count(tensors, expected, arg)
            return tensors, given, True
        by_key = dict(zip(given, tensors))
        missing = [k for k in names if k not in by_key]
        unknown = [k for k in given if k not in set(names)]
        if missing or unknown:
            raise ValueError(f"{arg} keys do not match this MinibatchCKA's layers {names}: "
                             + "; ".join(p for p in (
                                 f"missing {missing}" if missing else "",
                                 f"unknown {unknown}" if unknown else "") if p))
        return [by_key[k] for k in names], list(names), False

    def add_rows(self, be, ra: _engine.Rows, rb: _engine.Rows, n: int, ct,
                 index: int | None = None) -> None:
        """Add one batch given its centered Gram rows (used by ``update`` and by the hooks
        of ``compare``, which build rows as each layer's output appears). ``index`` picks
        the batch's jackknife slot (default: the number of batches added so far)."""
        cross, ha, hb = _engine.hsic_from_rows(be, ra, rb, self.same, n, self.settings.unbiased,
                                                self.names_a, self.names_b)
        if self.jackknife is not None:
            self.jackknife.add(self.num_batches if index is None else index, cross, ha, hb)
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

    def stderr(self, matrix: torch.Tensor | None = None) -> torch.Tensor | None:
        """Jackknife standard error of every entry of ``compute()`` -> (L_A, L_B) float64,
        or None when made with ``jackknife=0`` (the default). ``jackknife=True`` keeps up to
        64 slots within 64 MiB, an int that many slots; see ``flashcka.jackknife`` for the
        formula, its references and the memory (``groups · (L_A·L_B + L_A + L_B + 1)``
        float64). NaN with fewer than 2 batches and where the CKA is NaN."""
        if self.jackknife is None:
            return None
        if matrix is None:
            matrix = self.compute()
        return self.jackknife.stderr(self.cross, self.hsic_a, self.hsic_b, matrix)

    # ------------------------------------------------------------------ state
    _TENSORS = ("cross", "hsic_a", "hsic_b", "sq_c_a", "sq_a", "sq_c_b", "sq_b")
    _STATE_KEYS = ("version", "settings", "names_a", "names_b", "num_batches", "num_samples",
                   "compute_dtype") + _TENSORS

    def state_dict(self) -> dict:
        """Everything needed to resume: accumulators (float64), counts and settings."""
        s = self.settings
        return {
            "version": 1,
            "settings": {"kernel": s.kernel, "unbiased": s.unbiased, "sigma": s.sigma,
                         "threshold": s.threshold, "num_layers_a": self.num_layers_a,
                         "num_layers_b": None if self.same else self.num_layers_b},
            "names_a": list(self.names_a), "names_b": list(self.names_b),
            "keyed": [self.keyed_a, self.keyed_b],
            "num_batches": self.num_batches, "num_samples": self.num_samples,
            "compute_dtype": None if self.compute_dtype is None else str(self.compute_dtype),
            "jackknife": None if self.jackknife is None else self.jackknife.state_dict(),
            **{k: None if getattr(self, k) is None else getattr(self, k).detach().cpu().clone()
               for k in self._TENSORS},
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a ``state_dict()``; the settings and layer counts must match this one.
        Everything is checked first (keys, version, names, counts, dtype, every
        accumulator's type, dtype, shape and finiteness): a bad state raises a ValueError
        or TypeError naming the entry and leaves this accumulator as it was."""
        from collections.abc import Mapping
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a dict from state_dict(), got {type(state).__name__}")
        missing = sorted(k for k in self._STATE_KEYS if k not in state)
        if missing:
            raise ValueError(f"state_dict is missing {missing}")
        if state["version"] != 1:
            raise ValueError(f"state_dict version {state['version']!r} is not supported (1)")
        mine = self.state_dict()["settings"]
        if state["settings"] != mine:
            raise ValueError(f"state_dict settings {state['settings']} do not match this "
                             f"MinibatchCKA's {mine}")
        names_a = self._names(state["names_a"], self.num_layers_a, "a")
        names_b = names_a if self.same else self._names(state["names_b"], self.num_layers_b, "b")
        if self.same and list(state["names_b"]) != names_a:
            raise ValueError("state_dict names_b differs from names_a for a one-model "
                             "MinibatchCKA")
        keyed = state.get("keyed", [names_a != self._names(None, self.num_layers_a, "a"),
                                    names_b != self._names(None, self.num_layers_b, "b")])
        if (not isinstance(keyed, (list, tuple)) or len(keyed) != 2
                or not all(isinstance(k, bool) for k in keyed)):
            raise ValueError(f"state_dict keyed must be two bools, got {keyed!r}")
        counts = {}
        for k in ("num_batches", "num_samples"):
            v = state[k]
            if isinstance(v, bool) or not isinstance(v, int) or v < 0:
                raise ValueError(f"state_dict {k} must be a non-negative int, got {v!r}")
            counts[k] = v
        nb, ns = counts["num_batches"], counts["num_samples"]
        least = 4 if self.settings.unbiased else 2
        if ns < least * nb:
            raise ValueError(f"state_dict num_samples = {ns} is fewer than {least} per batch "
                             f"over num_batches = {nb}")
        cd = state["compute_dtype"]
        dtypes = {str(d): d for d in _validate.COMPUTE_DTYPES}
        if (cd is None) != (nb == 0) or (cd is not None and cd not in dtypes):
            raise ValueError(f"state_dict compute_dtype must be one of {sorted(dtypes)} "
                             f"(None only before any batch), got {cd!r} with "
                             f"num_batches = {nb}")
        la, lb = self.num_layers_a, self.num_layers_b
        shapes = {"cross": (la, lb), "hsic_a": (la,), "sq_c_a": (la,), "sq_a": (la,),
                  "hsic_b": (lb,), "sq_c_b": (lb,), "sq_b": (lb,)}
        tensors = {}
        for k in self._TENSORS:
            v = state[k]
            if v is None:
                if nb:
                    raise ValueError(f"state_dict {k} is None but num_batches = {nb}")
                tensors[k] = None
                continue
            if nb == 0:
                raise ValueError(f"state_dict {k} holds values but num_batches = 0")
            if not isinstance(v, torch.Tensor):
                raise TypeError(f"state_dict {k} must be a tensor, got {type(v).__name__}")
            if v.dtype != torch.float64:
                raise TypeError(f"state_dict {k} has dtype {v.dtype}; accumulators are "
                                f"torch.float64")
            if tuple(v.shape) != shapes[k]:
                raise ValueError(f"state_dict {k} has shape {tuple(v.shape)}; this "
                                 f"MinibatchCKA needs {shapes[k]}")
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"state_dict {k} holds non-finite values")
            if k.startswith("sq") and bool((v < 0).any()):
                raise ValueError(f"state_dict {k} holds negative squared norms")
            tensors[k] = v.detach().clone()
        devices = {t.device for t in tensors.values() if t is not None}
        if len(devices) > 1:
            raise ValueError(f"state_dict accumulators are on several devices {devices}")
        jk = state.get("jackknife")
        if (jk is None) != (self.jackknife is None):
            raise ValueError(f"state_dict jackknife is {'absent' if jk is None else 'present'} "
                             f"but this MinibatchCKA has jackknife_groups = "
                             f"{self.jackknife_groups}")
        if jk is not None:
            BatchJackknife(self.num_layers_a, self.num_layers_b,
                           self.jackknife_groups).load_state_dict(jk)   # check only
        # Everything checked: apply.
        if jk is not None:
            self.jackknife.load_state_dict(jk)
        self.names_a, self.names_b = names_a, names_b
        self.keyed_a, self.keyed_b = keyed[0], (keyed[0] if self.same else keyed[1])
        self.num_batches, self.num_samples = nb, ns
        self.compute_dtype = None if cd is None else dtypes[cd]
        for k in self._TENSORS:
            setattr(self, k, tensors[k])

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
        if self.jackknife is not None:
            self.jackknife.all_reduce(group, self.cross.device)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_constant_rows(rows, tensors, names, ct):
        """A layer with ‖X_c‖² = 0 is one row repeated; centering hides ±inf/NaN in that
        row (inf − inf), so look at the row itself: non-finite raises, naming the layer."""
        for i in (rows.sq_c == 0).nonzero().flatten().tolist():
            if not bool(torch.isfinite(tensors[i][:1]).all()):
                _validate.raise_non_finite(tensors[i], names[i], ct)

    @staticmethod
    def _check_count(tensors, expected, arg):
        if len(tensors) != expected:
            raise ValueError(f"{arg} has {len(tensors)} representations; this MinibatchCKA "
                             f"was made for {expected}")
