"""Jackknife error bars for minibatch CKA: per-batch (or per-group) HSIC sums, bounded.

Minibatch CKA is a ratio of sums over batches b = 1..k::

    CKA_ij = C_ij / sqrt(A_i B_j),   C = Σ_b C_b,  A = Σ_b A_b,  B = Σ_b B_b

(C_b the (L_A, L_B) cross HSICs of batch b, A_b and B_b its self HSICs). Leaving batch b
out gives ``θ_-b = (C − C_b) / sqrt((A − A_b)(B − B_b))`` at the cost of one subtraction,
and the jackknife standard error of every entry is (Quenouille 1956; Tukey 1958; Efron &
Stein 1981, "The jackknife estimate of variance", Ann. Statist. 9(3):586-596)::

    stderr = sqrt((k − 1)/k · Σ_b (θ_-b − θ̄)²),   θ̄ = (1/k) Σ_b θ_-b

To keep memory bounded, batches are kept in at most ``groups`` slots: batch index b adds
into slot ``b mod groups``. Up to ``groups`` batches this is exactly the leave-one-batch-out
jackknife above; beyond, each slot is a group of batches and the same formula over the
non-empty slots is the delete-a-group jackknife (Kott 2001, "The delete-a-group jackknife",
J. Official Statistics 17(4):521-526). Memory: ``groups · (L_A·L_B + L_A + L_B + 1)`` float64
values (64 groups of 100 × 100 layers: 5.2 MB; of 1,000 × 1,000: 512 MB).
"""
from __future__ import annotations

import torch

DEFAULT_GROUPS = 64
DEFAULT_BUDGET_BYTES = 64 * 2 ** 20


