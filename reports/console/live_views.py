"""Teachers' and IT's pages: exceptions, access requests, the managed lists and settings.

All changes go through `schoolgate.live.LiveStore`, which checks them against the
policy's [exceptions] rules and writes the audit trail; these pages only add what
an account may touch: a teacher works for the groups on their account.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from schoolgate.engine import grant_categories
from schoolgate.grants import GrantRefused, GrantRequest, ScopeKind, lesson_end
from schoolgate.live import AccessRequest, LiveStore, NotFound
from schoolgate.policy import Action
from schoolgate.reports.accounts import Account, ConsoleRole, list_accounts
from schoolgate.reports.console.pages import audit, console, form_text, page, render
from schoolgate.reports.queries import LOST_RECORDS_DAYS, lost_records
from schoolgate.urls import InvalidHost
from schoolgate.urls import parse_target as parse_url

IT, TEACHER = ConsoleRole.IT_ADMIN, ConsoleRole.TEACHER
# Lengths offered on the forms (minutes; 0 = to the end of the lesson). The policy caps each role.
DURATIONS = ((0, "Until the end of the lesson"), (30, "30 minutes"), (60, "1 hour"), (120, "2 hours"),
             (180, "3 hours"), (24 * 60, "1 day"), (7 * 24 * 60, "1 week"), (30 * 24 * 60, "30 days"))


def _teacher_groups(request: Request, account: Account) -> tuple[str, ...]:
    """Groups a teacher works for: on their account and allowed by the policy."""
    return tuple(g for g in account.groups if g in console(request).policy.exceptions.teacher_groups)


def _back(path: str, message: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?message={quote(message)}", status_code=303)


def _store(request: Request) -> LiveStore:
    return LiveStore(console(request).engine)


# --- exceptions ---------------------------------------------------------------------

@page(IT, TEACHER)
async def exceptions_page(request: Request, account: Account) -> Response:
    grants = [g for g, _ in await _store(request).grants()]
    if account.role is TEACHER:
        mine = _teacher_groups(request, account)
        grants = [g for g in grants if g.granted_by == account.username
                  or (g.scope_kind is ScopeKind.GROUP and g.scope in mine)]
    groups = _teacher_groups(request, account) if account.role is TEACHER else tuple(console(request).policy.groups)
    # An exception may name pupils (user:..., users:...), so seeing the list is audited like the requests.
    await audit(request, account, "view.exceptions", "exception", None, {"shown": len(grants)})
    return render(request, "exceptions.html", account=account, grants=grants, groups=groups,
                  durations=DURATIONS, scope_kinds=[k.value for k in ScopeKind],
                  message=request.query_params.get("message", ""))


def _ends_at(request: Request, minutes_text: str, starts_at: datetime) -> datetime:
    minutes = int(minutes_text or 0)
    return starts_at + timedelta(minutes=minutes) if minutes else lesson_end(console(request).policy, starts_at)


@page(IT, TEACHER)
async def grant_exception(request: Request, account: Account) -> Response:
    target = await form_text(request, "target", 500)
    if account.role is TEACHER:
        scope_kind, scope = ScopeKind.GROUP, await form_text(request, "scope", 200)
        mine = _teacher_groups(request, account)
        if scope not in mine:
            return _back("/exceptions", f"You may open sites only for {', '.join(mine) or 'no groups'}.")
    else:
        scope_kind, scope = ScopeKind(await form_text(request, "scope_kind", 20)), await form_text(request, "scope", 500)
    now = datetime.now(UTC)
    assert account.role.live_role is not None
    try:
        grant = GrantRequest(target=target, scope_kind=scope_kind, scope=scope, starts_at=now,
                             ends_at=_ends_at(request, await form_text(request, "minutes", 10), now),
                             reason=await form_text(request, "reason"), actor=account.username,
                             role=account.role.live_role)
        made = await _store(request).grant(console(request).policy, grant,
                                           grant_categories(console(request).policy, target))
    except (GrantRefused, InvalidHost, ValueError) as e:
        reasons = e.reasons if isinstance(e, GrantRefused) else [str(e)]
        return _back("/exceptions", "Not opened: " + "; ".join(reasons))
    return _back("/exceptions", f"Opened {made.what} for {made.whom} until {made.ends_at.astimezone():%H:%M on %d %b}.")


@page(IT, TEACHER)
async def revoke_exception(request: Request, account: Account) -> Response:
    assert account.role.live_role is not None
    try:
        await _store(request).revoke(int(request.path_params["id"]), account.username, account.role.live_role)
    except (GrantRefused, NotFound) as e:
        return _back("/exceptions", str(e))
    return _back("/exceptions", "Exception ended.")


# --- access requests ----------------------------------------------------------------

def _visible_requests(request: Request, account: Account, items: list[AccessRequest]) -> list[AccessRequest]:
    if account.role is TEACHER:
        mine = _teacher_groups(request, account)
        return [r for r in items if r.group_name in mine]
    return items


@page(IT, TEACHER)
async def requests_page(request: Request, account: Account) -> Response:
    items = _visible_requests(request, account, await _store(request).requests())
    pending = [r for r in items if r.status == "pending"]
    decided = sorted((r for r in items if r.status != "pending"), key=lambda r: r.id, reverse=True)[:50]
    await audit(request, account, "view.requests", "access_request", None, {"shown": len(pending) + len(decided)})
    return render(request, "requests.html", account=account, pending=pending, decided=decided,
                  message=request.query_params.get("message", ""))


@page(IT, TEACHER)
async def decide_request(request: Request, account: Account) -> Response:
    request_id = int(request.path_params["id"])
    asked = next((r for r in _visible_requests(request, account, await _store(request).requests("pending"))
                  if r.id == request_id), None)
    if asked is None:
        return _back("/requests", f"Request #{request_id} is not pending for your groups.")
    approve = request.path_params["decision"] == "approve"
    note = await form_text(request, "note")
    policy, role = console(request).policy, account.role.live_role
    assert role is not None
    try:
        if not approve:
            await _store(request).decide_request(request_id, approve=False, actor=account.username, role=role, note=note)
            return _back("/requests", f"Request #{request_id} refused.")
        # Open the site for the pupil who asked (by user, else by device), as `schoolgate requests approve` does.
        host = parse_url(asked.url).host
        scope = (ScopeKind.USER, asked.username) if asked.username else (ScopeKind.NETWORK, asked.client_ip)
        now = datetime.now(UTC)
        grant = GrantRequest(target=host, scope_kind=scope[0], scope=scope[1], starts_at=now,
                             ends_at=lesson_end(policy, now), reason=f"request #{request_id}: {asked.reason}",
                             actor=account.username, role=role)
        await _store(request).decide_request(request_id, approve=True, actor=account.username, role=role, note=note,
                                             policy=policy, grant=grant, listed_categories=grant_categories(policy, host))
    except (GrantRefused, NotFound, InvalidHost) as e:
        return _back("/requests", f"Request #{request_id} not approved: {e}")
    return _back("/requests", f"Request #{request_id} approved: {host} is open until the end of the lesson.")


# --- managed lists and settings (IT) ---------------------------------------------------

@page(IT)
async def lists_page(request: Request, account: Account) -> Response:
    store = _store(request)
    return render(request, "lists.html", account=account, allow=await store.entries(Action.ALLOW),
                  block=await store.entries(Action.BLOCK), message=request.query_params.get("message", ""))


@page(IT)
async def change_list(request: Request, account: Account) -> Response:
    action = Action(request.path_params["action"])
    entry = await form_text(request, "entry", 500)
    try:
        if (await form_text(request, "change", 10)) == "remove":
            await _store(request).remove_entry(action, entry, account.username, account.role.live_role)  # type: ignore[arg-type]
            return _back("/lists", f"Removed {entry} from the {action.value} list.")
        await _store(request).add_entry(action, entry, await form_text(request, "reason"), account.username,
                                        account.role.live_role)  # type: ignore[arg-type]
    except (GrantRefused, NotFound) as e:
        return _back("/lists", str(e))
    return _back("/lists", f"Added {entry} to the {action.value} list; gateways apply it within a second.")


@page(IT)
async def settings_page(request: Request, account: Account) -> Response:
    return render(request, "settings.html", account=account, policy=console(request).policy,
                  accounts=await list_accounts(console(request).engine),
                  lost=await lost_records(console(request).engine, datetime.now(UTC)), lost_days=LOST_RECORDS_DAYS)
