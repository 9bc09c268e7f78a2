"""Connections a pupil opens to get past the filter, through a real mitmdump with the
schoolgate add-ons: raw bytes inside a CONNECT tunnel (an SSH banner, random bytes)
to a blocked name, an allowed name, a bare IP and port 22; a TLS server name that
differs from the CONNECT name; the gateway's own back office. Each asserts that the
destination never saw a connection (the harness logs every upstream connection
attempt) and that the attempt is in the database.
"""

from __future__ import annotations

import random
import socket
import sqlite3
import ssl
import threading
import time

import pytest

from support.clients import curl
from support.gateway import free_ports
from support.waiting import wait_for

POLICY = """\
[school]
name = "Adversarial School"

[gateway]
default_group = "pupils"

[local]
block = ["blocked-local.test"]

[categories]
pornography = "block"

[groups.pupils]
title = "Pupils"
networks = ["127.0.0.0/8"]
block_ip_literals = true
"""

SSH_BANNER = b"SSH-2.0-OpenSSH_9.6p1 Ubuntu-3ubuntu13\r\n"


def records(gw) -> list[dict]:
    with sqlite3.connect(gw.db_path) as db:
        db.row_factory = sqlite3.Row
        return [dict(row) for row in db.execute("SELECT * FROM access_log ORDER BY seq")]


def tunnel(gw, authority: str) -> socket.socket:
    """A CONNECT tunnel through the gateway, answered 200 (the gateway means to intercept)."""
    sock = socket.create_connection(("127.0.0.1", gw.proxy_port), timeout=10)
    sock.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            break
        head += chunk
    assert head.startswith(b"HTTP/1.1 200"), head
    return sock


def send_raw(sock: socket.socket, data: bytes) -> bytes:
    """Send bytes that are neither TLS nor HTTP; what comes back before the gateway closes."""
    sock.sendall(data)
    received = b""
    try:
        while chunk := sock.recv(4096):
            received += chunk
    except (ConnectionResetError, TimeoutError):
        pass
    sock.close()
    return received


