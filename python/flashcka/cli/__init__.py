"""The command line and its inputs: ``main`` (the ``flashcka`` command), ``specs`` (model
specs), ``data`` (data specs), ``demo`` and ``capabilities`` (``flashcka info``)."""
from .main import main  # noqa: F401
