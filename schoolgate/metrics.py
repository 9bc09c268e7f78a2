"""Prometheus metrics of the gateway.

Labels are bounded, non-personal values only (group, verdict, category, reason
kinds): never a user name, client address or URL, which would both leak
personal data into the monitoring stack and explode its cardinality.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

REGISTRY = CollectorRegistry(auto_describe=True)

REQUESTS = Counter(
    "schoolgate_requests",
    "Access attempts recorded, by group, verdict and the category that decided (local, or none).",
    ["group", "verdict", "category"],
    registry=REGISTRY,
)
DECISION_SECONDS = Histogram(
    "schoolgate_decision_seconds",
    "Time to decide one request (identity, lists, categories, policy).",
    buckets=(5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 5e-3, 2.5e-2),
    registry=REGISTRY,
)
DECISION_ERRORS = Counter(
    "schoolgate_decision_errors",
    "Requests refused because deciding them failed (a bug: the request is not let through).",
    registry=REGISTRY,
)
RECORD_QUEUE_DEPTH = Gauge(
    "schoolgate_record_queue_depth",
    "Access records waiting to be written to the database.",
    registry=REGISTRY,
)
RECORD_WRITE_SECONDS = Histogram(
    "schoolgate_record_write_seconds",
    "Time to write one batch of access records.",
    buckets=(1e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 0.1, 0.25, 0.5, 1, 2.5, 5),
    registry=REGISTRY,
)
RECORDS_WRITTEN = Counter(
    "schoolgate_records_written",
    "Access records written to the database.",
    registry=REGISTRY,
)
RECORD_WRITE_FAILURES = Counter(
    "schoolgate_record_write_failures",
    "Failed attempts to write a batch (the batch is kept and retried).",
    registry=REGISTRY,
)
RECORDS_DROPPED = Counter(
    "schoolgate_records_dropped",
    "Access records lost. Must stay 0; anything else is a bug or a full disk.",
    registry=REGISTRY,
)
RECORDS_SPOOLED = Counter(
    "schoolgate_records_spooled",
    "Access records written to the local spool file because the database could not take them.",
    registry=REGISTRY,
)
RECORD_SPOOL_BYTES = Gauge(
    "schoolgate_record_spool_bytes",
    "Size of the local spool of access records waiting for the database (0 when it is reachable and caught up).",
    registry=REGISTRY,
)
POLICY_RELOADS = Counter(
    "schoolgate_policy_reloads",
    "Policy loads, by result (ok, failed).",
    ["result"],
    registry=REGISTRY,
)
POLICY_VALID = Gauge(
    "schoolgate_policy_last_load_ok",
    "1 if the policy file on disk is in force, 0 if the last edit was refused and an older policy still serves.",
    registry=REGISTRY,
)
POLICY_LOADED_AT = Gauge(
    "schoolgate_policy_loaded_timestamp_seconds",
    "When the policy in force was loaded.",
    registry=REGISTRY,
)
LIST_ENTRIES = Gauge(
    "schoolgate_list_entries",
    "Entries in the category index, by category; local lists as category 'local-allow'/'local-block'.",
    ["category"],
    registry=REGISTRY,
)


def serve(address: str, port: int) -> None:
    """Expose /metrics on its own port, so it can be firewalled apart from the proxy."""
    start_http_server(port, addr=address, registry=REGISTRY)
