"""`schoolgate lookup`, `log`, `db upgrade`, `console`, `accounts`, `report`, `send-report`, `selfcheck`
and `purge`.

Access records are personal data about pupils and staff: these commands are
for IT staff on the server itself, print plain text, and send nothing anywhere.
Passwords are read from the terminal (or one line of stdin), never from the
command line, where other users of the server could see them.

Each command imports the database and web libraries when it runs, not when the
parser is built, so `schoolgate --help` and the other commands start at once.
"""

from __future__ import annotations

import argparse
import csv
import getpass
import json
import os
import re
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from schoolgate.commandline import add_policy_option, load_policy_or_exit
from schoolgate.reports.roles import ConsoleRole

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import AsyncEngine

    from schoolgate.accessrecord import AccessRecord
    from schoolgate.policy import Policy

VERDICTS = ("allow", "block", "warn", "proceed", "monitor")
_RELATIVE = re.compile(r"^(\d+)\s*([mhdw])$")
_UNITS = {"m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    lookup = subparsers.add_parser("lookup", help="why was this blocked? show the record behind a block-page reference")
    lookup.add_argument("ref", metavar="REF", help="the reference on the block page, e.g. SG-7K3F-9QX2")
    _add_database_options(lookup)
    lookup.set_defaults(func=lookup_command)

    log = subparsers.add_parser("log", help="show recent access records, newest first")
    log.add_argument("--verdict", choices=VERDICTS)
    log.add_argument("--user", help="user name")
    log.add_argument("--client", help="client IP address")
    log.add_argument("--host", help="host; also matches its subdomains")
    log.add_argument("--since", type=parse_since, help="e.g. 30m, 1h, 2d, 1w or 2026-11-23T10:00 (server local time)")
    log.add_argument("--limit", type=_positive_int, default=50, help="at most this many records (default 50)")
    log.add_argument("--format", choices=("text", "csv", "json"), default="text")
    _add_database_options(log)
    log.set_defaults(func=log_command)

    db = subparsers.add_parser("db", help="database maintenance")
    db_commands = db.add_subparsers(dest="db_command", required=True, metavar="COMMAND")
    db_upgrade = db_commands.add_parser("upgrade", help="create the database or bring its schema up to date")
    _add_database_options(db_upgrade)
    db_upgrade.set_defaults(func=upgrade_command)

    console = subparsers.add_parser("console", help="serve the review console (DSLs, IT staff, teachers)")
    console.add_argument("--host", help="address to listen on (default: the policy's [console] host)")
    console.add_argument("--port", type=int, help="port (default: the policy's [console] port)")
    add_policy_option(console)
    console.set_defaults(func=console_command)

    accounts = subparsers.add_parser("accounts", help="console accounts: add, list, passwd, disable")
    account_commands = accounts.add_subparsers(dest="accounts_command", required=True, metavar="COMMAND")
    add = account_commands.add_parser("add", help="create an account; the password is asked for (or read from stdin)")
    add.add_argument("username")
    add.add_argument("--role", required=True, choices=[r.value for r in ConsoleRole])
    add.add_argument("--groups", default="", help="teachers: groups they may open sites for, comma-separated")
    passwd = account_commands.add_parser("passwd", help="set a new password (asked for, or read from stdin)")
    passwd.add_argument("username")
    disable = account_commands.add_parser("disable", help="refuse further sign-ins and end open sessions")
    disable.add_argument("username")
    listing = account_commands.add_parser("list", help="accounts, roles and groups")
    for parser in (add, passwd, disable, listing):
        add_policy_option(parser)
        parser.set_defaults(func=accounts_command)

    report = subparsers.add_parser("report", help="the period report as HTML (printable to PDF) or CSV")
    report.add_argument("--from", dest="start", required=True, type=date.fromisoformat, help="first day, e.g. 2026-09-01")
    report.add_argument("--to", dest="end", required=True, type=date.fromisoformat, help="last day, included")
    report.add_argument("--output", type=Path, help="report.html or report.csv (default: HTML on stdout)")
    report.add_argument("--identities", action="store_true",
                        help="name pupils in the open-incident list (for the DSL's own copy)")
    add_policy_option(report)
    report.set_defaults(func=report_command)

    send = subparsers.add_parser("send-report", help="email the period report when the policy's [reports] schedule "
                                                     "says it is due today (run daily by schoolgate-report.timer)")
    send.add_argument("--now", action="store_true", help="send the report due by the schedule's period now, "
                                                         "whatever the day (the last 7 days, or last month)")
    add_policy_option(send)
    send.set_defaults(func=send_report_command)

    selfcheck = subparsers.add_parser(
        "selfcheck", help="the filtering and monitoring self-check for the annual review (DfE standards, UKSIC "
                          "checklists): configuration plus probes through the gateway; exit 1 when an item is not met")
    selfcheck.add_argument("--proxy", help="the gateway as clients use it (default: [selfcheck] proxy)")
    selfcheck.add_argument("--source", help="probe from this local address, e.g. one on a pupils' network "
                                            "(default: [selfcheck] source_address)")
    selfcheck.add_argument("--no-probes", action="store_true", help="judge the configuration only; send nothing")
    selfcheck.add_argument("--no-alert", action="store_true", help="probe, but send no test alert")
    selfcheck.add_argument("--format", choices=("text", "json", "html"), default="text",
                           help="html: one self-contained printable page")
    add_policy_option(selfcheck)
    selfcheck.set_defaults(func=selfcheck_command)

    purge_parser = subparsers.add_parser("purge", help="delete records past the policy's [retention]")
    purge_parser.add_argument("--dry-run", action="store_true", help="only count what would be deleted")
    add_policy_option(purge_parser)
    purge_parser.set_defaults(func=purge_command)


def _add_database_options(parser: argparse.ArgumentParser) -> None:
    add_policy_option(parser)
    parser.add_argument("--database", metavar="URL", help="database URL, instead of the policy's")


def parse_since(text: str) -> datetime:
    """"1h" (that long ago) or an ISO time; a time without zone is the server's local time."""
    if match := _RELATIVE.match(text.strip()):
        return datetime.now(UTC) - timedelta(**{_UNITS[match[2]]: int(match[1])})
    try:
        when = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is neither an age like 1h or 2d nor a time like 2026-11-23T10:00") from None
    return when.astimezone(UTC)  # astimezone reads a naive time as local


def _positive_int(text: str) -> int:
    if not text.isdigit() or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def upgrade_command(args: argparse.Namespace) -> int:
    import asyncio

    from sqlalchemy.engine import make_url

    from schoolgate.db import upgrade

    url = _database_url(args)
    asyncio.run(upgrade(url))
    print(f"database schema is up to date: {make_url(url).render_as_string(hide_password=True)}")
    return 0


def lookup_command(args: argparse.Namespace) -> int:
    from schoolgate.records import normalise_reference
    from schoolgate.reports.queries import find_by_ref

    ref = normalise_reference(args.ref)
    records = _read(args, lambda engine: find_by_ref(engine, ref))
    if records is None:
        return 1
    if not records:
        print(f"no access record has reference {ref}", file=sys.stderr)
        return 1
    if len(records) > 1:
        print(f"{len(records)} records carry reference {ref}; newest first\n")
    print("\n\n".join(_describe(record) for record in records))
    return 0


def log_command(args: argparse.Namespace) -> int:
    from schoolgate.reports.recent import LogFilter, read, read_sqlite, sqlite_file

    wanted = LogFilter(limit=args.limit, verdict=args.verdict, user=args.user, client_ip=args.client,
                       host=args.host, since=args.since)
    path = sqlite_file(_database_url(args))
    if path is not None:  # straight to the file: no database library to load
        if not Path(path).exists():
            print(_NO_DATABASE.format(path), file=sys.stderr)
            return 1
        records: list[AccessRecord] | None = read_sqlite(path, wanted)
    else:
        records = _read(args, lambda engine: read(engine, wanted))
    if records is None:
        return 1
    {"text": _write_text, "csv": _write_csv, "json": _write_json}[args.format](records, sys.stdout)
    return 0


def _database_url(args: argparse.Namespace) -> str:
    if args.database:
        return str(args.database)
    return load_policy_or_exit(args.policy).gateway.database


_NO_DATABASE = "no database at {}; the gateway creates it when it starts (or run `schoolgate db upgrade`)"


def _read(args: argparse.Namespace, query: Callable[[AsyncEngine], Coroutine[Any, Any, list[AccessRecord]]]) -> list[AccessRecord] | None:
    """Run a read-only query, or say why there is nothing to read (None)."""
    import asyncio

    from sqlalchemy.engine import make_url

    from schoolgate.db import create_engine, is_sqlite

    url = _database_url(args)
    database = make_url(url).database
    # Opening a missing SQLite file would create an empty one; report it instead.
    if is_sqlite(url) and database and database != ":memory:" and not Path(database).exists():
        print(_NO_DATABASE.format(database), file=sys.stderr)
        return None

    async def run() -> list[AccessRecord]:
        engine = create_engine(url)
        try:
            return await query(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def _local_time(record: AccessRecord) -> str:
    return record.ts.astimezone().isoformat(sep=" ", timespec="seconds")


def _describe(record: AccessRecord) -> str:
    who = f"{record.user} at {record.client_ip}" if record.user else f"{record.client_ip} (not signed in)"
    lines = [
        ("Reference", record.ref or "-"),
        ("When", _local_time(record)),
        ("Who", who),
        ("Group", record.group),
        ("Request", f"{record.method} {record.url or record.host}"),
        ("Verdict", record.verdict),
        ("Rule", record.rule),
        ("Reason", record.reason),
        ("Categories", ", ".join(record.categories) or "none"),
        ("Status", str(record.status) if record.status is not None else "-"),
        ("Gateway", f"{record.instance} #{record.seq}"),
    ]
    return "\n".join(f"{label:<11} {value}" for label, value in lines)


def _write_text(records: list[AccessRecord], out: TextIO) -> None:
    for r in records:
        fields = (
            _local_time(r),
            r.verdict,
            r.client_ip,
            r.user or "-",
            r.group,
            r.method,
            r.url or r.host,
            ",".join(r.categories) or "-",
            r.rule,
            r.ref or "",
        )
        print("  ".join(fields).rstrip(), file=out)


def _write_csv(records: list[AccessRecord], out: TextIO) -> None:
    from schoolgate.accessrecord import AccessRecord, record_as_json

    writer = csv.DictWriter(out, fieldnames=list(AccessRecord.__dataclass_fields__), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({**record_as_json(record), "categories": " ".join(record.categories)})


def _write_json(records: list[AccessRecord], out: TextIO) -> None:
    from schoolgate.accessrecord import record_as_json

    json.dump([record_as_json(r) for r in records], out, indent=1)
    out.write("\n")


# --- console, accounts, report, purge ------------------------------------------------

def _with_engine(policy: Policy, work: Callable[[AsyncEngine], Coroutine[Any, Any, Any]]) -> Any:
    """Bring the schema up to date, then run `work` with an engine."""
    import asyncio

    from schoolgate.db import create_engine, upgrade

    async def run() -> Any:
        await upgrade(policy.gateway.database)
        engine = create_engine(policy.gateway.database)
        try:
            return await work(engine)
        finally:
            await engine.dispose()

    return asyncio.run(run())


def console_command(args: argparse.Namespace) -> int:
    from schoolgate.reports.console.app import serve  # the web stack loads only for this command

    policy = load_policy_or_exit(args.policy)
    serve(policy, args.host or policy.console.host, args.port or policy.console.port)
    return 0


def read_new_password(stdin: TextIO | None = None) -> str:
    """Asked twice on a terminal; otherwise the first line of stdin (for scripts)."""
    from schoolgate.reports.accounts import AccountError
    stdin = stdin or sys.stdin
    if not stdin.isatty():
        return stdin.readline().rstrip("\r\n")
    password = getpass.getpass("New password: ")
    if getpass.getpass("Again: ") != password:
        raise AccountError("the two passwords differ")
    return password


def _operator() -> str:
    return os.environ.get("SUDO_USER") or getpass.getuser()


def accounts_command(args: argparse.Namespace) -> int:
    from schoolgate.reports import accounts as console_accounts
    from schoolgate.reports.accounts import AccountError

    policy = load_policy_or_exit(args.policy)
    command = args.accounts_command
    try:
        if command == "list":
            for account in _with_engine(policy, console_accounts.list_accounts):
                state = "active" if account.active else f"disabled {account.disabled_at:%Y-%m-%d}"
                print(f"{account.username:24} {account.role.value:9} {state:20} {','.join(account.groups)}")
        elif command == "add":
            role = ConsoleRole(args.role)
            groups = tuple(g.strip() for g in args.groups.split(",") if g.strip())
            if unknown := [g for g in groups if g not in policy.groups]:
                raise AccountError(f"no group {', '.join(unknown)}; groups are: {', '.join(policy.groups)}")
            if role is ConsoleRole.TEACHER and not groups:
                raise AccountError("give a teacher the groups they may open sites for (--groups)")
            password = read_new_password()
            _with_engine(policy, lambda e: console_accounts.add_account(e, args.username, role, password, groups,
                                                                        _operator()))
            print(f"account {args.username} ({role.title}) created")
        elif command == "passwd":
            password = read_new_password()
            _with_engine(policy, lambda e: console_accounts.set_password(e, args.username, password, _operator()))
            print(f"password of {args.username} changed")
        else:
            _with_engine(policy, lambda e: console_accounts.disable_account(e, args.username, _operator()))
            print(f"account {args.username} disabled")
    except AccountError as e:
        print(f"schoolgate: {e}", file=sys.stderr)
        return 1
    return 0


def _local_midnight(day: date) -> datetime:
    return datetime.combine(day, time()).astimezone().astimezone(UTC)


def report_command(args: argparse.Namespace) -> int:
    from schoolgate.reports.report import build_report, render_html, report_csv

    policy = load_policy_or_exit(args.policy)
    if args.end < args.start:
        print("schoolgate: --to is before --from", file=sys.stderr)
        return 2
    start, end = _local_midnight(args.start), _local_midnight(args.end + timedelta(days=1))
    report = _with_engine(policy, lambda e: build_report(e, start, end))
    as_csv = args.output is not None and args.output.suffix.lower() == ".csv"
    text = report_csv(report) if as_csv else render_html(report, school=policy.school.name,
                                                         with_identities=args.identities)
    if args.output is None:
        sys.stdout.write(text)
    else:
        args.output.write_text(text, encoding="utf-8", newline="")
        print(f"report for {args.start} to {args.end} written to {args.output}")
    return 0


def send_report_command(args: argparse.Namespace) -> int:
    import smtplib

    from schoolgate.reports.delivery import send_report

    policy = load_policy_or_exit(args.policy)
    settings = policy.reports
    if not settings.schedule:
        print("schoolgate: no report schedule ([reports] schedule is off)", file=sys.stderr)
        return 2
    due = settings.period_due(date.today(), now=args.now)
    if due is None:
        print(f"no report due today ({settings.schedule}, on {settings.day})")
        return 0
    first, last = due
    start, end = _local_midnight(first), _local_midnight(last + timedelta(days=1))
    try:
        sent = _with_engine(policy, lambda e: send_report(e, policy, first, last, start, end))
    except (OSError, smtplib.SMTPException) as e:
        print(f"schoolgate: the report was not sent: {type(e).__name__} {e}", file=sys.stderr)
        return 1
    print(f"report for {first} to {last} sent to {len(sent)} recipient(s)")
    return 0


def selfcheck_command(args: argparse.Namespace) -> int:
    from schoolgate.reports import probes, selfcheck

    load_policy_or_exit(args.policy)  # its problems said the one way
    engine = probes.load_engine(args.policy)
    policy = engine.policy
    facts = _with_engine(policy, lambda db: probes.gather(
        engine, db, probe=not args.no_probes, send_alert=not args.no_alert, proxy=args.proxy, source_address=args.source))
    items = selfcheck.assess(facts)
    if args.format == "json":
        json.dump({"school": policy.school.name, "checked_at": datetime.now(UTC).isoformat(timespec="seconds"),
                   "counts": {s.value: n for s, n in selfcheck.counts(items).items()},
                   "items": [i.as_dict() for i in items],
                   "probes": [{"probe": p.name, "passed": p.passed, "evidence": p.evidence}
                              for p in probes.summary(facts.probes)]}, sys.stdout, indent=2)
        print()
    elif args.format == "html":
        sys.stdout.write(probes.render_html(items, probes.summary(facts.probes), school=policy.school.name))
    else:
        print("\n".join(selfcheck.text_lines(items, probes.summary(facts.probes))))
    return 1 if any(i.status is selfcheck.Status.NOT_MET for i in items) else 0


def purge_command(args: argparse.Namespace) -> int:
    """The counts are logged by the purge itself (stderr here, the journal under systemd)."""
    from schoolgate.reports.retention import purge

    policy = load_policy_or_exit(args.policy)
    _with_engine(policy, lambda e: purge(e, policy, dry_run=args.dry_run))
    return 0
