"""Errors a newcomer meets first name the fix (issue 26): wrong input mapping, device and
dtype mismatches, NumPy inputs, an interrupted or resumed run."""
import numpy as np
import pytest
import torch
from torch import nn

import flashcka
from flashcka.models.compare import CompareInterrupted


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.blocks = nn.Sequential(*[nn.Sequential(nn.Linear(6, 6), nn.ReLU())
                                      for _ in range(2)])

    def forward(self, x):
        return self.blocks(x)


def images(n=16):
    return torch.randn(n, 6)


def test_dict_batches_hint_at_inputs_a():
    loader = [{"image": images(), "label": torch.arange(16)}]
    with pytest.raises(TypeError, match=r"inputs_a=lambda batch: batch\['image'\]") as e:
        flashcka.compare(Net(), Net(), loader, progress=False)
    assert "keyword arguments" in str(e.value) and "unexpected keyword" in str(e.value)
    r = flashcka.compare(Net(), Net(), loader, inputs_a=lambda b: b["image"],
                         inputs_b=lambda b: b["image"], progress=False)
    assert r.matrix.shape == (3, 3)


def test_label_first_batches_hint_at_the_input_item():
    loader = [(torch.arange(16), images())]
    with pytest.raises(RuntimeError, match=r"inputs_a=lambda batch: batch\[1\]"):
        flashcka.compare(Net(), None, loader, progress=False)


def test_float64_model_float32_data_named():
    with pytest.raises(RuntimeError, match=r"float64 parameters but the batch's input is "
                       r"float32.*model_a\.to\(torch\.float32\)"):
        flashcka.compare(Net().double(), None, [images()], progress=False)


def test_model_errors_without_a_known_fix_pass_through():
    class Broken(Net):
        def forward(self, x):
            raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="^boom$"):
        flashcka.compare(Broken(), None, [images()], progress=False)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_device_without_a_gpu_named():
    with pytest.raises(ValueError, match=r"device='cuda'.*pass device='cpu' or leave "
                       r"device=None"):
        flashcka.compare(Net(), None, [images()], device="cuda", progress=False)


def test_bad_device_named():
    with pytest.raises(ValueError, match=r"device='gpu0' is not a device.*'cpu'"):
        flashcka.compare(Net(), None, [images()], device="gpu0", progress=False)
    with pytest.raises(ValueError, match=r"device='meta' holds shapes but no values.*'cpu'"):
        flashcka.compare(Net(), None, [images()], device="meta", progress=False)


def test_small_batches_name_batch_size():
    with pytest.warns(flashcka.FlashCKAWarning), \
            pytest.raises(ValueError, match=r"at least 4 samples \(the loader's batch_size\)"):
        flashcka.compare(Net(), None, [images(3)], progress=False)


def test_numpy_arrays_are_viewed_not_copied():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 5)), rng.standard_normal((20, 7))
    want = flashcka.cka(torch.from_numpy(x), torch.from_numpy(y))
    assert flashcka.cka(x, y) == want
    assert torch.equal(flashcka.cka_matrix([x, y]), flashcka.cka_matrix(
        [torch.from_numpy(x), torch.from_numpy(y)]))
    assert torch.equal(flashcka.gram(x), flashcka.gram(torch.from_numpy(x)))
    K = flashcka.gram(x).numpy()
    assert torch.equal(flashcka.center(K), flashcka.center(torch.from_numpy(K)))
    from flashcka.core import validate as _validate
    (t,), _ = _validate.representations(x, "x")
    assert t.data_ptr() == x.ctypes.data           # a view: no copy
    with pytest.raises(TypeError, match=r"xs\[1\] is a NumPy array.*astype"):
        flashcka.cka_matrix([x, np.array([["a"]] * 20)])


def test_interrupt_says_where_to_resume(tmp_path):
    ck = tmp_path / "run.ckpt"

    class Stop(Net):
        calls = 0

        def forward(self, x):
            Stop.calls += 1
            if Stop.calls == 4:
                raise KeyboardInterrupt
            return super().forward(x)
    loader = [images() for _ in range(6)]
    with pytest.raises(CompareInterrupted) as e:
        flashcka.compare(Stop(), None, loader, checkpoint=ck, checkpoint_every=2,
                         progress=False)
    assert (e.value.batch, e.value.total, e.value.resume_batch) == (3, 6, 2)
    assert "resume from batch 2" in str(e.value)
    with pytest.raises(KeyboardInterrupt, match="pass checkpoint=PATH"):
        Stop.calls = 0
        flashcka.compare(Stop(), None, loader, progress=False)


