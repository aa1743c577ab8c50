"""flashcka: centered Gram matrices, HSIC and CKA for every layer pair, fast and exact.

Functions on tensors: ``gram``, ``center``, ``hsic``, ``cka``, ``cka_matrix``;
``MinibatchCKA`` accumulates minibatch CKA over many layers of two models; ``compare``
hooks two models and returns a ``CKAResult`` that plots and saves itself.
"""
__version__ = "0.1.0"

from ._capabilities import capabilities  # noqa: E402
from ._validate import FlashCKAWarning  # noqa: E402
from .functional import center, cka, cka_matrix, gram, hsic  # noqa: E402
from .minibatch import MinibatchCKA  # noqa: E402

__all__ = ["gram", "center", "hsic", "cka", "cka_matrix", "MinibatchCKA", "capabilities",
           "FlashCKAWarning", "__version__"]

from .compare import CompareInterrupted, compare  # noqa: E402
from .result import CKAResult, load_result  # noqa: E402

__all__ += ["compare", "CompareInterrupted", "CKAResult", "load_result"]

from .similarity import similarity_matrix  # noqa: E402

__all__ += ["similarity_matrix"]
