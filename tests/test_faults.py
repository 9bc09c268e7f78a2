"""Fault injection with real processes: a gateway killed with SIGKILL, a database that
hangs (PostgreSQL stopped with SIGSTOP, an SQLite lock held by another process), SIGTERM
in the middle of a stall. Each test counts the requests that got an answer against the
records stored afterwards, and checks each instance's `seq` has no gap and no repeat.

Documented bound (README, "When the database is down"): every request that was answered
is recorded, whatever the fault, except after a power cut (the journal's last
`sync_seconds`, 0.1 s, of records), which these tests cannot simulate.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil
import pytest

from schoolgate.records import RecordWriter, default_spool_path

from support.clients import httpx_client
from support.gateway import Gateway
from support.postgres import PostgresServer
from support.waiting import wait_for

POLICY = """\
[gateway]
database = "DATABASE"
metrics_port = {metrics_port}
default_group = "pupils"

[categories]
games = "block"

[groups.pupils]
networks = ["127.0.0.1/32"]
"""

SHUTDOWN_BOUND_SECONDS = 10.0


@dataclass
class Traffic:
    """A client that asks for an allowed and a blocked page in turn until told to stop,
    noting every request that got an answer (so must be on record)."""

    gateway: Gateway
    answered: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        assert self.thread is not None
        self.thread.join(30)

    def _run(self) -> None:
        # A connection per request (see tests/test_postgres.py's Traffic for why).
        with httpx_client(self.gateway, timeout=10, headers={"Connection": "close"}) as client:
            n = 0
            while not self.stop.is_set():
                n += 1
                host, expected = ("games.test", 403) if n % 3 == 0 else ("school.test", 200)
                try:
                    status = client.get(f"http://{host}/r/{n}").status_code
                except httpx.HTTPError:
                    if self.stop.is_set() or not self.gateway.running:
                        return  # the gateway is being stopped on purpose
                    self.wrong.append(f"{host}/r/{n}: no answer")
                    continue
                self.answered.append(f"{host}/r/{n}")
                if status != expected:
                    self.wrong.append(f"{host}/r/{n}: {status}")
                time.sleep(0.005)


def load_journal(database_url: str, instance: str, spool_dir: Path | None = None) -> None:
    """What the next start of the gateway does first: load what the journal still holds."""
    async def run() -> None:
        writer = RecordWriter(database_url, spool_path=default_spool_path(database_url, instance, spool_dir))
        await writer.start()
        await writer.close()

    asyncio.run(run())


def assert_all_recorded(rows: list[tuple[str, int, str]], instance: str, answered: list[str]) -> None:
    """Every answered request is on record once, and the instance's seq runs 1..n with no gap."""
    seqs = sorted(seq for name, seq, _ in rows if name == instance)
    assert seqs == list(range(1, len(seqs) + 1)), "seq with gaps or repeats"
    stored = [re.sub(r"^http://", "", url) for name, _, url in rows if name == instance and "/r/" in url]
    assert len(stored) == len(set(stored)), "a record stored twice"
    missing = set(answered) - set(stored)
    assert not missing, f"{len(answered)} answered, {len(missing)} not on record, e.g. {sorted(missing)[:5]}"


def sqlite_rows(path: Path) -> list[tuple[str, int, str]]:
    with sqlite3.connect(path) as connection:
        return connection.execute("SELECT instance, seq, url FROM access_log ORDER BY instance, seq").fetchall()


def postgres_rows(server: PostgresServer, database: str) -> list[tuple[str, int, str]]:
    out = server.psql("SELECT instance, seq, url FROM access_log ORDER BY instance, seq", database)
    return [(i, int(s), u) for i, s, u in (line.split("|") for line in out.splitlines())]


def killed(gateway: Gateway, sig: signal.Signals = signal.SIGKILL) -> float:
    """Send `sig` to the gateway; seconds until it exited."""
    process = gateway._process  # the harness keeps it private; this test is about how it dies
    assert process is not None
    started = time.monotonic()
    process.send_signal(sig)
    process.wait(60)
    gateway._exit_reported = True  # the fixture's stop() must not treat the intended death as a failure
    return time.monotonic() - started


