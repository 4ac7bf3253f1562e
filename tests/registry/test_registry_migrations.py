"""Schema migrations: a database made by an older kaon upgrades on open, and the models match the scripts."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

import kaon
from kaon.errors import RegistryError
from kaon.registry import Registry
from kaon.registry._database import MIGRATIONS_DIR, create_registry_engine, current_revision, head_revision
from kaon.registry._database import run_alembic as _run_alembic
from kaon.registry._schema import HEAD_REVISION, Base

TABLES = {"runs", "run_metrics", "run_artifacts", "models", "model_versions", "aliases", "events"}


def run_alembic(url: str, command: str, revision: str) -> None:
    """Run one alembic command the way an older kaon would have, in its own transaction."""
    engine = create_registry_engine(url)
    with engine.connect() as connection, connection.begin():
        _run_alembic(connection, command, revision)
    engine.dispose()


def revisions_oldest_first() -> list[str]:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    newest_first = ScriptDirectory.from_config(config).walk_revisions()
    return [script.revision for script in reversed(list(newest_first))]


def revision_of(url: str) -> str | None:
    engine = create_engine(url)
    with engine.connect() as connection:
        revision = current_revision(connection)
    engine.dispose()
    return revision


def test_head_revision_constant_matches_the_scripts() -> None:
    assert head_revision() == HEAD_REVISION == revisions_oldest_first()[-1]


def test_opening_a_database_at_base_upgrades_it_to_head(backend_url: str) -> None:
    run_alembic(backend_url, "upgrade", "head")
    run_alembic(backend_url, "downgrade", "base")  # tables gone, alembic_version empty: the base
    assert revision_of(backend_url) is None

    with Registry(backend_url) as registry:
        assert registry.list_models() == []
        names = set(inspect(registry._engine).get_table_names())
    assert names >= TABLES
    assert revision_of(backend_url) == HEAD_REVISION


def test_each_revision_upgrades_from_the_one_before_and_keeps_the_data(backend_url: str, make_file) -> None:
    revisions = revisions_oldest_first()
    run_alembic(backend_url, "upgrade", revisions[0])
    # What a kaon at the first revision would have written (plain SQL, as that schema had it).
    engine = create_engine(backend_url)
    with engine.begin() as connection:
        connection.execute(text(
            "INSERT INTO runs (name, kind, status, params, summary, created_at) "
            "VALUES ('old-run', 'train', 'completed', '{\"lr\": 0.1}', '{}', '2024-01-02 03:04:05')"
        ))
        run_id = connection.execute(text("SELECT id FROM runs WHERE name = 'old-run'")).scalar_one()
        connection.execute(text(
            "INSERT INTO run_metrics (run_id, key, step, value, timestamp) "
            "VALUES (:run_id, 'loss', 0, 0.5, '2024-01-02 03:04:05')"
        ), {"run_id": run_id})
    engine.dispose()
    for revision in revisions[1:]:
        run_alembic(backend_url, "upgrade", revision)

    with Registry(backend_url) as registry:
        run = registry.get_run(run_id)
        assert (run.name, run.params) == ("old-run", {"lr": 0.1})
        assert registry.metric_history(run_id) == {"loss": [(0, 0.5)]}
        assert registry.create_run("new-run").id > run_id
    assert revision_of(backend_url) == HEAD_REVISION


def test_the_models_match_what_the_migrations_create(backend_url: str) -> None:
    Registry(backend_url).close()
    engine = create_engine(backend_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert differences == [], "the ORM models and the migrations disagree: add a revision"


def test_migrations_ship_inside_the_package() -> None:
    assert (MIGRATIONS_DIR / "env.py").is_file()
    assert (MIGRATIONS_DIR / "versions" / "0001_initial.py").is_file()
    assert MIGRATIONS_DIR.is_relative_to(Path(kaon.__file__).parent)


def test_a_database_from_a_newer_kaon_is_refused_with_the_fix(backend_url: str) -> None:
    Registry(backend_url).close()
    engine = create_engine(backend_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(RegistryError, match=r"schema revision '9999'.*Upgrade kaon"):
        Registry(backend_url)
