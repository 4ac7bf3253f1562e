"""What the registry hands back: immutable records of runs and model versions."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class RunRecord:
    """One training or optimization job as stored: its params, status and final summary."""

    id: int
    name: str
    kind: str
    status: str  # 'running' | 'completed' | 'failed' | 'interrupted' | 'crashed' (its process was killed)
    params: dict[str, Any]
    summary: dict[str, Any]
    created_at: datetime  # UTC
    finished_at: datetime | None = None
    owner: str | None = None  # host/pid-namespace:pid:start of the process that runs it


@dataclass(frozen=True)
class ModelVersionRecord:
    """An immutable registered model: its files by sha256, framework, signature and lineage."""

    name: str
    version: int
    files: dict[str, str]  # filename -> sha256
    framework: str
    signature: dict[str, Any]
    metrics: dict[str, Any]
    parent: str | None  # 'name@version' this one was derived from (e.g. an int8 variant)
    run_id: int | None
    aliases: list[str]
    description: str
    created_at: datetime  # UTC

    @property
    def ref(self) -> str:
        """'name@version', the reference that always means these exact files."""
        return f"{self.name}@{self.version}"
