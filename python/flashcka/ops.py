"""flashcka's two stages as ``torch.library`` custom ops, for ``torch.compile``.

* ``flashcka::gram_rows(xs, backend, kernel, unbiased, sigma, threshold, ct)`` ->
  ``(g (L, m) ct, sq_c (L,) f64, sq (L,) f64, scale (L,) f64)``: every representation's
  centered Gram row in the backend's layout (``_engine.gram_rows``), with the row scales.
* ``flashcka::pair(ga, gb, backend)`` -> ``(L_A, L_B) float64``: every row inner product.

Each has a fake (meta) kernel — output shapes from ``L``, ``n`` and the backend's
``row_length`` — and a registered autograd formula: ``pair``'s is that of ``G_A G_Bᵀ``;
``gram_rows``' (torch layout, linear kernel) is ``dX = H (P(G) + P(G)ᵀ) X_c · scale²`` for a
row gradient G (n × n), P the centering map (HKH or U-centering, both self-adjoint).

Under ``torch.compile`` (``torch.compiler.is_compiling()``), ``cka_matrix`` runs
``cka_matrix_compiled``: the same validation of shapes, dtypes and devices, then these two
ops and plain tensor operations, so ``torch.compile(fullgraph=True)`` of a function that
calls ``flashcka.cka_matrix`` has no graph break. In a compiled graph the Gram route is
always taken, and a zero-variance layer gives NaN without the eager warning (a graph cannot
warn per value); non-finite input still raises inside the op.
"""
from __future__ import annotations

from typing import Optional

import torch

if not hasattr(torch.library, "custom_op"):
    raise ImportError(f"flashcka.ops (cka_matrix under torch.compile) needs torch >= 2.4 "
                      f"(torch.library.custom_op); this is torch {torch.__version__}")

from . import _engine, backends  # noqa: E402
from .backends.torch_backend import center as _center  # noqa: E402

__all__ = ["gram_rows", "pair", "cka_matrix_compiled"]


# ------------------------------------------------------------------ gram_rows

