"""Prometheus metrics of the gateway.

Labels are bounded, non-personal values only (group, verdict, category, reason
kinds): never a user name, client address or URL, which would both leak
personal data into the monitoring stack and explode its cardinality.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable
from http import HTTPStatus
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, make_wsgi_app
from prometheus_client.exposition import ThreadingWSGIServer

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
TLS_CONNECTIONS = Counter(
    "schoolgate_tls_connections",
    "Allowed TLS connections by how they were handled: decrypted, or passed through undecrypted.",
    ["handling"],
    registry=REGISTRY,
)
CONTENT_SCORED = Counter(
    "schoolgate_content_scored",
    "Responses, AI answers and prompts whose words were scored, by what came of it (pass, flag, block, cached).",
    ["result"],
    registry=REGISTRY,
)
CONTENT_SECONDS = Histogram(
    "schoolgate_content_seconds",
    "Time to extract and score the text of one response or prompt (the gateway's event loop waits for it).",
    buckets=(1e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 1e-2, 2.5e-2, 5e-2, 1e-1, 2.5e-1),
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
RECORDS_SET_ASIDE = Counter(
    "schoolgate_records_set_aside",
    "Access records (or unreadable journal lines) kept in *.rejected.jsonl because the database refused them: "
    "not in the database, so not in the console. Must stay 0; IT staff read the file and the log.",
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
RECORD_SEQ_MISSING = Gauge(
    "schoolgate_record_seq_missing",
    "Access records of this gateway missing from the database over the last 24 h (gaps in seq), "
    "counted at start and after the journal is loaded: records lost. Must stay 0.",
    registry=REGISTRY,
)
RECORD_UNCLEAN_STOPS = Counter(
    "schoolgate_record_unclean_stops",
    "Starts that found the previous gateway never closed its journal, by cause: process (killed; "
    "nothing lost) or machine (the machine stopped under it: its last 0.1 s of records may be lost).",
    ["cause"],
    registry=REGISTRY,
)
CLIENT_CONNECTIONS = Gauge(
    "schoolgate_client_connections",
    "Client connections open to this gateway process.",
    registry=REGISTRY,
)
CLIENT_CONNECTIONS_REFUSED = Counter(
    "schoolgate_client_connections_refused",
    "Client connections refused as they arrived, by reason (per-client-cap).",
    ["reason"],
    registry=REGISTRY,
)
CLIENT_CONNECTIONS_CLOSED = Counter(
    "schoolgate_client_connections_closed",
    "Client connections the gateway closed, by reason (header-timeout: no complete request head in time).",
    ["reason"],
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

CATEGORY_INDEX_OK = Gauge(
    "schoolgate_category_index_ok",
    "1 if the category index the policy names serves; 0 with the problem (missing, corrupt, truncated...) "
    "while the last good index or the built-in list serves instead.",
    ["problem"],
    registry=REGISTRY,
)
CATEGORY_ENTRIES = Gauge(
    "schoolgate_category_entries",
    "Entries in the serving index for each category a group acts on, with the strictest action (block/warn/monitor).",
    ["category", "action"],
    registry=REGISTRY,
)
CATEGORY_LISTS_AGE = Gauge(
    "schoolgate_category_lists_age_seconds",
    "Age of the serving category index (since it was compiled); -1 while the built-in list serves.",
    registry=REGISTRY,
)
CATEGORY_LISTS_STALE = Gauge(
    "schoolgate_category_lists_stale",
    "1 if the serving category index is older than [lists] max_age_days.",
    registry=REGISTRY,
)
ILLEGAL_TIER_ENTRIES = Gauge(
    "schoolgate_illegal_tier_entries",
    "Entries in the locked illegal-content tier, by provider (iwf, ctiru); 0 means that list is not blocked.",
    ["provider"],
    registry=REGISTRY,
)
ILLEGAL_TIER_AGE = Gauge(
    "schoolgate_illegal_tier_age_seconds",
    "Age of the oldest illegal-content list file (its modification time); -1 when there is none.",
    registry=REGISTRY,
)
ILLEGAL_TIER_OK = Gauge(
    "schoolgate_illegal_tier_ok",
    "1 if both illegal-content lists are loaded, readable and fresh; 0 otherwise (see the log).",
    registry=REGISTRY,
)
LISTS_FETCHES = Counter(
    "schoolgate_lists_fetches",
    "Background downloads and compilations of the category lists by the gateway, by result (ok, failed).",
    ["result"],
    registry=REGISTRY,
)


READY = Gauge(
    "schoolgate_ready",
    "1 when this gateway is ready (policy and index loaded, access records have somewhere to go), as /readyz says.",
    registry=REGISTRY,
)

# Other paths served beside /metrics on the same port (/healthz, /readyz: addons/health.py):
# path -> a function returning (status, content type, body). Called on the server's thread.
ROUTES: dict[str, Callable[[], tuple[int, str, bytes]]] = {}


def serve(address: str, port: int) -> None:
    """Expose /metrics (and ROUTES) on its own port, so it can be firewalled apart from the proxy."""
    metrics_app = make_wsgi_app(REGISTRY)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        route = ROUTES.get(environ.get("PATH_INFO", ""))
        if route is None:
            return metrics_app(environ, start_response)
        status, content_type, body = route()
        start_response(f"{status} {HTTPStatus(status).phrase}", [
            ("Content-Type", content_type), ("Content-Length", str(len(body))), ("Cache-Control", "no-store"),
        ])
        return [body]

    class Server(ThreadingWSGIServer):
        # "::" listens on IPv6 and IPv4 alike; a literal address picks its own family.
        address_family = socket.AF_INET6 if ":" in address else socket.AF_INET

    server = make_server(address, port, app, Server, handler_class=_QuietHandler)
    threading.Thread(target=server.serve_forever, name="schoolgate-metrics", daemon=True).start()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass  # a scrape every 15 s is not news for the service journal
