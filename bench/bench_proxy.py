"""What the gateway costs per request: bare mitmdump, schoolgate, e2guardian; passthrough
against intercept-everything; one worker against two.

    python bench/bench_proxy.py [--rounds 3] [--seconds 8] [--concurrency 16] [--skip-workers]

Everything runs on 127.0.0.1 against one loopback upstream (a small asyncio server in its
own process: HTTP and HTTPS, keep-alive, a 2 KiB text/html page). Gateways are started the
way they run in production: `schoolgate run --quiet` (schoolgate.proxy: only the add-ons
the gateway needs; SQLite records), bare `mitmdump -q` with its default add-ons, and
e2guardian (Debian's, default lists, no HTTPS inspection) when installed. Configurations
are measured in interleaved rounds (A B C, A B C, ...), so a noisy neighbour on the machine
hits them alike; the figure printed is the median round.

- **http (wrk)**: `wrk -t1 -c16` keep-alive GETs in absolute form through the proxy
  (`Host: www.allowed.bench`, allowed by the school's list); schoolgate also as plain
  `mitmdump -s addons/script.py` (all of mitmdump's add-ons), to show what the lean process saves.
- **https mix**: wrk cannot CONNECT, so a Python asyncio client opens tunnels: CONNECT, TLS
  (SNI as below), then 10 keep-alive GETs. 80% of tunnels go to allowed-by-name sites
  (`siteN.allowed.bench`), 10% to a search engine (`www.bing.com/search?q=...`), 10% to a
  blocked site (`www.blocked.bench`). Tunnels CONNECT to the upstream's address (opened by
  `[gateway] internal_destinations`) with the name in SNI, so no configuration waits on DNS.
  schoolgate runs with `decrypt = "needed"` (passthrough) and `decrypt = "all"`.
- **workers**: bare mitmdump, `schoolgate run --workers 1` and `--workers 2`, wrk http with -t2 -c32.

CPU per request is the gateway's own processes' user+system CPU (psutil, the whole process
tree: supervisor and workers) over the requests answered; requests/s is what the client saw.
On this 2-core machine the client, the upstream and the gateway share the cores, so
requests/s is bounded by them all; CPU per request is not.

On a 16-core machine, measure workers with the cores kept apart, so the load generator and
the upstream never take a gateway's core:

    python bench/bench_proxy.py --gateway-cpus 0-7 --load-cpus 8-15 --workers 1,2,4,8

(gateways under `taskset -c 0-7`; this script, the upstream and wrk, with one wrk thread per
load CPU and 16*2*4 = 128 connections, on 8-15). N workers should reach at least 0.8*N times
one worker's requests/s; CPU per request should stay flat as N grows.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import multiprocessing
import os
import random
import re
import shutil
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.gateway import free_ports, mitmdump_path  # noqa: E402
from support.upstream import _self_signed  # noqa: E402

PAGE = b"<!doctype html><title>page</title><p>" + b"lorem ipsum dolor sit amet " * 74 + b"</p>\n"
POLICY = """\
[gateway]
database = "sqlite+aiosqlite:///{dir}/records.db"
metrics_port = 0
default_group = "pupils"
internal_destinations = ["127.0.0.1"]

[local]
allow = ["allowed.bench"]
block = ["blocked.bench"]

