"""CPU time of this process and of the whole machine, to tell disturbed measurements apart."""

from __future__ import annotations


def cpu_ticks() -> tuple[int, int]:
    """Busy clock ticks of the whole machine and of this process, from ``/proc``."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    busy = sum(fields) - fields[3] - fields[4]  # all but idle and iowait
    with open("/proc/self/stat") as f:
        own = f.read().rsplit(")", 1)[1].split()
    return busy, int(own[11]) + int(own[12])  # utime + stime
