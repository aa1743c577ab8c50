"""``similarity_matrix``: CKA, mutual kNN, CKNNA, RSA, Procrustes, CCA, SVCCA, PWCCA or
linear-regression fit between every pair of layers."""
from __future__ import annotations

import math
import warnings

import torch

from . import cca as _cca, knn as _knn, linreg as _linreg, procrustes as _procrustes
from . import subspace as _subspace
from ..core import sources as _sources, validate as _validate
from .cka import cka_matrix

SUBSPACE_MEASURES = ("procrustes", "cca", "svcca", "pwcca", "linreg")
MEASURES = ("cka", "mutual_knn", "cknna", "rsa") + SUBSPACE_MEASURES
RSA_METHODS = ("spearman", "pearson")
DEFAULT_MAX_BYTES = 4 << 30


def similarity_matrix(xs, ys=None, *, measure: str = "cka", topk: int = 10,
                      unbiased: bool = True, rsa_method: str = "spearman",
                      kernel: str = "linear", sigma: float | None = None, threshold: float = 1.0,
                      dtype: torch.dtype | None = None, backend: str = "auto",
                      max_bytes: int = DEFAULT_MAX_BYTES, svcca_threshold: float = 0.99,
                      progress: bool | None = None) -> torch.Tensor:
    """Similarity of every pair: ``xs`` (L_A representations (n, ...)), ``ys`` (L_B, or None
    for xs against itself) -> (L_A, L_B) float64. Sequences or name -> tensor dicts, validated
    as by ``cka_matrix`` (errors name the layer); a layer may also be a file or memmap
    (``flashcka.core.sources``: a ``.npy``/``.safetensors``/HDF5 path, ``"f.safetensors::key"``,
    an h5py dataset; a file or folder alone is all its layers), streamed by CKA's tiled
    route and the kNN measures, read whole by the others. Each layer's Gram (or RDM) is
    computed once; all pairs come from batched products.

    measure:
      * ``"cka"``: ``cka_matrix`` (``kernel``, ``unbiased``, ``sigma``, ``threshold``,
        ``dtype``, ``backend`` as there).
      * ``"mutual_knn"`` (Huh et al. 2024): neighbours of sample i are the ``topk`` samples
        with the largest inner product ``⟨x_i, x_j⟩``, i excluded; the score is the mean over
        samples of |N_A(i) ∩ N_B(i)| / topk = ``⟨A, B⟩_F / (n · topk)`` for 0/1 neighbour
        masks A, B. 1 ≤ topk ≤ n − 1.
      * ``"cknna"`` (Huh et al. 2024): ``HSIC(M∘K, M∘L) / sqrt(HSIC(A∘K, A∘K) HSIC(B∘L, B∘L))``
        with K, L the inner-product Grams of the raw features, A, B their kNN masks,
        M = A∘B, HSIC unbiased (Song et al.; neighbours exclude i) or biased (i may be its
        own neighbour), as platonic-rep's ``cknna`` with ``topk`` (2 ≤ topk ≤ n − 1). The
        kernels are not centered (masking does not commute with centering), so CKNNA is
        computed in float64. NaN with a warning where a self term is not positive.
      * ``"rsa"``: each layer's RDM is ``1 − r`` with r the Pearson correlation between
        samples (rows, across features); the score is the Spearman (``rsa_method=
        "spearman"``, ranks with ties averaged) or Pearson (``"pearson"``) correlation of the
        two RDMs' upper triangles (i < j, n(n−1)/2 entries). Needs n ≥ 3 and no sample with
        constant features.
      * ``"procrustes"``, ``"cca"``, ``"svcca"``, ``"pwcca"``, ``"linreg"``: below.

    Mutual kNN and CKNNA are exact and streamed (``flashcka.measures.knn``): the Gram is
    made a tile of 2048 × 2048 samples at a time and dropped once each row's running
    top-``topk`` has taken it in, so they hold O((L_A + L_B)·n·topk) neighbour lists, never
    an n × n matrix, and their layers may be any row source (``.npy``/``.safetensors``/
    HDF5 files, memmaps; ``flashcka.core.sources``). **Ties: the lower sample index wins.**
    Their estimate (``knn.knn_bytes``) beyond ``max_bytes`` (4 GiB by default) raises
    ``ValueError`` before any work; ``progress`` shows a bar over tile pairs. RSA holds
    ``8·n(n−1)/2·(L_A + L_B)`` bytes of RDM triangles.

    Procrustes, CCA, SVCCA, PWCCA and linear regression (``flashcka.measures.subspace``):
    each layer is centred and factorised once, X_c = U S Vᵀ (thin SVD; rank r: singular
    values above max(n, d)·eps·max(s_max, 1) with max |x| scaled into [1/2, 1)), and every
    pair is the r_A × r_B product U_Aᵀ U_B (one product per row layer against all column
    layers) and a batched SVD of it. With X̃ = X_c/‖X_c‖_F, Ỹ likewise:

      * ``"procrustes"``: ‖X̃ᵀỸ‖_* (nuclear norm) = max over orthogonal Q of ⟨X̃, ỸQ⟩_F ∈ [0, 1]
        (Williams et al. 2021, "Generalized shape metrics on neural representations"; the
        smaller layer is zero-padded, which changes nothing). Its distances, arccos S
        (angular, netrep's) and sqrt(2 − 2S) (Euclidean): ``measures.procrustes.
        procrustes_distance``. Symmetric; any n and d. Needs no SVD per layer: the pairs
        are X̃ᵀỸ themselves (a layer with d > n replaced by an n × n factor of its Gram).
      * ``"cca"``: mean canonical correlation (1/k) Σ ρ_i, ρ = singular values of U_Aᵀ U_B,
        k = min(r_A, r_B) (Hotelling 1936; Raghu et al. 2017's ρ̄). Invariant to invertible
        linear maps of either layer. Symmetric.
      * ``"svcca"``: CCA after keeping each layer's fewest top singular directions whose
        variance Σ s_i² reaches ``svcca_threshold`` (0.99: Raghu et al. 2017, "SVCCA", take
        "enough directions to explain 99% of variance") of its total. Symmetric.
      * ``"pwcca"``: Σ α_i ρ_i / Σ α_i with α_i = Σ_j |⟨h_i, x_j⟩| (Morcos et al. 2018,
        "Insights on representational similarity in neural networks with canonical
        correlation", projection weighting): h_i the i-th canonical variate of X (unit norm), x_j
        the j-th centred neuron of X. **Asymmetric: the row layer (``xs``) is weighted**,
        as their L1 is; ``similarity_matrix(ys, xs, measure="pwcca").T`` weights ``ys``.
        (Their released code weights whichever layer has fewer neurons.) Where canonical
        correlations tie (as the ones forced to 1 when r_A + r_B > n − 1 do), the canonical
        variates, and so the weights, are not unique: PWCCA is then not well defined.
      * ``"linreg"``: R² = 1 − min_B ‖Ỹ − X_c B‖²_F = ‖Q_Xᵀ Ỹ‖²_F: the fraction of the
        variance of the **column layer** (``ys[j]``) explained by a least-squares linear
        fit (with intercept) from the **row layer** (``xs[i]``) (Kornblith et al. 2019,
        "Similarity of neural network representations revisited", "Linear regression").
        Asymmetric.

    CCA, SVCCA, PWCCA (either layer) and linreg (the predictor) raise ``ValueError`` for a
    layer whose (kept) centred features span all n − 1 sample directions (rank n − 1,
    which d ≥ n − 1 features give): every canonical correlation with it is 1 whatever the
    other layer holds. Not regularised: use n > d + 1, SVCCA or CKA. With r_A + r_B > n − 1
    at least r_A + r_B − n + 1 canonical correlations are 1 by construction: CCA needs
    n well above r_A + r_B to mean anything (Raghu et al. use n ≫ d). A layer constant
    over the samples gives NaN with a ``FlashCKAWarning``. These measures compute in
    float64 by default (``dtype=torch.float32`` for speed, ~1e-5 accuracy), whatever the
    inputs' dtype; they hold the bases, 8·n·Σ min(n, d_l) bytes, within ``max_bytes``.
    No gradients. ``progress``: a tqdm bar over row layers (None: when stderr is a
    terminal).

    Other packages (bench/peers/measures_peers.py, float64 inputs): netrep's
    ``LinearMetric(alpha=1)`` angle is arccos of ``"procrustes"`` (agrees to 1e-14);
    ``LinearMetric(alpha=0)`` zero-pads the narrower layer, so its angle has
    cos θ = Σρ_i / sqrt(d_A d_B): the same canonical correlations (agree to 1e-15), the mean
    CCA only where d_A = d_B. anatome's ``orthogonal_procrustes_distance`` (1 − S) and
    ``cca`` agree to 1e-15. anatome's ``svcca_distance`` is not SVCCA: it reduces each
    layer with the SVD of the *uncentred* features, counts |s| instead of s² (variance) and
    keeps one direction fewer than reach the threshold (anatome #27); with the three fixed
    it gives ours. Its ``pwcca_distance`` orthonormalises the CCA coefficients instead of
    the canonical variates and sums |·| over samples of the uncentred layer instead of
    over neurons (anatome #30); with #30's fix it gives ours. Both differ by up to 0.1.
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {MEASURES}, got {measure!r}")
    if measure == "cka":
        return cka_matrix(xs, ys, kernel=kernel, unbiased=unbiased, sigma=sigma,
                          threshold=threshold, dtype=dtype, backend=backend)
    if measure in SUBSPACE_MEASURES:
        if measure == "svcca":
            _cca.threshold_arg(svcca_threshold)
        factor = _subspace.features if measure == "procrustes" else _subspace.basis
        ba, bb, n = _subspace.prepare(_sources.load(xs, "xs"),
                                      None if ys is None else _sources.load(ys, "ys"),
                                      dtype, max_bytes, measure, factor)
        if measure == "procrustes":
            return _procrustes.procrustes_pairs(ba, bb, progress=progress)
        if measure == "svcca":
            return _cca.svcca_pairs(ba, bb, n, svcca_threshold, progress=progress)
        fn = {"cca": _cca.cca_pairs, "pwcca": _cca.pwcca_pairs, "linreg": _linreg.linreg_pairs}
        return fn[measure](ba, bb, n, progress=progress)
    if not isinstance(unbiased, bool):
        raise TypeError(f"unbiased must be True or False, got {unbiased!r}")
    if measure in ("mutual_knn", "cknna"):
        ka, kb, na, nb = _knn.knn_layers(xs, ys, measure=measure, topk=topk, unbiased=unbiased,
                                         dtype=dtype, max_bytes=max_bytes, progress=progress)
        if measure == "mutual_knn":
            return _knn.mutual_knn_pairs(ka, ka if kb is None else kb, topk)
        ca = _knn.CknnaLayers(ka, unbiased)
        cb = ca if kb is None else _knn.CknnaLayers(kb, unbiased)
        return _ratio(_knn.cknna_pairs(ca, cb), _knn.cknna_self(ca), _knn.cknna_self(cb),
                      na, nb, "CKNNA")
    xa, na = _validate.representations(_sources.load(xs, "xs"), "xs")
    xb, nb = (None, na) if ys is None else _validate.representations(_sources.load(ys, "ys"),
                                                                     "ys")
    groups = [(xa, na)] + ([] if xb is None else [(xb, nb)])
    n = _validate.sample_count(groups, unbiased=False)
    _validate.device_of(groups)
    ct = _validate.compute_dtype(groups, dtype)
    if torch.is_grad_enabled() and any(t.requires_grad for ts, _ in groups for t in ts):
        raise ValueError(f"similarity_matrix(measure={measure!r}) does not carry gradients "
                         f"(neighbour sets and ranks are not differentiable): detach the "
                         f"inputs or call it under torch.no_grad(); measure='cka' does")
    if rsa_method not in RSA_METHODS:
        raise ValueError(f"rsa_method must be one of {RSA_METHODS}, got {rsa_method!r}")
    if n < 3:
        raise ValueError(f"{na[0]} has n = {n} samples; RSA needs n >= 3")
    za = _rsa_rows(xa, na, ct, rsa_method)
    zb = za if xb is None else _rsa_rows(xb, nb, ct, rsa_method)
    return _corr_from_rows(za, zb, na, nb if xb is not None else na)


# ------------------------------------------------------------------ helpers

def _flat(x, name, ct) -> torch.Tensor:
    """x as (n, d) in ct, times a power of two that brings max |x| into [1/2, 1) (exact):
    every measure here is invariant to one positive scale of a layer, and the Grams and
    self terms of x·1e±40 left float64's range."""
    f, = _validate.upcast_float8([x.detach().reshape(x.shape[0], -1)])
    amax = float(f.abs().amax())
    if not math.isfinite(amax):
        _validate.raise_non_finite(x, name, ct)
    if amax > 0:
        f = f.to(torch.float64) * math.ldexp(1.0, -math.frexp(amax)[1])
    return f.to(ct)


