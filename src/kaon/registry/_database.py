"""Opening the registry database: the engine, SQLite's settings, migrations, and error wording.

SQLite runs in WAL mode (readers never block the writer) with `synchronous=FULL` (a committed
transaction survives a power cut) and foreign keys on. pysqlite's own transaction handling is
turned off and kaon emits BEGIN itself, so that DDL is transactional and so that a write
transaction takes the write lock up front (`BEGIN IMMEDIATE`): two processes that read a counter
and then bump it are serialised instead of failing with "database is locked" half way.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.exc import IntegrityError as SAIntegrityError
from sqlalchemy.pool import ConnectionPoolEntry

from kaon.errors import ConfigError, MissingDependencyError, RegistryError
from kaon.registry._schema import HEAD_REVISION

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
BUSY_TIMEOUT_MS = 30_000
WRITE_OPTION = "kaon_write"
# Any constant: it names the lock two processes take to migrate one PostgreSQL database.
_PG_MIGRATION_LOCK = 0x6B616F6E


def mask_url(url: str) -> str:
    """`url` with its password replaced by ***, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def unavailable(url: str, exc: BaseException) -> RegistryError:
    """The error for a database that cannot be reached or written, naming the URL and the fix."""
    reason = (str(getattr(exc, "orig", None) or exc).strip().splitlines() or ["unknown error"])[0]
    if url.startswith("sqlite"):
        check = "Check that its folder exists and is writable and that no other program holds a lock on it"
    else:
        check = "Check that the server is running and reachable and that the user and password are right"
    return RegistryError(
        f"the registry database at {mask_url(url)} cannot be used: {reason}. {check}; "
        "or point KAON_DATABASE_URL at another SQLAlchemy URL (unset it to use SQLite in KAON_HOME/kaon.db)."
    )


def create_registry_engine(url: str) -> Engine:
    """An engine for `url`, with kaon's SQLite settings when it is SQLite."""
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise ConfigError(
            f"the registry database URL is not a SQLAlchemy URL. Received: {url!r}. "
            "Expected e.g. sqlite:////abs/path/kaon.db or postgresql+psycopg2://user:pw@host/db; "
            "fix KAON_DATABASE_URL."
        ) from exc
    is_sqlite = parsed.get_backend_name() == "sqlite"
    options: dict[str, Any] = {}
    if is_sqlite:
        options["connect_args"] = {"timeout": BUSY_TIMEOUT_MS / 1000}
        if parsed.database and parsed.database != ":memory:" and not parsed.database.startswith("file:"):
            try:
                Path(parsed.database).expanduser().parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise unavailable(url, exc) from exc
    else:
        options["pool_pre_ping"] = True
    try:
        engine = create_engine(parsed, **options)
    except NoSuchModuleError as exc:
        raise ConfigError(
            f"the registry database URL names an unknown dialect. Received: {mask_url(url)}. "
            "Use sqlite:///... or postgresql+psycopg2://...; fix KAON_DATABASE_URL."
        ) from exc
    except ImportError as exc:
        if parsed.get_backend_name() == "postgresql":
            raise MissingDependencyError("psycopg2-binary", "postgres", "A PostgreSQL registry") from exc
        raise ConfigError(
            f"the driver for {mask_url(url)} is not installed ({exc}). Install it, or fix KAON_DATABASE_URL."
        ) from exc
    if is_sqlite:
        _configure_sqlite(engine)
    return engine


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_connection.isolation_level = None  # kaon emits BEGIN itself (see module docstring)
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Connection) -> None:
        write = connection.get_execution_options().get(WRITE_OPTION, False)
        connection.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


@contextlib.contextmanager
def translate_errors(url: str) -> Iterator[None]:
    """Turn a driver's connection or locking failure into a RegistryError naming the URL."""
    try:
        yield
    except SAIntegrityError:
        raise  # a constraint the caller handles (a version number taken by another process)
    except DBAPIError as exc:
        raise unavailable(url, exc) from exc


def current_revision(connection: Connection) -> str | None:
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def migrate(engine: Engine, url: str, revision: str = "head") -> None:
    """Bring the database to `revision` (default: head), safely when several processes open it at once.

    The fast path reads the stored revision and returns when it is already HEAD_REVISION, without
    importing alembic. Otherwise the upgrade runs in one write transaction: on SQLite under
    BEGIN IMMEDIATE, on PostgreSQL under an advisory lock; a process that waited sees the work done.
    """
    with translate_errors(url):
        if revision == "head":
            with engine.connect() as connection:
                if current_revision(connection) == HEAD_REVISION:
                    return
        writer = engine.execution_options(**{WRITE_OPTION: True})
        with writer.connect() as connection, connection.begin():
            if connection.dialect.name == "postgresql":
                lock = text("SELECT pg_advisory_xact_lock(:key)")
                connection.execute(lock, {"key": _PG_MIGRATION_LOCK})
            found = current_revision(connection)
            if revision == "head" and found == HEAD_REVISION:
                return
            from alembic.util import CommandError  # here, not at the top: the fast path skips alembic

            try:
                run_alembic(connection, "upgrade", revision)
            except CommandError as exc:
                raise RegistryError(
                    f"the registry database at {mask_url(url)} is at schema revision {found!r}, which "
                    f"this kaon does not know (it knows up to {HEAD_REVISION!r}): a newer kaon wrote it. "
                    "Upgrade kaon (pip install -U kaon), or point KAON_DATABASE_URL at another database."
                ) from exc


def run_alembic(connection: Connection, command_name: str, revision: str) -> None:
    """Run `alembic <command_name> <revision>` on `connection` with the migrations shipped in kaon."""
    from alembic import command
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["connection"] = connection
    getattr(command, command_name)(config, revision)


def head_revision() -> str:
    """The head revision of the shipped migrations, read from the scripts (imports alembic)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    if head is None:
        raise RegistryError(f"no migrations found in {MIGRATIONS_DIR}; reinstall kaon.")
    return head
