"""Teachers' and IT's pages: exceptions, access requests, the managed lists and settings.

All changes go through `schoolgate.live.LiveStore`, which checks them against the
policy's [exceptions] rules and writes the audit trail; these pages only add what
an account may touch: a teacher works for the groups on their account.
"""

from __future__ import annotations

import asyncio
import ipaddress
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from schoolgate import flags
from schoolgate.engine import grant_categories
from schoolgate.grants import (
    CLASS,
    ROOM,
    GrantRefused,
    GrantRequest,
    ScopeKind,
    chosen_scope,
    durations,
    ends_at_for,
    parse_target,
    refusals,
)
from schoolgate.live import AccessRequest, LiveStore, NotFound
from schoolgate.policy import Action, Policy, Role
from schoolgate.reports.accounts import Account, ConsoleRole, list_accounts
from schoolgate.reports.console.pages import BADGES, audit, console, form_text, page, render
from schoolgate.reports.queries import LOST_RECORDS_DAYS, list_changes
from schoolgate.urls import InvalidHost
from schoolgate.urls import parse_target as parse_url

IT, TEACHER, DSL = ConsoleRole.IT_ADMIN, ConsoleRole.TEACHER, ConsoleRole.DSL
# The scope choice meaning "the pupil who asked" (by user, else by device) on a request.
ASKER = "asker"
# Scope choices whose value is typed into the "who" box: one pupil; for IT also a user list or a network.
TYPED = {TEACHER: (ScopeKind.USER.value,),
         IT: (ScopeKind.USER.value, ScopeKind.USERS.value, ScopeKind.NETWORK.value)}


def _teacher_groups(request: Request, account: Account) -> tuple[str, ...]:
    """Groups a teacher works for: on their account and allowed by the policy."""
    return tuple(g for g in account.groups if g in console(request).policy.exceptions.teacher_groups)


def _back(path: str, message: str) -> RedirectResponse:
    return RedirectResponse(f"{path}?message={quote(message)}", status_code=303)


def _store(request: Request) -> LiveStore:
    return LiveStore(console(request).engine)


async def _listed_in(policy: Policy, target: str) -> set[str]:
    """The categories a grant's target is listed in; the category index is opened in a thread,
    not on the console's event loop, which serves every other page meanwhile."""
    return await asyncio.to_thread(grant_categories, policy, target)


def _role(account: Account) -> Role:
    assert account.role.live_role is not None
    return account.role.live_role


@dataclass(frozen=True)
class ScopeOption:
    value: str  # "group:pupils", "class:9X", "room:lab-2", "user", "asker"
    label: str


async def _scope_options(request: Request, account: Account) -> list[tuple[str, list[ScopeOption]]]:
    """What an account may open a site for, grouped for the form's select."""
    policy = console(request).policy
    groups = _teacher_groups(request, account) if account.role is TEACHER else tuple(policy.groups)
    classes = await _store(request).classes()
    typed = {ScopeKind.USER.value: "One pupil (type their user name)",
             ScopeKind.USERS.value: "Several users (type a,b,c)",
             ScopeKind.NETWORK.value: "Address ranges (type 10.20.3.0/24,...)"}
    return [(title, options) for title, options in (
        ("Groups", [ScopeOption(f"group:{g}", g) for g in groups]),
        ("Classes", [ScopeOption(f"{CLASS}:{name}", f"{name} ({len(members)} pupils)")
                     for name, members in classes.items()]),
        ("Rooms", [ScopeOption(f"{ROOM}:{name}", name) for name, _ in policy.exceptions.rooms]),
        ("Named", [ScopeOption(kind, typed[kind]) for kind in TYPED[account.role]]),
    ) if options]


async def _resolve_scope(request: Request, account: Account, choice: str, typed: str,
                         asked: AccessRequest | None = None) -> tuple[ScopeKind, str, str]:
    """(kind, scope, label) for the scope chosen on a form; a teacher's group must be theirs."""
    if choice == ASKER and asked is not None:
        return (ScopeKind.USER, asked.username, "") if asked.username else (ScopeKind.NETWORK, asked.client_ip, "")
    kind, _, value = choice.partition(":")
    if kind in TYPED[account.role]:
        value = typed
        if not value.strip():
            raise GrantRefused(["type whom to open it for"])
    elif not value:
        raise GrantRefused(["choose whom to open it for"])
    if account.role is TEACHER and kind == ScopeKind.GROUP.value and value not in _teacher_groups(request, account):
        mine = _teacher_groups(request, account)
        raise GrantRefused([f"you may open sites only for {', '.join(mine) or 'no groups'}"])
    classes = await _store(request).classes() if kind == CLASS else {}
    return chosen_scope(console(request).policy, kind, value, classes)


# --- exceptions ---------------------------------------------------------------------

