#!/usr/bin/env python3
"""charlm --mpi against plain charlm: byte-identical checkpoints.

usage: charlm_mpi_check.py MPIRUN CHARLM WORKDIR

1. With default settings (only --steps, --sample and --val-chunks shortened),
   `mpirun -np 2 charlm --mpi --save a` and `charlm --save b` (one process,
   every core) write the same bytes.
2. A checkpoint written on 2 ranks resumes on 1 process and on 2 ranks, and
   the two resumed runs write the same bytes again.
"""
import os
import subprocess
import sys

mpirun, charlm, work = sys.argv[1:4]
os.makedirs(work, exist_ok=True)
MPI = [mpirun, "-np", "2", "--allow-run-as-root", "--oversubscribe", charlm, "--mpi"]
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
for f in ("mpi.ckpt", "one.ckpt", "mpi3.ckpt", "res1.ckpt", "res2.ckpt"):
    if os.path.exists(p(f)):
        os.remove(p(f))
out = run(MPI + ["--steps", "4", "--save", p("mpi.ckpt")] + short)
assert "ranks=2" in out and out.strip().splitlines()[-1].startswith("demo=charlm steps=4 "), out
run([charlm, "--steps", "4", "--save", p("one.ckpt")] + short)
same(p("mpi.ckpt"), p("one.ckpt"), "defaults, 4 steps: 2 ranks = 1 process")

run(MPI + ["--steps", "2", "--save", p("mpi3.ckpt")] + short)
run([charlm, "--steps", "4", "--resume", p("mpi3.ckpt"), "--save", p("res1.ckpt")] + short)
out = run(MPI + ["--steps", "4", "--resume", p("mpi3.ckpt"), "--save", p("res2.ckpt")] + short)
assert "resumed=" in out, out
same(p("res1.ckpt"), p("res2.ckpt"), "a 2-rank checkpoint resumed on 1 process and on 2 ranks")
print(f"charlm_mpi_check: {failed} failed")
sys.exit(1 if failed else 0)
