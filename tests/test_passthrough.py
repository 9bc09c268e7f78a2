"""Selective decryption end to end: a real mitmdump with the add-on, real clients and
loopback servers. Allowed-by-name HTTPS passes through undecrypted (the client sees the
site's own certificate) and is still recorded with its bytes and duration; what needs
looking into (search, path-level rules, blocked names, a group set to decrypt all) is
decrypted as before."""

from __future__ import annotations

import ssl

import httpx
import pytest
from test_gateway import records

from support.clients import curl, httpx_client
from support.upstream import bytes_body
from support.waiting import wait_for

POLICY = """\
[gateway]
database = "{database}"
metrics_port = {metrics_port}
default_group = "pupils"

[local]
allow = ["bank.test", "shop.test"]
block = ["shop.test/checkout"]

[categories]
pornography = "block"

[groups.pupils]
title = "Pupils"
networks = ["127.0.0.1/32"]

[groups.sixthform]
title = "Sixth form"
networks = ["127.0.0.5/32"]
decrypt = "all"
"""


@pytest.fixture
def gateway(gateway_factory):
    return gateway_factory(POLICY)


def test_allowed_by_name_passes_through_with_the_sites_own_certificate_and_is_recorded(gateway, upstream):
    with httpx.Client(proxy=gateway.proxy_url, verify=ssl.create_default_context(cafile=upstream.cert_path),
                      trust_env=False) as client:
        response = client.get("https://bank.test/bytes/100000")
    assert response.status_code == 200 and response.content == bytes_body(100000)
    (seen,) = upstream.requests_for("bank.test")
    assert seen.sni == "bank.test"
    with pytest.raises(httpx.ConnectError):  # the school CA is not what it presented
        with httpx_client(gateway) as client:
            client.get("https://bank.test/")

    assert gateway.metric("schoolgate_tls_connections_total", handling="passed-through") == 2
    assert gateway.metric("schoolgate_tls_connections_total", handling="decrypted") is None
    gateway.stop()
    (row, *_) = records(gateway)
    assert (row["method"], row["host"], row["verdict"], row["url"]) == ("CONNECT", "bank.test", "allow", "https://bank.test/")
    assert "not decrypted" in row["rule"]
    assert row["bytes_out"] > 100000 and 0 < row["bytes_in"] < 10000  # TLS records each way, as relayed
    assert row["duration_ms"] is not None


def test_a_path_rule_on_the_host_keeps_it_decrypted(gateway, upstream):
    with httpx_client(gateway) as client:
        assert client.get("https://shop.test/").status_code == 200  # allowed by name, but decrypted
        assert client.get("https://shop.test/checkout").status_code == 403  # so the block page is shown
    gateway.stop()
    assert [(r["method"], r["url"], r["verdict"]) for r in records(gateway)] == [
        ("GET", "https://shop.test/", "allow"), ("GET", "https://shop.test/checkout", "block")]


def test_a_search_engine_is_decrypted_and_its_search_recorded(gateway, upstream):
    with httpx_client(gateway) as client:
        assert client.get("https://www.bing.com/search?q=volcano+homework").status_code == 200
    assert gateway.metric("schoolgate_tls_connections_total", handling="decrypted") == 1
    gateway.stop()
    (row,) = records(gateway)
    assert (row["method"], row["host"], row["search_term"]) == ("GET", "www.bing.com", "volcano homework")


def test_a_blocked_name_is_still_refused_and_recorded(gateway, upstream):
    result = curl(gateway, "https://www.adult.test/")
    assert result.status == 403 and "This page is blocked" in result.text
    assert upstream.requests_for("www.adult.test") == []
    # A passthrough CONNECT cannot carry a blocked TLS server name either.
    hidden = curl(gateway, "https://www.adult.test/", "--connect-to", "www.adult.test:443:bank.test:443")
    assert hidden.status == 403 and upstream.requests == []
    gateway.stop()
    assert [(r["host"], r["verdict"]) for r in records(gateway)] == [("www.adult.test", "block")] * 2


def test_a_group_set_to_decrypt_all_is_decrypted(gateway, upstream):
    with httpx_client(gateway, source_ip="127.0.0.5") as client:
        assert client.get("https://bank.test/statement").status_code == 200
    gateway.stop()
    (row,) = records(gateway)
    assert (row["group_name"], row["method"], row["url"]) == ("sixthform", "GET", "https://bank.test/statement")


def test_an_open_passthrough_connection_is_cut_once_the_policy_no_longer_allows_it(gateway_factory, upstream):
    # A pupil keeping one connection busy must not outlive a block (or an exception running out).
    gateway = gateway_factory(POLICY, options={"schoolgate_reload_ms": 200})
    site_only = ssl.create_default_context(cafile=upstream.cert_path)
    with httpx.Client(proxy=gateway.proxy_url, verify=site_only, trust_env=False) as client:
        assert client.get("https://bank.test/balance").status_code == 200
        gateway.write_policy(POLICY.replace('allow = ["bank.test", "shop.test"]', 'allow = ["shop.test"]')
                             .replace('block = ["shop.test/checkout"]', 'block = ["shop.test/checkout", "bank.test"]'))

        def cut() -> bool:
            try:
                client.get("https://bank.test/balance")
            except httpx.HTTPError:
                return True
            return False

        wait_for(cut, timeout=30)
        with pytest.raises(httpx.ConnectError):  # a new connection gets the block page's certificate
            client.get("https://bank.test/balance")
    assert curl(gateway, "https://bank.test/").status == 403
    gateway.stop()
    rows = [(r["method"], r["verdict"], r["rule"]) for r in records(gateway) if r["host"] == "bank.test"]
    (relayed,) = [rule for method, verdict, rule in rows if verdict == "allow"]
    assert relayed.startswith("local-allow bank.test (not decrypted; cut after") and relayed.endswith("no longer allowed)")
    assert ("CONNECT", "block", "local-block bank.test (an open connection, cut: the policy in force no longer allows it)") in rows
