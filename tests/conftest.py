import os

import numpy as np
import pytest
import torch

# Triton kernels run through the interpreter on CPU tensors when there is no GPU; the
# variable must be set before anything imports triton.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
    """Fresh random inputs on every run (the seed is printed on failure)."""
    seed = int(np.random.SeedSequence().entropy % (2 ** 31))
    print(f"seed = {seed}")
    return np.random.default_rng(seed)


def realistic(rng, n, d, latent=None, dtype=torch.float32):
    """Activations like a network's: correlated features, non-zero means, varied scales."""
    z = latent if latent is not None else rng.standard_normal((n, 16))
    w = rng.standard_normal((z.shape[1], d)) / 4
    x = np.tanh(z @ w) + 0.3 * rng.standard_normal((n, d)) + rng.uniform(1, 5, size=d)
    return torch.tensor(x, dtype=dtype)
