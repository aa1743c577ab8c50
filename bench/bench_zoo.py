"""A model zoo end to end (issue 20): feature stores of 12 models on 2 datasets, the model
x model CKA matrices, their consistency across the datasets, then a 13th model added.

Full run (``python bench/bench_zoo.py``; minutes on 2 cores): 12 random-weight
timm/torchvision models of mixed families (ViT, DeiT, MLP-Mixer, Swin, ResNet x2,
ConvNeXt, EfficientNet, MobileNetV3, MobileNetV2, RegNet, ShuffleNet), small variants at
64 x 64 pixels so that it runs on a shared 2-core CPU; 2 layers each (a middle stage and
the last), pooled by ``tokens="mean"``; the bundled 8x8 digits (1,797 images, upscaled by
each model's preprocessing) and a generated image folder of 2,000 64x64 images. Stages
timed: extraction, the all-pairs CKA over every model/layer (Gram rows kept), the model x
model matrix, the consistency and the plots; then a 13th model (ResNet-34): extracting it
alone and computing its pairs alone, whose time is compared with the first comparison
stage (target: about 1/12). ``--quick`` (and the pytest case, CI's smoke test): the
project's tiny models on 200 digits and a folder of 64 images.

torchvision here is a CUDA build whose compiled ops do not load next to the CPU torch:
``tests/hub_models.load_torchvision`` defines the ``torchvision::nms``/``qnms`` schemas
first (a test/bench fixture, never the package).
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent

FULL = [  # (name, spec, layers): 2 layers each, a middle stage and the last
    ("vit_tiny", "timm:vit_tiny_patch16_224", ["blocks.5", "blocks.11"]),
    ("deit_tiny", "timm:deit_tiny_patch16_224", ["blocks.5", "blocks.11"]),
    ("mixer_s16", "timm:mixer_s16_224", ["blocks.3", "blocks.7"]),
    ("swin_tiny", "timm:swin_tiny_patch4_window7_224", ["layers.2", "layers.3"]),
    ("resnet18", "timm:resnet18", ["layer3", "layer4"]),
    ("tv_resnet18", "torchvision:resnet18", ["layer3", "layer4"]),
    ("convnext_atto", "timm:convnext_atto", ["stages.2", "stages.3"]),
    ("efficientnet_b0", "timm:efficientnet_b0", ["blocks.4", "blocks.6"]),
    ("mobilenetv3_s", "timm:mobilenetv3_small_100", ["blocks.3", "blocks.5"]),
    ("tv_mobilenet_v2", "torchvision:mobilenet_v2", ["features.13", "features.18"]),
    ("regnetx_002", "timm:regnetx_002", ["s3", "s4"]),
    ("tv_shufflenet", "torchvision:shufflenet_v2_x0_5", ["stage3", "stage4"]),
]
THIRTEENTH = ("resnet34", "timm:resnet34", ["layer3", "layer4"])


def _quick_models():
    from flashcka.models import TinyResNet, TinyViT

    def vit(dim, depth, seed):
        torch.manual_seed(seed)
        return TinyViT(dim=dim, depth=depth)

    def res(widths, seed):
        torch.manual_seed(seed)
        return TinyResNet(widths=widths, blocks=1)
    zoo = [("vit_a", vit(32, 2, 0)), ("vit_b", vit(16, 3, 1)), ("res_a", res((6, 12, 16), 2))]
    return zoo, ("res_b", res((10, 20, 24), 3))


def make_folder(path: Path, n: int, size: int, seed: int = 0, mode: str = "RGB") -> Path:
    """n images in 10 class folders: a random background colour and a random ellipse or
    rectangle of another colour (PNG, deterministic)."""
    from PIL import Image, ImageDraw
    if path.is_dir() and sum(1 for _ in path.rglob("*.png")) == n \
            and (path / "mode").is_file() and (path / "mode").read_text() == mode:
        return path
    shutil.rmtree(path, ignore_errors=True)
    g = np.random.default_rng(seed)
    for i in range(n):
        c = path / f"class{i % 10}"
        c.mkdir(parents=True, exist_ok=True)
        im = Image.new("RGB", (size, size), tuple(int(v) for v in g.integers(0, 256, 3)))
        d = ImageDraw.Draw(im)
        x0, y0 = (int(v) for v in g.integers(0, size // 2, 2))
        w, h = (int(v) for v in g.integers(size // 4, size // 2, 2))
        box = [x0, y0, x0 + w, y0 + h]
        col = tuple(int(v) for v in g.integers(0, 256, 3))
        (d.ellipse if i % 2 else d.rectangle)(box, fill=col)
        im.convert(mode).save(c / f"img{i:05d}.png")
    (path / "mode").write_text(mode)
    return path


def _load_hub():
    sys.path.insert(0, str(ROOT / "tests"))
    from hub_models import load_torchvision
    load_torchvision()


def run(quick: bool, work: Path, log=print, keep_stores: bool = False) -> dict:
    """Every stage once; returns the times (s), disk use (bytes) and pair counts.
    ``keep_stores``: reuse the stores of an earlier run (their extraction is then skipped
    and timed as such; the result caches are cleared, the comparisons measured again)."""
    import flashcka
    from flashcka.analysis import cross_dataset_consistency
    from flashcka.store import plots
    work.mkdir(parents=True, exist_ok=True)
    for sub in ("digits/cache", "folder/cache") if keep_stores else ("digits", "folder"):
        shutil.rmtree(work / sub, ignore_errors=True)
    shutil.rmtree(work / "out", ignore_errors=True)
    if quick:
        zoo, extra = _quick_models()
        models = dict(zoo)
        layers = None
        thirteenth = {extra[0]: extra[1]}
        kw = {"num_samples": 200, "image_size": 8}
        folder = make_folder(work / "images_quick", 64, 8, mode="L")
    else:
        _load_hub()
        models = {n: s for n, s, _ in FULL}
        layers = {n: lay for n, _, lay in FULL}
        thirteenth = {THIRTEENTH[0]: THIRTEENTH[1]}
        kw = {"image_size": 64}
        t = time.perf_counter()
        folder = make_folder(work / "images", 2000, 64)
        log(f"image folder: {time.perf_counter() - t:.1f} s")
    datasets = {"digits": "digits", "folder": f"imagefolder:{folder}"}
    quiet = {"progress": False, "log": lambda m: None}
    out: dict = {"models": len(models), "stages": {}}
    st = out["stages"]
    stores = {}
    for ds, data in datasets.items():
        t = time.perf_counter()
        stores[ds] = flashcka.extract(models, data, layers=layers, out=work / ds,
                                      batch_size=64, **kw, **quiet)
        st[f"extract {ds}"] = time.perf_counter() - t
        out[f"disk {ds}"] = stores[ds].disk_bytes()
        out[f"samples {ds}"] = len(stores[ds].sample_ids)
        log(f"extract {ds}: {st[f'extract {ds}']:.1f} s, {out[f'disk {ds}'] / 2**20:.1f} MiB")
    first = list(models)
    mats = {}
    for ds, s in stores.items():
        t = time.perf_counter()
        r = s.similarity(models=first)
        st[f"compare {ds}"] = time.perf_counter() - t
        out[f"pairs {ds}"] = s.last["computed_pairs"]
        log(f"compare {ds}: {len(r.names_a)} layers, {s.last['computed_pairs']} pairs, "
            f"{st[f'compare {ds}']:.2f} s")
        mats[ds] = s.model_matrix(models=first)
    t = time.perf_counter()
    c = cross_dataset_consistency({k: v.matrix for k, v in mats.items()}, n_boot=1000)
    st["consistency"] = time.perf_counter() - t
    out["consistency"] = float(c["correlation"][0, 1])
    out["consistency_ci"] = [float(c["ci_low"][0, 1]), float(c["ci_high"][0, 1])]
    t = time.perf_counter()
    (work / "out").mkdir(exist_ok=True)
    for ds, m in mats.items():
        plots.clustered_heatmap(m, work / "out" / f"{ds}_models.png")
    plots.consistency_plot(c, work / "out" / "consistency.png", list(mats.values()))
    plots.layer_grid(stores["digits"].similarity(models=first), first[:3],
                     work / "out" / "digits_layers.png")
    st["plots"] = time.perf_counter() - t
    # the 13th model: extracted alone, its pairs alone
    for ds, data in datasets.items():
        t = time.perf_counter()
        stores[ds] = flashcka.extract(thirteenth, data, layers=None if quick else
                                      {THIRTEENTH[0]: THIRTEENTH[2]}, out=work / ds,
                                      batch_size=64, **kw, **quiet)
        st[f"extract 13th {ds}"] = time.perf_counter() - t
        t = time.perf_counter()
        stores[ds].similarity()
        st[f"compare 13th {ds}"] = time.perf_counter() - t
        out[f"pairs 13th {ds}"] = stores[ds].last["computed_pairs"]
        log(f"13th model on {ds}: extract {st[f'extract 13th {ds}']:.1f} s, its "
            f"{stores[ds].last['computed_pairs']} pairs {st[f'compare 13th {ds}']:.2f} s")
    # the comparison stages again, alternately (cache cleared, Gram rows kept or not):
    # first run over 12 models vs adding the 13th, 3 times each, medians
    rep = {"first": [], "add": []}
    for _ in range(3):
        for ds, s in stores.items():
            shutil.rmtree(work / ds / "cache", ignore_errors=True)
            t = time.perf_counter()
            s.similarity(models=first)
            rep["first"].append(time.perf_counter() - t)
            t = time.perf_counter()
            s.similarity()
            rep["add"].append(time.perf_counter() - t)
    out["compare first median"] = statistics.median(rep["first"])
    out["compare add median"] = statistics.median(rep["add"])
    out["add / first"] = out["compare add median"] / out["compare first median"]
    log(f"comparison, median of 6: 12 models {out['compare first median']:.3f} s, adding "
        f"the 13th {out['compare add median']:.3f} s, ratio {out['add / first']:.3f}")
    return out


def wide(d: int, work: Path, n: int = 2000, models: int = 12) -> dict:
    """The comparison stages alone on wide layers: 13 MLPs (64 -> d -> d, 2 layers each)
    on n random inputs; 12 models' pairs vs the 13th's, alternately, medians of 3."""
    from torch import nn

    from flashcka.store import Store, write_store
    g = torch.Generator().manual_seed(0)
    data = [(torch.randn(250, 64, generator=g),) for _ in range(n // 250)]

    def net(seed):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(64, d), nn.GELU(), nn.Linear(d, d))
    root = work / f"wide{d}"
    shutil.rmtree(root, ignore_errors=True)
    write_store({f"m{i}": net(i) for i in range(models + 1)}, data, out=root,
                layers=["0", "2"], progress=False, log=lambda m: None)
    s = Store(root)
    first, a, b = s.models[:models], [], []
    for _ in range(3):
        shutil.rmtree(root / "cache", ignore_errors=True)
        t = time.perf_counter()
        s.similarity(models=first)
        a.append(time.perf_counter() - t)
        t = time.perf_counter()
        s.similarity()
        b.append(time.perf_counter() - t)
    fa, fb = statistics.median(a), statistics.median(b)
    return {"d": d, "n": n, "first": fa, "add": fb, "add / first": fb / fa}


def markdown(r: dict) -> str:
    """The stage table of a run (seconds, MiB, pairs)."""
    st = r["stages"]
    rows = ["| stage | digits | folder |", "|---|---|---|"]
    for what in ("extract", "compare", "extract 13th", "compare 13th"):
        rows.append(f"| {what} | {st[f'{what} digits']:.2f} s | {st[f'{what} folder']:.2f} s |")
    rows += [f"| pairs computed (12 models / the 13th) | {r['pairs digits']} / "
             f"{r['pairs 13th digits']} | {r['pairs folder']} / {r['pairs 13th folder']} |",
             f"| store size | {r['disk digits'] / 2**20:.1f} MiB ({r['samples digits']} "
             f"samples) | {r['disk folder'] / 2**20:.1f} MiB ({r['samples folder']} samples) |",
             "", f"consistency {st['consistency']:.3f} s (r = {r['consistency']:.3f}, 95% "
             f"bootstrap interval [{r['consistency_ci'][0]:.3f}, {r['consistency_ci'][1]:.3f}]"
             f"), plots {st['plots']:.2f} s; comparison stage, median of 6 alternating runs: "
             f"12 models {r['compare first median']:.3f} s, adding the 13th "
             f"{r['compare add median']:.3f} s = {r['add / first']:.3f} of it."]
    return "\n".join(rows)


def test_zoo_end_to_end(quick, tmp_path):
    """CI smoke test (--quick): every stage runs, the added model computes its pairs only."""
    if not quick:
        pytest.skip("the full zoo runs as a script: python bench/bench_zoo.py")
    pytest.importorskip("safetensors")
    pytest.importorskip("sklearn")
    r = run(True, tmp_path, log=lambda m: None)
    # TinyViT(depth 2, 3): 3 and 4 layers, TinyResNet(blocks=1): 4 layers; the 4th: 4
    assert r["pairs digits"] == 11 * 12 // 2
    assert r["pairs 13th digits"] == r["pairs 13th folder"] == 4 * 11 + 4 * 5 // 2


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true")
    p.add_argument("--work", default="/tmp/flashcka_bench_zoo")
    p.add_argument("--json", default=None, help="write the figures here")
    p.add_argument("--keep-stores", action="store_true",
                   help="reuse the stores in --work (comparisons measured again)")
    p.add_argument("--wide", type=int, default=None, metavar="D",
                   help="only the comparison stages, on 13 MLPs with layers of width D")
    a = p.parse_args(argv)
    torch.manual_seed(0)
    if a.wide:
        print(wide(a.wide, Path(a.work)))
        return 0
    r = run(a.quick, Path(a.work), keep_stores=a.keep_stores)
    print(json.dumps(r, indent=1))
    print(markdown(r))
    if a.json:
        Path(a.json).write_text(json.dumps(r, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