def _rsa_rows(tensors, names, ct, method) -> torch.Tensor:
    """Each layer's RDM upper triangle (ranked for Spearman), centered and scaled to unit
    norm: (L, n(n−1)/2) float64, so that every pair's correlation is one row product."""
    n = tensors[0].shape[0]
    iu = torch.triu_indices(n, n, 1, device=tensors[0].device)
    rows = []
    for x, name in zip(tensors, names):
        f = _flat(x, name, ct)
        const = f.amax(1) == f.amin(1)        # (its rounded mean need not be its value)
        f = f - f.mean(1, keepdim=True)
        norms = f.norm(dim=1, keepdim=True)
        bad = const | ~(norms[:, 0] > 0)
        if bool(bad.any()):
            raise ValueError(f"{name}: sample {int(bad.nonzero()[0])} has constant features, so "
                             f"its Pearson correlation with other samples (the RDM) is "
                             f"undefined; RSA needs every sample to vary across features")
        f = f / norms
        v = (1.0 - f @ f.T)[iu[0], iu[1]].to(torch.float64)
        if method == "spearman":
            v = _rank(v)
        rows.append(v)
    z = torch.stack(rows)
    z = z - z.mean(1, keepdim=True)
    return z / z.norm(dim=1, keepdim=True)      # a constant RDM gives NaN, handled below