def auto_groups(la: int, lb: int, requested=True) -> int:
    """Slots for ``requested``: ``True`` -> up to 64 within a 64 MiB budget (0 when even 2
    do not fit), ``False``/``0``/``None`` -> 0 (off), an int >= 2 -> that many."""
    if requested is None or requested is False:
        return 0
    if requested is True:
        per = 8 * (la * lb + la + lb + 1)
        g = min(DEFAULT_GROUPS, DEFAULT_BUDGET_BYTES // per)
        return g if g >= 2 else 0
    if isinstance(requested, bool) or not isinstance(requested, int) or requested < 0 \
            or requested == 1:
        raise ValueError(f"jackknife must be True, False or a number of groups >= 2, got "
                         f"{requested!r}")
    return requested


class BatchJackknife:
    """Per-slot sums of one accumulator's HSICs; ``stderr()`` is the jackknife over slots."""

    def __init__(self, num_layers_a: int, num_layers_b: int, groups: int):
        if isinstance(groups, bool) or not isinstance(groups, int) or groups < 2:
            raise ValueError(f"groups must be an int >= 2, got {groups!r}")
        self.la, self.lb, self.groups = num_layers_a, num_layers_b, groups
        self.cross = self.hsic_a = self.hsic_b = self.count = None

    def nbytes(self) -> int:
        return 8 * self.groups * (self.la * self.lb + self.la + self.lb + 1)

    def added(self, index, cross, hsic_a, hsic_b, da=None, db=None) -> "BatchJackknife":
        """A new jackknife (this one unchanged): every slot moved to the accumulator's new
        units (``da``/``db``: old minus new exponents, see ``MinibatchCKA``), then batch
        ``index``'s HSICs (float64: (L_A, L_B), (L_A,), (L_B,)), already in the new units,
        added to its slot (``index=None``: none)."""
        from .engine import ldexp
        new = BatchJackknife(self.la, self.lb, self.groups)
        if self.cross is None and index is None:
            return new
        if self.cross is None:
            dev = cross.device
            z = lambda *s: torch.zeros(self.groups, *s, dtype=torch.float64, device=dev)  # noqa: E731
            c, a, b, k = z(self.la, self.lb), z(self.la), z(self.lb), z()
        else:
            c, a, b, k = self.cross, self.hsic_a, self.hsic_b, self.count
            if da is not None and bool((da != 0).any() | (db != 0).any()):
                c = ldexp(c, (da[:, None] + db[None, :])[None].to(c.device))
                a, b = ldexp(a, 2 * da[None].to(c.device)), ldexp(b, 2 * db[None].to(c.device))
        if index is not None:
            g = int(index) % self.groups
            c, a, b, k = c.clone(), a.clone(), b.clone(), k.clone()
            c[g] += cross.to(c)
            a[g] += hsic_a.to(c)
            b[g] += hsic_b.to(c)
            k[g] += 1
        new.cross, new.hsic_a, new.hsic_b, new.count = c, a, b, k
        return new

    def stderr(self, cross, hsic_a, hsic_b, matrix) -> torch.Tensor:
        """(L_A, L_B) float64 jackknife standard errors given the totals and the CKA
        ``matrix`` (NaN where it is NaN; NaN everywhere with fewer than 2 non-empty slots)."""
        out = torch.full((self.la, self.lb), float("nan"), dtype=torch.float64)
        if self.count is None:
            return out
        used = self.count > 0
        k = int(used.sum())
        if k < 2:
            return out
        c = cross[None] - self.cross[used]                         # (k, L_A, L_B)
        a = hsic_a[None] - self.hsic_a[used]
        b = hsic_b[None] - self.hsic_b[used]
        theta = c / (torch.sqrt(a)[:, :, None] * torch.sqrt(b)[:, None, :])
        mean = theta.mean(0)
        se = torch.sqrt((k - 1) / k * ((theta - mean) ** 2).sum(0)).cpu()
        return torch.where(torch.isnan(matrix.cpu()), out, se)

    # -- state
    def state_dict(self) -> dict:
        t = lambda v: None if v is None else v.detach().cpu().clone()  # noqa: E731
        return {"groups": self.groups, "cross": t(self.cross), "hsic_a": t(self.hsic_a),
                "hsic_b": t(self.hsic_b), "count": t(self.count)}

    def load_state_dict(self, state, num_batches: int | None = None) -> None:
        """Restore ``state_dict()``; checks groups, types, shapes and values (finite,
        non-negative self sums, whole counts adding up to ``num_batches`` if given) before
        applying."""
        if not isinstance(state, dict):
            raise TypeError(f"jackknife state must be a dict, got {type(state).__name__}")
        if state.get("groups") != self.groups:
            raise ValueError(f"jackknife state has {state.get('groups')!r} groups; this one "
                             f"has {self.groups}")
        g = self.groups
        shapes = {"cross": (g, self.la, self.lb), "hsic_a": (g, self.la),
                  "hsic_b": (g, self.lb), "count": (g,)}
        vals = {k: state.get(k) for k in shapes}
        if all(v is None for v in vals.values()):
            self.cross = self.hsic_a = self.hsic_b = self.count = None
            return
        for k, v in vals.items():
            if not isinstance(v, torch.Tensor) or v.dtype != torch.float64 \
                    or tuple(v.shape) != shapes[k]:
                raise ValueError(f"jackknife state {k} must be a float64 tensor of shape "
                                 f"{shapes[k]}, got "
                                 f"{getattr(v, 'dtype', type(v).__name__)} "
                                 f"{tuple(getattr(v, 'shape', ()))}")
            if not bool(torch.isfinite(v).all()):
                raise ValueError(f"jackknife state {k} holds non-finite values")
            if k != "cross" and bool((v < 0).any()):
                raise ValueError(f"jackknife state {k} holds negative values")
        count = vals["count"]
        if not bool((count == count.round()).all()):
            raise ValueError("jackknife state count must hold whole numbers of batches")
        if num_batches is not None and int(count.sum()) != num_batches:
            raise ValueError(f"jackknife state count adds up to {int(count.sum())} batches "
                             f"but num_batches = {num_batches}")
        for k, v in vals.items():
            setattr(self, k, v.detach().clone())

    def all_reduce(self, group=None, device=None) -> None:
        """Sum the slots over the ranks of a torch.distributed group (every rank must have
        added at least one batch, or call with ``device`` to take part with zeros)."""
        import torch.distributed as dist
        if self.cross is None:
            dev = device if device is not None else torch.device("cpu")
            z = lambda *s: torch.zeros(self.groups, *s, dtype=torch.float64, device=dev)  # noqa: E731
            self.cross, self.hsic_a, self.hsic_b = z(self.la, self.lb), z(self.la), z(self.lb)
            self.count = z()
        parts = [self.cross, self.hsic_a, self.hsic_b, self.count]
        flat = torch.cat([p.reshape(-1) for p in parts])
        dist.all_reduce(flat, group=group)
        offset = 0
        for p in parts:
            p.copy_(flat[offset:offset + p.numel()].view_as(p))
            offset += p.numel()
