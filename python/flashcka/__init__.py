"""flashcka: centered Gram matrices, HSIC and CKA for every layer pair, fast and exact.

Functions on tensors: ``gram``, ``center``, ``hsic``, ``cka``, ``cka_matrix``;
``MinibatchCKA`` accumulates minibatch CKA over many layers of two models; ``compare``
hooks two models and returns a ``CKAResult`` that plots and saves itself.
"""
from ._version import __version__  # noqa: E402

from .cli.capabilities import capabilities  # noqa: E402
from ._warning import FlashCKAWarning  # noqa: E402
from .measures.cka import center, cka, cka_matrix, gram, hsic  # noqa: E402
from .core.minibatch import MinibatchCKA  # noqa: E402
from .core.calibrate import permutation_test  # noqa: E402
from .core.bootstrap import bootstrap_interval  # noqa: E402

__all__ = ["gram", "center", "hsic", "cka", "cka_matrix", "MinibatchCKA", "capabilities",
           "FlashCKAWarning", "__version__", "permutation_test", "bootstrap_interval"]

from .models.compare import CompareInterrupted, compare  # noqa: E402
from .result import CKAResult, load_result  # noqa: E402

__all__ += ["compare", "CompareInterrupted", "CKAResult", "load_result"]

from .measures.similarity import similarity_matrix  # noqa: E402

__all__ += ["similarity_matrix"]

from .measures.plan import Plan, plan  # noqa: E402

__all__ += ["plan", "Plan"]

from .models.many import compare_many  # noqa: E402
from .store import Store  # noqa: E402
from .cli.zoo import extract  # noqa: E402

__all__ += ["compare_many", "Store", "extract"]

from . import _moved  # noqa: E402

_moved.install()        # the 0.1 module paths (flashcka.minibatch, flashcka.hooks, ...)
