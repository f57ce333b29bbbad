#!/usr/bin/env python3
"""Runs a Criterion suite in a sanitizer build and fails it on any sanitizer
report. Criterion runs each test in a worker process and takes the test's
result from the worker's messages, not its exit status, so a leak that
LeakSanitizer reports when a worker exits (exit status 23) leaves the test
"passing" and the suite's exit status 0. Here the suite's stderr is passed
through and scanned: a LeakSanitizer, AddressSanitizer or UBSan report makes
the exit status 1.

    sanitizer_check.py PROGRAM [ARGS...]
"""
import subprocess
import sys

MARKERS = ("ERROR: LeakSanitizer", "ERROR: AddressSanitizer", ": runtime error: ")


def main() -> int:
    if len(sys.argv) < 2:
        print("usage: sanitizer_check.py PROGRAM [ARGS...]", file=sys.stderr)
        return 2
    run = subprocess.run(sys.argv[1:], stderr=subprocess.PIPE)
    err = run.stderr.decode("utf-8", "replace")
    sys.stderr.write(err)
    found = [m.strip(": ") for m in MARKERS if m in err]
    if found:
        print(f"sanitizer_check: {sys.argv[1]}: {', '.join(found)} reported (see above); "
              "Criterion counts such a test as passed, this check does not", file=sys.stderr)
        return 1
    return run.returncode


if __name__ == "__main__":
    sys.exit(main())
