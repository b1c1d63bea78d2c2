"""Measuring helpers for the benchmarks: wall time and peak memory of a command, CA requests in Pebble's log.

* :func:`run_measured` runs a command on this machine under GNU ``time`` and samples the memory of
  its whole process tree (the sum of every process's PSS, every 0.1 s): an ``ansible-playbook`` run
  is a controller process, forked workers and ``ssh`` clients, and GNU time's ``%M`` only sees the
  largest single process of such a tree.
* :func:`parse_gnu_time` reads what ``time -f '%e %M'`` wrote (used for commands run inside the edge).
* :class:`PebbleLog` counts the requests Pebble logged, to prove a run made none.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from testhost import _descendants  # noqa: E402  (the process-tree walk the test hosts already use)

GNU_TIME = "/usr/bin/time"
TIME_FORMAT = "%e %M"
SAMPLE_EVERY = 0.1  # seconds between memory samples of a process tree
# Pebble logs one line per request it serves, e.g. "Pebble 2026/11/30 15:18:10 POST /order-plz -> calling handler()".
PEBBLE_REQUEST = re.compile(r"^Pebble \S+ \S+ (?:GET|HEAD|POST) (\S+) -> calling handler\(\)", re.M)


@dataclass
class Measured:
    """One measured command: wall time, peak memory and what it printed."""

    label: str
    wall_s: float
    peak_kb: int           # the process tree's peak (sum of PSS), or GNU time's %M for commands inside the edge
    maxrss_kb: int         # GNU time's %M: the largest single process
    rc: int
    stdout: str = ""
    stderr: str = ""
    extra: Dict[str, Any] = field(default_factory=dict)

    def tail(self, lines: int = 40) -> str:
        text = (self.stdout + "\n" + self.stderr).strip().splitlines()
        return "\n".join(text[-lines:])


def parse_gnu_time(text: str) -> Tuple[float, int]:
    """(elapsed seconds, max RSS in KiB) from the last line GNU time wrote with ``-f '%e %M'``."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if not lines:
        raise ValueError("GNU time wrote nothing")
    elapsed, maxrss = lines[-1].split()
    return float(elapsed), int(maxrss)


def _pss_kb(pid: int) -> int:
    """Proportional set size of one process (shared pages split between their users); 0 when it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_kb(pid: int) -> int:
    """Sum of the PSS of ``pid`` and all its descendants."""
    return sum(_pss_kb(p) for p in [pid, *_descendants(pid)])


def _stop_group(proc: subprocess.Popen) -> None:
    """End a command started in its own session: its process group is the command's PID."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(10)
    except (OSError, subprocess.TimeoutExpired):
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


class Stalled(RuntimeError):
    """A watchdog stopped a measured command."""


def run_measured(label: str, cmd: Sequence[str], workdir: Path, env: Optional[Mapping[str, str]] = None,
                 cwd: Optional[Path] = None, timeout: float = 3600.0,
                 watchdog: Optional[Callable[[], Optional[str]]] = None) -> Measured:
    """Run ``cmd`` under GNU time in a session of its own, sampling its tree's memory until it ends.

    Output goes to files under ``workdir`` (a large playbook output never fills a pipe). ``watchdog``
    is asked at every sample; a message from it stops the command and raises :class:`Stalled`.
    """
    workdir.mkdir(parents=True, exist_ok=True)
    time_file, out_file, err_file = (workdir / f"{label}.{suffix}" for suffix in ("time", "out", "err"))
    argv = [GNU_TIME, "-f", TIME_FORMAT, "-o", str(time_file), *cmd]
    peak = 0
    with open(out_file, "w") as out, open(err_file, "w") as err:
        started = time.perf_counter()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=dict(env) if env else None,
                                cwd=cwd, start_new_session=True)
        try:
            while proc.poll() is None:
                peak = max(peak, tree_pss_kb(proc.pid))
                if time.perf_counter() - started > timeout:
                    raise subprocess.TimeoutExpired(argv, timeout)
                problem = watchdog() if watchdog else None
                if problem:
                    raise Stalled("%s stopped: %s" % (label, problem))
                time.sleep(SAMPLE_EVERY)
        finally:
            if proc.poll() is None:
                _stop_group(proc)
        wall = time.perf_counter() - started
    _elapsed, maxrss = parse_gnu_time(time_file.read_text())
    return Measured(label, wall, peak, maxrss, proc.returncode, out_file.read_text(), err_file.read_text())


class PebbleLog:
    """Requests Pebble served, counted from its log (one line per request)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def requests(self) -> List[str]:
        """Paths of every request logged so far."""
        try:
            return PEBBLE_REQUEST.findall(self.path.read_text(errors="replace"))
        except OSError:
            return []

    def count(self) -> int:
        return len(self.requests())

    def silent_for(self) -> float:
        """Seconds since Pebble last wrote to its log."""
        try:
            return time.time() - self.path.stat().st_mtime
        except OSError:
            return 0.0
