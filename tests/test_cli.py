"""The flashcka command: info, compare with factories, and the demo in quick mode."""
import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import reference as ref

from flashcka import CKAResult
from flashcka.cli.main import main

FACTORIES = textwrap.dedent("""
    import torch
    from torch import nn

    def model_a():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))

    def model_b():
        torch.manual_seed(1)
        return nn.Sequential(nn.Linear(6, 5), nn.Tanh())

    def data():
        g = torch.Generator().manual_seed(2)
        return [(torch.randn(32, 6, generator=g), torch.zeros(32)) for _ in range(3)]
""")


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "cli_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert "flashcka" in out and "backend torch" in out


def test_python_dash_m_info():
    p = subprocess.run([sys.executable, "-m", "flashcka", "info"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "backend torch" in p.stdout


def test_compare_writes_png_and_json(factories, capsys):
    out = factories / "out"
    assert main(["compare", "--model-a", "cli_factories:model_a", "--model-b",
                 "cli_factories:model_b", "--data", "cli_factories:data", "--layers-a", "0",
                 "2", "--max-batches", "2", "--out", str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "cka.png" in printed and "cka.json" in printed
    assert (out / "cka.png").read_bytes()[:4] == b"\x89PNG"
    r = CKAResult.load(out / "cka.json")
    assert r.names_a == ["0", "2"] and r.names_b == ["0", "1"]
    assert r.num_batches == 2 and r.num_samples == 64
    assert json.loads((out / "cka.json").read_text())["settings"]["unbiased"] is True


def test_compare_self_biased(factories):
    out = factories / "self"
    main(["compare", "--model-a", "cli_factories:model_a", "--data", "cli_factories:data",
          "--biased", "--tokens", "mean", "--out", str(out), "--no-progress"])
    r = CKAResult.load(out / "cka.json")
    assert r.settings["unbiased"] is False and r.settings["same_model"] is True
    assert r.names_a == ["0", "1", "2"]
    # every entry against the float64 biased minibatch estimator on the same activations
    import cli_factories
    model = cli_factories.model_a().double()
    acts = []
    for x, _ in cli_factories.data():
        with torch.no_grad():
            h0 = model[0](x.double())
            acts.append([h0.numpy(), model[1](h0).numpy(), model[2](model[1](h0)).numpy()])
    want = ref.minibatch_cka(acts, acts, unbiased=False)
    np.testing.assert_allclose(r.matrix.numpy(), want, rtol=0, atol=1e-5)
    assert abs(want[0, 2]) < 0.999  # an off-diagonal entry that says something


def test_compare_bad_factory(factories):
    with pytest.raises(SystemExit, match="no attribute 'nope'"):
        main(["compare", "--model-a", "cli_factories:nope", "--data", "cli_factories:data"])
    with pytest.raises(SystemExit, match="package.module:factory"):
        main(["compare", "--model-a", "cli_factories", "--data", "cli_factories:data"])


def test_demo_quick(tmp_path, capsys):
    assert main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "test accuracy" in out and "demo finished" in out
    for name in ("vit_vs_vit", "resnet_vs_resnet", "vit_vs_resnet"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
        r = CKAResult.load(tmp_path / f"{name}.json")
        if name != "vit_vs_resnet":
            torch.testing.assert_close(r.matrix.diagonal(),
                                       torch.ones(len(r.names_a), dtype=torch.float64))
    r = CKAResult.load(tmp_path / "vit_vs_resnet.json")
    assert r.matrix.shape == (15, 9) and r.names_a[0] == "embed" and r.names_b[-1] == "fc"


# ------------------------------------------------------------------ real models and data

from hub_models import need_timm, need_torchvision, need_transformers  # noqa: E402


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """Class folders of small RGB images of assorted sizes (PNG and JPEG)."""
    from PIL import Image
    root = tmp_path_factory.mktemp("imgs")
    g = np.random.default_rng(0)
    for c in ("cat", "dog"):
        (root / c).mkdir()
        for i in range(9):
            a = g.integers(0, 256, (28 + i, 30 + 2 * i, 3), dtype=np.uint8)
            a[: 10 + i] //= 2 + (c == "dog")                 # some structure per class
            Image.fromarray(a).save(root / c / f"{i}.{'png' if i % 2 else 'jpg'}")
    (root / "notes.txt").write_text("not an image")
    return root


def _reference(lm_a, lm_b, names_a, names_b, images, batch_size):
    """Float64 minibatch CKA of the named module outputs, from our own hooks and the
    models' own preprocessing, batched as the CLI does."""
    from PIL import Image
    files = sorted(p for p in images.iterdir() if p.suffix in (".png", ".jpg")) + sorted(
        f for c in sorted(p for p in images.iterdir() if p.is_dir()) for f in sorted(c.iterdir()))
    pil = [Image.open(f).convert("RGB") for f in files]
    acts = []
    for lm, names in ((lm_a, names_a), (lm_b, names_b)):
        mods = dict(lm.model.named_modules())
        per_batch = []
        for s in range(0, len(pil), batch_size):
            got = {}
            hs = [mods[n].register_forward_hook(
                lambda m, i, o, n=n: got.__setitem__(n, o.detach().double().numpy()))
                for n in names]
            with torch.no_grad():
                lm.model(lm.preprocess(pil[s:s + batch_size]))
            for h in hs:
                h.remove()
            per_batch.append([got[n].reshape(got[n].shape[0], -1) for n in names])
        acts.append(per_batch)
    return ref.minibatch_cka(acts[0], acts[1])


def test_timm_vs_torchvision_on_an_image_folder(image_folder, tmp_path, capsys):
    need_timm()
    need_torchvision()
    from flashcka.cli.specs import load_model
    out = tmp_path / "o"
    assert main(["compare", "--model-a", "timm:resnet18", "--model-b", "torchvision:resnet18",
                 "--data", f"imagefolder:{image_folder}", "--image-size", "32",
                 "--layers-a", "layer1", "layer3", "--layers-b", "layer2", "layer4",
                 "--batch-size", "7", "--seed", "3", "--out", str(out), "--no-progress",
                 "--plot-stderr"]) == 0
    r = CKAResult.load(out / "cka.json")
    assert r.names_a == ["layer1", "layer3"] and r.names_b == ["layer2", "layer4"]
    assert r.num_samples == 18 and r.num_batches == 3 and r.stderr is not None
    assert r.settings["model_a"] == "timm:resnet18" and r.settings["data"].startswith("imagefolder")
    torch.manual_seed(3)
    lm_a = load_model("timm:resnet18", image_size=32)
    torch.manual_seed(4)
    lm_b = load_model("torchvision:resnet18", image_size=32)
    want = _reference(lm_a, lm_b, r.names_a, r.names_b, image_folder, 7)
    np.testing.assert_allclose(r.matrix.numpy(), want, rtol=2e-4, atol=2e-5)
    assert (out / "cka.png").read_bytes()[:4] == b"\x89PNG"


def test_timm_vit_vs_hf_vit_config_dir(image_folder, tmp_path):
    """Different inputs (tensor vs pixel_values=) and different preprocessing on one
    folder; the HF directory is a bare config (random) with an image processor."""
    need_timm()
    tr = need_transformers()
    hf = tmp_path / "hfvit"
    tr.ViTConfig(image_size=16, patch_size=8, hidden_size=32, num_hidden_layers=2,
                 num_attention_heads=2, intermediate_size=48).save_pretrained(hf)
    tr.ViTImageProcessor(size={"height": 16, "width": 16}).save_pretrained(hf)
    out = tmp_path / "o"
    assert main(["compare", "--model-a", "timm:vit_tiny_patch16_224", "--kwargs-a",
                 '{"patch_size": 8, "depth": 2}', "--model-b", f"hf:{hf}", "--image-size", "16",
                 "--data", f"imagefolder:{image_folder}", "--tokens", "mean", "--batch-size",
                 "6", "--format", "svg", "--out", str(out), "--no-progress"]) == 0
    r = CKAResult.load(out / "cka.json")
    assert len(r.names_a) == 3 and len(r.names_b) == 3       # embedding + 2 blocks each
    assert r.num_samples == 18 and torch.isfinite(r.matrix).all()
    assert "<svg" in (out / "cka.svg").read_text()


def test_digits_and_npz_with_a_factory_model(tmp_path, monkeypatch):
    """digits (bundled) and the same images as a uint8 npz give the same result; weights
    from a local file are loaded; results match the float64 reference."""
    from flashcka.models.tiny import TinyViT
    monkeypatch.syspath_prepend(str(tmp_path))
    (tmp_path / "tiny.py").write_text("from flashcka.models import TinyViT\n"
                                      "def vit():\n    return TinyViT(depth=2, dim=16)\n")
    torch.manual_seed(7)
    trained = TinyViT(depth=2, dim=16)
    torch.save(trained.state_dict(), tmp_path / "w.pt")
    from sklearn.datasets import load_digits
    imgs = (load_digits().images[:40] * (255.0 / 16.0)).round().astype(np.uint8)
    np.savez(tmp_path / "d.npz", images=imgs, labels=np.zeros(40))
    args = ["compare", "--model-a", "tiny:vit", "--weights-a", str(tmp_path / "w.pt"),
            "--layers-a", "embed", "blocks.0", "blocks.1", "--num-samples", "40",
            "--batch-size", "16", "--no-progress"]
    main(args + ["--data", "digits", "--out", str(tmp_path / "a")])
    main(args + ["--data", f"npz:{tmp_path / 'd.npz'}", "--workers", "2",
                 "--out", str(tmp_path / "b")])
    ra, rb = CKAResult.load(tmp_path / "a/cka.json"), CKAResult.load(tmp_path / "b/cka.json")
    assert ra.matrix.tolist() == rb.matrix.tolist() and ra.num_samples == 40
    x = torch.tensor(imgs, dtype=torch.float32)[:, None] / 255.0
    acts = []
    for s in range(0, 40, 16):
        got = {}
        hs = [m.register_forward_hook(lambda m, i, o, n=n: got.__setitem__(n, o))
              for n, m in trained.named_modules() if n in ("embed", "blocks.0", "blocks.1")]
        with torch.no_grad():
            trained.eval()(x[s:s + 16])
        for h in hs:
            h.remove()
        acts.append([got[n].double().reshape(len(got[n]), -1).numpy()
                     for n in ("embed", "blocks.0", "blocks.1")])
    np.testing.assert_allclose(ra.matrix.numpy(), ref.minibatch_cka(acts, acts), rtol=1e-4,
                               atol=1e-5)


def test_bert_token_npz_uses_the_attention_mask(tmp_path):
    tr = need_transformers()
    bert = tmp_path / "bert"
    tr.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
                  intermediate_size=32, max_position_embeddings=32).save_pretrained(bert)
    g = np.random.default_rng(0)
    ids = g.integers(1, 50, (24, 12))
    mask = np.ones((24, 12), dtype=np.int64)
    for i in range(24):
        mask[i, 4 + i % 8:] = 0
    ids[mask == 0] = 0
    np.savez(tmp_path / "t.npz", input_ids=ids, attention_mask=mask)
    out = tmp_path / "o"
    assert main(["compare", "--model-a", f"hf:{bert}", "--data", f"npz:{tmp_path / 't.npz'}",
                 "--tokens", "mean", "--batch-size", "8", "--out", str(out),
                 "--no-progress"]) == 0
    r = CKAResult.load(out / "cka.json")
    assert r.settings["mask"] == "attention_mask" and r.num_samples == 24
    # every entry against float64 minibatch CKA of the masked token means, hooked by hand
    from flashcka.cli.specs import load_model
    lm = load_model(f"hf:{bert}")
    mods = dict(lm.model.named_modules())
    acts = []
    for s in range(0, 24, 8):
        got = {}
        hs = []
        for n in r.names_a:  # "name:input" points are a module's first positional input
            mod, _, kind = n.partition(":")
            if kind == "input":
                hs.append(mods[mod].register_forward_pre_hook(
                    lambda m, i, n=n: got.__setitem__(n, i[0])))
            else:
                hs.append(mods[mod].register_forward_hook(lambda m, i, o, n=n: got.__setitem__(
                    n, o[0] if isinstance(o, tuple) else getattr(o, "last_hidden_state", o))))
        mb = torch.tensor(mask[s:s + 8])
        with torch.no_grad():
            lm.model.eval()(input_ids=torch.tensor(ids[s:s + 8]), attention_mask=mb)
        for h in hs:
            h.remove()
        w = mb.double()[:, :, None]
        acts.append([((got[n].double() * w).sum(1) / w.sum(1)).numpy() for n in r.names_a])
    # float32 compute at n = 8 per batch: 2.6e-5 off; the unmasked mean is 1.1e-4 off
    np.testing.assert_allclose(r.matrix.numpy(), ref.minibatch_cka(acts, acts), rtol=0,
                               atol=5e-5)


def test_spec_errors_are_helpful(tmp_path, image_folder):
    need_timm()
    need_torchvision()
    with pytest.raises(SystemExit, match="timm:resnet18 or torchvision:resnet18"):
        main(["compare", "--model-a", "resnet18", "--data", "digits"])
    with pytest.raises(SystemExit, match="timm has no model 'resnet_nope'"):
        main(["compare", "--model-a", "timm:resnet_nope"])
    with pytest.raises(SystemExit, match="not a saved transformers model"):
        main(["compare", "--model-a", f"hf:{tmp_path}"])
    with pytest.raises(SystemExit, match=f"imagefolder:{image_folder}"):
        main(["compare", "--model-a", "timm:resnet18", "--data", str(image_folder)])
    (tmp_path / "bad.pt").write_bytes(b"nope")
    with pytest.raises(SystemExit, match="weights_only=True"):
        main(["compare", "--model-a", "timm:resnet18", "--weights-a", str(tmp_path / "bad.pt")])
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "small.pt")
    with pytest.raises(SystemExit, match="does not fit ResNet"):
        main(["compare", "--model-a", "timm:resnet18", "--weights-a", str(tmp_path / "small.pt")])
    with pytest.raises(SystemExit, match=r"create_model\('resnet18'\) with kwargs"):
        main(["compare", "--model-a", "timm:resnet18", "--kwargs-a", '{"no_such_arg": 1}'])
    with pytest.raises(SystemExit, match="--kwargs-a must be a JSON object"):
        main(["compare", "--model-a", "timm:resnet18", "--kwargs-a", "[1]"])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(SystemExit, match="holds no images"):
        main(["compare", "--model-a", "timm:resnet18", "--data", f"imagefolder:{empty}"])


def test_cli_checkpoint_resumes(factories):
    out = factories / "ck"
    args = ["compare", "--model-a", "cli_factories:model_a", "--model-b",
            "cli_factories:model_b", "--data", "cli_factories:data", "--checkpoint",
            str(factories / "run.ckpt"), "--checkpoint-every", "1", "--no-progress"]
    main(args + ["--max-batches", "2", "--out", str(out / "first")])
    assert (factories / "run.ckpt").exists()
    with pytest.raises(SystemExit, match="other arguments"):
        main(args + ["--out", str(out / "second")])          # max_batches differs
    main(args + ["--max-batches", "2", "--out", str(out / "again")])
    assert CKAResult.load(out / "again/cka.json") == CKAResult.load(out / "first/cka.json")


def test_data_specs_flat_folder_and_npz_dicts(tmp_path):
    from PIL import Image

    from flashcka.cli.data import ArrayBatches, Arrays, Images, load_data
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in (2, 0, 1):
        Image.fromarray(np.full((5, 6), 40 * i, dtype=np.uint8)).save(flat / f"im{i}.png")
    src = load_data(f"imagefolder:{flat}")
    assert isinstance(src, Images) and len(src) == 3
    assert [int(np.asarray(src.image(i))[0, 0]) for i in range(3)] == [0, 40, 80]  # sorted
    np.savez(tmp_path / "tok.npz", input_ids=np.arange(30).reshape(10, 3),
             attention_mask=np.ones((10, 3)), labels=np.zeros(10))
    arr = load_data(f"npz:{tmp_path / 'tok.npz'}")
    assert isinstance(arr, Arrays) and sorted(arr.data) == ["attention_mask", "input_ids"]
    got = list(ArrayBatches(arr, 4))
    assert [len(b["input_ids"]) for b in got] == [4, 4, 2]
    assert torch.equal(got[1]["input_ids"], torch.arange(12, 24).reshape(4, 3))
    np.savez(tmp_path / "ragged.npz", a=np.zeros((4, 2)), b=np.zeros((5, 2)))
    with pytest.raises(ValueError, match="share their first dimension"):
        load_data(f"npz:{tmp_path / 'ragged.npz'}")
    with pytest.raises(ValueError, match="digits, imagefolder:PATH, npz:PATH"):
        load_data("mnist")


CMP = ["compare", "--model-a", "cli_factories:model_a", "--model-b", "cli_factories:model_b",
       "--data", "cli_factories:data", "--layers-a", "0", "2", "--no-progress"]


@pytest.mark.parametrize("bad, message", [
    (lambda d: ["--out", str(d / "file.txt")], r"--out .*file\.txt exists and is not a folder"),
    (lambda d: ["--out", str(d / "file.txt" / "sub")], r"--out: cannot write to the folder"),
    (lambda d: ["--out", str(d), "--name", "sub/x"], r"--name must be a file stem"),
    (lambda d: ["--out", str(d), "--name", ""], r"--name must be a file stem"),
    (lambda d: ["--out", str(d), "--checkpoint", str(d / "file.txt" / "ck")],
     r"--checkpoint .*file\.txt exists and is not a folder"),
    (lambda d: ["--out", str(d), "--checkpoint", str(d / "file.txt" / "a" / "ck")],
     r"--checkpoint: cannot write to the folder"),
    (lambda d: ["--out", str(d), "--checkpoint", str(d)], r"--checkpoint .* is a folder"),
])
def test_outputs_checked_before_the_first_batch(factories, monkeypatch, bad, message):
    """--out on a file, --name sub/x, an unwritable --checkpoint: a clear error before any
    batch (they raised FileExistsError/FileNotFoundError tracebacks after the whole run)."""
    (factories / "file.txt").write_text("x")
    cmp = sys.modules["flashcka.compare"]
    ran = []
    monkeypatch.setattr(cmp, "_run", lambda *a, **k: ran.append(1))
    with pytest.raises(SystemExit, match=message):
        main(CMP + bad(factories))
    assert not ran


def test_failed_plot_keeps_the_json(factories, monkeypatch, capsys):
    from flashcka.result import CKAResult as R

    def broken(self, *a, **k):
        raise RuntimeError("no display")
    monkeypatch.setattr(R, "plot", broken)
    out = factories / "o"
    assert main(CMP + ["--out", str(out)]) == 1
    assert "heatmap could not be drawn (RuntimeError: no display)" in capsys.readouterr().err
    assert CKAResult.load(out / "cka.json").names_a == ["0", "2"]


def test_plot_with_tex_like_layer_names(tmp_path):
    """Layer names are text: '$\\foo$' made matplotlib's mathtext raise."""
    r = CKAResult(torch.rand(2, 2, dtype=torch.float64), ["$\\foo$", "a$b"], ["x_1^2", "$$"],
                  {"model_a": "$\\bar", "model_b": "b"})
    assert r.plot(tmp_path / "t.png").read_bytes()[:4] == b"\x89PNG"


def test_image_folder_mixing_grayscale_and_rgb_says_so(factories):
    """It said "pass --image-size" even when --image-size was passed."""
    from PIL import Image
    folder = factories / "imgs"
    folder.mkdir()
    Image.new("L", (8, 8), 30).save(folder / "a.png")
    Image.new("RGB", (8, 8), (1, 2, 3)).save(folder / "b.png")
    with pytest.raises(SystemExit, match=r"mix grayscale and colour \(\[1, 3\] channels\)"):
        main(["compare", "--model-a", "cli_factories:model_a", "--data",
              f"imagefolder:{folder}", "--image-size", "8", "--out", str(factories / "o"),
              "--no-progress"])
