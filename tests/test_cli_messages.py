"""The command's messages speak in its flags and say the fix (issue 26)."""
import textwrap

import numpy as np
import pytest
import torch

from flashcka.cli.main import main

FACTORIES = textwrap.dedent("""
    import os
    import torch
    from torch import nn

    class Net(nn.Sequential):
        calls = 0

        def forward(self, x):
            Net.calls += 1
            if Net.calls == int(os.environ.get("STOP_AT_CALL", "0")):
                raise KeyboardInterrupt
            return super().forward(x)

    def model():
        torch.manual_seed(0)
        return Net(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
""")


@pytest.fixture
def setup(tmp_path, monkeypatch):
    (tmp_path / "cli_msg_factories.py").write_text(FACTORIES)
    monkeypatch.syspath_prepend(str(tmp_path))
    np.savez(tmp_path / "d.npz", x=np.random.default_rng(0).standard_normal((12, 6))
             .astype(np.float32))
    return ["compare", "--model-a", "cli_msg_factories:model", "--data",
            f"npz:{tmp_path / 'd.npz'}", "--out", str(tmp_path / "out"), "--no-progress"]


def test_layer_errors_name_the_flag(setup):
    with pytest.raises(SystemExit, match="--layers-a") as e:
        main(setup + ["--layers-a", "nope"])
    assert "layers_a" not in str(e.value)


def test_small_batches_name_batch_size(setup):
    with pytest.warns(UserWarning), pytest.raises(
            SystemExit, match=r"at least 4 samples \(--batch-size\), or --biased"):
        main(setup + ["--batch-size", "3"])


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_names_the_flag(setup):
    with pytest.raises(SystemExit, match="--device cuda: .*pass --device cpu"):
        main(setup + ["--device", "cuda"])


def test_ctrl_c_says_how_to_resume(setup, tmp_path, monkeypatch, capsys):
    import cli_msg_factories
    args = setup + ["--batch-size", "4", "--checkpoint", str(tmp_path / "run.ckpt"),
                    "--checkpoint-every", "1"]
    monkeypatch.setenv("STOP_AT_CALL", "3")
    assert main(args) == 130
    err = capsys.readouterr().err
    assert "stopped (Ctrl-C) at batch 2 of 3; run the same command to resume from batch 2" \
        in err and "flashcka compare --model-a cli_msg_factories:model" in err
    monkeypatch.setenv("STOP_AT_CALL", "0")
    cli_msg_factories.Net.calls = 0
    assert main(args) == 0
    assert "resumed from batch 2 of 3" in capsys.readouterr().err
    from flashcka import load_result
    r = load_result(tmp_path / "out" / "cka.json")      # the plot title's facts
    assert (r.settings["weights"], r.settings["data"]) == ("factory's", "npz:d.npz")
    assert r.title().endswith("npz:d.npz, 12 samples in 3 batches · factory's weights · "
                              "tokens: flatten")
    cli_msg_factories.Net.calls = 0
    monkeypatch.setenv("STOP_AT_CALL", "1")
    assert main(setup + ["--batch-size", "4"]) == 130
    assert "add it to make runs resumable" in capsys.readouterr().err


def test_every_option_has_help():
    import argparse
    from flashcka.cli.main import _parser
    sub = next(a for a in _parser()._actions if isinstance(a, argparse._SubParsersAction))
    for name, parser in sub.choices.items():
        for action in parser._actions:
            assert action.help, f"flashcka {name} {action.option_strings}: no help text"


def test_default_output_folders_are_ignored_by_git():
    import shutil
    import subprocess
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    if shutil.which("git") is None or not (root / ".git").exists():
        pytest.skip("not a git checkout")
    paths = ["flashcka_out/cka.png", "flashcka_demo/vit_vs_resnet.png",
             "vit_vs_cnn_out/summary.json", "ckpt.pt"]
    done = subprocess.run(["git", "check-ignore", *paths], cwd=root, capture_output=True,
                          text=True)
    assert done.stdout.split() == paths, done.stdout + done.stderr
