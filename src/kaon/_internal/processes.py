"""Is a process on this machine still running? The same answer for a pid file and for a run's owner."""

from __future__ import annotations

import os
import socket


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
    """`host:pid:start` for this process, as `owner_gone` reads it back."""
    return f"{socket.gethostname()}:{os.getpid()}:{process_start(os.getpid())}"


def owner_gone(owner: str | None) -> bool:
    """True when `owner` (from `this_process`) ran on this host and has ended. Processes on other hosts, and
    owners this cannot read, count as running: only the host a process ran on can tell that it ended."""
    parts = (owner or "").rsplit(":", 2)
    if len(parts) != 3 or parts[0] != socket.gethostname() or not parts[1].isdigit():
        return False
    pid, started = int(parts[1]), parts[2]
    if not process_alive(pid):
        return True
    return bool(started) and process_start(pid) not in ("", started)  # the pid now names another process


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name (field 3, the state, first), or None off Linux."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
