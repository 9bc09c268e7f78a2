"""`schoolgate lookup`, `log` and `db upgrade`, run through argparse against real SQLite files."""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import redirect_stderr, redirect_stdout
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from test_records import make_record, sqlite_url

from schoolgate.records import AccessRecord, RecordWriter
from schoolgate.reports.cli import parse_since, register

from support.postgres import journal_of, postgres_bin


@pytest.fixture(autouse=True)
def london_time(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Output is in the server's local time; pin it."""
    monkeypatch.setenv("TZ", "Europe/London")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def run_cli(*argv: str) -> tuple[int | str | None, str, str]:
    parser = argparse.ArgumentParser(prog="schoolgate")
    register(parser.add_subparsers(dest="command", required=True))
    out, err = io.StringIO(), io.StringIO()
    args = parser.parse_args(argv)
    with redirect_stdout(out), redirect_stderr(err):
        try:
            code = args.func(args)
        except SystemExit as e:
            code = e.code
    return code, out.getvalue(), err.getvalue()


def store(path: Path | str, *records: AccessRecord) -> str:
    """Write records to an SQLite file or a database URL; returns the URL."""
    url = sqlite_url(path) if isinstance(path, Path) else path

    async def write() -> None:
        writer = RecordWriter(url, spool_path=journal_of(url))
        await writer.start()
        for record in records:
            writer.submit(record)
        await writer.close()

    asyncio.run(write())
    return url


BLOCKED = make_record(
    ts=datetime(2026, 11, 23, 10, 15, 30, tzinfo=UTC),
    verdict="block",
    rule="category games",
    reason="Games sites are blocked for pupils during the school day.",
    categories=("games",),
    url="https://www.coolgames.example/play",
    host="www.coolgames.example",
    status=403,
    ref="SG-7K3F-9QX2",
)


def test_lookup_explains_a_block_page_reference(tmp_path: Path) -> None:
    url = store(tmp_path / "log.db", make_record(), BLOCKED)
    code, out, err = run_cli("lookup", "sg 7k3f 9qx2", "--database", url)
    assert (code, err) == (0, "")
    assert out == (
        "Reference   SG-7K3F-9QX2\n"
        "When        2026-11-23 10:15:30+00:00\n"
        "Who         alice at 10.1.2.3\n"
        "Group       pupils\n"
        "Request     GET https://www.coolgames.example/play\n"
        "Verdict     block\n"
        "Rule        category games\n"
        "Reason      Games sites are blocked for pupils during the school day.\n"
        "Categories  games\n"
        "Status      403\n"
        "Gateway     gw1 #2\n"
    )


def test_lookup_of_an_unknown_reference_fails(tmp_path: Path) -> None:
    url = store(tmp_path / "log.db", BLOCKED)
    code, out, err = run_cli("lookup", "SG-0000-0000", "--database", url)
    assert (code, out) == (1, "")
    assert "no access record has reference SG-0000-0000" in err


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_log_filters_newest_first(tmp_path: Path, backend: str, request: pytest.FixtureRequest) -> None:
    """The same rows from SQLite (read with sqlite3) and PostgreSQL (through SQLAlchemy)."""
    if backend == "postgresql" and postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt install postgresql)")
    # Now, not when the module was imported: `--since` counts back from the clock, and a busy
    # parallel run can reach this test many minutes after collection.
    now = datetime.now(UTC).replace(microsecond=0)
    url = store(
        tmp_path / "log.db" if backend == "sqlite" else request.getfixturevalue("database_url"),
        make_record(ts=now - timedelta(hours=3), user="bob", host="www.example.com"),
        make_record(ts=now - timedelta(minutes=30), user="alice", host="notexample.com", url=None),
        make_record(ts=now - timedelta(minutes=10), user="alice", host="example.com", verdict="block", ref="SG-1111-2222"),
        make_record(ts=now - timedelta(minutes=5), user=None, client_ip="10.9.9.9", host="news.example.com"),
        make_record(ts=now - timedelta(minutes=4), user="carol", host="www.my_site.example"),
        make_record(ts=now - timedelta(minutes=3), user="carol", host="www.myXsite.example"),
    )

    def hosts(*filters: str) -> list[str]:
        code, out, err = run_cli("log", "--database", url, "--format", "json", *filters)
        assert (code, err) == (0, "")
        return [record["host"] for record in json.loads(out)]

    assert hosts() == ["www.myXsite.example", "www.my_site.example", "news.example.com", "example.com",
                       "notexample.com", "www.example.com"]
    assert hosts("--verdict", "block") == ["example.com"]
    assert hosts("--user", "alice") == ["example.com", "notexample.com"]
    assert hosts("--client", "10.9.9.9") == ["news.example.com"]
    assert hosts("--host", "example.com") == ["news.example.com", "example.com", "www.example.com"]
    assert hosts("--host", "my_site.example") == ["www.my_site.example"]  # "_" is no wildcard
    assert hosts("--since", "1h") == ["www.myXsite.example", "www.my_site.example", "news.example.com",
                                      "example.com", "notexample.com"]
    assert hosts("--user", "alice", "--since", "20m") == ["example.com"]
    assert hosts("--limit", "2") == ["www.myXsite.example", "www.my_site.example"]


