"""compare() under torch.distributed: two real ranks (gloo, file:// rendezvous, spawned CPU
processes) each run the models on their own batches; the summed result (matrix, jackknife
stderr, counts) equals one process over all batches to 1e-12, on every rank."""
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from flashcka import CKAResult, compare
from ranks import run_two_ranks, wait_ranks, write_module

MODELS = textwrap.dedent("""
    import torch
    from torch import nn

    def net(seed, d=6):
        torch.manual_seed(seed)
        return nn.Sequential(nn.Linear(d, 10), nn.GELU(), nn.Linear(10, 8), nn.Tanh(),
                             nn.Linear(8, 3)).double()

    def loader(sizes=(12, 17, 9, 20, 14), d=6):
        g = torch.Generator().manual_seed(3)
        return [(torch.randn(n, d, generator=g, dtype=torch.float64), torch.zeros(n))
                for n in sizes]
""")

WORKER = """
    from dist_models import net, loader
    from flashcka import compare
    batches = loader()
    if args[0] == "shard":          # every rank iterates the same loader
        r = compare(net(0), net(1), batches, shard=True, progress=False)
    else:                           # each rank is given its round-robin share
        r = compare(net(0), net(1), batches[rank::world], progress=False)
    r.save(out)
"""


def _load_models(tmp_path):
    return write_module(tmp_path, "dist_models", MODELS)


@pytest.mark.parametrize("mode", ["shard", "preshard"])
def test_two_ranks_equal_one_process(tmp_path, mode):
    m = _load_models(tmp_path)
    want = compare(m.net(0), m.net(1), m.loader(), progress=False)
    for path in run_two_ranks(tmp_path, WORKER, mode):
        got = CKAResult.load(path)
        assert got.names_a == want.names_a and got.names_b == want.names_b
        assert got.num_batches == 5 and got.num_samples == want.num_samples == 72
        np.testing.assert_allclose(got.matrix.numpy(), want.matrix.numpy(), rtol=0, atol=1e-12)
        assert got.stderr is not None and float(want.stderr.max()) > 1e-4
        np.testing.assert_allclose(got.stderr.numpy(), want.stderr.numpy(), rtol=0, atol=1e-12)


def test_single_process_arguments():
    net = nn.Sequential(nn.Linear(4, 5), nn.Linear(5, 2))
    data = [torch.randn(8, 4) for _ in range(2)]
    with pytest.raises(ValueError, match="no torch.distributed process group"):
        compare(net, None, data, distributed=True, progress=False)
    with pytest.raises(TypeError, match="distributed must be"):
        compare(net, None, data, distributed="yes", progress=False)
    # shard=True without a process group: nothing to shard, every batch counts
    r = compare(net, None, data, shard=True, progress=False)
    assert r.num_batches == 2


def _free_port():
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_cli_under_two_ranks_equals_one_process(tmp_path):
    """`flashcka compare` as torchrun starts it (RANK/WORLD_SIZE/MASTER_* in the
    environment): each rank takes every 2nd batch of the digits, rank 0 alone writes."""
    args = [sys.executable, "-m", "flashcka", "compare", "--model-a",
            "flashcka.models:TinyViT", "--model-b", "flashcka.models:TinyResNet", "--data",
            "digits", "--num-samples", "120", "--batch-size", "32", "--no-progress"]
    base = dict(os.environ, OMP_NUM_THREADS="1")
    base.pop("WORLD_SIZE", None)
    one = subprocess.run(args + ["--out", str(tmp_path / "one")], env=base, timeout=240,
                         capture_output=True, text=True)
    assert one.returncode == 0, one.stderr[-3000:]
    port = str(_free_port())
    procs = []
    for r in range(2):
        env = dict(base, RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE="2",
                   MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen(args + ["--out", str(tmp_path / f"two{r}")], env=env,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    wait_ranks(procs, timeout=240)
    assert not (tmp_path / "two1").exists()                 # only rank 0 writes
    want = CKAResult.load(tmp_path / "one" / "cka.json")
    got = CKAResult.load(tmp_path / "two0" / "cka.json")
    assert got.num_batches == want.num_batches == 4 and got.names_a == want.names_a
    np.testing.assert_allclose(got.matrix.numpy(), want.matrix.numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(got.stderr.numpy(), want.stderr.numpy(), rtol=0, atol=1e-12)
