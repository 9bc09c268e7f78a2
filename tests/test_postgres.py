"""PostgreSQL as the shared database, against a real server started here (Debian's
postgresql on loopback): the schema, gateways sharing exceptions, and a database
outage in the middle of traffic that loses no record."""

from __future__ import annotations

import asyncio
import re
import threading
import time
from dataclasses import dataclass, field

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from schoolgate import db
from schoolgate.cli import main
from schoolgate.live import LiveStore
from schoolgate.partitions import not_a_partition
from schoolgate.policy import Action, Role

from support.clients import curl, httpx_client
from support.gateway import Gateway
from support.postgres import PostgresServer, postgres_bin
from support.waiting import wait_for

pytestmark = pytest.mark.skipif(postgres_bin() is None, reason="PostgreSQL is not installed (apt install postgresql)")

POLICY = """\
[gateway]
database = "DATABASE"
metrics_port = {metrics_port}
default_group = "pupils"

[categories]
games = "block"

[groups.pupils]
networks = ["127.0.0.1/32"]

[exceptions]
teacher_groups = ["pupils"]
"""


def test_schema_migrates_on_postgres_and_matches_the_tables(postgres: PostgresServer, database_url: str) -> None:
    async def scenario() -> None:
        # Gateways starting together each migrate; the advisory lock makes that safe.
        await asyncio.gather(*(db.upgrade(database_url) for _ in range(3)))
        engine = db.create_engine(database_url)
        try:
            async with engine.connect() as connection:
                differences = await connection.run_sync(
                    lambda sync: compare_metadata(MigrationContext.configure(sync, opts={"compare_type": True,
                                                                   "include_name": not_a_partition}), db.metadata))
                assert differences == [], "db.py and the migrations disagree on PostgreSQL"
            store = LiveStore(engine)
            before = await store.version()
            entry_id = await store.add_entry(Action.BLOCK, "games.example", "test", "it.admin", Role.IT_ADMIN)
            assert isinstance(entry_id, int) and entry_id > 0  # inserted_primary_key through asyncpg
            assert await store.version() == before + 1
            state = await store.load()
            assert [e.host for e in state.entries] == ["games.example"]
        finally:
            await engine.dispose()

    asyncio.run(scenario())
    name = database_url.rsplit("/", 1)[1]
    assert postgres.psql("SELECT count(*) FROM audit_log", name) == "1"
    for statement in ("UPDATE audit_log SET actor = 'someone else'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"):
            postgres.psql(statement, name)
    assert postgres.psql("SELECT data_type FROM information_schema.columns WHERE table_name = 'access_log' "
                         "AND column_name IN ('id', 'ts') ORDER BY column_name", name).splitlines() == [
        "bigint", "timestamp with time zone"]


def test_class_lists_and_a_pupils_requests_on_postgres(postgres: PostgresServer, database_url: str) -> None:
    async def scenario() -> None:
        await db.upgrade(database_url)
        engine = db.create_engine(database_url)
        try:
            store = LiveStore(engine)
            assert await store.import_classes([("9X", "amy"), ("9X", "ben"), ("9Y", "cat")], "classes.csv",
                                              "it.admin") == {"9X": 2, "9Y": 1}
            await store.import_classes([("9X", "amy")], "classes.csv", "it.admin")  # 9X replaced, 9Y kept
            assert await store.classes() == {"9X": ("amy",), "9Y": ("cat",)}
            request_id = await store.create_request(ref="SG-AAAA-BBBB", client_ip="10.1.2.3", username="amy",
                                                    group="pupils", url="https://games.example/", host="games.example",
                                                    categories=("games",), reason="maths")
            [asked] = (await store.load()).requests
            assert (asked.id, asked.status, asked.open_until) == (request_id, "pending", None)
        finally:
            await engine.dispose()

    asyncio.run(scenario())


