"""The sign-in page, for devices that cannot do proxy sign-in (iPads, Chromebooks, BYOD).

Served by the gateway itself at `[portal] host` (e.g. `signin.school.uk`: requests for
that name are answered here and never leave the gateway). A pupil signs in with a
directory password or with the school's OpenID Connect provider (Entra ID, Google
Workspace); the device's address is then theirs for `session_hours` (identity source
"portal"), until they sign out or another person signs in on it.

Forms carry a per-browser token (double-submit cookie), so another site cannot sign a
device in or out. Wrong passwords count against the same limits as proxy sign-in.
"""

from __future__ import annotations

import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlencode, urlsplit

from mitmproxy import http

from schoolgate.addons.identity import BadCredentials, PasswordBackend, ProxyLogin, TooManyAttempts, client_address
from schoolgate.addons.oidc import OidcClient, OidcError
from schoolgate.addons.pages import SECURITY_HEADERS, TEMPLATES
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.responses import fail_closed
from schoolgate.identities import AddressSessions, Identity, Source
from schoolgate.policy import PortalSettings

if TYPE_CHECKING:
    from schoolgate.addons.identify import Identification

log = logging.getLogger("schoolgate")

CSRF_COOKIE = "schoolgate_portal"
PORTAL_ORIGIN = "portal"  # the origin of the address sessions this page makes
# The gateway's page headers, and never inside another site's frame (a sign-in form there could be clickjacked).
_HEADERS = {**SECURITY_HEADERS,
            "Content-Security-Policy": SECURITY_HEADERS["Content-Security-Policy"] + "; frame-ancestors 'none'"}


@dataclass(frozen=True, slots=True)
class School:
    name: str
    contact: str


def portal_url(settings: PortalSettings, back_to: str) -> str:
    """Where an unsigned device is sent, with where it was going."""
    return f"https://{settings.host}/?{urlencode({'to': back_to})}"


