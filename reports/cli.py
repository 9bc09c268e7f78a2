"""`schoolgate lookup`, `schoolgate log` and `schoolgate db upgrade`.

Access records are personal data about pupils and staff: these commands are
for IT staff on the server itself, print plain text, and send nothing anywhere.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import json
import os
import re
import sys
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.db import create_engine, is_sqlite, upgrade
from schoolgate.policy import PolicyInvalid, load_policy
from schoolgate.records import AccessRecord, normalise_reference, record_as_json
from schoolgate.reports.queries import find_by_ref, recent

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


def _add_database_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy",
        type=Path,
        default=Path(os.environ.get("SCHOOLGATE_POLICY", "policy.toml")),
        help="policy file naming the database (default: ./policy.toml or $SCHOOLGATE_POLICY)",
    )
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
    url = _database_url(args)
    asyncio.run(upgrade(url))
    print(f"database schema is up to date: {make_url(url).render_as_string(hide_password=True)}")
    return 0


def lookup_command(args: argparse.Namespace) -> int:
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
    records = _read(
        args,
        lambda engine: recent(
            engine,
            limit=args.limit,
            verdict=args.verdict,
            user=args.user,
            client_ip=args.client,
            host=args.host,
            since=args.since,
        ),
    )
    if records is None:
        return 1
    {"text": _write_text, "csv": _write_csv, "json": _write_json}[args.format](records, sys.stdout)
    return 0


def _database_url(args: argparse.Namespace) -> str:
    if args.database:
        return str(args.database)
    try:
        return load_policy(args.policy).database_url
    except PolicyInvalid as e:
        print(f"cannot read the database setting from {args.policy}:\n{e}", file=sys.stderr)
        raise SystemExit(2) from e


def _read(args: argparse.Namespace, query: Callable[[AsyncEngine], Coroutine[Any, Any, list[AccessRecord]]]) -> list[AccessRecord] | None:
    """Run a read-only query, or say why there is nothing to read (None)."""
    url = _database_url(args)
    database = make_url(url).database
    # Opening a missing SQLite file would create an empty one; report it instead.
    if is_sqlite(url) and database and database != ":memory:" and not Path(database).exists():
        print(f"no database at {database}; the gateway creates it when it starts (or run `schoolgate db upgrade`)", file=sys.stderr)
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
    writer = csv.DictWriter(out, fieldnames=list(AccessRecord.__dataclass_fields__), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow({**record_as_json(record), "categories": " ".join(record.categories)})


def _write_json(records: list[AccessRecord], out: TextIO) -> None:
    json.dump([record_as_json(r) for r in records], out, indent=1)
    out.write("\n")
