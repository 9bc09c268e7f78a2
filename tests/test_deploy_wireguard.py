"""School devices off site: a laptop's WireGuard profile sends its web traffic through the
gateway from anywhere (`schoolgate run -- --mode regular --mode wireguard@51820`).

A real WireGuard client (wireguard-go, the userspace implementation, with `wg` and `ip`) runs
in a network namespace made for the test, configured from the profile the gateway made; the
gateway runs the schoolgate add-on in a second namespace, with "the internet" on an address
there. The laptop's requests are decided by the same policy (its tunnel address puts it in a
group) and recorded like any other; a blocked site gets the block page through the tunnel.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.waiting import wait_for

SITE = "198.51.100.10"  # "the internet", a namespace beyond the gateway's
TUNNEL_PORT = 51820

POLICY = """\
[gateway]
database = "sqlite+aiosqlite:///{dir}/schoolgate.db"
metrics_port = 0
default_group = "offsite"

[local]
block = ["blocked.example"]

[groups.offsite]
# WireGuard clients: mitmproxy gives the laptop's tunnel the address 10.0.0.1
networks = ["10.0.0.0/24"]
"""

SITE_SERVER = textwrap.dedent("""
    import sys
    from http.server import BaseHTTPRequestHandler, HTTPServer
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"site {self.headers['Host']} saw {self.client_address[0]}".encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass
    HTTPServer((sys.argv[1], 80), Handler).serve_forever()
