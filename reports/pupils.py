"""One pupil as the DSL sees them: notes on the pupil and the watch list.

Notes are kept with the pupil; putting a pupil on or off the watch list adds a note with the
reason, so the pupil's page keeps the history. The audit trail (kept for good) records only
that a note was written or a pupil watched, never the text.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import delete, insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.db import pupil_directory, pupil_notes, watch_list
from schoolgate.live import record_audit


@dataclass(frozen=True, slots=True)
class PupilNote:
    author: str
    ts: datetime
    text: str


@dataclass(frozen=True, slots=True)
class Watch:
    reason: str
    added_by: str
    added_at: datetime


@dataclass(frozen=True, slots=True)
class YearAndForm:
    """As the directory last gave them (addons/pupildirectory.py)."""

    year_group: str | None
    form: str | None


def _now() -> datetime:
    return datetime.now(UTC)


async def year_and_form(engine: AsyncEngine, user: str | None) -> YearAndForm | None:
    if not user:
        return None
    async with engine.connect() as conn:
        row = (await conn.execute(select(pupil_directory).where(pupil_directory.c.username == user))).first()
    return YearAndForm(row.year_group, row.form) if row else None


async def notes(engine: AsyncEngine, user: str) -> list[PupilNote]:
    n = pupil_notes.c
    async with engine.connect() as conn:
        rows = await conn.execute(select(pupil_notes).where(n.username == user).order_by(n.ts.desc(), n.id.desc()))
        return [PupilNote(r.author, r.ts, r.text) for r in rows.all()]


async def add_note(engine: AsyncEngine, user: str, text: str, *, actor: str, role: str) -> None:
    text = text.strip()
    if not text:
        raise ValueError("an empty note")
    async with engine.begin() as conn:
        await conn.execute(insert(pupil_notes).values(username=user, author=actor, ts=_now(), text=text))
        await record_audit(conn, actor, role, "pupil.note", "pupil", None, None, {"user": user})


async def watched(engine: AsyncEngine) -> dict[str, Watch]:
    """Every watched pupil (a short list: the queue and incident pages badge them)."""
    async with engine.connect() as conn:
        return {r.username: Watch(r.reason, r.added_by, r.added_at)
                for r in (await conn.execute(select(watch_list))).all()}


async def watch(engine: AsyncEngine, user: str, reason: str, *, actor: str, role: str) -> None:
    """Put a pupil on the watch list (a DSL's reason is required), or change the reason."""
    reason = reason.strip()
    if not reason:
        raise ValueError("a watch needs a reason")
    async with engine.begin() as conn:
        before = (await conn.execute(select(watch_list.c.added_by).where(watch_list.c.username == user))).first()
        await conn.execute(delete(watch_list).where(watch_list.c.username == user))
        now = _now()
        await conn.execute(insert(watch_list).values(username=user, reason=reason, added_by=actor, added_at=now))
        await conn.execute(insert(pupil_notes).values(username=user, author=actor, ts=now,
                                                      text=f"Put on the watch list: {reason}"))
        await record_audit(conn, actor, role, "pupil.watch", "pupil", None, {"watched": before is not None},
                           {"user": user, "watched": True})


async def unwatch(engine: AsyncEngine, user: str, reason: str, *, actor: str, role: str) -> None:
    """Take a pupil off the watch list, saying why (kept as a note on the pupil)."""
    if not reason.strip():
        raise ValueError("say why the watch ends")
    async with engine.begin() as conn:
        removed = (await conn.execute(delete(watch_list).where(watch_list.c.username == user))).rowcount
        if not removed:
            raise LookupError(f"{user} is not watched")
        await conn.execute(insert(pupil_notes).values(username=user, author=actor, ts=_now(),
                                                      text=f"Taken off the watch list: {reason.strip()}"))
        await record_audit(conn, actor, role, "pupil.unwatch", "pupil", None, {"watched": True},
                           {"user": user, "watched": False, "reason_given": True})
