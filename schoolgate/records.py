"""Access records: what is stored for every access attempt, and the writer that stores them.

The gateway calls `RecordWriter.submit` on the event loop for each request.
`submit` appends the record to a local journal file (one `write()`, so a
killed gateway loses nothing: the kernel keeps the bytes; an fsync every
`sync_seconds` bounds what a power cut can take) and queues it in memory; a
background task writes the queue in batches, one transaction each, with
aiosqlite (INSERTs of many rows) or asyncpg (COPY) keeping the database I/O off the loop.

While the database is slow, hung or down (no answer within `spool_after_seconds`,
or `max_backlog` records waiting), the queue is let go and the writer reads the
journal instead, so memory stays bounded whatever the database does; new records
go to the journal only until the writer has caught up. Once everything in the
journal is stored it is emptied. At shutdown, and after a crash, whatever the
journal still holds is loaded at the next start, skipping records already stored.
Every database await has a deadline, so shutdown is bounded. Records the database
rejects outright go to a `.rejected.jsonl` file beside it. A record that cannot be
kept anywhere (disk full and database down) is counted in
`schoolgate_records_dropped_total` and leaves a gap in its instance's `seq`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import operator
import os
import re
import secrets
import sqlite3
import sys
import time
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import chain, islice
from pathlib import Path
from typing import Any

import msgspec
from sqlalchemy import Connection, and_, bindparam, func, insert, select, type_coerce, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.types import NullType

from schoolgate import commaset

# The record itself lives in a module without database imports; it is used from here as before.
from schoolgate.accessrecord import AccessRecord, record_from_json
from schoolgate.accessrecord import record_as_json as record_as_json
from schoolgate.accessrecord import record_from_row as record_from_row
from schoolgate.db import (
    access_log,
    create_engine,
    dispose_within,
    incident_records,
    incidents,
    is_sqlite,
    upgrade,
)
from schoolgate.episodes import Attempt, Episode, Status, SubjectKind, group_attempts, subject_of
from schoolgate.metrics import (
    RECORD_QUEUE_DEPTH,
    RECORD_SEQ_MISSING,
    RECORD_SPOOL_BYTES,
    RECORD_UNCLEAN_STOPS,
    RECORD_WRITE_FAILURES,
    RECORD_WRITE_SECONDS,
    RECORDS_DROPPED,
    RECORDS_SET_ASIDE,
    RECORDS_SPOOLED,
    RECORDS_WRITTEN,
)
from schoolgate.partitioning import keep_partitions_ready
from schoolgate.policy import UrlLogging

log = logging.getLogger("schoolgate.records")


def url_for_log(url: str, scheme: str, host: str, port: int | None, mode: UrlLogging) -> str | None:
    """The URL as the school chose to keep it: all of it, scheme://host[:port], or nothing."""
    if mode is UrlLogging.FULL:
        return url
    if mode is UrlLogging.NONE:
        return None
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    if port is None or port == _DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


_DEFAULT_PORTS = {"http": 80, "https": 443}

# Crockford's base32: digits and capitals without I, L, O and U, so a
# reference read out over the phone or copied from a screenshot survives.
_REFERENCE_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_REFERENCE_MISREADINGS = str.maketrans({"O": "0", "I": "1", "L": "1"})


def new_reference() -> str:
    """A reference for a block or warning page, like SG-7K3F-9QX2 (40 random bits)."""
    chars = "".join(secrets.choice(_REFERENCE_ALPHABET) for _ in range(8))
    return f"SG-{chars[:4]}-{chars[4:]}"


def normalise_reference(text: str) -> str:
    """What a person typed ("sg 7k3f 9qx2", "7K3F9QX2", O for 0) in the stored form."""
    chars = "".join(c for c in text.upper() if c.isalnum()).translate(_REFERENCE_MISREADINGS)
    chars = chars.removeprefix("SG")
    return f"SG-{chars[:4]}-{chars[4:]}" if len(chars) == 8 else text.strip()


def default_spool_path(database_url: str, instance: str | None = None, directory: Path | None = None) -> Path:
    """The journal: in `directory` if given, else beside an SQLite database file, else in the working directory.

    Gateways sharing a database pass their instance name so that each keeps,
    and replays, a journal of its own."""
    suffix = f".{re.sub(r'[^A-Za-z0-9_.-]', '_', instance)}" if instance else ""
    database = make_url(database_url).database
    if is_sqlite(database_url) and database and database != ":memory:":
        path = Path(f"{database}.unwritten{suffix}.jsonl")
    else:
        path = Path(f"schoolgate-unwritten{suffix}.jsonl")
    return directory / path.name if directory else path


# Errors that a later attempt may not get: locked, unreachable, shutting down,
# disk full, no answer in time. Anything else (a constraint or type the record
# breaks) would fail forever, so that record is set aside instead of blocking
# every one behind it.
_TRANSIENT_ERRORS = (OperationalError, InterfaceError, OSError, TimeoutError)
# PostgreSQL SQLSTATE classes asyncpg reports as plain DBAPIError: connection
# exception, insufficient resources, operator intervention (shutdown, restart),
# system error; and serialization failure / deadlock.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57", "58", "40001", "40P01")
_FIRST_RETRY_SECONDS = 0.1
_MAX_RETRY_SECONDS = 5.0
_SPOOL_LOG_SECONDS = 30.0  # at most one "journal is growing" line this often
_SEQ_GAP_WINDOW_HOURS = 24  # how far back start-up looks for gaps in this instance's seq
DEFAULT_EPISODE_WINDOW = timedelta(minutes=30)  # [monitoring] episode_minutes
# Any fixed number: writers of several gateways take turns at extending incidents (PostgreSQL).
_INCIDENT_LOCK_KEY = 0x5C0016C1D


