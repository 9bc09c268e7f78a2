"""CLI for the live policy: managed allow/block lists, exceptions, access requests
and the audit trail. Changes reach every running gateway within a second.

The operator is named with --by (default: the login name) and acts as --role
(default it_admin); every change is written to the audit trail with both.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import re
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from schoolgate.commandline import add_policy_option, load_policy_or_exit
from schoolgate.vocabulary import Action, Role

# The parser (built for every `schoolgate` command) needs only the words above: the
# grants and policy code is imported by the commands that run it.
if TYPE_CHECKING:
    from schoolgate.grants import GrantRequest, ScopeKind
    from schoolgate.live import LiveStore
    from schoolgate.policy import Policy


class UsageError(ValueError):
    pass


def parse_when(text: str, now: datetime) -> datetime:
    """`+45m`, `+2h`, `+30s`, `+1d`, `14:30` (today, local time) or an ISO date-time."""
    if m := re.fullmatch(r"\+(\d+)([smhd])", text.strip()):
        unit = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}[m.group(2)]
        return now + timedelta(**{unit: int(m.group(1))})
    if re.fullmatch(r"\d{1,2}:\d{2}", text.strip()):
        hour, minute = map(int, text.split(":"))
        local = now.astimezone()
        return local.replace(hour=hour, minute=minute, second=0, microsecond=0).astimezone(UTC)
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"cannot read the time {text!r}; use +45m, 14:30 or 2026-11-23T14:30") from None
    return (parsed if parsed.tzinfo else parsed.astimezone()).astimezone(UTC)


def parse_scope(text: str) -> tuple[str, str]:
    from schoolgate.grants import CLASS, ROOM, ScopeKind

    kind, sep, value = text.partition(":")
    if not sep or kind not in {*(k.value for k in ScopeKind), CLASS, ROOM}:
        raise UsageError(f"--for {text!r}: use group:NAME, class:NAME, room:NAME, users:a,b,c, "
                         "network:10.20.3.0/24 or user:NAME")
    return kind, value


async def _scope(policy: Policy, store: LiveStore, text: str) -> tuple[ScopeKind, str, str]:
    """(kind, scope, label) for --for: a class is its members now, a room its address ranges."""
    from schoolgate.grants import CLASS, chosen_scope

    kind, value = parse_scope(text)
    return chosen_scope(policy, kind, value, await store.classes() if kind == CLASS else {})


def _actor(args: argparse.Namespace) -> tuple[str, Role]:
    return args.by, Role(args.role)


def _grant_categories(policy: Policy, target: str) -> set[str]:
    from schoolgate.engine import grant_categories  # opens the category index; only grants need it

    return grant_categories(policy, target)


def _run(args: argparse.Namespace, work: Callable[[Policy, LiveStore], Awaitable[int]]) -> int:
    import asyncio

    from schoolgate.db import create_engine, upgrade
    from schoolgate.grants import GrantRefused, NotFound
    from schoolgate.live import LiveStore

    policy = load_policy_or_exit(args.policy)

    async def main() -> int:
        await upgrade(policy.gateway.database)
        engine = create_engine(policy.gateway.database)
        try:
            return await work(policy, LiveStore(engine))
        finally:
            await engine.dispose()

    try:
        return asyncio.run(main())
    except (GrantRefused, UsageError) as e:
        reasons = e.reasons if isinstance(e, GrantRefused) else [str(e)]
        print("schoolgate: refused: " + "; ".join(reasons), file=sys.stderr)
        return 1
    except NotFound as e:
        print(f"schoolgate: {e}", file=sys.stderr)
        return 1


# --- allow / block ------------------------------------------------------------------

def cmd_list_change(args: argparse.Namespace) -> int:
    action = Action(args.list_action)
    actor, role = _actor(args)

    async def work(policy: Policy, store: LiveStore) -> int:
        if args.change == "add":
            new_id = await store.add_entry(action, args.entry, args.reason or "", actor, role)
            print(f"added {args.entry} to the {action.value} list (#{new_id})")
        elif args.change == "remove":
            await store.remove_entry(action, args.entry, actor, role, args.reason or "")
            print(f"removed {args.entry} from the {action.value} list")
        else:
            for entry in policy.local:
                if entry.action is action:
                    print(f"{entry.text:40} {entry.source}")
            for row in await store.entries(action):
                print(f"{row.entry:40} #{row.id} added by {row.added_by} {row.added_at:%Y-%m-%d %H:%M}: {row.reason}")
        return 0

    return _run(args, work)


# --- exceptions ---------------------------------------------------------------------

def _grant_request(policy: Policy, args: argparse.Namespace, target: str,
                   scope: tuple[ScopeKind, str, str]) -> GrantRequest:
    from schoolgate.grants import GrantRequest, lesson_end

    now = datetime.now(UTC)
    starts_at = parse_when(args.start, now) if args.start else now
    ends_at = parse_when(args.until, now) if args.until else lesson_end(policy, starts_at)
    actor, role = _actor(args)
    return GrantRequest(target=target, scope_kind=scope[0], scope=scope[1], starts_at=starts_at, ends_at=ends_at,
                        reason=args.reason or "", actor=actor, role=role, label=scope[2])


def cmd_exceptions(args: argparse.Namespace) -> int:
    from schoolgate.grants import parse_target

    async def work(policy: Policy, store: LiveStore) -> int:
        if args.change == "grant":
            parse_target(args.target)  # a clear error before anything else
            request = _grant_request(policy, args, args.target, await _scope(policy, store, args.scope))
            grant = await store.grant(policy, request, _grant_categories(policy, args.target))
            print(f"exception #{grant.id}: {grant.what} open for {grant.whom} "
                  f"until {grant.ends_at.astimezone():%Y-%m-%d %H:%M %Z}")
        elif args.change == "revoke":
            await store.revoke(args.id, *_actor(args))
            print(f"exception #{args.id} revoked")
        else:
            for grant, revoked_at in await store.grants(include_ended=args.all):
                state = "revoked" if revoked_at else ("ended" if grant.ends_at <= datetime.now(UTC) else "in force")
                print(f"#{grant.id:<4} {grant.what:32} for {grant.whom:28} "
                      f"{grant.starts_at.astimezone():%d %b %H:%M} → {grant.ends_at.astimezone():%d %b %H:%M}  "
                      f"{state:8} by {grant.granted_by} ({grant.role}): {grant.reason}")
        return 0

    return _run(args, work)


# --- access requests ----------------------------------------------------------------

def cmd_requests(args: argparse.Namespace) -> int:
    from schoolgate.grants import NotFound, ScopeKind
    from schoolgate.urls import parse_target as parse_url

    async def work(policy: Policy, store: LiveStore) -> int:
        if args.change == "list":
            for r in await store.requests(None if args.status == "all" else args.status):
                who = r.username or r.client_ip
                print(f"#{r.id:<4} {r.created_at.astimezone():%d %b %H:%M}  {r.status:8} {who} ({r.group_name}) "
                      f"{r.url}  ref {r.ref}: {r.reason}")
            return 0
        pending = {r.id: r for r in await store.requests("pending")}
        if args.id not in pending:
            raise NotFound(f"no pending access request #{args.id}")
        actor, role = _actor(args)
        if args.change == "refuse":
            await store.decide_request(args.id, approve=False, actor=actor, role=role, note=args.note or "")
            print(f"request #{args.id} refused")
            return 0
        asked = pending[args.id]
        host = parse_url(asked.url).host
        target = args.target or host
        scope = await _scope(policy, store, args.scope) if args.scope else (
            (ScopeKind.USER, asked.username, "") if asked.username else (ScopeKind.NETWORK, asked.client_ip, ""))
        if not args.reason:
            args.reason = f"request #{args.id}: {asked.reason}"
        grant = _grant_request(policy, args, target, scope)
        exception_id = await store.decide_request(args.id, approve=True, actor=actor, role=role, note=args.note or "",
                                                  policy=policy, grant=grant, listed_categories=_grant_categories(policy, target))
        print(f"request #{args.id} approved: exception #{exception_id} opens {target} for "
              f"{scope[2] or f'{scope[0].value} {scope[1]}'} until {grant.ends_at.astimezone():%Y-%m-%d %H:%M %Z}")
        return 0

    return _run(args, work)


# --- class lists ----------------------------------------------------------------------

def read_class_csv(path: str) -> list[tuple[str, str]]:
    """(class, username) pairs from a CSV with `class` and `username` columns (a MIS export)."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f))
    except OSError as e:
        raise UsageError(f"cannot read {path}: {e.strerror}") from None
    if rows and not {"class", "username"} <= set(rows[0]):
        raise UsageError(f"{path} needs the columns class,username (it has {','.join(rows[0])})")
    pairs = [((r["class"] or "").strip(), (r["username"] or "").strip()) for r in rows]
    if bad := [n for n, (name, user) in enumerate(pairs, start=2) if not name or not user]:
        raise UsageError(f"{path}: line {bad[0]} has no class or no username")
    if not pairs:
        raise UsageError(f"{path} has no members")
    return pairs


