#!/usr/bin/env python
"""Ahead-of-time compile check of every Triton kernel for sm_80 and sm_90, with no GPU.

    python bench/aot.py [--out bench/results/aot] [--arch 80 90] [--jobs N]

Compiles every case of ``flashcka.backends.triton_configs.aot_cases()`` (each dtype, product
precision, block configuration and constexpr branch the launchers can choose) through
``triton.compile(ASTSource(...), target=GPUTarget("cuda", arch, 32))`` to a cubin, and
checks each one:

* it compiles;
* shared memory (Triton's request plus the static part) ≤ the per-block limit
  (sm_90: 227 KiB, sm_80: 163 KiB);
* registers, stack and local memory from ``cuobjdump --dump-resource-usage``, and LDL/STL
  in the SASS: in the hot kernels (Gram, its reduction, pair stage) no spill instruction
  inside a loop and at most MAX_COLD_SPILL bytes of stack in all (ptxas sometimes saves a
  few lane-index values before the main loop and reloads them for the epilogue: Triton
  3.6 once did on 5 of 124 variants, 8 B each; with the pre-centred Gram, none on 3.6 or
  3.9; the table gives every variant's);
* the tf32/bf16 product paths use tensor cores: HMMA or HGMMA in ``cuobjdump -sass``;
* the Gram kernel's main loop loads only through 16-byte cp.async (LDGSTS.128) or TMA
  (the table gives every variant's in-loop loads: wide/other).

Writes ``triton-<version>.md`` and ``.json`` under --out; exits 1 on any failure. Needs
only triton (no torch, no flashcka install): the kernels and configs are loaded by path,
so it runs in a bare venv with an older Triton too (.ci/run does both).
"""
from __future__ import annotations

import argparse
import concurrent.futures as cf
import importlib.util
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")   # 3.9's default, said (no warning)
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SMEM_LIMIT = {80: 163 * 1024, 90: 227 * 1024}      # max dynamic shared memory per block
HOT = ("_gram_stats_kernel", "_gram_reduce_kernel", "_pair_kernel", "_kernel_tile_kernel")
MAX_COLD_SPILL = 64   # bytes of stack a hot kernel may use outside its loops
TENSOR_CORE = ("tf32", "bf16")
WIDE_LOADS = ("_gram_stats_kernel",)   # main loop: only 16-byte cp.async or TMA loads
INSTR = ("HGMMA", "HMMA", "DMMA", "FFMA", "DFMA", "LDL", "STL")


def _load(name: str, path: Path, package: bool = False):
    kw = dict(submodule_search_locations=[str(path.parent)]) if package else {}
    spec = importlib.util.spec_from_file_location(name, path, **kw)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


KERNELS = _load("flashcka_triton_kernels", ROOT / "kernels/triton/__init__.py", package=True)
CONFIGS = _load("flashcka_triton_configs", ROOT / "python/flashcka/backends/triton_configs.py")


def _cuobjdump() -> str:
    here = Path(triton.__file__).parent / "backends/nvidia/bin/cuobjdump"
    found = str(here) if here.is_file() else shutil.which("cuobjdump")
    if not found:
        raise SystemExit("aot: cuobjdump not found (neither in the Triton wheel nor on PATH)")
    return found


def _in_loops(sass: str) -> list[str]:
    """The instructions inside a loop: between a backward branch's target and the branch."""
    ins = [(int(a, 16), op) for a, op in re.findall(r"/\*([0-9a-f]{4,})\*/\s+([^;]*);", sass)]
    loops = []
    for addr, op in ins:
        m = re.search(r"\bBRA\b.*?0x([0-9a-f]+)", op)
        if m and int(m.group(1), 16) < addr:
            loops.append((int(m.group(1), 16), addr))
    return [op for addr, op in ins if any(lo <= addr <= hi for lo, hi in loops)]


def loop_spills(sass: str) -> int:
    """LDL/STL instructions inside a loop. Spills outside loops (a value saved before the
    main loop and reloaded for the epilogue, which ptxas does to keep occupancy) cost a
    few bytes once per program."""
    return sum(1 for op in _in_loops(sass) if re.search(r"\b(LDL|STL)\b", op))


def loop_loads(sass: str) -> tuple[int, int]:
    """(wide, other) global loads inside loops: wide = 16-byte cp.async (LDGSTS.*.128) or
    TMA (UTMALDG); other = any other LDG/LDGSTS (narrower, or synchronous)."""
    wide = other = 0
    for op in _in_loops(sass):
        if re.search(r"\bUTMALDG\b|\bLDGSTS\S*\.128\b", op):
            wide += 1
        elif re.search(r"\bLDG(STS)?\b|\bLDG(STS)?\.", op):
            other += 1
    return wide, other


