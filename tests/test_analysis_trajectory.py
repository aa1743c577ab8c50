"""trajectory and image_statistics against loops over their definitions (float64)."""
import math

import numpy as np
import pytest
import torch

import flashcka
from flashcka.analysis import ImageStatistics, image_statistics, trajectory


def test_trajectory_matches_definition(rng):
    la, lb = 5, 8
    ab = rng.uniform(0, 1, (la, lb))
    aa = rng.uniform(0, 1, (la, la))
    bb = rng.uniform(0, 1, (lb, lb))
    out = trajectory({("a", "b"): torch.tensor(ab), ("a", "a"): aa, ("b", "b"): bb}, points=7)
    t = [p / 6 for p in range(7)]
    np.testing.assert_allclose(out["depth"].numpy(), t, rtol=0, atol=1e-15)
    ref = [1 - ab[int(math.floor(tp * (la - 1) + 0.5)), int(math.floor(tp * (lb - 1) + 0.5))]
           for tp in t]
    np.testing.assert_allclose(out["distance"][("a", "b")].numpy(), ref, rtol=1e-14, atol=0)
    np.testing.assert_allclose(out["change"]["a"].numpy(), [aa[l, l + 1] for l in range(la - 1)],
                               rtol=0, atol=0)
    np.testing.assert_allclose(out["change"]["b"].numpy(), [bb[l, l + 1] for l in range(lb - 1)],
                               rtol=0, atol=0)
    assert len(trajectory({("a", "b"): ab})["depth"]) == lb          # default P = max L


def test_trajectory_from_results_sequence(rng):
    m = torch.tensor(rng.uniform(0, 1, (3, 3)))
    r_self = flashcka.CKAResult(m, ["x", "y", "z"], ["x", "y", "z"],
                                {"model_a": "ViT", "model_b": "ViT", "same_model": True})
    r_cross = flashcka.CKAResult(m[:, :2], ["x", "y", "z"], ["p", "q"],
                                 {"model_a": "ViT", "model_b": "CNN", "same_model": False})
    out = trajectory([r_self, r_cross])
    assert set(out["change"]) == {"ViT"} and set(out["distance"]) == {("ViT", "CNN")}


def test_trajectory_errors(rng):
    with pytest.raises(ValueError, match="model 'a' has 4 layers"):
        trajectory({("a", "b"): np.ones((3, 2)), ("a", "c"): np.ones((4, 2))})
    with pytest.raises(ValueError, match="self-similarity"):
        trajectory({("a", "a"): np.ones((3, 2))})
    with pytest.raises(ValueError, match="points"):
        trajectory({("a", "b"): np.ones((3, 2))}, points=0)
    with pytest.raises(TypeError, match="results"):
        trajectory("nope")
    with pytest.raises(TypeError, match=r"results\[0\] must be a CKAResult"):
        trajectory([np.ones((2, 2))])


def _ref_stats(img, size, bands):
    c, h, w = img.shape
    pix = []
    for ch in range(c):                  # area average over each cell (h, w divisible here)
        for by in range(size):
            for bx in range(size):
                cell = img[ch, by * h // size:(by + 1) * h // size,
                           bx * w // size:(bx + 1) * w // size]
                pix.append(cell.mean())
    mu = [img[ch].mean() for ch in range(c)]
    sd = [math.sqrt(((img[ch] - mu[ch]) ** 2).mean()) for ch in range(c)]
    sk = [((img[ch] - mu[ch]) ** 3).mean() / sd[ch] ** 3 for ch in range(c)]
    g = img.mean(0)
    g = g - g.mean()
    total, count = [0.0] * bands, [0] * bands
    for u in range(h):
        for v in range(w):
            fy = (u if u < (h + 1) // 2 else u - h) / h
            fx = (v if v < (w + 1) // 2 else v - w) / w
            rho = math.sqrt(fy * fy + fx * fx) / 0.5
            if rho == 0:
                continue
            coef = sum(g[a, b] * np.exp(-2j * np.pi * (u * a / h + v * b / w))
                       for a in range(h) for b in range(w))
            band = min(int(math.floor(rho * bands)), bands - 1)
            total[band] += abs(coef) ** 2
            count[band] += 1
    spec = [math.log1p(t / max(cnt, 1)) for t, cnt in zip(total, count)]
    return pix, mu + sd + sk, spec


@pytest.mark.parametrize("shape,size,bands", [((3, 8, 12), 4, 5), ((1, 6, 6), 3, 3)])
def test_image_statistics_match_definition(rng, shape, size, bands):
    x = rng.uniform(0, 1, (5,) + shape)
    s = image_statistics(torch.tensor(x, dtype=torch.float32), size=size, bands=bands)
    for i in range(5):
        pix, col, spec = _ref_stats(x[i].astype(np.float32).astype(np.float64), size, bands)
        np.testing.assert_allclose(s["pixels"][i].numpy(), pix, rtol=1e-12, atol=1e-14)
        np.testing.assert_allclose(s["colour"][i].numpy(), col, rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(s["spectrum"][i].numpy(), spec, rtol=1e-10, atol=1e-12)


def test_image_statistics_module_with_compare(rng):
    x = torch.tensor(rng.uniform(0, 1, (24, 3, 8, 8)), dtype=torch.float32)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten())
    r = flashcka.compare(model, ImageStatistics(), [x[:12], x[12:]], progress=False)
    assert r.names_b == ["stats.pixels", "stats.colour", "stats.spectrum"]
    assert r.matrix.shape == (3, 3) and bool(torch.isfinite(r.matrix).all())


def test_image_statistics_errors():
    with pytest.raises(ValueError, match=r"\(n, C, H, W\)"):
        image_statistics(torch.zeros(2, 8, 8))
    with pytest.raises(TypeError, match="images has dtype"):
        image_statistics(torch.zeros(2, 1, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="size = 9"):
        image_statistics(torch.zeros(2, 1, 8, 8), size=9)
    with pytest.raises(ValueError, match="non-finite"):
        image_statistics(torch.full((2, 1, 8, 8), float("inf")))
