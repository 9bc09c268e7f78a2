"""Access records: what is stored for every access attempt, and the writer that stores them.

The gateway calls `RecordWriter.submit` on the event loop for each request; a
background task writes queued records in batches, one transaction each, while
aiosqlite/asyncpg keep the database I/O off the loop. A record is never
dropped quietly: a failed batch stays queued and is retried with backoff;
while the database stays unreachable, and at shutdown, queued records go to a
JSON-lines spool file that is loaded, in order, as soon as the database is
back (or at the next start). Records the database rejects outright go to a
`.rejected.jsonl` file beside it.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import re
import secrets
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import batched, islice
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.db import access_log, create_engine, is_sqlite, upgrade
from schoolgate.metrics import (
    RECORD_QUEUE_DEPTH,
    RECORD_SPOOL_BYTES,
    RECORD_WRITE_FAILURES,
    RECORD_WRITE_SECONDS,
    RECORDS_DROPPED,
    RECORDS_SPOOLED,
    RECORDS_WRITTEN,
)
from schoolgate.policy import UrlLogging

log = logging.getLogger("schoolgate.records")


@dataclass(slots=True)
class AccessRecord:
    ts: datetime  # aware, UTC
    instance: str  # the gateway process that saw the request
    seq: int  # per-instance order; 0 asks the writer to assign the next one
    client_ip: str
    user: str | None
    group: str
    method: str
    scheme: str
    host: str
    port: int | None
    url: str | None  # as the policy's log_urls allows
    categories: tuple[str, ...]
    verdict: str  # allow, block, warn, proceed or monitor
    rule: str
    reason: str
    status: int | None
    bytes_in: int | None  # request body
    bytes_out: int | None  # response body
    ref: str | None  # reference shown on the block or warning page
    decision_us: int | None
    search_engine: str | None = None  # where a search term was typed (google, youtube, ...)
    search_term: str | None = None
    flag: str | None = None  # safeguarding risk for the DSL (self-harm, extremism, circumvention, ...)
    flag_severity: int | None = None  # categories.taxonomy.Severity
    flag_detail: str | None = None  # what raised it: a category, a phrase in the search, a DoH request


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


def record_to_row(record: AccessRecord) -> dict[str, Any]:
    """Column values for `access_log`."""
    row = dataclasses.asdict(record)
    row["username"] = row.pop("user")
    row["group_name"] = row.pop("group")
    row["categories"] = f",{','.join(record.categories)}," if record.categories else ""
    return row


def record_from_row(row: Mapping[str, Any]) -> AccessRecord:
    values = {field.name: row[field.name] for field in dataclasses.fields(AccessRecord) if field.name in row}
    values["user"] = row["username"]
    values["group"] = row["group_name"]
    values["categories"] = tuple(c for c in row["categories"].split(",") if c)
    return AccessRecord(**values)


def record_as_json(record: AccessRecord) -> dict[str, Any]:
    """Field values JSON can carry (ISO time, list of categories): the spool file and `schoolgate log`."""
    values = dataclasses.asdict(record)
    values["ts"] = record.ts.isoformat()
    values["categories"] = list(record.categories)
    return values


def record_from_json(values: Mapping[str, Any]) -> AccessRecord:
    return AccessRecord(**{**values, "ts": datetime.fromisoformat(values["ts"]), "categories": tuple(values["categories"])})


def default_spool_path(database_url: str, instance: str | None = None, directory: Path | None = None) -> Path:
    """In `directory` if given, else beside an SQLite database file, else in the working directory.

    Gateways sharing a database pass their instance name so that each keeps,
    and replays, a spool of its own."""
    suffix = f".{re.sub(r'[^A-Za-z0-9_.-]', '_', instance)}" if instance else ""
    database = make_url(database_url).database
    if is_sqlite(database_url) and database and database != ":memory:":
        path = Path(f"{database}.unwritten{suffix}.jsonl")
    else:
        path = Path(f"schoolgate-unwritten{suffix}.jsonl")
    return directory / path.name if directory else path


# Errors that a later attempt may not get: locked, unreachable, shutting down,
# disk full. Anything else (a constraint or type the record breaks) would fail
# forever, so that record is set aside instead of blocking every one behind it.
_TRANSIENT_ERRORS = (OperationalError, InterfaceError, OSError, TimeoutError)
# PostgreSQL SQLSTATE classes asyncpg reports as plain DBAPIError: connection
# exception, insufficient resources, operator intervention (shutdown, restart),
# system error; and serialization failure / deadlock.
_TRANSIENT_SQLSTATE_PREFIXES = ("08", "53", "57", "58", "40001", "40P01")
_FIRST_RETRY_SECONDS = 0.1
_MAX_RETRY_SECONDS = 5.0
_SPOOL_LOG_SECONDS = 30.0  # at most one "spool is growing" line this often


def is_transient(error: BaseException) -> bool:
    """Whether writing the same records again may succeed."""
    if isinstance(error, DBAPIError) and error.connection_invalidated:
        return True
    if isinstance(error, _TRANSIENT_ERRORS):
        return True
    sqlstate = getattr(getattr(error, "orig", None), "sqlstate", None)
    return isinstance(sqlstate, str) and sqlstate.startswith(_TRANSIENT_SQLSTATE_PREFIXES)


class RecordWriter:
    """Queue records on the event loop and write them in batches from a background task.

    While the database refuses writes, records stay queued and are retried;
    once it has refused for `spool_after_seconds` or `max_backlog` records are
    waiting, the queue moves to the append-only spool file (fsync'd per batch)
    so a crash or a long outage cannot lose them. When the database answers
    again the spool is loaded first, in order, then the queue, so each
    instance's records arrive in `seq` order. The spool is capped at
    `max_spool_bytes`; past that records are dropped, counted and logged.
    """

    def __init__(
        self,
        database_url: str,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.25,
        spool_path: Path | None = None,
        close_retry_seconds: float = 5.0,
        spool_after_seconds: float = 2.0,
        max_backlog: int = 10_000,
        max_spool_bytes: int = 1 << 30,
    ):
        self._database_url = database_url
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._spool_path = spool_path or default_spool_path(database_url)
        # A spool being loaded is renamed first, so a crash part-way leaves this
        # file for the next attempt, and new records can be spooled meanwhile.
        self._replaying_path = self._spool_path.with_name(self._spool_path.name + ".replaying")
        # Records the database refused outright: kept for IT staff, never replayed automatically.
        self._rejected_path = self._spool_path.with_name(self._spool_path.name.removesuffix(".jsonl") + ".rejected.jsonl")
        self._close_retry_seconds = close_retry_seconds
        self._spool_after_seconds = spool_after_seconds
        self._max_backlog = max_backlog
        self._max_spool_bytes = max_spool_bytes
        self._queue: deque[AccessRecord] = deque()
        self._last_seq: dict[str, int] = {}
        self._engine: AsyncEngine | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = False
        self._close_deadline = math.inf
        self._spool_pending = False  # the spool holds records older than the queue
        self._failing_since: float | None = None
        self._spool_logged_at = -math.inf

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    @property
    def spool_bytes(self) -> int:
        return sum(path.stat().st_size for path in (self._spool_path, self._replaying_path) if path.exists())

    async def start(self) -> None:
        """Migrate the schema, note what an earlier run spooled, and begin writing (the spool first)."""
        await upgrade(self._database_url)
        self._engine = create_engine(self._database_url)
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(access_log.c.instance, func.max(access_log.c.seq)).group_by(access_log.c.instance)
            )
            self._last_seq.update({instance: seq for instance, seq in rows})
        # New records must be numbered after the spooled ones, which are stored before them.
        for instance, seq in (await asyncio.to_thread(self._spooled_last_seqs)).items():
            self._last_seq[instance] = max(self._last_seq.get(instance, 0), seq)
        self._spool_pending = self.spool_bytes > 0
        RECORD_SPOOL_BYTES.set(self.spool_bytes)
        for record in self._queue:
            self._assign_seq(record)  # submitted while starting, before the last stored seqs were known
        self._task = asyncio.create_task(self._run(), name="schoolgate-record-writer")

    def submit(self, record: AccessRecord) -> None:
        """Queue a record (assigning its seq if 0); never blocks, never drops quietly.

        Records submitted before start() completes wait in the queue and get
        their seq once the last one stored for their instance is known."""
        if self._closed:
            # Nothing will write the queue any more; keep the record on disk.
            self._assign_seq(record)
            self._spool([record], "it arrived after the writer closed")
            return
        if self._task is not None:
            self._assign_seq(record)
        self._queue.append(record)
        RECORD_QUEUE_DEPTH.set(len(self._queue))
        if len(self._queue) >= self._batch_size:
            self._wake.set()

    async def close(self) -> None:
        """Write every queued record (or spool what the database refuses), then release the engine."""
        if self._task is None or self._engine is None:
            self._closed = True
            self._spool(self._take(len(self._queue)), "the writer was closed before it had started")
            return
        self._closing = True
        self._close_deadline = time.monotonic() + self._close_retry_seconds
        self._wake.set()
        try:
            await self._task
        finally:
            await self._engine.dispose()

    async def replay_spool(self) -> None:
        """Insert spooled records in order, then remove the spool.

        Records already inserted by an attempt that was cut short are
        recognised by (instance, seq, ts) and skipped."""
        while True:
            if not self._replaying_path.exists():
                if not self._spool_path.exists():
                    break
                self._spool_path.rename(self._replaying_path)
                _fsync_directory(self._spool_path.parent)
            count = 0
            for batch in batched(_read_spool(self._replaying_path, self._set_aside_line), self._batch_size):
                records = list(batch)
                for record in records:
                    self._assign_seq(record)
                if missing := await self._not_yet_written(records):
                    await self._insert_or_set_aside(missing)
                count += len(records)
            self._replaying_path.unlink()
            RECORD_SPOOL_BYTES.set(self.spool_bytes)
            log.warning("loaded %d spooled access records from %s", count, self._spool_path)
        self._spool_pending = False

    def _spooled_last_seqs(self) -> dict[str, int]:
        last: dict[str, int] = {}
        for path in (self._replaying_path, self._spool_path):
            if path.exists():
                for record in _read_spool(path):
                    last[record.instance] = max(last.get(record.instance, 0), record.seq)
        return last

    def _assign_seq(self, record: AccessRecord) -> None:
        last = self._last_seq.get(record.instance, 0)
        if record.seq == 0:
            record.seq = last + 1
        self._last_seq[record.instance] = max(last, record.seq)

    async def _run(self) -> None:
        try:
            while True:
                await self._pause(self._flush_interval)
                await self._write_queue()  # when closing, returns with the queue written or spooled
                if self._closing:
                    break
        except asyncio.CancelledError:
            # The loop is being torn down without close(): keep what is queued.
            self._spool(self._take(len(self._queue)), "the writer was cancelled")
            raise
        finally:
            # Set with no await since the queue was last seen empty, so a
            # record submitted from now on is spooled rather than stranded.
            self._closed = True

    async def _pause(self, seconds: float) -> None:
        """Sleep, but wake early when a batch fills up or close() is called."""
        try:
            await asyncio.wait_for(self._wake.wait(), seconds)
        except TimeoutError:
            pass
        self._wake.clear()

    async def _write_queue(self) -> None:
        """Load the spool if it holds anything, then write the queue, retrying while the database refuses."""
        failures = 0
        retry_in = _FIRST_RETRY_SECONDS
        while self._queue or self._spool_pending:
            try:
                if self._spool_pending:
                    await self.replay_spool()
                else:
                    batch = list(islice(self._queue, self._batch_size))
                    # After a failure the batch may have been committed all the same (the
                    # connection died after COMMIT), so insert only what is not stored.
                    await self._insert_or_set_aside(await self._not_yet_written(batch) if failures else batch)
                    self._take(len(batch))
            except Exception as e:
                if not is_transient(e):
                    # A bug, not the database: keep the records and keep trying rather than lose them.
                    log.exception("unexpected error writing access records")
                failures += 1
                RECORD_WRITE_FAILURES.inc()
                now = time.monotonic()
                self._failing_since = self._failing_since or now
                if failures == 1:
                    log.warning("cannot write access records (%d queued), retrying: %s", len(self._queue), _first_line(e))
                if now >= self._close_deadline:
                    self._spool(self._take(len(self._queue)), f"the database still refuses them at shutdown: {_first_line(e)}")
                    return
                if len(self._queue) >= self._max_backlog or now - self._failing_since >= self._spool_after_seconds:
                    self._spool_outage(e)
                await self._pause(min(retry_in, self._close_deadline - now))
                retry_in = min(retry_in * 2, _MAX_RETRY_SECONDS)
                continue
            if failures:
                log.warning("access records are being written again after %d failed attempts", failures)
                failures = 0
                retry_in = _FIRST_RETRY_SECONDS
            self._failing_since = None

    def _spool_outage(self, error: BaseException) -> None:
        """Move the queue to disk while the database is unreachable; say so now and then."""
        if self._queue:
            self._spool(self._take(len(self._queue)), "", quiet=True)
            self._spool_pending = True
        now = time.monotonic()
        if now - self._spool_logged_at >= _SPOOL_LOG_SECONDS:
            self._spool_logged_at = now
            log.error("database unreachable for %.0f s (%s); access records are kept in %s (%d bytes) "
                      "and loaded when it is back", now - (self._failing_since or now), _first_line(error),
                      self._spool_path, self.spool_bytes)

    def _take(self, count: int) -> list[AccessRecord]:
        """Remove the oldest `count` queued records, once they are stored somewhere."""
        taken = [self._queue.popleft() for _ in range(count)]
        RECORD_QUEUE_DEPTH.set(len(self._queue))
        return taken

    async def _insert_or_set_aside(self, records: list[AccessRecord]) -> None:
        """Insert the records; if the database rejects the batch, insert them one by one
        and set aside those it rejects, so one bad record never holds up the rest."""
        try:
            await self._insert(records)
        except Exception as e:
            if is_transient(e):
                raise
            RECORD_WRITE_FAILURES.inc()
            if len(records) == 1:
                log.exception("access record rejected by the database")
                self._set_aside(records[0], e)
                return
            for record in records:
                await self._insert_or_set_aside([record])

    async def _insert(self, records: list[AccessRecord]) -> None:
        if not records:
            return
        assert self._engine is not None
        started = time.perf_counter()
        async with self._engine.begin() as connection:
            await connection.execute(insert(access_log), [record_to_row(r) for r in records])
        RECORD_WRITE_SECONDS.observe(time.perf_counter() - started)
        RECORDS_WRITTEN.inc(len(records))

    async def _not_yet_written(self, records: list[AccessRecord]) -> list[AccessRecord]:
        assert self._engine is not None
        c = access_log.c
        stored: set[tuple[str, int, datetime]] = set()
        async with self._engine.connect() as connection:
            for instance in {r.instance for r in records}:
                seqs = [r.seq for r in records if r.instance == instance]
                rows = await connection.execute(select(c.instance, c.seq, c.ts).where(c.instance == instance, c.seq.in_(seqs)))
                stored.update(tuple(row) for row in rows)
        return [r for r in records if (r.instance, r.seq, r.ts) not in stored]

    def _set_aside_line(self, line: str, error: BaseException) -> None:
        """A spool line that cannot be read (cut short by a crash mid-write, or edited by hand)."""
        if _append_fsynced(self._rejected_path, [line if line.endswith("\n") else line + "\n"]):
            log.error("unreadable line in %s kept in %s: %s", self._replaying_path, self._rejected_path, _first_line(error))
        else:
            RECORDS_DROPPED.inc()
            log.critical("LOST an unreadable spool line: %s cannot be written", self._rejected_path)

    def _set_aside(self, record: AccessRecord, error: BaseException) -> None:
        if _append_fsynced(self._rejected_path, [_spool_line(record)]):
            log.error("access record %s#%d kept in %s: the database rejected it (%s)",
                      record.instance, record.seq, self._rejected_path, _first_line(error))
        else:
            RECORDS_DROPPED.inc()
            log.critical("LOST access record %s#%d: the database rejected it and %s cannot be written",
                         record.instance, record.seq, self._rejected_path, exc_info=True)

    def _spool(self, records: list[AccessRecord], why: str, *, quiet: bool = False) -> None:
        """Append records to the spool, as many as `max_spool_bytes` allows; the rest are dropped, loudly."""
        if not records:
            return
        room = self._max_spool_bytes - self.spool_bytes
        lines: list[str] = []
        for record in records:
            line = _spool_line(record)
            room -= len(line.encode())
            if room < 0:
                break
            lines.append(line)
        if lines and not _append_fsynced(self._spool_path, lines):
            lines = []
        RECORD_SPOOL_BYTES.set(self.spool_bytes)
        if lost := records[len(lines):]:
            RECORDS_DROPPED.inc(len(lost))
            log.critical("LOST %d access records (%s#%d onwards): the spool %s is full (%d of %d bytes) or cannot be written",
                         len(lost), lost[0].instance, lost[0].seq, self._spool_path, self.spool_bytes, self._max_spool_bytes)
        if not lines:
            return
        RECORDS_SPOOLED.inc(len(lines))
        if not quiet:
            log.error("%d access records saved to %s because %s; they are loaded into the database at the next start",
                      len(lines), self._spool_path, why)


def _spool_line(record: AccessRecord) -> str:
    return json.dumps(record_as_json(record), default=str) + "\n"


def _read_spool(path: Path, on_bad_line: Callable[[str, BaseException], None] | None = None) -> Iterator[AccessRecord]:
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            if not line.strip():
                continue
            try:
                record = record_from_json(json.loads(line))
            except (ValueError, TypeError, KeyError) as e:
                if on_bad_line is not None:
                    on_bad_line(line, e)
                continue
            yield record


def _append_fsynced(path: Path, lines: list[str]) -> bool:
    """Append and fsync; False (with the error logged by the caller) if the disk refuses."""
    try:
        with path.open("a", encoding="utf-8") as file:
            file.writelines(lines)
            file.flush()
            os.fsync(file.fileno())
    except OSError:
        log.exception("cannot append to %s", path)
        return False
    return True


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable, so a power cut cannot bring the old name back after the replay."""
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _first_line(error: BaseException) -> str:
    text = str(error)
    return text.splitlines()[0] if text else type(error).__name__
