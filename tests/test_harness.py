"""Smoke tests of the end-to-end harness itself, on bare mitmdump (no schoolgate add-on)."""

from __future__ import annotations

import os
import tomllib
from pathlib import Path

import pytest

from support.clients import curl, httpx_client
from support.gateway import Gateway, GatewayError, GatewayFactory
from support.upstream import Upstream, bytes_body, expected_body


@pytest.fixture
def bare(gateway_factory: GatewayFactory) -> Gateway:
    return gateway_factory(with_schoolgate=False)


def test_curl_http_reaches_loopback_upstream_with_original_host(bare: Gateway, upstream: Upstream) -> None:
    result = curl(bare, "http://allowed.test/page?q=1")

    assert (result.exit_code, result.status) == (0, 200)
    assert result.body == expected_body("allowed.test", "/page", "q=1")
    assert result.headers["content-length"] == str(len(result.body))
    [seen] = upstream.requests_for("allowed.test")
    assert (seen.scheme, seen.host, seen.sni, seen.method, seen.path, seen.query) == (
        "http", "allowed.test", None, "GET", "/page", "q=1"
    )
    [connection] = bare.upstream_connections("allowed.test")
    assert (connection.port, connection.loopback_port) == (80, upstream.http_port)


def test_curl_https_trusts_gateway_ca_and_upstream_sees_sni(bare: Gateway, upstream: Upstream) -> None:
    result = curl(bare, "https://whatever.test/secure?x=y")

    assert (result.exit_code, result.connect_status, result.status) == (0, 200, 200)
    assert result.body == expected_body("whatever.test", "/secure", "x=y")
    [seen] = upstream.requests_for("whatever.test")
    assert (seen.scheme, seen.host, seen.sni) == ("https", "whatever.test", "whatever.test")
    [connection] = bare.upstream_connections("whatever.test")
    assert (connection.port, connection.loopback_port) == (443, upstream.https_port)


def test_httpx_http_and_https(bare: Gateway, upstream: Upstream) -> None:
    with httpx_client(bare) as client:
        plain = client.post("http://bank.test/form", content=b"name=alice")
        secure = client.get("https://bank.test/account", params={"id": "7"})

    assert (plain.status_code, plain.content) == (200, expected_body("bank.test", "/form"))
    assert (secure.status_code, secure.content) == (200, expected_body("bank.test", "/account", "id=7"))
    posted, fetched = upstream.requests_for("bank.test")
    assert (posted.method, posted.body) == ("POST", b"name=alice")
    assert (fetched.scheme, fetched.sni) == ("https", "bank.test")


def test_status_and_bytes_endpoints(bare: Gateway) -> None:
    teapot = curl(bare, "https://allowed.test/status/418")
    no_content = curl(bare, "http://allowed.test/status/204")
    sized = curl(bare, "http://allowed.test/bytes/5000")

    assert (teapot.status, teapot.body) == (418, expected_body("allowed.test", "/status/418"))
    assert (no_content.status, no_content.body) == (204, b"")
    assert (sized.status, sized.body) == (200, bytes_body(5000))


def test_other_ports_stay_on_loopback_with_their_number(bare: Gateway, upstream: Upstream) -> None:
    result = curl(bare, f"http://odd-port.test:{upstream.http_port}/p")

    assert result.body == expected_body(f"odd-port.test:{upstream.http_port}", "/p")
    [connection] = bare.upstream_connections("odd-port.test")
    assert connection.port == connection.loopback_port == upstream.http_port


def test_clients_bind_their_source_address(bare: Gateway) -> None:
    curl(bare, "http://net-two.test/", source_ip="127.0.0.2")
    with httpx_client(bare, source_ip="127.0.0.3") as client:
        client.get("https://net-three.test/")

    assert [c.client for c in bare.upstream_connections("net-two.test")] == ["127.0.0.2"]
    assert [c.client for c in bare.upstream_connections("net-three.test")] == ["127.0.0.3"]
    assert "[127.0.0.2:" in bare.log_text()


def test_stop_exits_cleanly_and_is_idempotent(bare: Gateway) -> None:
    assert bare.running
    assert bare.stop() == 0
    assert not bare.running
    assert bare.stop() == 0


def test_startup_failure_reports_the_log(gateway_factory: GatewayFactory, tmp_path: Path) -> None:
    broken = tmp_path / "broken_addon.py"
    broken.write_text('raise RuntimeError("broken add-on")\n')

    with pytest.raises(GatewayError, match="exited with 1") as failure:
        gateway_factory(with_schoolgate=False, args=["-s", str(broken)])
    assert "broken add-on" in str(failure.value)
    # ...and the fixture's teardown does not report the same failure a second time.


def test_policy_placeholders_and_atomic_rewrite(tmp_path: Path) -> None:
    policy = '[gateway]\ndatabase = "{database}"\nmetrics_port = {metrics_port}\nextra = { dir = "{dir}" }\n'
    gateway = Gateway(tmp_path, policy, loopback_http_port=1, loopback_https_port=2)
    first_mtime = gateway.policy_path.stat().st_mtime_ns

    assert gateway.policy_path.read_text() == (
        f'[gateway]\ndatabase = "{gateway.database_url}"\nmetrics_port = {gateway.metrics_port}\n'
        f'extra = {{ dir = "{tmp_path}" }}\n'
    )
    assert gateway.metrics_url == f"http://127.0.0.1:{gateway.metrics_port}/metrics"

    gateway.write_policy('[gateway]\nmetrics_port = 0\n')
    assert gateway.policy_path.stat().st_mtime_ns > first_mtime
    assert sorted(os.listdir(tmp_path)) == ["policy.toml"]


def test_missing_database_and_metrics_port_are_filled_in(tmp_path: Path) -> None:
    def written(policy: str) -> dict[str, object]:
        gateway = Gateway(tmp_path, policy, loopback_http_port=1, loopback_https_port=2)
        return tomllib.loads(gateway.policy_path.read_text())["gateway"]

    assert set(written('[groups.staff]\nnetworks = ["127.0.0.0/8"]\n')) == {"database", "metrics_port"}
    assert written('[gateway]\ndefault_action = "block"\n[groups.x]\n')["default_action"] == "block"
    assert written("[gateway]\nmetrics_port = 0\n")["metrics_port"] == 0
