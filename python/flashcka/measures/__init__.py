"""The public similarity functions over tensors, built on ``flashcka.core``.

``cka`` (``gram``, ``center``, ``hsic``, ``cka``, ``cka_matrix``), ``similarity``
(``similarity_matrix``: CKA, RSA, mutual kNN, CKNNA) and ``knn``.
"""
