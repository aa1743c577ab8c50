"""Layer-wise neuron labelling (Dorszewski et al. 2025, "From colors to classes: emergence
of concepts in vision transformers"): every unit of every hooked layer gets its best concept
from a user-supplied concept matrix over the same stimuli, by soft-WPMI (CLIP-Dissect,
Oikarinen & Weng ICLR 2023) or by correlation, streamed over batches."""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ..core import validate as _validate
from ._common import positive_int

METHODS = ("wpmi", "correlation")


class NeuronLabeler:
    """Streams (activations, concepts) batches and labels every unit of every layer.

    ``update(acts, concepts)``: ``acts`` a name -> (b, units) dict (or sequence) of one
    batch's per-unit activations, ``concepts`` (b, C) the concept scores of the same b
    stimuli (e.g. CLIP image–text similarities, or 0/1 labels). ``compute()`` -> per layer
    ``{"labels": (units,) int64 concept index (−1 where undefined), "scores": (units,)
    float64, "concepts": names of the labels, "distinct": number of distinct concepts,
    "by_category": {category: distinct concepts in it}}``.

    method="correlation": Pearson's r between each unit and each concept over all n
    stimuli, ``r_kc = Σ(a_k − ā_k)(c − c̄) / sqrt(Σ(a_k − ā_k)² Σ(c − c̄)²)``, from float64
    running sums of per-batch products ``Aᵀ C`` (shifted by the first batch's means against
    cancellation): memory O(units · C), never (n × units). Label: ``argmax_c r_kc``.

    method="wpmi": soft-WPMI of CLIP-Dissect (Oikarinen & Weng 2023, their released
    ``soft_wpmi``): ``P = softmax(alpha · concepts)`` over concepts per stimulus (or
    ``concepts`` as given with ``softmax=False``, e.g. 0/1 labels); for unit k, its
    ``top_k`` most activating stimuli x_1..x_m (streamed top-k; equal activations: the
    earlier stimulus first, so batching never changes the result)
    with inclusion probabilities ``p_r = p_start − (r/m)(p_start − p_end)``, r = 0..m−1;

        ``log p(c | k) = Σ_r log(1 + p_r (P_{x_r c} − 1) + 1e-7)``
        ``log p(c) = logsumexp_k log p(c | k) − log(units)``   (over the layer's units)
        ``wpmi_kc = log p(c | k) − lam · log p(c)``

    Label: ``argmax_c wpmi_kc``. Memory: (top_k × units) values and indices per layer and
    the n × C concept rows (the user's matrix); never n × units.

    Compute dtype (per-batch products ``AᵀC``, the soft-WPMI log terms): float64 if
    ``dtype=torch.float64`` or any input is float64, else float32; sums over batches and
    over the top_k stimuli are float64.
    """

    def __init__(self, num_concepts: int, method: str = "wpmi", *, concept_names=None,
                 categories=None, top_k: int = 100, alpha: float = 10.0, lam: float = 1.0,
                 p_start: float = 0.998, p_end: float = 0.97, softmax: bool = True,
                 dtype: torch.dtype | None = None):
        _validate.dtype_arg(dtype)
        self.dtype = dtype
        self.num_concepts = positive_int(num_concepts, "num_concepts")
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        self.method = method
        self.top_k = positive_int(top_k, "top_k")
        for arg, val in (("alpha", alpha), ("lam", lam), ("p_start", p_start), ("p_end", p_end)):
            if isinstance(val, bool) or not isinstance(val, (int, float)) or val != val:
                raise ValueError(f"{arg} must be a number, got {val!r}")
        if not 0 <= p_end <= p_start <= 1:
            raise ValueError(f"need 0 <= p_end <= p_start <= 1, got p_start={p_start}, "
                             f"p_end={p_end}")
        self.alpha, self.lam, self.p_start, self.p_end = float(alpha), float(lam), \
            float(p_start), float(p_end)
        self.softmax = bool(softmax)
        self.concept_names = _names(concept_names, self.num_concepts)
        self.categories = _categories(categories, self.concept_names)
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self.layers: dict[str, dict] = {}
        self._concept_rows: list[torch.Tensor] = []
        self._c_shift = None
        self._c_sum = self._c_sq = None
        self.ct = None

    @torch.no_grad()
    def update(self, acts, concepts: torch.Tensor) -> None:
        """Add one batch: ``acts`` (name -> (b, units)), ``concepts`` (b, C)."""
        tensors, names = _validate.representations(acts, "acts")
        _validate.representation(concepts, "concepts")
        if concepts.dim() != 2 or concepts.shape[1] != self.num_concepts:
            raise ValueError(f"concepts must be (b, {self.num_concepts}), got shape "
                             f"{tuple(concepts.shape)}")
        b = concepts.shape[0]
        c = concepts.detach().to(torch.float64)
        if not bool(torch.isfinite(c).all()):
            _validate.raise_non_finite(c, "concepts", torch.float64)
        flat = []
        for t, name in zip(tensors, names):
            if t.dim() != 2:
                raise ValueError(f"{name} must be (b, units) per-unit activations, got shape "
                                 f"{tuple(t.shape)} (reduce conv maps / tokens first, e.g. "
                                 f"with label_neurons' tokens=)")
            if t.shape[0] != b:
                raise ValueError(f"{name} has {t.shape[0]} samples but concepts has {b}")
            if not bool(torch.isfinite(t).all()):
                _validate.raise_non_finite(t, name, t.dtype)
            st = self.layers.get(name)
            if st is not None and st["units"] != t.shape[1]:
                raise ValueError(f"{name} has {t.shape[1]} units in this batch but "
                                 f"{st['units']} before")
            if st is None and self.n > 0:
                raise ValueError(f"{name} is new in this batch: every batch must give the "
                                 f"same layers")
            flat.append((name, t.detach()))
        if self.n > 0 and set(names) != set(self.layers):
            missing = sorted(set(self.layers) - set(names))
            raise ValueError(f"acts lacks layers {missing} seen in earlier batches")
        # all checks passed: update the state
        if self.ct is None:
            self.ct = self.dtype or (torch.float64 if concepts.dtype == torch.float64 or any(
                t.dtype == torch.float64 for _, t in flat) else torch.float32)
        if self.method == "correlation":
            if self._c_shift is None:
                self._c_shift = c.mean(0)
                self._c_sum = torch.zeros(self.num_concepts, dtype=torch.float64)
                self._c_sq = torch.zeros(self.num_concepts, dtype=torch.float64)
            cs = c - self._c_shift
            self._c_sum += cs.sum(0)
            self._c_sq += cs.pow(2).sum(0)
            cs_ct = {}
        else:
            p = torch.softmax(self.alpha * c, 1) if self.softmax else c
            self._concept_rows.append(p.to(self.ct).cpu())
        for name, t in flat:
            st = self.layers.setdefault(name, {"units": t.shape[1]})
            if self.method == "correlation":
                a = t.to(torch.float64)
                if "shift" not in st:
                    st["shift"] = a.mean(0)
                    st["sum"] = torch.zeros_like(st["shift"])
                    st["sq"] = torch.zeros_like(st["shift"])
                    st["cross"] = torch.zeros(t.shape[1], self.num_concepts, dtype=torch.float64,
                                              device=a.device)
                As = a - st["shift"]
                st["sum"] += As.sum(0)
                st["sq"] += As.pow(2).sum(0)
                # the per-batch product in the compute dtype, accumulated in float64
                if a.device not in cs_ct:
                    cs_ct[a.device] = cs.to(device=a.device, dtype=self.ct)
                st["cross"] += (As.to(self.ct).T @ cs_ct[a.device]).double()
            else:
                a = t.to(self.ct)
                idx = torch.arange(self.n, self.n + b, device=a.device)[:, None].expand_as(a)
                if "vals" in st:
                    vals = torch.cat([st["vals"], a])
                    ids = torch.cat([st["ids"], idx])
                else:
                    vals, ids = a, idx
                # top_k by (value descending, stimulus index ascending): the kept rows are
                # in that order and precede the batch, so a stable sort breaks ties by index
                k = min(self.top_k, vals.shape[0])
                top = torch.sort(vals, dim=0, descending=True, stable=True)
                st["vals"] = top.values[:k]
                st["ids"] = ids.gather(0, top.indices[:k])
        self.n += b

    @torch.no_grad()
    def compute(self, unit_chunk: int | None = None) -> dict:
        """Label every unit of every layer (see the class docstring). soft-WPMI gathers
        (top_k, unit_chunk, C) concept rows at a time (default: ~16M entries)."""
        if self.n == 0:
            raise ValueError("no batches were added")
        if self.method == "wpmi" and self.n < self.top_k:
            raise ValueError(f"soft-WPMI uses the top_k = {self.top_k} most activating "
                             f"stimuli of each unit but only n = {self.n} were added; pass a "
                             f"smaller top_k")
        out = {}
        for name, st in self.layers.items():
            scores = self._correlation(st) if self.method == "correlation" else \
                self._wpmi(st, unit_chunk)
            finite = torch.isfinite(scores)
            filled = torch.where(finite, scores, torch.full_like(scores, -float("inf")))
            best, labels = filled.max(1)
            ok = finite.any(1)
            labels = torch.where(ok, labels, torch.full_like(labels, -1))
            best = torch.where(ok, best, torch.full_like(best, float("nan")))
            out[name] = self._summary(labels.cpu(), best.cpu())
        return out

    def _correlation(self, st) -> torch.Tensor:
        n = self.n
        ma, mc = st["sum"] / n, self._c_sum.to(st["sum"].device) / n
        cov = st["cross"] / n - ma[:, None] * mc[None, :]
        va = (st["sq"] / n - ma.pow(2)).clamp_min(0)
        vc = (self._c_sq.to(va.device) / n - mc.pow(2)).clamp_min(0)
        den = (va[:, None] * vc[None, :]).sqrt()
        return torch.where(den > 0, cov / den.clamp_min(1e-300), torch.full_like(cov, float("nan")))

    def _wpmi(self, st, unit_chunk) -> torch.Tensor:
        P = torch.cat(self._concept_rows)                         # (n, C)
        m = self.top_k
        p_in = (self.p_start - torch.arange(m, dtype=torch.float64) / m
                * (self.p_start - self.p_end))[:, None, None].to(P.dtype)   # (m, 1, 1)
        ids = st["ids"].cpu()                                     # (m, units), best first
        if unit_chunk is None:
            unit_chunk = max(1, (16 << 20) // (m * P.shape[1]))
        logs = []
        for u0 in range(0, ids.shape[1], unit_chunk):
            rows = P[ids[:, u0:u0 + unit_chunk]]                  # (m, chunk, C)
            logs.append(torch.log(1 + p_in * (rows - 1) + 1e-7).sum(0).double())
        cond = torch.cat(logs)                                    # (units, C) float64
        prior = torch.logsumexp(cond, 0) - torch.log(torch.tensor(float(cond.shape[0]),
                                                                  dtype=torch.float64))
        return cond - self.lam * prior[None, :]

    def _summary(self, labels, scores) -> dict:
        valid = labels[labels >= 0]
        distinct = sorted(set(valid.tolist()))
        by_cat = None
        if self.categories is not None:
            by_cat = {}
            for c in distinct:
                cat = self.categories[c]
                by_cat[cat] = by_cat.get(cat, 0) + 1
        return {"labels": labels, "scores": scores,
                "concepts": [self.concept_names[i] if i >= 0 else None for i in labels.tolist()],
                "distinct": len(distinct), "distinct_concepts": [self.concept_names[c]
                                                                 for c in distinct],
                "by_category": by_cat}


def label_neurons(model: nn.Module, loader, concepts, *, layers=None, method: str = "wpmi",
                  tokens="mean", concept_names=None, categories=None, inputs=None,
                  device=None, **kwargs) -> dict:
    """Label every unit of every chosen layer of ``model`` with its best concept.

    ``loader`` yields batches (a tensor, ``(input, ...)`` tuples or dicts of tensors, as for
    ``compare``), in the order of the rows of ``concepts`` (n, C): batch b covers the next
    ``len(batch)`` rows. ``layers``: names, glob patterns or module types, as for
    ``compare`` (None: the model's blocks; ``name:input`` hooks a module's input; a module
    called several times per forward pass gives its last call). Each hooked output becomes
    per-unit activations
    (b, units): (b, units) as is; (b, C, H, W) conv maps -> spatial mean per channel
    (as CLIP-Dissect); (b, T, D) tokens -> ``tokens="mean"`` over tokens, ``"cls"`` the first
    token, or a callable. ``inputs``: adapter from a tensor batch to the model's arguments
    (``specs.LoadedModel.wrap``). Other keywords go to ``NeuronLabeler`` (``top_k``,
    ``alpha``, ``lam``, ``softmax``, ...). Returns ``NeuronLabeler.compute()``'s dict, keyed
    by layer name in hook order.
    """
    from ..models.selection import select_points
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not (callable(tokens) or tokens in ("mean", "cls")):
        raise ValueError(f"tokens must be 'mean', 'cls' or a callable, got {tokens!r}")
    _validate.representation(concepts, "concepts")
    if concepts.dim() != 2:
        raise ValueError(f"concepts must be (n, C), got shape {tuple(concepts.shape)}")
    chosen = select_points(model, layers, "layers")
    points = [p.label for p in chosen]
    labeler = NeuronLabeler(concepts.shape[1], method, concept_names=concept_names,
                            categories=categories, **kwargs)
    modules = dict(model.named_modules())
    if device is None:
        device = next((p.device for p in model.parameters()), torch.device("cpu"))
    acts: dict[str, torch.Tensor] = {}
    hooks = []
    for p in chosen:
        if p.kind == "input":
            hooks.append(modules[p.module].register_forward_pre_hook(
                lambda m, i, name=p.label: acts.__setitem__(name, _units(i, tokens, name))))
        else:
            hooks.append(modules[p.module].register_forward_hook(
                lambda m, i, o, name=p.label: acts.__setitem__(name, _units(o, tokens, name))))
    modes = {m: m.training for m in model.modules()}
    model.eval()
    row = 0
    try:
        with torch.no_grad():
            for batch in loader:
                x = batch[0] if isinstance(batch, (tuple, list)) else batch
                b = _batch_len(x)
                if row + b > concepts.shape[0]:
                    raise ValueError(f"loader gave more than the {concepts.shape[0]} stimuli "
                                     f"that concepts has rows for")
                acts.clear()
                x = _to(x, device)
                args = inputs(x) if inputs is not None else x
                model(**args) if isinstance(args, Mapping) else model(args)
                silent = [p for p in points if p not in acts]
                if silent:
                    raise ValueError(f"layers {silent} did not fire in the forward pass")
                labeler.update({p: acts[p] for p in points}, concepts[row:row + b])
                row += b
    finally:
        for h in hooks:
            h.remove()
        for m, flag in modes.items():
            m.training = flag
    if row != concepts.shape[0]:
        raise ValueError(f"loader gave {row} stimuli but concepts has {concepts.shape[0]} rows")
    return labeler.compute()


def _units(o, tokens, name) -> torch.Tensor:
    if isinstance(o, (tuple, list)):
        o = o[0]
    o = getattr(o, "last_hidden_state", o)
    if not isinstance(o, torch.Tensor):
        raise TypeError(f"layer {name} returned {type(o).__name__}, not a tensor")
    if callable(tokens) and not isinstance(tokens, str):
        return tokens(o).reshape(o.shape[0], -1).detach()
    if o.dim() == 2:
        return o.detach()
    if o.dim() == 4:
        return o.mean((2, 3)).detach()
    if o.dim() == 3:
        return (o[:, 0] if tokens == "cls" else o.mean(1)).detach()
    return o.reshape(o.shape[0], -1).detach()


def _batch_len(x) -> int:
    if isinstance(x, torch.Tensor):
        return int(x.shape[0])
    if isinstance(x, Mapping):
        return _batch_len(next(iter(x.values())))
    raise TypeError(f"batch must hold a tensor input, got {type(x).__name__}")


def _to(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, Mapping):
        return {k: _to(v, device) for k, v in x.items()}
    return x


def _names(names, count):
    if names is None:
        return [f"concept{i}" for i in range(count)]
    names = [str(n) for n in names]
    if len(names) != count:
        raise ValueError(f"concept_names has {len(names)} names for {count} concepts")
    return names


def _categories(categories, names):
    if categories is None:
        return None
    if isinstance(categories, Mapping):
        missing = [n for n in names if n not in categories]
        if missing:
            raise ValueError(f"categories has no category for concepts {missing[:5]}")
        return [str(categories[n]) for n in names]
    if isinstance(categories, Sequence) and not isinstance(categories, (str, bytes)):
        if len(categories) != len(names):
            raise ValueError(f"categories has {len(categories)} entries for {len(names)} "
                             f"concepts")
        return [str(c) for c in categories]
    raise TypeError(f"categories must be a {{concept name: category}} dict or a list, got "
                    f"{type(categories).__name__}")