""")


@dataclass
class Tunnel:
    laptop: str
    gateway_dir: Path
    gateway_log: Path

    def curl(self, host: str) -> tuple[int, str]:
        done = subprocess.run(["ip", "netns", "exec", self.laptop, "curl", "-q", "-s", "--max-time", "15",
                               "-H", f"Host: {host}", "-w", "\n%{http_code}", f"http://{SITE}/"],
                              capture_output=True, text=True, timeout=30)
        body, _, status = done.stdout.rpartition("\n")
        return int(status or 0), body


def _run(*command: str) -> str:
    return subprocess.run(command, check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def tunnel(tmp_path: Path) -> Iterator[Tunnel]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces and a TUN device need root (CI runs as root)")
    for tool in ("wireguard-go", "wg", "ip", "curl"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install wireguard-go wireguard-tools iproute2 curl)")
    if not Path("/dev/net/tun").exists():
        pytest.skip("no /dev/net/tun for the WireGuard client's interface")
    tag = secrets.token_hex(3)
    laptop, gateway, internet = f"sg-laptop-{tag}", f"sg-gw-{tag}", f"sg-www-{tag}"
    processes: list[subprocess.Popen] = []
    try:
        for ns in (laptop, gateway, internet):
            _run("ip", "netns", "add", ns)
            _run("ip", "-n", ns, "link", "set", "lo", "up")
        # the laptop's home network: anywhere that reaches the gateway's UDP port
        _run("ip", "link", "add", f"h{tag}", "netns", laptop, "type", "veth", "peer", "name", f"g{tag}", "netns", gateway)
        _run("ip", "-n", laptop, "addr", "add", "203.0.113.2/24", "dev", f"h{tag}")
        _run("ip", "-n", gateway, "addr", "add", "203.0.113.1/24", "dev", f"g{tag}")
        # the gateway's way out to the internet (a site on the gateway's own machine is refused)
        _run("ip", "link", "add", f"u{tag}", "netns", gateway, "type", "veth", "peer", "name", f"w{tag}", "netns", internet)
        _run("ip", "-n", gateway, "addr", "add", "198.51.100.1/24", "dev", f"u{tag}")
        _run("ip", "-n", internet, "addr", "add", f"{SITE}/24", "dev", f"w{tag}")
        for ns, link in ((laptop, f"h{tag}"), (gateway, f"g{tag}"), (gateway, f"u{tag}"), (internet, f"w{tag}")):
            _run("ip", "-n", ns, "link", "set", link, "up")
        processes.append(subprocess.Popen(["ip", "netns", "exec", internet, sys.executable, "-c", SITE_SERVER, SITE],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))

        policy = tmp_path / "policy.toml"
        policy.write_text(POLICY.replace("{dir}", str(tmp_path)))
        log = tmp_path / "gateway.log"
        with open(log, "wb") as out:
            processes.append(subprocess.Popen(
                ["ip", "netns", "exec", gateway, sys.executable, "-m", "schoolgate", "run", "--policy", str(policy),
                 "--listen-host", "", "--listen-port", "8080", "--confdir", str(tmp_path / "ca"), "--",
                 "--mode", "regular", "--mode", f"wireguard@{TUNNEL_PORT}", "--set", "flow_detail=0"],
                cwd=tmp_path, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        conf = tmp_path / "ca" / "wireguard.conf"
        wait_for(lambda: "listening" in log.read_text() and conf.exists() or processes[-1].poll() is not None, timeout=60)
        assert processes[-1].poll() is None, log.read_text()
        keys = json.loads(conf.read_text())
        server_public = _run_input("wg", "pubkey", text=keys["server_key"])

        # the laptop: its WireGuard profile, as the gateway wrote it, on a real WireGuard client
        (tmp_path / "laptop.key").write_text(keys["client_key"] + "\n")
        (tmp_path / "laptop.key").chmod(0o600)
        interface = f"wg{tag}"
        processes.append(subprocess.Popen(["ip", "netns", "exec", laptop, "wireguard-go", "-f", interface],
                                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                          env={**os.environ, "WG_I_PREFER_BUGGY_USERSPACE_TO_POLISHED_KMOD": "1"}))
        wait_for(lambda: subprocess.run(["ip", "-n", laptop, "link", "show", interface],
                                        capture_output=True).returncode == 0, timeout=20)
        _run("ip", "netns", "exec", laptop, "wg", "set", interface, "private-key", str(tmp_path / "laptop.key"),
             "peer", server_public, "endpoint", f"203.0.113.1:{TUNNEL_PORT}", "allowed-ips", "0.0.0.0/0",
             "persistent-keepalive", "5")
        _run("ip", "-n", laptop, "addr", "add", "10.0.0.1/32", "dev", interface)
        _run("ip", "-n", laptop, "link", "set", interface, "up")
        _run("ip", "-n", laptop, "route", "add", f"{SITE}/32", "dev", interface)
        yield Tunnel(laptop, tmp_path, log)
    finally:
        for process in reversed(processes):
            if process.poll() is None:
                process.send_signal(2)  # SIGINT: the gateway flushes its records
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        for ns in (laptop, gateway, internet):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def _run_input(*command: str, text: str) -> str:
    return subprocess.run(command, input=text, check=True, capture_output=True, text=True, timeout=30).stdout.strip()


def test_a_laptop_off_site_is_filtered_and_recorded_through_its_wireguard_profile(tunnel: Tunnel) -> None:
    status, body = 0, ""
    deadline = time.monotonic() + 30
    while status != 200 and time.monotonic() < deadline:  # the first handshake takes a moment
        status, body = tunnel.curl("www.bbc.co.uk")
    assert status == 200, body
    # relayed by the gateway: the site saw the gateway, not the laptop's tunnel address
    assert body == "site www.bbc.co.uk saw 198.51.100.1", body
    status, body = tunnel.curl("blocked.example")
    assert status == 403 and "blocked.example" in body

    # the same records as on site, after the gateway has written them
    database = tunnel.gateway_dir / "schoolgate.db"

    def recorded() -> list[tuple]:
        if not database.exists():
            return []
        with sqlite3.connect(database) as db:
            return db.execute("SELECT client_ip, group_name, host, verdict FROM access_log ORDER BY id").fetchall()

    wait_for(lambda: len(recorded()) >= 2, timeout=30)
    rows = recorded()
    assert ("10.0.0.1", "offsite", "www.bbc.co.uk", "allow") in rows, rows
    assert ("10.0.0.1", "offsite", "blocked.example", "block") in rows, rows