def compile_case(case, arch: int) -> dict:
    kname, sig, cst, opts, label = case
    row = dict(kernel=kname, config=label, arch=f"sm_{arch}", ok=False, problems=[])
    if cst.get("TMA") and arch < 90:        # tensor descriptors: launched on Hopper only
        row.update(ok=True, seconds=0.0, skipped="TMA: sm_90 only")
        return row
    fn = getattr(KERNELS, kname)
    t0 = time.perf_counter()
    try:
        types = {a: t.removesuffix(":16") for a, t in sig.items()}
        signature = dict(types, **{k: "constexpr" for k in cst})
        missing = set(fn.arg_names) - set(signature)
        if missing:
            raise TypeError(f"aot case lacks arguments {sorted(missing)}")
        attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]]
                 for a, t in sig.items() if t.startswith("*") or t.endswith(":16")}
        ck = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=cst, attrs=attrs),
                            target=GPUTarget("cuda", arch, 32), options=dict(opts))
    except Exception as e:  # noqa: BLE001 - every compile failure is a result row
        row["problems"].append(f"compile error: {type(e).__name__}: {str(e)[-400:]}")
        row["seconds"] = round(time.perf_counter() - t0, 2)
        return row
    row["seconds"] = round(time.perf_counter() - t0, 2)
    with tempfile.TemporaryDirectory() as tmp:
        cubin = Path(tmp) / "k.cubin"
        cubin.write_bytes(ck.asm["cubin"])
        tool = _cuobjdump()
        res = subprocess.run([tool, "--dump-resource-usage", str(cubin)], capture_output=True,
                             text=True, check=True).stdout
        sass = subprocess.run([tool, "-sass", str(cubin)], capture_output=True, text=True,
                              check=True).stdout
    usage = dict(re.findall(r"\b(REG|STACK|SHARED|LOCAL):(\d+)", res))
    regs, stack = int(usage.get("REG", -1)), int(usage.get("STACK", -1))
    local, static_smem = int(usage.get("LOCAL", -1)), int(usage.get("SHARED", 0))
    counts = {i: len(re.findall(rf"\b{i}\b", sass)) for i in INSTR}
    smem = int(ck.metadata.shared) + static_smem
    row.update(regs=regs, stack=stack, local=local, shared=smem, num_warps=ck.metadata.num_warps,
               num_stages=opts.get("num_stages"), instr=counts)
    if regs < 0:
        row["problems"].append("no resource usage in cuobjdump's report")
    if smem > SMEM_LIMIT[arch]:
        row["problems"].append(f"shared memory {smem} B > {SMEM_LIMIT[arch]} B per block")
    row["loop_spills"] = hot = loop_spills(sass)
    if kname in HOT and (hot or stack > MAX_COLD_SPILL or local > 0):
        row["problems"].append(f"spills: stack {stack} B, local {local} B, "
                               f"{counts['LDL']} LDL / {counts['STL']} STL, {hot} in loops")
    row["loop_loads"] = wide, other = loop_loads(sass)
    if kname in WIDE_LOADS and (other or not wide):
        row["problems"].append(f"main loop loads: {wide} 16-byte cp.async/TMA, {other} "
                               "other global loads (want only the former)")
    if cst.get("INPUT_PRECISION") in TENSOR_CORE and not (counts["HMMA"] or counts["HGMMA"]):
        row["problems"].append("no tensor-core instruction (HMMA/HGMMA) on a "
                               f"{cst['INPUT_PRECISION']} path")
    row["ok"] = not row["problems"]
    return row


def _table(rows, header) -> str:
    lines = [header, "",
             "| kernel | configuration | arch | ok | regs | stack/local B (spills in loops) | "
             "shared KiB (limit) | tensor-core / FMA instructions | loop loads 16 B/other "
             "| s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ins = r.get("instr", {})
        mma = ", ".join(f"{k} {v}" for k, v in ins.items() if v and k not in ("LDL", "STL"))
        lim = SMEM_LIMIT[int(r["arch"][3:])] // 1024
        smem = f"{r['shared'] / 1024:.1f} ({lim})" if "shared" in r else "-"
        sl = f"{r['stack']}/{r['local']} ({r['loop_spills']})" if "stack" in r else "-"
        ll = "/".join(map(str, r["loop_loads"])) if "loop_loads" in r else "-"
        ok = "yes" if r["ok"] else "**NO**: " + "; ".join(r["problems"]).replace("|", "/")
        if "skipped" in r:
            ok = f"skipped ({r['skipped']})"
        lines.append(f"| {r['kernel']} | {r['config']} | {r['arch']} | {ok} | "
                     f"{r.get('regs', '-')} | {sl} | {smem} | {mma or '-'} | {ll} | "
                     f"{r['seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=str(ROOT / "bench/results/aot"))
    ap.add_argument("--arch", type=int, nargs="+", default=[80, 90])
    ap.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    args = ap.parse_args(argv)
    cases = list(CONFIGS.aot_cases())
    jobs = [(c, a) for a in args.arch for c in cases]
    t0 = time.perf_counter()
    with cf.ProcessPoolExecutor(args.jobs) as pool:
        rows = list(pool.map(compile_case, *zip(*jobs)))
    wall = time.perf_counter() - t0
    bad = [r for r in rows if not r["ok"]]
    cold = sum(1 for r in rows if r["kernel"] in HOT and r.get("stack", 0) > 0)
    header = (f"# AOT compile check: Triton {triton.__version__}, {len(rows)} kernel variants "
              f"({len(cases)} cases × {', '.join(f'sm_{a}' for a in args.arch)}), "
              f"{len(bad)} failing\n\n`python bench/aot.py` on {platform.node() or 'CPU'} "
              f"(Python {platform.python_version()}, no GPU), {wall:.0f} s. Hot kernels "
              f"({', '.join(HOT)}): no spill inside a loop, at most {MAX_COLD_SPILL} B of "
              f"stack; {cold} of their variants keep a few bytes on the stack outside "
              f"the loops (ptxas), the rest none. Tensor-core paths: tf32, bf16.")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = f"triton-{triton.__version__}"
    (out / f"{stem}.md").write_text(_table(rows, header))
    (out / f"{stem}.json").write_text(json.dumps(dict(
        triton=triton.__version__, python=platform.python_version(), seconds=round(wall, 1),
        rows=rows), indent=1))
    for r in bad:
        print(f"FAIL {r['kernel']} [{r['config']}] {r['arch']}: {'; '.join(r['problems'])}")
    print(f"aot: Triton {triton.__version__}: {len(rows) - len(bad)}/{len(rows)} variants ok "
          f"in {wall:.0f} s; table {out / stem}.md")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