def test_two_gateways_share_an_exception_granted_through_the_cli(gateway_factory, database_url: str, capsys, postgres) -> None:
    policy = POLICY.replace("DATABASE", database_url)
    gateways = [gateway_factory(policy, options={"schoolgate_live_ms": 200, "schoolgate_instance": f"gw-{n}"})
                for n in range(2)]
    for gw in gateways:
        assert curl(gw, "http://games.test/").status == 403

    code = main(["exceptions", "grant", "games.test", "--for", "group:pupils", "--until", "+30m",
                 "--reason", "game design lesson", "--by", "mr.smith", "--role", "teacher",
                 "--policy", str(gateways[0].policy_path)])
    assert code == 0, capsys.readouterr().err
    for gw in gateways:
        wait_for(lambda gw=gw: curl(gw, "http://games.test/").status == 200, timeout=5)
    for gw in gateways:
        gw.stop()

    name = database_url.rsplit("/", 1)[1]
    rows = postgres.psql("SELECT instance, verdict, rule FROM access_log WHERE host = 'games.test' ORDER BY id", name)
    by_instance: dict[str, list[str]] = {}
    for line in rows.splitlines():
        instance, verdict, rule = line.split("|")
        by_instance.setdefault(instance, []).append(f"{verdict} {rule}")
    assert set(by_instance) == {"gw-0", "gw-1"}
    for verdicts in by_instance.values():
        assert verdicts[0].startswith("block") and verdicts[-1] == "allow exception #1 games.test"


@dataclass
class Traffic:
    """A client that keeps asking for an allowed and a blocked page until told to stop."""

    gateway: Gateway
    made: list[str] = field(default_factory=list)  # every path requested, in order
    wrong: list[str] = field(default_factory=list)  # answers that were not what the policy says
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        # A connection per request: the harness's loopback addon rewrites upstream addresses, so
        # mitmproxy cannot reuse an upstream connection and a sixth request on one client connection stalls.
        with httpx_client(self.gateway, timeout=10, headers={"Connection": "close"}) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                host, expected = ("games.test", 403) if n % 3 == 0 else ("school.test", 200)
                path = f"/r/{n}"
                self.made.append(f"{host}{path}")
                status = client.get(f"http://{host}{path}").status_code
                if status != expected:
                    self.wrong.append(f"{host}{path}: {status}")
                time.sleep(0.01)


def test_database_outage_mid_traffic_loses_no_record_and_keeps_order(gateway_factory, private_postgres, tmp_path) -> None:
    server = private_postgres  # its own server: this test stops it
    url = server.create_database("outage")
    gw = gateway_factory(POLICY.replace("DATABASE", url),
                         options={"schoolgate_instance": "gw-outage", "schoolgate_spool_dir": str(tmp_path)})
    traffic = Traffic(gw)
    client = threading.Thread(target=traffic.run)
    client.start()
    try:
        wait_for(lambda: len(traffic.made) > 30)
        server.stop("fast")
        down_at = len(traffic.made)
        # Filtering goes on; past the backlog time the records move to the spool file.
        wait_for(lambda: gw.metric("schoolgate_record_spool_bytes") > 0, timeout=60)
        wait_for(lambda: len(traffic.made) > down_at + 60)
        server.start()
        wait_for(lambda: gw.metric("schoolgate_record_spool_bytes") == 0, timeout=60)
        up_at = len(traffic.made)
        wait_for(lambda: len(traffic.made) > up_at + 30)
    finally:
        traffic.stop.set()
        client.join(20)
    assert not traffic.wrong, f"filtering changed while the database was away: {traffic.wrong[:5]}"
    assert gw.metric("schoolgate_records_spooled_total") > 0
    gw.stop()  # flushes the queue

    rows = [line.split("|") for line in server.psql(
        "SELECT instance, seq, host, url FROM access_log ORDER BY id", "outage").splitlines()]
    seqs = [int(seq) for instance, seq, _, _ in rows if instance == "gw-outage"]
    assert seqs == list(range(1, len(seqs) + 1)), "seq out of order, repeated or with gaps"
    stored = [f"{host}{re.sub(r'^http://[^/]+', '', url)}" for _, _, host, url in rows if "/r/" in url]
    assert sorted(stored) == sorted(traffic.made), (
        f"{len(traffic.made)} requests made, {len(stored)} stored; "
        f"missing {sorted(set(traffic.made) - set(stored))[:5]}")
    assert stored == traffic.made  # and in the order they were made
    assert not list(tmp_path.glob("*.jsonl*")), "spool files left behind"