def is_transient(error: BaseException) -> bool:
    """Whether writing the same records again may succeed."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, _TRANSIENT_ERRORS):
        return True
    # COPY runs on asyncpg's own connection, so its errors arrive untranslated.
    asyncpg = sys.modules.get("asyncpg")
    if asyncpg is not None and isinstance(error, asyncpg.InterfaceError | asyncpg.InternalClientError) \
            and not isinstance(error, asyncpg.DataError):
        # "connection is closed", "another operation is in progress", or a server that died mid-COPY
        # ("cannot switch to state 21"): the connection's fault, not the record's.
        return True
    sqlstate = getattr(getattr(error, "orig", error), "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES)


class Journal:
    """An append-only file (0600) of JSON lines: records not yet known to be in the database.

    Appends are single `write()` calls on an O_APPEND descriptor, so a record is
    whole in the file, and survives the process being killed, as soon as
    `append` returns; `sync` (from a thread) makes it survive a power cut.
    """

    def __init__(self, path: Path, max_bytes: int):
        self.path = path
        self.max_bytes = max_bytes
        self.size = 0
        self._fd: int | None = None
        self._failing = False
        self._closed = False  # by the writer, for good

    def open(self) -> None:
        create_private_parent(self.path)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        os.fchmod(self._fd, 0o600)  # also a journal left by an older version
        self.size = os.fstat(self._fd).st_size
        if self.size and not self._ends_with_newline():
            self.append(b"\n")  # a line torn by a power cut: the next one must not join it

    def mark_running(self) -> str | None:
        """Note that a gateway writes this journal (until `close`); how the previous one stopped if it
        never closed: "process" (killed: the journal has everything) or "machine" (the machine
        stopped under it, a power cut: its last unsynced records may be lost)."""
        marker = self.path.with_name(self.path.name + ".running")
        previous = marker.read_text().strip() if marker.exists() else None
        fd = os.open(marker, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as file:
            file.write(_boot_id() + "\n")
        if previous is None:
            return None
        return "process" if previous == _boot_id() else "machine"

    def _ends_with_newline(self) -> bool:
        with self.path.open("rb") as file:
            file.seek(-1, os.SEEK_END)
            return file.read(1) == b"\n"

    def append(self, data: bytes) -> int | None:
        """Where the data starts in the file; None if it could not be written (full, or over `max_bytes`).

        If the file could not be opened at start it is tried again; after `close` (a record
        that came late) it is opened, appended to, synced and closed again."""
        if self._fd is None:
            try:
                self.open()
            except OSError as e:
                if not self._failing:
                    log.error("cannot open %s to keep access records: %s", self.path, e)
                    self._failing = True
                return None
            if self._closed:
                try:
                    return self.append(data)
                finally:
                    self.sync_now()
                    self.close(remove_if_empty=False)
        fd = self._fd
        assert fd is not None
        start = self.size
        try:
            if start + len(data) > self.max_bytes:
                raise OSError(f"the journal has reached its cap of {self.max_bytes} bytes")
            written = os.write(fd, data)
            if written != len(data):  # the disk filled part-way: take the fragment back
                os.ftruncate(fd, start)
                raise OSError(f"only {written} of {len(data)} bytes written")
        except OSError as e:
            if not self._failing:
                log.error("cannot append access records to %s: %s", self.path, e)
                self._failing = True
            return None
        if self._failing:
            log.warning("access records are being appended to %s again", self.path)
            self._failing = False
        self.size = start + len(data)
        return start

    def sync_now(self) -> None:
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as e:
                log.error("cannot sync %s: %s", self.path, e)

    async def sync(self) -> None:
        fd = self._fd
        if fd is not None:
            try:
                await asyncio.to_thread(os.fsync, fd)
            except OSError as e:
                log.error("cannot sync %s: %s", self.path, e)

    def empty(self) -> None:
        """Everything in the file is stored: start it afresh (the next records are written from 0)."""
        if self._fd is not None and self.size:
            os.ftruncate(self._fd, 0)
            self.size = 0

    def read(self, offset: int, max_records: int) -> tuple[list[str], int]:
        """Up to `max_records` whole lines from `offset`, and the offset after them (from a thread)."""
        lines: list[str] = []
        with self.path.open("rb") as file:
            file.seek(offset)
            while len(lines) < max_records:
                line = file.readline()
                if not line.endswith(b"\n"):
                    break  # end of file (appends are whole lines, so never a line being written)
                offset += len(line)
                lines.append(line.decode("utf-8", errors="replace"))
        return lines, offset

    def close(self, *, remove_if_empty: bool) -> None:
        self._closed = True
        if self._fd is None:
            return
        if remove_if_empty and os.fstat(self._fd).st_size == 0:
            self.path.unlink(missing_ok=True)
        self.path.with_name(self.path.name + ".running").unlink(missing_ok=True)
        os.close(self._fd)
        self._fd = None


def _boot_id() -> str:
    """Which boot of the machine this is (Linux), so a journal can tell a killed process from a power cut."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def create_private_parent(path: Path) -> None:
    """Create the directory of a file holding personal data, 0700, if it is not there."""
    if not path.parent.exists():
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)


def _encode(record: AccessRecord) -> bytes:
    """A journal line: the record as a JSON object, a field a key (`record_as_json`'s form, the time
    ending in Z). msgspec encodes it about five times faster than json, and this runs on the event
    loop for every request; json takes what msgspec refuses (a lone surrogate from an undecodable URL)."""
    try:
        return _JOURNAL_ENCODER.encode(record) + b"\n"
    except (ValueError, TypeError, OverflowError):
        return (json.dumps(record_as_json(record)) + "\n").encode()


