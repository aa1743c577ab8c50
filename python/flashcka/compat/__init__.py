"""Drop-in adapters: other CKA tools' public APIs, computed by flashcka.

Change one import and keep the rest of a script:

* ``flashcka.compat.kornblith``  — Kornblith et al. 2019's demo functions (numpy in/out)
* ``flashcka.compat.torch_cka``  — ``CKA`` of torch-cka 0.21
* ``flashcka.compat.pytorch_cka`` — ``compute_cka`` and ``CKA`` of pytorch-cka 1.1.3
* ``flashcka.compat.platonic``   — ``AlignmentMetrics`` of platonic-rep's ``metrics.py``

Names, arguments, defaults and return types are the originals'; numbers are the originals'
wherever those are right. Each module's docstring lists where it deliberately differs
(an original's defect, fixed and documented).
"""
