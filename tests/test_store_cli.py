"""``flashcka extract`` / ``flashcka zoo`` and ``flashcka.extract`` with model and data
specs (factories, a hub model, an image folder), resumable and additive; the plots."""
import json
import sys

import numpy as np
import pytest
import torch

import flashcka
from flashcka.cli.main import main
from flashcka.store import Store

pytest.importorskip("safetensors")
pytest.importorskip("sklearn")

FACTORIES = '''
import torch
from flashcka.models import TinyViT, TinyResNet

def vit():
    torch.manual_seed(0)
    return TinyViT(dim=32, depth=2)

def vit_b():
    torch.manual_seed(1)
    return TinyViT(dim=16, depth=3)

def res():
    torch.manual_seed(2)
    return TinyResNet(widths=(6, 12, 16), blocks=1)
'''


@pytest.fixture
def factories(tmp_path, monkeypatch):
    (tmp_path / "zoo_factories.py").write_text(FACTORIES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def _image_folder(path, n, seed):
    from PIL import Image
    g = np.random.default_rng(seed)
    for c in ("a", "b"):
        (path / c).mkdir(parents=True)
    for i in range(n):
        a = (g.random((8, 8)) * 255).astype(np.uint8)
        Image.fromarray(a, mode="L").save(path / ("a", "b")[i % 2] / f"img{i:03d}.png")
    return path


def test_extract_then_zoo_from_the_command_line(factories, capsys):
    (factories / "models.txt").write_text(
        "# the zoo\nvit=zoo_factories:vit --layers blocks.0 blocks.1\n"
        "res=zoo_factories:res --layers layer2.0 layer3.0\n")
    assert main(["extract", "--models-file", "models.txt", "--models", "b=zoo_factories:vit_b",
                 "--num-samples", "90", "--batch-size", "32", "--out", "st",
                 "--no-progress"]) == 0
    store = Store(factories / "st")
    assert store.models == ["b", "vit", "res"]
    assert store.layers("vit") == ["blocks.0", "blocks.1"]
    assert store.layers("res") == ["layer2.0", "layer3.0"]
    assert store.sample_ids == list(range(90))
    m = json.loads((factories / "st/manifest.json").read_text())
    assert m["models"]["vit"]["fingerprint"]["spec"] == "zoo_factories:vit"
    assert m["data"] == "digits" and m["models"]["b"]["flashcka_version"] == flashcka.__version__
    # again: nothing extracted
    assert main(["extract", "--models-file", "models.txt", "--num-samples", "90",
                 "--out", "st", "--no-progress"]) == 0
    assert "vit: already in the store, skipped" in capsys.readouterr().err
    assert main(["zoo", "st", "--out", "z", "--grid", "vit", "res", "--float64",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "36 pairs computed, 0 from the cache" in out
    r = flashcka.load_result(factories / "z/zoo.json")
    feats = {f"{mo}/{la}": store.features(mo, la).double() for mo in store.models
             for la in store.layers(mo)}
    np.testing.assert_allclose(r.matrix.numpy(), flashcka.cka_matrix(feats).numpy(),
                               rtol=1e-12, atol=1e-13)
    for f in ("zoo_models.png", "zoo_layers.png", "zoo_models.json"):
        assert (factories / "z" / f).stat().st_size > 0
    assert main(["zoo", "st", "--out", "z", "--float64", "--no-progress"]) == 0
    assert "0 pairs computed, 36 from the cache" in capsys.readouterr().out


def test_zoo_across_datasets(factories, capsys):
    _image_folder(factories / "imgs", 40, seed=0)
    for ds, data in (("d", "digits"), ("f", "imagefolder:imgs")):
        assert main(["extract", "--models", "vit=zoo_factories:vit", "b=zoo_factories:vit_b",
                     "res=zoo_factories:res", "--data", data, "--num-samples", "40",
                     "--image-size", "8", "--out", ds, "--no-progress"]) == 0
    assert Store(factories / "f").sample_ids[:2] == ["a/img000.png", "a/img002.png"]
    assert main(["zoo", "digits=d", "folder=f", "--across-datasets", "--out", "z",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "consistency (pearson): digits~folder" in out
    c = json.loads((factories / "z/zoo_consistency.json").read_text())
    mats = [flashcka.load_result(factories / f"z/zoo_{ds}_models.json").matrix
            for ds in ("digits", "folder")]
    iu = np.triu_indices(3, 1)
    want = np.corrcoef(mats[0].numpy()[iu], mats[1].numpy()[iu])[0, 1]
    assert c["correlation"][0][1] == pytest.approx(want, rel=1e-12)
    assert (factories / "z/zoo_consistency.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="sample IDs differ: store .*f has 'a/img000.png' at "
                                         "position 0 where store .*d has 0"):
        main(["zoo", "d", "f", "--out", "z2"])


def test_cli_errors_name_the_flag(factories):
    with pytest.raises(SystemExit, match="give --models SPEC ... or --models-file FILE"):
        main(["extract", "--out", "st"])
    with pytest.raises(SystemExit, match=r"--weights takes NAME=FILE with NAME one of \['v'\]"):
        main(["extract", "--models", "v=zoo_factories:vit", "--weights", "x=w.pt",
              "--out", "st"])
    with pytest.raises(SystemExit, match="is not a feature store"):
        main(["zoo", str(factories), "--out", "z"])


def test_a_hub_model_with_local_weights(tmp_path):
    from hub_models import need_timm
    timm = need_timm()
    torch.manual_seed(3)
    net = timm.create_model("test_resnet", pretrained=False)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    from flashcka.cli.zoo import extract
    store = extract({"r": "timm:test_resnet"}, "digits", out=tmp_path / "s", num_samples=24,
                    image_size=32, weights={"r": tmp_path / "w.pt"}, layers=["layer*"],
                    progress=False, log=lambda m: None)
    e = store.entry("r")
    from flashcka.store._io import file_sha256
    assert e["fingerprint"]["weights_sha256"] == file_sha256(tmp_path / "w.pt")
    assert e["weights"] == "trained" and "input_size" in e["fingerprint"]["preprocess"]
    assert store.layers("r") == [f"layer{i}" for i in range(1, len(store.layers("r")) + 1)]
    x = store.features("r", "layer1")
    assert x.shape[0] == 24 and x.dtype == torch.float32


def test_cluster_order_groups_similar_models_and_scipy_is_named(tmp_path, monkeypatch):
    from flashcka.result import CKAResult
    from flashcka.store import plots
    s = np.full((6, 6), 0.2)
    for group in ((0, 2, 4), (1, 3, 5)):
        for i in group:
            for j in group:
                s[i, j] = 0.9
    np.fill_diagonal(s, 1.0)
    order = plots.cluster_order(s)
    assert sorted(order) == list(range(6))
    assert {frozenset(order[:3]), frozenset(order[3:])} == {frozenset((0, 2, 4)),
                                                            frozenset((1, 3, 5))}
    r = CKAResult(torch.tensor(s), [f"m{i}" for i in range(6)], [f"m{i}" for i in range(6)],
                  {"measure": "cka"})
    assert plots.clustered_heatmap(r, tmp_path / "c.png").stat().st_size > 0
    with pytest.raises(ValueError, match="the result has no layers of model 'zz'"):
        plots.layer_grid(r, ["zz"], tmp_path / "g.png")
    s[0, 1] = np.nan
    with pytest.raises(ValueError, match=r"entry \(0, 1\) is not finite"):
        plots.cluster_order(s)
    monkeypatch.setitem(sys.modules, "scipy.cluster", None)
    with pytest.raises(ImportError, match="pip install scipy"):
        plots.clustered_heatmap(r, tmp_path / "c2.png")


def test_an_hf_vision_model_from_a_loader_and_from_a_data_spec(tmp_path):
    from hub_models import need_transformers
    transformers = need_transformers()
    cfg = transformers.ViTConfig(image_size=8, patch_size=4, hidden_size=16,
                                 num_hidden_layers=2, num_attention_heads=2,
                                 intermediate_size=32, num_channels=1)
    cfg.save_pretrained(tmp_path / "vit")
    from flashcka.cli.zoo import extract
    loader = [(torch.rand(12, 1, 8, 8),) for _ in range(2)]
    quiet = {"progress": False, "log": lambda m: None}
    a = extract({"h": f"hf:{tmp_path / 'vit'}"}, loader, out=tmp_path / "a",
                layers="layers.*", **quiet)
    assert a.layers("h") == ["layers.0", "layers.1"]
    assert a.features("h", "layers.1").shape == (24, 16)
    b = extract({"h": f"hf:{tmp_path / 'vit'}"}, "digits", out=tmp_path / "b", num_samples=20,
                layers="layers.*", **quiet)
    assert b.entry("h")["fingerprint"]["preprocess"] == "resize to 8x8, mean = std = 0.5"
    assert b.features("h", "layers.0").shape == (20, 16)


def test_ctrl_c_during_extract_says_how_to_resume(monkeypatch, capsys):
    import flashcka.cli.zoo as zoo

    def stop(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(zoo, "extract", stop)
    assert main(["extract", "--models", "flashcka.models:TinyViT", "--out", "st"]) == 130
    assert "the shards written are kept: run the same command to resume" in \
        capsys.readouterr().err
