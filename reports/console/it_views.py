"""IT tools: look up a block-page reference, test a URL as `schoolgate explain` does, and
search the access log. IT staff see what was decided and for which group and device; only a
DSL also sees who (user names) and what they searched for. Every use is audited."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from urllib.parse import urlencode, urlsplit, urlunsplit

from starlette.requests import Request
from starlette.responses import Response

from schoolgate.engine import Engine
from schoolgate.explain import Explanation, UnknownGroup, choose_group, directory_groups, explain
from schoolgate.live import LiveStore
from schoolgate.policy import PolicyInvalid
from schoolgate.records import AccessRecord, normalise_reference
from schoolgate.reports.accounts import Account, ConsoleRole
from schoolgate.reports.console.pages import audit, console, error, page, render
from schoolgate.reports.console.views import _local_day as local_day
from schoolgate.reports.queries import LogSearch, find_by_ref, search
from schoolgate.urls import InvalidHost, parse_target

IT, DSL = ConsoleRole.IT_ADMIN, ConsoleRole.DSL
SEARCH_DAYS = 7  # the log search's default range: today and the six days before
PAGE_ROWS = 50
VERDICTS = ("block", "warn", "proceed", "allow", "monitor")


def for_role(record: AccessRecord, account: Account) -> AccessRecord:
    """The record as this account may see it: IT staff get no user name, search term, flag
    detail or query string (a search's URL carries the term); the DSL sees everything."""
    if account.role is DSL:
        return record
    url = urlunsplit(urlsplit(record.url)._replace(query="", fragment="")) if record.url else record.url
    return replace(record, user=None, url=url, search_term=None, flag_detail=None)


# --- references and URL tests ----------------------------------------------------------

async def _engine_for_tests(request: Request) -> Engine:
    """The category index and policy as the gateway loads them, reloaded when a file changes,
    with the managed lists and exceptions in force now."""
    state = request.app.state
    cached: Engine | None = getattr(state, "explain_engine", None)
    if cached is None or cached.changed_on_disk():
        cached = await asyncio.to_thread(Engine.load, console(request).policy.path, cached)
        state.explain_engine = cached
    return cached.with_live(await LiveStore(console(request).engine).load())


async def _test_url(request: Request, wanted: dict[str, str]) -> tuple[Explanation | None, str]:
    """The explanation for the form's URL, or why there is none."""
    try:
        engine = await _engine_for_tests(request)
    except PolicyInvalid as e:  # saved mid-edit: the gateway keeps its last good policy, so say so
        return None, f"The policy on disk has {len(e.problems)} problem(s); run `schoolgate check`. Gateways keep the last good one."
    policy = engine.policy  # as reloaded from disk: the groups the gateway decides with
    try:
        target = parse_target(wanted["url"])
    except InvalidHost as e:
        return None, str(e)
    user = wanted["user"] or None
    try:
        groups = frozenset() if wanted["group"] else await asyncio.to_thread(directory_groups, policy, user)
    except OSError:
        groups, note = frozenset(), "The directory could not be asked for the user's groups; decided without them."
    else:
        note = ""
    try:
        group, how = choose_group(policy, wanted["group"], wanted["client"], user, groups, "chosen on the form")
    except UnknownGroup as e:
        return None, str(e)
    return explain(engine, target, group, how, datetime.now(UTC), user=user, client_ip=wanted["client"] or None), note


@page(IT, DSL)
async def tools_page(request: Request, account: Account) -> Response:
    params = request.query_params
    ref_text = params.get("ref", "").strip()[:40]
    wanted = {k: params.get(k, "").strip()[:500] for k in ("url", "group", "client", "user")}
    ref, records, explanation, note = "", [], None, ""
    if ref_text:
        ref = normalise_reference(ref_text)
        records = [for_role(r, account) for r in await find_by_ref(console(request).engine, ref)]
        await audit(request, account, "view.reference", "access_log", None, {"ref": ref, "shown": len(records)})
    if wanted["url"]:
        explanation, note = await _test_url(request, wanted)
        await audit(request, account, "view.test_url", "policy", None,
                    {k: v for k, v in wanted.items() if v} | {"answered": explanation is not None})
    policy = console(request).policy
    return render(request, "it_tools.html", account=account, ref_text=ref_text, ref=ref, records=records,
                  wanted=wanted, explanation=explanation, lines=explanation.lines(policy) if explanation else [],
                  note=note, groups=list(policy.groups), show_names=account.role is DSL)


# --- the access log ----------------------------------------------------------------------

def _log_search(request: Request, account: Account) -> tuple[LogSearch, dict[str, str], int | None]:
    """The search from the query string (raises ValueError), the values to show back, and the paging key."""
    params = request.query_params
    today = date.today()
    shown = {k: params.get(k, "").strip()[:500] for k in ("q", "from", "to", "group", "verdict", "user")}
    shown["from"] = shown["from"] or (today - timedelta(days=SEARCH_DAYS - 1)).isoformat()
    shown["to"] = shown["to"] or today.isoformat()
    start, last = local_day(shown["from"]), local_day(shown["to"])
    assert start is not None and last is not None
    if last < start:
        raise ValueError("the range ends before it starts")
    if shown["verdict"] and shown["verdict"] not in VERDICTS:
        raise ValueError("unknown outcome")
    if account.role is not DSL:
        shown["user"] = ""  # only the DSL searches by person
    before = params.get("before", "")
    before_id = int(before) if before.isascii() and before.isdigit() and len(before) <= 18 else None
    wanted = LogSearch(start=start, end=last + timedelta(days=1), text=shown["q"], group=shown["group"] or None,
                       verdict=shown["verdict"] or None, user=shown["user"] or None)
    return wanted, shown, before_id


@page(IT, DSL)
async def log_page(request: Request, account: Account) -> Response:
    try:
        wanted, shown, before_id = _log_search(request, account)
    except ValueError:
        return error(request, 400, "Search not understood",
                     "Dates are written 2026-11-23, the end on or after the start.", account)
    rows, more = await search(console(request).engine, wanted, before_id=before_id, limit=PAGE_ROWS)
    await audit(request, account, "view.log", "access_log", None,
                {"filter": wanted.describe(), "before": before_id, "shown": len(rows)})
    older = urlencode({**{k: v for k, v in shown.items() if v}, "before": rows[-1][0]}) if more else ""
    return render(request, "it_log.html", account=account, shown=shown, older=older, paged=before_id is not None,
                  rows=[(i, for_role(r, account)) for i, r in rows], groups=list(console(request).policy.groups),
                  verdicts=VERDICTS, show_names=account.role is DSL, first=urlencode(
                      {k: v for k, v in shown.items() if v}))