def _decode(line: str) -> AccessRecord:
    """A journal line as a record: msgspec when the line is as `_encode` (or json, or an older
    version) wrote it; `record_from_json` for anything else it accepts. ValueError if neither can."""
    try:
        return _JOURNAL_DECODER.decode(line)
    except msgspec.DecodeError:
        return record_from_json(json.loads(line))


_JOURNAL_ENCODER = msgspec.json.Encoder()
_JOURNAL_DECODER = msgspec.json.Decoder(AccessRecord)
_FIELD_NAMES = tuple(field.name for field in dataclasses.fields(AccessRecord))
_field_values = operator.attrgetter(*_FIELD_NAMES)
_INSERT_COLUMNS = tuple({"user": "username", "group": "group_name"}.get(name, name) for name in _FIELD_NAMES)

Row = tuple[Any, ...]  # a record's column values in `_INSERT_COLUMNS` order, as the driver takes them


def _row_values(record: AccessRecord, sqlite: bool) -> Row:
    """The record's row, without SQLAlchemy's type processing: SQLite gets the time as SQLAlchemy
    stores it there ("YYYY-MM-DD HH:MM:SS.ffffff", UTC), PostgreSQL the datetime."""
    values = list(_field_values(record))
    ts = record.ts.astimezone(UTC)
    values[0] = ts.isoformat(" ", "microseconds")[:26] if sqlite else ts
    values[_CATEGORIES_INDEX] = commaset.encode(record.categories)
    return tuple(values)


_CATEGORIES_INDEX = _FIELD_NAMES.index("categories")


