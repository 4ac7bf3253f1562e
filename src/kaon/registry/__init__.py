"""kaon.registry: runs (params, metric history, artifacts) and versioned models, in one database.

SQLite in KAON_HOME/kaon.db by default, any SQLAlchemy URL through KAON_DATABASE_URL; files are
kept content-addressed under KAON_HOME/artifacts and hash-checked whenever they are read.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from kaon.registry.records import ModelVersionRecord, RunRecord
from kaon.registry.refs import parse_ref

if TYPE_CHECKING:
    from kaon.registry.registry import Registry

__all__ = ["ModelVersionRecord", "Registry", "RunRecord", "parse_ref"]


def __getattr__(name: str) -> Any:
    # Registry pulls in SQLAlchemy (~0.2 s); load it on first use so `kaon --help` stays fast.
    if name == "Registry":
        from kaon.registry.registry import Registry

        return Registry
    raise AttributeError(f"module 'kaon.registry' has no attribute {name!r}")
