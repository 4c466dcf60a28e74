"""CPU time and resident memory of a process, read from /proc (Linux only).

`cpu_seconds(pid)` is user + system time (utime + stime of /proc/PID/stat, in clock ticks) in seconds;
`rss_kb(pid)` is VmRSS from /proc/PID/status. Take two `cpu_seconds` readings around a window and
divide by its wall time for a CPU share of one core. `steal_seconds()` is the CPU time the hypervisor
took from this virtual machine (all CPUs, /proc/stat): on a VM it says whether a run can be trusted.
"""

from __future__ import annotations

import os
from typing import Final

__all__ = [
    "CLOCK_TICKS",
    "cpu_seconds",
    "parse_machine_steal_ticks",
    "parse_stat_cpu_ticks",
    "parse_status_rss_kb",
    "rss_kb",
    "steal_seconds",
]

CLOCK_TICKS: Final = os.sysconf("SC_CLK_TCK")


def parse_stat_cpu_ticks(stat: str) -> int:
    """utime + stime (clock ticks) from the text of /proc/PID/stat.

    The command name (field 2) may hold spaces and parentheses, so fields are counted after its last ")".
    """
    fields = stat[stat.rindex(")") + 2 :].split()
    # After the name: state is field 3, so utime (14) and stime (15) are at offsets 11 and 12.
    return int(fields[11]) + int(fields[12])


def parse_status_rss_kb(status: str) -> int:
    """VmRSS in kB from the text of /proc/PID/status (0 when absent: a kernel thread or a zombie)."""
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds used so far by process `pid` (default: this process)."""
    with open(f"/proc/{pid or os.getpid()}/stat") as f:
        return parse_stat_cpu_ticks(f.read()) / CLOCK_TICKS


def rss_kb(pid: int | None = None) -> int:
    """Resident memory of process `pid` (default: this process) in kB."""
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        return parse_status_rss_kb(f.read())


def parse_machine_steal_ticks(stat: str) -> int:
    """The `steal` ticks (8th value) of the aggregate `cpu` line of /proc/stat (0 if the kernel has none)."""
    for line in stat.splitlines():
        if line.startswith("cpu "):
            values = line.split()[1:]
            return int(values[7]) if len(values) > 7 else 0
    return 0


def steal_seconds() -> float:
    """CPU seconds stolen from this machine by its hypervisor so far, summed over its CPUs."""
    with open("/proc/stat") as f:
        return parse_machine_steal_ticks(f.read()) / CLOCK_TICKS
