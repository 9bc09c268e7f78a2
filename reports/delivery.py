"""The period report by email on the policy's `[reports]` schedule (`schoolgate send-report`,
run daily by deploy/systemd/schoolgate-report.timer).

Two copies: `[reports.email] to` (IT, governors) gets the report without names; `dsl_to`
gets the DSL's copy, which names who is behind open incidents. The message body holds
counts only; the report is attached as a self-contained HTML page and as CSV.
"""

from __future__ import annotations

import asyncio
from datetime import date, datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.alerts import send_email
from schoolgate.policy import Policy
from schoolgate.reports.report import PeriodReport, build_report, render_html, report_csv

SEND_TIMEOUT_S = 30.0


def report_message(report: PeriodReport, policy: Policy, first: date, last: date, *, to: tuple[str, ...],
                   with_identities: bool) -> EmailMessage:
    email = policy.reports.email
    message = EmailMessage()
    message["Subject"] = f"[schoolgate] Filtering and monitoring report, {first:%d %b %Y} to {last:%d %b %Y}"
    message["From"] = email.sender
    message["To"] = ", ".join(to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=email.sender.rpartition("@")[2] or None)
    before_total, before_blocked, before_flagged = report.previous
    message.set_content(
        f"The filtering and monitoring report for {policy.school.name}, {first:%A %d %B %Y} to {last:%A %d %B %Y}.\n\n"
        f"Requests: {report.total:,} ({report.change(report.total, before_total)} on the period before)\n"
        f"Blocked: {report.blocked:,} ({report.change(report.blocked, before_blocked)})\n"
        f"Flagged for the safeguarding lead: {report.flagged:,} ({report.change(report.flagged, before_flagged)})\n"
        f"Open incidents: {len(report.open_incidents)}\n\n"
        "The report is attached as a page to open or print (HTML) and as a spreadsheet (CSV).\n"
        + ("This copy names the pupils behind open incidents: keep it as a safeguarding record.\n"
           if with_identities else "This copy names no pupils.\n"))
    name = f"report-{first.isoformat()}-to-{last.isoformat()}"
    html = render_html(report, school=policy.school.name, with_identities=with_identities)
    message.add_attachment(html.encode("utf-8"), maintype="text", subtype="html", filename=f"{name}.html")
    message.add_attachment(("\ufeff" + report_csv(report)).encode("utf-8"), maintype="text", subtype="csv",
                           filename=f"{name}.csv")
    return message


async def send_report(engine: AsyncEngine, policy: Policy, first: date, last: date, start: datetime,
                      end: datetime) -> list[str]:
    """Build the report over [start, end) (the days' local midnights) and send each copy; the recipients."""
    report = await build_report(engine, start, end)
    email = policy.reports.email
    sent: list[str] = []
    for to, with_identities in ((email.to, False), (policy.reports.dsl_to, True)):
        if to:
            message = report_message(report, policy, first, last, to=to, with_identities=with_identities)
            await asyncio.to_thread(send_email, email, message, SEND_TIMEOUT_S)
            sent += to
    return sent