def test_resume_says_from_which_batch(tmp_path, capsys):
    ck = tmp_path / "run.ckpt"
    loader = [images() for _ in range(3)]
    torch.manual_seed(0)
    net = Net()
    r1 = flashcka.compare(net, None, loader, checkpoint=ck, progress=False)
    assert "resumed" not in capsys.readouterr().err
    r2 = flashcka.compare(net, None, loader, checkpoint=ck, progress=False)
    assert "resumed from batch 3 of 3" in capsys.readouterr().err
    assert torch.equal(r1.matrix, r2.matrix)


def test_torchvision_built_for_another_torch_is_named(monkeypatch):
    import importlib
    from flashcka.cli import specs
    real = importlib.import_module

    def fake(name, *a):
        if name in ("torchvision", "timm"):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real(name, *a)
    monkeypatch.setattr(specs, "_version", lambda dist: "0.28.0")
    monkeypatch.setattr(specs.importlib, "import_module", fake)
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    for spec in ("torchvision:resnet18", "timm:resnet18"):
        with pytest.raises(specs.SpecError) as e:
            specs.load_model(spec, arg="--model-b")
        msg = str(e.value)
        assert "torchvision 0.28.0 is installed but was built for another torch" in msg, msg
        assert msg.endswith("pip install --force-reinstall --no-deps torchvision==0.28.0 "
                            "--index-url https://download.pytorch.org/whl/cpu"), msg


@pytest.mark.parametrize("version,command", [
    ("2.13.0+cpu", "pip install torchvision==0.28.0 --index-url https://download.pytorch.org/whl/cpu"),
    ("2.14.1+cu126", "pip install torchvision==0.29.1 --index-url https://download.pytorch.org/whl/cu126"),
    ("2.14.1", "pip install torchvision==0.29.1")])
def test_torchvision_command_matches_torch(monkeypatch, version, command):
    from flashcka.cli import specs
    monkeypatch.setattr(torch, "__version__", version)
    assert specs.torchvision_command() == command


def test_missing_timm_says_how_to_keep_torch(monkeypatch):
    import importlib
    from flashcka.cli import specs
    real = importlib.import_module

    def fake(name, *a):
        if name == "timm":
            raise ModuleNotFoundError("No module named 'timm'", name="timm")
        return real(name, *a)
    monkeypatch.setattr(specs.importlib, "import_module", fake)
    with pytest.raises(specs.SpecError, match=r"--model-a: timm models need timm, which is "
                       r"not installed; install the torchvision built for torch .* first "
                       r"\(pip install torchvision==.*\), then pip install timm"):
        specs.load_model("timm:resnet18", arg="--model-a")


def test_progress_bar_only_on_a_terminal(capsys):
    loader = [images() for _ in range(2)]
    flashcka.compare(Net(), None, loader)              # stderr captured: not a terminal
    assert "flashcka compare" not in capsys.readouterr().err
    flashcka.compare(Net(), None, loader, progress=True)
    assert "flashcka compare" in capsys.readouterr().err


def test_info_says_how_hub_libraries_stand(monkeypatch):
    import importlib
    from flashcka.cli import specs
    real = importlib.import_module

    def fake(name, *a):
        if name == "torchvision":
            raise RuntimeError("operator torchvision::nms does not exist")
        return real(name, *a)
    monkeypatch.setattr(specs, "_version", lambda d: None if d == "timm" else "0.28.0")
    monkeypatch.setattr(specs.importlib, "import_module", fake)
    monkeypatch.setattr(torch, "__version__", "2.13.0+cpu")
    st = specs.hub_status()
    assert st["timm"].startswith("not installed: install the torchvision built for torch "
                                 "2.13.0+cpu first")
    assert "built for another torch" in st["torchvision"] and st["torchvision"].endswith(
        "pip install --force-reinstall --no-deps torchvision==0.28.0 "
        "--index-url https://download.pytorch.org/whl/cpu")
