"""platonic-rep's ``AlignmentMetrics`` on flashcka
(``from flashcka.compat.platonic import AlignmentMetrics``).

The static methods, keywords and return types of ``metrics.py`` of Huh et al. 2024, "The
Platonic Representation Hypothesis" (github.com/minyoungg/platonic-rep): floats, except
``lcs_knn`` (0-d float32 tensor) and ``edit_distance_knn`` (0-d float64 tensor), as there.
The module-level functions of ``metrics.py`` are here too (``hsic_unbiased``,
``hsic_biased``, ``compute_knn_accuracy``, ``compute_nearest_neighbors``,
``longest_ordinal_sequence``, ``compute_distance``, ``remove_outliers``; its
``measure_alignment.prepare_features`` imports them), same signatures and return types.

Features are (n, d) tensors; every ``AlignmentMetrics`` method flattens (n, ...) to
(n, d) (the original's raise or, for ``svcca``, batch over the extra axis);
``compute_nearest_neighbors`` keeps the original's 2-D requirement (a ValueError).
Neighbours are by inner product, i excluded (the original
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

import numbers

import torch

from ..measures import knn as _knn
from ..measures.cka import cka as _cka
from ..measures.similarity import similarity_matrix

__all__ = ["AlignmentMetrics", "hsic_unbiased", "hsic_biased", "compute_knn_accuracy",
           "compute_nearest_neighbors", "longest_ordinal_sequence", "compute_distance",
           "remove_outliers"]


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


# ------------------------------------------------------------------ module-level functions
# metrics.py's own helpers, public there (measure_alignment.py imports them).

def hsic_unbiased(K, L):
    """Unbiased HSIC of kernel matrices K, L (m, m), m >= 4 (Song et al. 2012, eq. 5) ->
    0-d tensor of their dtype, evaluated in float64 with O(m²) work (no m³ product)::

        [tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((m−1)(m−2)) − 2/(m−2) · 1ᵀK̃L̃1] / (m(m−3)),  K̃ = K, diag 0

    K and L need not be symmetric (CKNNA passes neighbour-masked kernels)."""
    k, l = _square_pair(K, L, "hsic_unbiased", 4)
    m = k.shape[0]
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    v = ((k * l.T).sum() + k.sum() * l.sum() / ((m - 1) * (m - 2))
         - 2 * (k.sum(0) @ l.sum(1)) / (m - 2)) / (m * (m - 3))
    return v.to(torch.result_type(K, L))


def hsic_biased(K, L):
    """Biased HSIC ``tr(K H L H)``, H = I − 11ᵀ/m, of K, L (m, m) -> 0-d tensor of their
    dtype (not divided by (m−1)², as the original); evaluated in float64 as
    ``Σ_ij (HKH)_ij L_ji`` without forming H."""
    k, l = _square_pair(K, L, "hsic_biased", 1)
    kc = k - k.mean(0, keepdim=True) - k.mean(1, keepdim=True) + k.mean()
    return (kc * l.T).sum().to(torch.result_type(K, L))


def compute_knn_accuracy(knn):
    """Fraction of rows i of ``knn`` (n, ...) integer indices that contain i (index = label)
    -> 0-d float32 tensor. (The original broadcasts an (n, topk) input against (n, 1, 1) and
    then tests whether i appears anywhere in the table; it agrees for the (n, k, k) tables
    ``cycle_knn`` passes.)"""
    if not isinstance(knn, torch.Tensor) or knn.dim() < 2 or knn.is_floating_point():
        raise ValueError(f"knn must be an integer tensor (n, topk, ...), got "
                         f"{getattr(knn, 'dtype', type(knn).__name__)} of shape "
                         f"{tuple(getattr(knn, 'shape', ()))}")
    n = knn.shape[0]
    hit = knn.reshape(n, -1) == torch.arange(n, device=knn.device).view(-1, 1)
    return hit.any(1).float().mean()


def compute_nearest_neighbors(feats, topk=1):
    """Indices of each sample's ``topk`` nearest neighbours by inner product, self
    excluded, nearest first: ``feats`` (N, D) -> (N, topk) int64; 1 <= topk <= N − 1."""
    if not isinstance(feats, torch.Tensor) or feats.dim() != 2:
        raise ValueError(f"Expected feats to be 2D (N, D), got "
                         f"{tuple(getattr(feats, 'shape', ())) or type(feats).__name__}")
    n = feats.shape[0]
    if isinstance(topk, bool) or not isinstance(topk, int) or not 1 <= topk <= n - 1:
        raise ValueError(f"topk must be an int in [1, {n - 1}], got {topk!r}")
    return _knn.knn_indices(_gram(feats), topk)


def longest_ordinal_sequence(X, Y):
    """Length of the longest common subsequence of each row pair of X, Y (B, N) integer
    -> (B,) float64 tensor on the CPU, as the original."""
    x, y = _rows(X, Y, "longest_ordinal_sequence")
    return _lcs_lengths(x, y).to(device="cpu", dtype=torch.float64)


def compute_distance(X, Y, dist_fn):
    """``dist_fn(X[i], Y[i])`` of each row pair (rows as numpy arrays) -> (B,) float64
    tensor; X, Y (B, N). Runs serially (the original uses pymp when installed)."""
    x, y = _rows(X, Y, "compute_distance")
    x, y = x.cpu().numpy(), y.cpu().numpy()
    return torch.tensor([float(dist_fn(x[i], y[i])) for i in range(len(x))],
                        dtype=torch.float64)


def remove_outliers(feats, q, exact=False, max_threshold=None):
    """``feats`` clamped to [−t, t]. ``q == 1``: unchanged. ``exact``: t = the element at
    index ⌊q · numel⌋ of all sorted |values|; else t = the mean over samples of each
    sample's q-quantile of |values| (linear interpolation, as ``torch.quantile``, with no
    size limit). ``max_threshold`` is accepted and, as in the original, has no effect."""
    if not isinstance(feats, torch.Tensor) or not feats.is_floating_point():
        raise TypeError(f"feats must be a floating-point tensor, got "
                        f"{getattr(feats, 'dtype', type(feats).__name__)}")
    if isinstance(q, bool) or not isinstance(q, numbers.Real) or not 0 <= q <= 1:
        raise ValueError(f"q must be a number in [0, 1], got {q!r}")
    if q == 1:
        return feats
    a = feats.detach().abs()
    if exact:
        t = a.reshape(-1).sort().values[int(q * a.numel())]
    else:
        if feats.dim() < 2:
            raise ValueError(f"feats must be (n, ...) with features per sample for "
                             f"exact=False, got shape {tuple(feats.shape)}")
        rows = a.reshape(a.shape[0], -1)
        pos = q * (rows.shape[1] - 1)
        lo, hi = int(pos), min(int(pos) + 1, rows.shape[1] - 1)
        vlo = rows.kthvalue(lo + 1, dim=1).values.to(torch.float64)
        vhi = rows.kthvalue(hi + 1, dim=1).values.to(torch.float64)
        t = (vlo + (vhi - vlo) * (pos - lo)).mean().to(feats.dtype)
    return feats.clamp(-t, t)


# ------------------------------------------------------------------ helpers

def _square_pair(K, L, fn, min_m):
    for t, arg in ((K, "K"), (L, "L")):
        if not isinstance(t, torch.Tensor) or t.dim() != 2 or t.shape[0] != t.shape[1]:
            raise ValueError(f"{fn}: {arg} must be a square (m, m) tensor, got "
                             f"{tuple(getattr(t, 'shape', ())) or type(t).__name__}")
    if K.shape != L.shape:
        raise ValueError(f"{fn}: K {tuple(K.shape)} and L {tuple(L.shape)} differ in shape")
    if K.shape[0] < min_m:
        raise ValueError(f"{fn} needs m >= {min_m} samples, got m = {K.shape[0]}")
    return K.detach().to(torch.float64).clone(), L.detach().to(torch.float64).clone()


def _rows(X, Y, fn):
    for t, arg in ((X, "X"), (Y, "Y")):
        if not isinstance(t, torch.Tensor) or t.dim() != 2:
            raise ValueError(f"{fn}: {arg} must be a (B, N) tensor, got "
                             f"{tuple(getattr(t, 'shape', ())) or type(t).__name__}")
    if X.shape != Y.shape:
        raise ValueError(f"{fn}: X {tuple(X.shape)} and Y {tuple(Y.shape)} differ in shape")
    return X, Y


def _gram(f: torch.Tensor) -> torch.Tensor:
    """Inner products of the samples of ``f`` (n, ...) flattened to (n, d)."""
    if not isinstance(f, torch.Tensor) or f.dim() < 1:
        raise ValueError(f"feats must be an (n, ...) tensor, got "
                         f"{tuple(getattr(f, 'shape', ())) or type(f).__name__}")
    f = f.reshape(f.shape[0], -1)
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