def _directory_classes(policy: Policy, groups: list[str]) -> list[tuple[str, str]]:
    """(class, username) pairs for directory groups, each group a class of the same name."""
    from schoolgate.addons.directory import Directory, DirectoryUnavailable  # ldap3: only this command needs it

    if not policy.directory.enabled:
        raise UsageError("the policy has no [directory] to read classes from")
    directory = Directory(policy.directory)
    pairs = []
    for group in groups:
        try:
            users = directory.members_of(group)
        except DirectoryUnavailable as e:
            raise UsageError(str(e)) from None
        if not users:
            raise UsageError(f"the directory has no group {group!r} with members")
        pairs += [(group, user) for user in users]
    return pairs


DIRECTORY_SOURCE = "directory"  # class_members.source for classes read by `classes sync`


def cmd_classes(args: argparse.Namespace) -> int:
    import asyncio

    async def work(policy: Policy, store: LiveStore) -> int:
        if args.change in ("import", "sync"):
            if args.change == "import":
                members, source = read_class_csv(args.file), os.path.basename(args.file)
            else:
                # Without names: every class read from the directory before (the nightly timer's run).
                groups = args.groups or await store.class_names(DIRECTORY_SOURCE)
                if not groups:
                    raise UsageError("no class has been read from the directory yet: name the groups to read")
                members, source = await asyncio.to_thread(_directory_classes, policy, groups), DIRECTORY_SOURCE
            sizes = await store.import_classes(members, source, args.by)
            for name, size in sizes.items():
                print(f"class {name}: {size} members")
        else:
            for name, users in (await store.classes()).items():
                print(f"{name:16} {len(users):4} members")
        return 0

    return _run(args, work)


