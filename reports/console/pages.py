"""What every console page shares: the signed-in account, role checks, CSRF on POST, rendering."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import wraps
from typing import Any
from urllib.parse import quote

from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from schoolgate.live import record_audit
from schoolgate.policy import Policy
from schoolgate.reports.accounts import Account, ConsoleRole
from schoolgate.reports.console.security import csrf_ok, csrf_token, session_account
from schoolgate.reports.console.templating import environment
from schoolgate.reports.queries import LostRecords

Handler = Callable[[Request, Account], Awaitable[Response]]
# Counts shown beside a navigation entry (path -> what waits there for this account), registered by the pages.
BADGES: dict[str, Callable[[Request, Account], Awaitable[int]]] = {}

# The pages each role sees in the navigation, in order: (path, label, roles).
NAVIGATION = (
    ("/incidents", "Flagged queue", {ConsoleRole.DSL}),
    ("/requests", "Access requests", {ConsoleRole.IT_ADMIN, ConsoleRole.TEACHER, ConsoleRole.DSL}),
    ("/exceptions", "Exceptions", {ConsoleRole.IT_ADMIN, ConsoleRole.TEACHER}),
    ("/lists", "Allow and block lists", {ConsoleRole.IT_ADMIN}),
    ("/it", "IT tools", {ConsoleRole.IT_ADMIN, ConsoleRole.DSL}),
    ("/report", "Report", {ConsoleRole.DSL, ConsoleRole.IT_ADMIN}),
    ("/selfcheck", "Self-check", {ConsoleRole.DSL, ConsoleRole.IT_ADMIN}),
    ("/settings", "Settings", {ConsoleRole.IT_ADMIN}),
)


@dataclass(frozen=True)
class Console:
    """What the handlers need, kept on app.state."""

    policy: Policy
    engine: AsyncEngine
    lost: LostRecords  # gaps in the gateways' records, for the queue and settings pages


def console(request: Request) -> Console:
    return request.app.state.console  # type: ignore[no-any-return]


def home_for(account: Account) -> str:
    return next(path for path, _, roles in NAVIGATION if account.role in roles)


def _nav(account: Account | None) -> list[tuple[str, str]]:
    return [(path, label) for path, label, roles in NAVIGATION if account and account.role in roles]


def render(request: Request, template: str, *, status: int = 200, account: Account | None = None,
           **context: Any) -> HTMLResponse:
    nav = _nav(account)
    badges = getattr(request.state, "badges", {})
    html = environment().get_template(template).render(badges=badges,
        request_path=request.url.path, account=account, nav=nav, csrf=csrf_token(request),
        school=console(request).policy.school.name, standalone=False, **context)
    return HTMLResponse(html, status_code=status)


def error(request: Request, status: int, title: str, message: str, account: Account | None = None) -> HTMLResponse:
    return render(request, "error.html", status=status, account=account, title=title, message=message)


async def audit(request: Request, account: Account, action: str, kind: str, object_id: int | None,
                details: dict[str, Any] | None = None) -> None:
    """Record that an account saw or changed something (views of identifying data, console changes)."""
    async with console(request).engine.begin() as conn:
        await record_audit(conn, account.username, account.role, action, kind, object_id, None, details)


def page(*roles: ConsoleRole) -> Callable[[Handler], Callable[[Request], Awaitable[Response]]]:
    """Require a signed-in account with one of `roles`, and a valid CSRF token on POST."""

    def decorate(handler: Handler) -> Callable[[Request], Awaitable[Response]]:
        @wraps(handler)
        async def endpoint(request: Request) -> Response:
            account = await session_account(console(request).engine, request)
            if account is None:
                return RedirectResponse(f"/login?next={quote(request.url.path)}", status_code=303)
            if account.role not in roles:
                await audit(request, account, "denied", "page", None, {"path": request.url.path})
                return error(request, 403, "Not available to your role",
                             f"This page is not open to the {account.role.title.lower()} role. "
                             "Ask your safeguarding lead or IT team if you need it.", account)
            if request.method == "POST" and not await csrf_ok(request):
                return error(request, 403, "Form expired",
                             "This form was out of date or did not come from the console. Go back, reload the page "
                             "and try again.", account)
            request.state.badges = {path: count for path, label in _nav(account) if path in BADGES
                                    and (count := await BADGES[path](request, account))}
            return await handler(request, account)

        return endpoint

    return decorate


async def form_text(request: Request, name: str, limit: int = 2000) -> str:
    value = (await request.form()).get(name)
    return value.strip()[:limit] if isinstance(value, str) else ""
