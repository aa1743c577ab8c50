"""torch-cka 0.21 on flashcka: change ``from torch_cka import CKA`` to
``from flashcka.compat.torch_cka import CKA`` and keep the rest.

Every public name of the original: ``CKA`` (also as ``torch_cka.cka.CKA``), the modules
``cka`` and ``utils`` (``utils.add_colorbar``), and ``__version__`` (the version of the API
mirrored). ``CKA``'s public attributes (``model1``, ``model2``, ``device``,
``model1_info``, ``model2_info``, ``model1_layers``, ``model2_layers``, ``hsic_matrix``,
``model1_features``, ``model2_features``) are there; ``model1_features`` /
``model2_features`` are computed on first access from the last batch (flashcka keeps
Grams, not activations; see ``cka.CKA``). Private members (``_log_layer``,
``_insert_hooks``, ``_HSIC``) are not provided.
"""
__version__ = "0.21"

from . import cka, utils  # noqa: E402  (submodules, public in the original)
from .cka import CKA

__all__ = ["CKA", "cka", "utils"]
