"""Fixtures for the registry tests: a fresh KAON_HOME per test, and a database per backend.

`backend_url` runs a test on SQLite (a real file in tmp_path) and, when KAON_TEST_POSTGRES_URL is
set (see .ci/postgres.sh), on a fresh PostgreSQL database created for that test and dropped after.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from kaon.registry import Registry

POSTGRES_URL = os.environ.get("KAON_TEST_POSTGRES_URL")
BACKENDS = [pytest.param("sqlite", id="sqlite")]
if POSTGRES_URL:
    BACKENDS.append(pytest.param("postgres", id="postgres", marks=pytest.mark.postgres))


@pytest.fixture
def kaon_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "kaon-home"
    monkeypatch.setenv("KAON_HOME", str(home))
    monkeypatch.delenv("KAON_DATABASE_URL", raising=False)
    return home


@pytest.fixture(params=BACKENDS)
def backend_url(request: pytest.FixtureRequest, kaon_home: Path) -> Iterator[str]:
    """A database URL for an empty database on one backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{kaon_home / 'kaon.db'}"
        return
    assert POSTGRES_URL is not None
    name = f"kaon_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(POSTGRES_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(POSTGRES_URL).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def registry(backend_url: str) -> Iterator[Registry]:
    with Registry(backend_url) as reg:
        yield reg


@pytest.fixture
def make_file(tmp_path: Path):
    """make_file(b"bytes", "name.bin") -> a Path holding those bytes."""
    folder = tmp_path / "sources"

    def make(content: bytes, name: str | None = None) -> Path:
        folder.mkdir(exist_ok=True)
        path = folder / (name or f"{uuid.uuid4().hex}.bin")
        path.write_bytes(content)
        return path

    return make
