"""The gateway chained behind an upstream web proxy ([gateway] upstream_proxy), end to end:
a real mitmdump with the add-on, a real proxy on 127.0.0.1 it goes through (support/chainproxy.py),
real clients. Every decision is made before anything goes upstream; plain HTTP goes as
absolute-form requests, HTTPS (decrypted or passed through) through CONNECT; a kept-alive
client connection visiting many hosts does not stall at its sixth."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator

import httpx
import pytest
from test_gateway import records
from test_policy import MINIMAL, problems, write

from schoolgate.policy import load_policy

from support.chainproxy import ChainProxy
from support.clients import httpx_client
from support.gateway import Gateway
from support.upstream import Upstream, expected_body

POLICY = """\
[gateway]
database = "{database}"
metrics_port = {metrics_port}
default_group = "pupils"
upstream_proxy = "UPSTREAM"

[local]
allow = ["pass.test"]
block = ["blocked.test"]

[groups.pupils]
networks = ["127.0.0.1/32"]
"""


@pytest.fixture
def proxy(upstream: Upstream) -> Iterator[ChainProxy]:
    with ChainProxy(upstream) as chain:
        yield chain


def chained(gateway_factory, upstream_proxy: str) -> Gateway:
    return gateway_factory(POLICY.replace("UPSTREAM", upstream_proxy))


def plain_get(client: httpx.Client, gateway: Gateway, host: str) -> httpx.Response:
    """A request for http://host/ on the client's one connection to the gateway, in absolute form
    as a browser sends it to its proxy (httpx itself opens a connection per site it proxies)."""
    return client.get(f"{gateway.proxy_url}/", headers={"Host": host}, extensions={"target": f"http://{host}/".encode()})


def test_the_setting_is_checked_and_its_password_never_shown(tmp_path):
    with_setting = MINIMAL.replace('default_group = "pupils"', 'default_group = "pupils"\nupstream_proxy = "SETTING"')
    policy = load_policy(write(tmp_path, with_setting.replace("SETTING", "http://la:s3cret@proxy.la.test:8080")))
    upstream = policy.gateway.upstream_proxy
    assert upstream is not None and (upstream.host, upstream.port, upstream.credentials) == ("proxy.la.test", 8080, "la:s3cret")
    assert "s3cret" not in repr(policy.gateway) and str(upstream) == "http://proxy.la.test:8080"
    for wrong, said in [("proxy.la.test:8080", "must start with http:// or https://"),
                        ("socks5://la:s3cret@proxy.la.test:1080", "must start with http:// or https://"),
                        ("http://proxy.la.test", "needs its port (e.g. :8080)"),
                        ("http://proxy.la.test:8080/path", "must be scheme://host:port, without a path"),
                        ("http://la@proxy.la.test:8080", "has a user name but no password (write user:password@host:port)")]:
        found = problems(tmp_path, with_setting.replace("SETTING", wrong))
        assert [message for _, message in found] == [f"upstream_proxy {said}"]
        assert "s3cret" not in str(found)


def test_fifty_hosts_through_the_upstream_proxy_without_a_stall_and_a_blocked_one_never_asked_for(
        gateway_factory, proxy):
    gateway = chained(gateway_factory, proxy.url)
    plain = [f"site{i}.test" for i in range(30)]
    decrypted = [f"secure{i}.test" for i in range(10)]
    passed = [f"www{i}.pass.test" for i in range(10)]
    # One kept-alive connection for all the plain HTTP: mitmproxy alone stalls at its sixth host.
    with httpx.Client(timeout=5, trust_env=False, limits=httpx.Limits(max_connections=1)) as client:
        for host in plain:
            response = plain_get(client, gateway, host)
            assert (response.status_code, response.content) == (200, expected_body(host, "/")), host
        assert plain_get(client, gateway, "blocked.test").status_code == 403
    with httpx_client(gateway, timeout=5) as client:
        for host in decrypted:
            response = client.get(f"https://{host}/")
            assert (response.status_code, response.content) == (200, expected_body(host, "/")), host
        assert client.get("https://blocked.test/").status_code == 403  # decrypted to show the block page
    with httpx.Client(proxy=gateway.proxy_url, verify=False, timeout=5, trust_env=False) as client:
        for host in passed:
            response = client.get(f"https://{host}/")
            assert (response.status_code, response.content) == (200, expected_body(host, "/")), host

    with httpx.Client(timeout=5, trust_env=False) as client:  # asked of the gateway itself, not sent upstream
        pac = client.get(f"{gateway.proxy_url}/proxy.pac")
    assert pac.status_code == 200 and f"PROXY 127.0.0.1:{gateway.proxy_port}" in pac.text

    assert proxy.hosts("GET") == set(plain)  # absolute-form requests
    assert proxy.hosts("CONNECT") == set(decrypted) | set(passed)
    assert "blocked.test" not in proxy.hosts()
    assert gateway.metric("schoolgate_tls_connections_total", handling="passed-through") == len(passed)
    gateway.stop()
    rows = records(gateway)
    assert {r["host"] for r in rows if r["verdict"] == "allow"} == set(plain) | set(decrypted) | set(passed)
    assert {(r["method"], r["host"]) for r in rows if r["host"] in passed} == {("CONNECT", h) for h in passed}
    assert sorted((r["host"], r["verdict"]) for r in rows if r["host"] == "blocked.test") == [
        ("blocked.test", "block")] * 2


def test_direct_sites_on_one_address_do_not_stall_a_kept_alive_connection_either(gateway_factory, upstream):
    """Direct, sites behind one CDN address share mitmproxy's five connections per address too
    (here the test's loopback add-on sends every site to one loopback server)."""
    gateway = gateway_factory(POLICY.replace('upstream_proxy = "UPSTREAM"\n', ""))
    # the gateway looks each name up first, which this machine's resolver sometimes answers after 5 s
    with httpx.Client(timeout=15, trust_env=False, limits=httpx.Limits(max_connections=1)) as client:
        for host in [f"site{i}.test" for i in range(8)]:
            response = plain_get(client, gateway, host)
            assert (response.status_code, response.content) == (200, expected_body(host, "/")), host


def test_mitmdump_alone_in_upstream_mode_stalls_at_the_sixth_host(gateway_factory, proxy):
    """The cause the gateway works around (addons/upstream.py): should a mitmproxy upgrade drop
    its five-connections-per-address limit, this says the work-around can go."""
    bare = gateway_factory(with_schoolgate=False, args=["--mode", f"upstream:{proxy.url}"])
    with httpx.Client(timeout=3, trust_env=False, limits=httpx.Limits(max_connections=1)) as client:
        for i in range(5):
            assert plain_get(client, bare, f"site{i}.test").status_code == 200
        with pytest.raises(httpx.ReadTimeout):
            plain_get(client, bare, "site5.test")


def test_the_upstream_proxys_refusals_reach_the_pupil_as_pages_not_a_hang(gateway_factory, upstream):
    with ChainProxy(upstream, credentials="la:s3cret", refuse=frozenset({"down.test", "down.pass.test"})) as proxy:
        without = chained(gateway_factory, proxy.url)
        with httpx.Client(timeout=5, trust_env=False) as client:
            refused = plain_get(client, without, "site.test")
        assert refused.status_code == 502 and "upstream web proxy" in refused.text
        assert "proxy-authenticate" not in refused.headers  # the pupil is not asked for the provider's password
        with httpx_client(without, timeout=5) as client:
            tunnel = client.get("https://site.test/")
        assert tunnel.status_code == 502 and "407" in tunnel.text

        url = proxy.url.replace("http://", "http://la:s3cret@")
        with_credentials = chained(gateway_factory, url)
        with httpx.Client(timeout=5, trust_env=False) as client:
            assert plain_get(client, with_credentials, "site.test").status_code == 200
            down = plain_get(client, with_credentials, "down.test")
        assert down.status_code == 502 and "cannot reach" in down.text  # the upstream proxy's own page
        with httpx_client(with_credentials, timeout=5) as client:
            assert client.get("https://secure.test/").status_code == 200
            assert client.get("https://down.test/").status_code == 502
        with httpx.Client(proxy=with_credentials.proxy_url, verify=False, timeout=5, trust_env=False) as client:
            with pytest.raises(httpx.ConnectError):  # passed through: no page to show, the tunnel is closed
                client.get("https://down.pass.test/")
        assert {a.authorization for a in proxy.asked if a.host in ("secure.test", "down.test")} == {
            "Basic bGE6czNjcmV0"}
    without.stop()
    with_credentials.stop()
    assert "s3cret" not in with_credentials.log_text()
    (passed,) = [r for r in records(with_credentials) if r["host"] == "down.pass.test"]
    assert passed["method"] == "CONNECT" and "could not be reached" in passed["rule"]
    rows = records(without)
    assert any(r["host"] == "site.test" and "407" in (r["rule"] or "") for r in rows)


def test_list_downloads_go_through_the_upstream_proxy(tmp_path, proxy):
    """A school behind the provider's proxy can reach the list publishers only through it."""
    policy = tmp_path / "policy.toml"
    policy.write_text(MINIMAL.replace('default_group = "pupils"', f'default_group = "pupils"\nupstream_proxy = "{proxy.url}"')
                      + f'\n[lists]\nindex = "{tmp_path / "lists.idx"}"\nsources = ["http://lists.test/blacklists.tar.gz"]\n'
                      + 'category_url = ""\n')
    env = {k: v for k, v in os.environ.items() if k.lower() not in ("http_proxy", "https_proxy", "all_proxy", "no_proxy")}
    done = subprocess.run([sys.executable, "-m", "schoolgate", "lists", "update", "--policy", str(policy)],
                          env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1 and "lists.test" in done.stderr  # the test server's answer is no gzip archive
    assert [(a.method, a.host) for a in proxy.asked] == [("GET", "lists.test")]
