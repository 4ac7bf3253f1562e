"""Opening the database: the default location, SQLite settings, errors for a database that is not there."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import kaon.registry
from kaon.errors import ConfigError, RegistryError
from kaon.registry import Registry


def test_public_names_are_pinned() -> None:
    assert sorted(kaon.registry.__all__) == ["ModelVersionRecord", "Registry", "RunRecord", "parse_ref"]


def test_default_database_is_sqlite_in_kaon_home_with_wal_and_foreign_keys(kaon_home: Path) -> None:
    with Registry() as registry:
        registry.create_run("r")
        assert registry.url == f"sqlite:///{kaon_home / 'kaon.db'}"
        with registry._engine.connect() as connection:
            pragma = {name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()
                      for name in ("journal_mode", "foreign_keys", "busy_timeout", "synchronous")}
    assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 30_000, "synchronous": 2}
    assert (kaon_home / "kaon.db").is_file()


def test_kaon_database_url_is_used_when_set(kaon_home: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("KAON_DATABASE_URL", f"sqlite:///{tmp_path / 'team' / 'registry.db'}")
    with Registry() as registry:
        registry.create_run("r")
    assert (tmp_path / "team" / "registry.db").is_file()
    assert not (kaon_home / "kaon.db").exists()


def test_unreachable_server_names_the_url_without_its_password(kaon_home: Path) -> None:
    with pytest.raises(RegistryError) as info:
        Registry("postgresql+psycopg2://kaon:s3cret@127.0.0.1:1/registry")
    message = info.value.message
    assert "postgresql+psycopg2://kaon:***@127.0.0.1:1/registry" in message
    assert "s3cret" not in message
    assert "KAON_DATABASE_URL" in message
    assert info.value.status_code == 503


def test_sqlite_file_that_cannot_be_created_is_a_registry_error(kaon_home: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(RegistryError, match=r"not-a-folder/sub/kaon.db cannot be used.*KAON_DATABASE_URL"):
        Registry(f"sqlite:///{blocker / 'sub' / 'kaon.db'}")


def test_malformed_url_is_a_config_error(kaon_home: Path) -> None:
    with pytest.raises(ConfigError, match="not a SQLAlchemy URL. Received: 'not a url'"):
        Registry("not a url")
    with pytest.raises(ConfigError, match="unknown dialect"):
        Registry("nosuchdb://x/y")


def test_an_up_to_date_database_opens_without_importing_alembic_or_heavy_libraries(kaon_home: Path) -> None:
    Registry().close()  # migrate once
    code = (
        "import sys; from kaon.registry import Registry; r = Registry(); r.list_runs(); "
        "print(sorted(m for m in ('alembic', 'torch', 'fastapi', 'starlette', 'typer', 'matplotlib') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "KAON_HOME": str(kaon_home)}, timeout=60)
    assert out.stdout.strip() == "[]"

