"""Slow and greedy clients, and what reaches the service journal, through a real gateway."""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from support.clients import curl, httpx_client
from support.gateway import Gateway
from support.waiting import wait_for

POLICY = """\
[gateway]
default_group = "pupils"

[groups.pupils]
networks = ["127.0.0.0/8"]
"""


def _connect(gw: Gateway, source_ip: str = "127.0.0.1") -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.proxy_port), timeout=10, source_address=(source_ip, 0))
    sock.settimeout(10)
    return sock


def _closed_by_gateway(sock: socket.socket, within: float) -> bool:
    """Whether the gateway closes the connection within `within` seconds (reading gives EOF or a reset)."""
    sock.settimeout(within)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True
    return True


def test_slowloris_connections_are_closed_and_counted_while_real_clients_are_served(gateway_factory) -> None:
    gw = gateway_factory(POLICY, options={"schoolgate_client_header_seconds": 2, "flow_detail": 0})
    before = gw.metric("schoolgate_client_connections_closed_total", reason="header-timeout") or 0
    slow = [_connect(gw) for _ in range(40)]
    started = time.monotonic()
    # Trickle a header byte now and then: never idle, never a complete request head.
    head = b"GET http://school.test/ HTTP/1.1\r\nHost: school.test\r\nX-a: "
    for sock in slow:
        sock.sendall(head)
    closed: set[int] = set()
    while time.monotonic() - started < 8 and len(closed) < len(slow):
        for n, sock in enumerate(slow):
            if n in closed:
                continue
            try:
                sock.sendall(b"a")
            except OSError:
                closed.add(n)
        time.sleep(0.25)
    assert len(closed) == len(slow), f"{len(slow) - len(closed)} slow connections still open after 8 s"
    assert (gw.metric("schoolgate_client_connections_closed_total", reason="header-timeout") or 0) - before >= len(slow)

    # A keep-alive client that asks, waits less than the limit, and asks again is not cut off.
    with httpx_client(gw, timeout=10) as client:
        assert client.get("http://school.test/one").status_code == 200
        time.sleep(1)
        assert client.get("http://school.test/two").status_code == 200
    for sock in slow:
        sock.close()


def test_connections_over_the_per_client_cap_are_refused_and_counted(gateway_factory) -> None:
    gw = gateway_factory(POLICY, options={"schoolgate_max_connections_per_client": 5, "flow_detail": 0})
    held = [_connect(gw) for _ in range(5)]
    wait_for(lambda: gw.metric("schoolgate_client_connections") >= 5, timeout=30)  # slow on a busy machine
    extra = [_connect(gw) for _ in range(3)]
    assert all(_closed_by_gateway(sock, within=5) for sock in extra)
    assert gw.metric("schoolgate_client_connections_refused_total", reason="per-client-cap") == 3
    # Another device is not affected; and once the first device lets go, it is served again.
    assert curl(gw, "http://school.test/", source_ip="127.0.0.2").status == 200
    for sock in held:
        sock.close()
    wait_for(lambda: gw.metric("schoolgate_client_connections") == 0)
    assert curl(gw, "http://school.test/").status == 200
    body = urllib.request.build_opener(urllib.request.ProxyHandler({})).open(gw.metrics_url, timeout=2).read().decode()
    assert "127.0.0." not in body  # counts, never addresses


def test_tls_failures_reach_the_journal_without_the_pupil_or_the_site(gateway_factory) -> None:
    gw = gateway_factory(POLICY, options={"flow_detail": 0})
    # curl without the school CA: the handshake fails, and mitmproxy says where and who.
    result = curl(gw, "https://www.private-site.test/page", "--cacert", "/etc/ssl/certs/ca-certificates.crt",
                  source_ip="127.0.0.3")  # the last --cacert wins: the system roots, not the school CA
    assert result.status == 0
    wait_for(lambda: "handshake failed" in gw.log_text())
    text = gw.log_text()
    assert "Client TLS handshake failed (details withheld" in text
    assert "private-site" not in text
    assert "127.0.0.3" not in text


def test_a_whole_client_hello_ends_the_wait_for_a_request_head_even_when_relayed_undecrypted() -> None:
    # In transparent mode a connection relayed undecrypted never reaches tls_clienthello:
    # without this, the slow-client sweep would cut every passthrough connection after 30 s.
    import ssl
    from types import SimpleNamespace

    from schoolgate.addons.limits import Limits

    outgoing = ssl.MemoryBIO()
    tls = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="news.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls.do_handshake()
    hello = outgoing.read()
    limits = Limits()
    limits._waiting_since["c1"] = 0.0

    def asked(data: bytes) -> None:
        limits.next_layer(SimpleNamespace(data_client=lambda: data, context=SimpleNamespace(client=SimpleNamespace(id="c1"))))

    asked(hello[:40])  # a ClientHello trickled in: still owed
    assert "c1" in limits._waiting_since
    asked(hello)
    assert "c1" not in limits._waiting_since
