"""platonic-rep's ``AlignmentMetrics`` on flashcka
(``from flashcka.compat.platonic import AlignmentMetrics``).

The static methods, keywords and return types of ``metrics.py`` of Huh et al. 2024, "The
Platonic Representation Hypothesis" (github.com/minyoungg/platonic-rep): floats, except
``lcs_knn`` (0-d float32 tensor) and ``edit_distance_knn`` (0-d float64 tensor), as there.
Features are (n, d) tensors; neighbours are by inner product, i excluded (the original
fills the diagonal with −1e8; here −inf, so very negative inner products cannot make i
its own neighbour), ties broken by ``torch.topk``.

Where the original is wrong, this does the right thing:

* ``cka`` and ``cknna`` divide by the exact ``sqrt(HSIC_KK · HSIC_LL)``; the original adds
  1e-6, which makes the result depend on the scale of the features (biased HSIC is not
  normalised there) and pulls small values towards 0. Zero variance gives NaN.
* ``cknna(topk=None)`` means all n − 1 neighbours (the original raises TypeError comparing
  None with 2); then, with ``unbiased=True``, CKNNA equals unbiased CKA.
* ``cknna(distance_agnostic=True)`` scores the neighbour masks alone:
  ``|A∘B| / sqrt(|A| |B|)`` (the sum of the intersection mask where the original calls
  ``.item()`` on the n × n mask and fails) — the mutual-kNN fraction.
* ``svcca`` is exact and deterministic: the original takes randomized SVDs
  (``torch.svd_lowrank``), fits sklearn's iterative CCA and adds 1e-10 noise; here the top
  ``cca_dim`` left singular vectors U_A, U_B of the standardised features come from a full
  SVD, and SVCCA is the mean of the canonical correlations of U_A and U_B, i.e. of the
  singular values of U_Aᵀ U_B (both are orthonormal and centered). Columns with zero
  variance are left at 0 (the original divides by std + 1e-8).
* ``cka``/``cknna`` run in float64 for float64 input; ``cka`` uses flashcka's centered
  Grams (exact invariance, no float32 cancellation).
* ``lcs_knn``/``edit_distance_knn`` need no ``pymp``/``torchaudio``: the dynamic programs
  run over all samples at once.
"""
from __future__ import annotations

import torch

from .. import _knn
from ..functional import cka as _cka
from ..similarity import similarity_matrix

__all__ = ["AlignmentMetrics"]


class AlignmentMetrics:

    SUPPORTED_METRICS = [
        "cycle_knn",
        "mutual_knn",
        "lcs_knn",
        "cka",
        "unbiased_cka",
        "cknna",
        "svcca",
        "edit_distance_knn",
    ]

    @staticmethod
    def measure(metric, *args, **kwargs):
        """``metric`` is the name of one of ``SUPPORTED_METRICS``."""
        if metric not in AlignmentMetrics.SUPPORTED_METRICS:
            raise ValueError(f"Unrecognized metric: {metric}")
        return getattr(AlignmentMetrics, metric)(*args, **kwargs)

    @staticmethod
    def cycle_knn(feats_A, feats_B, topk):
        """Fraction of samples i found among the A-neighbours of i's B-neighbours -> float."""
        knn_a, knn_b = _neighbours(feats_A, feats_B, topk)
        n = knn_a.shape[0]
        hit = (knn_a[knn_b] == torch.arange(n, device=knn_a.device).view(-1, 1, 1))
        return hit.reshape(n, -1).any(1).double().mean().item()

    @staticmethod
    def mutual_knn(feats_A, feats_B, topk):
        """Mean over samples of |N_A(i) ∩ N_B(i)| / topk -> float."""
        return similarity_matrix([feats_A], [feats_B], measure="mutual_knn",
                                 topk=topk)[0, 0].item()

    @staticmethod
    def lcs_knn(feats_A, feats_B, topk):
        """Mean length of the longest common subsequence of the ordered neighbour lists
        -> 0-d float32 tensor."""
        knn_a, knn_b = _neighbours(feats_A, feats_B, topk)
        return _lcs_lengths(knn_a, knn_b).float().mean()

    @staticmethod
    def cka(feats_A, feats_B, kernel_metric='ip', rbf_sigma=1.0, unbiased=False):
        """CKA with the inner-product (``'ip'``) or RBF kernel ``exp(−‖a − b‖² / (2σ²))``,
        σ = ``rbf_sigma``; biased or unbiased HSIC -> float."""
        if kernel_metric == 'ip':
            kernel = "linear"
        elif kernel_metric == 'rbf':
            kernel = "rbf"
        else:
            raise ValueError(f"Invalid kernel metric {kernel_metric}")
        return _cka(feats_A, feats_B, kernel=kernel, unbiased=unbiased,
                    sigma=rbf_sigma if kernel == "rbf" else None).item()

    @staticmethod
    def unbiased_cka(*args, **kwargs):
        kwargs['unbiased'] = True
        return AlignmentMetrics.cka(*args, **kwargs)

    @staticmethod
    def svcca(feats_A, feats_B, cca_dim=10):
        """Mean canonical correlation of the top ``cca_dim`` singular directions of the two
        standardised representations (exact) -> float."""
        n = feats_A.shape[0]
        if feats_B.shape[0] != n:
            raise ValueError(f"feats_B has {feats_B.shape[0]} samples but feats_A has {n}")
        limit = min(n - 1, feats_A[0].numel(), feats_B[0].numel())
        if not isinstance(cca_dim, int) or not 1 <= cca_dim <= limit:
            raise ValueError(f"cca_dim must be an int in [1, {limit}] (n − 1 and both "
                             f"widths), got {cca_dim!r}")
        ua = _top_left_singular(feats_A, cca_dim)
        ub = _top_left_singular(feats_B, cca_dim)
        return torch.linalg.svdvals(ua.T @ ub).mean().item()

    @staticmethod
    def edit_distance_knn(feats_A, feats_B, topk):
        """1 − mean Levenshtein distance of the ordered neighbour lists / topk
        -> 0-d float64 tensor."""
        knn_a, knn_b = _neighbours(feats_A, feats_B, topk)
        return 1 - torch.mean(_edit_distances(knn_a, knn_b).double()) / knn_a.shape[1]

    @staticmethod
    def cknna(feats_A, feats_B, topk=None, distance_agnostic=False, unbiased=True):
        """CKNNA: CKA restricted to mutual nearest neighbours (``topk=None``: n − 1) -> float."""
        n = feats_A.shape[0]
        if topk is None:
            topk = n - 1
        if isinstance(topk, int) and not isinstance(topk, bool) and topk < 2:
            raise ValueError("CKNNA requires topk >= 2")
        if not distance_agnostic:
            return similarity_matrix([feats_A], [feats_B], measure="cknna", topk=topk,
                                     unbiased=unbiased, dtype=torch.float64)[0, 0].item()
        ka, kb = (_gram(f) for f in (feats_A, feats_B))
        ma = _knn.knn_mask(ka, topk, exclude_self=unbiased)
        mb = _knn.knn_mask(kb, topk, exclude_self=unbiased)
        return ((ma * mb).sum() / torch.sqrt(ma.sum() * mb.sum())).item()