class RecordWriter:
    """Journal records as they come, and write them to the database in batches from a background task.

    Two ways of feeding the database: from the in-memory queue while it keeps up,
    and from the journal (`_from_journal`) once it has stalled, failed for
    `spool_after_seconds` or fallen `max_backlog` records behind. The journal is
    read in order until its end is reached, then the queue takes over again, so
    each instance's records arrive in `seq` order.
    """

    def __init__(
        self,
        database_url: str,
        *,
        batch_size: int = 500,  # records waiting that wake the writer
        max_batch_size: int = 5000,  # the most one transaction takes: batches grow while the database lags
        flush_interval: float = 0.25,
        spool_path: Path | None = None,
        close_retry_seconds: float = 3.0,  # with the cleanup after it, a stop stays well under 10 s
        spool_after_seconds: float = 2.0,
        write_timeout: float = 10.0,
        max_backlog: int = 10_000,
        max_spool_bytes: int = 1 << 30,
        sync_seconds: float = 0.1,
        instance: str | None = None,  # this gateway's name, whose gaps in seq the metric counts
        episode_window: Callable[[], timedelta] = lambda: DEFAULT_EPISODE_WINDOW,  # asked per batch: the live policy
    ):
        self._database_url = database_url
        self._instance = instance
        self._episode_window = episode_window
        self._sqlite = is_sqlite(database_url)
        self._batch_size = batch_size
        self._max_batch_size = max(batch_size, max_batch_size)
        self._flush_interval = flush_interval
        self._journal = Journal(spool_path or default_spool_path(database_url), max_spool_bytes)
        # Records the database refused outright: kept for IT staff, never replayed automatically.
        path = self._journal.path
        self._rejected_path = path.with_name(path.name.removesuffix(".jsonl") + ".rejected.jsonl")
        self._close_retry_seconds = close_retry_seconds
        self._spool_after_seconds = spool_after_seconds
        self._write_timeout = write_timeout
        self._max_backlog = max_backlog
        self._sync_seconds = sync_seconds
        # Records not yet stored, with where each starts in the journal (None: not in it,
        # the disk refused) and its row, made as it comes rather than a batch at a time on
        # the event loop. While reading the journal, only records that are not in it.
        self._queue: deque[tuple[AccessRecord, int | None, Row]] = deque()
        self._early: list[AccessRecord] = []  # submitted before start() knew the last stored seq
        self._from_journal = False
        self._journal_offset = 0  # where reading the journal resumes
        self._verify_until = 0  # journal records before this offset may be stored already
        self._mode_changes = 0  # lets a batch in flight see that the queue it came from was let go
        self._last_seq: dict[str, int] = {}
        self._instances: set[str] = set()
        self._engine: AsyncEngine | None = None
        self._abandoned: set[asyncio.Task[Any]] = set()  # database calls past their deadline, left to finish
        self._background: set[asyncio.Task[Any]] = set()
        self._task: asyncio.Task[None] | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._partitions_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._close_requested = asyncio.Event()  # wakes a write in flight, so it honours the close deadline
        self._closed = False
        self._close_deadline = math.inf
        self._failing_since: float | None = None
        self._spool_logged_at = -math.inf

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def spool_bytes(self) -> int:
        """Journal bytes the database has not been given yet (0 while it keeps up)."""
        return self._journal.size - self._journal_offset if self._from_journal else 0

    @property
    def spool_path(self) -> Path:
        return self._journal.path

    async def start(self) -> None:
        """Migrate the schema, note what an earlier run left in the journal, and begin writing (the journal first)."""
        await upgrade(self._database_url)
        self._engine = self._new_engine()
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(access_log.c.instance, func.max(access_log.c.seq)).group_by(access_log.c.instance)
            )
            self._last_seq.update({instance: seq for instance, seq in rows})
        try:
            await asyncio.to_thread(self._journal.open)
            unclean = await asyncio.to_thread(self._journal.mark_running)
        except OSError as e:
            # Filtering must go on: records wait in memory (bounded) and each append tries the file again.
            log.error("cannot open the access-record journal %s: %s", self.spool_path, e)
            unclean = None
        if unclean:
            RECORD_UNCLEAN_STOPS.labels(cause=unclean).inc()
            if unclean == "machine":
                log.critical("the machine stopped while this gateway was running (a power cut?): access records of its "
                             "last %.1f s may be lost without a gap in seq; the journal %s has the rest",
                             self._sync_seconds, self.spool_path)
            else:
                # a warning: mitmdump exits on an error logged while starting, and a restart must not crash-loop
                log.warning("the previous gateway process was killed; its records are in %s and are loaded now",
                            self.spool_path)
        if self._journal.size:
            # New records must be numbered after the journalled ones, which are stored before them.
            for instance, seq in (await asyncio.to_thread(self._journalled_last_seqs)).items():
                self._last_seq[instance] = max(self._last_seq.get(instance, 0), seq)
            self._from_journal = True
            self._verify_until = self._journal.size
            log.warning("%s holds %d bytes of access records from an earlier run; loading them", self.spool_path, self._journal.size)
        RECORD_SPOOL_BYTES.set(self.spool_bytes)
        early, self._early = self._early, []
        self._task = asyncio.create_task(self._run(), name="schoolgate-record-writer")
        self._sync_task = asyncio.create_task(self._sync_journal(), name="schoolgate-record-journal-sync")
        # PostgreSQL: each day's partition exists before its first record (a late one is caught by the default).
        self._partitions_task = asyncio.create_task(keep_partitions_ready(self._database_url),
                                                    name="schoolgate-record-partitions")
        for record in early:
            self.submit(record)

    def submit(self, record: AccessRecord) -> None:
        """Journal and queue a record (assigning its seq if 0); never blocks, never drops quietly.

        When this returns the record is in the journal (unless the disk refuses),
        so the gateway may answer the request. Records submitted before start()
        completes wait in memory until the last stored seq is known."""
        if self._task is None:
            self._early.append(record)
            return
        self._assign_seq(record)
        self._instances.add(record.instance)
        offset = self._journal.append(_encode(record))
        if self._closed:
            # Nothing will read the queue any more: the journal keeps it for the next start.
            if offset is None:
                self._drop([record], "it arrived after the writer closed and the journal cannot be written")
            else:
                RECORDS_SPOOLED.inc()
            return
        if self._from_journal:
            RECORDS_SPOOLED.inc()
            RECORD_SPOOL_BYTES.set(self.spool_bytes)
            if offset is not None:
                return  # the writer reads it from the journal
            if len(self._queue) >= self._max_backlog:
                self._drop([record], "the database is not keeping up and the journal cannot be written")
                return
        self._queue.append((record, offset, _row_values(record, self._sqlite)))
        RECORD_QUEUE_DEPTH.set(len(self._queue))
        if len(self._queue) >= self._max_backlog and not self._from_journal:
            self._read_journal_instead(f"{len(self._queue)} records are waiting for the database")
        elif len(self._queue) >= self._batch_size:
            self._wake.set()

    async def close(self) -> None:
        """Write what the database takes before the deadline; the rest stays in the journal for the next start."""
        if self._task is None or self._engine is None:
            self._closed = True
            if self._early:
                # Nothing can number them against the database: keep them where IT staff can see them.
                records, self._early = self._early, []
                if _append_fsynced(self._rejected_path, [_encode(r).decode() for r in records]):
                    RECORDS_SET_ASIDE.inc(len(records))
                    log.error("%d access records submitted before the writer started kept in %s", len(records), self._rejected_path)
                else:
                    self._drop(records, "the writer never started")
            return
        self._closing = True
        self._close_deadline = time.monotonic() + self._close_retry_seconds
        self._wake.set()
        self._close_requested.set()
        try:
            await self._task
        finally:
            assert self._sync_task is not None
            self._sync_task.cancel()
            if self._partitions_task is not None:
                self._partitions_task.cancel()
            if self._abandoned:  # let calls past their deadline end, so their connections close (briefly)
                await asyncio.wait(self._abandoned, timeout=1.0)
            await self._journal.sync()
            if self._journal.size:
                log.error("access records not yet in the database are kept in %s (%d bytes); they are loaded at the next start",
                          self.spool_path, self._journal.size)
            self._journal.close(remove_if_empty=True)
            if self._background:
                await asyncio.wait(self._background, timeout=1.0)
                for task in self._background:
                    task.cancel()
            await dispose_within(self._engine)

    async def _sync_journal(self) -> None:
        """Group commit: one fsync every `sync_seconds` covers every record appended meanwhile."""
        while True:
            await asyncio.sleep(self._sync_seconds)
            await self._journal.sync()

    def _journalled_last_seqs(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for record in read_spool(self.spool_path):
            last[record.instance] = max(last.get(record.instance, 0), record.seq)
        return last

    def _assign_seq(self, record: AccessRecord) -> None:
        last = self._last_seq.get(record.instance, 0)
        if record.seq == 0:
            record.seq = last + 1
        self._last_seq[record.instance] = max(last, record.seq)

    def _read_journal_instead(self, why: str) -> None:
        """Let the queue go (the journal has it) and feed the database from the journal."""
        journalled = [offset for _, offset, _ in self._queue if offset is not None]
        if not self._from_journal:
            self._journal_offset = journalled[0] if journalled else self._journal.size
        self._from_journal = True
        self._verify_until = self._journal.size  # up to here, a batch may be in flight
        self._mode_changes += 1
        RECORDS_SPOOLED.inc(len(journalled))
        self._queue = deque(entry for entry in self._queue if entry[1] is None)
        RECORD_QUEUE_DEPTH.set(len(self._queue))
        RECORD_SPOOL_BYTES.set(self.spool_bytes)
        now = time.monotonic()
        if now - self._spool_logged_at >= _SPOOL_LOG_SECONDS:
            self._spool_logged_at = now
            log.error("%s; access records are kept in %s (%d bytes) and loaded as the database takes them",
                      why, self.spool_path, self.spool_bytes)

    async def _run(self) -> None:
        self._in_background(self._update_seq_gaps())
        try:
            while True:
                await self._pause(self._flush_interval)
                await self._write_pending()  # when closing, returns once written or past the deadline
                if self._closing:
                    break
        finally:
            # Set with no await since the queue was last seen, so a record
            # submitted from now on goes to the journal only.
            self._closed = True
            # Records already in the journal stay there for the next start; try once more for the others.
            left_out = [record for record, offset, _ in self._queue if offset is None]
            RECORDS_SPOOLED.inc(len(self._queue) - len(left_out))
            self._queue.clear()
            RECORD_QUEUE_DEPTH.set(0)
            for n, record in enumerate(left_out):
                if self._journal.append(_encode(record)) is None:
                    self._drop(left_out[n:], "the database and the journal both refused them")
                    break
                RECORDS_SPOOLED.inc()

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake early when a batch fills up or close() is called."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _write_pending(self) -> None:
        """Write from the journal or the queue until both are done, retrying while the database refuses."""
        failures = 0
        retry_in = _FIRST_RETRY_SECONDS
        while True:
            mode_changes = self._mode_changes
            from_journal = self._from_journal
            next_offset = self._journal_offset
            # Part of the batch may be stored already: after a failure (a commit whose answer
            # was lost), below `_verify_until` (an earlier run; the batch in flight when the
            # queue was let go), or queued while reading the journal (it may have been in flight).
            verify = failures > 0
            if from_journal and self._journal_offset < self._journal.size:
                verify = verify or self._journal_offset < self._verify_until
                batch, unreadable, next_offset = await asyncio.to_thread(self._read_journal, self._journal_offset)
                for line, error in unreadable:
                    self._set_aside_line(line, error)
            else:
                verify = verify or from_journal
                # Whatever waits, up to the cap: the longer the last write took, the bigger the next.
                batch = [(record, row) for record, _, row in islice(self._queue, self._max_batch_size)]
            if not batch and next_offset == self._journal_offset:
                if from_journal and self._journal_offset >= self._journal.size:
                    self._caught_up()
                return
            attempt_started = time.monotonic()
            try:
                await self._write_with_deadline(batch, dedupe=verify)
            except Exception as e:
                if not is_transient(e):
                    # A bug, not the database: keep the records and keep trying rather than lose them.
                    log.exception("unexpected error writing access records")
                failures += 1
                RECORD_WRITE_FAILURES.inc()
                now = time.monotonic()
                self._failing_since = self._failing_since or attempt_started
                if failures == 1:
                    log.warning("cannot write access records (%d queued), retrying: %s", len(self._queue), _first_line(e))
                if now >= self._close_deadline:
                    return
                if not self._from_journal and now - self._failing_since >= self._spool_after_seconds:
                    self._read_journal_instead(f"the database has refused access records for {now - self._failing_since:.0f} s "
                                               f"({_first_line(e)})")
                await self._pause(min(retry_in, self._close_deadline - now))
                retry_in = min(retry_in * 2, _MAX_RETRY_SECONDS)
                continue
            if failures:
                log.warning("access records are being written again after %d failed attempts", failures)
                failures = 0
                retry_in = _FIRST_RETRY_SECONDS
            self._failing_since = None
            if from_journal and next_offset != self._journal_offset:
                self._journal_offset = next_offset
            elif mode_changes == self._mode_changes:
                for _ in batch:
                    self._queue.popleft()
                RECORD_QUEUE_DEPTH.set(len(self._queue))
                if not self._queue and not self._from_journal:
                    self._journal.empty()  # every journalled record is stored
            RECORD_SPOOL_BYTES.set(self.spool_bytes)
            if self._closing and time.monotonic() >= self._close_deadline:
                return

    def _caught_up(self) -> None:
        """The journal has been read to its end and nothing else waits: back to the queue."""
        if self._queue:
            return
        self._from_journal = False
        self._mode_changes += 1
        self._journal_offset = self._verify_until = 0
        self._journal.empty()
        RECORD_SPOOL_BYTES.set(0)
        log.warning("access records kept in %s are all in the database", self.spool_path)
        self._in_background(self._update_seq_gaps())

    def _in_background(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)  # a reference, so the task is not collected half-way
        task.add_done_callback(self._background.discard)

    def _read_journal(self, offset: int) -> tuple[list[tuple[AccessRecord, Row]], list[tuple[str, Exception]], int]:
        """The next batch from the journal with its rows, made in a thread (off the event loop), and lines that cannot be read."""
        lines, next_offset = self._journal.read(offset, self._max_batch_size)
        batch: list[tuple[AccessRecord, Row]] = []
        unreadable: list[tuple[str, Exception]] = []
        for line in lines:
            if not line.strip():
                continue
            try:
                record = _decode(line)
            except (ValueError, TypeError, KeyError) as e:
                unreadable.append((line, e))
                continue
            batch.append((record, _row_values(record, self._sqlite)))
        return batch, unreadable, next_offset

    async def _write_with_deadline(self, batch: list[tuple[AccessRecord, Row]], *, dedupe: bool) -> None:
        """Insert; past `spool_after_seconds` without an answer feed from the journal meanwhile;
        past `write_timeout` (or the close deadline) give up on this attempt."""
        if not batch:
            return
        task = asyncio.create_task(self._dedupe_and_insert(batch, dedupe))
        started = time.monotonic()
        stall_at = started + self._spool_after_seconds
        close_requested = asyncio.ensure_future(self._close_requested.wait())
        try:
            while not task.done():
                now = time.monotonic()
                # Recomputed each time: a stop asked for mid-attempt brings the deadline forward.
                give_up_at = min(started + self._write_timeout, self._close_deadline)
                if now >= give_up_at:
                    break
                wake_at = give_up_at if self._from_journal else min(stall_at, give_up_at)
                waiting_for = {task} if close_requested.done() else {task, close_requested}
                await asyncio.wait(waiting_for, timeout=max(wake_at - now, 0), return_when=asyncio.FIRST_COMPLETED)
                if not task.done() and not self._from_journal and time.monotonic() >= stall_at:
                    self._read_journal_instead(f"the database has not answered for {self._spool_after_seconds:.0f} s")
        finally:
            close_requested.cancel()
        if not task.done():
            # Abandon the call (its connection may be stuck for good) and start again with a fresh engine.
            task.cancel()
            self._abandoned.add(task)
            task.add_done_callback(self._abandoned.discard)
            old, self._engine = self._engine, self._new_engine()
            assert old is not None
            self._in_background(dispose_within(old))
            raise TimeoutError(f"the database did not answer within {time.monotonic() - started:.1f} s")
        task.result()

    def _new_engine(self) -> AsyncEngine:
        return create_engine(self._database_url, statement_timeout=self._write_timeout)

    async def _dedupe_and_insert(self, batch: list[tuple[AccessRecord, Row]], dedupe: bool) -> None:
        await self._insert_or_set_aside(await self._not_yet_written(batch) if dedupe else batch)

    async def _insert_or_set_aside(self, batch: list[tuple[AccessRecord, Row]]) -> None:
        """Insert the records; if the database rejects the batch, insert each half the same way
        and set aside the records it rejects alone, so one bad record never holds up the rest
        (and costs a few transactions, not one per record of a batch of thousands)."""
        try:
            await self._insert(batch)
        except Exception as e:
            if is_transient(e):
                raise
            RECORD_WRITE_FAILURES.inc()
            if len(batch) == 1:
                log.exception("access record rejected by the database")
                self._set_aside(batch[0][0], e)
                return
            half = len(batch) // 2
            await self._insert_or_set_aside(batch[:half])
            await self._insert_or_set_aside(batch[half:])

    async def _insert(self, batch: list[tuple[AccessRecord, Row]]) -> None:
        if not batch:
            return
        assert self._engine is not None
        started = time.perf_counter()
        rows = [row for _, row in batch]
        flagged = [record for record, _ in batch if record.flag_severity is not None]
        async with self._engine.begin() as connection:
            if self._sqlite:
                # Whole statements of many rows: sqlite3's executemany takes the GIL back after every row,
                # and waits for it while the event loop is busy (a third more rows/s measured that way).
                whole = len(rows) - len(rows) % _SQLITE_ROWS_PER_STATEMENT
                for start in range(0, whole, _SQLITE_ROWS_PER_STATEMENT):
                    values = tuple(chain.from_iterable(rows[start:start + _SQLITE_ROWS_PER_STATEMENT]))
                    await connection.exec_driver_sql(_SQLITE_INSERT_MANY, values)
                if whole < len(rows):
                    await connection.exec_driver_sql(_SQLITE_INSERT, rows[whole:])
            else:
                # SQLAlchemy sends BEGIN with its first statement, and COPY goes past it on asyncpg's own
                # connection: without one first, each COPY would commit alone, apart from its incidents.
                await connection.exec_driver_sql("SELECT 1")
                raw = await connection.get_raw_connection()
                assert raw.driver_connection is not None
                # asyncpg encodes a COPY's rows on the event loop without yielding (~1.7 µs a row):
                # slices keep each stretch to a couple of milliseconds, in the same transaction.
                for start in range(0, len(rows), _COPY_ROWS):
                    await raw.driver_connection.copy_records_to_table(
                        "access_log", records=rows[start:start + _COPY_ROWS], columns=_INSERT_COLUMNS)
            if flagged:
                # In the same transaction: a flagged record is never stored without its incident.
                await connection.run_sync(store_incidents, flagged, self._episode_window())
        RECORD_WRITE_SECONDS.observe(time.perf_counter() - started)
        RECORDS_WRITTEN.inc(len(batch))

    async def _not_yet_written(self, batch: list[tuple[AccessRecord, Row]]) -> list[tuple[AccessRecord, Row]]:
        """The records not stored already, matched on (instance, seq, ts) with the time as the driver
        has it: turning thousands of stored times into datetimes held the event loop ~20 ms a batch."""
        assert self._engine is not None
        c = access_log.c
        stored: set[tuple[Any, ...]] = set()
        async with self._engine.connect() as connection:
            for instance in {r.instance for r, _ in batch}:
                seqs = [r.seq for r, _ in batch if r.instance == instance]
                low, high = min(seqs), max(seqs)
                # A range rather than thousands of bound parameters (half the loop's time again),
                # unless the batch's seqs are far apart (an old journal of several runs).
                matching = c.seq.between(low, high) if high - low < 2 * len(seqs) else c.seq.in_(seqs)
                query = select(type_coerce(c.ts, NullType()), c.instance, c.seq).where(c.instance == instance, matching)
                stored.update(tuple(row) for row in await connection.execute(query))
        return [(r, row) for r, row in batch if row[:3] not in stored]

    async def _update_seq_gaps(self) -> None:
        """Count records missing from this gateway's instance over the last day (gaps in `seq`): lost records.

        Only its own: other gateways sharing the database count theirs."""
        instances = {self._instance} if self._instance else self._instances
        if not instances:
            return
        assert self._engine is not None
        since = datetime.now(UTC) - timedelta(hours=_SEQ_GAP_WINDOW_HOURS)
        try:
            async with self._engine.connect() as connection:
                missing = sum(gap.missing for gap in await seq_gaps(connection, since, instances))
        except Exception as e:
            log.warning("cannot count gaps in the access records: %s", _first_line(e))
            return
        RECORD_SEQ_MISSING.set(missing)
        if missing:
            log.error("%d access records of %s are missing from the database over the last %d h (gaps in seq)",
                      missing, ", ".join(sorted(instances)), _SEQ_GAP_WINDOW_HOURS)

    def _drop(self, records: list[AccessRecord], why: str) -> None:
        RECORDS_DROPPED.inc(len(records))
        log.critical("LOST %d access records (%s#%d onwards): %s", len(records), records[0].instance, records[0].seq, why)

    def _set_aside_line(self, line: str, error: BaseException) -> None:
        """A journal line that cannot be read (cut short by a power cut, or edited by hand)."""
        if _append_fsynced(self._rejected_path, [line if line.endswith("\n") else line + "\n"]):
            RECORDS_SET_ASIDE.inc()
            log.error("unreadable line in %s kept in %s: %s", self.spool_path, self._rejected_path, _first_line(error))
        else:
            RECORDS_DROPPED.inc()
            log.critical("LOST an unreadable journal line: %s cannot be written", self._rejected_path)

    def _set_aside(self, record: AccessRecord, error: BaseException) -> None:
        if _append_fsynced(self._rejected_path, [_encode(record).decode()]):
            RECORDS_SET_ASIDE.inc()
            log.error("access record %s#%d kept in %s: the database rejected it (%s)",
                      record.instance, record.seq, self._rejected_path, _first_line(error))
        else:
            RECORDS_DROPPED.inc()
            log.critical("LOST access record %s#%d: the database rejected it and %s cannot be written",
                         record.instance, record.seq, self._rejected_path, exc_info=True)


def store_incidents(connection: Connection, records: list[AccessRecord], window: timedelta) -> None:
    """Extend or start the incidents (episodes) of flagged records just inserted in this transaction."""
    c, i = access_log.c, incidents.c
    # Their ids: the newest row of each (instance, seq), as only records not stored before are inserted.
    stored: dict[tuple[str, int], int] = {}
    for instance in {r.instance for r in records}:
        seqs = [r.seq for r in records if r.instance == instance]
        # Within the batch's times: on PostgreSQL only those days' partitions are read (0008_partitions).
        for row in connection.execute(select(c.id, c.seq).where(c.instance == instance, c.seq.in_(seqs),
                                                                c.ts.between(min(r.ts for r in records),
                                                                             max(r.ts for r in records)))):
            stored[(instance, row.seq)] = max(row.id, stored.get((instance, row.seq), 0))
    attempts = []
    for r in records:
        kind, subject = subject_of(r.user, r.client_ip)
        assert r.flag_severity is not None
        attempts.append(Attempt(stored[(r.instance, r.seq)], r.ts.astimezone(UTC), kind, subject, r.flag or "",
                                r.flag_severity, r.ref))
    if connection.dialect.name == "postgresql":
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_INCIDENT_LOCK_KEY})")
    keys = {a.key for a in attempts}
    candidates = (select(incidents)
                  .where(i.subject.in_({a.subject for a in attempts}), i.flag.in_({a.flag for a in attempts}),
                         i.last_seen >= min(a.ts for a in attempts) - window, i.status != Status.CLOSED.value)
                  .with_for_update())  # a DSL closing one waits until its new attempts are in
    open_episodes = [Episode(row.id, SubjectKind(row.subject_kind), row.subject, row.flag, row.first_seen, row.last_seen,
                             row.attempts, row.severity, row.record_id, row.ref)
                     for row in connection.execute(candidates) if (row.subject_kind, row.subject, row.flag) in keys]
    episodes = group_attempts(open_episodes, attempts, window)
    started = [e for e in episodes if e.id is None]
    extended = [e for e in episodes if e.id is not None]
    now = datetime.now(UTC)

    def facts(e: Episode) -> dict[str, Any]:
        return dict(record_id=e.record_id, ref=e.ref, severity=e.severity, first_seen=e.first_seen,
                    last_seen=e.last_seen, attempts=e.attempts)

    # A few statements per batch whatever its size: executemany, then the new ids by their
    # record (unique: a record is the attempt of one episode).
    if started:
        connection.execute(insert(incidents), [
            dict(status=Status.NEW.value, updated_at=now, subject_kind=e.subject_kind.value, subject=e.subject,
                 flag=e.flag, **facts(e)) for e in started])
        rows = connection.execute(select(i.record_id, i.id).where(i.record_id.in_([e.record_id for e in started])))
        ids = {record_id: incident_id for record_id, incident_id in rows}
        for e in started:
            e.id = ids[e.record_id]
    if extended:
        connection.execute(update(incidents).where(i.id == bindparam("incident")).values(
            {name: bindparam(name) for name in facts(extended[0])}), [{"incident": e.id, **facts(e)} for e in extended])
    connection.execute(insert(incident_records), [
        dict(incident_id=e.id, record_id=record_id) for e in episodes for record_id in e.added])
    copy_shown_record(connection, [e.id for e in episodes if e.id is not None])


