"""Triton kernels of flashcka (installed as ``flashcka.triton``).

Device code only: ``@triton.jit`` functions that know nothing of torch. Launchers live in
``flashcka.backends.triton_launch``; the backend in ``flashcka.backends.triton_backend``.

- ``gram.py``: ``_centre_kernel`` (X_c = x − 1μᵀ, once, into padded rows),
  ``_gram_stats_kernel`` (upper-triangle tiles of X_c X_cᵀ, diagonal, row sums; split-K
  partials finished by ``_gram_reduce_kernel``) and ``_center_pack_kernel``
  (U-centering / HKH into a packed row). Tiles are launched by a linear upper-triangle
  index (``_tile_coords``).
- ``rbf.py``: ``_rbf_kernel`` (squared distances and exp(-D/(2σ²)) in place, row sums).
- ``pair.py``: ``_pair_kernel`` (split-K inner products of packed rows).
- ``tiled.py``: ``_kernel_tile_kernel`` (one layer's kernel tile of the tiled route: linear,
  squared distances or RBF, shifted, zero diagonal).
"""
from .gram import _center_pack_kernel, _centre_kernel, _gram_reduce_kernel, _gram_stats_kernel
from .pair import _pair_kernel
from .rbf import _rbf_kernel
from .tiled import _kernel_tile_kernel

__all__ = ["_centre_kernel", "_gram_stats_kernel", "_gram_reduce_kernel", "_center_pack_kernel",
           "_rbf_kernel", "_pair_kernel", "_kernel_tile_kernel"]
