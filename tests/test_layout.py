"""The package's layout (docs/design.md §3): imports point one way, cli → store/models →
measures → core → backends, and no public name or 0.1 module path moved.

Every ``import`` in the package's sources is read (function-level ones too, since a lazy
import is still a dependency), resolved to the flashcka module it names, and checked
against the layer table below.
"""
import ast
import importlib
from pathlib import Path

import pytest

import flashcka

PKG = Path(flashcka.__file__).parent

# Layer of each top-level unit: a module may import its own unit and units of lower layers.
# Leaf modules (no flashcka imports of their own) are importable from every layer.
LAYERS = {
    "_C": -1, "_warning": -1, "_version": -1, "triton": -1, "_moved": -1,
    "backends": 0,
    "core": 1,
    "ops": 1.5,             # torch.library ops over core's engine
    "measures": 2,
    "result": 2.5,          # CKAResult: what measures and models return; saves, loads, plots
    "models": 3,
    "store": 4, "compat": 4, "integrations": 4, "analysis": 4,
    "cli": 5,
    "": 6, "__main__": 6,       # the package root: the public names
}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _module_name(path: Path) -> tuple[str, bool]:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    is_pkg = parts[-1] == "__init__"
    if is_pkg:
        parts = parts[:-1]
    return ".".join(parts), is_pkg


def _targets(path: Path):
    """(line, flashcka module imported) for every import in the file."""
    mod, is_pkg = _module_name(path)
    base = mod.split(".") if is_pkg else mod.split(".")[:-1]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.name.split(".")[0] == "flashcka":
                    yield node.lineno, a.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join(anchor + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "flashcka":
                continue
            if target == "flashcka":        # from flashcka import x: the module x if one
                for a in node.names:
                    yield node.lineno, f"flashcka.{a.name}"
            else:
                yield node.lineno, target


def _sources():
    return sorted(p for p in PKG.rglob("*.py") if "triton" not in p.relative_to(PKG).parts[:1])


def test_every_unit_has_a_layer():
    units = {_unit(_module_name(p)[0]) for p in _sources()}
    assert units <= set(LAYERS), f"add {sorted(units - set(LAYERS))} to LAYERS and design.md §3"


def test_imports_point_one_way():
    wrong = []
    for path in _sources():
        mod = _module_name(path)[0]
        src = _unit(mod)
        for line, target in _targets(path):
            dst = _unit(target)
            if dst not in LAYERS:           # flashcka.<public name>: the root
                dst = ""
            if dst != src and LAYERS[dst] >= LAYERS[src]:
                wrong.append(f"{path.relative_to(PKG)}:{line} ({src or 'root'}, layer "
                             f"{LAYERS[src]}) imports {target} ({dst or 'root'}, layer "
                             f"{LAYERS[dst]})")
    assert not wrong, "imports against the layer order:\n" + "\n".join(wrong)


def test_the_checker_catches_an_upward_import(tmp_path, monkeypatch):
    """The test above can fail: a core module importing from models is reported."""
    fake = tmp_path / "flashcka"
    (fake / "core").mkdir(parents=True)
    (fake / "core" / "x.py").write_text("def f():\n    from ..models import compare\n")
    monkeypatch.setitem(globals(), "PKG", fake)
    targets = list(_targets(fake / "core" / "x.py"))
    assert targets == [(2, "flashcka.models")]
    assert LAYERS[_unit(targets[0][1])] > LAYERS["core"]


# The public names of flashcka 0.1, each a module path and a name in it: none may move.
PUBLIC = {
    "flashcka": ["gram", "center", "hsic", "cka", "cka_matrix", "MinibatchCKA", "compare",
                 "CompareInterrupted", "CKAResult", "load_result", "similarity_matrix",
                 "capabilities", "FlashCKAWarning", "__version__"],
    "flashcka.models": ["TinyViT", "TinyResNet", "BasicBlock", "Block", "Attention",
                        "PatchEmbed"],
    "flashcka.cli": ["main"],
    "flashcka.result": ["CKAResult", "load_result"],
    "flashcka.ops": [],
    "flashcka.backends": ["get", "select", "check_name"],
    "flashcka.compat.kornblith": ["cka", "gram_linear", "feature_space_linear_cka"],
    "flashcka.compat.torch_cka": ["CKA"],
    "flashcka.compat.pytorch_cka": ["compute_cka", "CKA", "cka_from_features"],
    "flashcka.compat.platonic": ["AlignmentMetrics"],
    "flashcka.analysis": ["cross_dataset_consistency", "trajectory", "information_imbalance"],
    # 0.1 module paths that moved (flashcka._moved keeps them): same module objects
    "flashcka.functional": ["cka_matrix"],
    "flashcka.similarity": ["similarity_matrix"],
    "flashcka.minibatch": ["MinibatchCKA"],
    "flashcka.jackknife": ["BatchJackknife"],
    "flashcka.hooks": ["GramRecorder"],
    "flashcka.selection": ["select_points", "default_points"],
    "flashcka.specs": ["load_model"],
    "flashcka.data": ["load_data"],
    "flashcka.demo": ["load_digits_split"],
}


@pytest.mark.parametrize("module", sorted(PUBLIC))
def test_public_names_import(module):
    m = importlib.import_module(module)
    missing = [n for n in PUBLIC[module] if not hasattr(m, n)]
    assert not missing, f"{module} lost {missing}"


def test_old_paths_are_the_new_modules():
    from flashcka import _moved
    for old, new in _moved.OLD_PATHS.items():
        assert importlib.import_module(old) is importlib.import_module(new), old
    importlib.import_module("flashcka.compare")
    assert callable(flashcka.compare), "importing flashcka.compare rebound the function"
