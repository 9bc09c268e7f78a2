"""deploy/nftables/schoolgate-transparent.nft with real traffic, in network namespaces made
for the test: a pupil's device, the gateway host (its router, running a real mitmdump in
transparent mode on every address, IPv4 and IPv6) and "the internet" (servers on the ports
pupils try). Web traffic must reach the internet only through the gateway, over IPv4 and
IPv6; QUIC, DNS-over-TLS, VPN ports, SSH and unlisted ports must not reach it at all; DNS
to the school's resolver must; the gateway's metrics port must not be reachable by pupils."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.gateway import REPO, proxy_command

RULES = REPO / "deploy" / "nftables" / "schoolgate-transparent.nft"
INTERNET, INTERNET6, DNS = "192.0.2.2", "2001:db8:2::2", "192.0.2.53"
ROUTER_OUT, ROUTER_OUT6 = "192.0.2.1", "2001:db8:2::1"

# The internet: on each port, answer with who connected (so a test can tell a connection
# relayed by the gateway from one forwarded past it), over TCP and UDP, IPv4 and IPv6.
SERVERS = textwrap.dedent("""
    import socket, sys, threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Http(BaseHTTPRequestHandler):
        def do_GET(self):
            body = f"internet saw {self.client_address[0]}".encode()
            self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
            self.wfile.write(body)
        def log_message(self, *a): pass

    class Http6(ThreadingHTTPServer):
        address_family = socket.AF_INET6

    def tcp(port):
        s = socket.socket(socket.AF_INET6); s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind(("::", port)); s.listen()
        while True:
            c, a = s.accept(); c.sendall(f"tcp {port} saw {a[0]}".encode()); c.close()

    def udp(port, host="::"):
        # a reply must leave from the address asked, so the resolver's address has its own socket
        s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
        if ":" in host:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # the resolver's port 53 beside the wildcard one
        s.bind((host, port))
        while True:
            data, a = s.recvfrom(2048); s.sendto(f"udp {port} saw {a[0]}".encode(), a)

    server = Http6(("::", 80), Http)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    for port in (443, 853, 22, 1194, 8443):
        threading.Thread(target=tcp, args=(port,), daemon=True).start()
    for port in (443, 853, 51820, 1194, 500, 53):
        threading.Thread(target=udp, args=(port,), daemon=True).start()
    threading.Thread(target=udp, args=(53, sys.argv[1]), daemon=True).start()
    print("ready", flush=True)
    sys.stdin.read()
""")

PROBE = textwrap.dedent("""
    import json, socket, sys, urllib.request
    kind, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        if kind == "http":
            url = f"http://[{host}]:{port}/" if ":" in host else f"http://{host}:{port}/"
            opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
            print(json.dumps(opener.open(url, timeout=5).read().decode()))
        elif kind == "tcp":
            s = socket.create_connection((host, port), timeout=3); print(json.dumps(s.recv(100).decode()))
        else:
            s = socket.socket(family, socket.SOCK_DGRAM); s.settimeout(2); s.connect((host, port))
            s.send(b"hello"); print(json.dumps(s.recv(100).decode()))
    except Exception as e:
        print(json.dumps(f"refused: {type(e).__name__}"))