[groups.pupils]
networks = ["127.0.0.1/32"]
decrypt = "{decrypt}"
"""
REQUESTS_PER_TUNNEL = 10
READ_TIMEOUT = 10.0


# --- the upstream ------------------------------------------------------------------------

def _serve(http_port: int, https_port: int, cert: str, key: str) -> None:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        response = (b"HTTP/1.1 200 OK\r\nContent-Type: text/html; charset=utf-8\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(PAGE)) + PAGE
        try:
            while True:
                await reader.readuntil(b"\r\n\r\n")
                writer.write(response)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError, ssl.SSLError):
            pass
        finally:
            writer.close()

    async def main() -> None:
        tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        tls.load_cert_chain(cert, key)
        plain = await asyncio.start_server(handle, "127.0.0.1", http_port, backlog=1024)
        secure = await asyncio.start_server(handle, "127.0.0.1", https_port, ssl=tls, backlog=1024)
        async with plain, secure:
            await asyncio.gather(plain.serve_forever(), secure.serve_forever())

    asyncio.run(main())


# --- the gateways ------------------------------------------------------------------------

@dataclass
class Proxy:
    name: str
    port: int
    process: subprocess.Popen[bytes]

    def cpu_seconds(self) -> float:
        try:
            root = psutil.Process(self.process.pid)
            total = 0.0
            for p in (root, *root.children(recursive=True)):
                times = p.cpu_times()
                total += times.user + times.system
            return total
        except psutil.NoSuchProcess:
            return float("nan")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"exited with {process.returncode}: {log.read_text()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise RuntimeError(f"nothing listens on {port}: {log.read_text()[-2000:]}")


# `taskset -c CPUS` before every gateway's command when --gateway-cpus is given.
GATEWAY_PREFIX: list[str] = []


def _start(name: str, command: list[str], port: int, work: Path, settle: float = 0.0) -> Proxy:
    command = [*GATEWAY_PREFIX, *command]
    log = work / f"{re.sub(r'[^a-z0-9]+', '-', name)}.log"
    with open(log, "wb") as out:
        process = subprocess.Popen(command, cwd=work, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    _wait_for_port(port, process, log)
    time.sleep(settle)  # schoolgate: the add-ons finish loading (policy, lists, database) after the port opens
    return Proxy(name, port, process)


def start_schoolgate(work: Path, name: str, decrypt: str = "needed", workers: int = 1) -> Proxy:
    home = work / re.sub(r"[^a-z0-9]+", "-", name)
    home.mkdir()
    (home / "policy.toml").write_text(POLICY.format(dir=home, decrypt=decrypt))
    (port,) = free_ports(1)
    command = [sys.executable, "-m", "schoolgate", "run", "--policy", str(home / "policy.toml"),
               "--listen-host", "127.0.0.1", "--listen-port", str(port), "--workers", str(workers), "--quiet",
               "--", "--set", "ssl_insecure=true"]
    return _start(name, command, port, home, settle=8.0)


def start_schoolgate_on_mitmdump(work: Path) -> Proxy:
    """The same add-ons on plain mitmdump (its ~36 add-ons), to show what the lean process saves."""
    home = work / "on-mitmdump"
    home.mkdir()
    (home / "policy.toml").write_text(POLICY.format(dir=home, decrypt="needed"))
    (port,) = free_ports(1)
    command = [str(mitmdump_path()), "-q", "-s", str(REPO / "addons" / "script.py"), "--listen-host", "127.0.0.1",
               "--listen-port", str(port), "--set", f"confdir={home / 'ca'}", "--set", "connection_strategy=lazy",
               "--set", f"schoolgate_policy={home / 'policy.toml'}", "--set", "ssl_insecure=true"]
    return _start("schoolgate on mitmdump -s", command, port, home, settle=8.0)


def start_mitmdump(work: Path) -> Proxy:
    (port,) = free_ports(1)
    command = [str(mitmdump_path()), "-q", "--listen-host", "127.0.0.1", "--listen-port", str(port),
               "--set", f"confdir={work / 'bare-ca'}", "--set", "ssl_insecure=true"]
    return _start("bare mitmdump", command, port, work, settle=1.0)


def start_e2guardian(work: Path) -> Proxy | None:
    """Debian's e2guardian with its shipped configuration and lists, on its own port, in the foreground."""
    binary = shutil.which("e2guardian") or ("/usr/sbin/e2guardian" if Path("/usr/sbin/e2guardian").exists() else None)
    if binary is None or not Path("/etc/e2guardian/e2guardian.conf").exists():
        return None
    (port,) = free_ports(1)
    home = work / "e2guardian"
    shutil.copytree("/etc/e2guardian", home)  # the filter group files are read beside the main one
    text = (home / "e2guardian.conf").read_text()
    replace = {"filterports": str(port), "filterip": "127.0.0.1", "loglevel": "0", "nodaemon": "on",
               "nologger": "on", "pidfilename": f"'{home}/e2guardian.pid'", "loglocation": f"'{home}/access.log'",
               "logsyslog": "off", "httpworkers": "200"}
    lines = [line for line in text.splitlines() if line.split("=", 1)[0].strip() not in replace]
    lines += [f"{key} = {value}" for key, value in replace.items()]
    (home / "e2guardian.conf").write_text("\n".join(lines) + "\n")
    try:
        return _start("e2guardian", [binary, "-N", "-c", str(home / "e2guardian.conf")], port, home, settle=1.0)
    except RuntimeError as e:
        print(f"e2guardian did not start, left out: {str(e)[:300]}")
        return None


# --- load ------------------------------------------------------------------------------

@dataclass
class Round:
    requests: int
    seconds: float
    cpu: float
    errors: int = 0

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    @property
    def cpu_ms(self) -> float:
        return self.cpu / self.requests * 1000 if self.requests else float("nan")


