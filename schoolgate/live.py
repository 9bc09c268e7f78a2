"""The live policy in the database: exceptions, managed allow/block entries and
access requests, each change written with its audit row and a bump of the
change counter in one transaction.

Every gateway process polls `live_version` (one integer) and reloads the live
state when it moves, so a change reaches all of them within a poll interval
without a restart. Used by the gateway, the CLI and (later) the console.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import CursorResult, delete, insert, select, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from schoolgate.categories.suffixes import public_suffix_problem
from schoolgate.db import (
    access_requests,
    audit_log,
    class_members,
    create_engine,
    exceptions,
    list_entries,
    live_version,
)
from schoolgate.grants import (
    AskedFor,
    Grant,
    GrantRefused,
    GrantRequest,
    LiveState,
    NotFound,
    ScopeKind,
    check,
    normalise_scope,
    parse_target,
)
from schoolgate.policy import Action, ListEntry, Policy, Role
from schoolgate.urls import InvalidHost, normalise_entry


@dataclass(frozen=True)
class AccessRequest:
    id: int
    ref: str | None
    created_at: datetime
    client_ip: str
    username: str | None
    group_name: str
    url: str
    host: str
    categories: tuple[str, ...]
    reason: str
    status: str
    decided_by: str | None
    decided_at: datetime | None
    note: str | None
    exception_id: int | None


# How long a pupil sees what became of a request (on its block page and "my requests").
REQUESTS_SHOWN_FOR = timedelta(days=7)


def _now() -> datetime:
    return datetime.now(UTC)


def _grant_from_row(row: Any) -> Grant:
    return Grant(
        id=row.id, kind=row.kind, host=row.host or "", path=row.path or "", category=row.category or "",
        scope_kind=ScopeKind(row.scope_kind),
        scope=normalise_scope(ScopeKind(row.scope_kind), row.scope),  # also rows from before user names were canonical
        starts_at=row.starts_at, ends_at=row.ends_at,
        granted_by=row.granted_by, role=row.granted_role, reason=row.reason, label=row.scope_label or "",
    )


def _managed_entry(text: str, role: Role) -> tuple[str, str]:
    """Check who may edit the managed lists and normalise the entry."""
    if role is not Role.IT_ADMIN:
        raise GrantRefused(["only IT admins change the allow and block lists"])
    try:
        return normalise_entry(text)
    except InvalidHost as e:
        raise GrantRefused([f"{text!r} is not a domain or URL: {e}"]) from e


def inserted_id(result: CursorResult[Any]) -> int:
    """The id the database gave the row just inserted."""
    key = result.inserted_primary_key
    assert key is not None
    return int(key[0])


def _json(values: dict[str, Any] | None) -> str | None:
    return None if values is None else json.dumps(values, default=str, sort_keys=True)


async def record_audit(conn: AsyncConnection, actor: str, role: str, action: str, kind: str,
                       object_id: int | None, before: dict | None, after: dict | None) -> None:
    """Append one row to the audit trail, in the caller's transaction (shared with the console)."""
    await conn.execute(insert(audit_log).values(
        ts=_now(), actor=actor, role=role, action=action, object_kind=kind, object_id=object_id,
        before=_json(before), after=_json(after),
    ))


