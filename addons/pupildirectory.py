"""Keeps pupils' year groups and forms, as the directory gives them, in `pupil_directory`.

The directory reads them at each look-up (`[directory] year_attribute`, `form_attribute`; in
ProxyLogin's threads, addons/directory.py); this add-on stores what was read every few seconds,
one row per pupil, for the DSL's pages. None of it is ever logged."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from sqlalchemy import delete, insert
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.addons.directory import PupilDetails
from schoolgate.addons.identify import Identification
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.db import create_engine, dispose_within, pupil_directory

log = logging.getLogger("schoolgate.directory")

STORE_EVERY_SECONDS = 5.0


async def store_details(engine: AsyncEngine, details: dict[str, PupilDetails], now: datetime) -> None:
    """Replace each pupil's row with what the directory said last."""
    async with engine.begin() as conn:
        await conn.execute(delete(pupil_directory).where(pupil_directory.c.username.in_(list(details))))
        await conn.execute(insert(pupil_directory), [
            {"username": user, "year_group": d.year_group, "form": d.form, "updated_at": now}
            for user, d in details.items()])


class PupilDirectory:
    """The add-on: stores the year groups and forms the directory read."""

    def __init__(self, policy: PolicyWatch, identification: Identification) -> None:
        self.policy = policy
        self.identification = identification
        self.engine: AsyncEngine | None = None
        self._task: asyncio.Task[None] | None = None

    async def running(self) -> None:
        self._task = asyncio.create_task(self._store_forever())

    async def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.store(), timeout=2.0)  # a hung database must not hold up the stop
        if self.engine is not None:
            await dispose_within(self.engine)

    async def _store_forever(self) -> None:
        while True:
            await asyncio.sleep(STORE_EVERY_SECONDS)
            await self.store()

    async def store(self) -> None:
        if self.policy.engine is None:
            return
        policy = self.policy.engine.policy
        directory = self.identification.directory(policy)
        details = directory.take_details() if directory is not None else {}
        if not details:
            return
        try:
            if self.engine is None:
                self.engine = create_engine(policy.gateway.database)
            await store_details(self.engine, details, datetime.now(UTC))
        except Exception as e:  # read again at the pupil's next look-up
            log.warning("pupils' year groups and forms could not be stored: %s", type(e).__name__)
