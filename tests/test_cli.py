"""The flashcka command: info, compare with factories, and the demo in quick mode."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch

from flashcka import CKAResult
from flashcka.cli import main

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
    torch.testing.assert_close(r.matrix.diagonal(), torch.ones(3, dtype=torch.float64))


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
