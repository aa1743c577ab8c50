"""Calls that cannot fit in memory are refused before anything large is allocated, with
a MemoryError that says how much, for which layers, and what to do (issue 25 item 9: 4 RBF
layers of n = 40,000 under an 8 GB limit ended in the allocator's RuntimeError or in
std::bad_alloc, naming nothing)."""
import pytest
import torch

import flashcka
from flashcka.core import memory as _memory


@pytest.mark.parametrize("backend", ["native", "torch"])
def test_too_large_is_refused_by_name(monkeypatch, backend):
    if not flashcka.backends.get(backend).usable()[0]:
        pytest.skip(f"{backend} not usable")
    monkeypatch.setattr(_memory, "available_bytes", lambda device: 8 * 2 ** 30)  # an 8 GB box
    xs = {f"block{i}": torch.randn(40_000, 8) for i in range(4)}
    with pytest.raises(MemoryError) as e:
        flashcka.cka_matrix(xs, kernel="rbf", backend=backend, route="gram")
    msg = str(e.value)
    assert "block0" in msg and "n = 40000" in msg and "8.00 GiB is available" in msg
    assert "MinibatchCKA" in msg                      # what to do
    need = float(msg.split("needs about ")[1].split(" GiB")[0])
    assert need >= 4 * 40_000 * 39_999 / 2 * 4 / 2 ** 30  # at least the packed float32 rows


def test_what_fits_runs_and_the_check_can_be_turned_off(monkeypatch):
    monkeypatch.setattr(_memory, "available_bytes", lambda device: 2 ** 20)  # 1 MiB "free"
    x = torch.randn(64, 10)
    flashcka.cka_matrix([x, x + 1])                   # needs far less than 256 MiB: no check
    xs = [torch.randn(6000, 3) for _ in range(2)]     # 2 rows of 18M floats: checked
    with pytest.raises(MemoryError):
        flashcka.cka_matrix(xs, route="gram")
    assert torch.isfinite(flashcka.cka_matrix(xs)).all()  # the feature route fits
    monkeypatch.setenv("FLASHCKA_SKIP_MEMORY_CHECK", "1")
    assert torch.isfinite(flashcka.cka_matrix(xs, route="gram")).all()


def test_available_bytes_reads_this_machine():
    have = _memory.available_bytes(torch.device("cpu"))
    assert have is None or 0 < have < 2 ** 50


def test_the_centred_feature_copy_counts(monkeypatch):
    """The torch and Triton backends centre x into an (n, d) copy in ct before the Gram:
    a wide layer whose n × n Gram is tiny but whose copy does not fit is refused by name
    (at n = 4096, d = 197·768 the copy is 2.5 GB in float32, the Gram 64 MB)."""
    monkeypatch.setattr(_memory, "available_bytes", lambda device: 300 * 2 ** 20)
    wide = torch.randn(64, 1).expand(64, 2_000_000)      # 512 MB as float32, no storage
    with pytest.raises(MemoryError, match="wide.*n = 64"):
        flashcka.cka_matrix({"wide": wide, "narrow": torch.randn(64, 5)}, backend="torch",
                            route="gram")
