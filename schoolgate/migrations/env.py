"""Alembic environment.

`schoolgate.db.upgrade` passes an open connection in
`config.attributes["connection"]`; the alembic command line instead gets a URL
(`-x url=...` or sqlalchemy.url in alembic.ini) and an engine is made here.
Logging is left to the application: no fileConfig.
"""

from __future__ import annotations

import asyncio

from alembic import context
from sqlalchemy.engine import Connection

from schoolgate.db import create_engine, is_sqlite, metadata
from schoolgate.partitions import not_a_partition


def run_migrations(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=metadata,
        # SQLite cannot ALTER most things; batch mode rebuilds tables instead.
        render_as_batch=is_sqlite(str(connection.engine.url)),
        compare_type=True,
        include_name=not_a_partition,
    )
    with context.begin_transaction():
        context.run_migrations()


async def run_with_url(url: str) -> None:
    engine = create_engine(url)
    try:
        async with engine.begin() as connection:
            await connection.run_sync(run_migrations)
    finally:
        await engine.dispose()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    assert url, "alembic needs -x url=DATABASE_URL (schoolgate db upgrade passes it)"
    asyncio.run(run_with_url(url))