class RawListener:
    """A loopback TCP server that counts every byte anyone sends it."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.received = b""
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            conn.sendall(b"SSH-2.0-upstream\r\n")
            conn.settimeout(2)
            try:
                while chunk := conn.recv(4096):
                    self.received += chunk
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def listener():
    raw = RawListener()
    yield raw
    raw.close()


@pytest.fixture
def gateway(gateway_factory):
    return gateway_factory(POLICY)


@pytest.mark.parametrize("authority, payload", [
    ("adult.test:443", SSH_BANNER),  # a blocked name
    ("allowed.test:443", SSH_BANNER),  # an allowed name: pupils may not tunnel anything but the web
    # a bare IP, random bytes (never a TLS record); seeded, so every test process collects the same test id
    ("198.51.100.7:443", random.Random(64).randbytes(64).replace(b"\x16", b"\x17")),
])
def test_raw_bytes_in_a_tunnel_never_reach_the_destination_and_are_recorded(gateway, upstream, authority, payload):
    host = authority.rsplit(":", 1)[0]
    answer = send_raw(tunnel(gateway, authority), payload)
    assert b"SSH-2.0" not in answer
    gateway.stop()
    assert gateway.upstream_connections(host) == []
    assert upstream.requests_for(host) == []
    (row,) = [r for r in records(gateway) if r["host"] == host]
    assert (row["method"], row["verdict"], row["bytes_in"], row["bytes_out"]) == ("TCP", "block", 0, 0)


def test_ssh_to_port_22_through_a_tunnel_is_refused(gateway_factory, listener):
    # The harness sends any port other than 80/443 to the same port on loopback: the listener is "port 22".
    gateway = gateway_factory(POLICY)
    answer = send_raw(tunnel(gateway, f"allowed.test:{listener.port}"), SSH_BANNER)
    assert answer == b"" and listener.connections == 0 and listener.received == b""
    gateway.stop()
    (row,) = records(gateway)
    assert (row["method"], row["port"], row["verdict"]) == ("TCP", listener.port, "block")
    assert row["rule"].startswith("raw-tunnel")


def test_raw_tunnel_for_a_group_that_may_is_relayed_and_recorded_with_bytes(gateway_factory, listener):
    gateway = gateway_factory(POLICY.replace('block_ip_literals = true', 'block_ip_literals = true\nraw_tunnels = "allow"'))
    sock = tunnel(gateway, f"allowed.test:{listener.port}")
    sock.sendall(SSH_BANNER)
    sock.settimeout(10)
    assert sock.recv(100).startswith(b"SSH-2.0-upstream")
    sock.close()
    wait_for(lambda: listener.received == SSH_BANNER)
    gateway.stop()
    (row,) = records(gateway)
    assert (row["method"], row["verdict"], row["bytes_in"], row["bytes_out"]) == ("TCP", "allow", len(SSH_BANNER), 18)


def test_an_open_raw_tunnel_carries_nothing_more_once_the_policy_no_longer_allows_it(gateway_factory, listener):
    allowed = POLICY.replace('block_ip_literals = true', 'block_ip_literals = true\nraw_tunnels = "allow"')
    gateway = gateway_factory(allowed, options={"schoolgate_reload_ms": 200})
    sock = tunnel(gateway, f"allowed.test:{listener.port}")
    sock.sendall(SSH_BANNER)
    wait_for(lambda: listener.received == SSH_BANNER)
    gateway.write_policy(POLICY)  # raw tunnels are refused again
    sent = 0
    try:
        for _ in range(15):  # a line a second, as a busy terminal would
            sock.sendall(b"ls\n")
            sent += 1
            time.sleep(1)
    except OSError:
        pass  # the site end closed, having heard nothing for a while
    sock.close()
    assert listener.received.startswith(SSH_BANNER)
    assert len(listener.received) < len(SSH_BANNER) + sent * 3  # lines stopped crossing
    gateway.stop()
    rows = [(r["verdict"], r["rule"]) for r in records(gateway)]
    assert any(verdict == "allow" and "cut after" in rule for verdict, rule in rows), rows
    assert any(verdict == "block" and rule.endswith("(an open connection, cut: the policy in force no longer allows it)")
               for verdict, rule in rows), rows


def test_tls_server_name_blocked_inside_a_connect_to_an_allowed_name(gateway, upstream):
    sock = tunnel(gateway, "allowed.test:443")
    context = ssl.create_default_context(cafile=str(gateway.ca_cert))
    with context.wrap_socket(sock, server_hostname="adult.test") as tls:
        tls.sendall(b"GET / HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := tls.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 403") and b"This page is blocked" in answer
    gateway.stop()
    assert upstream.requests == [] and gateway.upstream_connections() == []
    (row,) = records(gateway)
    assert (row["host"], row["verdict"]) == ("adult.test", "block")


def test_the_gateways_back_office_is_not_a_destination(gateway, upstream):
    for url in (f"http://127.0.0.1:{gateway.metrics_port}/metrics", f"http://localhost:{gateway.metrics_port}/",
                "http://[::1]:8600/", "http://169.254.169.254/latest/meta-data/"):
        result = curl(gateway, url)
        assert result.status == 403 and b"schoolgate_" not in result.body, url
    gateway.stop()
    assert gateway.upstream_connections() == []
    rows = records(gateway)
    assert len(rows) == 4 and {r["rule"].split()[0] for r in rows} == {"internal-destination"}
    assert {r["flag"] for r in rows} == {"circumvention"}


def test_internal_destinations_named_by_the_policy_are_reachable(gateway_factory, upstream):
    # Naming an internal destination lifts only the back-office refusal; the group's other
    # rules still apply, so this group lets bare IP addresses through.
    http_port = upstream.http_port
    gateway = gateway_factory(POLICY.replace("block_ip_literals = true", "block_ip_literals = false").replace(
        'default_group = "pupils"', f'default_group = "pupils"\ninternal_destinations = ["127.0.0.1:{http_port}"]'))
    assert curl(gateway, f"http://127.0.0.1:{http_port}/intranet").status == 200
    assert curl(gateway, f"http://127.0.0.1:{free_ports(1)[0]}/").status == 403
