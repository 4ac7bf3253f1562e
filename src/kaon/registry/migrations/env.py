"""Alembic environment for the registry.

kaon runs migrations itself when a Registry opens (`kaon.registry._database.migrate`), handing
this script an open connection in `config.attributes["connection"]`; no alembic.ini is needed.
To write a new revision (a developer task), from the repository root::

    python -c "from alembic import command; from alembic.config import Config; \\
        c = Config(); c.set_main_option('script_location', 'src/kaon/registry/migrations'); \\
        c.set_main_option('sqlalchemy.url', 'sqlite:///scratch.db'); \\
        command.upgrade(c, 'head'); command.revision(c, 'what changed', autogenerate=True, rev_id='0002')"

then bump HEAD_REVISION in `_schema.py`.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection, create_engine

from kaon.registry._schema import Base


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        # SQLite cannot ALTER most things; batch mode copies the table instead.
        render_as_batch=connection.dialect.name == "sqlite",
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


def main() -> None:
    connection = context.config.attributes.get("connection")
    if connection is not None:
        run_migrations(connection)
        return
    url = context.config.get_main_option("sqlalchemy.url")
    if not url:
        from kaon.config import database_url

        url = database_url()
    engine = create_engine(url)
    try:
        with engine.begin() as new_connection:
            run_migrations(new_connection)
    finally:
        engine.dispose()


main()
