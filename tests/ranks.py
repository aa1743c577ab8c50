"""Two real ranks for the distributed tests: CPU processes in a gloo group with a file://
rendezvous, one thread each (``run_two_ranks``), the wait that fails a test whose rank
hangs or exits non-zero (``wait_ranks``), and the module both ranks and the test import
(``write_module``)."""
import importlib
import os
import subprocess
import sys
import textwrap

import pytest

PRELUDE = """\
import datetime, sys
import torch, torch.distributed as dist
rank, world, init, tmp, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4], \\
    sys.argv[5]
args = sys.argv[6:]
sys.path.insert(0, tmp)
torch.set_num_threads(1)
dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world,
                        timeout=datetime.timedelta(seconds=60))
try:
{body}
finally:
    dist.destroy_process_group()
"""


def run_two_ranks(tmp_path, body: str, *args: str, suffix: str = ".json", timeout=240):
    """Run ``body`` (Python source) as ranks 0 and 1 of a gloo group of two. It sees
    ``rank``, ``world``, ``args`` (these strings), ``tmp`` (tmp_path, on sys.path: the
    modules a test writes there) and ``out`` (its rank's path, tmp_path/r{rank}{suffix})
    -> the two ranks' out paths, after both exited 0."""
    worker = PRELUDE.format(body=textwrap.indent(textwrap.dedent(body).strip(), "    "))
    outs = [tmp_path / f"r{r}{suffix}" for r in range(2)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, "-c", worker, str(r), "2",
                               f"file://{tmp_path}/rendezvous", str(tmp_path), str(outs[r]),
                               *args], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for r in range(2)]
    wait_ranks(procs, timeout)
    return outs


def wait_ranks(procs, timeout):
    """Wait for every rank's process: all killed and the test failed when one hangs; each
    must exit 0 (its stderr's tail in the message)."""
    for p in procs:
        try:
            _, err = p.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            pytest.fail(f"a rank hung (more than {timeout} s)")
        assert p.returncode == 0, err[-3000:]


def write_module(tmp_path, name: str, source: str):
    """Write ``source`` as tmp_path/{name}.py (where ``run_two_ranks``' ranks import it
    from) and import it here -> the module, loaded anew."""
    (tmp_path / f"{name}.py").write_text(source)
    sys.path.insert(0, str(tmp_path))
    try:
        return importlib.reload(importlib.import_module(name))
    finally:
        sys.path.remove(str(tmp_path))