class PortalPages:
    """Answers every request for the portal's host."""

    def __init__(self, sessions: AddressSessions, login: ProxyLogin) -> None:
        self.sessions = sessions
        self.login = login
        self._oidc: tuple[object, OidcClient] | None = None

    def oidc(self, settings: PortalSettings) -> OidcClient | None:
        if not settings.oidc.enabled:
            return None
        if self._oidc is None or self._oidc[0] != settings.oidc:
            self._oidc = (settings.oidc, OidcClient(settings.oidc))
        return self._oidc[1]

    async def answer(self, flow: http.HTTPFlow, client_ip: str, settings: PortalSettings,
                     backends: list[PasswordBackend], school: School) -> None:
        request = flow.request
        path = urlsplit(request.path).path
        query = {k: v[0] for k, v in parse_qs(urlsplit(request.path).query).items()}
        csrf = request.cookies.get(CSRF_COOKIE) or ""
        if request.method == "POST":
            form = {k: v[0] for k, v in parse_qs(request.get_text(strict=False) or "").items()}
            if not csrf or not secrets.compare_digest(form.get("csrf", ""), csrf):
                flow.response = self._page(settings, school, client_ip, error="This form has expired. Please try again.")
                return
            if path == "/sign-in" and settings.passwords:
                await self._password(flow, client_ip, form, settings, backends, school)
                return
            if path == "/sign-out":
                self.sessions.end(client_ip, origin=PORTAL_ORIGIN)
                flow.response = self._page(settings, school, client_ip, error=None)
                return
        elif path == "/oidc" and (client := self.oidc(settings)):
            try:
                location = await client.start(client_ip, f"https://{settings.host}/callback", _safe(query.get("to")))
            except (OidcError, OSError, ValueError) as e:
                log.warning("OpenID Connect sign-in could not start: %s", e)
                flow.response = self._page(settings, school, client_ip,
                                           error="Signing in with your school account is not working just now.")
                return
            flow.response = http.Response.make(302, b"", {"Location": location, "Cache-Control": "no-store"})
            return
        elif path == "/callback" and (client := self.oidc(settings)):
            try:
                if "error" in query:
                    raise OidcError(f"the provider said {query['error']}")
                identity, back_to = await client.finish(client_ip, query.get("state", ""), query.get("code", ""))
            except (OidcError, OSError, ValueError) as e:
                log.info("an OpenID Connect sign-in was refused: %s", e)
                flow.response = self._page(settings, school, client_ip, error="That sign-in did not work. Please try again.")
                return
            self._signed_in(flow, client_ip, identity, settings, back_to, school)
            return
        flow.response = self._page(settings, school, client_ip, to=_safe(query.get("to")))

    async def _password(self, flow: http.HTTPFlow, client_ip: str, form: dict[str, str], settings: PortalSettings,
                        backends: list[PasswordBackend], school: School) -> None:
        user, password = form.get("user", "").strip(), form.get("password", "")
        try:
            if not user or not backends:
                raise BadCredentials("no user name")
            found = await self.login.check(client_ip, user, password, backends)
        except TooManyAttempts:
            flow.response = self._page(settings, school, client_ip, error="Too many wrong passwords. Try again later.")
            return
        except (BadCredentials, OSError) as e:
            if not isinstance(e, BadCredentials):
                log.warning("a portal sign-in could not be checked: %s", e)
            flow.response = self._page(settings, school, client_ip, error="Wrong user name or password.")
            return
        identity = Identity(found.user, Source.PORTAL, found.directory_groups)
        # A page that goes on by itself, not a redirect: browsers hold a form's redirect to another
        # site to the page's form-action rule.
        self.sessions.start(client_ip, identity, settings.session_hours * 3600, PORTAL_ORIGIN)
        flow.response = self._page(settings, school, client_ip, next_url=_safe(form.get("to")))

    def _signed_in(self, flow: http.HTTPFlow, client_ip: str, identity: Identity, settings: PortalSettings,
                   back_to: str, school: School) -> None:
        self.sessions.start(client_ip, identity, settings.session_hours * 3600, PORTAL_ORIGIN)
        if back_to:
            flow.response = http.Response.make(303, b"", {"Location": back_to, "Cache-Control": "no-store"})
        else:
            flow.response = self._page(settings, school, client_ip)

    def _page(self, settings: PortalSettings, school: School, client_ip: str, *, error: str | None = None,
              to: str = "", next_url: str = "") -> http.Response:
        identity = self.sessions.get(client_ip)
        csrf = secrets.token_urlsafe(24)
        until = datetime.now() + timedelta(hours=settings.session_hours)
        page = TEMPLATES.get_template("portal.html").render(
            school=school.name, contact=school.contact, error=error, to=to, csrf=csrf, next_url=next_url,
            user=identity.user if identity and identity.source is Source.PORTAL else None,
            until=until.strftime("%H:%M"), passwords=settings.passwords, oidc=settings.oidc.enabled)
        response = http.Response.make(401 if error and "password" in error else 200, page, _HEADERS)
        response.headers["Set-Cookie"] = f"{CSRF_COOKIE}={csrf}; Path=/; Secure; HttpOnly; SameSite=Strict"
        return response


MAX_BACK_TO = 4096  # kept with every sign-in started: a longer one is dropped (the page is shown instead)


def _safe(to: str | None) -> str:
    """Only an http(s) address is a place to go back to."""
    if not to or len(to) > MAX_BACK_TO:
        return ""
    parts = urlsplit(to)
    return to if parts.scheme in ("http", "https") and parts.netloc else ""


class Portal:
    """The add-on: answers CONNECTs and requests for `[portal] host` itself (listed
    before Connections and SchoolGate in addons/script.py)."""

    def __init__(self, policy: PolicyWatch, identification: Identification) -> None:
        self.policy = policy
        self.identification = identification
        self.pages = PortalPages(identification.sessions, identification.login)

    def _settings(self) -> PortalSettings | None:
        engine = self.policy.engine
        return engine.policy.portal if engine is not None and engine.policy.portal.enabled else None

    @fail_closed
    def http_connect(self, flow: http.HTTPFlow) -> None:
        settings = self._settings()
        if settings is None or flow.response or flow.request.host.lower().rstrip(".") != settings.host:
            return
        # Accepted here, so an unsigned device reaches the page even when its group blocks unknown sites;
        # the TLS inside is decrypted with the school CA and every request answered by `request`.
        flow.response = http.Response(flow.request.data.http_version, 200, b"Connection established", http.Headers(),
                                      b"", None, time.time(), time.time())

    @fail_closed
    async def request(self, flow: http.HTTPFlow) -> None:
        settings = self._settings()
        if settings is None or flow.response or flow.request.pretty_host.lower().rstrip(".") != settings.host:
            return
        assert self.policy.engine is not None
        policy = self.policy.engine.policy
        await self.pages.answer(flow, client_address(flow.client_conn.peername), settings,
                                self.identification.backends(policy), School(policy.school.name, policy.school.contact))
