"""flashcka's two stages as ``torch.library`` custom ops, for ``torch.compile``.

* ``flashcka::gram_rows(xs, backend, kernel, unbiased, sigma, threshold, ct)`` ->
  ``(g (L, m) ct, sq_c (L,) f64, sq (L,) f64, scale (L,) f64)``: every representation's
  centered Gram row in the backend's layout (``_engine.gram_rows``), with the row scales.
* ``flashcka::pair_stage(ga, gb, backend, same)`` -> ``(raw, qa, qb, la, lb)`` float64:
  ``_engine.pair_stage``, every row inner product and squared row norm of the rows
  normalised by powers of two ``2^la``, ``2^lb`` where they would leave the range.

Each has a fake (meta) kernel — output shapes from ``L``, ``n`` and the backend's
``row_length`` — and a registered autograd formula: ``pair_stage``'s is that of
``G_A G_Bᵀ`` and the row norms (the powers of two are constants);
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

from .core import engine as _engine  # noqa: E402
from . import backends  # noqa: E402
from .backends.torch_backend import center as _center  # noqa: E402

__all__ = ["gram_rows", "pair_stage", "cka_matrix_compiled"]


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


# ------------------------------------------------------------------ pair_stage

@torch.library.custom_op("flashcka::pair_stage", mutates_args=())
def pair_stage(ga: torch.Tensor, gb: torch.Tensor, backend: str, same: bool
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    raw, qa, qb, la, lb = _engine.pair_stage(backends.get(backend), ga.detach(), gb.detach(),
                                             same)
    return raw.clone(), qa.clone(), qb.clone(), la.clone(), lb.clone()


@pair_stage.register_fake
def _pair_stage_fake(ga, gb, backend, same):
    f64 = dict(dtype=torch.float64, device=ga.device)
    la, lb = ga.shape[0], gb.shape[0]
    return (torch.empty(la, lb, **f64), torch.empty(la, **f64), torch.empty(lb, **f64),
            torch.empty(la, **f64), torch.empty(lb, **f64))


def _pair_stage_setup(ctx, inputs, output):
    ga, gb, _, _ = inputs
    ctx.save_for_backward(ga, gb, output[3], output[4])


def _pair_stage_backward(ctx, grad, grad_qa, grad_qb, grad_la, grad_lb):
    """raw = (G_A·2^la)(G_B·2^lb)ᵀ, q = ‖g·2^l‖² (the powers of two are constants)."""
    ga, gb, la, lb = ctx.saved_tensors
    ta, tb = torch.exp2(la)[:, None], torch.exp2(lb)[:, None]
    a64, b64 = ga.to(torch.float64), gb.to(torch.float64)
    grad_a = ta * (grad @ (b64 * tb))
    grad_b = tb * (grad.T @ (a64 * ta))
    if grad_qa is not None:
        grad_a = grad_a + 2 * ta * ta * a64 * grad_qa[:, None]
    if grad_qb is not None:
        grad_b = grad_b + 2 * tb * tb * b64 * grad_qb[:, None]
    return grad_a.to(ga.dtype), grad_b.to(gb.dtype), None, None


pair_stage.register_autograd(_pair_stage_backward, setup_context=_pair_stage_setup)


# ------------------------------------------------------------------ compiled cka_matrix

@torch._dynamo.assume_constant_result
def _resolve(backend: str, device: str, dtype: str, grad: bool) -> str:
    """The concrete backend name for tensors of this device and dtype (a trace-time
    constant: selection runs eagerly, once per compiled graph)."""
    probe = torch.empty((4, 1), device=device, dtype=getattr(torch, dtype))
    return backends.select(backend, probe, grad=grad).name


def cka_matrix_compiled(xa, na, xb, nb, s: _engine.Settings, dtype, backend: str):
    """``cka_matrix`` through the custom ops (what runs under ``torch.compile``): the eager
    route's pair stage (``_engine.pair_stage``), HSICs (``_engine.hsics``) and ratio
    (``_engine.cka_ratio``), without the per-layer warnings."""
    from .core import validate as _validate
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
    ga, sqc_a, _, sc_a = torch.ops.flashcka.gram_rows(list(xa), *args)
    if same:
        gb, sqc_b, sc_b = ga, sqc_a, sc_a
    else:
        gb, sqc_b, _, sc_b = torch.ops.flashcka.gram_rows(list(xb), *args)
    raw, qa, qb, la, lb = torch.ops.flashcka.pair_stage(ga, gb, name, same)
    h = _engine.hsics(raw, qa, qb, -2.0 * _engine._log2(sc_a) - la,
                      -2.0 * _engine._log2(sc_b) - lb, _engine.normaliser(n, s.unbiased), same)
    bad_a = (sqc_a == 0) & _constant(xa) | ~(h.self_a > 0)
    bad_b = (sqc_b == 0) & _constant(xb if not same else xa) | ~(h.self_b > 0)
    return _engine.cka_ratio(h.cross, h.self_a, h.self_b, bad_a, bad_b)


def _constant(xs) -> torch.Tensor:
    """(L,) bool: representations whose rows are all equal (zero variance; a ‖X_c‖² of 0
    from a tiny non-constant input is not)."""
    return torch.stack([(x == x[:1]).all() for x in xs]).to(xs[0].device)
