"""Where the cluster keeps its files under KAON_HOME (light: the CLI imports this to find the control plane)."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Collection
from pathlib import Path

from kaon.config import kaon_home
from kaon.errors import NotFoundError

DEFAULT_PORT = 8470  # the control plane's API, when free
FIRST_DEPLOYMENT_PORT = 8100  # deployments without a port take the first free one from here
MAX_DEAD_REPLICA_LOGS = 10  # logs of replicas that are gone, kept per deployment (the most recent)


def cluster_dir() -> Path:
    """KAON_HOME/cluster: the control plane's discovery file and log."""
    path = kaon_home() / "cluster"
    path.mkdir(parents=True, exist_ok=True)
    return path


def discovery_file() -> Path:
    """KAON_HOME/cluster/controlplane.json: the running control plane's URL, pid and token (mode 0600)."""
    return cluster_dir() / "controlplane.json"


def deployment_dir(name: str) -> Path:
    """KAON_HOME/deployments/NAME: the replicas' logs."""
    return kaon_home() / "deployments" / name


def replica_logs(folder: Path) -> dict[int, Path]:
    """Each replica's log in `folder` (KAON_HOME/deployments/NAME), by replica number."""
    logs: dict[int, Path] = {}
    for file in folder.glob("replica-*.log"):
        number = file.stem.split("-", 1)[1]
        if number.isdigit():
            logs[int(number)] = file
    return dict(sorted(logs.items()))


def prune_replica_logs(folder: Path, live: Collection[int], keep: int = MAX_DEAD_REPLICA_LOGS) -> list[Path]:
    """Delete the logs of dead replicas (not in `live`) beyond the `keep` most recently written; returns them.
    Every scale-up starts a replica with a new number, so without this a deployment that scales to zero
    and back all day would pile up a log per cycle."""
    dead = [file for index, file in replica_logs(folder).items() if index not in live]
    dead.sort(key=_modified, reverse=True)
    for file in dead[keep:]:
        with contextlib.suppress(FileNotFoundError):
            file.unlink()
    return dead[keep:]


def _modified(file: Path) -> float:
    try:
        return file.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def read_logs(folder: Path, *, tail: int = 200, replicas: Collection[int] | None = None) -> list[str]:
    """The last `tail` lines of each replica's log (of those in `replicas`; None: all), prefixed with its number."""
    lines: list[str] = []
    if not folder.is_dir():
        return lines
    for index, file in replica_logs(folder).items():
        if replicas is not None and index not in replicas:
            continue
        try:
            with open(file, "rb") as handle:
                handle.seek(0, os.SEEK_END)
                size = handle.tell()
                handle.seek(max(0, size - 256 * 1024))
                text = handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:  # pruned meanwhile
            continue
        lines += [f"[{index}] {line}" for line in text.splitlines()[-tail:]]
    return lines


def unknown_replica_error(name: str, replica: int, logged: Collection[int], running: Collection[int]) -> NotFoundError:
    """`kaon logs NAME --replica N` for a replica that has no log: say which ones do."""
    have = ", ".join(map(str, sorted(logged))) or "none"
    live = ", ".join(map(str, sorted(running))) or "none"
    return NotFoundError(f"no log of replica {replica} of '{name}'. Received: --replica {replica}. Replicas with "
                         f"logs: {have} (running: {live}); kaon status {name} lists the running ones.")
