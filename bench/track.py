"""Record benchmark runs and check a new run against the stored baseline.

    python bench/track.py save  [--quick] [--baseline] [-- PYTEST_ARGS...]
    python bench/track.py check [--quick] [--threshold 25] [--stat median]
                                [--baseline FILE] [--current FILE] [-- PYTEST_ARGS...]
    python bench/track.py diff  OLD.json NEW.json [--threshold 25] [--stat median]

``save`` runs the suites (``pytest bench --benchmark-only``) and writes pytest-benchmark
JSON to ``bench/results/<machine>/<UTC time>-<commit>.json`` (``<machine>``: a slug of the
GPU's name, else the CPU's name and core count); with ``--baseline`` (or when there is no
baseline yet) it is also copied to ``bench/results/<machine>/baseline.json``.

``check`` runs the suites again (or reads ``--current``) and compares every case present in
both runs: it exits 1 when a case's ``--stat`` time (median by default) is more than
``--threshold`` percent above the baseline's, printing a table of both times, the ratio and
the achieved rate. Cases missing from either side are listed, not failed.

Each JSON holds pytest-benchmark's machine_info (plus device_cpu / device_gpu, torch,
flashcka, triton versions from bench/conftest.py) and commit_info, and every row's
extra_info carries backend, device name, versions, commit and GFLOP/s or GB/s.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"


def machine_slug() -> str:
    sys.path.insert(0, str(BENCH))
    try:
        from conftest import machine_slug as slug
    finally:
        sys.path.pop(0)
    return slug()


def _commit() -> str:
    out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT,
                         capture_output=True, text=True)
    return out.stdout.strip() or "nocommit"


def run_suites(json_path: Path, quick: bool, extra: list[str]) -> int:
    cmd = [sys.executable, "-m", "pytest", str(BENCH), "-q", "-p", "no:cacheprovider",
           "--benchmark-only", f"--benchmark-json={json_path}"]
    if quick:
        cmd.append("--quick")
    cmd += extra
    print("+", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=ROOT).returncode


def _rows(path: Path) -> dict[str, dict]:
    data = json.loads(Path(path).read_text())
    return {b["fullname"]: b for b in data["benchmarks"]}


def _rate(row: dict) -> str:
    e = {k: v for k, v in row.get("extra_info", {}).items() if v is not None}
    if "gbytes_per_s" in e:
        return f"{e['gbytes_per_s']:.1f} GB/s"
    if "gflops_per_s" in e:
        return f"{e['gflops_per_s']:.1f} GFLOP/s"
    if "samples_per_s" in e:
        return f"{e['samples_per_s']:.0f} samples/s"
    return ""


def diff(old: Path, new: Path, threshold: float, stat: str) -> int:
    """Print the comparison; 1 if any common case regressed beyond threshold percent."""
    a, b = _rows(old), _rows(new)
    common = [k for k in b if k in a]
    failed = []
    w = max([len(k.split("::")[-1]) for k in common] + [10])
    print(f"\n{'case':<{w}}  {'base ms':>10}  {'now ms':>10}  {'ratio':>6}  rate now")
    for k in common:
        t0, t1 = a[k]["stats"][stat], b[k]["stats"][stat]
        ratio = t1 / t0 if t0 > 0 else float("inf")
        bad = ratio > 1 + threshold / 100
        failed += [k] if bad else []
        print(f"{k.split('::')[-1]:<{w}}  {t0 * 1e3:10.3f}  {t1 * 1e3:10.3f}  {ratio:6.2f}  "
              f"{_rate(b[k])}{'   REGRESSION' if bad else ''}")
    for k in sorted(set(a) - set(b)):
        print(f"only in baseline: {k}")
    for k in sorted(set(b) - set(a)):
        print(f"only in this run: {k}")
    print(f"\n{len(common)} cases compared on {stat}; threshold +{threshold:g}%: "
          f"{len(failed)} regression(s)")
    return 1 if failed else 0


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    extra: list[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("save", help="run the suites and store the JSON")
    s.add_argument("--quick", action="store_true")
    s.add_argument("--baseline", action="store_true", help="also make it the baseline")
    c = sub.add_parser("check", help="run the suites and compare with the baseline")
    c.add_argument("--quick", action="store_true")
    for q in (c, sub.add_parser("diff", help="compare two stored JSON files")):
        q.add_argument("--threshold", type=float, default=25.0,
                       help="percent slower than the baseline that fails (default 25)")
        q.add_argument("--stat", default="median", choices=["min", "median", "mean", "max"])
    c.add_argument("--baseline", type=Path, default=None,
                   help="default bench/results/<machine>/baseline.json")
    c.add_argument("--current", type=Path, default=None, help="compare this JSON, no run")
    d = sub._name_parser_map["diff"]
    d.add_argument("old", type=Path)
    d.add_argument("new", type=Path)
    args = p.parse_args(argv)

    if args.cmd == "diff":
        return diff(args.old, args.new, args.threshold, args.stat)
    out_dir = RESULTS / machine_slug()
    if args.cmd == "save":
        out_dir.mkdir(parents=True, exist_ok=True)
        stamp = _dt.datetime.now(_dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
        path = out_dir / f"{stamp}-{_commit()}{'-quick' if args.quick else ''}.json"
        rc = run_suites(path, args.quick, extra)
        if rc != 0 or not path.exists():
            print(f"pytest failed (exit {rc}); nothing stored as baseline", file=sys.stderr)
            return rc or 1
        base = out_dir / "baseline.json"
        if args.baseline or not base.exists():
            shutil.copyfile(path, base)
            print(f"baseline: {base}")
        print(f"saved: {path}")
        return 0
    base = args.baseline or out_dir / "baseline.json"
    if not base.exists():
        print(f"no baseline at {base}: run `python bench/track.py save --baseline` first",
              file=sys.stderr)
        return 2
    current = args.current
    if current is None:
        current = Path(tempfile.mkdtemp()) / "current.json"
        rc = run_suites(current, args.quick, extra)
        if rc != 0:
            return rc
    return diff(base, current, args.threshold, args.stat)


if __name__ == "__main__":
    sys.exit(main())
