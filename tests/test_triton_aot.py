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
            xc = sig["xc_ptr"]
            if cst["TMA"]:          # tensordesc<fp32[128,32]> -> *fp32
                xc = "*" + xc.split("<")[1].split("[")[0]
            out.add((xc, sig["k_ptr"], cst["INPUT_PRECISION"], cst["BLOCK"], cst["BLOCK_K"],
                     opts["num_warps"], opts["num_stages"], cst["SPLIT"], cst["TMA"]))
        elif kname == "_gram_reduce_kernel":
            out.add((sig["k_ptr"], cst["BLOCK"], opts.get("num_warps")))
    return out


def test_aot_covers_every_gram_variant_the_launcher_can_choose(monkeypatch):
    """For every input dtype, compute dtype, precision switch, n and split decision, the
    compiled variant the launcher would launch on a GPU (the Gram kernel on the pre-centred
    rows, and the split-K reduction of its tiles) is among aot_cases()."""
    aot = _aot()
    have = _gram_variants(aot)
    monkeypatch.setattr(tl, "interpreting", lambda: False)
    tt = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32",
          torch.float64: "*fp64"}
    for xdt, ct, tf32, bf16, n, split, hopper in itertools.product(
            tt, (torch.float32, torch.float64), (False, True), (False, True),
            (4, 100, 128, 129, 256, 5000), (False, True), (False, True)):
        prec = tl._precision(xdt, ct, tf32, bf16)
        cfg = tl._gram_config(ct, n, False, prec, hopper)
        xc = aot.CONFIGS.xc_dtype(tl._name(ct), prec)
        key = ("*" + aot.CONFIGS.TRITON_TYPE[xc], tt[ct], prec, cfg["BLOCK"], cfg["BLOCK_K"],
               cfg["num_warps"], cfg["num_stages"], split, cfg.get("TMA", False))
        assert key in have, key
        red = aot.CONFIGS.reduce_config(cfg["BLOCK"], False)
        assert (tt[ct], cfg["BLOCK"], red.get("num_warps")) in have, (ct, cfg)


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


def test_loop_load_detector():
    """16-byte cp.async / TMA loads in a loop count as wide; narrower or synchronous global
    loads in a loop as other; loads outside loops are not counted."""
    aot = _aot()
    sass = """
        /*0010*/                   LDG.E R2, desc[UR4][R2.64] ;
        /*0020*/                   LDGSTS.E.BYPASS.128 [R5], desc[UR6][R6.64] ;
        /*0030*/                   LDGSTS.E [R7], desc[UR6][R8.64] ;
        /*0040*/                   UTMALDG.2D [UR8], [UR10] ;
        /*0050*/                   LDG.E.U16 R9, desc[UR4][R10.64] ;
        /*0060*/               @P0 BRA 0x20 ;
        /*0070*/                   LDGSTS.E.128 [R5], desc[UR6][R6.64] ;
    """
    assert aot.loop_loads(sass) == (2, 2)
