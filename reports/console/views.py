"""Sign-in, the flagged queue, incidents, exports, the period report and the self-check."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from urllib.parse import urlencode

from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from schoolgate.categories.taxonomy import Severity
from schoolgate.flags import RISK_NAMES
from schoolgate.reports import incidents, outcomes, pupils, selfcheck
from schoolgate.reports.accounts import Account, ConsoleRole, list_accounts
from schoolgate.reports.console.pages import BADGES, audit, console, error, form_text, home_for, page, render
from schoolgate.reports.console.security import (
    client_address,
    csrf_ok,
    end_session,
    session_account,
    sign_in,
    start_session,
)
from schoolgate.reports.incidents import OPEN, IncidentFilter, IncidentNotFound, Status
from schoolgate.reports.queries import LOST_RECORDS_DAYS, surrounding
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


QUEUE_FILTERS = ("from", "to", "severity", "risk", "group", "user", "device", "status")


def queue_query(text: str) -> str:
    """The queue's filter carried through an incident page (`?back=`) so its back link returns to
    the same filtered queue: only the filter's own fields, re-encoded."""
    params = QueryParams(text)
    return urlencode([(k, v) for k, v in params.multi_items() if k in QUEUE_FILTERS and v])


def _filter(params: QueryParams) -> tuple[IncidentFilter, dict[str, str]]:
    """The queue's filter from the query string, and the values to show back in the form."""
    shown = {k: params.get(k, "").strip() for k in QUEUE_FILTERS if k != "status"}
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
    engine = console(request).engine
    items = await incidents.queue(engine, wanted)
    await audit(request, account, "view.queue", "incident", None, {"filter": wanted.describe(), "shown": len(items)})
    return render(request, "incidents.html", account=account, items=items, shown=shown,
                  query=queue_query(str(request.query_params)), statuses=list(Status), risks=RISK_NAMES,
                  watched=await pupils.watched(console(request).engine),
                  severities=[s.name.lower() for s in Severity if s > Severity.NONE],
                  groups=list(console(request).policy.groups), dsls=await _dsl_names(request),
                  lost=await console(request).lost.gaps(datetime.now(UTC)), lost_days=LOST_RECORDS_DAYS,
                  message=request.query_params.get("message", ""))


async def _dsl_names(request: Request) -> list[str]:
    """Whom incidents can be assigned to: the active DSL accounts."""
    return [a.username for a in await list_accounts(console(request).engine) if a.role is DSL and a.active]


@page(DSL)
async def queue_bulk(request: Request, account: Account) -> Response:
    """Close, or assign to a DSL, the incidents ticked in the queue."""
    form = await request.form()
    chosen = [value for value in form.getlist("incident") if isinstance(value, str)]
    if not all(v.isascii() and v.isdigit() and len(v) <= MAX_ID_DIGITS for v in chosen):
        return error(request, 400, "Selection not understood", "Go back to the queue and tick the incidents again.",
                     account)
    action, assignee = await form_text(request, "action", 20), await form_text(request, "assignee", 128)
    if action == "close":
        status, assigned, done = Status.CLOSED, None, "Closed"
    elif action == "assign" and assignee in await _dsl_names(request):
        status, assigned, done = None, assignee, f"Assigned to {assignee}:"
    else:
        return _back_to_queue(request, "Choose an action (and, to assign, a safeguarding lead).")
    if not chosen:
        return _back_to_queue(request, "Tick the incidents to change first.")
    try:
        changed = await incidents.update_many(console(request).engine, map(int, chosen), actor=account.username,
                                              role=account.role, status=status, assigned=assigned)
    except IncidentNotFound:
        return _back_to_queue(request, "An incident ticked is no longer there (past its retention); nothing changed.")
    return _back_to_queue(request, f"{done} {changed} incident{'' if changed == 1 else 's'}.")


def _back_to_queue(request: Request, message: str) -> RedirectResponse:
    """Back to the queue as it was filtered, with what happened."""
    params = [(k, v) for k, v in QueryParams(request.url.query).multi_items() if k != "message"]
    return RedirectResponse(f"/incidents?{urlencode([*params, ('message', message)])}", status_code=303)


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


async def unread_incidents(request: Request, account: Account) -> int:
    """The queue's badge: flagged records at the alert threshold no DSL has opened yet."""
    return await incidents.unread_count(console(request).engine, int(console(request).policy.alerts.min_severity))


BADGES["/incidents"] = unread_incidents


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
    back = queue_query(request.query_params.get("back", ""))
    review = await outcomes.mark_reviewed(engine, item.id, account.username)
    if request.method == "POST":
        return await _change(request, account, item, back)
    context = await surrounding(engine, item.record_id, CONTEXT_MINUTES)
    request.state.badges["/incidents"] = await unread_incidents(request, account)  # this one is read now
    attempts = await incidents.attempts(engine, item.id)
    await audit(request, account, "view.incident", "incident", item.id,
                {"context_records": len(context), "attempts": len(attempts)})
    return render(request, "incident.html", account=account, item=item, context=context, attempts=attempts,
                  notes=await incidents.notes(engine, item.id), statuses=list(Status), minutes=CONTEXT_MINUTES,
                  message=request.query_params.get("message", ""), back=back, review=review,
                  outcomes=await outcomes.outcomes(engine, item.id), outcome_choices=list(outcomes.Outcome),
                  watched=await pupils.watched(engine), today=date.today().isoformat(),
                  people=sorted({c.user or "" for _, c in context}),
                  year_and_form=await pupils.year_and_form(engine, item.record.user))


def incident_path(incident_id: int, back: str, message: str = "") -> str:
    """An incident's page, keeping the queue's filter for its back link (and a message, if any)."""
    query = urlencode([(k, v) for k, v in (("back", back), ("message", message)) if v])
    return f"/incidents/{incident_id}" + (f"?{query}" if query else "")


async def _change(request: Request, account: Account, item: incidents.Incident, back: str) -> Response:
    status_text = await form_text(request, "status", 20)
    assigned = await form_text(request, "assigned", 128)
    try:
        await incidents.update_incident(
            console(request).engine, item.id, actor=account.username, role=account.role,
            status=Status(status_text) if status_text else None, note=await form_text(request, "note", 10_000),
            assigned=assigned if assigned != (item.assigned or "") else None)
    except ValueError:
        return RedirectResponse(incident_path(item.id, back, "Change the status or the assignee, or write a note."),
                                status_code=303)
    return RedirectResponse(incident_path(item.id, back) + "#notes", status_code=303)


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