def cmd_audit(args: argparse.Namespace) -> int:
    async def work(policy: Policy, store: LiveStore) -> int:
        for row in await store.audit(args.limit):
            if args.format == "json":
                print(json.dumps({"id": row.id, "ts": row.ts.isoformat(), "actor": row.actor, "role": row.role,
                                  "action": row.action, "object": f"{row.object_kind}#{row.object_id}",
                                  "before": json.loads(row.before) if row.before else None,
                                  "after": json.loads(row.after) if row.after else None}))
            else:
                print(f"{row.ts.astimezone():%Y-%m-%d %H:%M:%S}  {row.actor} ({row.role})  {row.action}  "
                      f"{row.object_kind}#{row.object_id or '-'}  {row.after or ''}")
        return 0

    return _run(args, work)


def register(sub: argparse._SubParsersAction) -> None:
    def common(parser: argparse.ArgumentParser, *, actor: bool = True) -> None:
        add_policy_option(parser)
        if actor:
            parser.add_argument("--by", default=os.environ.get("SUDO_USER") or getpass.getuser(),
                                help="who is making the change (default: your login name)")
            parser.add_argument("--role", choices=[r.value for r in Role], default=Role.IT_ADMIN.value)

    for action in (Action.ALLOW, Action.BLOCK):
        parser = sub.add_parser(action.value, help=f"the managed {action.value} list (live, audited)")
        changes = parser.add_subparsers(dest="change", required=True)
        add = changes.add_parser("add", help=f"add a domain or URL prefix to the {action.value} list")
        add.add_argument("entry")
        add.add_argument("--reason", required=True)
        remove = changes.add_parser("remove")
        remove.add_argument("entry")
        remove.add_argument("--reason", help="why it goes (kept in the audit trail)")
        show = changes.add_parser("list", help="entries from policy.toml and the managed list")
        for p in (add, remove, show):
            common(p)
            p.set_defaults(func=cmd_list_change, list_action=action.value)

    parser = sub.add_parser("exceptions", help="time-bound openings of blocked sites or categories")
    changes = parser.add_subparsers(dest="change", required=True)
    grant = changes.add_parser("grant", help="open a site or category for a group, class, room or pupil")
    grant.add_argument("target", help="domain, URL prefix, or category:NAME")
    grant.add_argument("--for", dest="scope", required=True,
                       help="group:NAME, class:NAME, room:NAME, users:a,b,c, network:CIDR or user:NAME")
    grant.add_argument("--from", dest="start", help="start (default now): +10m, 14:30 or ISO time")
    grant.add_argument("--until", help="end (default: end of the lesson): +45m, 15:00 or ISO time")
    grant.add_argument("--reason", required=True)
    revoke = changes.add_parser("revoke")
    revoke.add_argument("id", type=int)
    show = changes.add_parser("list")
    show.add_argument("--all", action="store_true", help="include ended and revoked ones")
    for p in (grant, revoke, show):
        common(p)
        p.set_defaults(func=cmd_exceptions)

    parser = sub.add_parser("requests", help="pupils' requests from the block page")
    changes = parser.add_subparsers(dest="change", required=True)
    show = changes.add_parser("list")
    show.add_argument("--status", choices=["pending", "approved", "refused", "all"], default="pending")
    approve = changes.add_parser("approve", help="approve: creates an exception")
    approve.add_argument("id", type=int)
    approve.add_argument("--target", help="what to open (default: the requested site)")
    approve.add_argument("--for", dest="scope", help="default: the pupil (by user, else by device address)")
    approve.add_argument("--from", dest="start")
    approve.add_argument("--until")
    approve.add_argument("--reason")
    approve.add_argument("--note")
    refuse = changes.add_parser("refuse")
    refuse.add_argument("id", type=int)
    refuse.add_argument("--note")
    for p in (show, approve, refuse):
        common(p)
        p.set_defaults(func=cmd_requests)

    parser = sub.add_parser("classes", help="class lists teachers open sites for (from the MIS)")
    changes = parser.add_subparsers(dest="change", required=True)
    load = changes.add_parser("import", help="replace the members of the classes in a class,username CSV")
    load.add_argument("file")
    sync = changes.add_parser("sync", help="replace the members of classes from directory groups of the same name")
    sync.add_argument("groups", nargs="*", metavar="GROUP",
                      help="directory groups to read (default: every class read from the directory before)")
    show = changes.add_parser("list")
    for p in (load, sync, show):
        common(p)
        p.set_defaults(func=cmd_classes)

    audit = sub.add_parser("audit", help="the audit trail of list, exception and request changes")
    common(audit, actor=False)
    audit.add_argument("--limit", type=int, default=100)
    audit.add_argument("--format", choices=["text", "json"], default="text")
    audit.set_defaults(func=cmd_audit)