def test_log_on_sqlite_loads_no_database_library(tmp_path: Path) -> None:
    """Importing SQLAlchemy takes longer than the query: `schoolgate log` on SQLite does without it."""
    url = store(tmp_path / "log.db", make_record(), BLOCKED)
    code = ("import sys, json; from schoolgate.cli import main; "
            f"main(['log', '--database', {url!r}, '--limit', '1']); "
            "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules})))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    printed, loaded = done.stdout.splitlines()
    assert "SG-7K3F-9QX2" in printed
    assert not {"sqlalchemy", "alembic", "aiosqlite", "asyncpg"} & set(json.loads(loaded))


def test_log_text_and_csv(tmp_path: Path) -> None:
    url = store(tmp_path / "log.db", make_record(), BLOCKED)

    code, out, _ = run_cli("log", "--database", url)
    assert code == 0
    assert out.splitlines() == [
        "2026-11-23 10:15:30+00:00  block  10.1.2.3  alice  pupils  GET  https://www.coolgames.example/play  games"
        "  category games  SG-7K3F-9QX2",
        "2026-11-23 10:00:00+00:00  allow  10.1.2.3  alice  pupils  GET  https://www.example.com/page?q=1  news,games  default",
    ]

    code, out, _ = run_cli("log", "--database", url, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [(r["ts"], r["verdict"], r["categories"], r["ref"], r["user"]) for r in rows] == [
        ("2026-11-23T10:15:30+00:00", "block", "games", "SG-7K3F-9QX2", "alice"),
        ("2026-11-23T10:00:00.123456+00:00", "allow", "news games", "", "alice"),
    ]


def test_db_upgrade_and_log_use_the_policy_database(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text('[gateway]\ndatabase = "sqlite+aiosqlite:///school.db"\n\n[groups.pupils]\nnetworks = ["10.0.0.0/8"]\n')

    code, out, _ = run_cli("log", "--policy", str(policy))
    assert code == 1
    assert not (tmp_path / "school.db").exists(), "reading must not create an empty database"

    code, out, _ = run_cli("db", "upgrade", "--policy", str(policy))
    assert code == 0
    assert "up to date" in out
    with sqlite3.connect(tmp_path / "school.db") as connection:
        assert connection.execute("SELECT count(*) FROM access_log").fetchone() == (0,)

    assert run_cli("log", "--policy", str(policy)) == (0, "", "")


def test_an_invalid_policy_is_reported(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text("[gateway\n")
    code, out, err = run_cli("log", "--policy", str(policy))
    assert (code, out) == (2, "")
    assert f"the policy cannot be used:\n{policy}:1: not valid TOML" in err
    assert "not valid TOML" in err


def test_since_accepts_ages_and_local_times() -> None:
    assert abs(parse_since("2h") - (datetime.now(UTC) - timedelta(hours=2))) < timedelta(seconds=5)
    assert parse_since("2026-11-23T10:00") == datetime(2026, 11, 23, 10, 0, tzinfo=UTC)  # GMT
    assert parse_since("2026-07-01T10:00") == datetime(2026, 7, 1, 9, 0, tzinfo=UTC)  # BST
    assert parse_since("2026-07-01T10:00+00:00") == datetime(2026, 7, 1, 10, 0, tzinfo=UTC)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_since("yesterday")
