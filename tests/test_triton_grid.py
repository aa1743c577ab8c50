"""Launch geometry of the Triton Gram (triton_launch.gram_plan) for a mocked SM count: no
GPU and no interpreter needed; the shapes are meta tensors (no memory).

At minibatch shapes (n ∈ {128, 256, 512}, d ≥ 16,384) the upper-triangle tiles alone are
10–36 programs; split-K must bring the grid to at least 2 × SMs, for (n, d) and for token
(n, T, C) inputs read through their strides, without splitting a large grid further.
"""
import pytest
import torch

pytest.importorskip("triton")
from flashcka.backends import triton_launch as tl  # noqa: E402

SMS = [108, 132]           # A100, H100/H200


def _plan(x, sms, ct=torch.float32):
    xv, T, C, *_ = tl.token_view(x)
    return tl.gram_plan(x.shape[0], T * C, ct, sms=sms, interpret=False), T, C


def _inputs(n, d):
    """(n, d) contiguous, and (n, T, C) token layouts whose strides cannot be merged."""
    yield "n_d", torch.empty(n, d, device="meta")
    c = 768 if d % 768 == 0 else 1024
    t = d // c
    yield "n_T_C_transposed", torch.empty(n, c, t, device="meta").transpose(1, 2)
    yield "n_T_C_sliced", torch.empty(n, t, c + 1, device="meta")[:, :, :c]


@pytest.mark.parametrize("sms", SMS)
@pytest.mark.parametrize("d", [16384, 65536, 197 * 768])
@pytest.mark.parametrize("n", [128, 256, 512])
@pytest.mark.parametrize("ct", [torch.float32, torch.float64])
def test_minibatch_shapes_fill_the_gpu(n, d, sms, ct):
    for layout, x in _inputs(n, d):
        plan, T, C = _plan(x, sms, ct)
        if layout != "n_d":
            assert T > 1, "the token layout was merged: this case tests nothing"
        assert plan.ntri == plan.nb * (plan.nb + 1) // 2
        assert plan.programs >= 2 * sms, (layout, plan)
        steps = -(-T * C // plan.cfg["BLOCK_K"])
        assert plan.per_split * plan.splits >= steps                 # every step covered
        assert plan.per_split * (plan.splits - 1) < steps            # no empty split
        assert plan.per_split >= tl.MIN_STEPS


def test_large_grids_are_not_split():
    plan, _, _ = _plan(torch.empty(4096, 16384, device="meta"), 132)
    assert plan.splits == 1 and plan.ntri == 64 * 65 // 2
    plan, _, _ = _plan(torch.empty(128, 200, device="meta"), 132)   # few features: no split
    assert plan.splits == 1


def test_only_upper_tiles_are_launched():
    plan, _, _ = _plan(torch.empty(1000, 64, device="meta"), 1)
    assert plan.nb == 16 and plan.programs == 136                    # not 16² = 256


def test_tile_coords_formula_every_tile():
    """kernels/triton/gram.py's _tile_coords, mirrored in numpy float32 (its float32 square
    root plus the ±1 corrections), gives every upper tile exactly once, row-major, for nb up
    to 3000 (n = 96,000 at 32 rows a block). The interpreter tests run the kernel itself
    (nb ≤ 10)."""
    import numpy as np
    for nb in [1, 2, 3, 7, 64, 181, 1000, 2047, 3000]:
        t = np.arange(nb * (nb + 1) // 2, dtype=np.int64)
        u = nb * (nb + 1) // 2 - 1 - t
        r = ((np.sqrt((8 * u + 1).astype(np.float32)) - np.float32(1)) * np.float32(0.5))
        r = r.astype(np.int64)
        r = np.where((r + 1) * (r + 2) // 2 <= u, r + 1, r)
        r = np.where(r * (r + 1) // 2 > u, r - 1, r)
        bi, bj = nb - 1 - r, nb - 1 - (u - r * (r + 1) // 2)
        ii, jj = np.triu_indices(nb)
        assert np.array_equal(bi, ii) and np.array_equal(bj, jj), nb
