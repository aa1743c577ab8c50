"""Heatmaps say what they show (issue 26): one title style, no "-0.00", tight margins."""
import torch

from flashcka import CKAResult
from flashcka.result import _cell, plot_title

SETTINGS = {"unbiased": True, "kernel": "linear", "model_a": "timm:vit_small_patch16_224",
            "model_b": "torchvision:resnet18", "data": "imagefolder:images",
            "weights": "random", "tokens": "cls", "same_model": False}


def test_title_names_estimator_models_data_samples_weights_tokens():
    t = plot_title(SETTINGS, 2048, 32)
    assert t == ("debiased linear CKA (minibatch): timm:vit_small_patch16_224 vs "
                 "torchvision:resnet18\nimagefolder:images, 2048 samples in 32 batches · "
                 "random weights · tokens: cls")
    one = plot_title({**SETTINGS, "unbiased": False, "kernel": "rbf", "same_model": True,
                      "tokens": ["cls", "mean"]}, 100, 1)
    assert one.startswith("biased rbf CKA: timm:vit_small_patch16_224 with itself\n")
    assert one.endswith("100 samples · random weights · tokens: cls / mean")


def test_cells_never_read_minus_zero():
    assert _cell(-0.001) == "0.00" and _cell(-0.006) == "-0.01" and _cell(0.5) == "0.50"


def test_plot_margins_are_tight(tmp_path):
    from PIL import Image
    import numpy as np
    for L in (9, 60):
        r = CKAResult(torch.rand(L, L, dtype=torch.float64), [f"blocks.{i}" for i in range(L)],
                      [f"layer{i}" for i in range(L)], SETTINGS, num_samples=64, num_batches=2)
        img = np.asarray(Image.open(r.plot(tmp_path / f"{L}.png")).convert("L"))
        ink = np.argwhere(img < 250)
        (top, left), (bottom, right) = ink.min(0), ink.max(0)
        h, w = img.shape
        # at most a few pixels of empty border on each side (was about 25% of the image)
        assert top < 12 and left < 12 and h - bottom < 12 and w - right < 12, (L, ink.min(0),
                                                                                 ink.max(0), h, w)