def copy_shown_record(connection: Connection, incident_ids: list[int] | None) -> None:
    """Copy each incident's (None: every incident's) shown record's group and address onto it,
    for the queue's filters."""
    c, i = access_log.c, incidents.c
    chosen = update(incidents) if incident_ids is None else update(incidents).where(i.id.in_(incident_ids))
    connection.execute(chosen.values(
        group_name=select(c.group_name).where(c.id == i.record_id).scalar_subquery(),
        client_ip=select(c.client_ip).where(c.id == i.record_id).scalar_subquery()))


@dataclass(frozen=True, slots=True)
class SeqGap:
    """Records of one gateway that never reached the database: seq `after_seq`+1 onwards."""

    instance: str
    missing: int
    after_seq: int
    after: datetime  # the last record stored before the gap
    before: datetime  # the first stored after it


async def seq_gaps(connection: AsyncConnection, since: datetime, instances: set[str] | None = None) -> list[SeqGap]:
    """Gaps in `seq` among each gateway's records since `since`, oldest first.

    A gateway numbers its records as it makes them, so its records since a time are a range
    of its seq: found by bisecting seq (a few index lookups), then counted and, when some are
    missing, walked from the (instance, seq) index alone, not read from the table (a second
    for three days at 10 M records)."""
    c = access_log.c
    gaps: list[SeqGap] = []
    for instance in sorted(instances if instances is not None else await _instances(connection)):
        first = await _first_seq_since(connection, instance, since)
        if first is None:
            continue
        in_range = and_(c.instance == instance, c.seq >= first)
        low, high, count = (await connection.execute(
            select(func.min(c.seq), func.max(c.seq), func.count()).where(in_range))).one()
        if high - low + 1 <= count:
            continue
        steps = select(c.seq, func.lag(c.seq).over(order_by=c.seq).label("prev_seq")).where(in_range).subquery()
        for seq, prev_seq in (await connection.execute(select(steps).where(steps.c.seq - steps.c.prev_seq > 1))).all():
            after, before = [(await connection.execute(select(c.ts).where(c.instance == instance, c.seq == s)
                                                       .limit(1))).scalar_one() for s in (prev_seq, seq)]
            gaps.append(SeqGap(instance, seq - prev_seq - 1, prev_seq, after, before))
    return sorted(gaps, key=lambda gap: gap.after)


