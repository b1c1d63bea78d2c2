"""Run the test suite's groups side by side and report each group's wall time (``make test``).

Usage: ``testgroups.py LOG_DIR GROUP...``; each GROUP is a make target of this repository.

The groups share nothing: each starts its own lab on free ports, boots its own test hosts under its
own names, and writes under its own temporary directories, so they can run at once. Each group's
output goes to ``LOG_DIR/GROUP.log`` and is printed whole when the group ends (so the output reads
group by group, not interleaved). At the end a table gives every group's result and wall time, and
the exit status is 1 if any group failed. Python 3.11 standard library only.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

REPO = Path(__file__).resolve().parent.parent


def run(log_dir: Path, groups: List[str]) -> int:
    log_dir.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    running: Dict[str, Tuple[subprocess.Popen, float, Path]] = {}
    for group in groups:
        log = log_dir / ("%s.log" % group)
        with open(log, "wb") as handle:
            proc = subprocess.Popen(["make", "--no-print-directory", group], cwd=REPO, stdin=subprocess.DEVNULL,
                                    stdout=handle, stderr=subprocess.STDOUT, start_new_session=False)
        running[group] = (proc, time.monotonic(), log)
    print("=== running side by side: %s (logs in %s)" % (", ".join(groups), log_dir), flush=True)
    results: Dict[str, Tuple[int, float]] = {}
    while running:
        for group, (proc, began, log) in list(running.items()):
            rc = proc.poll()
            if rc is None:
                continue
            took = time.monotonic() - began
            del running[group]
            results[group] = (rc, took)
            print("=== %s %s in %.0f s; its output:" % (group, "passed" if rc == 0 else "FAILED (exit %d)" % rc, took), flush=True)
            sys.stdout.flush()
            with open(log, "rb") as handle:
                sys.stdout.buffer.write(handle.read())
            sys.stdout.buffer.flush()
            print("=== end of %s" % group, flush=True)
        time.sleep(0.5)
    total = time.monotonic() - started
    width = max(len(g) for g in groups + ["group"])
    print()
    print("%s  %-6s  %s" % ("group".ljust(width), "result", "wall time"))
    for group in groups:
        rc, took = results[group]
        print("%s  %-6s  %4.0f s (%d min %02d s)" % (group.ljust(width), "passed" if rc == 0 else "FAILED", took, took // 60, took % 60))
    print("%s  %-6s  %4.0f s (%d min %02d s)" % ("make test".ljust(width), "", total, total // 60, total % 60))
    return 0 if all(rc == 0 for rc, _took in results.values()) else 1


def main(argv: List[str]) -> int:
    if len(argv) < 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    os.environ.pop("MAKEFLAGS", None)  # each group is its own make, not a job of the caller's
    return run(Path(argv[0]), argv[1:])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
