"""The public similarity functions over tensors, built on ``flashcka.core``.

``cka`` (``gram``, ``center``, ``hsic``, ``cka``, ``cka_matrix``), ``similarity``
(``similarity_matrix``: CKA, RSA, mutual kNN, CKNNA, Procrustes, CCA, SVCCA, PWCCA,
linear regression), ``knn``, and behind the last five ``subspace`` (each layer factorised
once), ``procrustes`` (``procrustes_distance``), ``cca`` and ``linreg``; ``tiled_route``
(``cka_matrix(route="tiled")`` and auto's memory rule) and ``plan`` (``flashcka.plan``).
"""
