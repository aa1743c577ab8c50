"""bench/aot.py's coverage and its spill detector, without compiling (CI runs the compile
itself: `python bench/aot.py`)."""
import importlib.util
import itertools
from pathlib import Path

import pytest
import torch

pytest.importorskip("triton")
from flashcka.backends import triton_launch as tl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def _aot():
    spec = importlib.util.spec_from_file_location("flashcka_aot", ROOT / "bench/aot.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _gram_variants(aot):
    out = set()
    for kname, sig, cst, opts, _ in aot.CONFIGS.aot_cases():
        if kname == "_gram_stats_kernel":
            out.add((sig["x_ptr"], sig["mu_ptr"], cst["INPUT_PRECISION"], cst["BLOCK"],
                     cst["BLOCK_K"], opts["num_warps"], opts["num_stages"], cst["SPLIT"]))
    return out


def test_aot_covers_every_gram_variant_the_launcher_can_choose(monkeypatch):
    """For every input dtype, compute dtype, precision switch, n and split decision, the
    compiled variant the launcher would launch on a GPU is among aot_cases()."""
    aot = _aot()
    have = _gram_variants(aot)
    monkeypatch.setattr(tl, "interpreting", lambda: False)
    tt = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
          torch.float64: "*fp64"}
    for xdt, ct, tf32, bf16, n, split in itertools.product(
            tt, (torch.float32, torch.float64), (False, True), (False, True),
            (4, 100, 128, 129, 256, 5000), (False, True)):
        kx = aot.CONFIGS.kernel_x_dtype(tl._name(xdt), tl._name(ct))
        prec = tl._precision(xdt, ct, tf32, bf16)
        cfg = tl._gram_config(ct, n, False, prec)
        key = ("*" + aot.CONFIGS.TRITON_TYPE[kx], tt[ct], prec, cfg["BLOCK"], cfg["BLOCK_K"],
               cfg["num_warps"], cfg["num_stages"], split)
        assert key in have, key


def test_loop_spill_detector():
    aot = _aot()
    sass = """
        /*0010*/                   STL [R1], R25 ;
        /*0020*/                   FFMA R2, R3, R4, R2 ;
        /*0030*/                   LDL R5, [R1] ;
        /*0040*/               @P0 BRA 0x20 ;
        /*0050*/                   LDL R6, [R1] ;
        /*0060*/                   EXIT ;
    """
    assert aot.loop_spills(sass) == 1        # only the LDL at 0x30 is inside 0x20..0x40
    assert aot.loop_spills(sass.replace("0x20", "0x50")) == 0   # a forward branch: no loop
