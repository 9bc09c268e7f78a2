"""Console accounts: who may sign in to the review console, with which role.

Passwords are kept only as argon2id hashes (argon2-cffi's RFC 9106 "low memory"
profile: 64 MiB, 3 passes), re-hashed on sign-in whenever those parameters are
raised. Account changes are written to the audit trail.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import UTC, datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.db import console_accounts
from schoolgate.live import inserted_id, record_audit
from schoolgate.reports.passwords import weakness
from schoolgate.reports.roles import ConsoleRole

MIN_PASSWORD_LENGTH = 12
_HASHER = PasswordHasher()  # argon2id with argon2-cffi's current defaults


@functools.cache
def _dummy_hash() -> str:
    """Verified against when the user name is unknown, so a wrong name costs as long as a
    wrong password. Made on first use: hashing costs 64 MiB and tens of milliseconds."""
    return _HASHER.hash("schoolgate: no such account")


@dataclass(frozen=True, slots=True)
class Account:
    id: int
    username: str
    role: ConsoleRole
    groups: tuple[str, ...]
    created_at: datetime
    disabled_at: datetime | None

    @property
    def active(self) -> bool:
        return self.disabled_at is None


class AccountError(ValueError):
    pass


def _account(row: object) -> Account:
    return Account(id=row.id, username=row.username, role=ConsoleRole(row.role),  # type: ignore[attr-defined]
                   groups=row.groups,  # type: ignore[attr-defined]
                   created_at=row.created_at, disabled_at=row.disabled_at)  # type: ignore[attr-defined]


def check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"the password must be at least {MIN_PASSWORD_LENGTH} characters long")
    if reason := weakness(password):
        raise AccountError(f"that password is too easy to guess: {reason}. A few unrelated words make a good one")


async def add_account(engine: AsyncEngine, username: str, role: ConsoleRole, password: str,
                      groups: tuple[str, ...], actor: str) -> Account:
    username = username.strip()
    if not username or any(c.isspace() for c in username):
        raise AccountError("a user name is one word, without spaces")
    check_password(password)
    values = dict(username=username, role=role.value, password_hash=_HASHER.hash(password),
                  groups=groups, created_at=datetime.now(UTC))
    async with engine.begin() as conn:
        if (await conn.execute(select(console_accounts.c.id).where(console_accounts.c.username == username))).first():
            raise AccountError(f"there is already an account called {username!r}")
        new_id = inserted_id(await conn.execute(insert(console_accounts).values(**values)))
        await record_audit(conn, actor, "server", "account.add", "account", new_id, None,
                           {"username": username, "role": role.value, "groups": list(groups)})
    return (await get_account(engine, username))  # type: ignore[return-value]


async def get_account(engine: AsyncEngine, username: str) -> Account | None:
    async with engine.connect() as conn:
        row = (await conn.execute(select(console_accounts).where(console_accounts.c.username == username))).first()
    return _account(row) if row else None


async def list_accounts(engine: AsyncEngine) -> list[Account]:
    async with engine.connect() as conn:
        rows = (await conn.execute(select(console_accounts).order_by(console_accounts.c.username))).all()
    return [_account(row) for row in rows]


async def set_password(engine: AsyncEngine, username: str, password: str, actor: str) -> None:
    check_password(password)
    await _change(engine, username, actor, "account.passwd", password_hash=_HASHER.hash(password))


async def disable_account(engine: AsyncEngine, username: str, actor: str) -> None:
    """Refuse further sign-ins; the console ends the account's open sessions on their next request."""
    await _change(engine, username, actor, "account.disable", disabled_at=datetime.now(UTC))


async def _change(engine: AsyncEngine, username: str, actor: str, action: str, **values: object) -> None:
    async with engine.begin() as conn:
        row = (await conn.execute(select(console_accounts).where(console_accounts.c.username == username))).first()
        if row is None:
            raise AccountError(f"no account called {username!r}")
        await conn.execute(update(console_accounts).where(console_accounts.c.id == row.id).values(**values))
        # The hash itself is never written to the audit trail.
        await record_audit(conn, actor, "server", action, "account", row.id, None, {"username": username})


async def authenticate(engine: AsyncEngine, username: str, password: str) -> Account | None:
    """The active account if the password is right, else None (same work either way)."""
    async with engine.connect() as conn:
        row = (await conn.execute(select(console_accounts).where(console_accounts.c.username == username))).first()
    try:
        _HASHER.verify(row.password_hash if row else _dummy_hash(), password)
    except (VerificationError, InvalidHashError):
        return None
    if row is None or row.disabled_at is not None:
        return None
    if _HASHER.check_needs_rehash(row.password_hash):
        async with engine.begin() as conn:
            await conn.execute(update(console_accounts).where(console_accounts.c.id == row.id)
                               .values(password_hash=_HASHER.hash(password)))
    return _account(row)
