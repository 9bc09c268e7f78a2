"""Sign-in, the flagged queue, incidents, exports, the period report and the self-check."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from schoolgate.categories.taxonomy import Severity
from schoolgate.reports import incidents, selfcheck
from schoolgate.reports.accounts import Account, ConsoleRole
from schoolgate.reports.console.pages import audit, console, error, form_text, home_for, page, render
from schoolgate.reports.console.security import (
    client_address,
    csrf_ok,
    end_session,
    session_account,
    sign_in,
    start_session,
)
from schoolgate.reports.incidents import OPEN, IncidentFilter, IncidentNotFound, Status
from schoolgate.reports.queries import surrounding
from schoolgate.reports.report import build_report, incidents_csv, report_csv, trend_svg

DSL = ConsoleRole.DSL
CONTEXT_MINUTES = 10
MAX_ID_DIGITS = 18  # row ids are 64-bit: a longer number is no incident, not an overflow
REPORT_DAYS = 30


# --- signing in and out -------------------------------------------------------------

def _local_path(text: str) -> str:
    """Only a path on this console: never send someone elsewhere after signing in."""
    return text if text.startswith("/") and not text.startswith("//") and "\\" not in text else ""


async def login(request: Request) -> Response:
    engine = console(request).engine
    next_path = _local_path(request.query_params.get("next", ""))

    def form(status: int, username: str, message: str) -> Response:
        return render(request, "login.html", status=status, username=username, message=message, next_path=next_path)

    if request.method == "GET":
        account = await session_account(engine, request)
        if account is not None:
            return RedirectResponse(home_for(account), status_code=303)
        return form(200, "", "")
    username = await form_text(request, "username", 128)
    if not await csrf_ok(request):
        return form(403, username, "The sign-in form had expired. Please try again.")
    address = client_address(request, console(request).policy.console.trusted_proxies)
    result = await sign_in(engine, username, await form_text(request, "password", 1024), address)
    if result.throttled:
        return form(429, username, "Too many failed sign-ins. Wait 15 minutes and try again, "
                                   "or ask IT to reset your password.")
    if result.account is None:
        return form(401, username, "That user name and password do not match an active account.")
    await start_session(engine, request, result.account)
    return RedirectResponse(next_path or home_for(result.account), status_code=303)


async def logout(request: Request) -> Response:
    # No CSRF check: signing out is what a forged request could do least harm with, and a
    # missing or stale token must never leave the session open behind a "signed out" page.
    await end_session(console(request).engine, request)
    return RedirectResponse("/login", status_code=303)


async def home(request: Request) -> Response:
    account = await session_account(console(request).engine, request)
    return RedirectResponse(home_for(account) if account else "/login", status_code=303)


# --- the flagged queue --------------------------------------------------------------

def _local_day(text: str) -> datetime | None:
    """A YYYY-MM-DD form value as the start of that day in the server's local time, in UTC."""
    if not text:
        return None
    return datetime.combine(date.fromisoformat(text), time()).astimezone().astimezone(UTC)


def _filter(params: QueryParams) -> tuple[IncidentFilter, dict[str, str]]:
    """The queue's filter from the query string, and the values to show back in the form."""
    shown = {k: params.get(k, "").strip() for k in ("from", "to", "severity", "risk", "group", "user", "device")}
    shown["status"] = params.get("status", "open")
    end = _local_day(shown["to"])
    statuses = OPEN if shown["status"] == "open" else () if shown["status"] == "all" else (Status(shown["status"]),)
    return IncidentFilter(
        start=_local_day(shown["from"]), end=end + timedelta(days=1) if end else None,
        min_severity=int(Severity[shown["severity"].upper()]) if shown["severity"] else None,
        flag=shown["risk"] or None, group=shown["group"] or None, user=shown["user"] or None,
        device=shown["device"] or None, statuses=statuses,
    ), shown


@page(DSL)
async def queue(request: Request, account: Account) -> Response:
    try:
        wanted, shown = _filter(request.query_params)
    except (ValueError, KeyError):
        return error(request, 400, "Filter not understood",
                     "Dates are written 2026-11-23; severity is low, medium, high or critical.", account)
    items = await incidents.queue(console(request).engine, wanted)
    await audit(request, account, "view.queue", "incident", None, {"filter": wanted.describe(), "shown": len(items)})
    return render(request, "incidents.html", account=account, items=items, shown=shown,
                  query=str(request.query_params), statuses=list(Status),
                  severities=[s.name.lower() for s in Severity if s > Severity.NONE],
                  groups=list(console(request).policy.groups))


@page(DSL)
async def queue_csv(request: Request, account: Account) -> Response:
    try:
        wanted, _ = _filter(request.query_params)
    except (ValueError, KeyError):
        return error(request, 400, "Filter not understood", "Go back to the queue and check the filter.", account)
    items = await incidents.queue(console(request).engine, wanted, limit=100_000)
    await audit(request, account, "export.csv", "incident", None, {"filter": wanted.describe(), "rows": len(items)})
    return _csv_download(incidents_csv(items), f"flagged-{date.today().isoformat()}.csv")


def _csv_download(text: str, filename: str) -> Response:
    # A byte-order mark so Excel reads the UTF-8 (pupils search in every language).
    return Response("\ufeff" + text, media_type="text/csv; charset=utf-8",
                    headers={"Content-Disposition": f'attachment; filename="{filename}"'})


