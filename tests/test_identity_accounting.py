"""RADIUS accounting from a real RADIUS client (FreeRADIUS's radclient): Start, Interim-Update
and Stop name and un-name a user on a device address; a wrong secret or an unknown sender
is dropped unanswered."""

from __future__ import annotations

import asyncio
import ipaddress
import shutil

import pytest

from schoolgate.addons.accounting import AccountingListener, BadPacket, parse
from schoolgate.identities import AddressSessions, Identity, Source, plain_user_name
from schoolgate.policy import AccountingSettings

RADCLIENT = shutil.which("radclient")
pytestmark = pytest.mark.skipif(RADCLIENT is None, reason="radclient is not installed (apt-get install freeradius-utils)")

SECRET = "wifi-controller-secret"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def settings(tmp_path) -> AccountingSettings:
    secret = tmp_path / "radius.secret"
    secret.write_text(SECRET + "\n")
    return AccountingSettings(secret_file=secret, clients=(ipaddress.ip_network("127.0.0.0/8"),),
                              listen_address="127.0.0.1", port=0, session_hours=1)


async def radclient(port: int, attributes: str, secret: str = SECRET, source: str = "127.0.0.1") -> bool:
    """Send one Accounting-Request; True when the gateway answered it."""
    process = await asyncio.create_subprocess_exec(
        RADCLIENT, "-r", "1", "-t", "2", f"127.0.0.1:{port}", "acct", secret,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await process.communicate(attributes.encode())
    return process.returncode == 0 and b"Received Accounting-Response" in out


def test_start_interim_and_stop_name_and_unname_the_user_on_an_address(settings):
    clock = Clock()
    sessions = AddressSessions(clock)

    async def go():
        listener = await AccountingListener.start(settings, sessions)
        try:
            start = "User-Name = amy.b@school.test, Framed-IP-Address = 10.20.1.5, Acct-Status-Type = Start, Acct-Session-Id = s1"
            assert await radclient(listener.port, start)
            assert sessions.get("10.20.1.5") == Identity("amy.b", Source.ACCOUNTING)
            clock.now += 3000
            interim = start.replace("Start", "Interim-Update")
            assert await radclient(listener.port, interim)
            clock.now += 3000  # past the first hour, but the interim update renewed it
            assert sessions.get("10.20.1.5") is not None
            # A late Stop for someone else on a reused address does not sign amy out.
            assert await radclient(listener.port, start.replace("amy.b", "ben.c").replace("Start", "Stop"))
            assert sessions.get("10.20.1.5").user == "amy.b"
            assert await radclient(listener.port, start.replace("Start", "Stop"))
            assert sessions.get("10.20.1.5") is None
            # IPv6 devices, and a domain-style name.
            v6 = "User-Name = 'SCHOOL\\\\ben.c', Framed-IPv6-Address = 2001:db8::5, Acct-Status-Type = Start"
            assert await radclient(listener.port, v6)
            assert sessions.get("2001:db8::5") == Identity("ben.c", Source.ACCOUNTING)
        finally:
            listener.close()

    asyncio.run(go())


def test_sessions_expire_without_a_stop_and_a_controller_restart_ends_its_sessions(settings):
    clock = Clock()
    sessions = AddressSessions(clock)

    async def go():
        listener = await AccountingListener.start(settings, sessions)
        try:
            assert await radclient(listener.port, "User-Name = amy.b, Framed-IP-Address = 10.20.1.5, Acct-Status-Type = Start")
            assert await radclient(listener.port, "User-Name = ben.c, Framed-IP-Address = 10.20.1.6, Acct-Status-Type = Start")
            clock.now += 3601
            assert sessions.get("10.20.1.5") is None
            assert await radclient(listener.port, "User-Name = amy.b, Framed-IP-Address = 10.20.1.5, Acct-Status-Type = Start")
            assert await radclient(listener.port, "NAS-IP-Address = 127.0.0.1, Acct-Status-Type = Accounting-On")
            assert sessions.get("10.20.1.5") is None and len(sessions) == 0
        finally:
            listener.close()

    asyncio.run(go())


def test_a_wrong_secret_or_an_unlisted_sender_is_dropped_unanswered(settings):
    sessions = AddressSessions()

    async def go():
        listener = await AccountingListener.start(settings, sessions)
        try:
            packet = "User-Name = mallory, Framed-IP-Address = 10.20.1.9, Acct-Status-Type = Start"
            assert not await radclient(listener.port, packet, secret="guessed")
            assert sessions.get("10.20.1.9") is None and listener.dropped == 1
        finally:
            listener.close()
        only_elsewhere = AccountingSettings(secret_file=settings.secret_file, clients=(ipaddress.ip_network("10.0.0.0/8"),),
                                            listen_address="127.0.0.1", port=0)
        listener = await AccountingListener.start(only_elsewhere, sessions)
        try:
            assert not await radclient(listener.port, packet)
            assert sessions.get("10.20.1.9") is None
        finally:
            listener.close()

    asyncio.run(go())


@pytest.mark.parametrize("packet", [b"", b"\x04\x01\x00\x05" + bytes(16), b"\x01\x01\x00\x14" + bytes(16),
                                    b"\x04\x01\x00\x16" + bytes(16) + b"\x01\x00"])
def test_malformed_packets_are_refused(packet):
    with pytest.raises(BadPacket):
        parse(packet, b"secret")


def test_plain_user_names():
    assert [plain_user_name(n) for n in ["amy.b@school.uk", "SCHOOL\\amy.b", "amy.b"]] == ["amy.b"] * 3


def test_sessions_are_shared_between_gateway_processes_through_the_database(tmp_path):
    """Two processes' session tables over one real SQLite database: a sign-in heard by one
    is known to the other at its next poll, and so is its end."""
    from datetime import UTC, datetime

    from schoolgate.addons.sessions import SessionStore, apply_rows
    from schoolgate.db import create_engine, upgrade

    url = f"sqlite+aiosqlite:///{tmp_path / 'sg.db'}"

    async def go():
        await upgrade(url)
        store = SessionStore(create_engine(url))
        here, there = AddressSessions(), AddressSessions()
        saved = []
        here.on_change = lambda *change: saved.append(change)
        here.start("10.20.1.5", Identity("amy.b", Source.PORTAL, frozenset({"year7"})), 3600, "portal")
        for change in saved:
            await store.save(*change, datetime.now(UTC))
        apply_rows(there, await store.changed_since(None), datetime.now(UTC))
        assert there.get("10.20.1.5") == Identity("amy.b", Source.PORTAL, frozenset({"year7"}))
        assert 3500 < there.remaining("10.20.1.5") <= 3600
        saved.clear()
        here.end("10.20.1.5")
        for change in saved:
            await store.save(*change, datetime.now(UTC))
        apply_rows(there, await store.changed_since(None), datetime.now(UTC))
        assert there.get("10.20.1.5") is None
        await store.engine.dispose()

    asyncio.run(go())


def test_a_controller_naming_a_user_in_another_case_names_the_same_user(settings):
    sessions = AddressSessions(Clock())

    async def go():
        listener = await AccountingListener.start(settings, sessions)
        try:
            start = "User-Name = 'SCHOOL\\\\Amy.B', Framed-IP-Address = 10.20.1.7, Acct-Status-Type = Start"
            assert await radclient(listener.port, start)
            assert sessions.get("10.20.1.7") == Identity("amy.b", Source.ACCOUNTING)
            assert await radclient(listener.port, "User-Name = AMY.B, Framed-IP-Address = 10.20.1.7, Acct-Status-Type = Stop")
            assert sessions.get("10.20.1.7") is None
        finally:
            listener.close()

    asyncio.run(go())


def test_without_the_sign_in_page_or_accounting_the_sessions_table_is_not_polled(tmp_path, monkeypatch):
    """Only the sign-in page and RADIUS accounting put users on addresses: a gateway with
    neither does not ask the database every second, and asks as soon as one is turned on."""
    import dataclasses
    from types import SimpleNamespace

    from schoolgate.addons import sessions as shared
    from schoolgate.db import upgrade
    from schoolgate.policy import AccountingSettings, load_policy

    path = tmp_path / "policy.toml"
    path.write_text(f'[gateway]\ndatabase = "sqlite+aiosqlite:///{tmp_path / "sg.db"}"\n\n'
                    '[groups.pupils]\nnetworks = ["10.0.0.0/8"]\n')
    plain = load_policy(path)
    watch = SimpleNamespace(engine=SimpleNamespace(policy=plain))
    monkeypatch.setattr(shared, "POLL_SECONDS", 0.05)
    reads = []

    async def go():
        await upgrade(plain.gateway.database)
        addon = shared.SharedSessions(watch, AddressSessions())
        await addon.running()
        store = addon._connect()
        changed_since = store.changed_since

        async def counted(since):
            reads.append(since)
            return await changed_since(since)

        store.changed_since = counted
        await asyncio.sleep(0.5)
        assert reads == []  # no portal, no accounting: nothing to read
        secret = tmp_path / "radius.secret"
        secret.write_text("s3cret\n")
        accounting = AccountingSettings(secret_file=secret, clients=plain.accounting.clients)
        watch.engine = SimpleNamespace(policy=dataclasses.replace(plain, accounting=accounting))
        await asyncio.sleep(0.5)
        await addon.done()
        assert reads, "accounting turned on: the sessions others heard are read again"

    asyncio.run(go())