@torch.library.custom_op("flashcka::gram_rows", mutates_args=())
def gram_rows(xs: list[torch.Tensor], backend: str, kernel: str, unbiased: bool,
              sigma: Optional[float], threshold: float, ct: torch.dtype
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    be = backends.get(backend)
    n = xs[0].shape[0]
    s = _engine.Settings(kernel, unbiased, sigma, threshold)
    rows = _engine.gram_rows(be, [x.detach() for x in xs], [f"xs[{i}]" for i in range(len(xs))],
                             n, ct, s)
    scale = rows.scale if rows.scale is not None else torch.ones_like(rows.sq_c)
    return rows.g, rows.sq_c.clone(), rows.sq.clone(), scale.clone()


@gram_rows.register_fake
def _gram_rows_fake(xs, backend, kernel, unbiased, sigma, threshold, ct):
    n, L = xs[0].shape[0], len(xs)
    m = backends.get(backend).row_length(n, unbiased)
    f64 = dict(dtype=torch.float64, device=xs[0].device)
    return (xs[0].new_empty((L, m), dtype=ct), torch.empty(L, **f64), torch.empty(L, **f64),
            torch.empty(L, **f64))


def _gram_rows_setup(ctx, inputs, output):
    xs, backend, kernel, unbiased, _, _, ct = inputs
    ctx.backend, ctx.kernel, ctx.unbiased, ctx.ct, ctx.num = backend, kernel, unbiased, ct, len(xs)
    ctx.save_for_backward(*xs, output[3])


def _gram_rows_backward(ctx, grad_g, grad_sq_c, grad_sq, grad_scale):
    if ctx.backend != "torch" or ctx.kernel != "linear":
        raise RuntimeError(f"flashcka::gram_rows differentiates the torch layout of the linear "
                           f"kernel only (got backend={ctx.backend!r}, kernel={ctx.kernel!r})")
    *xs, scale = ctx.saved_tensors
    grads = []
    for i, x in enumerate(xs):
        n = x.shape[0]
        xf = x.to(ctx.ct).reshape(n, -1)
        xc = xf - xf.mean(0, keepdim=True)
        p = _center(grad_g[i].reshape(n, n), ctx.unbiased)
        dxc = ((p + p.T) @ xc) * (scale[i] * scale[i]).to(ctx.ct)
        dx = dxc - dxc.mean(0, keepdim=True)
        grads.append(dx.reshape(x.shape).to(x.dtype))
    return grads, None, None, None, None, None, None


gram_rows.register_autograd(_gram_rows_backward, setup_context=_gram_rows_setup)


# ------------------------------------------------------------------ pair

@torch.library.custom_op("flashcka::pair", mutates_args=())
def pair(ga: torch.Tensor, gb: torch.Tensor, backend: str) -> torch.Tensor:
    out = backends.get(backend).pair(ga.detach(), gb.detach())
    return out.clone() if out.data_ptr() in (ga.data_ptr(), gb.data_ptr()) else out


@pair.register_fake
def _pair_fake(ga, gb, backend):
    return ga.new_empty((ga.shape[0], gb.shape[0]), dtype=torch.float64)


def _pair_setup(ctx, inputs, output):
    ga, gb, _ = inputs
    ctx.save_for_backward(ga, gb)


def _pair_backward(ctx, grad):
    ga, gb = ctx.saved_tensors
    grad_a = (grad @ gb.to(torch.float64)).to(ga.dtype)
    grad_b = (grad.T @ ga.to(torch.float64)).to(gb.dtype)
    return grad_a, grad_b, None


pair.register_autograd(_pair_backward, setup_context=_pair_setup)


# ------------------------------------------------------------------ compiled cka_matrix

@torch._dynamo.assume_constant_result
def _resolve(backend: str, device: str, dtype: str, grad: bool) -> str:
    """The concrete backend name for tensors of this device and dtype (a trace-time
    constant: selection runs eagerly, once per compiled graph)."""
    probe = torch.empty((4, 1), device=device, dtype=getattr(torch, dtype))
    return backends.select(backend, probe, grad=grad).name


def cka_matrix_compiled(xa, na, xb, nb, s: _engine.Settings, dtype, backend: str):
    """``cka_matrix`` through the custom ops (what runs under ``torch.compile``)."""
    from . import _validate
    s.check()
    backends.check_name(backend)
    same = xb is None
    groups = [(xa, na)] + ([] if same else [(xb, nb)])
    n = _validate.sample_count(groups, s.unbiased)
    _validate.device_of(groups)
    ct = _validate.compute_dtype(groups, dtype)
    grad = torch.is_grad_enabled() and any(t.requires_grad for ts, _ in groups for t in ts)
    name = _resolve(backend, xa[0].device.type, str(ct).replace("torch.", ""), grad)
    args = (name, s.kernel, s.unbiased, s.sigma, float(s.threshold), ct)
    ga, sqc_a, sq_a, sc_a = torch.ops.flashcka.gram_rows(list(xa), *args)
    if same:
        gb, sqc_b, sq_b, sc_b = ga, sqc_a, sq_a, sc_a
    else:
        gb, sqc_b, sq_b, sc_b = torch.ops.flashcka.gram_rows(list(xb), *args)
    norm = _engine.normaliser(n, s.unbiased)
    sa2, sb2 = sc_a.square(), sc_b.square()
    cross = torch.ops.flashcka.pair(ga, gb, name) / (norm * sa2[:, None] * sb2[None, :])
    if same:
        self_a = self_b = cross.diagonal()
    else:
        self_a = (ga.to(torch.float64).square().sum(1)) / (norm * sa2.square())
        self_b = (gb.to(torch.float64).square().sum(1)) / (norm * sb2.square())
    bad_a = _engine.zero_variance(sqc_a, sq_a, ct) | ~(self_a > 0)
    bad_b = _engine.zero_variance(sqc_b, sq_b, ct) | ~(self_b > 0)
    denom = torch.sqrt(self_a.clamp(min=0)[:, None] * self_b.clamp(min=0)[None, :])
    keep = ~(bad_a[:, None] | bad_b[None, :])
    out = cross / denom
    return torch.where(keep, out, torch.full_like(out, float("nan")))
