"""README.md's Python blocks run as pasted, each in a fresh namespace and an empty folder."""
import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"



def python_blocks():
    """(section heading, code) of every ```python block of README.md, in order."""
    heading, fence, code, out = None, None, [], []
    for line in README.read_text().splitlines(keepends=True):
        if fence is None and line.startswith("```"):
            fence, code = line[3:].strip(), []
        elif fence is not None and line.startswith("```"):
            if fence == "python":
                out.append((heading, "".join(code)))
            fence = None
        elif fence is not None:
            code.append(line)
        elif re.match(r"#+ ", line):
            heading = line.lstrip("#").strip()
    return out


BLOCKS = python_blocks()


def test_readme_has_the_api_tour():
    assert any(h == "API tour" for h, _ in BLOCKS), [h for h, _ in BLOCKS]


@pytest.mark.parametrize("heading,code", BLOCKS, ids=[h for h, _ in BLOCKS])
def test_readme_block_runs(heading, code, tmp_path, monkeypatch):
    try:     # the registry's torchvision beside the CPU torch: the tests' workaround
        from hub_models import load_torchvision
        load_torchvision()
    except ImportError:
        pass
    monkeypatch.chdir(tmp_path)
    exec(compile(code, f"README.md ({heading})", "exec"), {"__name__": "__readme__"})
    if heading == "API tour":   # what it says it writes
        for f in ("ckpt.pt", "vit_vs_resnet.png", "vit_vs_resnet.json"):
            assert (tmp_path / f).stat().st_size > 0, f


def test_all_reduce_outside_a_process_group_does_nothing():
    import torch
    import flashcka
    acc = flashcka.MinibatchCKA(2, 1)
    acc.update([torch.randn(8, 3), torch.randn(8, 5)], [torch.randn(8, 4)])
    before = acc.compute().clone()
    acc.all_reduce()
    assert torch.equal(acc.compute(), before) and acc.num_batches == 1
