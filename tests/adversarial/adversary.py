"""The pupil's toolbox for the adversarial suite: one `Attempt` per bypass tried,
made with a real client (curl, raw sockets, Python's TLS, httpx) from its own
loopback address, and the checks that say whether it got through.

Every attempt runs from a client address of its own (127.1.x.y: all of 127/8 is
loopback on Linux), so what the gateway recorded for it, and any upstream
connection it caused, are told apart without timing: the loopback add-on logs each
upstream connection with the client's address, and access records carry it.
"""

from __future__ import annotations

import base64
import json
import socket
import sqlite3
import ssl
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from support.clients import curl, httpx_client
from support.gateway import Gateway
from support.upstream import Upstream, UpstreamRequest

READ_TIMEOUT = 3.0
OWNERS = {
    "FRONT": "gateway request path (addons/)",
    "EVASION": "names, searches, embedded targets",
    "SCHEMA": "policy, console, approvals",
    "LISTS": "category index",
    "IDENTITY": "proxy sign-in",
}


@dataclass
class Context:
    """What an attempt needs to know about the gateway it attacks."""

    gateway: Gateway
    upstream: Upstream
    source_ip: str
    mark: str  # unique to the attempt, for finding its request upstream
    ports: dict[str, int]

    def fill(self, text: str) -> str:
        for name, value in {"mark": self.mark, **self.ports}.items():
            text = text.replace("{" + name + "}", str(value))
        return text


@dataclass
class Result:
    status: int | None = None  # HTTP status the client saw (None: no HTTP answer)
    detail: str = ""  # what else the client saw, for the report


Send = Callable[[Context], Result]


@dataclass(frozen=True)
class Attempt:
    name: str  # what the pupil tries, as a reviewer reads it
    klass: str  # the class of hole (issue #10)
    owner: str  # the lane that owns the fix if it gets through
    send: Send
    # None: must be refused (no upstream connection, a "block" record);
    # else a check on the request upstream received (the attempt was rewritten, e.g. SafeSearch).
    rewritten: Callable[[UpstreamRequest], bool] | None = None
    flag: str | None = None  # the flag a record for it must carry


@dataclass
class Outcome:
    result: Result
    upstream_hosts: list[str] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    upstream_requests: list[UpstreamRequest] = field(default_factory=list)
    error: str = ""


# --- ways of sending ---------------------------------------------------------------


def get(url: str, *curl_args: str) -> Send:
    """curl, through the gateway as an explicit proxy (trusting the school CA)."""

    def send(ctx: Context) -> Result:
        done = curl(ctx.gateway, ctx.fill(url), *(ctx.fill(a) for a in curl_args), source_ip=ctx.source_ip, max_time=10)
        return Result(done.status or None, f"curl exit {done.exit_code}, CONNECT {done.connect_status}: {done.text[:80]!r}")

    return send


def post(url: str, body: bytes | str, content_type: str, *curl_args: str) -> Send:
    data = body.encode() if isinstance(body, str) else body

    def send(ctx: Context) -> Result:
        import tempfile
        with tempfile.NamedTemporaryFile(prefix="sg-body-") as f:
            f.write(data)
            f.flush()
            done = curl(ctx.gateway, ctx.fill(url), "-X", "POST", "-H", f"Content-Type: {content_type}",
                        "--data-binary", f"@{f.name}", *curl_args, source_ip=ctx.source_ip, max_time=10)
        return Result(done.status or None, f"curl exit {done.exit_code}: {done.text[:80]!r}")

    return send


def httpx_send(method: str, url: str, **request: Any) -> Send:
    """httpx, through the gateway (a library client, as scripts and apps use)."""

    def send(ctx: Context) -> Result:
        with httpx_client(ctx.gateway, source_ip=ctx.source_ip, timeout=10) as client:
            try:
                response = client.request(method, ctx.fill(url), **request)
            except httpx.HTTPError as e:
                return Result(None, f"httpx: {type(e).__name__}: {e}")
        return Result(response.status_code, response.text[:80])

    return send


def post_json(url: str, data: Any) -> Send:
    return post(url, json.dumps(data), "application/json")


