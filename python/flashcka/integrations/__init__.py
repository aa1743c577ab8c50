"""Integrations with other frameworks (optional dependencies, imported on demand):
``flashcka.integrations.torchmetrics.MinibatchCKA`` (extra ``flashcka[torchmetrics]``)."""
