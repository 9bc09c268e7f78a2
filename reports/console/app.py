"""The console's ASGI app and `schoolgate console`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import uvicorn
from starlette.applications import Starlette
from starlette.convertors import Convertor, register_url_convertor
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.sessions import SessionMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from schoolgate.db import create_engine, upgrade
from schoolgate.policy import Policy
from schoolgate.reports.console import it_views, live_views, pupil_views, views
from schoolgate.reports.console.pages import Console, error
from schoolgate.reports.console.security import IDLE_TIMEOUT, SecurityHeaders, load_secret
from schoolgate.reports.queries import LostRecords
from schoolgate.reports.reminders import remind_periodically
from schoolgate.reports.retention import purge_daily

log = logging.getLogger("schoolgate.console")

class RowId(Convertor[int]):
    """A row id in a path: at most 18 digits, so `/requests/99999999999999999999/approve`
    is a 404 rather than an integer the database cannot hold (a 500)."""

    regex = "[0-9]{1,18}"

    def convert(self, value: str) -> int:
        return int(value)

    def to_string(self, value: int) -> str:
        return str(value)


register_url_convertor("row", RowId())

ROUTES = [
    Route("/", views.home),
    Route("/login", views.login, methods=["GET", "POST"]),
    Route("/logout", views.logout, methods=["POST"]),
    Route("/incidents", views.queue),
    Route("/incidents.csv", views.queue_csv),
    Route("/incidents/bulk", views.queue_bulk, methods=["POST"]),
    Route("/incidents/{key}", views.incident, methods=["GET", "POST"]),
    Route("/incidents/{key}/export.csv", views.incident_csv),
    Route("/incidents/{key}/outcomes", pupil_views.record_outcome, methods=["POST"]),
    Route("/incidents/{key}/referral.pdf", pupil_views.incident_referral),
    Route("/incidents/{key}/referral.csv", pupil_views.incident_referral),
    Route("/pupils/{user}", pupil_views.pupil_page),
    Route("/pupils/{user}/notes", pupil_views.pupil_note, methods=["POST"]),
    Route("/pupils/{user}/watch", pupil_views.pupil_watch, methods=["POST"]),
    Route("/pupils/{user}/referral.pdf", pupil_views.pupil_referral),
    Route("/pupils/{user}/referral.csv", pupil_views.pupil_referral),
    Route("/devices/{ip}", pupil_views.device_page),
    Route("/report", views.report_page),
    Route("/report.csv", views.report_download),
    Route("/selfcheck", views.selfcheck_page, methods=["GET", "POST"]),
    Route("/exceptions", live_views.exceptions_page),
    Route("/exceptions/grant", live_views.grant_exception, methods=["POST"]),
    Route("/exceptions/{id:row}/revoke", live_views.revoke_exception, methods=["POST"]),
    Route("/requests", live_views.requests_page),
    Route("/requests/{id:row}/{decision:str}", live_views.decide_request, methods=["POST"]),
    Route("/lists", live_views.lists_page),
    Route("/lists/{action:str}", live_views.change_list, methods=["POST"]),
    Route("/settings", live_views.settings_page),
    Route("/it", it_views.tools_page),
    Route("/it/log", it_views.log_page),
    Mount("/static", StaticFiles(packages=[("schoolgate.reports.console", "static")]), name="static"),
]


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    titles = {404: "Page not found", 405: "Not allowed"}
    return error(request, status, titles.get(status, "Something went wrong"), "Use the menu to find your way back.")


def create_app(policy: Policy, secret: str, *, purge_in_background: bool = True) -> Starlette:
    """The console over the policy's database, whose schema must be up to date.

    The engine is made and disposed of in the serving event loop (lifespan); the
    retention purge runs there too, daily, unless `purge_in_background` is off, and so do
    the reminders about unreviewed incidents when the policy has an alert channel."""

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        engine = create_engine(policy.gateway.database)
        app.state.console = Console(policy=policy, engine=engine, lost=LostRecords(engine))
        tasks = [asyncio.create_task(purge_daily(engine, policy))] if purge_in_background else []
        if policy.alerts.enabled and policy.alerts.reminders.max_reminders:
            tasks.append(asyncio.create_task(remind_periodically(engine, policy)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await engine.dispose()

    return Starlette(
        routes=ROUTES,
        middleware=[
            Middleware(SecurityHeaders),
            # Re-issued on every response, so max_age is the idle timeout in the browser too.
            Middleware(SessionMiddleware, secret_key=secret, session_cookie="schoolgate_console",
                       max_age=int(IDLE_TIMEOUT.total_seconds()), same_site="strict", https_only=False),
        ],
        exception_handlers={HTTPException: _http_error},
        lifespan=lifespan,
    )


def server_config(app: Starlette, host: str, port: int) -> uvicorn.Config:
    """How the console is served. No access log: its lines would carry addresses and filter
    values (user names). No proxy headers: uvicorn would believe X-Forwarded-For from any local
    process (the gateway included); the app reads it itself, from `[console] trusted_proxies` only."""
    return uvicorn.Config(app, host=host, port=port, access_log=False, server_header=False, log_level="warning",
                          proxy_headers=False)


def serve(policy: Policy, host: str, port: int) -> None:
    """Upgrade the schema, then serve until interrupted (`schoolgate console`)."""
    secret = load_secret(policy.console.secret_file)
    asyncio.run(upgrade(policy.gateway.database))
    log.info("review console on http://%s:%d/", host, port)
    uvicorn.Server(server_config(create_app(policy, secret), host, port)).run()