def test_kill_9_mid_traffic_loses_no_answered_request(gateway_factory) -> None:
    gw = gateway_factory(POLICY.replace("DATABASE", "{database}"), options={"schoolgate_instance": "gw-kill"})
    traffic = Traffic(gw).start()
    wait_for(lambda: len(traffic.answered) > 300, timeout=60)
    traffic.stop.set()
    killed(gw, signal.SIGKILL)
    traffic.finish()
    assert not traffic.wrong
    stored_before_restart = len(sqlite_rows(gw.db_path))
    journal = default_spool_path(gw.database_url, "gw-kill")
    assert journal.with_name(journal.name + ".running").exists()  # the next start reports the unclean stop

    load_journal(gw.database_url, "gw-kill")
    assert not journal.exists() and not journal.with_name(journal.name + ".running").exists()
    rows = sqlite_rows(gw.db_path)
    assert_all_recorded(rows, "gw-kill", traffic.answered)
    print(f"kill -9 after {len(traffic.answered)} answered requests: {stored_before_restart} in the database, "
          f"{len(rows) - stored_before_restart} loaded from the journal at the next start, 0 lost")


def _hold_sqlite_lock(path: Path) -> subprocess.Popen[str]:
    """Another process holding SQLite's write lock until its stdin closes."""
    code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
            "c.execute('BEGIN EXCLUSIVE'); print('locked', flush=True); sys.stdin.read()")
    holder = subprocess.Popen([sys.executable, "-c", code, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    return holder


def test_a_held_sqlite_lock_spools_then_sigterm_mid_stall_is_bounded_and_loses_nothing(gateway_factory) -> None:
    gw = gateway_factory(POLICY.replace("DATABASE", "{database}"), options={"schoolgate_instance": "gw-lock"})
    traffic = Traffic(gw).start()
    wait_for(lambda: len(traffic.answered) > 50, timeout=60)

    # A stall that ends: records go to the journal, filtering goes on, then everything is loaded.
    holder = _hold_sqlite_lock(gw.db_path)
    wait_for(lambda: gw.metric("schoolgate_record_spool_bytes") > 0, timeout=20)
    answered_at = len(traffic.answered)
    wait_for(lambda: len(traffic.answered) > answered_at + 50, timeout=60)
    assert gw.metric("schoolgate_record_queue_depth") < 10_000
    holder.communicate("")
    wait_for(lambda: gw.metric("schoolgate_record_spool_bytes") == 0, timeout=30)

    # A stall during which the gateway is told to stop: it must not wait for the database.
    holder = _hold_sqlite_lock(gw.db_path)
    answered_at = len(traffic.answered)
    wait_for(lambda: len(traffic.answered) > answered_at + 50, timeout=60)
    traffic.stop.set()
    took = killed(gw, signal.SIGTERM)
    traffic.finish()
    holder.communicate("")
    assert took < SHUTDOWN_BOUND_SECONDS, f"SIGTERM during a stall took {took:.1f} s"
    assert not traffic.wrong
    assert "LOST" not in gw.log_text()

    load_journal(gw.database_url, "gw-lock")
    assert_all_recorded(sqlite_rows(gw.db_path), "gw-lock", traffic.answered)
    print(f"SQLite locked twice, SIGTERM in the second stall: exit in {took:.1f} s, "
          f"{len(traffic.answered)} answered, 0 lost")


def _postgres_processes(server: PostgresServer) -> list[psutil.Process]:
    pid = int((server.data / "postmaster.pid").read_text().split()[0])
    postmaster = psutil.Process(pid)
    return [postmaster, *postmaster.children(recursive=True)]


def _signal_all(processes: list[psutil.Process], sig: signal.Signals) -> None:
    for process in processes:
        try:
            process.send_signal(sig)
        except psutil.NoSuchProcess:
            pass


def test_postgres_stopped_with_sigstop_spools_recovers_and_sigterm_mid_stall_is_bounded(
        gateway_factory, private_postgres, tmp_path) -> None:
    server = private_postgres  # its own server: this test freezes it
    paused: list[psutil.Process] = []
    try:
        url = server.create_database("faults")
        gw = gateway_factory(POLICY.replace("DATABASE", url),
                             options={"schoolgate_instance": "gw-stop", "schoolgate_spool_dir": str(tmp_path)})
        traffic = Traffic(gw).start()
        wait_for(lambda: len(traffic.answered) > 50, timeout=60)

        paused = _postgres_processes(server)
        _signal_all(paused, signal.SIGSTOP)
        wait_for(lambda: gw.metric("schoolgate_record_spool_bytes") > 0, timeout=20)
        answered_at = len(traffic.answered)
        wait_for(lambda: len(traffic.answered) > answered_at + 50, timeout=60)
        _signal_all(paused, signal.SIGCONT)
        paused = []
        wait_for(lambda: gw.metric("schoolgate_record_spool_bytes") == 0, timeout=40)

        paused = _postgres_processes(server)
        _signal_all(paused, signal.SIGSTOP)
        answered_at = len(traffic.answered)
        wait_for(lambda: len(traffic.answered) > answered_at + 50, timeout=60)
        traffic.stop.set()
        took = killed(gw, signal.SIGTERM)
        traffic.finish()
        _signal_all(paused, signal.SIGCONT)
        paused = []
        assert took < SHUTDOWN_BOUND_SECONDS, f"SIGTERM during a stall took {took:.1f} s"
        assert not traffic.wrong
        assert "LOST" not in gw.log_text()

        load_journal(url, "gw-stop", tmp_path)
        assert_all_recorded(postgres_rows(server, "faults"), "gw-stop", traffic.answered)
        print(f"PostgreSQL SIGSTOPped twice, SIGTERM in the second stall: exit in {took:.1f} s, "
              f"{len(traffic.answered)} answered, 0 lost")
    finally:
        _signal_all(paused, signal.SIGCONT)


def _mount_tmpfs(directory: Path, size: str) -> bool:
    directory.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return False
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(directory)],
                          capture_output=True).returncode == 0


