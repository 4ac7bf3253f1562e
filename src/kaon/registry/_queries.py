"""Queries that run inside a Registry transaction, and rows turned into records."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kaon.errors import NotFoundError
from kaon.registry._schema import AliasRow, EventRow, ModelRow, ModelVersionRow, RunRow
from kaon.registry._validation import check_version
from kaon.registry.records import ModelVersionRecord, RunRecord
from kaon.registry.refs import LATEST


def lock_model(session: Session, name: str) -> ModelRow:
    """The model row for `name`, locked for this transaction (created when new)."""
    model = session.scalars(select(ModelRow).where(ModelRow.name == name).with_for_update()).one_or_none()
    if model is None:
        model = ModelRow(name=name, last_version=0, created_at=now())
        session.add(model)
        session.flush()  # a concurrent creator makes this raise IntegrityError: the caller retries
    return model


def point_alias(session: Session, name: str, alias: str, version: int) -> int | None:
    """Point `name@alias` at `version`; return the version it pointed at before (None if new)."""
    row = session.scalars(
        select(AliasRow).where(AliasRow.model_name == name, AliasRow.alias == alias)
    ).one_or_none()
    if row is None:
        session.add(AliasRow(model_name=name, alias=alias, version=version))
        return None
    previous, row.version = row.version, version
    return previous


def aliases_of(session: Session, name: str, version: int) -> list[str]:
    return list(
        session.scalars(
            select(AliasRow.alias)
            .where(AliasRow.model_name == name, AliasRow.version == version)
            .order_by(AliasRow.alias)
        )
    )


def require_model(session: Session, name: str) -> None:
    if session.scalar(select(ModelRow.id).where(ModelRow.name == name)) is None:
        names = list(session.scalars(select(ModelRow.name).order_by(ModelRow.name).limit(20)))
        known = ", ".join(names) if names else "none yet (kaon.register(model, name, input_example=...) adds one)"
        raise NotFoundError(f"no model named '{name}'. Models in the registry: {known}.")


def require_version(session: Session, name: str, version: int) -> ModelVersionRow:
    row = session.scalars(
        select(ModelVersionRow).where(ModelVersionRow.model_name == name, ModelVersionRow.version == version)
    ).one_or_none()
    if row is None:
        require_model(session, name)
        versions = list(
            session.scalars(
                select(ModelVersionRow.version)
                .where(ModelVersionRow.model_name == name)
                .order_by(ModelVersionRow.version)
            )
        )
        listed = ", ".join(str(v) for v in versions) if versions else "none (all were deleted)"
        raise NotFoundError(f"model '{name}' has no version {version}. Its versions: {listed}.")
    return row


def resolve(session: Session, name: str, selector: str | None) -> ModelVersionRecord:
    if selector is not None and selector.isdigit():
        row = require_version(session, name, check_version(int(selector)))
    else:
        alias = selector or LATEST
        version = session.scalar(
            select(AliasRow.version).where(AliasRow.model_name == name, AliasRow.alias == alias)
        )
        if version is None:
            require_model(session, name)
            if alias == LATEST:
                raise NotFoundError(f"model '{name}' has no versions left (all were deleted).")
            aliases = sorted(set(session.scalars(select(AliasRow.alias).where(AliasRow.model_name == name))))
            raise NotFoundError(
                f"model '{name}' has no alias '{alias}'. Its aliases: {', '.join(aliases)}. "
                f"Create it with: kaon models alias {name} {alias} <version>."
            )
        row = require_version(session, name, version)
    return version_record(row, aliases_of(session, name, row.version))


def log_event(session: Session, kind: str, subject: str, payload: dict[str, Any]) -> None:
    session.add(EventRow(time=now(), kind=kind, subject=subject, payload=payload))



def run_record(row: RunRow) -> RunRecord:
    return RunRecord(
        id=row.id, name=row.name, kind=row.kind, status=row.status, params=row.params, summary=row.summary,
        created_at=utc(row.created_at), finished_at=utc(row.finished_at) if row.finished_at else None,
        owner=row.owner,
    )


def version_record(row: ModelVersionRow, aliases: list[str]) -> ModelVersionRecord:
    return ModelVersionRecord(
        name=row.model_name, version=row.version, files=dict(row.files), framework=row.framework,
        signature=row.signature, metrics=row.metrics, parent=row.parent, run_id=row.run_id,
        aliases=aliases, description=row.description, created_at=utc(row.created_at),
    )


def run_not_found(run_id: object) -> NotFoundError:
    return NotFoundError(
        f"no run with id {run_id!r}. List runs with `kaon runs list` (Python: Registry().list_runs()); a run is "
        "recorded by each kaon.Trainer fit, kaon optimize and kaon audit."
    )


def now() -> datetime:
    return datetime.now(timezone.utc)


def utc(value: datetime) -> datetime:
    """Aware UTC. SQLite hands datetimes back without a zone (they were written in UTC)."""
    if value.tzinfo is None:
        return value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc)
