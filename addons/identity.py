"""Who is asking: the client's address, and the user a sign-in names.

Proxy logins (Basic) are checked against an htpasswd file (bcrypt or SHA1) and/or the
school's directory (addons/directory.py). A password check is slow on purpose (bcrypt,
an LDAP bind), so `ProxyLogin` never runs one on the event loop, and a pupil cannot
use it to guess passwords or to stall everyone else:

- checks run in a small thread pool of their own, so other clients' requests go on;
- identical credentials checked at the same moment share one check (a browser opens
  six connections with the same header);
- a right answer is remembered for a while, a wrong one briefly (the negative cache),
  keyed by a hash, never the password;
- after `client_limit` wrong answers from one address, or `user_limit` for one user
  name from anywhere, further guesses are refused *without* a check, for a back-off
  that doubles with every further failure. A user whose right password is already
  remembered keeps working, so a pupil cannot lock a teacher out by guessing.

Nothing here logs a user name or an address: who tried to sign in from where is
access data, kept in the database, never in the service journal.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import bcrypt
from mitmproxy.utils.htpasswd import HtpasswdFile

from schoolgate.identities import Identity, LoginGuard, Source, canonical_user
from schoolgate.urls import canonical_ip


class BadCredentials(Exception):
    """Credentials were sent but are wrong, malformed or (for now) refused unchecked."""


class TooManyAttempts(BadCredentials):
    """Refused without a check: this client or user name failed too often."""

    def __init__(self, retry_after: float) -> None:
        super().__init__("too many wrong sign-ins; try again later")
        self.retry_after = retry_after


def client_address(peername: tuple) -> str:
    """Canonical text of the client's IP (IPv4-mapped IPv6 shown as IPv4)."""
    return canonical_ip(str(peername[0])) or str(peername[0])


def parse_basic(header: str) -> tuple[str, str]:
    """`Basic dXNlcjpwYXNz` -> (user, password); raises BadCredentials."""
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token:
        raise BadCredentials("only Basic proxy authentication is supported")
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError) as e:
        raise BadCredentials("malformed Basic credentials") from e
    user, sep, password = decoded.partition(":")
    if not sep or not user:
        raise BadCredentials("malformed Basic credentials")
    return user, password


class PasswordBackend(Protocol):
    """Something that checks a user's password (blocking: run in ProxyLogin's threads)."""

    key: str  # distinguishes backends in the caches

    def generation(self) -> object:
        """Changes when remembered answers must be forgotten (a password file edited)."""
        ...

    def check(self, user: str, password: str) -> Identity | None:
        """The identity for a right password, None for a wrong one; OSError if it cannot tell."""
        ...


# A bcrypt hash of nothing anyone types, checked for unknown users so that a wrong
# user name costs the same time as a wrong password (no user enumeration by timing).
_DUMMY_HASH = bcrypt.hashpw(b"\0schoolgate-no-such-user", bcrypt.gensalt(rounds=10))


