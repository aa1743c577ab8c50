"""Which outputs (and inputs) of a model ``compare`` hooks: names, globs, presets, types.

``select_points(model, spec, arg)`` turns a ``layers_a``/``layers_b`` spec into hook
``Point``s. Glob patterns match qualified module names segment by segment: ``*`` and ``?``
never cross a dot, ``**`` does. A ``":input"`` suffix hooks the module's input (a forward
pre-hook) instead of its output. Presets: ``"blocks"`` and ``"sublayers"`` (below).
"""
from __future__ import annotations

import difflib
import re
import warnings
from dataclasses import dataclass

from torch import nn

from ..core import validate as _validate

CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
PRESETS = ("blocks", "sublayers")
_PARALLEL = ("heads", "experts")       # lists of parallel branches, not of blocks
_GLOB_CHARS = set("*?[")

# Per transformer block (relative names, first present wins): the attention branch before
# the residual add, the residual stream after attention (the second norm's input in a
# pre-norm block; BERT's post-norm attention output feeds `intermediate`), the MLP branch.
ATTN_BRANCH = ("drop_path1", "ls1", "attention.output.dense", "attn", "self_attn",
               "self_attention", "attention")
RESIDUAL = ("norm2:input", "layernorm_after:input", "ln_2:input",
            "post_attention_layernorm:input", "intermediate:input")
MLP_BRANCH = ("drop_path2", "ls2", "output.dense", "mlp", "ffn", "feed_forward")
SUBLAYER_ROLES = (("attention branch", ATTN_BRANCH), ("residual after attention", RESIDUAL),
                  ("MLP branch", MLP_BRANCH))


@dataclass(frozen=True)
class Point:
    """One hooked tensor: the output (or input) of module ``module``. ``exact``: named
    exactly by the user (never firing is an error), else from a pattern, type or preset
    (never firing is skipped with a warning)."""
    module: str
    kind: str = "output"
    exact: bool = False
    role: str = ""     # a preset's name by meaning, e.g. "blocks.3: attention branch"

    @property
    def label(self) -> str:
        """The layer's name in results: ``module``, ``module:input``, or a preset point's
        name by meaning (``blocks.3: attention branch``)."""
        return self.role or self.module + (":input" if self.kind == "input" else "")


