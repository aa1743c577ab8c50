"""``flashcka demo``: train a tiny ViT and a tiny ResNet on scikit-learn's 8×8 digits, then
compare every layer of each with every layer of both (ViT vs ViT, ResNet vs ResNet, ViT vs
ResNet) on held-out digits, writing three heatmaps (PNG) and their results (JSON).

The digits ship with scikit-learn (``sklearn.datasets.load_digits``): nothing is
downloaded. Training is seeded and runs on the CPU; the whole demo takes about a minute on
two cores.
"""
from __future__ import annotations

import time
from pathlib import Path

import torch
from torch import nn

from ..models.compare import compare
from ..models.tiny import BasicBlock, Block, TinyResNet, TinyViT

VIT_LAYERS = ["embed", "blocks.*.attn", "blocks.*.mlp", Block, "norm", "head"]
RESNET_LAYERS = ["stem", BasicBlock, "pool", "fc"]


def load_digits_split(test_size: int = 500, seed: int = 0):
    """(x_train, y_train, x_test, y_test): images (n, 1, 8, 8) float32 in [0, 1]."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:  # pragma: no cover - scikit-learn is an optional dependency
        raise ImportError("the demo needs scikit-learn (pip install 'flashcka[demo]')") from e
    d = load_digits()
    x = torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0
    y = torch.tensor(d.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
    test, train = perm[:test_size], perm[test_size:]
    return x[train], y[train], x[test], y[test]


def train(model: nn.Module, x, y, *, epochs: int, lr: float, batch: int = 64, seed: int = 0):
    """Seeded Adam training with cross-entropy; returns the model (in eval mode)."""
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    model.train()
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            idx = perm[i:i + batch]
            loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return model.eval()


@torch.no_grad()
def accuracy(model: nn.Module, x, y) -> float:
    model.eval()
    return float((model(x).argmax(1) == y).float().mean())


def run(out="flashcka_demo", *, epochs: int | None = None, quick: bool = False,
        batch_size: int = 256, progress: bool | None = None, backend: str = "auto",
        log=print) -> dict:
    """Train both models, compare them, write ``{vit_vs_vit,resnet_vs_resnet,vit_vs_resnet}``
    ``.png`` and ``.json`` under ``out``. ``quick`` trains one epoch on a subset and compares
    on 128 digits (for tests). Returns {"accuracy": ..., "results": ..., "files": ...,
    "seconds": ...}."""
    t0 = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    x_tr, y_tr, x_te, y_te = load_digits_split()
    if quick:
        x_tr, y_tr, x_te, y_te = x_tr[:256], y_tr[:256], x_te[:128], y_te[:128]
        batch_size = min(batch_size, 64)
    ep_vit = epochs if epochs is not None else (1 if quick else 12)
    ep_res = epochs if epochs is not None else (1 if quick else 6)

    # Models this small train faster on one thread (no OpenMP sync per tiny op).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(0)
        vit = train(TinyViT(), x_tr, y_tr, epochs=ep_vit, lr=1e-3, batch=64, seed=0)
        torch.manual_seed(1)
        resnet = train(TinyResNet(), x_tr, y_tr, epochs=ep_res, lr=3e-3, batch=128, seed=1)
    finally:
        torch.set_num_threads(threads)
    acc = {"vit": accuracy(vit, x_te, y_te), "resnet": accuracy(resnet, x_te, y_te)}
    log(f"trained TinyViT ({ep_vit} epochs): test accuracy {acc['vit']:.3f}; "
        f"TinyResNet ({ep_res} epochs): {acc['resnet']:.3f}  "
        f"[{time.perf_counter() - t0:.1f} s]")

    loader = [(x_te[i:i + batch_size], y_te[i:i + batch_size])
              for i in range(0, len(y_te), batch_size)]
    jobs = {"vit_vs_vit": (vit, None, VIT_LAYERS, None),
            "resnet_vs_resnet": (resnet, None, RESNET_LAYERS, None),
            "vit_vs_resnet": (vit, resnet, VIT_LAYERS, RESNET_LAYERS)}
    results, files = {}, []
    for name, (a, b, la, lb) in jobs.items():
        r = compare(a, b, loader, layers_a=la, layers_b=lb, progress=progress, backend=backend)
        r.settings.update(data="8x8 digits (test split)", weights="trained")
        results[name] = r
        files += [r.plot(out / f"{name}.png"), r.save(out / f"{name}.json")]
    seconds = time.perf_counter() - t0
    for name, r in results.items():
        log(f"{name}: {r!r}")
    log(f"wrote {', '.join(str(f) for f in files)}")
    log(f"demo finished in {seconds:.1f} s")
    return {"accuracy": acc, "results": results, "files": files, "seconds": seconds}
