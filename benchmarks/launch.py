"""Start one command and measure it from a small process: ``python -m benchmarks.launch OUT ARGV...``.

A child started straight from the benchmark inherits the benchmark's own peak RSS: Linux records
the memory of the process it was forked or vforked from as the child's high-water mark at exec,
and the benchmark holds whole corpora (hundreds of MB of 25 MB attachments) in memory. Started
from this launcher, whose own memory is small, the command's ``ru_maxrss`` is its own (the
larger of it and its children). The launcher also samples the memory of the whole process tree
(maildesk's daemon, its delivery process, its parse zygote and workers together) every few
milliseconds: the sum of their resident sizes, which counts a page that forked processes share
once per process, and with ``--pss`` also the sum of their proportional sizes (PSS, from
``/proc/PID/smaps_rollup``), which counts every page once, as the machine does. PSS is asked for
only where memory is the figure: the kernel walks a process's page tables under its memory
lock to add it up, and doing that every few milliseconds stalls the measured processes (it
cost the drain a fifth of its throughput). It times the command from its start to its exit, so
its own start-up is not counted, and writes one JSON object to OUT.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

SAMPLE_SECONDS = 0.005


def tree_kb(pid: int, *, pss: bool) -> tuple[int, int]:
    """(resident, proportional) memory of ``pid`` and its descendants, in kB (0 for what has
    exited): the daemon, its delivery process, its parse zygote and the zygote's workers."""
    rss = total_pss = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            if pss:
                rss_kb, pss_kb = _rollup(current)
                rss, total_pss = rss + rss_kb, total_pss + pss_kb
            else:
                rss += _resident(current)
            pending.extend(children(current))
        except OSError:
            continue
    return rss, total_pss


def _resident(pid: int) -> int:
    """VmRSS in kB, from counters the kernel keeps (no page-table walk)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def _rollup(pid: int) -> tuple[int, int]:
    """(Rss, Pss) in kB from ``smaps_rollup``: a walk of the process's page tables."""
    rss = pss = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Rss:"):
            rss = int(line.split()[1])
        elif line.startswith("Pss:"):
            pss = int(line.split()[1])
            break
    return rss, pss


def children(pid: int) -> list[int]:
    """The processes ``pid`` started, from any of its threads (each thread has its own list:
    the daemon starts its parse zygote from a worker thread)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            found.extend(int(c) for c in (task / "children").read_text().split())
        except OSError:
            continue
    return found


def main(out: str, argv: list[str], *, pss: bool = False) -> int:
    started = time.monotonic()
    pid = os.posix_spawnp(argv[0], argv, dict(os.environ))
    peak_tree = peak_pss = 0
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        rss, proportional = tree_kb(pid, pss=pss)
        peak_tree, peak_pss = max(peak_tree, rss), max(peak_pss, proportional)
        time.sleep(SAMPLE_SECONDS)  # sampling a running child's memory until it exits
    seconds = time.monotonic() - started
    result = {
        "seconds": seconds,
        "returncode": os.waitstatus_to_exitcode(status),
        "maxrss_kb": usage.ru_maxrss,
        "tree_peak_kb": peak_tree,
        "tree_peak_pss_kb": peak_pss,
    }
    Path(out).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    wants_pss = sys.argv[1] == "--pss"
    rest = sys.argv[2:] if wants_pss else sys.argv[1:]
    sys.exit(main(rest[0], rest[1:], pss=wants_pss))
