"""flashcka compare --features-a FILE [--features-b FILE]: saved features compared without
models (cli/features.py), against the float64 reference's full-batch CKA."""
import numpy as np
import pytest
import torch

import reference as ref

from flashcka import CKAResult
from flashcka.cli.main import main

st = pytest.importorskip("safetensors.torch")


@pytest.fixture
def files(rng, tmp_path):
    """A .safetensors file of three layers (N-D and d = 1 among them) and a folder of two
    .npy layers, 53 samples."""
    n = 53
    z = rng.standard_normal((n, 3))
    a = {"layer10": z @ rng.standard_normal((3, 7)) + 0.5 * rng.standard_normal((n, 7)),
         "layer2": np.tanh(z @ rng.standard_normal((3, 8))).reshape(n, 2, 4),
         "layer1": rng.standard_normal((n, 1))}
    st.save_file({k: torch.from_numpy(v) for k, v in a.items()}, str(tmp_path / "a.safetensors"))
    (tmp_path / "b").mkdir()
    b = {"conv": z[:, :2] ** 2 + 0.1 * rng.standard_normal((n, 2)),
         "fc": rng.standard_normal((n, 5))}
    for k, v in b.items():
        np.save(tmp_path / "b" / f"{k}.npy", v)
    return tmp_path, a, b


def run(tmp_path, *flags):
    assert main(["compare", *flags, "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    return CKAResult.load(tmp_path / "out" / "cka.json")


def want(xs, ys, **kw):
    return np.array([[ref.cka(x, y, **kw) for y in ys] for x in xs])


def test_safetensors_vs_npy_folder(files):
    tmp_path, a, b = files
    r = run(tmp_path, "--features-a", str(tmp_path / "a.safetensors"),
            "--features-b", str(tmp_path / "b"))
    assert r.names_a == ["layer1", "layer2", "layer10"] and r.names_b == ["conv", "fc"]
    assert r.num_samples == 53 and r.num_batches == 1
    assert r.settings["model_a"] == "a.safetensors" and r.settings["model_b"] == "b"
    np.testing.assert_allclose(r.matrix.numpy(), want([a[k] for k in r.names_a],
                                                      [b[k] for k in r.names_b]),
                               rtol=1e-10, atol=1e-12)
    assert (tmp_path / "out" / "cka.png").exists()


def test_one_side_biased_rbf_and_picked_layers(files):
    tmp_path, a, _ = files
    r = run(tmp_path, "--features-a", str(tmp_path / "a.safetensors"), "--layers-a",
            "layer1*", "--kernel", "rbf", "--sigma", "2.5", "--biased")
    assert r.names_a == r.names_b == ["layer1", "layer10"] and r.settings["same_model"]
    xs = [a["layer1"], a["layer10"]]
    np.testing.assert_allclose(r.matrix.numpy(), want(xs, xs, kernel="rbf", unbiased=False,
                                                      sigma=2.5), rtol=1e-10, atol=1e-12)


def test_single_npy_and_file_key(files):
    tmp_path, a, b = files
    r = run(tmp_path, "--features-a", f"{tmp_path / 'a.safetensors'}::layer2",
            "--features-b", str(tmp_path / "b" / "fc.npy"))
    assert r.names_a == ["--features-a"] and r.names_b == ["--features-b"]
    np.testing.assert_allclose(r.matrix.numpy(), want([a["layer2"]], [b["fc"]]),
                               rtol=1e-10, atol=1e-12)


def test_errors_name_the_flag(files):
    tmp_path, _, _ = files
    fa = str(tmp_path / "a.safetensors")
    cases = [
        (["--features-b", fa], "--features-b needs --features-a"),
        (["--features-a", fa, "--model-a", "timm:resnet18"], "not both"),
        (["--features-a", fa, "--data", "npz:x.npz", "--num-samples", "5"],
         "--num-samples, --data apply to models"),
        (["--features-a", str(tmp_path / "nope.npy")], "--features-a: no such file"),
        (["--features-a", fa, "--layers-a", "block*"], "--layers-a 'block\\*' matches no "
                                                       "layer"),
        ([], "give --model-a SPEC .* or --features-a FILE"),
    ]
    np.save(tmp_path / "short.npy", np.ones((50, 2)))
    cases.append((["--features-a", fa, "--features-b", str(tmp_path / "short.npy")],
                  "50 samples but layer1 has 53"))
    for flags, msg in cases:
        with pytest.raises(SystemExit, match=msg):
            main(["compare", *flags, "--out", str(tmp_path / "out")])
