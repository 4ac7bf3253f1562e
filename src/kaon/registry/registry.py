"""The Registry: runs with their metrics and artifacts, and versioned models, in one database.

    >>> reg = Registry("sqlite:///:memory:")  # default: KAON_HOME/kaon.db, or $KAON_DATABASE_URL
    >>> run = reg.create_run("digits-mlp", params={"lr": 0.01})
    >>> reg.log_metrics(run.id, {"loss": 0.5}, step=1)
    >>> reg.finish_run(run.id).status
    'completed'

Every write is one transaction and appends to the event log in that same transaction. Files are
stored content-addressed (see `artifacts.py`) before the transaction that refers to them begins.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from sqlalchemy import delete, func, insert, select
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.orm import Session, sessionmaker

from kaon._internal.processes import owner_gone, owner_host, this_process
from kaon.config import artifacts_dir, database_url, kaon_home
from kaon.errors import InvalidInputError, RegistryError
from kaon.registry._database import (
    WRITE_OPTION,
    create_registry_engine,
    mask_url,
    migrate,
    translate_errors,
)
from kaon.registry._queries import (
    aliases_of,
    lock_model,
    log_event,
    now,
    point_alias,
    require_model,
    require_version,
    resolve,
    run_not_found,
    run_record,
    utc,
    version_record,
)
from kaon.registry._schema import (
    AliasRow,
    EventRow,
    ModelVersionRow,
    RunArtifactRow,
    RunMetricRow,
    RunRow,
)
from kaon.registry._validation import check_limit, check_run_id, check_text, check_version, to_json, to_metrics
from kaon.registry.artifacts import ArtifactStore, check_filename, check_source_file
from kaon.registry.records import ModelVersionRecord, RunRecord
from kaon.registry.refs import LATEST, check_name, check_settable_alias, parse_ref

if TYPE_CHECKING:
    from kaon.registry.tokens import TokenStore

RunStatus = Literal["completed", "failed", "interrupted"]  # interrupted: stopped by Ctrl-C
# How often register_version retries when another process took the same row first (PostgreSQL).
_MAX_ATTEMPTS = 8


class Registry:
    """Runs and model versions in a SQL database, files in a content-addressed store."""

    def __init__(self, url: str | None = None) -> None:
        self.url = url or database_url()
        self._engine = create_registry_engine(self.url)
        migrate(self._engine, self.url)
        self._reads = sessionmaker(self._engine, expire_on_commit=False)
        self._writer = self._engine.execution_options(**{WRITE_OPTION: True})
        self._writes = sessionmaker(self._writer, expire_on_commit=False)
        self._artifacts = ArtifactStore(artifacts_dir())
        self._cache_dir = kaon_home() / "cache"

    def __repr__(self) -> str:
        return f"Registry({mask_url(self.url)!r})"

    def close(self) -> None:
        """Close the database connections (the Registry cannot be used afterwards)."""
        self._engine.dispose()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ---- runs --------------------------------------------------------------------------------

    def create_run(self, name: str, params: dict[str, Any] | None = None, kind: str = "train") -> RunRecord:
        """Start a run (status 'running') and return its record; `params` must be JSON-like."""
        check_text(name, "run name", max_length=128)
        if len(check_name(kind, "run kind")) > 32:
            raise InvalidInputError(f"run kind must be at most 32 characters, e.g. 'train'. Received: {kind!r}")
        row = RunRow(
            name=name, kind=kind, status="running", params=to_json(params or {}, "params"),
            summary={}, created_at=now(), finished_at=None, owner=this_process(),
        )
        with self._writing() as session:
            session.add(row)
            session.flush()
            log_event(session, "run.created", f"run/{row.id}", {"name": name, "kind": kind})
        return run_record(row)

    def log_metrics(self, run_id: int, metrics: Mapping[str, float], step: int) -> None:
        """Append one value per key at `step`, all in one transaction.

        A value is a number: an int, a float (NaN and infinity included), a numpy scalar or a 0-d tensor.
        """
        check_run_id(run_id)
        values = to_metrics(metrics, finite=False)  # NaN and inf stay: a diverged curve is worth seeing
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise InvalidInputError(f"step must be an integer >= 0. Received: step={step!r}")
        logged_at = now()
        rows = [{"run_id": run_id, "key": key, "step": step, "value": float(value), "timestamp": logged_at}
                for key, value in values.items()]
        if not rows:
            return
        try:
            # Core, not the ORM session: this is the hot path of a training loop (~2x faster).
            with translate_errors(self.url), self._writer.begin() as connection:
                connection.execute(insert(RunMetricRow), rows)
        except SAIntegrityError as exc:  # the foreign key: no such run
            raise run_not_found(run_id) from exc

    def finish_run(
        self, run_id: int, status: RunStatus = "completed", summary: dict[str, Any] | None = None
    ) -> RunRecord:
        """Mark a running run completed, failed or interrupted (Ctrl-C), with an optional JSON-like summary."""
        if status not in ("completed", "failed", "interrupted"):
            raise InvalidInputError(
                f"a run finishes as 'completed', 'failed' or 'interrupted'. Received: status={status!r}"
            )
        check_run_id(run_id)
        summary_json = to_json(summary or {}, "summary")
        with self._writing() as session:
            row = session.get(RunRow, run_id)
            if row is None:
                raise run_not_found(run_id)
            if row.status != "running":
                raise InvalidInputError(
                    f"run {run_id} already finished as '{row.status}'; a run finishes once. "
                    "Start a new run with create_run(...) to record another attempt."
                )
            row.status, row.summary, row.finished_at = status, summary_json, now()
            log_event(session, "run.finished", f"run/{run_id}", {"status": status})
        return run_record(row)

    def add_run_artifact(self, run_id: int, name: str, path: Path) -> str:
        """Store `path` and record it as the run's artifact `name` (replacing one of that name)."""
        check_run_id(run_id)
        check_filename(name, "artifact name")
        source = check_source_file(path, "artifact")
        sha256 = self.store_artifact(source)
        size = source.stat().st_size
        with self._writing() as session:
            if session.get(RunRow, run_id) is None:
                raise run_not_found(run_id)
            row = session.scalars(
                select(RunArtifactRow).where(RunArtifactRow.run_id == run_id, RunArtifactRow.name == name)
            ).one_or_none()
            if row is None:
                session.add(RunArtifactRow(run_id=run_id, name=name, sha256=sha256, size=size))
            else:
                row.sha256, row.size = sha256, size
            log_event(session, "run.artifact_added", f"run/{run_id}", {"name": name, "sha256": sha256})
        return sha256

    def get_run(self, run_id: int) -> RunRecord:
        check_run_id(run_id)
        with self._reading() as session:
            row = session.get(RunRow, run_id)
            if row is None:
                raise run_not_found(run_id)
            record = run_record(row)
        return self._settle_lost([record])[0]

    def list_runs(self, limit: int = 50) -> list[RunRecord]:
        """The `limit` most recent runs, newest first."""
        check_limit(limit)
        with self._reading() as session:
            rows = session.scalars(select(RunRow).order_by(RunRow.id.desc()).limit(limit))
            records = [run_record(row) for row in rows]
        return self._settle_lost(records)

    def _settle_lost(self, records: list[RunRecord]) -> list[RunRecord]:
        """Runs still 'running' whose process on this host has ended (SIGKILL, out of memory, power loss: it
        could not finish the run itself) are marked 'crashed' as they are read. A run owned by a process on
        another host stays 'running' until that process finishes it."""
        lost = {r.id for r in records if r.status == "running" and owner_gone(r.owner)}
        if not lost:
            return records
        settled: dict[int, RunRecord] = {}
        with self._writing() as session:
            for row in session.scalars(select(RunRow).where(RunRow.id.in_(lost), RunRow.status == "running")):
                owner = row.owner or "::"
                host, pid = owner_host(owner), owner.rsplit(":", 2)[1]
                row.status, row.finished_at = "crashed", now()
                row.summary = {**row.summary, "error": (
                    f"the process running it (pid {pid} on {host}) ended without finishing the run, for a reason "
                    "it could not record: for example it was killed (SIGKILL, out of memory) or the machine "
                    "stopped. Metrics logged until then are kept.")}
                log_event(session, "run.crashed", f"run/{row.id}", {"owner": row.owner})
                settled[row.id] = run_record(row)
        return [settled.get(r.id, r) for r in records]

    def metric_history(self, run_id: int) -> dict[str, list[tuple[int, float]]]:
        """Each metric's (step, value) points in step order; NaN where a NaN was logged."""
        check_run_id(run_id)
        with self._reading() as session:
            if session.get(RunRow, run_id) is None:
                raise run_not_found(run_id)
            points = session.execute(
                select(RunMetricRow.key, RunMetricRow.step, RunMetricRow.value)
                .where(RunMetricRow.run_id == run_id)
                .order_by(RunMetricRow.key, RunMetricRow.step, RunMetricRow.id)
            )
            history: dict[str, list[tuple[int, float]]] = {}
            for key, step, value in points:
                history.setdefault(key, []).append((step, math.nan if value is None else value))
            return history

    def run_artifacts(self, run_id: int) -> dict[str, str]:
        """The run's artifacts: name -> sha256."""
        check_run_id(run_id)
        with self._reading() as session:
            if session.get(RunRow, run_id) is None:
                raise run_not_found(run_id)
            rows = session.execute(
                select(RunArtifactRow.name, RunArtifactRow.sha256)
                .where(RunArtifactRow.run_id == run_id)
                .order_by(RunArtifactRow.name)
            )
            return {name: sha256 for name, sha256 in rows}

    # ---- artifacts ---------------------------------------------------------------------------

    def store_artifact(self, path: Path) -> str:
        """Copy a file into KAON_HOME/artifacts/<sha256> durably; return the sha256."""
        return self._artifacts.store(path)

    def artifact_path(self, sha256: str) -> Path:
        """The stored file for `sha256`; raises IntegrityError if its content no longer matches."""
        return self._artifacts.path(sha256)

    # ---- models ------------------------------------------------------------------------------

    def register_version(
        self,
        name: str,
        files: Mapping[str, Path],
        *,
        framework: str,
        signature: dict[str, Any] | None = None,
        metrics: dict[str, Any] | None = None,
        parent: str | None = None,
        run_id: int | None = None,
        description: str = "",
    ) -> ModelVersionRecord:
        """Store `files` and register them as the next version of `name`; moves alias 'latest'.

        `metrics` maps names to finite numbers (numpy scalars and 0-d tensors convert). Every argument is
        checked before a file is stored. The version number is taken under a row lock (SQLite: the write
        lock), so two processes registering the same name at once get distinct numbers. Numbers are never
        reused.
        """
        check_name(name)
        check_text(framework, "framework", max_length=64)
        if not isinstance(files, Mapping) or not files:
            raise InvalidInputError(
                "files must map at least one file name to its path, "
                "e.g. {'model.onnx': Path('out/model.onnx')}. "
                f"Received: files={files!r}"
            )
        sources = {check_filename(fn): check_source_file(path, f"file '{fn}'") for fn, path in files.items()}
        signature_json = to_json(signature or {}, "signature")
        metrics_json, parent_ref = _check_version_fields(metrics, parent, run_id, description)
        self._check_references(parent_ref, run_id)  # refused before a file is stored; checked again when writing
        hashes = {filename: self.store_artifact(source) for filename, source in sources.items()}
        for _ in range(_MAX_ATTEMPTS):
            try:
                with self._writing() as session:
                    parent_version = resolve(session, *parent_ref).ref if parent_ref else None
                    if run_id is not None and session.get(RunRow, run_id) is None:
                        raise run_not_found(run_id)
                    model = lock_model(session, name)
                    model.last_version += 1
                    row = ModelVersionRow(
                        model_name=name, version=model.last_version, files=hashes, framework=framework,
                        signature=signature_json, metrics=metrics_json, parent=parent_version, run_id=run_id,
                        description=description, created_at=now(),
                    )
                    session.add(row)
                    session.flush()
                    point_alias(session, name, LATEST, row.version)
                    payload = {"files": hashes, "framework": framework, "parent": parent_version,
                               "run_id": run_id}
                    log_event(session, "version.registered", f"{name}@{row.version}", payload)
                    return version_record(row, [LATEST])
            except SAIntegrityError as exc:
                # Another process created the model row or took the number first; start over.
                conflict = exc
        raise RegistryError(
            f"could not take a version number for '{name}' in {_MAX_ATTEMPTS} tries: other processes kept "
            "registering the same name at the same moment. Register again."
        ) from conflict

    def check_version_arguments(self, name: str, *, metrics: dict[str, Any] | None = None,
                                parent: str | None = None, run_id: int | None = None, description: str = "") -> None:
        """Raise as register_version would for these arguments (a parent or run that does not exist too), storing
        nothing: kaon.register checks them so before it exports the model, which can take seconds."""
        check_name(name)
        _, parent_ref = _check_version_fields(metrics, parent, run_id, description)
        self._check_references(parent_ref, run_id)

    def _check_references(self, parent_ref: tuple[str, str | None] | None, run_id: int | None) -> None:
        """NotFoundError for a parent version or a run that does not exist."""
        if parent_ref is None and run_id is None:
            return
        with self._reading() as session:
            if parent_ref:
                resolve(session, *parent_ref)
            if run_id is not None and session.get(RunRow, run_id) is None:
                raise run_not_found(run_id)

    def get_version(self, ref: str) -> ModelVersionRecord:
        """Resolve 'name' (latest), 'name@3' or 'name@production' to a version record."""
        name, selector = parse_ref(ref)
        with self._reading() as session:
            return resolve(session, name, selector)

    def materialize(self, ref_or_record: str | ModelVersionRecord) -> Path:
        """A folder KAON_HOME/cache/<name>/<version>/ holding the version's files, hash-checked."""
        record = ref_or_record
        if not isinstance(record, ModelVersionRecord):
            record = self.get_version(record)
        folder = self._cache_dir / record.name / str(record.version)
        return self._artifacts.materialize(record.files, folder)

    def set_alias(self, name: str, alias: str, version: int) -> None:
        """Point `name@alias` at `version` (creating the alias or moving it)."""
        check_name(name)
        check_settable_alias(alias)
        version = check_version(version)
        with self._writing() as session:
            require_version(session, name, version)
            previous = point_alias(session, name, alias, version)
            payload = {"name": name, "alias": alias, "version": version, "previous": previous}
            log_event(session, "alias.moved", f"{name}@{alias}", payload)

    def delete_version(self, name: str, version: int, force: bool = False) -> None:
        """Delete one version; refuses when an alias other than 'latest' points at it unless `force`."""
        check_name(name)
        version = check_version(version)
        with self._writing() as session:
            row = require_version(session, name, version)
            aliases = aliases_of(session, name, version)
            pinned = [alias for alias in aliases if alias != LATEST]
            if pinned and not force:
                quoted = ", ".join(f"'{name}@{alias}'" for alias in pinned)
                raise InvalidInputError(
                    f"{name}@{version} is what {quoted} points to; deleting it would break that reference. "
                    f"Move the alias first (kaon models alias {name} {pinned[0]} <version>) or pass "
                    "force=True (kaon models delete --force) to delete the version and its aliases."
                )
            session.execute(delete(AliasRow).where(AliasRow.model_name == name, AliasRow.version == version))
            session.delete(row)
            session.flush()
            newest = session.scalar(
                select(func.max(ModelVersionRow.version)).where(ModelVersionRow.model_name == name)
            )
            if newest is not None:
                point_alias(session, name, LATEST, newest)
            payload = {"removed_aliases": aliases, "latest": newest, "forced": bool(pinned)}
            log_event(session, "version.deleted", f"{name}@{version}", payload)
        shutil.rmtree(self._cache_dir / name / str(version), ignore_errors=True)

    def list_models(self) -> list[tuple[str, int, int]]:
        """(name, latest version, number of versions) for every model that has a version."""
        with self._reading() as session:
            rows = session.execute(
                select(ModelVersionRow.model_name, func.max(ModelVersionRow.version), func.count())
                .group_by(ModelVersionRow.model_name)
                .order_by(ModelVersionRow.model_name)
            )
            return [(name, int(latest), int(count)) for name, latest, count in rows]

    def list_versions(self, name: str) -> list[ModelVersionRecord]:
        """Every version of `name`, oldest first."""
        check_name(name)
        with self._reading() as session:
            require_model(session, name)
            rows = session.scalars(
                select(ModelVersionRow)
                .where(ModelVersionRow.model_name == name)
                .order_by(ModelVersionRow.version)
            ).all()
            aliases: dict[int, list[str]] = {}
            for alias in session.scalars(
                select(AliasRow).where(AliasRow.model_name == name).order_by(AliasRow.alias)
            ):
                aliases.setdefault(alias.version, []).append(alias.alias)
            return [version_record(row, aliases.get(row.version, [])) for row in rows]

    def events(self, limit: int = 100) -> list[dict[str, Any]]:
        """The `limit` most recent events, newest first: {id, time, kind, subject, payload}."""
        check_limit(limit)
        with self._reading() as session:
            rows = session.scalars(select(EventRow).order_by(EventRow.id.desc()).limit(limit))
            return [
                {"id": row.id, "time": utc(row.time), "kind": row.kind, "subject": row.subject,
                 "payload": row.payload}
                for row in rows
            ]

    # ---- tokens and the audit log ------------------------------------------------------------

    @property
    def tokens(self) -> TokenStore:
        """API tokens (`kaon token create|list|revoke`) and the audit log of admin actions."""
        from kaon.registry.tokens import TokenStore

        return TokenStore(self)

    # ---- transactions ------------------------------------------------------------------------

    @contextlib.contextmanager
    def _reading(self) -> Iterator[Session]:
        with translate_errors(self.url), self._reads() as session:
            yield session

    @contextlib.contextmanager
    def _writing(self) -> Iterator[Session]:
        """One write transaction: committed when the block ends, rolled back if it raises."""
        with translate_errors(self.url), self._writes.begin() as session:
            yield session


def _check_version_fields(metrics: Mapping[str, Any] | None, parent: str | None, run_id: int | None,
                          description: str) -> tuple[dict[str, float], tuple[str, str | None] | None]:
    """register_version's checks of a version's fields that need no database: the metrics as stored and the parent
    as (name, selector), or InvalidInputError."""
    if not isinstance(description, str):
        raise InvalidInputError(f"description must be a string. Received: {description!r}")
    metrics_json = to_metrics(metrics if metrics is not None else {}, finite=True)
    parent_ref = parse_ref(parent) if parent is not None else None
    if run_id is not None:
        check_run_id(run_id)
    return metrics_json, parent_ref