def wrk(proxy: Proxy, upstream_port: int, seconds: float, threads: int, connections: int, work: Path) -> Round:
    script = work / "proxy.lua"
    script.write_text(f'wrk.path = "http://127.0.0.1:{upstream_port}/page"\nwrk.headers["Host"] = "www.allowed.bench"\n')
    cpu = proxy.cpu_seconds()
    done = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds:g}s", "-s", str(script),
                           f"http://127.0.0.1:{proxy.port}"], capture_output=True, text=True, timeout=seconds + 60)
    cpu = proxy.cpu_seconds() - cpu
    total = re.search(r"(\d+) requests in ([\d.]+)(m?s)", done.stdout)
    if total is None:
        raise RuntimeError(f"wrk: {done.stdout}{done.stderr}")
    elapsed = float(total.group(2)) / (1000 if total.group(3) == "ms" else 1)
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", done.stdout)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", done.stdout)
    failed = (int(bad.group(1)) if bad else 0) + (sum(map(int, errors.groups())) if errors else 0)
    return Round(int(total.group(1)), elapsed, cpu, failed)


def _mix() -> list[tuple[str, str]]:
    """(SNI, path) of 100 tunnels: 80 allowed-by-name sites, 10 searches, 10 blocked."""
    tunnels = [(f"site{n % 20}.allowed.bench", f"/article/{n}") for n in range(80)]
    tunnels += [("www.bing.com", f"/search?q=volcano+homework+{n}") for n in range(10)]
    tunnels += [("www.blocked.bench", f"/game/{n}") for n in range(10)]
    random.Random(7).shuffle(tunnels)
    return tunnels


