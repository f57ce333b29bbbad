#!/usr/bin/env python3
"""Check that every C source and header of the tree is formatted as .clang-format says.

Usage: format_check.py CLANG_FORMAT SOURCE_ROOT. Runs clang-format in dry-run mode on
every .c and .h file under the source directories and fails, listing the files, if
any would change. Build directories (any directory holding meson-private) are skipped.
"""
import os
import subprocess
import sys

DIRS = ["tensor", "autograd", "nn", "optim", "data", "checkpoint", "mpi",
        "examples", "bench", "tests", "tools", "fuzz", "include"]


def sources(root):
    for top in [os.path.join(root, "carousel.h")]:
        if os.path.exists(top):
            yield top
    for d in DIRS:
        for dirpath, dirnames, filenames in os.walk(os.path.join(root, d)):
            dirnames[:] = [n for n in dirnames
                           if not os.path.exists(os.path.join(dirpath, n, "meson-private"))]
            for f in sorted(filenames):
                if f.endswith((".c", ".h")):
                    yield os.path.join(dirpath, f)


def main():
    clang_format, root = sys.argv[1], sys.argv[2]
    files = list(sources(root))
    style = "--style=file:" + os.path.join(root, ".clang-format")
    # One clang-format process for the whole tree (it is slow to start); its
    # diagnostics name each file that would change.
    r = subprocess.run([clang_format, "--dry-run", "--Werror", "--ferror-limit=1", style] + files,
                       capture_output=True, text=True)
    bad = sorted({os.path.relpath(line.split(":", 1)[0], root)
                  for line in r.stderr.splitlines() if ": error: " in line})
    if r.returncode != 0 and not bad:
        print(r.stderr)
        return 1
    if bad:
        print("not formatted (run clang-format -i on them):")
        for b in bad:
            print("  " + b)
        return 1
    print(f"{len(files)} files formatted as .clang-format says")
    return 0


if __name__ == "__main__":
    sys.exit(main())
