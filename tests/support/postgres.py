"""A throw-away PostgreSQL server on loopback, from Debian's postgresql binaries.

initdb and postgres refuse to run as root, so when the tests run as root the
server runs as the `postgres` OS user, with its data directory and unix socket
in a temporary directory that user owns.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from .gateway import free_ports

START_TIMEOUT = 30


def postgres_bin() -> Path | None:
    """The newest installed PostgreSQL's bin directory, or None."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/postgres"), key=lambda p: int(p.parts[-3]))
    return candidates[-1].parent if candidates else None


@dataclass
class PostgresServer:
    bin: Path
    root: Path  # data directory and socket live under here
    port: int
    user: str | None  # OS user to run as (None: ourselves)

    @property
    def data(self) -> Path:
        return self.root / "data"

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+asyncpg://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, program: str, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / program), *args]
        if self.user:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, check=check, timeout=START_TIMEOUT + 10)

    def init(self) -> None:
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def start(self) -> None:
        options = (f"-c listen_addresses=127.0.0.1 -c port={self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-l", str(self.root / "server.log"), "-o", options,
                  "-w", "-t", str(START_TIMEOUT), "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop", check=False)

    def psql(self, sql: str, database: str = "postgres") -> str:
        done = self._run("psql", "-h", "127.0.0.1", "-p", str(self.port), "-U", "postgres", "-d", database,
                         "-v", "ON_ERROR_STOP=1", "-At", "-c", sql, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"psql: {done.stderr.strip()}")
        return done.stdout.strip()

    def create_database(self, name: str) -> str:
        self.psql(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def log_text(self) -> str:
        path = self.root / "server.log"
        return path.read_text(errors="replace") if path.exists() else ""


def start_postgres() -> PostgresServer:
    """initdb and start a server; the caller stops it and removes `root`."""
    bin = postgres_bin()
    if bin is None:
        raise FileNotFoundError("no /usr/lib/postgresql/*/bin/postgres")
    user = "postgres" if os.geteuid() == 0 else None
    root = Path(tempfile.mkdtemp(prefix="sg-pg-"))
    if user:
        entry = pwd.getpwnam(user)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(bin=bin, root=root, port=free_ports(1)[0], user=user)
    try:
        server.init()
        server.start()
    except BaseException:
        server.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)
        raise
    return server


# Fixtures, registered for every test by conftest.py's pytest_plugins (importing them into a
# test module would register a second copy, and start a second server).

def _running_postgres() -> Iterator[PostgresServer]:
    if postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (apt install postgresql)")
    server = start_postgres()
    try:
        yield server
    finally:
        server.stop("immediate")
        shutil.rmtree(server.root, ignore_errors=True)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    """A server for the session; skips the test when PostgreSQL is not installed."""
    yield from _running_postgres()


@pytest.fixture
def private_postgres() -> Iterator[PostgresServer]:
    """A server of the test's own, for tests that stop or freeze it: the session's server stays up."""
    yield from _running_postgres()


@pytest.fixture
def database_url(postgres: PostgresServer) -> str:
    """A fresh database on the session's server."""
    return postgres.create_database(f"t_{uuid.uuid4().hex[:12]}")


def journal_of(database_url: str) -> Path:
    """A record writer's journal of its own for a test database. For PostgreSQL the writer's default
    is the working directory, one for every test of a process: records a writer left there (stored,
    but not yet known to be) would load into the next test's database at its writer's start."""
    return Path(tempfile.gettempdir()) / f"sg-journal-{uuid.uuid5(uuid.NAMESPACE_URL, database_url).hex}.jsonl"

