"""The backend contract (docs/design.md §4). Every backend gives the torch backend's numbers.

All inputs arrive validated (see ``flashcka.core.validate``): floating tensors, one device,
``n`` samples, non-empty features. ``ct`` below is the compute dtype (float32/float64).

A backend stores a centered Gram ``C`` (n × n) as a *row* of its own layout, of length
``row_length(n, unbiased)``, chosen so that the plain dot product of two rows equals the
Frobenius inner product ``⟨C_a, C_b⟩_F``. The torch backend uses the flattened matrix;
a packed backend may keep ``sqrt(2)·triu(C, 1)`` (plus ``diag(C)`` when biased). Rows are
only ever combined with rows of the same backend.
"""
from __future__ import annotations

import torch


def float64_shift(x: torch.Tensor, ct: torch.dtype) -> torch.Tensor | None:
    """x's float64 column mean (x.shape[1:]) when x is float64 and the compute dtype ct is
    narrower, else None. Such x is centred by it before anything is rounded to ct: μ
    rounded to ct would leave a residue |μ|·2⁻²⁴ in every row that swamps a spread below
    ct's resolution of the offset (1e30 + 1e20·noise in float32: CKA 1.2% off, or NaN)."""
    return x.mean(0) if x.dtype == torch.float64 and ct != torch.float64 else None


class ZeroBandwidthError(ValueError):
    """The RBF median heuristic gave sigma = 0 (more than half the distances are zero)."""


class Backend:
    name = "abstract"
    differentiable = False   # whether results carry the inputs' autograd graph

    def usable(self) -> tuple[bool, str]:
        """(usable in this process, reason when not)."""
        raise NotImplementedError

    def accepts(self, x: torch.Tensor) -> bool:
        """Whether this backend runs on ``x``'s device and dtype."""
        raise NotImplementedError

    def preferred(self, x: torch.Tensor) -> bool:
        """Whether ``backend="auto"`` should run this backend on representations like ``x``
        (n, ...) rather than the torch backend it would otherwise fall back to: measured
        rules (docs/design.md §4). True unless a backend says otherwise."""
        return True

    def kernel_matrix(self, x: torch.Tensor, *, kernel: str, sigma, threshold: float,
                      ct: torch.dtype) -> torch.Tensor:
        """Uncentered kernel matrix K (n, n) in ``ct`` of x (n, ...)."""
        raise NotImplementedError

    def center(self, k: torch.Tensor, *, unbiased: bool) -> torch.Tensor:
        """U-centering (unbiased) or HKH (biased) of k (n, n), in k's dtype."""
        raise NotImplementedError

    def row_length(self, n: int, unbiased: bool) -> int:
        raise NotImplementedError

    def scratch_bytes(self, n: int, ct: torch.dtype, d: int = 0) -> int:
        """Working memory of one call building Grams of n samples of (at most) d features in
        ct, beyond the rows (an estimate used to refuse calls that cannot fit:
        ``_engine.check_memory``). Default: the Gram, its centred copy and a temporary,
        n × n each, and the centred features X_c (n, d) (the torch backend's and the
        Triton kernels' copy: 2.5 GB at n = 4096, d = 197·768 in float32)."""
        return (3 * n * n + n * d) * ct.itemsize

    def column_mean(self, x: torch.Tensor, ct: torch.dtype) -> torch.Tensor:
        """Column mean μ of x (n, ...) -> x.shape[1:] in ct (the μ of centered_gram_row)."""
        return x.mean(0, dtype=ct)

    def centered_gram_row(self, x: torch.Tensor, mu: torch.Tensor, out: torch.Tensor, *,
                          kernel: str, sigma, threshold: float, unbiased: bool) -> torch.Tensor:
        """Write the centered Gram of ``x`` (n, ...) into ``out`` (row_length,) of dtype ct.

        ``mu`` (x.shape[1:], ct) is the column mean of x; the Gram is built from
        ``x - mu`` (exactly invariant, and free of float32 cancellation). RBF uses
        ``sigma`` if given, else σ² = threshold² · median of the n² squared distances;
        if that median is 0, raise ZeroBandwidthError — unless every distance is 0 (a
        constant representation), whose kernel is 11ᵀ and centered Gram 0.
        Returns ``‖x - mu‖²_F`` as a 0-d tensor (used to detect zero variance and
        non-finite inputs without another pass over x).
        """
        raise NotImplementedError

    def pair(self, ga: torch.Tensor, gb: torch.Tensor) -> torch.Tensor:
        """Inner products of rows: (LA, m), (LB, m) -> (LA, LB) float64."""
        raise NotImplementedError

    def kernel_tiles(self, xi: list, xj: list | None, out: torch.Tensor, *, kernel: str,
                     two_s2: torch.Tensor | None, shift: torch.Tensor | None, unbiased: bool,
                     dims: list, sums: tuple | None = None, **raw) -> torch.Tensor:
        """The tiled route (core/tiled.py): each layer l's kernel tile of rows I (``xi[l]``,
        (ti, d_l)) against rows J (``xj[l]``, (tj, d_l); ``xj`` None: J = I) into ``out[l]``
        ((L, ti, tj), ct), features already centred (and scaled) in ct. kernel "linear",
        "rbf" (``two_s2[l]`` = 2σ²) or "dist" (squared distances, for the median); minus
        ``shift[l]``; zero diagonal on a diagonal tile when unbiased. ``sums`` (row sums
        (L, ti), column sums (L, tj), float64) receive the final tiles' sums. A backend
        with ``centres_tiles = True`` is given raw rows with ``mus=`` (per layer (d,) in
        ct, or None for rows already centred) and ``scales=`` (floats), and makes the tile
        from scale·(x − μ). Definition:
        ``torch_backend.kernel_tile``; every backend gives its numbers."""
        raise NotImplementedError
