"""Processing trajectories (Mahaut & Baroni 2026, how vision models reach similar
representations): distances between models at matched relative depth, how much each
model changes from one layer to the next, and reference representations of low-level image
statistics that every layer can be compared with.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from ._common import as_matrix, positive_int, relative_depth


def trajectory(results, points: int | None = None) -> dict:
    """Distance between models along processing, and each model's layer-to-layer change.

    Args:
        results: ``{(model_a, model_b): r}`` with ``r`` a ``CKAResult`` or (L_a, L_b)
            matrix of layer-by-layer CKA (rows: model_a's layers in processing order).
            Keys with ``model_a == model_b`` are self-similarities (L_a, L_a). A sequence of
            ``CKAResult``s is also accepted; its keys are then
            ``(settings["model_a"], settings["model_b"])``.
        points: number P of relative depths ``t_p = p / (P − 1)``, p = 0 … P−1 (default: the
            largest layer count among the models).

    Returns a dict:
        ``depth``: (P,) float64, the relative depths t_p.
        ``distance``: ``{(a, b): (P,)}`` for every pair with a ≠ b:
            ``1 − CKA(a_{l_a(t)}, b_{l_b(t)})`` at matched relative depth, the layer of a
            model with L layers at depth t being the nearest one, ``l(t) = ⌊t (L − 1) + ½⌋``.
        ``change``: ``{a: (L_a − 1,)}`` from every self-similarity:
            ``CKA(a_l, a_{l+1})`` for l = 0 … L_a − 2 (transformers change more smoothly than
            CNNs: values nearer 1).
    """
    items = _items(results)
    layer_counts = {}
    for (a, b), m in items.items():
        if a == b and m.shape[0] != m.shape[1]:
            raise ValueError(f"results[{(a, b)!r}] is a self-similarity but has shape "
                             f"{tuple(m.shape)}")
        layer_counts.setdefault(a, m.shape[0])
        layer_counts.setdefault(b, m.shape[1])
        for name, count in ((a, m.shape[0]), (b, m.shape[1])):
            if layer_counts[name] != count:
                raise ValueError(f"results: model {name!r} has {count} layers in the entry "
                                 f"{(a, b)!r} but {layer_counts[name]} in another")
    P = positive_int(points, "points") if points is not None else max(layer_counts.values())
    t = relative_depth(P)
    out = {"depth": t, "distance": {}, "change": {}}
    for (a, b), m in items.items():
        if a == b:
            out["change"][a] = m.diagonal(1).clone()
        else:
            ia = _nearest(t, m.shape[0])
            ib = _nearest(t, m.shape[1])
            out["distance"][(a, b)] = 1.0 - m[ia, ib]
    return out


def _nearest(t: torch.Tensor, L: int) -> torch.Tensor:
    return torch.floor(t * (L - 1) + 0.5).long()


def _items(results) -> dict:
    from ..result import CKAResult
    if isinstance(results, Mapping):
        pairs = list(results.items())
    elif isinstance(results, Sequence) and not isinstance(results, (str, bytes)):
        pairs = []
        for i, r in enumerate(results):
            if not isinstance(r, CKAResult):
                raise TypeError(f"results[{i}] must be a CKAResult when results is a "
                                f"sequence (or pass a {{(model_a, model_b): matrix}} dict), "
                                f"got {type(r).__name__}")
            s = r.settings
            a = s.get("model_a", f"model_a[{i}]")
            b = a if s.get("same_model") else s.get("model_b", f"model_b[{i}]")
            pairs.append(((a, b), r))
    else:
        raise TypeError(f"results must be a dict {{(model_a, model_b): CKAResult or matrix}} "
                        f"or a sequence of CKAResults, got {type(results).__name__}")
    if not pairs:
        raise ValueError("results is empty")
    items = {}
    for key, r in pairs:
        if not (isinstance(key, tuple) and len(key) == 2):
            raise ValueError(f"results: key {key!r} must be a (model_a, model_b) tuple")
        if key in items:
            raise ValueError(f"results: the pair {key!r} appears twice")
        items[key] = as_matrix(r, f"results[{key!r}]")
    return items


# ------------------------------------------------------------------ image statistics

def image_statistics(images: torch.Tensor, *, size: int = 4, bands: int = 8) -> dict:
    """Reference representations of low-level image statistics, to compare with every layer
    (e.g. ``flashcka.cka_matrix(image_statistics(x), layers)``).

    ``images`` (n, C, H, W) real -> dict of float64 (n, d) tensors:
        ``pixels`` (n, C·size²): each channel area-averaged to size × size
            (``adaptive_avg_pool2d``), i.e. a downsampled image.
        ``colour`` (n, 3C): colour moments per channel (Stricker & Orengo 1995): mean μ,
            standard deviation σ (population, 1/(HW)) and skewness
            ``E[(x − μ)³] / σ³`` (0 where σ = 0).
        ``spectrum`` (n, bands): spatial-frequency power of the channel-mean image g:
            ``P(f) = |FFT2(g − mean g)|²``, averaged over the radial frequency bands
            ``b/bands ≤ ρ < (b+1)/bands`` (b = 0 … bands−1), ``ρ = sqrt(f_y² + f_x²) / 0.5``
            with f in cycles per pixel (``fftfreq``; ρ = 1 at Nyquist along an axis; corner
            frequencies above 1 go into the last band, the DC term into none), then log(1 + ·).
    """
    x = _check_images(images)
    size = positive_int(size, "size")
    bands = positive_int(bands, "bands")
    n, c, h, w = x.shape
    if size > min(h, w):
        raise ValueError(f"size = {size} exceeds the image size {h}×{w}")
    pixels = nn.functional.adaptive_avg_pool2d(x, size).reshape(n, -1)
    flat = x.reshape(n, c, h * w)
    mu = flat.mean(2)
    dev = flat - mu[..., None]
    sd = dev.pow(2).mean(2).sqrt()
    third = dev.pow(3).mean(2)
    skew = torch.where(sd > 0, third / sd.clamp_min(1e-300).pow(3), torch.zeros_like(sd))
    colour = torch.cat([mu, sd, skew], 1)
    g = x.mean(1)
    power = torch.fft.fft2(g - g.mean((1, 2), keepdim=True)).abs().pow(2)
    fy = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    fx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    rho = (fy.pow(2) + fx.pow(2)).sqrt() / 0.5
    band = torch.clamp(torch.floor(rho * bands), max=bands - 1).long().reshape(-1)
    keep = rho.reshape(-1) > 0
    onehot = torch.zeros(h * w, bands, dtype=torch.float64)
    onehot[keep.nonzero()[:, 0], band[keep]] = 1.0
    counts = onehot.sum(0)
    spec = power.reshape(n, -1) @ onehot / counts.clamp_min(1)
    spectrum = torch.log1p(spec)
    return {"pixels": pixels, "colour": colour, "spectrum": spectrum}


def _check_images(images) -> torch.Tensor:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"images must be a torch.Tensor (n, C, H, W), got {type(images).__name__}")
    if images.is_complex() or not images.is_floating_point():
        raise TypeError(f"images has dtype {images.dtype}; real floating-point images are needed")
    if images.dim() != 4 or min(images.shape) == 0:
        raise ValueError(f"images must have shape (n, C, H, W) with no empty dimension, got "
                         f"{tuple(images.shape)}")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images holds non-finite values")
    return images.detach().to(torch.float64)


class ImageStatistics(nn.Module):
    """``image_statistics`` as a model to hook: ``compare(model, ImageStatistics(), loader)``
    compares every layer of ``model`` with the layers ``stats.pixels``, ``stats.colour``
    and ``stats.spectrum`` (outputs (n, d) float32). The forward pass returns the pixels."""

    def __init__(self, size: int = 4, bands: int = 8):
        super().__init__()
        self.size, self.bands = size, bands
        self.stats = nn.ModuleDict({k: _Stat(k) for k in ("pixels", "colour", "spectrum")})

    def forward(self, x):
        s = image_statistics(x, size=self.size, bands=self.bands)
        outs = [self.stats[k](s[k].to(torch.float32)) for k in ("pixels", "colour", "spectrum")]
        return outs[0]


class _Stat(nn.Module):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    def forward(self, v):
        return v