def raw(request: str | bytes) -> Send:
    """Bytes written straight to the proxy port: request lines no client library would send."""

    def send(ctx: Context) -> Result:
        payload = ctx.fill(request).encode("utf-8") if isinstance(request, str) else request
        with _proxy_socket(ctx) as s:
            s.sendall(payload)
            answer = _read(s)
        return Result(_status(answer), answer[:120].decode("latin-1"))

    return send


def raw_get(target: str, *headers: str) -> Send:
    """`GET <target> HTTP/1.1` with the given header lines (Host is not added)."""
    lines = "".join(f"{h}\r\n" for h in headers)
    return raw(f"GET {target} HTTP/1.1\r\n{lines}Connection: close\r\n\r\n")


def tunnel(authority: str, payload: bytes) -> Send:
    """CONNECT, then bytes that are not TLS (an SSH banner, a VPN handshake...)."""

    def send(ctx: Context) -> Result:
        with _proxy_socket(ctx) as s:
            s.sendall(ctx.fill(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").encode())
            answer = _read_head(s)
            status = _status(answer)
            if status == 200:
                s.sendall(payload)
                answer += b" | after payload: " + _read(s, timeout=1.5)
        return Result(status, answer[:160].decode("latin-1"))

    return send


def tls(connect: str, sni: str | None, host_header: str, path: str = "/", *, connect_headers: str = "") -> Send:
    """CONNECT one name, give another in the TLS server name, ask for a third in Host."""

    def send(ctx: Context) -> Result:
        context = ssl.create_default_context(cafile=str(ctx.gateway.ca_cert))
        context.check_hostname = False  # the pupil does not care whose certificate it is
        context.verify_mode = ssl.CERT_NONE
        with _proxy_socket(ctx) as s:
            authority = ctx.fill(connect)
            s.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n{connect_headers}\r\n".encode())
            head = _read_head(s)
            if _status(head) != 200:
                return Result(_status(head), head[:120].decode("latin-1"))
            try:
                with context.wrap_socket(s, server_hostname=sni) as t:
                    t.sendall(f"GET {path} HTTP/1.1\r\nHost: {host_header}\r\nConnection: close\r\n\r\n".encode())
                    answer = _read(t)
            except (ssl.SSLError, OSError) as e:
                return Result(None, f"TLS refused: {e}")
        return Result(_status(answer), answer[:120].decode("latin-1"))

    return send


# --- building blocks for payloads --------------------------------------------------------


def dns_message(name: str, qtype: int = 1) -> bytes:
    header = struct.pack(">HHHHHH", 0, 0x0100, 1, 0, 0, 0)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.split(".")) + b"\0"
    return header + question + struct.pack(">HH", qtype, 1)


def dns_param(name: str, *, padded: bool = False) -> str:
    encoded = base64.urlsafe_b64encode(dns_message(name)).decode()
    return encoded if padded else encoded.rstrip("=")


def multipart(fields: dict[str, str], boundary: str = "----sgboundary") -> tuple[bytes, str]:
    body = "".join(f"--{boundary}\r\nContent-Disposition: form-data; name=\"{k}\"\r\n\r\n{v}\r\n" for k, v in fields.items())
    return (body + f"--{boundary}--\r\n").encode(), f"multipart/form-data; boundary={boundary}"


# --- what the gateway and upstream saw ------------------------------------------------------


def records_for(gateway: Gateway, client_ip: str) -> list[dict[str, Any]]:
    if not gateway.db_path.exists():
        return []
    with sqlite3.connect(f"file:{gateway.db_path}?mode=ro", uri=True, timeout=5) as db:
        db.row_factory = sqlite3.Row
        try:
            rows = db.execute("SELECT * FROM access_log WHERE client_ip = ? ORDER BY id", (client_ip,)).fetchall()
        except sqlite3.OperationalError:
            return []
    return [dict(row) for row in rows]


def recorded_ips(gateway: Gateway) -> set[str]:
    if not gateway.db_path.exists():
        return set()
    with sqlite3.connect(f"file:{gateway.db_path}?mode=ro", uri=True, timeout=5) as db:
        try:
            return {row[0] for row in db.execute("SELECT DISTINCT client_ip FROM access_log")}
        except sqlite3.OperationalError:
            return set()


def judge(attempt: Attempt, outcome: Outcome) -> list[str]:
    """What got through, in words for the report; [] when the attempt was stopped and recorded."""
    problems = []
    if outcome.error:
        problems.append(f"the attempt itself failed: {outcome.error}")
    if attempt.rewritten is None:
        if outcome.upstream_hosts:
            problems.append(f"reached upstream: {', '.join(outcome.upstream_hosts)} (client saw {outcome.result.status})")
        if not any(r["verdict"] == "block" for r in outcome.records):
            seen = [(r["verdict"], r["host"], r["rule"]) for r in outcome.records]
            problems.append(f"no block recorded (records: {seen or 'none'}; client saw {outcome.result.status}: "
                            f"{outcome.result.detail[:100]!r})")
    else:
        mine = [r for r in outcome.upstream_requests if attempt.rewritten(r)]
        if outcome.upstream_requests and not mine:
            problems.append("reached upstream unchanged: " + "; ".join(
                f"{r.host}{r.path}?{r.query} {dict((k, v) for k, v in r.headers.items() if 'restrict' in k)}"
                for r in outcome.upstream_requests))
        elif not outcome.upstream_requests and not any(r["verdict"] == "block" for r in outcome.records):
            problems.append(f"neither passed on rewritten nor blocked (client saw {outcome.result.status})")
        if not outcome.records:
            problems.append("no record")
    if attempt.flag and not any(r["flag"] == attempt.flag for r in outcome.records):
        problems.append(f"not flagged {attempt.flag} (flags: {[r['flag'] for r in outcome.records]})")
    return problems


# --- sockets ------------------------------------------------------------------------------


def _proxy_socket(ctx: Context) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", ctx.gateway.proxy_port), timeout=READ_TIMEOUT,
                                 source_address=(ctx.source_ip, 0))
    s.settimeout(READ_TIMEOUT)
    return s


