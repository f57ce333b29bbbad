#!/usr/bin/env python3
"""A rank that dies mid-run must end the whole job quickly, with a message
naming it, instead of leaving the other ranks waiting in a step.

usage: mpi_die.py MPIRUN MPI_TRAIN

Runs `mpi_train --die RANK HOW` on 2 ranks for each way of dying (exit with a
status, exit 0 without MPI_Finalize, SIGKILL) and each rank. What Open MPI
4.1 does (README.md quotes it): mpirun notices the rank, kills the others and
exits non-zero within seconds; the survivors never return from their receive.
"""
import subprocess
import sys
import time

mpirun, prog = sys.argv[1], sys.argv[2]
failed = 0
for victim in (1, 0):
    for how in ("exit", "exit0", "kill"):
        cmd = [mpirun, "-np", "2", "--allow-run-as-root", "--oversubscribe", prog, "--die", str(victim), how]
        t0 = time.monotonic()
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except subprocess.TimeoutExpired:
            print(f"FAIL rank {victim} {how}: the job still ran after 120 s (a rank is waiting forever)")
            failed += 1
            continue
        dt = time.monotonic() - t0
        out = r.stdout + r.stderr
        named = f"rank {victim}" in out.replace("\n", " ") or f",1],{victim}]" in out
        ok = r.returncode != 0 and named and "finished every step" not in out
        print(f"{'ok  ' if ok else 'FAIL'} rank {victim} {how}: mpirun exit {r.returncode} after {dt:.1f} s, "
              f"rank named: {named}")
        if not ok:
            print(out)
            failed += 1
print(f"mpi_die: {failed} failed")
sys.exit(1 if failed else 0)
