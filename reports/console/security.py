"""Sign-in, sessions, CSRF, login throttling and security headers for the console.

The session cookie (Starlette's SessionMiddleware: signed with the secret from
`[console] secret_file`, HttpOnly, SameSite=Strict) carries a random session
token and the CSRF token. The server keeps only the token's SHA-256 in
`console_sessions`, so signing out, disabling an account and the idle timeout
end a session for good, whatever a copied cookie says.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from schoolgate.db import console_sessions, login_attempts
from schoolgate.live import record_audit
from schoolgate.policy import IPNetwork
from schoolgate.reports.accounts import Account, authenticate, get_account
from schoolgate.urls import canonical_ip

IDLE_TIMEOUT = timedelta(minutes=30)
_TOUCH_EVERY = timedelta(minutes=1)  # last_seen is refreshed at most this often, not on every request

# Login throttling: failures in the window from one address, and from one address for one user name
# (since that user's last success from there). Never per user name alone: a pupil must not be able
# to lock the DSL out by typing wrong passwords for her name.
THROTTLE_WINDOW = timedelta(minutes=15)
MAX_FAILURES_PER_ADDRESS_AND_USER = 5
MAX_FAILURES_PER_ADDRESS = 20

CONTENT_SECURITY_POLICY = ("default-src 'none'; style-src 'self'; img-src 'self' data:; form-action 'self'; "
                           "frame-ancestors 'none'; base-uri 'none'")


def load_secret(path: Path) -> str:
    """The cookie-signing secret, created (0600) on first start."""
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(48) + "\n")
    secret = path.read_text(encoding="utf-8").strip()
    if len(secret) < 32:
        raise ValueError(f"{path}: the console secret is too short (at least 32 characters)")
    return secret


def client_address(request: Request, trusted_proxies: tuple[IPNetwork, ...]) -> str:
    """Where a request came from. X-Forwarded-For is believed only as far as it was written by
    `[console] trusted_proxies`: read right to left, the first address that is not a trusted proxy
    is the client. Anyone else's X-Forwarded-For is ignored."""
    address = canonical_ip(request.client.host) if request.client else None
    if address is None:
        return "unknown"
    hops = [hop.strip() for value in request.headers.getlist("x-forwarded-for") for hop in value.split(",")]
    while hops and _trusted(address, trusted_proxies):
        hop = canonical_ip(hops.pop())
        if hop is None:  # garbage from the far side of the proxy: the proxy is as far as we can tell
            break
        address = hop
    return address


def _trusted(address: str, proxies: tuple[IPNetwork, ...]) -> bool:
    ip = ipaddress.ip_address(address)
    return any(ip.version == net.version and ip in net for net in proxies)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _now() -> datetime:
    return datetime.now(UTC)


# --- CSRF ------------------------------------------------------------------------------

def csrf_token(request: Request) -> str:
    """This session's CSRF token (made on first use), for every POST form."""
    if "csrf" not in request.session:
        request.session["csrf"] = secrets.token_urlsafe(32)
    return str(request.session["csrf"])


async def csrf_ok(request: Request) -> bool:
    sent = (await request.form()).get("csrf")
    expected = request.session.get("csrf")
    return isinstance(sent, str) and isinstance(expected, str) and hmac.compare_digest(sent, expected)


# --- sessions --------------------------------------------------------------------------

async def start_session(engine: AsyncEngine, request: Request, account: Account) -> None:
    """A fresh session and CSRF token after sign-in (no fixation of a pre-login cookie)."""
    token = secrets.token_urlsafe(32)
    now = _now()
    async with engine.begin() as conn:
        await conn.execute(insert(console_sessions).values(
            token_hash=_hash(token), username=account.username, created_at=now, last_seen=now))
    request.session.clear()
    request.session.update(token=token, csrf=secrets.token_urlsafe(32))


async def end_session(engine: AsyncEngine, request: Request) -> None:
    token = request.session.get("token")
    if isinstance(token, str):
        async with engine.begin() as conn:
            await conn.execute(update(console_sessions).where(console_sessions.c.token_hash == _hash(token))
                               .values(ended_at=_now()))
    request.session.clear()


async def session_account(engine: AsyncEngine, request: Request) -> Account | None:
    """The signed-in, still active account, or None (ended, idle too long, disabled)."""
    token = request.session.get("token")
    if not isinstance(token, str):
        return None
    now = _now()
    async with engine.connect() as conn:
        row = (await conn.execute(select(console_sessions).where(
            console_sessions.c.token_hash == _hash(token), console_sessions.c.ended_at.is_(None)))).first()
    if row is None or now - row.last_seen > IDLE_TIMEOUT:
        return None
    account = await get_account(engine, row.username)
    if account is None or not account.active:
        return None
    if now - row.last_seen > _TOUCH_EVERY:
        async with engine.begin() as conn:
            await conn.execute(update(console_sessions).where(console_sessions.c.token_hash == row.token_hash)
                               .values(last_seen=now))
    return account


# --- sign-in with throttling -------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class SignIn:
    account: Account | None
    throttled: bool


async def sign_in(engine: AsyncEngine, username: str, password: str, address: str) -> SignIn:
    """Check a password unless the name or address has failed too often; audit every attempt."""
    username = username.strip()[:128]
    now = _now()
    if await _throttled(engine, username, address, now):
        async with engine.begin() as conn:
            await record_audit(conn, username or "-", "anonymous", "login.throttled", "account", None, None,
                               {"address": address})
        return SignIn(account=None, throttled=True)
    account = await authenticate(engine, username, password)
    async with engine.begin() as conn:
        await conn.execute(insert(login_attempts).values(ts=now, username=username, client_ip=address,
                                                         succeeded=int(account is not None)))
        if account is None:
            await record_audit(conn, username or "-", "anonymous", "login.failed", "account", None, None,
                               {"address": address})
        else:
            await record_audit(conn, account.username, account.role, "login.ok", "account", account.id, None,
                               {"address": address})
    return SignIn(account=account, throttled=False)


async def _throttled(engine: AsyncEngine, username: str, address: str, now: datetime) -> bool:
    a = login_attempts.c
    since = now - THROTTLE_WINDOW
    here = (a.client_ip == address, a.username == username)
    async with engine.connect() as conn:
        last_ok = (await conn.execute(select(func.max(a.ts)).where(*here, a.succeeded == 1))).scalar()
        user_since = max(since, last_ok) if last_ok else since
        by_user_here = (await conn.execute(select(func.count()).where(
            *here, a.succeeded == 0, a.ts > user_since))).scalar_one()
        by_address = (await conn.execute(select(func.count()).where(
            a.client_ip == address, a.succeeded == 0, a.ts > since))).scalar_one()
    return by_user_here >= MAX_FAILURES_PER_ADDRESS_AND_USER or by_address >= MAX_FAILURES_PER_ADDRESS


# --- headers ------------------------------------------------------------------------------

class SecurityHeaders:
    """CSP without scripts, no framing, no sniffing, no referrer, and no caching of personal data."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = CONTENT_SECURITY_POLICY
                headers["X-Content-Type-Options"] = "nosniff"
                headers["X-Frame-Options"] = "DENY"
                headers["Referrer-Policy"] = "no-referrer"
                if not scope["path"].startswith("/static/"):
                    headers["Cache-Control"] = "no-store"
            await send(message)

        await self.app(scope, receive, send_with_headers)