def _read(s: socket.socket, timeout: float = READ_TIMEOUT) -> bytes:
    s.settimeout(timeout)
    chunks = []
    try:
        while chunk := s.recv(65536):
            chunks.append(chunk)
            if sum(map(len, chunks)) > 1 << 20:
                break
    except (TimeoutError, ConnectionResetError, ssl.SSLError):
        pass
    return b"".join(chunks)


def _read_head(s: socket.socket) -> bytes:
    data = b""
    try:
        while b"\r\n\r\n" not in data:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
    except (TimeoutError, ConnectionResetError):
        pass
    return data


def _status(answer: bytes) -> int | None:
    parts = answer.split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


# --- the runner -------------------------------------------------------------------------------


def client_ip(number: int) -> str:
    return f"127.1.{number // 200}.{number % 200 + 10}"


def run_corpus(gateway: Gateway, upstream: Upstream, attempts: list[Attempt], ports: dict[str, int], tag: str,
               workers: int = 4, record_wait: float = 20.0) -> dict[str, Outcome]:
    """Run every attempt (a few at a time: each has its own client address), then
    collect what upstream and the database saw for each."""
    import time
    from concurrent.futures import ThreadPoolExecutor

    contexts = {a.name: Context(gateway, upstream, client_ip(n), f"{tag}{n:03d}", ports) for n, a in enumerate(attempts)}
    if len(contexts) != len(attempts):
        raise ValueError("attempt names must be unique")
    outcomes: dict[str, Outcome] = {}

    def run(attempt: Attempt) -> None:
        try:
            outcomes[attempt.name] = Outcome(attempt.send(contexts[attempt.name]))
        except Exception as e:  # the attempt's own tooling broke: reported, not hidden
            outcomes[attempt.name] = Outcome(Result(), error=f"{type(e).__name__}: {e}")

    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(run, attempts))
    wanted = {ctx.source_ip for ctx in contexts.values()}
    deadline = time.monotonic() + record_wait
    while time.monotonic() < deadline and not wanted <= recorded_ips(gateway):
        time.sleep(0.25)
    time.sleep(0.5)  # the last batch's stragglers (a CONNECT and the request inside it)
    connections = gateway.upstream_connections()
    requests = upstream.requests
    for attempt in attempts:
        ctx, outcome = contexts[attempt.name], outcomes[attempt.name]
        outcome.upstream_hosts = [f"{c.host}:{c.port}" for c in connections if c.client == ctx.source_ip]
        outcome.upstream_requests = [r for r in requests if ctx.mark in r.path + "?" + r.query]
        outcome.records = records_for(gateway, ctx.source_ip)
    return outcomes