async def _instances(connection: AsyncConnection) -> list[str]:
    """Every gateway that has written records: one lookup in the (instance, seq) index each."""
    c = access_log.c
    names: list[str] = []
    name = (await connection.execute(select(func.min(c.instance)))).scalar()
    while name is not None:
        names.append(name)
        name = (await connection.execute(select(func.min(c.instance)).where(c.instance > name))).scalar()
    return names


async def _first_seq_since(connection: AsyncConnection, instance: str, since: datetime) -> int | None:
    """The first seq of `instance` recorded at or after `since` (None: none since), bisecting
    seq: a record's time grows with its seq."""
    c = access_log.c

    async def from_seq(seq: int) -> Any:  # the first record stored at `seq` or after
        return (await connection.execute(select(c.seq, c.ts).where(c.instance == instance, c.seq >= seq)
                                         .order_by(c.seq).limit(1))).one()

    newest = (await connection.execute(select(func.max(c.seq)).where(c.instance == instance))).scalar()
    if newest is None or (await from_seq(newest)).ts < since:
        return None
    low, high = (await connection.execute(select(func.min(c.seq)).where(c.instance == instance))).scalar_one(), newest
    while low < high:  # the answer is from_seq(m) for the smallest m in [low, high] recorded since
        middle = (low + high) // 2
        if (await from_seq(middle)).ts >= since:
            high = middle
        else:
            low = middle + 1
    return int((await from_seq(low)).seq)