async def _exceptions_page(request: Request, account: Account, *, status: int = 200, form: dict[str, str] | None = None,
                           errors: dict[str, str] | None = None) -> Response:
    grants = [g for g, _ in await _store(request).grants()]
    if account.role is TEACHER:
        mine = _teacher_groups(request, account)
        grants = [g for g in grants if g.granted_by == account.username
                  or (g.scope_kind is ScopeKind.GROUP and g.scope in mine)]
    # An exception may name pupils (user:..., users:...), so seeing the list is audited like the requests.
    await audit(request, account, "view.exceptions", "exception", None, {"shown": len(grants)})
    return render(request, "exceptions.html", status=status, account=account, grants=grants,
                  scopes=await _scope_options(request, account),
                  durations=durations(console(request).policy, _role(account), datetime.now(UTC)),
                  message=request.query_params.get("message", ""), form=form or {}, errors=errors or {})


@page(IT, TEACHER)
async def exceptions_page(request: Request, account: Account) -> Response:
    return await _exceptions_page(request, account)


@page(IT, TEACHER)
async def grant_exception(request: Request, account: Account) -> Response:
    """Open a site; what cannot be done is shown on the form, next to the field at fault, with the values kept."""
    form = {name: await form_text(request, name, 500) for name in ("target", "scope", "who", "length", "reason")}
    policy, now, errors = console(request).policy, datetime.now(UTC), {}
    try:
        parse_target(form["target"])
    except GrantRefused as e:
        errors["target"] = "; ".join(e.reasons)
    if not form["reason"]:
        errors["reason"] = "Give a reason; it is kept in the audit trail."
    scope, ends_at = None, now
    try:
        scope = await _resolve_scope(request, account, form["scope"], form["who"])
    except GrantRefused as e:
        errors["scope"] = "; ".join(e.reasons)
    try:
        ends_at = ends_at_for(policy, form["length"], now)
    except GrantRefused as e:
        errors["length"] = "; ".join(e.reasons)
    if not errors and scope is not None:
        grant = GrantRequest(target=form["target"], scope_kind=scope[0], scope=scope[1], starts_at=now, ends_at=ends_at,
                             reason=form["reason"], actor=account.username, role=_role(account), label=scope[2])
        try:
            made = await _store(request).grant(policy, grant, await _listed_in(policy, form["target"]))
        except (GrantRefused, InvalidHost) as e:
            errors["form"] = "; ".join(e.reasons) if isinstance(e, GrantRefused) else str(e)
        else:
            return _back("/exceptions", f"Opened {made.what} for {made.whom} until {made.ends_at.astimezone():%H:%M on %d %b}.")
    return await _exceptions_page(request, account, status=400, form=form, errors=errors)


@page(IT, TEACHER)
async def revoke_exception(request: Request, account: Account) -> Response:
    try:
        await _store(request).revoke(int(request.path_params["id"]), account.username, _role(account))
    except (GrantRefused, NotFound) as e:
        return _back("/exceptions", str(e))
    return _back("/exceptions", "Exception ended.")


# --- access requests ----------------------------------------------------------------

def _visible_requests(request: Request, account: Account, items: list[AccessRequest]) -> list[AccessRequest]:
    if account.role is TEACHER:
        mine = _teacher_groups(request, account)
        return [r for r in items if r.group_name in mine]
    return items


def _beyond_role(request: Request, account: Account, asked: AccessRequest) -> list[str]:
    """Why this account may not approve a request (empty: it may): a teacher never opens what
    their role may not (pornography, self-harm...); those wait for IT."""
    return refusals(console(request).policy, _role(account), asked.categories)


def _concern(asked: AccessRequest) -> str | None:
    """The safeguarding risk a request is about (asking to open a self-harm site is the DSL's
    business however it is decided), as the DSL reads it."""
    flag = flags.assess(asked.categories)
    return f"{flags.risk_title(flag.risk)} ({flag.severity.name.lower()})" if flag else None


async def pending_for(request: Request, account: Account) -> int:
    """The console's badge: pending requests this account may decide; for the DSL, who
    decides none, those about a safeguarding risk."""
    pending = _visible_requests(request, account, await _store(request).requests("pending"))
    if account.role is DSL:
        return sum(1 for r in pending if _concern(r))
    return sum(1 for r in pending if not _beyond_role(request, account, r))


BADGES["/requests"] = pending_for


def _asker_scopes(request: Request, asked: AccessRequest, classes: dict[str, tuple[str, ...]],
                  groups: tuple[str, ...]) -> list[ScopeOption]:
    """Whom an approval may open the site for: the pupil, their classes, the room they are in, their group."""
    options = [ScopeOption(ASKER, f"Only {asked.username or 'this device'}")]
    if asked.username:
        options += [ScopeOption(f"{CLASS}:{name}", f"Class {name}") for name, members in classes.items()
                    if asked.username in members]
    address = ipaddress.ip_address(asked.client_ip)
    options += [ScopeOption(f"{ROOM}:{name}", f"Room {name}") for name, networks in console(request).policy.exceptions.rooms
                if any(address in n for n in networks)]
    if asked.group_name in groups:
        options.append(ScopeOption(f"group:{asked.group_name}", f"All of {asked.group_name}"))
    return options


