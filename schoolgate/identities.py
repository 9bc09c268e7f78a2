"""Identities, as the request path, the records and the console share them: who a
request came from and how that was learnt, and the sign-in failure limits. Plain
Python (no I/O library), so decisions and tests can use it anywhere."""

from __future__ import annotations

import time
import unicodedata
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum


class Source(StrEnum):
    """How the identity on a record was obtained."""

    NETWORK = "network"  # the client's address is on a network a group lists
    PROXY_BASIC = "proxy-basic"  # a proxy login (htpasswd or directory password)
    KERBEROS = "kerberos"  # Negotiate single sign-on
    PORTAL = "portal"  # the sign-in page mapped this address to a user
    ACCOUNTING = "accounting"  # a Wi-Fi controller said who is on this address (RADIUS)
    UNKNOWN = "unknown"  # nothing identified the device: the unknown-users group applies


@dataclass(frozen=True, slots=True)
class Identity:
    user: str | None
    source: Source
    directory_groups: frozenset[str] = frozenset()  # names and DNs of the user's directory groups and OUs


@dataclass(slots=True)
class _Strikes:
    count: int
    first: float
    locked_until: float = 0.0


class LoginGuard:
    """Failure limits per client address and per user name, with a doubling back-off.

    Plain Python with an injectable clock: `wait` says how long a key must wait before
    its next check (0: go ahead), `failed` and `succeeded` update the counts."""

    def __init__(self, *, client_limit: int = 5, user_limit: int = 20, window: float = 900.0,
                 lockout: float = 30.0, max_lockout: float = 900.0, max_keys: int = 50_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.client_limit, self.user_limit = client_limit, user_limit
        self.window, self.lockout, self.max_lockout = window, lockout, max_lockout
        self.max_keys = max_keys
        self.clock = clock
        self._strikes: OrderedDict[tuple[str, str], _Strikes] = OrderedDict()

    def wait(self, client: str, user: str | None) -> float:
        """`user` None: a sign-in that names no one yet (a Kerberos ticket), limited per client only."""
        now = self.clock()
        return max([0.0, *(s.locked_until - now for s in self._current(client, user))])

    def failed(self, client: str, user: str | None) -> None:
        now = self.clock()
        keys = [(("client", client), self.client_limit)]
        if user is not None:
            keys.append((("user", user), self.user_limit))
        for key, limit in keys:
            strikes = self._strikes.get(key)
            if strikes is None or now - strikes.first > self.window and strikes.locked_until <= now:
                strikes = _Strikes(0, now)
            strikes.count += 1
            if strikes.count >= limit:
                strikes.locked_until = now + min(self.max_lockout, self.lockout * 2 ** (strikes.count - limit))
            self._strikes[key] = strikes
            self._strikes.move_to_end(key)
        while len(self._strikes) > self.max_keys:  # a flood of made-up names cannot exhaust memory
            self._strikes.popitem(last=False)

    def succeeded(self, client: str, user: str) -> None:
        self._strikes.pop(("client", client), None)
        self._strikes.pop(("user", user), None)

    def _current(self, client: str, user: str | None) -> list[_Strikes]:
        keys = [("client", client), *((("user", user),) if user is not None else ())]
        return [s for key in keys if (s := self._strikes.get(key))]


def canonical_user(name: str) -> str:
    """The one form of a user name, wherever it comes from (proxy sign-in, the sign-in
    page, a Kerberos principal, RADIUS, OpenID Connect, policy `users`, exceptions):
    `J.Smith`, ` j.smith ` and the full-width `Ｊ.Smith` are all `j.smith`, so a pupil
    cannot change case to escape a per-user group or exception, or to reset the count
    of wrong guesses at a name. Directories compare names without case too."""
    return unicodedata.normalize("NFKC", name).strip().lower()


def plain_user_name(name: str) -> str:
    """A user name without its realm or domain: `amy.b@school.uk`, `SCHOOL\\amy.b` -> `amy.b`."""
    return name.rsplit("\\", 1)[-1].split("@", 1)[0]


@dataclass(slots=True)
class _AddressSession:
    identity: Identity
    until: float
    origin: str  # who said so: the Wi-Fi controller's address, or "portal"


class AddressSessions:
    """Which user is on which device address, as the sign-in page or a Wi-Fi
    controller said, until the session ends or expires. The newest word wins.

    `on_change(address, identity or None, seconds, origin)` hears every local change
    (to share it with the other gateway processes); `apply` takes theirs without echo."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.on_change: Callable[[str, Identity | None, float, str], None] | None = None
        self._sessions: dict[str, _AddressSession] = {}

    def start(self, address: str, identity: Identity, seconds: float, origin: str) -> None:
        self.apply(address, identity, seconds, origin)
        self._tell(address, identity, seconds, origin)

    def end(self, address: str, user: str | None = None, origin: str | None = None) -> None:
        """A Stop for `user` ends the session only if it is still theirs (an old Stop
        arriving after a new pupil's Start must not sign the new one out); with `origin`,
        only a session that source made (signing out of the sign-in page leaves a Wi-Fi
        controller's session alone: the pupil is still on that device)."""
        session = self._sessions.get(address)
        if session is not None and (user is None or session.identity.user == user) \
                and (origin is None or session.origin == origin):
            del self._sessions[address]
            self._tell(address, None, 0, session.origin)

    def end_from(self, origin: str) -> None:
        """A controller restarted (Accounting-On/Off): every session it reported is over."""
        for address in [a for a, s in self._sessions.items() if s.origin == origin]:
            del self._sessions[address]
            self._tell(address, None, 0, origin)

    def apply(self, address: str, identity: Identity | None, seconds: float, origin: str) -> None:
        """A change made here or by another gateway process (None or no time left: ended)."""
        if identity is None or seconds <= 0:
            self._sessions.pop(address, None)
        else:
            self._sessions[address] = _AddressSession(identity, self.clock() + seconds, origin)

    def get(self, address: str) -> Identity | None:
        session = self._sessions.get(address)
        if session is None:
            return None
        if session.until <= self.clock():
            del self._sessions[address]
            return None
        return session.identity

    def remaining(self, address: str) -> float:
        session = self._sessions.get(address)
        return max(0.0, session.until - self.clock()) if session else 0.0

    def __len__(self) -> int:
        return len(self._sessions)

    def _tell(self, address: str, identity: Identity | None, seconds: float, origin: str) -> None:
        if self.on_change is not None:
            self.on_change(address, identity, seconds, origin)
