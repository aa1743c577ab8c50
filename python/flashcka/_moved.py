"""The module paths of flashcka 0.1 that moved when the package was laid out by layer
(docs/design.md §3) keep importing: ``import flashcka.minibatch`` and
``from flashcka.hooks import GramRecorder`` give the modules at their new paths.

One table, read by one finder that answers only for these names (nothing else in
``sys.meta_path`` changes). Modules the package has already imported are entered into
``sys.modules`` under their old names at once, so that ``import flashcka.compare`` never
rebinds the attribute ``flashcka.compare`` (the function) to the module.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

OLD_PATHS = {
    "flashcka.functional": "flashcka.measures.cka",
    "flashcka.similarity": "flashcka.measures.similarity",
    "flashcka.minibatch": "flashcka.core.minibatch",
    "flashcka.jackknife": "flashcka.core.jackknife",
    "flashcka.hooks": "flashcka.models.hooks",
    "flashcka.selection": "flashcka.models.selection",
    "flashcka.compare": "flashcka.models.compare",
    "flashcka.specs": "flashcka.cli.specs",
    "flashcka.data": "flashcka.cli.data",
    "flashcka.demo": "flashcka.cli.demo",
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name in OLD_PATHS:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(OLD_PATHS[spec.name])

    def exec_module(self, module):
        pass


def install() -> None:
    for old, new in OLD_PATHS.items():
        if new in sys.modules:
            sys.modules.setdefault(old, sys.modules[new])
    if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
        sys.meta_path.append(_OldPaths())
