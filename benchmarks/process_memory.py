"""This process's memory, as the benchmarks that measure it report it (Linux ``/proc``)."""

from __future__ import annotations

import os
import resource


def rss_mib() -> float:
    """The resident set now, in MiB (``VmRSS``; read from ``/proc/self/statm``, one line)."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mib(who: int = resource.RUSAGE_SELF) -> float:
    """The largest resident set so far, in MiB: this process's, or with ``RUSAGE_CHILDREN`` its
    largest waited-for child's (``ru_maxrss`` is in KiB on Linux)."""
    return resource.getrusage(who).ru_maxrss / 1024
