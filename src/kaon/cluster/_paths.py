"""Where the cluster keeps its files under KAON_HOME (light: the CLI imports this to find the control plane)."""

from __future__ import annotations

import os
from pathlib import Path

from kaon.config import kaon_home

DEFAULT_PORT = 8470  # the control plane's API, when free
FIRST_DEPLOYMENT_PORT = 8100  # deployments without a port take the first free one from here


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


def read_logs(folder: Path, *, tail: int = 200, replica: int | None = None) -> list[str]:
    """The last `tail` lines of each replica's log, prefixed with the replica number."""
    lines: list[str] = []
    if not folder.is_dir():
        return lines
    files = sorted(folder.glob("replica-*.log"), key=lambda p: int(p.stem.split("-")[1]))
    for file in files:
        index = int(file.stem.split("-")[1])
        if replica is not None and index != replica:
            continue
        with open(file, "rb") as handle:
            handle.seek(0, os.SEEK_END)
            size = handle.tell()
            handle.seek(max(0, size - 256 * 1024))
            text = handle.read().decode("utf-8", errors="replace")
        lines += [f"[{index}] {line}" for line in text.splitlines()[-tail:]]
    return lines
