"""Drop-in adapters: other CKA tools' public APIs, computed by flashcka.

Change one import and keep the rest of a script:

* ``flashcka.compat.kornblith``  — Kornblith et al. 2019's demo functions (numpy in/out)
* ``flashcka.compat.torch_cka``  — torch-cka 0.21: ``CKA``, modules ``cka`` and ``utils``
* ``flashcka.compat.pytorch_cka`` — pytorch-cka 1.1.3 (import name ``cka``): ``compute_cka``,
  ``cka_from_features``, ``CKA``, ``hsic``, ``hsic_cross``, the ``viz`` plots, ``save_figure``
* ``flashcka.compat.platonic``   — platonic-rep's ``metrics.py``: ``AlignmentMetrics`` and its
  module-level functions (``hsic_unbiased``, ``compute_nearest_neighbors``, ...)

Every public name of each original is there, with its arguments, defaults and return type;
private members (leading underscore) are not. Numbers are the originals' wherever those are
right. Each module's docstring lists where it deliberately differs (an original's defect,
fixed and documented); README's drop-in tables give the measured magnitudes.
"""