# --- one incident ---------------------------------------------------------------------

async def _incident_id(request: Request) -> int | None:
    """The path names an incident by number, or by the block-page reference alerts link to."""
    key = request.path_params["key"]
    if key.isascii() and key.isdigit():
        return int(key) if len(key) <= MAX_ID_DIGITS else None  # larger than any row id: no such incident
    found = await incidents.ids_for_ref(console(request).engine, key.upper())
    return found[0] if found else None


@page(DSL)
async def incident(request: Request, account: Account) -> Response:
    engine = console(request).engine
    incident_id = await _incident_id(request)
    try:
        item = await incidents.get(engine, incident_id) if incident_id is not None else None
    except IncidentNotFound:
        item = None
    if item is None:
        return error(request, 404, "No such incident", "It may have passed its retention period.", account)
    if request.method == "POST":
        return await _change(request, account, item)
    context = await surrounding(engine, item.record_id, CONTEXT_MINUTES)
    await audit(request, account, "view.incident", "incident", item.id, {"context_records": len(context)})
    return render(request, "incident.html", account=account, item=item, context=context,
                  notes=await incidents.notes(engine, item.id), statuses=list(Status), minutes=CONTEXT_MINUTES,
                  message=request.query_params.get("message", ""))


async def _change(request: Request, account: Account, item: incidents.Incident) -> Response:
    status_text = await form_text(request, "status", 20)
    assigned = await form_text(request, "assigned", 128)
    try:
        await incidents.update_incident(
            console(request).engine, item.id, actor=account.username, role=account.role,
            status=Status(status_text) if status_text else None, note=await form_text(request, "note", 10_000),
            assigned=assigned if assigned != (item.assigned or "") else None)
    except ValueError:
        return RedirectResponse(f"/incidents/{item.id}?message=Change+the+status+or+the+assignee,+or+write+a+note.",
                                status_code=303)
    return RedirectResponse(f"/incidents/{item.id}#notes", status_code=303)


@page(DSL)
async def incident_csv(request: Request, account: Account) -> Response:
    incident_id = await _incident_id(request)
    try:
        item = await incidents.get(console(request).engine, incident_id or 0)
    except IncidentNotFound:
        return error(request, 404, "No such incident", "It may have passed its retention period.", account)
    await audit(request, account, "export.csv", "incident", item.id, {"rows": 1})
    return _csv_download(incidents_csv([item]), f"incident-{item.id}.csv")


# --- the period report ----------------------------------------------------------------

def _period(params: QueryParams) -> tuple[datetime, datetime, dict[str, str]]:
    today = date.today()
    shown = {"from": params.get("from") or (today - timedelta(days=REPORT_DAYS - 1)).isoformat(),
             "to": params.get("to") or today.isoformat()}
    start, last = _local_day(shown["from"]), _local_day(shown["to"])
    assert start is not None and last is not None
    if last < start:
        raise ValueError("the period ends before it starts")
    return start, last + timedelta(days=1), shown


async def _report(request: Request, account: Account) -> tuple[Any, dict[str, str]] | Response:
    try:
        start, end, shown = _period(request.query_params)
    except ValueError:
        return error(request, 400, "Period not understood", "Dates are written 2026-11-23, the end after the start.",
                     account)
    report = await build_report(console(request).engine, start, end)
    with_identities = account.role is DSL
    await audit(request, account, "view.report" if request.url.path == "/report" else "export.report_csv",
                "report", None, {"from": shown["from"], "to": shown["to"], "identities": with_identities})
    return report, shown


@page(DSL, ConsoleRole.IT_ADMIN)
async def report_page(request: Request, account: Account) -> Response:
    built = await _report(request, account)
    if isinstance(built, Response):
        return built
    report, shown = built
    return render(request, "report.html", account=account, report=report, shown=shown,
                  with_identities=account.role is DSL, chart=trend_svg(report.days))


@page(DSL, ConsoleRole.IT_ADMIN)
async def report_download(request: Request, account: Account) -> Response:
    built = await _report(request, account)
    if isinstance(built, Response):
        return built
    report, shown = built
    return _csv_download(report_csv(report), f"report-{shown['from']}-to-{shown['to']}.csv")


# --- the self-check -------------------------------------------------------------------

@page(DSL, ConsoleRole.IT_ADMIN)
async def selfcheck_page(request: Request, account: Account) -> Response:
    """GET judges the configuration; POST (the button) also probes the gateway and sends a test alert.
    Probes are recorded, and flagged, like any blocked attempt: they run only when asked for."""
    from schoolgate.reports import probes  # the probes' HTTP client loads only for this page

    policy = console(request).policy
    engine = await asyncio.to_thread(probes.load_engine, policy.path)
    probing = request.method == "POST"
    facts = await probes.gather(engine, console(request).engine, probe=probing, send_alert=probing,
                                proxy=policy.selfcheck.proxy, source_address=policy.selfcheck.source_address)
    items = selfcheck.assess(facts)
    await audit(request, account, "view.selfcheck", "selfcheck", None,
                {"probes": probing, **{s.value: n for s, n in selfcheck.counts(items).items()}})
    return render(request, "selfcheck.html", account=account, items=items, probes=probes.summary(facts.probes),
                  counts=selfcheck.counts(items), checked_at=datetime.now(UTC))
