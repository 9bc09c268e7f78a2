"""`schoolgate log`: the latest access records matching a filter, as one plain SQL statement.

On SQLite the statement runs on the standard library's sqlite3, so the command answers
in a fraction of a second without loading SQLAlchemy (importing it takes longer than
the query); on PostgreSQL the same statement goes through the database engine. Every
filter has an index ending in `ts`, so newest-first with a limit reads only the rows
it shows; a `host` filter also matches subdomains, which no index can serve, so on
a host seen rarely add `since` to bound the search.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from schoolgate.accessrecord import AccessRecord, record_from_row

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine


@dataclass(frozen=True, slots=True)
class LogFilter:
    """Every filter given must match; `host` also matches its subdomains ("youtube.com": www.youtube.com)."""

    limit: int = 50
    verdict: str | None = None
    user: str | None = None
    client_ip: str | None = None
    host: str | None = None
    since: datetime | None = None


def statement(wanted: LogFilter, *, sqlite: bool) -> tuple[str, dict[str, Any]]:
    """The SELECT, with named parameters (sqlite3 and SQLAlchemy both take `:name`)."""
    where: list[str] = []
    params: dict[str, Any] = {"limit": wanted.limit}
    for column, value in (("verdict", wanted.verdict), ("username", wanted.user), ("client_ip", wanted.client_ip)):
        if value is not None:
            where.append(f"{column} = :{column}")
            params[column] = value
    if wanted.host is not None:
        where.append("(host = :host OR host LIKE :subdomains ESCAPE '\\')")
        params["host"] = wanted.host
        params["subdomains"] = "%." + wanted.host.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    if wanted.since is not None:
        where.append("ts >= :since")
        since = wanted.since.astimezone(UTC)
        # SQLite keeps times as text in the record writer's format; PostgreSQL as timestamptz.
        params["since"] = since.strftime("%Y-%m-%d %H:%M:%S.%f") if sqlite else since
    condition = f" WHERE {' AND '.join(where)}" if where else ""
    return f"SELECT * FROM access_log{condition} ORDER BY ts DESC, id DESC LIMIT :limit", params


def sqlite_file(database_url: str) -> str | None:
    """The file an SQLite URL names (sqlite:///relative.db, sqlite+aiosqlite:////abs.db); None otherwise."""
    scheme, _, rest = database_url.partition("://")
    path = rest[1:].partition("?")[0] if rest.startswith("/") else ""
    return path if scheme.partition("+")[0] == "sqlite" and path and path != ":memory:" else None


def read_sqlite(path: str, wanted: LogFilter) -> list[AccessRecord]:
    """Newest first, from an SQLite file that must exist (it is never created here)."""
    sql, params = statement(wanted, sqlite=True)
    connection = sqlite3.connect(f"file:{quote(path)}?mode=rw", uri=True)
    try:
        connection.row_factory = sqlite3.Row
        return [_record(dict(row)) for row in connection.execute(sql, params)]
    finally:
        connection.close()


async def read(engine: AsyncEngine, wanted: LogFilter) -> list[AccessRecord]:
    """Newest first, through SQLAlchemy (PostgreSQL, or SQLite given as a URL sqlite_file cannot read)."""
    from sqlalchemy import text

    sql, params = statement(wanted, sqlite=engine.dialect.name == "sqlite")
    async with engine.connect() as connection:
        return [_record(dict(row)) for row in (await connection.execute(text(sql), params)).mappings()]


def _record(values: dict[str, Any]) -> AccessRecord:
    """Driver values as the table's types give them: aware UTC times, booleans."""
    ts = values["ts"]
    ts = datetime.fromisoformat(ts) if isinstance(ts, str) else ts
    values["ts"] = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
    if values.get("url_cut") is not None:
        values["url_cut"] = bool(values["url_cut"])
    return record_from_row(values)