def _rank(v: torch.Tensor) -> torch.Tensor:
    """Ranks 1..m of v with ties given their average rank (scipy.stats.rankdata)."""
    s, order = torch.sort(v)
    _, inverse, counts = torch.unique_consecutive(s, return_inverse=True, return_counts=True)
    start = torch.cumsum(counts, 0) - counts
    avg = start.to(torch.float64) + (counts.to(torch.float64) + 1) / 2
    out = torch.empty_like(v)
    out[order] = avg[inverse]
    return out


def _corr_from_rows(za, zb, names_a, names_b) -> torch.Tensor:
    out = za @ zb.T
    for z, names, axis in ((za, names_a, 0), (zb, names_b, 1)):
        bad = ~torch.isfinite(z).all(1)
        for i in bad.nonzero().flatten().tolist():
            warnings.warn(f"RSA is undefined for {names[i]}: its RDM is constant; its entries "
                          f"are NaN", _validate.FlashCKAWarning, stacklevel=3)
        if axis == 0:
            out[bad] = float("nan")
        else:
            out[:, bad] = float("nan")
    return out


def _ratio(cross, self_a, self_b, names_a, names_b, what) -> torch.Tensor:
    for s, names in ((self_a, names_a), (self_b, names_b)):
        for i in (~(s > 0)).nonzero().flatten().tolist():
            warnings.warn(f"{what} is undefined for {names[i]}: its self term is not positive "
                          f"({float(s[i]):.3g}); its entries are NaN",
                          _validate.FlashCKAWarning, stacklevel=3)
    out = cross / (torch.sqrt(self_a.clamp(min=0))[:, None]
                   * torch.sqrt(self_b.clamp(min=0))[None, :])   # no product of self terms
    out[~(self_a > 0)] = float("nan")
    out[:, ~(self_b > 0)] = float("nan")
    return out
