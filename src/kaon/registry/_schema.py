"""The registry's tables, as typed SQLAlchemy models.

This module describes the schema the code expects; the Alembic revisions in `migrations/versions/`
create it. A change here needs a new revision (a test compares the two).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    DateTime,
    Float,
    ForeignKey,
    ForeignKeyConstraint,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# The Alembic revision this code was written against. Opening a database at another revision
# runs `alembic upgrade head`; at this one, alembic is not even imported (keeps startup fast).
HEAD_REVISION = "0004"

JSONType = JSON().with_variant(JSONB(), "postgresql")
NAME_LENGTH = 128


class Base(DeclarativeBase):
    # Deterministic constraint names, so that migrations can refer to them on every database.
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )
    type_annotation_map = {
        dict[str, Any]: JSONType,
        datetime: DateTime(timezone=True),
    }


class RunRow(Base):
    __tablename__ = "runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    kind: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    params: Mapped[dict[str, Any]]
    summary: Mapped[dict[str, Any]]
    created_at: Mapped[datetime]
    finished_at: Mapped[datetime | None]
    owner: Mapped[str | None] = mapped_column(String(255))  # host/pid-namespace:pid:start of the process running it


class RunMetricRow(Base):
    __tablename__ = "run_metrics"
    __table_args__ = (Index(None, "run_id", "key"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    key: Mapped[str] = mapped_column(String(255))
    step: Mapped[int] = mapped_column(Integer)
    # Nullable because SQLite stores NaN as NULL; a NULL reads back as NaN.
    value: Mapped[float | None] = mapped_column(Float)
    timestamp: Mapped[datetime]


class RunArtifactRow(Base):
    __tablename__ = "run_artifacts"
    __table_args__ = (UniqueConstraint("run_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("runs.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(255))
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)


class ModelRow(Base):
    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    # The highest version number ever given out. Numbers are never reused, even after a delete,
    # so `name@3` always means the same files.
    last_version: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime]


class ModelVersionRow(Base):
    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_name", "version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(ForeignKey("models.name", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    files: Mapped[dict[str, Any]]
    framework: Mapped[str] = mapped_column(String(64))
    signature: Mapped[dict[str, Any]]
    metrics: Mapped[dict[str, Any]]
    parent: Mapped[str | None] = mapped_column(String(2 * NAME_LENGTH + 16))
    run_id: Mapped[int | None] = mapped_column(ForeignKey("runs.id", ondelete="SET NULL"))
    description: Mapped[str] = mapped_column(Text, default="")
    created_at: Mapped[datetime]


class AliasRow(Base):
    __tablename__ = "aliases"
    __table_args__ = (
        UniqueConstraint("model_name", "alias"),
        ForeignKeyConstraint(
            ["model_name", "version"],
            ["model_versions.model_name", "model_versions.version"],
            ondelete="CASCADE",
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    model_name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    alias: Mapped[str] = mapped_column(String(NAME_LENGTH))
    version: Mapped[int] = mapped_column(Integer)


class EventRow(Base):
    """The append-only log: one row per write, in the same transaction as the write."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    time: Mapped[datetime]
    kind: Mapped[str] = mapped_column(String(64))
    subject: Mapped[str] = mapped_column(String(2 * NAME_LENGTH + 16))
    payload: Mapped[dict[str, Any]]


class TokenRow(Base):
    """An API token: its public id, scopes and limits, and only a salted hash of the token itself."""

    __tablename__ = "tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_id: Mapped[str] = mapped_column(String(32), unique=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH))
    scopes: Mapped[dict[str, Any]]  # {"scopes": [...]}: a JSON object, like every other JSON column
    secret_hash: Mapped[str] = mapped_column(String(256))
    rate_per_s: Mapped[float | None] = mapped_column(Float)
    burst: Mapped[int | None] = mapped_column(Integer)
    max_concurrent: Mapped[int | None] = mapped_column(Integer)
    created_by: Mapped[str] = mapped_column(String(NAME_LENGTH), default="")
    created_at: Mapped[datetime]
    expires_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]


# ---- deployments (kaon.cluster): what the control plane runs, so that it survives a restart ------


class DeploymentRow(Base):
    """A Deployment's spec as declared, whether it should run, and the autoscaler's last decision."""

    __tablename__ = "deployments"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    spec: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16))  # 'running' | 'stopped'
    decision: Mapped[dict[str, Any]]  # {replicas, reason, time, ...}; {} before the first
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]


class ReplicaRow(Base):
    """One replica of a deployment as last seen by its backend."""

    __tablename__ = "deployment_replicas"
    __table_args__ = (UniqueConstraint("deployment_name", "replica"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    deployment_name: Mapped[str] = mapped_column(ForeignKey("deployments.name", ondelete="CASCADE"))
    replica: Mapped[int] = mapped_column(Integer)
    node: Mapped[str] = mapped_column(String(NAME_LENGTH))
    state: Mapped[str] = mapped_column(String(16))
    pid: Mapped[int | None] = mapped_column(Integer)
    port: Mapped[int | None] = mapped_column(Integer)
    restarts: Mapped[int] = mapped_column(Integer, default=0)
    started_at: Mapped[datetime]
    ready_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]


class NodeRow(Base):
    """A machine replicas can be placed on, with its declared capacity."""

    __tablename__ = "cluster_nodes"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(NAME_LENGTH), unique=True)
    backend: Mapped[str] = mapped_column(String(16))
    address: Mapped[str | None] = mapped_column(String(255))
    capacity: Mapped[dict[str, Any]]  # {cpus, memory_mb, gpus}
    updated_at: Mapped[datetime]
