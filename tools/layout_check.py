#!/usr/bin/env python3
"""Check carousel's module layout from what the build produced.

usage: layout_check.py SOURCE_ROOT BUILD_DIR

Three rules, each a failure when broken:
  1. Modules depend one way. A module's object files may use symbols defined
     only in the module itself or in the modules ALLOWED lists below it
     (symbols read with `nm`; a symbol no module defines is a library's).
  2. No two files use each other's symbols, directly or around a loop (the
     file graph has no strongly connected set of more than one file).
  3. Internal headers stay in their module: a module's headers other than its
     public one are included only by that module's own files.
The include paths the build gives each module already stop a wrong-way
#include; rule 1 also catches a wrong-way call declared by hand.
"""
import os
import re
import subprocess
import sys

# Which modules each module may use (besides itself), as in meson.build.
ALLOWED = {
    "tensor": set(),
    "autograd": {"tensor"},
    "nn": {"autograd", "tensor"},
    "optim": {"nn", "autograd", "tensor"},
    "data": {"tensor"},
    "checkpoint": {"optim", "nn", "autograd", "tensor", "data"},
    "mpi": {"checkpoint", "optim", "nn", "autograd", "tensor", "data"},
}
PUBLIC = {"tensor": {"tensor.h", "unary_ops.h"}, "mpi": {"cr_mpi.h"}}
# Modules built only when their dependency is found (meson option mpi).
OPTIONAL = {"mpi"}
LIBRARY = {"mpi": "libcarousel-mpi-module.a"}


def object_files(build):
    """(module, file stem, object path) for every object of the module libraries."""
    for mod in ALLOWED:
        d = os.path.join(build, mod, LIBRARY.get(mod, f"libcarousel-{mod}.a") + ".p")
        if not os.path.isdir(d):
            if mod in OPTIONAL:
                continue
            sys.exit(f"layout_check: {d} is missing (build the library first)")
        for name in sorted(os.listdir(d)):
            if name.endswith(".o"):
                yield mod, f"{mod}/{name[:-len('.c.o')]}", os.path.join(d, name)


def symbols(obj):
    """(defined, used) global symbol names of one object file."""
    out = subprocess.run(["nm", "-P", obj], capture_output=True, text=True, check=True).stdout
    defined, used = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) < 2:
            continue
        name, kind = parts[0], parts[1]
        if kind == "U":
            used.add(name)
        elif kind in "TDBRVW":  # global text, data, bss, read-only, weak
            defined.add(name)
    return defined, used


def strongly_connected(graph):
    """Tarjan's algorithm, iterative: the components of more than one node."""
    index, low, on_stack, stack, comps, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, edges = work[-1]
            advanced = False
            for nxt in edges:
                if nxt not in index:
                    index[nxt] = low[nxt] = counter[0]
                    counter[0] += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter(sorted(graph[nxt]))))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                comp = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    comp.append(w)
                    if w == node:
                        break
                if len(comp) > 1:
                    comps.append(sorted(comp))
    return comps


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    src, build = sys.argv[1], sys.argv[2]
    problems = []

    files = list(object_files(build))
    owner, uses, module_of = {}, {}, {}
    for mod, stem, obj in files:
        defined, used = symbols(obj)
        module_of[stem] = mod
        uses[stem] = used
        for s in defined:
            owner[s] = stem
    graph = {stem: set() for stem in uses}
    for stem, used in uses.items():
        for s in sorted(used):
            other = owner.get(s)
            if other is None or other == stem:
                continue
            graph[stem].add(other)
            a, b = module_of[stem], module_of[other]
            if a != b and b not in ALLOWED[a]:
                problems.append(f"{stem} ({a}) uses {s} from {other} ({b}): {a} may not depend on {b}")

    for comp in strongly_connected(graph):
        problems.append("files that use each other's symbols: " + " <-> ".join(comp))

    include = re.compile(r'^\s*#\s*include\s*"([^"]+)"', re.M)
    for mod in ALLOWED:
        internal = {h for h in os.listdir(os.path.join(src, mod)) if h.endswith(".h")}
        internal -= PUBLIC.get(mod, {f"{mod}.h"})
        for other in ALLOWED:
            if other == mod:
                continue
            d = os.path.join(src, other)
            for name in sorted(os.listdir(d)):
                if not name.endswith((".c", ".h")):
                    continue
                with open(os.path.join(d, name), encoding="utf-8") as f:
                    for inc in include.findall(f.read()):
                        if os.path.basename(inc) in internal:
                            problems.append(f"{other}/{name} includes {mod}'s internal header {inc}")

    for p in problems:
        print(p)
    n_edges = sum(len(v) for v in graph.values())
    print(f"layout: {len(graph)} files in {len(ALLOWED)} modules, {n_edges} file-to-file uses, "
          f"{len(problems)} problems")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
