"""The DSL's pages about one pupil or device, an incident's outcomes, and referral packs."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta
from urllib.parse import quote, urlencode

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from schoolgate.reports import incidents, outcomes, pupils, referral
from schoolgate.reports.accounts import Account, ConsoleRole
from schoolgate.reports.console.pages import audit, console, error, form_text, page, render
from schoolgate.reports.console.views import _csv_download, _incident_id, _local_day, incident_path, queue_query
from schoolgate.reports.incidents import OPEN, IncidentFilter, IncidentNotFound
from schoolgate.reports.queries import recent
from schoolgate.urls import canonical_ip

DSL = ConsoleRole.DSL
TIMELINE_PAGE = 50
MAX_USER_LENGTH = 256


# --- an incident's outcomes -------------------------------------------------------------

@page(DSL)
async def record_outcome(request: Request, account: Account) -> Response:
    engine = console(request).engine
    incident_id = await _incident_id(request)
    if incident_id is None:
        return error(request, 404, "No such incident", "It may have passed its retention period.", account)
    back = queue_query(request.query_params.get("back", ""))
    try:
        chosen = outcomes.Outcome(await form_text(request, "outcome", 40))
        on = date.fromisoformat(await form_text(request, "on", 10))
    except ValueError:
        return RedirectResponse(incident_path(incident_id, back, "Choose an outcome and its date."), status_code=303)
    if on > date.today():
        return RedirectResponse(incident_path(incident_id, back, "An outcome's date cannot be in the future."),
                                status_code=303)
    try:
        await outcomes.record_outcome(engine, incident_id, chosen, on, await form_text(request, "note", 10_000),
                                      actor=account.username, role=account.role)
    except IncidentNotFound:
        return error(request, 404, "No such incident", "It may have passed its retention period.", account)
    await outcomes.mark_reviewed(engine, incident_id, account.username)
    return RedirectResponse(incident_path(incident_id, back) + "#outcomes", status_code=303)


# --- one pupil, one device ----------------------------------------------------------------

def _period(request: Request) -> tuple[dict[str, str], datetime | None, datetime | None, int]:
    """The timeline's date filter (local days, both included: shown, start, end) and page
    number, from the query; ValueError for a date not understood."""
    shown = {k: request.query_params.get(k, "").strip() for k in ("from", "to")}
    start, last = _local_day(shown["from"]), _local_day(shown["to"])
    number = request.query_params.get("page", "1")
    return (shown, start, last + timedelta(days=1) if last else None,
            max(1, int(number)) if number.isdigit() and len(number) < 7 else 1)


async def _subject_page(request: Request, account: Account, *, user: str | None, device: str | None) -> Response:
    engine = console(request).engine
    try:
        shown, start, end, number = _period(request)
    except ValueError:
        return error(request, 400, "Dates not understood", "Dates are written 2026-11-23.", account)
    found = await recent(engine, limit=TIMELINE_PAGE + 1, offset=(number - 1) * TIMELINE_PAGE, user=user,
                         client_ip=device, since=start, before=end)
    open_items = await incidents.queue(engine, IncidentFilter(user=user, device=device, statuses=OPEN))
    subject = {"user": user} if user else {"device": device}
    await audit(request, account, "view.pupil" if user else "view.device", "pupil" if user else "device", None,
                {**subject, "page": number, "shown": min(len(found), TIMELINE_PAGE)})
    watched = await pupils.watched(engine)
    return render(request, "pupil.html", account=account, user=user, device=device, shown=shown, page=number,
                  timeline=found[:TIMELINE_PAGE], more=len(found) > TIMELINE_PAGE, open_items=open_items,
                  notes=await pupils.notes(engine, user) if user else [], watch=watched.get(user or ""),
                  watched=watched, message=request.query_params.get("message", ""),
                  year_and_form=await pupils.year_and_form(engine, user))


def _user(request: Request) -> str | None:
    user = request.path_params["user"]
    return user if 0 < len(user) <= MAX_USER_LENGTH and user.isprintable() else None


@page(DSL)
async def pupil_page(request: Request, account: Account) -> Response:
    user = _user(request)
    if user is None:
        return error(request, 404, "No such pupil", "Open a pupil from the flagged queue.", account)
    return await _subject_page(request, account, user=user, device=None)


@page(DSL)
async def device_page(request: Request, account: Account) -> Response:
    device = canonical_ip(request.path_params["ip"])
    if device is None:
        return error(request, 404, "No such device", "A device is named by its address, e.g. 10.1.2.3.", account)
    return await _subject_page(request, account, user=None, device=device)


def pupil_path(user: str, message: str = "") -> str:
    return f"/pupils/{quote(user, safe='')}" + (f"?{urlencode({'message': message})}" if message else "")


@page(DSL)
async def pupil_note(request: Request, account: Account) -> Response:
    user = _user(request)
    if user is None:
        return error(request, 404, "No such pupil", "Open a pupil from the flagged queue.", account)
    try:
        await pupils.add_note(console(request).engine, user, await form_text(request, "note", 10_000),
                              actor=account.username, role=account.role)
    except ValueError:
        return RedirectResponse(pupil_path(user, "Write the note first."), status_code=303)
    return RedirectResponse(pupil_path(user) + "#notes", status_code=303)


@page(DSL)
async def pupil_watch(request: Request, account: Account) -> Response:
    user = _user(request)
    if user is None:
        return error(request, 404, "No such pupil", "Open a pupil from the flagged queue.", account)
    engine = console(request).engine
    reason = await form_text(request, "reason", 2000)
    change = pupils.watch if await form_text(request, "action", 10) == "watch" else pupils.unwatch
    try:
        await change(engine, user, reason, actor=account.username, role=account.role)
    except ValueError:
        return RedirectResponse(pupil_path(user, "Give a reason."), status_code=303)
    except LookupError:
        return RedirectResponse(pupil_path(user, "That pupil was not on the watch list."), status_code=303)
    return RedirectResponse(pupil_path(user), status_code=303)


# --- referral packs -----------------------------------------------------------------------

def _pack_download(request: Request, pack: referral.Pack, name: str) -> Response:
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", name)
    if request.url.path.endswith(".csv"):
        return _csv_download(referral.pack_csv(pack), f"{name}.csv")
    return Response(referral.pack_pdf(pack), media_type="application/pdf",
                    headers={"Content-Disposition": f'attachment; filename="{name}.pdf"'})


def _format(request: Request) -> str:
    return "csv" if request.url.path.endswith(".csv") else "pdf"


@page(DSL)
async def incident_referral(request: Request, account: Account) -> Response:
    engine = console(request).engine
    incident_id = await _incident_id(request)
    try:
        item = await incidents.get(engine, incident_id or 0)
    except IncidentNotFound:
        return error(request, 404, "No such incident", "It may have passed its retention period.", account)
    # Audited first, so the pack's own audit trail shows this download.
    await audit(request, account, "export.referral", "incident", item.id, {"format": _format(request)})
    pack = await referral.incident_pack(engine, item, school=console(request).policy.school.name,
                                        made_by=account.username, now=datetime.now(UTC))
    return _pack_download(request, pack, f"referral-incident-{item.id}")


@page(DSL)
async def pupil_referral(request: Request, account: Account) -> Response:
    user = _user(request)
    if user is None:
        return error(request, 404, "No such pupil", "Open a pupil from the flagged queue.", account)
    await audit(request, account, "export.referral", "pupil", None, {"user": user, "format": _format(request)})
    pack = await referral.pupil_pack(console(request).engine, user, school=console(request).policy.school.name,
                                     made_by=account.username, now=datetime.now(UTC))
    return _pack_download(request, pack, f"referral-{user}")
