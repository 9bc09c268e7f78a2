"""Access records: what is stored for every access attempt, and the writer that stores them.

The gateway calls `RecordWriter.submit` on the event loop for each request; a
background task writes queued records in batches, one transaction each, while
aiosqlite/asyncpg keep the database I/O off the loop. A record is never
dropped quietly: a failed batch stays queued and is retried with backoff; on
shutdown whatever the database still refuses goes to a JSON-lines spool file
that the next start loads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import math
import os
import secrets
import time
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import batched, islice
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import InterfaceError, OperationalError
from sqlalchemy.ext.asyncio import AsyncEngine

from schoolgate.db import access_log, create_engine, is_sqlite, upgrade
from schoolgate.metrics import (
    RECORD_QUEUE_DEPTH,
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


def default_spool_path(database_url: str) -> Path:
    """Beside an SQLite database file; otherwise in the working directory."""
    database = make_url(database_url).database
    if is_sqlite(database_url) and database and database != ":memory:":
        return Path(database + ".unwritten.jsonl")
    return Path("schoolgate-unwritten.jsonl")


# Errors that a later attempt may not get: locked, unreachable, disk full.
# Anything else (a constraint or type the record breaks) would fail forever,
# so that batch is spooled instead of blocking every record behind it.
_TRANSIENT_ERRORS = (OperationalError, InterfaceError, OSError, TimeoutError)
_FIRST_RETRY_SECONDS = 0.1
_MAX_RETRY_SECONDS = 5.0


class RecordWriter:
    def __init__(
        self,
        database_url: str,
        *,
        batch_size: int = 500,
        flush_interval: float = 0.25,
        spool_path: Path | None = None,
        close_retry_seconds: float = 5.0,
    ):
        self._database_url = database_url
        self._batch_size = batch_size
        self._flush_interval = flush_interval
        self._spool_path = spool_path or default_spool_path(database_url)
        self._close_retry_seconds = close_retry_seconds
        self._queue: deque[AccessRecord] = deque()
        self._last_seq: dict[str, int] = {}
        self._engine: AsyncEngine | None = None
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = False
        self._closed = False
        self._close_deadline = math.inf

    @property
    def queue_depth(self) -> int:
        return len(self._queue)

    async def start(self) -> None:
        """Migrate the schema, load records a previous run spooled, and begin writing."""
        await upgrade(self._database_url)
        self._engine = create_engine(self._database_url)
        async with self._engine.connect() as connection:
            rows = await connection.execute(
                select(access_log.c.instance, func.max(access_log.c.seq)).group_by(access_log.c.instance)
            )
            self._last_seq.update({instance: seq for instance, seq in rows})
        try:
            await self.replay_spool()
        except Exception:
            # The gateway must still start; the records stay in the file for next time.
            log.exception("could not load spooled access records from %s; they are kept there", self._spool_path)
        for record in self._queue:
            self._assign_seq(record)  # submitted while starting, before the last stored seqs were known
        self._task = asyncio.create_task(self._run(), name="schoolgate-record-writer")

    def submit(self, record: AccessRecord) -> None:
        """Queue a record (assigning its seq if 0); never blocks, never drops.

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
        """Insert records spooled by an earlier run, in order, then remove the file.

        The file is renamed before loading, so a crash part-way leaves a
        `.replaying` file that the next start finishes; records already
        inserted by that attempt are recognised and skipped."""
        replaying = self._spool_path.with_name(self._spool_path.name + ".replaying")
        while True:
            if not replaying.exists():
                if not self._spool_path.exists():
                    return
                self._spool_path.rename(replaying)
            lines = replaying.read_text(encoding="utf-8").splitlines()
            records = [record_from_json(json.loads(line)) for line in lines if line]
            for record in records:
                self._assign_seq(record)  # keeps new seqs above spooled ones even if the insert fails
            for batch in batched(records, self._batch_size):
                if missing := await self._not_yet_written(list(batch)):
                    await self._insert(missing)
            replaying.unlink()
            log.warning("loaded %d spooled access records from %s", len(records), self._spool_path)

    def _assign_seq(self, record: AccessRecord) -> None:
        last = self._last_seq.get(record.instance, 0)
        if record.seq == 0:
            record.seq = last + 1
        self._last_seq[record.instance] = max(last, record.seq)

    async def _run(self) -> None:
        try:
            while not (self._closing and not self._queue):
                await self._pause(self._flush_interval)
                await self._write_queue()
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
        failures = 0
        retry_in = _FIRST_RETRY_SECONDS
        while self._queue:
            batch = list(islice(self._queue, self._batch_size))
            try:
                await self._insert(batch)
            except _TRANSIENT_ERRORS as e:
                failures += 1
                RECORD_WRITE_FAILURES.inc()
                log.warning("could not write %d access records (attempt %d, %d queued): %s", len(batch), failures, len(self._queue), e)
                remaining = self._close_deadline - time.monotonic()
                if remaining <= 0:
                    self._spool(self._take(len(self._queue)), f"the database still refuses them at shutdown: {e}")
                    return
                await self._pause(min(retry_in, remaining))
                retry_in = min(retry_in * 2, _MAX_RETRY_SECONDS)
                continue
            except Exception as e:
                RECORD_WRITE_FAILURES.inc()
                log.exception("access records rejected by the database")
                self._spool(self._take(len(batch)), f"the database rejected them: {e!r}")
                continue
            self._take(len(batch))
            if failures:
                log.warning("access records are being written again after %d failed attempts", failures)
                failures = 0
                retry_in = _FIRST_RETRY_SECONDS

    def _take(self, count: int) -> list[AccessRecord]:
        """Remove the oldest `count` queued records, once they are stored somewhere."""
        taken = [self._queue.popleft() for _ in range(count)]
        RECORD_QUEUE_DEPTH.set(len(self._queue))
        return taken

    async def _insert(self, records: list[AccessRecord]) -> None:
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

    def _spool(self, records: list[AccessRecord], why: str) -> None:
        if not records:
            return
        try:
            with self._spool_path.open("a", encoding="utf-8") as spool:
                spool.writelines(json.dumps(record_as_json(r), default=str) + "\n" for r in records)
                spool.flush()
                os.fsync(spool.fileno())
        except Exception:  # the last resort must not raise into the writer task
            RECORDS_DROPPED.inc(len(records))
            log.critical("LOST %d access records: %s, and the spool file %s cannot be written", len(records), why, self._spool_path, exc_info=True)
            return
        RECORDS_SPOOLED.inc(len(records))
        log.error("%d access records saved to %s because %s; they are loaded into the database at the next start", len(records), self._spool_path, why)
