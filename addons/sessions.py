"""Address sessions shared by every gateway process, through the database.

The sign-in page and RADIUS accounting name a user on a device address in whichever
worker process heard them; every other worker must know too (a browser's connections
are spread over all of them). Each change is written to `address_sessions`, and each
process reads the changes the others made every `POLL_SECONDS`. An ended session is
written as expired (not deleted), so the others see it end.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.db import address_sessions, create_engine, dispose_within
from schoolgate.identities import AddressSessions, Identity, Source

log = logging.getLogger("schoolgate")

POLL_SECONDS = 1.0
KEEP_ENDED = timedelta(days=1)  # ended rows are purged after this


class SessionStore:
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    async def save(self, address: str, identity: Identity | None, seconds: float, origin: str, now: datetime) -> None:
        async with self.engine.begin() as conn:
            if identity is None:
                await conn.execute(update(address_sessions).where(address_sessions.c.address == address)
                                   .values(expires_at=now, updated_at=now))
                return
            await conn.execute(delete(address_sessions).where(address_sessions.c.address == address))
            await conn.execute(address_sessions.insert().values(
                address=address, username=identity.user, source=identity.source.value,
                groups=tuple(sorted(identity.directory_groups)), origin=origin,
                expires_at=now + timedelta(seconds=seconds), updated_at=now))

    async def changed_since(self, since: datetime | None) -> list:
        query = select(address_sessions)
        if since is not None:
            query = query.where(address_sessions.c.updated_at >= since)
        async with self.engine.connect() as conn:
            return list((await conn.execute(query)).all())

    async def purge(self, now: datetime) -> None:
        async with self.engine.begin() as conn:
            await conn.execute(delete(address_sessions).where(address_sessions.c.expires_at < now - KEEP_ENDED))


def apply_rows(sessions: AddressSessions, rows: list, now: datetime) -> None:
    for row in rows:
        seconds = (row.expires_at - now).total_seconds()
        groups = frozenset(row.groups)
        identity = Identity(row.username, Source(row.source), groups) if seconds > 0 else None
        sessions.apply(row.address, identity, seconds, row.origin)


class SharedSessions:
    """The add-on: writes this process's session changes and reads everyone else's."""

    def __init__(self, policy, sessions: AddressSessions) -> None:
        self.policy = policy  # PolicyWatch
        self.sessions = sessions
        self.store: SessionStore | None = None
        self._pending: set[asyncio.Task] = set()
        self._task: asyncio.Task | None = None

    async def running(self) -> None:
        self.sessions.on_change = self._changed
        self._task = asyncio.create_task(self._follow())

    def _connect(self) -> SessionStore | None:
        """The store, once the policy (which names the database) is loaded."""
        if self.store is None and self.policy.engine is not None:
            self.store = SessionStore(create_engine(self.policy.engine.policy.gateway.database))
        return self.store

    async def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._pending:  # sign-ins still being saved; a hung database must not hold up the stop
            await asyncio.wait(self._pending, timeout=2.0)
        if self.store is not None:
            await dispose_within(self.store.engine)

    def _changed(self, address: str, identity: Identity | None, seconds: float, origin: str) -> None:
        task = asyncio.get_running_loop().create_task(self._save(address, identity, seconds, origin))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def _save(self, address: str, identity: Identity | None, seconds: float, origin: str) -> None:
        try:
            store = self._connect()
            if store is None:
                raise RuntimeError("the policy is not loaded yet")
            await store.save(address, identity, seconds, origin, datetime.now(UTC))
        except Exception as e:  # the session still holds in this process; the others learn at its next change
            log.error("a sign-in session could not be shared with the other gateway processes: %s", type(e).__name__)

    def _shared(self) -> bool:
        """Whether any process puts users on addresses: only the sign-in page and RADIUS
        accounting do, so without them there is nothing to read (the database is not asked)."""
        engine = self.policy.engine
        return engine is not None and (engine.policy.portal.enabled or engine.policy.accounting.enabled)

    async def _follow(self) -> None:
        since: datetime | None = None
        polls = 0
        while True:
            now = datetime.now(UTC)
            try:
                if (store := self._connect()) is not None:
                    if self._shared():
                        apply_rows(self.sessions, await store.changed_since(since), now)
                        since = now - timedelta(seconds=POLL_SECONDS)  # overlap: a write committed mid-poll is not missed
                    polls += 1
                    if polls % 3600 == 1:  # hourly, in use or not: ended sessions are personal data too
                        await store.purge(now)
            except Exception as e:  # the database is down: keep the sessions known, try again
                log.warning("sign-in sessions could not be read from the database: %s", type(e).__name__)
            await asyncio.sleep(POLL_SECONDS)
