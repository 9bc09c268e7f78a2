"""What is stored for every access attempt, and its forms as a row and as JSON.

Plain Python, so what only reads records (`schoolgate log` on SQLite) starts without
the database libraries; the writer is in schoolgate.records.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from schoolgate import commaset


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
    url_cut: bool = False  # `url` was longer than the gateway keeps (8 KiB) and was cut
    duration_ms: int | None = None  # from the decision to the end of the request or connection
    identity_source: str | None = None  # how the user or group was known: network, proxy-basic, kerberos, portal, accounting, unknown


def record_from_row(row: Mapping[Any, Any]) -> AccessRecord:
    values = {field.name: row[field.name] for field in dataclasses.fields(AccessRecord) if field.name in row}
    values["user"] = row["username"]
    values["group"] = row["group_name"]
    values["categories"] = commaset.decode(row["categories"])
    return AccessRecord(**values)


def record_as_json(record: AccessRecord) -> dict[str, Any]:
    """Field values JSON can carry (ISO time, list of categories): the spool file and `schoolgate log`."""
    values = dataclasses.asdict(record)
    values["ts"] = record.ts.isoformat()
    values["categories"] = list(record.categories)
    return values


def record_from_json(values: Mapping[str, Any]) -> AccessRecord:
    return AccessRecord(**{**values, "ts": datetime.fromisoformat(values["ts"]), "categories": tuple(values["categories"])})