class HtpasswdBackend:
    """Users in an htpasswd file (bcrypt or SHA1), re-read when the file changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.key = f"htpasswd:{path}"
        self._stamp: tuple[int, int] | None = None
        self._file: HtpasswdFile | None = None

    def knows(self, user: str) -> bool:
        return user in self._current().users

    def check(self, user: str, password: str) -> Identity | None:
        file = self._current()
        if user not in file.users:
            bcrypt.checkpw(password.encode("utf-8", "surrogatepass"), _DUMMY_HASH)
            return None
        return Identity(user, Source.PROXY_BASIC) if file.check_password(user, password) else None

    def _current(self) -> HtpasswdFile:
        st = self.path.stat()
        stamp = (st.st_mtime_ns, st.st_size)
        if self._file is None or self._stamp != stamp:
            file = HtpasswdFile.from_file(self.path)
            file.users = {canonical_user(user): line for user, line in file.users.items()}  # as names are looked up
            self._file, self._stamp = file, stamp
        return self._file

    def generation(self) -> object:
        st = self.path.stat()
        return (st.st_mtime_ns, st.st_size)


@dataclass(slots=True)
class _Remembered:
    identity: Identity | None  # None: a wrong password
    until: float


class ProxyLogin:
    """Checks Basic proxy credentials off the event loop, within the LoginGuard's limits."""

    REMEMBER_RIGHT = 300.0  # a browser sends the same header on every request
    REMEMBER_WRONG = 60.0  # the negative cache: a repeated wrong header costs nothing
    MAX_REMEMBERED = 20_000

    def __init__(self, guard: LoginGuard | None = None, *, threads: int = 2,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.guard = guard or LoginGuard(clock=clock)
        self.clock = clock
        self.checks = 0  # password checks actually run (tests and the bench read it)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="schoolgate-login")
        self._remembered: OrderedDict[bytes, _Remembered] = OrderedDict()
        self._in_flight: dict[bytes, asyncio.Future[Identity | None]] = {}
        self._generation: tuple = ()

    async def verify(self, client_ip: str, header: str, backends: list[PasswordBackend],
                     remember: float | None = None) -> Identity:
        """The identity a Proxy-Authorization header proves; raises BadCredentials
        (TooManyAttempts when refused unchecked) or OSError when no backend could tell."""
        user, password = parse_basic(header)
        return await self.check(client_ip, user, password, backends, remember)

    async def check(self, client_ip: str, user: str, password: str, backends: list[PasswordBackend],
                    remember: float | None = None) -> Identity:
        """The same check for a user name and password typed into the sign-in page."""
        user = canonical_user(user)  # counted, checked and named in one form, whatever case was typed
        self._forget_if_changed(backends)
        key = hashlib.sha256("\0".join([*(b.key for b in backends), user, password]).encode("utf-8", "surrogatepass")).digest()
        now = self.clock()
        known = self._remembered.get(key)
        if known is not None and known.until > now:
            if known.identity is None:
                raise BadCredentials("wrong user name or password")
            return known.identity
        if (wait := self.guard.wait(client_ip, user)) > 0:
            raise TooManyAttempts(wait)
        pending = self._in_flight.get(key)
        if pending is None:
            pending = asyncio.get_running_loop().run_in_executor(self._pool, self._check, backends, user, password)
            self._in_flight[key] = pending
            pending.add_done_callback(lambda _: self._in_flight.pop(key, None))
        identity = await asyncio.shield(pending)
        if identity is None:
            self.guard.failed(client_ip, user)
            self._remember(key, None, self.REMEMBER_WRONG)
            raise BadCredentials("wrong user name or password")
        self.guard.succeeded(client_ip, user)
        self._remember(key, identity, self.REMEMBER_RIGHT if remember is None else remember)
        return identity

    async def negotiate(self, client_ip: str, header: str, accept: Callable[[str], Identity]) -> Identity:
        """A Kerberos ticket (`Negotiate <token>`), checked in the pool; `accept` raises on a bad
        ticket, which counts against the client's limit like a wrong password. Tickets are
        never remembered: each one is new, and the keytab's replay cache refuses a reused one."""
        if (wait := self.guard.wait(client_ip, None)) > 0:
            raise TooManyAttempts(wait)
        try:
            identity = await asyncio.get_running_loop().run_in_executor(self._pool, accept, header)
        except OSError:
            raise
        except Exception as e:
            self.guard.failed(client_ip, None)  # a bad ticket names no one: it counts against this device only
            raise BadCredentials(f"the Kerberos ticket was refused: {e}") from e
        return identity

    async def run(self, call: Callable, *args):
        """Another blocking identity call (a directory group lookup) in the same pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, call, *args)

    def _check(self, backends: list[PasswordBackend], user: str, password: str) -> Identity | None:
        self.checks += 1
        for backend in backends:
            if isinstance(backend, HtpasswdBackend) and len(backends) > 1 and not backend.knows(user):
                continue  # the file does not list them: the directory decides
            return backend.check(user, password)
        return None

    def _remember(self, key: bytes, identity: Identity | None, seconds: float) -> None:
        self._remembered[key] = _Remembered(identity, self.clock() + seconds)
        self._remembered.move_to_end(key)
        while len(self._remembered) > self.MAX_REMEMBERED:
            self._remembered.popitem(last=False)

    def _forget_if_changed(self, backends: list[PasswordBackend]) -> None:
        """A removed user or a changed password takes effect at once."""
        generation = tuple((b.key, b.generation()) for b in backends)
        if generation != self._generation:
            self._remembered.clear()
            self._generation = generation

