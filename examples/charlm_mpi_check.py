#!/usr/bin/env python3
"""charlm --mpi against plain charlm: byte-identical checkpoints.

usage: charlm_mpi_check.py MPIRUN CHARLM WORKDIR

1. With default settings (only --steps, --sample and --val-chunks shortened),
   `mpirun -np 2 charlm --mpi --save a` and `charlm --save b` (one process,
   every core) write the same bytes.
2. A run stopped on 2 ranks (--stop-at 2 --save) and resumed on 1 process,
   on 2 ranks and on 4 ranks writes, each time, the checkpoint of the straight
   one-process run (resuming is bit-exact: the carried state's rows are
   gathered from the ranks that ran them before rank 0 writes).
"""
import os
import subprocess
import sys

mpirun, charlm, work = sys.argv[1:4]
os.makedirs(work, exist_ok=True)
MPI = [mpirun, "-np", "2", "--allow-run-as-root", "--oversubscribe", charlm, "--mpi"]
MPI4 = [mpirun, "-np", "4", "--allow-run-as-root", "--oversubscribe", charlm, "--mpi"]
short = ["--sample", "20", "--val-chunks", "2"]
failed = 0


def run(cmd):
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        print(" ".join(cmd), "\n", r.stdout, r.stderr)
        sys.exit(f"FAIL: exit {r.returncode}")
    return r.stdout


def same(a, b, what):
    global failed
    x, y = open(a, "rb").read(), open(b, "rb").read()
    ok = x == y and len(x) > 0
    print(f"{'ok  ' if ok else 'FAIL'} {what} ({len(x)} and {len(y)} bytes)")
    failed += not ok


p = lambda name: os.path.join(work, name)
for f in ("mpi.ckpt", "one.ckpt", "stop2.ckpt", "res1.ckpt", "res2.ckpt", "res4.ckpt"):
    if os.path.exists(p(f)):
        os.remove(p(f))
out = run(MPI + ["--steps", "4", "--save", p("mpi.ckpt")] + short)
assert "ranks=2" in out and out.strip().splitlines()[-1].startswith("demo=charlm steps=4 "), out
run([charlm, "--steps", "4", "--save", p("one.ckpt")] + short)
same(p("mpi.ckpt"), p("one.ckpt"), "defaults, 4 steps: 2 ranks = 1 process")

run(MPI + ["--steps", "4", "--stop-at", "2", "--save", p("stop2.ckpt")] + short)
run([charlm, "--steps", "4", "--resume", p("stop2.ckpt"), "--save", p("res1.ckpt")] + short)
out = run(MPI + ["--steps", "4", "--resume", p("stop2.ckpt"), "--save", p("res2.ckpt")] + short)
assert "resumed=" in out, out
run(MPI4 + ["--steps", "4", "--resume", p("stop2.ckpt"), "--save", p("res4.ckpt")] + short)
same(p("res1.ckpt"), p("one.ckpt"), "stopped at 2 on 2 ranks, resumed on 1 process = the straight run")
same(p("res2.ckpt"), p("one.ckpt"), "stopped at 2 on 2 ranks, resumed on 2 ranks = the straight run")
same(p("res4.ckpt"), p("one.ckpt"), "stopped at 2 on 2 ranks, resumed on 4 ranks = the straight run")
print(f"charlm_mpi_check: {failed} failed")
sys.exit(1 if failed else 0)