# ------------------------------------------------------------------ helpers

def _gram(f: torch.Tensor) -> torch.Tensor:
    if f.dim() != 2:
        raise ValueError(f"Expected feats to be 2D, got {f.dim()}")
    f = f if f.dtype in (torch.float32, torch.float64) else f.float()
    return f @ f.T


def _neighbours(feats_a, feats_b, topk):
    n = feats_a.shape[0]
    if feats_b.shape[0] != n:
        raise ValueError(f"feats_B has {feats_b.shape[0]} samples but feats_A has {n}")
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= n - 1:
        raise ValueError(f"topk must be an int in [1, {n - 1}], got {topk!r}")
    return (_knn.knn_indices(_gram(feats_a), topk), _knn.knn_indices(_gram(feats_b), topk))


def _top_left_singular(f: torch.Tensor, k: int) -> torch.Tensor:
    x = f.detach().reshape(f.shape[0], -1).to(torch.float64)
    x = x - x.mean(0)
    std = x.std(0)
    x = torch.where(std > 0, x / torch.where(std > 0, std, 1.0), 0.0)
    u, _, _ = torch.linalg.svd(x, full_matrices=False)
    return u[:, :k]


def _lcs_lengths(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Longest common subsequence length of each row pair (B, m), (B, m) -> (B,) int64,
    the classic dynamic program run over all rows at once."""
    b, m = x.shape
    prev = torch.zeros(b, m + 1, dtype=torch.int64, device=x.device)
    for i in range(m):
        cur = torch.zeros_like(prev)
        eq = x[:, i:i + 1] == y                       # (B, m)
        for j in range(m):
            cur[:, j + 1] = torch.where(eq[:, j], prev[:, j] + 1,
                                        torch.maximum(prev[:, j + 1], cur[:, j]))
        prev = cur
    return prev[:, m]


def _edit_distances(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Levenshtein distance of each row pair (B, m), (B, m) -> (B,) int64 (unit costs,
    as torchaudio.functional.edit_distance)."""
    b, m = x.shape
    prev = torch.arange(m + 1, device=x.device).expand(b, m + 1).clone()
    for i in range(m):
        cur = torch.empty_like(prev)
        cur[:, 0] = i + 1
        for j in range(m):
            sub = prev[:, j] + (x[:, i] != y[:, j]).long()
            cur[:, j + 1] = torch.minimum(torch.minimum(prev[:, j + 1] + 1, cur[:, j] + 1), sub)
        prev = cur
    return prev[:, m]

