"""Which process a pid names, beyond its number.

A pid is reused: after a reboot, by a re-created VM of the same name, in another PID
namespace. The kernel's boot id and the process's start time tell the processes apart.
"""

import pathlib


def of(pid: int) -> str | None:
    """`boot id:start time` of process `pid` (Linux's /proc); None where /proc has no such
    process, or no /proc at all."""
    try:
        boot = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return f"{boot}:{stat.rsplit(')', 1)[1].split()[19]}"  # Field 22, after the name.