def _fill(directory: Path) -> Path:
    filler = directory / "filler"
    # Unbuffered: a buffered file would keep what the full disk refused and fail again on close.
    with filler.open("wb", buffering=0) as file:
        try:
            while file.write(b"\0" * 65536):
                pass
        except OSError:
            pass
    return filler


def test_a_full_disk_keeps_filtering_and_recovers_when_space_returns(gateway_factory, tmp_path) -> None:
    state = tmp_path / "state"
    if not _mount_tmpfs(state, "4m"):
        pytest.skip("needs root to mount a small tmpfs")
    try:
        database = f"sqlite+aiosqlite:///{state}/schoolgate.db"
        gw = gateway_factory(POLICY.replace("DATABASE", database),
                             options={"schoolgate_instance": "gw-full", "schoolgate_spool_dir": str(state)})
        traffic = Traffic(gw).start()
        wait_for(lambda: len(traffic.answered) > 50, timeout=60)
        filler = _fill(state)
        failures = gw.metric("schoolgate_record_write_failures_total")
        wait_for(lambda: gw.metric("schoolgate_record_write_failures_total") > failures, timeout=30)
        answered_at = len(traffic.answered)
        wait_for(lambda: len(traffic.answered) > answered_at + 100, timeout=60)  # filtering goes on
        filler.unlink()
        wait_for(lambda: gw.metric("schoolgate_record_queue_depth") == 0
                 and gw.metric("schoolgate_record_spool_bytes") == 0, timeout=30)
        dropped = gw.metric("schoolgate_records_dropped_total")
        traffic.finish()
        gw.stop()
        assert not traffic.wrong
        assert dropped == 0
        assert_all_recorded(sqlite_rows(state / "schoolgate.db"), "gw-full", traffic.answered)
        print(f"disk full for {len(traffic.answered) - answered_at}+ requests: {len(traffic.answered)} answered, 0 lost")
    finally:
        subprocess.run(["umount", "-l", str(state)], capture_output=True)
