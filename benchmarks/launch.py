"""Start one command and measure it from a small process: ``python -m benchmarks.launch OUT ARGV...``.

A child started straight from the benchmark inherits the benchmark's own peak RSS: Linux records
the memory of the process it was forked or vforked from as the child's high-water mark at exec,
and the benchmark holds whole corpora (hundreds of MB of 25 MB attachments) in memory. Started
from this launcher, whose own memory is small, the command's ``ru_maxrss`` is its own (the
larger of it and its children). The launcher also samples the memory of the whole process tree
(maildesk's daemon, its delivery process, its parse zygote and workers together) every few
milliseconds, two ways: the sum of their resident sizes, which counts a page that forked
processes share once per process, and the sum of their proportional sizes (PSS, from
``/proc/PID/smaps_rollup``), which counts every page once, as the machine does. It times the
command from its start to its exit, so its own start-up is not counted, and writes one JSON
object to OUT.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

SAMPLE_SECONDS = 0.005


def tree_kb(pid: int) -> tuple[int, int]:
    """(resident, proportional) memory of ``pid`` and its descendants, in kB (0 for what has
    exited): the daemon, its delivery process, its parse zygote and the zygote's workers."""
    rss = pss = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            for line in Path(f"/proc/{current}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss += int(line.split()[1])
                    break
            pending.extend(children(current))
        except OSError:
            continue
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


def main(out: str, argv: list[str]) -> int:
    started = time.monotonic()
    pid = os.posix_spawnp(argv[0], argv, dict(os.environ))
    peak_tree = peak_pss = 0
    while True:
        done, status, usage = os.wait4(pid, os.WNOHANG)
        if done:
            break
        rss, pss = tree_kb(pid)
        peak_tree, peak_pss = max(peak_tree, rss), max(peak_pss, pss)
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
    sys.exit(main(sys.argv[1], sys.argv[2:]))
