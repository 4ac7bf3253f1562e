"""Is a process on this machine still running? The same answer for a pid file and for a run's owner. And how
many cores this process has to itself."""

from __future__ import annotations

import os
import socket

# Set by `kaon serve --workers N` in each worker: its share of the cores (the machine's divided by N).
PROCESS_CORES_ENV = "KAON_PROCESS_CORES"


def available_cores() -> int:
    """The CPUs this process may run on (its affinity mask where the platform has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def process_cores() -> int:
    """The cores this process has to itself: a worker's share (PROCESS_CORES_ENV), else every available one."""
    share = os.environ.get(PROCESS_CORES_ENV, "")
    return int(share) if share.isdigit() and int(share) > 0 else available_cores()


def process_alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, exited and not yet reaped, does not count)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    stat = _stat_fields(pid)
    return stat is None or stat[0] != "Z"


def process_start(pid: int) -> str:
    """When `pid` started, in the kernel's clock ticks since boot ("" where /proc does not say): with the pid,
    it names one process even after the pid is reused."""
    stat = _stat_fields(pid)
    return stat[19] if stat is not None and len(stat) > 19 else ""


def this_process() -> str:
    """`host/pid-namespace:pid:start` for this process, as `owner_gone` reads it back."""
    return f"{_machine()}:{os.getpid()}:{process_start(os.getpid())}"


def owner_gone(owner: str | None) -> bool:
    """True when `owner` (from `this_process`) ran where this process runs (the same host and PID namespace: a
    container's pid 1 is not this host's) and has ended. Other owners, and owners this cannot read, count as
    running: only where a process ran can it be told that it ended."""
    parts = (owner or "").rsplit(":", 2)
    if len(parts) != 3 or parts[0] != _machine() or not parts[1].isdigit():
        return False
    pid, started = int(parts[1]), parts[2]
    if not process_alive(pid):
        return True
    return bool(started) and process_start(pid) not in ("", started)  # the pid now names another process


def owner_host(owner: str) -> str:
    """The host an owner ran on, for messages."""
    return owner.rsplit(":", 2)[0].split("/", 1)[0]


def _machine() -> str:
    """This host and PID namespace ("" where /proc does not say): where a pid means one process."""
    try:
        namespace = "".join(c for c in os.readlink("/proc/self/ns/pid") if c.isdigit())
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}/{namespace}"


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (field 3, the state, first), or None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
