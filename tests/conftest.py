import os
import sys

import numpy as np
import pytest
import torch

# Triton kernels run through the interpreter on CPU tensors when there is no GPU; the
# variable must be set before anything imports triton. Triton tests take TRITON_MARKS as
# their pytestmark: without CUDA they are skipped, with the reason, if triton was imported
# before this (the interpreter was not asked for in time).
TRITON_PREIMPORTED = "triton" in sys.modules and os.environ.get("TRITON_INTERPRET") != "1"
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
CUDA = torch.cuda.is_available()
DEV = "cuda" if CUDA else "cpu"


def triton_runs() -> bool:
    """Whether Triton kernels run in this process: triton installed, and a GPU or the
    interpreter (asked for before triton was imported)."""
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return CUDA or (os.environ.get("TRITON_INTERPRET") == "1" and not TRITON_PREIMPORTED)


TRITON_MARKS = [
    pytest.mark.triton,
    pytest.mark.skipif(not CUDA and TRITON_PREIMPORTED,
                       reason="triton was imported before TRITON_INTERPRET=1 could be set; "
                              "run with TRITON_INTERPRET=1 in the environment"),
]


def pytest_sessionstart(session):
    """CI sets FLASHCKA_REQUIRE_NATIVE=1: a missing or broken flashcka._C is then a failure,
    not a quiet fallback (where backend='auto' would run the torch backend twice)."""
    if os.environ.get("FLASHCKA_REQUIRE_NATIVE") == "1":
        from flashcka.backends import get
        ok, why = get("native").usable()
        if not ok:
            raise pytest.UsageError(f"FLASHCKA_REQUIRE_NATIVE=1 but the native backend is not "
                                    f"usable: {why}")


@pytest.fixture
def rng():
    """Fresh random inputs on every run; the seed is printed (shown on failure) and
    ``FLASHCKA_TEST_SEED=<seed>`` replays it."""
    return np.random.default_rng(seed_for_test())


@pytest.fixture(params=["free", "device"])
def reads(request, monkeypatch):
    """Both routes of ``core.batched_rows.reads_are_free`` on the test device: "free" (a
    CPU's: max|x − μ| only where it can matter, compare()'s hooks read each layer) and
    "device" (a GPU's: no read per layer, hooks deferred) -> the route's name."""
    from flashcka.core import batched_rows
    monkeypatch.setattr(batched_rows, "FREE_READS",
                        frozenset({DEV} if request.param == "free" else ()))
    return request.param


def seed_for_test() -> int:
    """``FLASHCKA_TEST_SEED`` if set (an int), else a fresh seed; printed either way."""
    given = os.environ.get("FLASHCKA_TEST_SEED")
    if given is not None:
        try:
            seed = int(given)
        except ValueError:
            raise pytest.UsageError(f"FLASHCKA_TEST_SEED must be an integer, got {given!r}") \
                from None
    else:
        seed = int(np.random.SeedSequence().entropy % (2 ** 31))
    print(f"seed = {seed} (replay: FLASHCKA_TEST_SEED={seed})")
    return seed


def realistic(rng, n, d, latent=None, dtype=torch.float32):
    """Activations like a network's: correlated features, non-zero means, varied scales."""
    z = latent if latent is not None else rng.standard_normal((n, 16))
    w = rng.standard_normal((z.shape[1], d)) / 4
    x = np.tanh(z @ w) + 0.3 * rng.standard_normal((n, d)) + rng.uniform(1, 5, size=d)
    return torch.tensor(x, dtype=dtype)
