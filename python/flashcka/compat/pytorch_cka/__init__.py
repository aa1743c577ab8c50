"""pytorch-cka 1.1.3 (import name ``cka``) on flashcka: change ``import cka`` /
``from cka import ...`` to ``flashcka.compat.pytorch_cka`` and keep the rest.

Every public name of the original, with its signature, defaults and return type:
``compute_cka``, ``cka_from_features``, ``CKA`` (``cka.py``), ``hsic``, ``hsic_cross``
(``hsic.py``), ``plot_cka_heatmap``, ``plot_cka_comparison``, ``plot_cka_trend``,
``plot_cka_trend_with_range``, ``plot_cka_layer_trend``, ``save_figure`` (``viz.py``), and
the submodules ``cka`` and ``viz`` (as in the original, the name ``hsic`` is the function,
which shadows its module). ``__version__`` is the version of the API mirrored. The
numbers are flashcka's; each module's docstring lists where they differ and why.
Private members of the original (``_extract_input``, ``_hook_handles``,
``_accumulate_hsic``, ...) are not provided.
"""
__version__ = "1.1.3"

from . import cka, viz  # noqa: E402  (submodules, public in the original)
from .cka import CKA, cka_from_features, compute_cka
from .hsic import hsic, hsic_cross
from .viz import (plot_cka_comparison, plot_cka_heatmap, plot_cka_layer_trend,
                  plot_cka_trend, plot_cka_trend_with_range, save_figure)

__all__ = [
    "__version__", "compute_cka", "cka_from_features", "CKA", "hsic", "hsic_cross",
    "plot_cka_heatmap", "plot_cka_layer_trend", "plot_cka_trend",
    "plot_cka_trend_with_range", "plot_cka_comparison", "save_figure",
]
