"""One-off measures of ``flashcka.compare`` behind bench/results/cpu-2core/compare.md.

    python bench/compare_measures.py real [n [backend [batches]]]   # timm ViT-S + torchvision ResNet-18
    python bench/compare_measures.py memory DIM DEPTH BACKEND
    python bench/compare_measures.py compiled

``real`` (defaults: n = 64, 3 batches, as issue 8 asks): the two forward passes alone and
compare() (best of 3, timed alternately after a warm-up of each), and the share
of compare's time spent inside the hooks and in the pair stage (timers around
``GramRecorder._record`` and ``MinibatchCKA.add_rows``), which is the reliable figure on a
shared machine. Needs timm and torchvision (loaded as tests/hub_models.py does).
``memory``: peak RSS above the loaded model (Linux /proc) of a plain forward pass and of
compare() over every module of every block, outputs and inputs, of a TinyViT of the given
width and depth (n = 32, 2 batches).
``compiled``: a torch.compile'd TinyViT alone and under compare(), with the eager ones.
"""
from __future__ import annotations

import gc
import sys
import time
from pathlib import Path

import torch

import flashcka
from flashcka import models
from conftest import repeat_times


def forward_all(mods, loader, call=lambda m, x: m(x)):
    def run():
        with torch.no_grad():
            for x in loader:
                for m in mods:
                    call(m, x)
    return run


def real(n=64, backend="auto", batches=3):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from hub_models import load_torchvision
    tv = load_torchvision()
    import timm
    from flashcka.models.hooks import GramRecorder
    from flashcka.core.minibatch import MinibatchCKA
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch16_224", pretrained=False).eval()
    res = tv.models.resnet18().eval()
    g = torch.Generator().manual_seed(0)
    loader = [torch.randn(n, 3, 224, 224, generator=g) for _ in range(batches)]

    def cmp():
        return flashcka.compare(vit, res, loader, layers_a="blocks", layers_b="blocks",
                                progress=False, jackknife=False, backend=backend)
    fwd = forward_all([vit, res], loader)
    fwd(), cmp()                                      # warm-up
    fwd_all, cmp_all = [], []
    for _ in range(3):                                # alternately: load hits both alike
        for fn, times in ((fwd, fwd_all), (cmp, cmp_all)):
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    fwd_best, cmp_best = min(fwd_all), min(cmp_all)
    spent = {"hooks": 0.0, "pair": 0.0}
    rec, add = GramRecorder._record, MinibatchCKA.add_rows

    def timed(key, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            out = fn(*a, **k)
            spent[key] += time.perf_counter() - t
            return out
        return wrapper
    GramRecorder._record, MinibatchCKA.add_rows = timed("hooks", rec), timed("pair", add)
    try:
        t = time.perf_counter()
        r = cmp()
        total = time.perf_counter() - t
    finally:
        GramRecorder._record, MinibatchCKA.add_rows = rec, add
    print(f"backend={backend} n={n} batches={batches} layers {tuple(r.matrix.shape)} threads "
          f"{torch.get_num_threads()}: two forwards {fwd_best:.2f}s {[round(x, 2) for x in fwd_all]}, "
          f"compare {cmp_best:.2f}s {[round(x, 2) for x in cmp_all]}, ratio {cmp_best / fwd_best:.3f}; "
          f"attribution run {total:.2f}s: hooks {spent['hooks']:.3f}s "
          f"({100 * spent['hooks'] / total:.2f}%), pair stage {spent['pair']:.4f}s "
          f"({100 * spent['pair'] / total:.3f}%) -> compare / forward ~= "
          f"{total / (total - spent['hooks'] - spent['pair']):.4f}")


def _status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) // 1024


def memory(dim, depth, backend):
    n = 32
    torch.manual_seed(0)
    vit = models.TinyViT(image=16, patch=4, dim=dim, depth=depth, heads=16).eval()
    x = torch.randn(n, 1, 16, 16)
    loader = [x, x.clone()]
    spec = ["blocks.**", "blocks.**:input"]
    model_mb = sum(p.numel() * p.element_size() for p in vit.parameters()) / 2**20
    runs = (("forward", forward_all([vit], loader)),
            ("compare", lambda: flashcka.compare(vit, None, loader, layers_a=spec,
                                                 progress=False, jackknife=False,
                                                 backend=backend)))
    for name, fn in runs:
        gc.collect()
        base = _status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        t = time.perf_counter()
        r = fn()
        print(f"dim={dim} depth={depth} model {model_mb:.0f} MB, {name} ({backend}): peak RSS "
              f"+{_status('VmHWM') - base} MB above the loaded model, RSS after "
              f"+{_status('VmRSS') - base} MB, {time.perf_counter() - t:.1f}s"
              + (f", {len(r.names_a)} points" if r is not None else ""))


def compiled(n=64, batches=3):
    torch.manual_seed(0)
    vit = models.TinyViT(image=16, patch=2, dim=128, depth=6).eval()
    comp = torch.compile(vit)
    g = torch.Generator().manual_seed(0)
    loader = [torch.randn(n, 1, 16, 16, generator=g) for _ in range(batches)]
    t = time.perf_counter()
    forward_all([comp], loader)()
    print(f"compile + first call {time.perf_counter() - t:.1f}s")

    def cmp(m):
        return lambda: flashcka.compare(m, None, loader, layers_a="sublayers", progress=False,
                                        jackknife=False)
    for rnd in range(2):                      # interleaved: the machine may be shared
        row = {"eager forward": min(repeat_times(forward_all([vit], loader), 5)),
               "compiled forward": min(repeat_times(forward_all([comp], loader), 5)),
               "compare(compiled)": min(repeat_times(cmp(comp), 5)),
               "compare(eager)": min(repeat_times(cmp(vit), 5))}
        print(f"round {rnd}: " + ", ".join(f"{k} {v:.3f}s" for k, v in row.items()))
    a, b = cmp(comp)(), cmp(vit)()
    print(f"max |compare(compiled) - compare(eager)| = "
          f"{(a.matrix - b.matrix).abs().nan_to_num().max().item():.2e} "
          f"over {len(a.names_a)} points")


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "real":
        real(*(int(a) if a.isdigit() else a for a in args))
    elif what == "memory":
        memory(int(args[0]), int(args[1]), args[2])
    elif what == "compiled":
        compiled()
    else:
        raise SystemExit(__doc__)