_COPY_ROWS = 1000  # rows per COPY statement (PostgreSQL)
_SQLITE_INSERT = f"INSERT INTO access_log ({', '.join(_INSERT_COLUMNS)}) VALUES ({', '.join('?' * len(_INSERT_COLUMNS))})"


def _sqlite_rows_per_statement() -> int:
    """Rows one INSERT may carry, up to 1000: the SQLite library's limit on bound parameters
    (32,766 by default since 3.32, 999 before; builds may set another)."""
    connection = sqlite3.connect(":memory:")
    try:
        limit = connection.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    finally:
        connection.close()
    return max(1, min(1000, limit // len(_INSERT_COLUMNS)))


_SQLITE_ROWS_PER_STATEMENT = _sqlite_rows_per_statement()
_SQLITE_INSERT_MANY = _SQLITE_INSERT + f", ({', '.join('?' * len(_INSERT_COLUMNS))})" * (_SQLITE_ROWS_PER_STATEMENT - 1)


def read_spool(path: Path) -> Iterator[AccessRecord]:
    """The records in a journal or rejected file, skipping lines that cannot be read."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                yield _decode(line)
            except (ValueError, TypeError, KeyError):
                continue


def _append_fsynced(path: Path, lines: list[str]) -> bool:
    """Append and fsync (creating the file 0600); False if the disk refuses."""
    try:
        create_private_parent(path)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        with os.fdopen(fd, "a", encoding="utf-8") as file:
            file.writelines(lines)
            file.flush()
            os.fsync(file.fileno())
    except OSError:
        log.exception("cannot append to %s", path)
        return False
    return True


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__
