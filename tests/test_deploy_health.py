"""Health, readiness and the PAC file, through a real gateway: /healthz and /readyz on the
metrics endpoint (IPv4 and IPv6), systemd's READY=1 over a real notify socket, and
/proxy.pac served on the proxy port and evaluated by a real PAC engine (pacparser)."""

from __future__ import annotations

import json
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from schoolgate.addons.health import Check, Readiness, records_check
from schoolgate.pac import pac_script

from support.clients import CURL, curl
from support.gateway import Gateway
from support.upstream import expected_body
from support.waiting import wait_for

POLICY = """\
[gateway]
default_group = "pupils"

[categories]
pornography = "block"

[groups.pupils]
networks = ["127.0.0.1/32"]
"""


def _get(url: str) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _endpoint(gw: Gateway, path: str, host: str = "127.0.0.1") -> tuple[int, bytes]:
    return _get(f"http://{host}:{gw.metrics_port}{path}")


def _ready(gw: Gateway) -> bool:
    return _endpoint(gw, "/readyz")[0] == 200


def test_healthz_and_readyz_report_each_check(gateway_factory) -> None:
    gw = gateway_factory(POLICY)
    assert _endpoint(gw, "/healthz") == (200, b"ok\n")
    wait_for(lambda: _ready(gw), timeout=20)
    status, body = _endpoint(gw, "/readyz")
    report = json.loads(body)
    assert report["ready"] is True
    assert set(report["checks"]) == {"policy", "index", "records"}
    assert report["checks"]["records"]["detail"] == "the database takes records"
    assert "category entries" in report["checks"]["index"]["detail"]
    # /metrics is still what Prometheus scrapes on the same port
    status, metrics = _endpoint(gw, "/metrics")
    assert status == 200 and b"schoolgate_records_written_total" in metrics


def test_metrics_and_health_listen_on_ipv6_too(gateway_factory) -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    gw = gateway_factory(POLICY.replace('[gateway]\n', '[gateway]\nmetrics_address = "::"\n'))
    assert _endpoint(gw, "/healthz", "[::1]") == (200, b"ok\n")
    assert _endpoint(gw, "/healthz", "127.0.0.1") == (200, b"ok\n")


def test_ready_is_told_to_systemd_over_its_notify_socket(gateway_factory, tmp_path: Path, monkeypatch) -> None:
    notify_path = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(notify_path))
        sock.settimeout(30)
        monkeypatch.setenv("NOTIFY_SOCKET", str(notify_path))  # inherited by the mitmdump the factory starts
        gateway_factory(POLICY)
        messages = []
        while not any("READY=1" in m for m in messages):
            messages.append(sock.recv(4096).decode())
    assert any(m.startswith("STATUS=ready") for m in messages), messages


def test_a_database_outage_keeps_the_gateway_ready_while_records_spool(gateway_factory, private_postgres, tmp_path) -> None:
    postgres = private_postgres  # stopped below: the session's server stays up for other tests
    database = postgres.create_database("health")
    gw = gateway_factory(POLICY.replace("[gateway]\n", f'[gateway]\ndatabase = "{database}"\n'),
                         options={"schoolgate_spool_dir": str(tmp_path)})
    wait_for(lambda: _ready(gw), timeout=20)
    postgres.stop()
    try:
        def spooling() -> bool:
            status, body = _endpoint(gw, "/readyz")
            return status == 200 and "local spool" in json.loads(body)["checks"]["records"]["detail"]
        wait_for(spooling, timeout=30)
    finally:
        postgres.start()
    wait_for(lambda: json.loads(_endpoint(gw, "/readyz")[1])["checks"]["records"]["detail"]
             == "the database takes records", timeout=30)


def test_readiness_fails_without_a_place_for_records() -> None:
    assert records_check(True, "ok", False, 0).ok
    spooling = records_check(False, "ConnectionRefusedError", True, 0)
    assert spooling.ok and "local spool" in spooling.detail
    assert not records_check(False, "ConnectionRefusedError", False, 0).ok
    assert not records_check(True, "ok", True, 3).ok  # evidence lost lately: not ready, whatever else holds
    readiness = Readiness({"policy": Check(True, "p"), "records": Check(False, "nowhere")})
    assert not readiness.ready and readiness.summary() == "not ready (records: nowhere)"


pacparser = pytest.importorskip("pacparser", reason="pacparser (the test extra) evaluates PAC files")


def _find_proxy(script: str, url: str) -> str:
    pacparser.init()
    try:
        pacparser.parse_pac_string(script)
        return pacparser.find_proxy(url)
    finally:
        pacparser.cleanup()


def test_the_gateway_serves_a_pac_file_that_sends_the_web_through_itself(gateway_factory, upstream) -> None:
    gw = gateway_factory(POLICY.replace("[gateway]\n", '[gateway]\npac_direct_domains = ["intranet.school.sch.uk"]\n'
                                        'pac_direct_networks = ["10.20.0.0/16"]\n'))
    for path in ("/proxy.pac", "/wpad.dat"):
        # asked of the gateway directly, as a browser fetches a PAC file: no proxy
        done = subprocess.run([CURL, "-q", "-s", "--noproxy", "*", "-D", "-", f"http://127.0.0.1:{gw.proxy_port}{path}"],
                              capture_output=True, text=True, timeout=20)
        head, _, script = done.stdout.partition("\n\n")  # text mode: \r\n read as \n
        assert head.startswith("HTTP/1.1 200") and "application/x-ns-proxy-autoconfig" in head.lower()
        gateway = f"PROXY 127.0.0.1:{gw.proxy_port}"
        assert _find_proxy(script, "https://www.bbc.co.uk/bitesize") == gateway
        assert _find_proxy(script, "http://www.pornhub.com/") == gateway
        assert _find_proxy(script, "https://www.barclays.co.uk/") == gateway  # no-intercept still goes through
        assert _find_proxy(script, "http://fileserver/share") == "DIRECT"
        assert _find_proxy(script, "http://localhost:631/") == "DIRECT"
        assert _find_proxy(script, "https://moodle.intranet.school.sch.uk/") == "DIRECT"  # the policy's own
        assert _find_proxy(script, "http://10.20.1.5/") == "DIRECT"
        assert _find_proxy(script, "http://10.21.1.5/") == gateway
    # through the gateway, a site's own /proxy.pac is that site's, fetched as any page
    through = curl(gw, "http://school.test/proxy.pac")
    assert through.status == 200 and through.body == expected_body("school.test", "/proxy.pac")
    assert upstream.requests_for("school.test")


def test_pac_file_keeps_the_schools_own_networks_direct_and_cannot_be_broken_out_of() -> None:
    script = pac_script("gw.school.sch.uk:8080", ["intranet.school.sch.uk", 'x"];return "DIRECT";//'], ["10.20.0.0/16"])
    assert _find_proxy(script, "http://10.20.3.4/") == "DIRECT"
    assert _find_proxy(script, "http://10.21.3.4/") == "PROXY gw.school.sch.uk:8080"
    assert _find_proxy(script, "https://moodle.intranet.school.sch.uk/") == "DIRECT"
    assert _find_proxy(script, "https://intranet.school.sch.uk.evil.com/") == "PROXY gw.school.sch.uk:8080"
    assert _find_proxy(script, "https://www.tiktok.com/") == "PROXY gw.school.sch.uk:8080"
    with pytest.raises(ValueError):
        pac_script('gw"; return "DIRECT')