class LiveStore:
    def __init__(self, engine: AsyncEngine):
        self.engine = engine

    # --- reading (the gateway's poll) ----------------------------------------------

    async def version(self) -> int:
        async with self.engine.connect() as conn:
            return (await conn.execute(select(live_version.c.version).where(live_version.c.id == 1))).scalar_one()

    async def load(self) -> LiveState:
        """Exceptions that have not ended (future ones included: they start on time
        without another change) and the managed list entries in force."""
        async with self.engine.connect() as conn:
            version = (await conn.execute(select(live_version.c.version).where(live_version.c.id == 1))).scalar_one()
            grants = (await conn.execute(
                select(exceptions).where(exceptions.c.revoked_at.is_(None), exceptions.c.ends_at > _now())
            )).all()
            entries = (await conn.execute(select(list_entries).where(list_entries.c.removed_at.is_(None)))).all()
            asked = (await conn.execute(
                select(access_requests, exceptions.c.ends_at, exceptions.c.revoked_at)
                .outerjoin(exceptions, exceptions.c.id == access_requests.c.exception_id)
                .where(access_requests.c.created_at > _now() - REQUESTS_SHOWN_FOR)
            )).all()
        return LiveState(
            version=version,
            grants=tuple(_grant_from_row(row) for row in grants),
            entries=tuple(
                ListEntry(host=row.host, path=row.path, action=Action(row.action),
                          source=f"managed list (added by {row.added_by})", text=row.entry)
                for row in entries
            ),
            requests=tuple(
                AskedFor(id=row.id, created_at=row.created_at, client_ip=row.client_ip, username=row.username,
                         host=row.host, url=row.url, status=row.status, decided_by=row.decided_by, note=row.note,
                         open_until=row.revoked_at or row.ends_at)
                for row in asked
            ),
        )

    async def grants(self, *, include_ended: bool = False) -> list[tuple[Grant, datetime | None]]:
        query = select(exceptions).order_by(exceptions.c.id)
        if not include_ended:
            query = query.where(exceptions.c.revoked_at.is_(None), exceptions.c.ends_at > _now())
        async with self.engine.connect() as conn:
            return [(_grant_from_row(row), row.revoked_at) for row in (await conn.execute(query)).all()]

    async def entries(self, action: Action) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.execute(
                select(list_entries).where(list_entries.c.action == action.value, list_entries.c.removed_at.is_(None))
                .order_by(list_entries.c.id)
            )).all())

    async def requests(self, status: str | None = None) -> list[AccessRequest]:
        query = select(access_requests).order_by(access_requests.c.id)
        if status:
            query = query.where(access_requests.c.status == status)
        async with self.engine.connect() as conn:
            return [AccessRequest(**{k: row._mapping[k] for k in AccessRequest.__dataclass_fields__})
                    for row in (await conn.execute(query)).all()]

    async def audit(self, limit: int = 100) -> list[Any]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(audit_log).order_by(audit_log.c.id.desc()).limit(limit))).all()
        return list(reversed(rows))

    # --- changes ---------------------------------------------------------------------

    async def _audit(self, conn: AsyncConnection, actor: str, role: str, action: str, kind: str,
                     object_id: int | None, before: dict | None, after: dict | None) -> None:
        await record_audit(conn, actor, role, action, kind, object_id, before, after)

    async def _bump(self, conn: AsyncConnection) -> None:
        await conn.execute(update(live_version).where(live_version.c.id == 1).values(version=live_version.c.version + 1))

    async def grant(self, policy: Policy, request: GrantRequest, listed_categories: set[str]) -> Grant:
        """Record an exception, or raise GrantRefused (the refused attempt is audited too)."""
        await self._refuse_unless_allowed(policy, request, listed_categories)
        async with self.engine.begin() as conn:
            grant = await self._insert_grant(conn, request, request_id=None)
            await self._bump(conn)
        return grant

    async def _refuse_unless_allowed(self, policy: Policy, request: GrantRequest, listed_categories: set[str]) -> None:
        problems = check(policy, request, listed_categories, _now())
        if not problems:
            return
        async with self.engine.begin() as conn:
            await self._audit(conn, request.actor, request.role, "exception.refused", "exception", None, None,
                              {"target": request.target, "for": f"{request.scope_kind.value} {request.scope}",
                               "until": request.ends_at.isoformat(), "reason": request.reason, "refused": problems})
        raise GrantRefused(problems)

    async def _insert_grant(self, conn: AsyncConnection, request: GrantRequest, request_id: int | None) -> Grant:
        kind, host, path, category = parse_target(request.target)
        scope = normalise_scope(request.scope_kind, request.scope)
        values = dict(
            kind=kind, host=host, path=path, category=category, scope_kind=request.scope_kind.value, scope=scope,
            starts_at=request.starts_at, ends_at=request.ends_at, reason=request.reason, granted_by=request.actor,
            granted_role=request.role.value, created_at=_now(), request_id=request_id, scope_label=request.label or None,
        )
        new_id = inserted_id(await conn.execute(insert(exceptions).values(**values)))
        await self._audit(conn, request.actor, request.role, "exception.grant", "exception", new_id, None, values)
        return Grant(id=new_id, kind=kind, host=host, path=path, category=category, scope_kind=request.scope_kind,
                     scope=scope, starts_at=request.starts_at, ends_at=request.ends_at, granted_by=request.actor,
                     role=request.role.value, reason=request.reason, label=request.label)

    async def revoke(self, grant_id: int, actor: str, role: Role) -> None:
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(exceptions).where(exceptions.c.id == grant_id))).first()
            if row is None or row.revoked_at is not None:
                raise NotFound(f"no exception #{grant_id} in force")
            if role is Role.TEACHER and row.granted_by != actor:
                raise GrantRefused(["teachers may revoke only the exceptions they granted"])
            now = _now()
            await conn.execute(update(exceptions).where(exceptions.c.id == grant_id).values(revoked_at=now, revoked_by=actor))
            await self._audit(conn, actor, role, "exception.revoke", "exception", grant_id,
                              {"ends_at": row.ends_at.isoformat(), "revoked_at": None}, {"revoked_at": now.isoformat()})
            await self._bump(conn)

    async def add_entry(self, action: Action, text: str, reason: str, actor: str, role: Role) -> int:
        host, path = _managed_entry(text, role)
        if not path and (too_wide := public_suffix_problem(host)):
            raise GrantRefused([f"{text!r} refused: {too_wide}; name the sites themselves"])
        async with self.engine.begin() as conn:
            existing = (await conn.execute(select(list_entries).where(
                list_entries.c.host == host, list_entries.c.path == path, list_entries.c.removed_at.is_(None)))).first()
            if existing is not None:
                raise GrantRefused([f"{text!r} is already on the {existing.action} list (#{existing.id})"])
            values = dict(action=action.value, entry=text, host=host, path=path, reason=reason,
                          added_by=actor, added_at=_now())
            new_id = inserted_id(await conn.execute(insert(list_entries).values(**values)))
            await self._audit(conn, actor, role, f"list.{action.value}.add", "list_entry", new_id, None, values)
            await self._bump(conn)
        return new_id

    async def remove_entry(self, action: Action, text: str, actor: str, role: Role, reason: str = "") -> None:
        host, path = _managed_entry(text, role)
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(list_entries).where(
                list_entries.c.action == action.value, list_entries.c.host == host, list_entries.c.path == path,
                list_entries.c.removed_at.is_(None)))).first()
            if row is None:
                raise NotFound(f"{text!r} is not on the managed {action.value} list")
            now = _now()
            await conn.execute(update(list_entries).where(list_entries.c.id == row.id).values(removed_at=now, removed_by=actor))
            await self._audit(conn, actor, role, f"list.{action.value}.remove", "list_entry", row.id,
                              {"entry": row.entry, "reason": row.reason}, {"removed_at": now.isoformat(), "reason": reason})
            await self._bump(conn)

    async def create_request(self, *, ref: str | None, client_ip: str, username: str | None, group: str,
                             url: str, host: str, categories: tuple[str, ...], reason: str) -> int:
        values = dict(ref=ref, created_at=_now(), client_ip=client_ip, username=username, group_name=group, url=url,
                      host=host, categories=categories, reason=reason[:1000], status="pending")
        async with self.engine.begin() as conn:
            new_id = inserted_id(await conn.execute(insert(access_requests).values(**values)))
            await self._audit(conn, username or client_ip, "pupil", "request.create", "access_request", new_id, None,
                              {k: v for k, v in values.items() if k != "created_at"})
            await self._bump(conn)  # the pupil's block page shows it as waiting
        return new_id

    async def decide_request(self, request_id: int, *, approve: bool, actor: str, role: Role, note: str,
                             policy: Policy | None = None, grant: GrantRequest | None = None,
                             listed_categories: set[str] | None = None) -> int | None:
        """Approve (creating the exception in the same transaction) or refuse a pending request.
        An approval is checked against the site's categories now and as they were when the
        pupil asked, so a teacher never approves what their role may not open."""
        if approve:
            assert policy is not None and grant is not None
            async with self.engine.connect() as conn:
                asked = (await conn.execute(select(access_requests.c.categories)
                                            .where(access_requests.c.id == request_id))).scalar()
            await self._refuse_unless_allowed(policy, grant, {*(listed_categories or ()), *(asked or ())})
        async with self.engine.begin() as conn:
            row = (await conn.execute(select(access_requests).where(access_requests.c.id == request_id))).first()
            if row is None:
                raise NotFound(f"no access request #{request_id}")
            if row.status != "pending":
                raise GrantRefused([f"request #{request_id} was already {row.status} by {row.decided_by}"])
            exception_id = (await self._insert_grant(conn, grant, request_id)).id if approve and grant else None
            status = "approved" if approve else "refused"
            after = dict(status=status, decided_by=actor, decided_role=role.value, decided_at=_now(), note=note,
                         exception_id=exception_id)
            await conn.execute(update(access_requests).where(access_requests.c.id == request_id).values(**after))
            await self._audit(conn, actor, role, f"request.{'approve' if approve else 'refuse'}", "access_request",
                              request_id, {"status": row.status}, after)
            await self._bump(conn)
        return exception_id


    # --- class lists ---------------------------------------------------------------------

    async def classes(self) -> dict[str, tuple[str, ...]]:
        async with self.engine.connect() as conn:
            rows = (await conn.execute(select(class_members.c.class_name, class_members.c.username)
                                       .order_by(class_members.c.class_name, class_members.c.username))).all()
        found: dict[str, list[str]] = {}
        for name, user in rows:
            found.setdefault(name, []).append(user)
        return {name: tuple(users) for name, users in found.items()}

    async def class_names(self, source: str) -> list[str]:
        """The classes whose members last came from `source` (e.g. "directory")."""
        async with self.engine.connect() as conn:
            return list((await conn.execute(select(class_members.c.class_name).distinct()
                                            .where(class_members.c.source == source)
                                            .order_by(class_members.c.class_name))).scalars())

    async def import_classes(self, members: Iterable[tuple[str, str]], source: str, actor: str) -> dict[str, int]:
        """Replace the members of each class named in `members` ((class, username) pairs);
        classes not named are left as they are. Returns each class's new size."""
        by_class: dict[str, set[str]] = {}
        for name, user in members:
            by_class.setdefault(name, set()).add(user)
        now = _now()
        async with self.engine.begin() as conn:
            for name, users in by_class.items():
                await conn.execute(delete(class_members).where(class_members.c.class_name == name))
                await conn.execute(insert(class_members), [
                    {"class_name": name, "username": user, "source": source, "updated_at": now} for user in sorted(users)])
            sizes = {name: len(users) for name, users in sorted(by_class.items())}
            await self._audit(conn, actor, Role.IT_ADMIN, "classes.import", "class_members", None, None,
                              {"source": source, "classes": sizes})
        return sizes


async def read_live(database_url: str) -> LiveState:
    """The live state as a gateway would load it (for `schoolgate explain`)."""
    engine = create_engine(database_url)
    try:
        return await LiveStore(engine).load()
    finally:
        await engine.dispose()
