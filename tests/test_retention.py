"""Retention in batches against a real SQLite file: exactly what is past retention goes, nothing else."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select
from test_records import make_record

from schoolgate.db import access_log, create_engine, incident_notes, upgrade
from schoolgate.policy import Policy, load_policy
from schoolgate.records import AccessRecord, RecordWriter
from schoolgate.reports.incidents import IncidentFilter, Status, queue, update_incident
from schoolgate.reports.retention import purge

from support.postgres import journal_of, postgres_bin

NOW = datetime.now(UTC).replace(microsecond=0)


def policy_in(tmp_path: Path) -> Policy:
    path = tmp_path / "policy.toml"
    path.write_text(f'[gateway]\ndatabase = "sqlite+aiosqlite:///{tmp_path}/sg.db"\ndefault_group = "pupils"\n\n'
                    '[groups.pupils]\nnetworks = ["10.0.0.0/8"]\n\n[retention]\nrecords_days = 30\nflagged_days = 365\n')
    return load_policy(path)


def records() -> list[AccessRecord]:
    """Ordinary, flagged and illegal-tier records either side of both limits, several sharing a time,
    so batch edges fall between rows of the same second. Each flagged one is a different pupil's, so
    each is an incident of its own (one pupil's attempts within minutes would be one episode)."""
    made = []
    for n, days in enumerate([400, 400, 400, 366, 365.9, 200, 31, 31, 31, 30.1, 29.9, 29.9, 1]):
        ts = NOW - timedelta(days=days)
        made.append(make_record(ts=ts, host=f"ordinary{n}.example", seq=0))
        if n % 2 == 0:
            made.append(make_record(ts=ts, host=f"flagged{n}.example", seq=0, flag="self-harm", flag_severity=4,
                                    user=f"pupil{n}"))
        if n % 3 == 0:
            made.append(make_record(ts=ts, host=f"illegal{n}.example", seq=0, verdict="block", rule="illegal iwf"))
    return made


def expected_left(made: list[AccessRecord]) -> set[str]:
    """The records the policy keeps: ordinary ones 30 days, flagged and illegal-tier ones 365."""
    def kept(r: AccessRecord) -> bool:
        long = r.flag_severity is not None or r.rule.startswith("illegal")
        return r.ts >= NOW - timedelta(days=365 if long else 30)
    return {r.host for r in made if kept(r)}


@pytest.mark.parametrize(("backend", "batch_rows"), [("sqlite", 1), ("sqlite", 2), ("sqlite", 3), ("sqlite", 1000),
                                                    ("postgresql", 2)])
def test_purge_in_batches_deletes_exactly_what_is_past_retention(tmp_path: Path, backend: str, batch_rows: int,
                                                                 request: pytest.FixtureRequest) -> None:
    policy = policy_in(tmp_path)
    if backend == "postgresql":
        if postgres_bin() is None:
            pytest.skip("PostgreSQL is not installed (apt install postgresql)")
        policy = replace(policy, gateway=replace(policy.gateway, database=request.getfixturevalue("database_url")))
    url = policy.gateway.database
    made = records()

    async def scenario() -> tuple[int, int, int, set[str], int, int]:
        await upgrade(url)
        writer = RecordWriter(url, spool_path=journal_of(url))
        await writer.start()
        for record in made:
            writer.submit(record)
        await writer.close()
        engine = create_engine(url)
        try:
            flagged = await queue(engine, IncidentFilter())
            for item in flagged:
                await update_incident(engine, item.id, actor="dsl", role="dsl", status=Status.REVIEWING, note="seen")
            counts = await purge(engine, policy, now=NOW, batch_rows=batch_rows)
            left = len(await queue(engine, IncidentFilter()))
            async with engine.connect() as conn:
                hosts = set((await conn.execute(select(access_log.c.host))).scalars())
                notes = (await conn.execute(select(func.count()).select_from(incident_notes))).scalar_one()
        finally:
            await engine.dispose()
        return counts.records, counts.flagged_records, counts.incidents, hosts, left, notes

    deleted, deleted_flagged, deleted_incidents, hosts, incidents_left, notes = asyncio.run(scenario())
    assert hosts == expected_left(made)
    long = [r for r in made if r.flag_severity is not None or r.rule.startswith("illegal")]
    assert deleted_flagged == sum(r.ts < NOW - timedelta(days=365) for r in long)
    assert deleted == len(made) - len(long) - sum(h.startswith("ordinary") for h in hosts)
    flagged_left = sum(h.startswith("flagged") for h in hosts)
    assert deleted_incidents == sum(r.flag_severity is not None for r in made) - flagged_left
    assert incidents_left == notes == flagged_left  # the kept records keep their incidents and notes
    wal = tmp_path / "sg.db-wal"
    assert not wal.exists() or wal.stat().st_size == 0  # truncated once the purge is done


def test_a_dry_run_counts_what_a_purge_deletes_and_deletes_nothing(tmp_path: Path) -> None:
    policy = policy_in(tmp_path)
    made = records()

    async def scenario() -> tuple[object, object]:
        await upgrade(policy.gateway.database)
        writer = RecordWriter(policy.gateway.database)
        await writer.start()
        for record in made:
            writer.submit(record)
        await writer.close()
        engine = create_engine(policy.gateway.database)
        try:
            await queue(engine, IncidentFilter())
            counted = await purge(engine, policy, now=NOW, dry_run=True)
            assert len(await queue(engine, IncidentFilter(statuses=()))) == sum(r.flag_severity is not None
                                                                                for r in made)
            return counted, await purge(engine, policy, now=NOW, batch_rows=2)
        finally:
            await engine.dispose()

    counted, deleted = asyncio.run(scenario())
    assert counted == deleted
