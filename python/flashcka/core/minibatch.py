"""Minibatch CKA for all layer pairs (Nguyen, Raghu & Kornblith 2021)."""
from __future__ import annotations

import torch

from . import engine as _engine, sources as _sources, validate as _validate
from .. import backends
from .engine import Settings
from .jackknife import BatchJackknife, auto_groups


class MinibatchCKA:
    """Accumulates minibatch CKA between L_A layers of one model and L_B of another.

    Over batches b = 1..k (each of its own size n_b ≥ 4 when unbiased)::

        CKA_ij = Σ_b HSIC(K_i^b, L_j^b) / sqrt(Σ_b HSIC(K_i^b, K_i^b) · Σ_b HSIC(L_j^b, L_j^b))

    each HSIC normalised by its own batch's n_b(n_b − 3) (unbiased, HSIC₁) or (n_b − 1)²
    (biased). Accumulators are float64, each layer's HSICs in its own power-of-two unit
    (``pow_a``/``pow_b``), so inputs at any float64 scale give the same CKA; ``update`` is
    atomic (an error or Ctrl-C adds all of the batch or none). With ``num_layers_b=None``
    the layers of one model
    are compared with each other (``update(xs)``, one Gram per layer per batch).
    RBF with ``sigma=None`` applies the median heuristic to each batch separately.

    ``update(xs, ys=None)``: xs a sequence (or name -> tensor dict) of L_A tensors (n_b, ...).
    Dict batches are matched by key, never by order: the keys must be exactly the layer
    names (``names_a``/``names_b`` if given, else the keys of the first dict batch); a
    missing or unknown key raises a ValueError naming it. Sequences are positional.
    ``compute()``: (L_A, L_B) float64. ``state_dict()``/``load_state_dict()`` resume a run
    (names or ``dtype`` given here must match the state's); ``all_reduce()`` sums the
    accumulators over torch.distributed ranks.
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
        self.given_a, self.given_b = self.keyed_a, self.keyed_b   # load_state_dict checks
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
        self.cross = self.hsic_a = self.hsic_b = self.pow_a = self.pow_b = None
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
        when comparing one model with itself). A layer may also be a row source
        (a ``.npy``/``.safetensors``/HDF5 path, a memmap, an h5py dataset; a file or
        folder of several layers given alone is a name -> layer dict:
        ``core.sources.load``): the batch is read from it. Everything is validated and computed first,
        then committed in one step: a failing or interrupted batch (Ctrl-C) leaves the
        accumulated state untouched."""
        self._commit(self._prepare(xs, ys))

    def _prepare(self, xs, ys, alone: bool = False) -> dict:
        """The state after adding this batch (``alone``: of this batch alone), as a dict of
        attributes for ``_commit``; this accumulator is not changed."""
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
        if be.name != "native":
            groups = [(_validate.upcast_float8(ts), names) for ts, names in groups]
        ra = _engine.gram_rows(be, *groups[0], n, ct, s)
        rb = ra if self.same else _engine.gram_rows(be, *groups[1], n, ct, s)
        ra = self._check_constant_rows(ra, *groups[0], ct)
        rb = ra if self.same else self._check_constant_rows(rb, *groups[1], ct)
        # Names from the first dict batch are adopted with it (messages of the pair stage
        # name them) and only if the batch goes in.
        names = {"names_a": self.names_a, "names_b": self.names_b,
                 "keyed_a": self.keyed_a, "keyed_b": self.keyed_b}
        if adopt_a:
            names.update(names_a=list(na), keyed_a=True)
            if self.same:
                names.update(names_b=names["names_a"], keyed_b=True)
        if not self.same and adopt_b:
            names.update(names_b=list(nb), keyed_b=True)
        return {**self._added(be, ra, rb, n, ct, None, names["names_a"], names["names_b"],
                              alone), **names}

    def add_rows(self, be, ra: _engine.Rows, rb: _engine.Rows, n: int, ct,
                 index: int | None = None) -> None:
        """Add one batch given its centered Gram rows (used by ``update`` and by the hooks
        of ``compare``, which build rows as each layer's output appears). ``index`` picks
        the batch's jackknife slot (default: the number of batches added so far)."""
        self._commit(self._added(be, ra, rb, n, ct, index, self.names_a, self.names_b))

    def _added(self, be, ra, rb, n, ct, index, names_a, names_b, alone=False) -> dict:
        """New accumulators (new tensors) with this batch's rows added.

        Accumulators hold each layer's HSICs in its own power-of-two unit (``_engine.Hsics``:
        cross ``· 2^(pow_a_i + pow_b_j)``, self ``· 2^(2·pow)``), so no scale of input
        leaves float64's range; a layer's unit follows its largest batch (``_merge``)."""
        h = _engine.hsic_from_rows(be, ra, rb, self.same, n, self.settings.unbiased,
                                   names_a, names_b)
        if self.cross is None or alone:
            dev = h.cross.device
            z = lambda k: torch.zeros(k, dtype=torch.float64, device=dev)  # noqa: E731
            la, lb = self.num_layers_a, self.num_layers_b
            old = {"cross": torch.zeros(la, lb, dtype=torch.float64, device=dev),
                   "hsic_a": z(la), "hsic_b": z(lb), "pow_a": h.ea, "pow_b": h.eb,
                   "sq_c_a": z(la), "sq_a": z(la), "sq_c_b": z(lb), "sq_b": z(lb)}
            count, samples = 0, 0
        else:
            old = {k: getattr(self, k) for k in self._TENSORS}
            count, samples = self.num_batches, self.num_samples
        dev = old["cross"].device
        h = _engine.Hsics(*(t.to(dev) for t in (h.cross, h.self_a, h.self_b, h.ea, h.eb)))
        pa = _merge(old["pow_a"], old["hsic_a"], h.ea, h.self_a)
        pb = pa if self.same else _merge(old["pow_b"], old["hsic_b"], h.eb, h.self_b)
        acc = _engine.Hsics(old["cross"], old["hsic_a"], old["hsic_b"], old["pow_a"],
                            old["pow_b"])
        acc, batch = _in_units(acc, pa, pb), _in_units(h, pa, pb)
        new = {"cross": acc.cross + batch.cross, "hsic_a": acc.self_a + batch.self_a,
               "hsic_b": acc.self_b + batch.self_b, "pow_a": pa, "pow_b": pb,
               "sq_c_a": old["sq_c_a"] + ra.sq_c.to(dev), "sq_a": old["sq_a"] + ra.sq.to(dev),
               "sq_c_b": old["sq_c_b"] + rb.sq_c.to(dev), "sq_b": old["sq_b"] + rb.sq.to(dev),
               "num_batches": count + 1, "num_samples": samples + n,
               "compute_dtype": ct}
        if self.jackknife is not None and not alone:
            new["jackknife"] = self.jackknife.added(
                count if index is None else index, batch.cross, batch.self_a, batch.self_b,
                old["pow_a"] - pa, old["pow_b"] - pb)
        return new

    def _commit(self, new: dict) -> None:
        """Apply a state from ``_prepare``/``_added`` in one step (one C call: a
        KeyboardInterrupt lands before or after it, never inside)."""
        self.__dict__.update(new)

    def _ordered(self, xs, arg, side):
        """xs as (tensors, names) in this accumulator's layer order, plus whether its dict
        keys are to be adopted as the layer names. A dict is matched by key to the names
        (given, or from the first dict batch); a sequence is positional."""
        from collections.abc import Mapping
        xs = _sources.load(xs, arg)   # layers in files or memmaps: this batch's rows
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
        64 slots within 64 MiB, an int that many slots; see ``flashcka.core.jackknife`` for the
        formula, its references and the memory (``groups · (L_A·L_B + L_A + L_B + 1)``
        float64). NaN with fewer than 2 batches and where the CKA is NaN."""
        if self.jackknife is None:
            return None
        if matrix is None:
            matrix = self.compute()
        return self.jackknife.stderr(self.cross, self.hsic_a, self.hsic_b, matrix)

    # ------------------------------------------------------------------ state
    _TENSORS = ("cross", "hsic_a", "hsic_b", "pow_a", "pow_b", "sq_c_a", "sq_a", "sq_c_b",
                "sq_b")
    _STATE_KEYS = ("version", "settings", "names_a", "names_b", "num_batches", "num_samples",
                   "compute_dtype") + _TENSORS
    _V1_TENSORS = ("pow_a", "pow_b")  # version 1 had none: every unit was 2^0

    def state_dict(self) -> dict:
        """Everything needed to resume: accumulators (float64), counts and settings."""
        s = self.settings
        return {
            "version": 2,
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
        version = state.get("version")
        if version not in (1, 2) or isinstance(version, bool):
            raise ValueError(f"state_dict version {version!r} is not supported (1, 2)")
        if version == 1:
            state = {**state, **{k: _v1_units(state, k) for k in self._V1_TENSORS}}
        missing = sorted(k for k in self._STATE_KEYS if k not in state)
        if missing:
            raise ValueError(f"state_dict is missing {missing}")
        mine = self.state_dict()["settings"]
        if state["settings"] != mine:
            raise ValueError(f"state_dict settings {state['settings']} do not match this "
                             f"MinibatchCKA's {mine}")
        names_a = self._names(state["names_a"], self.num_layers_a, "a")
        names_b = names_a if self.same else self._names(state["names_b"], self.num_layers_b, "b")
        if self.same and list(state["names_b"]) != names_a:
            raise ValueError("state_dict names_b differs from names_a for a one-model "
                             "MinibatchCKA")
        for side, given, theirs in (("a", self.given_a, names_a), ("b", self.given_b, names_b)):
            mine_names = self.names_a if side == "a" else self.names_b
            if given and theirs != mine_names:
                raise ValueError(f"state_dict names_{side} {theirs} differ from this "
                                 f"MinibatchCKA's names_{side} {mine_names}")
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
        if cd is not None and self.dtype is not None and dtypes[cd] != self.dtype:
            raise ValueError(f"state_dict compute_dtype {cd} differs from this MinibatchCKA's "
                             f"dtype={self.dtype}")
        la, lb = self.num_layers_a, self.num_layers_b
        shapes = {"cross": (la, lb), "hsic_a": (la,), "sq_c_a": (la,), "sq_a": (la,),
                  "hsic_b": (lb,), "sq_c_b": (lb,), "sq_b": (lb,), "pow_a": (la,),
                  "pow_b": (lb,)}
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
            if k.startswith(("sq", "hsic")) and bool((v < 0).any()):
                raise ValueError(f"state_dict {k} holds negative values (sums of squares)")
            if k.startswith("pow") and not bool(((v == v.round()) & (v.abs() < 2 ** 14)).all()):
                raise ValueError(f"state_dict {k} must hold integer exponents")
            tensors[k] = v.detach().clone()
        if self.same and tensors["pow_a"] is not None \
                and not torch.equal(tensors["pow_a"], tensors["pow_b"]):
            raise ValueError("state_dict pow_b differs from pow_a for a one-model MinibatchCKA")
        devices = {t.device for t in tensors.values() if t is not None}
        if len(devices) > 1:
            raise ValueError(f"state_dict accumulators are on several devices {devices}")
        jk = state.get("jackknife")
        if (jk is None) != (self.jackknife is None):
            raise ValueError(f"state_dict jackknife is {'absent' if jk is None else 'present'} "
                             f"but this MinibatchCKA has jackknife_groups = "
                             f"{self.jackknife_groups}")
        new = {}
        if jk is not None:
            new["jackknife"] = BatchJackknife(self.num_layers_a, self.num_layers_b,
                                              self.jackknife_groups)
            new["jackknife"].load_state_dict(jk, nb)
        # Everything checked: apply in one step.
        self._commit({**new, **tensors, "names_a": names_a, "names_b": names_b,
                      "keyed_a": keyed[0], "keyed_b": keyed[0] if self.same else keyed[1],
                      "num_batches": nb, "num_samples": ns,
                      "compute_dtype": None if cd is None else dtypes[cd]})

    def all_reduce(self, group=None) -> None:
        """Sum the accumulators and counts over the ranks of a torch.distributed group, so
        that every rank's ``compute()`` gives the CKA of all ranks' batches. Outside a
        process group (``torch.distributed`` not initialised, ``group=None``) this does
        nothing: the one process already holds every batch, the world of one rank."""
        import torch.distributed as dist
        if group is None and not (dist.is_available() and dist.is_initialized()):
            return
        if self.cross is None:
            raise RuntimeError("all_reduce() before any update() on this rank")
        units = []   # each layer's largest unit over the ranks (-inf: nothing there)
        for p, hs in ((self.pow_a, self.hsic_a), (self.pow_b, self.hsic_b)):
            u = torch.where(hs != 0, p, torch.full_like(p, float("-inf")))
            dist.all_reduce(u, op=dist.ReduceOp.MAX, group=group)
            units.append(torch.where(torch.isfinite(u), u, torch.zeros_like(u)))
        pa, pb = units
        h = _in_units(_engine.Hsics(self.cross, self.hsic_a, self.hsic_b, self.pow_a,
                                    self.pow_b), pa, pb)
        if self.jackknife is not None:
            self.jackknife = self.jackknife.added(None, None, None, None, self.pow_a - pa,
                                                  self.pow_b - pb)
        self.cross, self.hsic_a, self.hsic_b, self.pow_a, self.pow_b = \
            h.cross, h.self_a, h.self_b, pa, pb
        summed = [k for k in self._TENSORS if not k.startswith("pow")]
        flat = torch.cat([getattr(self, k).reshape(-1) for k in summed]
                         + [torch.tensor([self.num_batches, self.num_samples],
                                         dtype=torch.float64, device=self.cross.device)])
        dist.all_reduce(flat, group=group)
        offset = 0
        for k in summed:
            t = getattr(self, k)
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        self.num_batches, self.num_samples = int(flat[-2]), int(flat[-1])
        if self.jackknife is not None:
            self.jackknife.all_reduce(group, self.cross.device)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _check_constant_rows(rows, tensors, names, ct) -> _engine.Rows:
        """Rows with ‖X_c‖² = 0 are one row repeated, or ‖X_c‖² underflowed (|x| ~
        1e-300): the latter get the smallest positive float64 instead (not zero variance;
        a copy, the rows are unchanged). Centering hides ±inf/NaN in a repeated row
        (inf − inf), so look at the row itself: non-finite raises, naming the layer."""
        sq_c = rows.sq_c
        for i in (rows.sq_c == 0).nonzero().flatten().tolist():
            x = tensors[i]
            if not bool((x == x[:1]).all()):
                sq_c = sq_c.clone() if sq_c is rows.sq_c else sq_c
                sq_c[i] = torch.finfo(torch.float64).smallest_normal * 2.0 ** -52
            elif not bool(torch.isfinite(x[:1]).all()):
                _validate.raise_non_finite(x, names[i], ct)
        return rows if sq_c is rows.sq_c else _engine.Rows(rows.g, sq_c, rows.sq, rows.scale)

    @staticmethod
    def _check_count(tensors, expected, arg):
        if len(tensors) != expected:
            raise ValueError(f"{arg} has {len(tensors)} representations; this MinibatchCKA "
                             f"was made for {expected}")


def _merge(pow_old, self_old, e, self_new):
    """Each layer's unit after adding a batch: the batch's where nothing was accumulated
    yet, the old one where the batch adds nothing, else the larger (values are O(1) in
    their own unit, so the larger unit holds the larger sum and the smaller part loses at
    most what rounding would)."""
    return torch.where(self_old == 0, e,
                       torch.where(self_new == 0, pow_old, torch.maximum(pow_old, e)))


def _in_units(h: _engine.Hsics, pa, pb) -> _engine.Hsics:
    """``h`` expressed in units ``pa``/``pb`` (never larger values: pa >= h.ea where it
    matters)."""
    da, db = h.ea - pa, h.eb - pb
    cross = _engine.ldexp(h.cross, da[:, None] + db[None, :])
    return _engine.Hsics(cross, _engine.ldexp(h.self_a, 2 * da),
                         _engine.ldexp(h.self_b, 2 * db), pa, pb)


def _v1_units(state, k):
    """A version-1 state's missing exponents: zeros (its sums are in the inputs' units)."""
    ref = state.get("hsic_a" if k == "pow_a" else "hsic_b")
    return torch.zeros_like(ref) if isinstance(ref, torch.Tensor) else None