""")


@dataclass
class Lab:
    pupil: str
    router: str
    internet: str
    mitmdump_log: Path

    def probe(self, kind: str, host: str, port: int) -> str:
        done = subprocess.run(["ip", "netns", "exec", self.pupil, sys.executable, "-c", PROBE, kind, host, str(port)],
                              capture_output=True, text=True, timeout=30)
        return json.loads(done.stdout)


def _ip(*args: str, ns: str | None = None) -> None:
    command = ["ip", *(["-n", ns] if ns else []), *args]
    subprocess.run(command, check=True, capture_output=True, timeout=30)


def _wait_port(ns: str, port: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        done = subprocess.run(["ip", "netns", "exec", ns, "ss", "-ltnH", f"sport = :{port}"],
                              capture_output=True, text=True)
        if done.stdout.strip():
            return
        time.sleep(0.2)
    raise AssertionError(f"nothing listens on {port} in {ns}")


@pytest.fixture
def lab(tmp_path: Path) -> Iterator[Lab]:
    if os.geteuid() != 0:
        pytest.skip("network namespaces need root (CI runs as root)")
    for tool in ("ip", "nft", "ss"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed (apt-get install iproute2 nftables)")
    tag = secrets.token_hex(3)
    pupil, router, internet = f"sg-pupil-{tag}", f"sg-router-{tag}", f"sg-net-{tag}"
    processes: list[subprocess.Popen] = []
    try:
        for ns in (pupil, router, internet):
            _ip("netns", "add", ns)
            _ip("link", "set", "lo", "up", ns=ns)
        # pupil <-> router (the router's side is named like a pupil VLAN interface)
        _ip("link", "add", f"p{tag}", "netns", pupil, "type", "veth", "peer", "name", f"vlan{tag}", "netns", router)
        _ip("link", "add", f"o{tag}", "netns", router, "type", "veth", "peer", "name", f"i{tag}", "netns", internet)
        for ns, link, addresses in ((pupil, f"p{tag}", ["10.10.0.2/24", "fd00:10::2/64"]),
                                    (router, f"vlan{tag}", ["10.10.0.1/24", "fd00:10::1/64"]),
                                    (router, f"o{tag}", [f"{ROUTER_OUT}/24", f"{ROUTER_OUT6}/64"]),
                                    (internet, f"i{tag}", [f"{INTERNET}/24", f"{DNS}/24", f"{INTERNET6}/64"])):
            for address in addresses:
                _ip("addr", "add", address, "dev", link, "nodad", ns=ns) if ":" in address else \
                    _ip("addr", "add", address, "dev", link, ns=ns)
            _ip("link", "set", link, "up", ns=ns)
        _ip("route", "add", "default", "via", "10.10.0.1", ns=pupil)
        _ip("-6", "route", "add", "default", "via", "fd00:10::1", ns=pupil)
        _ip("route", "add", "default", "via", ROUTER_OUT, ns=internet)
        _ip("-6", "route", "add", "default", "via", ROUTER_OUT6, ns=internet)
        for key in ("net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"):
            subprocess.run(["ip", "netns", "exec", router, "sysctl", "-qw", key], check=True)
        rules = RULES.read_text()
        rules = rules.replace('define PUPIL_IFACES = { "vlan10", "vlan20" }', f'define PUPIL_IFACES = {{ "vlan{tag}" }}')
        rules = rules.replace("define SCHOOL_DNS = { 10.0.0.53 }", f"define SCHOOL_DNS = {{ {DNS} }}")
        assert f"vlan{tag}" in rules and DNS in rules, "the shipped rules' definitions changed; update this test"
        (tmp_path / "rules.nft").write_text(rules)
        subprocess.run(["ip", "netns", "exec", router, "nft", "-f", str(tmp_path / "rules.nft")],
                       check=True, capture_output=True, timeout=30)

        servers = subprocess.Popen(["ip", "netns", "exec", internet, sys.executable, "-c", SERVERS, DNS],
                                   stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        processes.append(servers)
        assert servers.stdout is not None and servers.stdout.readline().strip() == "ready"
        # the gateway: mitmdump (or the lean process) in transparent mode on every address, as `schoolgate run` listens
        log = tmp_path / "mitmdump.log"
        with open(log, "wb") as out:
            processes.append(subprocess.Popen(
                ["ip", "netns", "exec", router, *proxy_command(), "--mode", "transparent", "--listen-host", "",
                 "--listen-port", "8080", "--set", f"confdir={tmp_path / 'ca'}", "--set", "connection_strategy=lazy"],
                stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL))
        _wait_port(router, 8080)
        # a service on the gateway host pupils must not reach (the metrics endpoint)
        processes.append(subprocess.Popen(["ip", "netns", "exec", router, sys.executable, "-m", "http.server",
                                           "--bind", "0.0.0.0", "9464"], stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL, cwd=tmp_path))
        _wait_port(router, 9464)
        yield Lab(pupil, router, internet, log)
    finally:
        for process in processes:
            process.kill()
            process.wait()
        for ns in (pupil, router, internet):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_web_traffic_goes_through_the_gateway_and_nothing_else_gets_out(lab: Lab) -> None:
    # web: relayed by the gateway (the internet sees the router's address, not the pupil's)
    assert lab.probe("http", INTERNET, 80) == f"internet saw ::ffff:{ROUTER_OUT}", lab.mitmdump_log.read_text()
    assert lab.probe("http", INTERNET6, 80) == f"internet saw {ROUTER_OUT6}", lab.mitmdump_log.read_text()
    # a bypass port, IPv4 and IPv6: refused, never reaching the internet
    for kind, port in (("udp", 443), ("tcp", 853), ("udp", 853), ("udp", 51820), ("udp", 1194), ("tcp", 1194),
                       ("udp", 500), ("tcp", 22), ("tcp", 8443)):
        for host in (INTERNET, INTERNET6):
            answer = lab.probe(kind, host, port)
            assert answer.startswith("refused"), f"{kind} {host}:{port} got out: {answer}"
    # DNS to the school's resolver is allowed (and shows the UDP path itself works)
    assert lab.probe("udp", DNS, 53) == "udp 53 saw 10.10.0.2"
    # ...and to any other resolver it is not
    assert lab.probe("udp", INTERNET, 53).startswith("refused")
    # the gateway host's own services are not for pupils
    assert lab.probe("http", "10.10.0.1", 9464).startswith("refused")
    # HTTPS too goes to the gateway, which waits for the TLS ClientHello the probe never sends,
    # where the internet's server would have answered at once
    for host in (INTERNET, INTERNET6):
        assert lab.probe("tcp", host, 443) == "refused: TimeoutError"
