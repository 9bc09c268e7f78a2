"""Reminders while a high-severity incident stays new: nobody has changed its status
since it was flagged. Sent by the console process, which already runs the daily purge
and holds the database; the gateway's workers stay on the request path (and, being
several processes, would each send the same reminder).

Each reminder is claimed in the database before it is queued (an UPDATE that only
succeeds while the count is still the one read), so two consoles over one database
never send the same reminder twice, and a restart carries on where it stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime, timedelta

from sqlalchemy import and_, func, or_, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.alerts import Alert, AlertDispatcher
from schoolgate.categories.taxonomy import Severity
from schoolgate.db import access_log, incidents
from schoolgate.flags import risk_title
from schoolgate.policy import Policy
from schoolgate.reports.incidents import Status

log = logging.getLogger(__name__)
CHECK_EVERY_S = 60.0


async def send_due(engine: AsyncEngine, policy: Policy, dispatcher: AlertDispatcher,
                   now: datetime | None = None) -> int:
    """Queue every reminder due at `now`; how many were queued."""
    settings = policy.alerts.reminders
    if settings.max_reminders <= 0:
        return 0
    now = now or datetime.now(UTC)
    sent = func.coalesce(incidents.c.reminders_sent, 0)
    first_due = and_(incidents.c.reminded_at.is_(None), incidents.c.first_seen <= now - timedelta(minutes=settings.after_minutes))
    again_due = incidents.c.reminded_at <= now - timedelta(minutes=settings.every_minutes)
    query = (select(incidents.c.id, incidents.c.ref, sent.label("sent"), incidents.c.first_seen.label("ts"),
                    incidents.c.flag, incidents.c.severity.label("flag_severity"), access_log.c.group_name)
             .join(access_log, access_log.c.id == incidents.c.record_id)
             .where(incidents.c.status == Status.NEW.value, incidents.c.severity >= int(settings.min_severity),
                    sent < settings.max_reminders, or_(first_due, again_due))
             .order_by(incidents.c.first_seen))
    queued = 0
    async with engine.begin() as conn:
        due = (await conn.execute(query)).all()
        for row in due:
            claimed = await conn.execute(update(incidents).where(incidents.c.id == row.id, sent == row.sent)
                                         .values(reminders_sent=row.sent + 1, reminded_at=now))
            if claimed.rowcount != 1:
                continue  # another console sent it
            number = row.sent + 1
            group = policy.groups.get(row.group_name)
            minutes = int((now - row.ts).total_seconds() // 60)
            dispatcher.remind(Alert(
                record_ref=row.ref or str(row.id), time=row.ts, risk=row.flag, severity=Severity(row.flag_severity),
                group=row.group_name, user_key="", reminder=number,
                summary=f"{risk_title(row.flag)}, flagged {minutes} minutes ago in group "
                        f"{group.title if group else row.group_name}, is still new: nobody has reviewed it "
                        f"(reminder {number} of {settings.max_reminders})"))
            queued += 1
    if queued:
        log.info("%d incident reminders queued", queued)  # a count: who and what stay in the database
    return queued


async def remind_periodically(engine: AsyncEngine, policy: Policy, interval_s: float = CHECK_EVERY_S) -> None:
    """Check for due reminders now and then every `interval_s`, until cancelled; sends them
    on the policy's alert channels."""
    dispatcher = AlertDispatcher(policy.alerts)
    dispatcher.start()
    try:
        while True:
            try:
                await send_due(engine, policy, dispatcher)
            except Exception:  # the database is away for a moment: try again next time
                log.exception("incident reminders could not be checked")
            await asyncio.sleep(interval_s)
    finally:
        with contextlib.suppress(asyncio.CancelledError):
            await dispatcher.close(timeout=10)