async def _tunnels(proxy_port: int, upstream_port: int, deadline: float, mix: list[tuple[str, str]],
                   start: int, counts: list[int]) -> None:
    tls = ssl.create_default_context()
    tls.check_hostname, tls.verify_mode = False, ssl.CERT_NONE  # the site's certificate or the school CA's
    n = start
    while time.monotonic() < deadline:
        sni, path = mix[n % len(mix)]
        n += 1
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
            writer.write(f"CONNECT 127.0.0.1:{upstream_port} HTTP/1.1\r\nHost: 127.0.0.1:{upstream_port}\r\n\r\n".encode())
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
            if b" 200 " not in head.split(b"\r\n", 1)[0]:
                counts[1] += 1
                continue
            await writer.start_tls(tls, server_hostname=sni)
            request = f"GET {path} HTTP/1.1\r\nHost: {sni}\r\n\r\n".encode()
            for _ in range(REQUESTS_PER_TUNNEL):
                writer.write(request)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
                length = next((int(line.split(b":", 1)[1]) for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length:")), 0)
                await reader.readexactly(length)
                counts[0] += 1
                if b"connection: close" in head.lower():
                    break
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError, TimeoutError):
            counts[1] += 1
        finally:
            if writer is not None:
                writer.close()


def https_mix(proxy: Proxy, upstream_port: int, seconds: float, concurrency: int) -> Round:
    mix = _mix()

    async def run() -> tuple[list[int], float]:
        counts = [0, 0]
        started = time.monotonic()
        deadline = started + seconds
        await asyncio.gather(*(_tunnels(proxy.port, upstream_port, deadline, mix, k * 7, counts)
                               for k in range(concurrency)))
        return counts, time.monotonic() - started

    cpu = proxy.cpu_seconds()
    counts, elapsed = asyncio.run(run())
    return Round(counts[0], elapsed, proxy.cpu_seconds() - cpu, counts[1])


# --- reporting ---------------------------------------------------------------------------

def rounds(title: str, proxies: list[Proxy], measure: Callable[[Proxy], Round], count: int,
           baseline: str | None) -> dict[str, float]:
    """Measure each proxy `count` times, interleaved; print the medians; return each one's median req/s."""
    results: dict[str, list[Round]] = {p.name: [] for p in proxies}
    for _ in range(count):
        for proxy in proxies:
            results[proxy.name].append(measure(proxy))
    print(f"\n{title} (load average after: {' '.join(f'{n:.1f}' for n in os.getloadavg())})")
    print(f"  {'gateway':34} {'req/s':>8} {'CPU ms/req':>11} {'errors':>7}   rounds (req/s)")
    median = {}
    for name, runs in results.items():
        rate = statistics.median(r.rate for r in runs)
        cpu_ms = statistics.median(r.cpu_ms for r in runs)
        median[name] = rate
        base = ""
        if baseline and name != baseline and baseline in results:
            b_rate = statistics.median(r.rate for r in results[baseline])
            b_cpu = statistics.median(r.cpu_ms for r in results[baseline])
            base = f"   x{rate / b_rate:.2f} req/s, x{cpu_ms / b_cpu:.2f} CPU/req vs {baseline}"
        print(f"  {name:34} {rate:8.0f} {cpu_ms:11.3f} {sum(r.errors for r in runs):7d}   "
              f"{' '.join(f'{r.rate:.0f}' for r in runs)}{base}")
    return median


def _cpu_list(spec: str) -> set[int]:
    """CPUs in taskset's list form: "8-15", "0,2,4-6"."""
    cpus: set[int] = set()
    for part in spec.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=8.0, help="seconds per configuration per round")
    parser.add_argument("--concurrency", type=int, default=16, help="wrk connections / HTTPS client tunnels at once")
    parser.add_argument("--skip-workers", action="store_true", help="leave out the workers comparison")
    parser.add_argument("--workers", default="1,2", help="worker counts to compare with one another (e.g. 1,2,4,8)")
    parser.add_argument("--gateway-cpus", help="run every gateway on these CPUs only (taskset list, e.g. 0-7)")
    parser.add_argument("--load-cpus", help="run wrk, the HTTPS client and the upstream on these CPUs only (e.g. 8-15)")
    args = parser.parse_args()
    counts = [int(n) for n in args.workers.split(",")]
    load_threads = 2
    if args.gateway_cpus:
        GATEWAY_PREFIX[:] = ["taskset", "-c", args.gateway_cpus]
    if args.load_cpus:
        load = _cpu_list(args.load_cpus)
        os.sched_setaffinity(0, load)  # inherited by the upstream process and by wrk
        load_threads = len(load)
    print(f"bench_proxy: {os.cpu_count()} cores, load average {' '.join(f'{n:.1f}' for n in os.getloadavg())}, "
          f"{args.rounds} interleaved rounds of {args.seconds:g} s, {args.concurrency} connections; median round shown; "
          f"event loop: {'uvloop' if importlib.util.find_spec('uvloop') else 'asyncio'}; "
          f"gateways on CPUs {args.gateway_cpus or 'any'}, load on CPUs {args.load_cpus or 'any'}")
    with tempfile.TemporaryDirectory(prefix="sg-bench-proxy-") as tmp:
        work = Path(tmp)
        cert, key = _self_signed(work)
        http_port, https_port = free_ports(2)
        upstream = multiprocessing.Process(target=_serve, args=(http_port, https_port, str(cert), str(key)), daemon=True)
        upstream.start()
        proxies: list[Proxy] = []
        try:
            proxies.append(start_mitmdump(work))
            proxies.append(start_schoolgate(work, "schoolgate run (decrypt=needed)"))
            proxies.append(start_schoolgate(work, "schoolgate run (decrypt=all)", decrypt="all"))
            proxies.append(start_schoolgate_on_mitmdump(work))
            e2 = start_e2guardian(work)
            if e2 is not None:
                proxies.append(e2)
            bare, needed, everything = proxies[:3]
            rounds(f"http through the proxy (wrk -t1 -c{args.concurrency}, keep-alive, 2 KiB page)",
                   [p for p in proxies if p is not everything],
                   lambda p: wrk(p, http_port, args.seconds, 1, args.concurrency, work), args.rounds, bare.name)
            rounds(f"https mix: 80% allowed by name, 10% search, 10% blocked; {args.concurrency} clients, "
                   f"CONNECT + TLS + {REQUESTS_PER_TUNNEL} GETs per tunnel",
                   [bare, needed, everything], lambda p: https_mix(p, https_port, args.seconds, args.concurrency),
                   args.rounds, bare.name)
            if not args.skip_workers:
                for p in proxies:
                    p.stop()
                proxies = [start_mitmdump(work)]
                proxies += [start_schoolgate(work, f"schoolgate run --workers {n}", workers=n) for n in counts]
                connections = args.concurrency * 2 * max(1, max(counts) // 2)
                result = rounds(f"workers: http, wrk -t{load_threads} -c{connections}", proxies,
                                lambda p: wrk(p, http_port, args.seconds, load_threads, connections, work),
                                args.rounds, proxies[0].name)
                one = result[proxies[1].name]
                for n, proxy in zip(counts[1:], proxies[2:], strict=True):
                    print(f"  {n} workers / {counts[0]}: x{result[proxy.name] / one:.2f} "
                          f"(goal: >= {0.8 * n / counts[0]:.1f}, i.e. 0.8*N)")
        finally:
            for p in proxies:
                p.stop()
            upstream.terminate()


if __name__ == "__main__":
    main()