async def _it_team(request: Request) -> str:
    names = [a.username for a in await list_accounts(console(request).engine) if a.role is IT and a.active]
    return f"the IT team ({', '.join(names)})" if names else "the IT team"


@page(IT, TEACHER, DSL)
async def requests_page(request: Request, account: Account) -> Response:
    items = _visible_requests(request, account, await _store(request).requests())
    pending = [r for r in items if r.status == "pending"]
    decided = sorted((r for r in items if r.status != "pending"), key=lambda r: r.id, reverse=True)[:50]
    concerns = {r.id: concern for r in (*pending, *decided) if (concern := _concern(r))}
    await audit(request, account, "view.requests", "access_request", None, {"shown": len(pending) + len(decided)})
    if account.role is DSL:  # sees every request, decides none: IT and teachers open sites
        return render(request, "requests.html", account=account, pending=pending, decided=decided,
                      concerns=concerns, read_only=True, message="")
    policy = console(request).policy
    classes = await _store(request).classes()
    groups = _teacher_groups(request, account) if account.role is TEACHER else tuple(policy.groups)
    handled_elsewhere = {r.id: "; ".join(why) for r in pending if (why := _beyond_role(request, account, r))}
    it_team = await _it_team(request) if handled_elsewhere else ""
    return render(request, "requests.html", account=account, pending=pending, decided=decided,
                  concerns=concerns, read_only=False, handled_elsewhere=handled_elsewhere, it_team=it_team,
                  scopes={r.id: _asker_scopes(request, r, classes, groups) for r in pending},
                  durations=durations(policy, _role(account), datetime.now(UTC)),
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
    policy, role = console(request).policy, _role(account)
    if why := _beyond_role(request, account, asked):
        return _back("/requests", f"Request #{request_id} is for {await _it_team(request)} to decide: {'; '.join(why)}.")
    try:
        if not approve:
            await _store(request).decide_request(request_id, approve=False, actor=account.username, role=role, note=note)
            return _back("/requests", f"Request #{request_id} refused.")
        host = parse_url(asked.url).host
        scope = await _resolve_scope(request, account, await form_text(request, "scope", 200) or ASKER, "", asked)
        now = datetime.now(UTC)
        grant = GrantRequest(target=host, scope_kind=scope[0], scope=scope[1], starts_at=now,
                             ends_at=ends_at_for(policy, await form_text(request, "length", 10), now),
                             reason=f"request #{request_id}: {asked.reason}", actor=account.username, role=role,
                             label=scope[2])
        await _store(request).decide_request(request_id, approve=True, actor=account.username, role=role, note=note,
                                             policy=policy, grant=grant, listed_categories=await _listed_in(policy, host))
    except (GrantRefused, NotFound, InvalidHost) as e:
        return _back("/requests", f"Request #{request_id} not approved: {e}")
    whom = scope[2] or asked.username or asked.client_ip
    return _back("/requests", f"Request #{request_id} approved: {host} is open for {whom} "
                              f"until {grant.ends_at.astimezone():%H:%M on %d %b}.")


# --- managed lists and settings (IT) ---------------------------------------------------

def list_history(rows: list[Any]) -> list[dict[str, str]]:
    """The audit trail's list changes as who, when, what and why."""
    history = []
    for row in rows:
        before, after = json.loads(row.before or "{}"), json.loads(row.after or "{}")
        _, action, change = row.action.split(".")
        added = change == "add"
        history.append({"who": row.actor, "when": row.ts, "what": f"{'added to' if added else 'removed from'} the "
                        f"{action} list", "entry": (after if added else before).get("entry", ""),
                        "why": after.get("reason", "")})
    return history


@page(IT)
async def lists_page(request: Request, account: Account) -> Response:
    store = _store(request)
    return render(request, "lists.html", account=account, allow=await store.entries(Action.ALLOW),
                  block=await store.entries(Action.BLOCK), history=list_history(await list_changes(store.engine)),
                  message=request.query_params.get("message", ""))


@page(IT)
async def change_list(request: Request, account: Account) -> Response:
    action = Action(request.path_params["action"])
    entry = await form_text(request, "entry", 500)
    try:
        if (await form_text(request, "change", 10)) == "remove":
            await _store(request).remove_entry(action, entry, account.username, _role(account), await form_text(request, "reason"))
            return _back("/lists", f"Removed {entry} from the {action.value} list.")
        await _store(request).add_entry(action, entry, await form_text(request, "reason"), account.username,
                                        _role(account))
    except (GrantRefused, NotFound) as e:
        return _back("/lists", str(e))
    return _back("/lists", f"Added {entry} to the {action.value} list; gateways apply it within a second.")


@page(IT)
async def settings_page(request: Request, account: Account) -> Response:
    return render(request, "settings.html", account=account, policy=console(request).policy,
                  accounts=await list_accounts(console(request).engine),
                  lost=await console(request).lost.gaps(datetime.now(UTC)), lost_days=LOST_RECORDS_DAYS)