def glob_regex(pattern: str) -> re.Pattern:
    """``*``: any characters but a dot; ``?``: one character but a dot; ``**``: any
    characters, dots included; ``[seq]``/``[!seq]``: one character in / not in seq."""
    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        if c == "*":
            out.append(r"[^.]*")
        elif c == "?":
            out.append(r"[^.]")
        elif c == "[":
            j = i + 1 + (pattern[i + 1:i + 2] == "!")
            j = pattern.find("]", j + (pattern[j:j + 1] == "]"))
            if j < 0:
                out.append(r"\[")
            else:
                body = pattern[i + 1:j]
                body = "^" + body[1:] if body.startswith("!") else body
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = j
        else:
            out.append(re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z")


# ------------------------------------------------------------------ presets

def block_lists(model: nn.Module) -> list[str]:
    """Qualified names of the containers that hold a model's repeated blocks: an
    ``nn.Sequential``/``nn.ModuleList``/``nn.ModuleDict`` whose children all have
    submodules, unless one of its children is mostly (by parameter count) a block list
    itself — then that inner list is the one (a ConvNeXt's ``stages.0.blocks``, not
    ``stages``); a list inside a block that is a minor part of it (e.g. attention heads) is
    part of the block. Lists named ``heads`` or ``experts`` (parallel branches) are never
    block lists."""

    def visit(module: nn.Module, name: str) -> tuple[list[str], int]:
        """(block lists of the subtree, its parameter count)."""
        own = sum(p.numel() for p in module.parameters(recurse=False))
        kids = list(module.named_children())
        found, per_child, total = [], [], own
        for child_name, child in kids:
            lists, count = visit(child, f"{name}.{child_name}" if name else child_name)
            found += lists
            per_child.append((lists, count))
            total += count
        candidate = isinstance(module, CONTAINERS) and kids and \
            name.rsplit(".", 1)[-1] not in _PARALLEL and \
            all(any(True for _ in child.children()) for _, child in kids)
        if candidate and not any(lists and (count == 0 or _largest(lists) * 2 >= count)
                                 for lists, count in per_child):
            return [name], total
        return found, total

    counts: dict[str, int] = {}

    def _largest(lists):
        return max(counts[n] for n in lists)

    for qual, mod in model.named_modules():
        counts[qual] = sum(p.numel() for p in mod.parameters())
    found, _ = visit(model, "")
    order = {n: i for i, (n, _) in enumerate(model.named_modules())}
    return sorted(found, key=order.__getitem__)


def blocks(model: nn.Module) -> list[Point]:
    """The ``"blocks"`` preset: the input of the first block (the embedding/stem output as
    the blocks see it), then the output of every block of every block list."""
    modules = dict(model.named_modules())
    names = [f"{lst}.{c}" if lst else c for lst in block_lists(model)
             for c, _ in modules[lst].named_children()]
    if not names:
        return []
    return [Point(names[0], "input")] + [Point(n) for n in names]


def sublayers(model: nn.Module) -> list[Point]:
    """The ``"sublayers"`` preset (Raghu et al. 2021): per transformer block, its input,
    the attention branch output, the residual stream after attention, the MLP branch
    output and its output; other blocks give their output (the first also its input).
    The three inner points are named by meaning, ``blocks.3: attention branch``,
    ``blocks.3: residual after attention``, ``blocks.3: MLP branch``, whichever module
    gives them (``drop_path1``, ``norm2:input``, ``mlp``, …: ``SUBLAYER_ROLES``)."""
    modules = dict(model.named_modules())
    out: list[Point] = []
    for i, p in enumerate(blocks(model)[1:]):
        roles = [_first_present(modules, p.module, cands, role)
                 for role, cands in SUBLAYER_ROLES]
        if all(roles):
            out += [Point(p.module, "input"), *roles, p]
        else:
            out += ([Point(p.module, "input")] if i == 0 else []) + [p]
    return out


def _first_present(modules, block: str, candidates, role: str) -> Point | None:
    for cand in candidates:
        name, _, kind = cand.partition(":")
        if f"{block}.{name}" in modules:
            return Point(f"{block}.{name}", kind or "output", role=f"{block}: {role}")
    return None


def fallback_layers(model: nn.Module) -> list[Point]:
    """Without block lists: every non-container child of a container (descending the
    tree), else every leaf module that owns parameters."""
    found: list[str] = []

    def visit(module: nn.Module, prefix: str, in_container: bool) -> None:
        for name, child in module.named_children():
            qual = f"{prefix}.{name}" if prefix else name
            if isinstance(child, CONTAINERS):
                visit(child, qual, True)
            elif in_container:
                found.append(qual)
            else:
                visit(child, qual, False)

    visit(model, "", isinstance(model, CONTAINERS))
    if not found:
        found = [name for name, m in model.named_modules()
                 if name and not any(True for _ in m.children())
                 and any(True for _ in m.parameters(recurse=False))]
    return [Point(n) for n in found]


def default_points(model: nn.Module) -> list[Point]:
    """``layers=None``: the ``"blocks"`` preset, or ``fallback_layers`` without blocks."""
    points = blocks(model) or fallback_layers(model)
    if not points:
        raise ValueError(f"{type(model).__name__} has no repeated blocks and no leaf modules "
                         f"with parameters: pass the layers to hook explicitly")
    return points


# ------------------------------------------------------------------ selection

def select_points(model: nn.Module, spec, arg: str) -> list[Point]:
    """The hook points of ``model`` chosen by ``spec`` (see ``compare``), in
    ``model.named_modules()`` order (a module's input before its output), each once."""
    if spec is None:
        return default_points(model)
    items = list(spec) if isinstance(spec, (list, tuple, set)) else [spec]
    if not items:
        raise ValueError(f"{arg} is empty: give module names, glob patterns, presets "
                         f"{PRESETS} or module types (or None for the default blocks)")
    modules = dict(model.named_modules())
    names = [n for n in modules if n]
    chosen: dict[tuple[str, str], bool] = {}
    roles: dict[tuple[str, str], str] = {}
    for item in items:
        for p in _points_of(model, modules, names, item, arg):
            key = (p.module, p.kind)
            chosen[key] = chosen.get(key, False) or p.exact
            if p.role:
                roles[key] = p.role
    order = {n: i for i, n in enumerate(modules)}
    keys = sorted(chosen, key=lambda k: (order[k[0]], k[1] == "output"))
    return [Point(m, kind, chosen[(m, kind)], roles.get((m, kind), "")) for m, kind in keys]


def _points_of(model, modules, names, item, arg) -> list[Point]:
    if isinstance(item, type) and issubclass(item, nn.Module):
        hits = [n for n, m in modules.items() if n and isinstance(m, item)]
        if not hits:
            present = sorted({type(m).__name__ for m in modules.values()})
            raise ValueError(f"{arg}: no module of {type(model).__name__} is an instance of "
                             f"{item.__name__}; module types present: {present}")
        return [Point(n) for n in hits]
    if not isinstance(item, str):
        raise TypeError(f"{arg} items must be module names, glob patterns, presets (str) or "
                        f"nn.Module subclasses; got {item!r} ({type(item).__name__})")
    if item in PRESETS:
        points = blocks(model) if item == "blocks" else sublayers(model)
        if not points:
            raise ValueError(f"{arg}: preset {item!r} found no repeated blocks in "
                             f"{type(model).__name__} (no nn.Sequential/ModuleList of "
                             f"composite modules); name the layers or use patterns")
        return points
    base, kind = item, "output"
    for suffix in (":input", ":output"):
        if item.endswith(suffix):
            base, kind = item[:-len(suffix)], suffix[1:]
    if base in modules and base and not (_GLOB_CHARS & set(base)):
        return [Point(base, kind, exact=True)]
    hits = []
    if _GLOB_CHARS & set(base):
        rx = glob_regex(base)
        hits = [n for n in names if rx.match(n)]
        if "?" in base and hits:
            _warn_partial_question_mark(base, names, hits, arg)
    if not hits:
        close = difflib.get_close_matches(base, names, n=5, cutoff=0.5)
        raise ValueError(f"{arg}: {item!r} matches no module of {type(model).__name__} "
                         f"(patterns: '*' stays within one dotted level, '**' crosses "
                         f"levels); close names: {close or 'none'} "
                         f"({len(names)} modules, e.g. {names[:6]})")
    return [Point(n, kind) for n in hits]


def _warn_partial_question_mark(pattern, names, hits, arg) -> None:
    """``"blocks.?"`` on 12 blocks matches 10: say so (with ``*`` it would match all)."""
    wider = glob_regex(pattern.replace("?", "*"))
    missed = [n for n in names if wider.match(n) and n not in set(hits)]
    if missed:
        warnings.warn(f"{arg}: pattern {pattern!r} matches {len(hits)} modules but not "
                      f"{missed[:4]}{' …' if len(missed) > 4 else ''} ('?' is exactly one "
                      f"character); use '*' to match every index", _validate.FlashCKAWarning,
                      stacklevel=5)
