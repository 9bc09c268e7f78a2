"""Load and soak benchmark: bare mitmdump against mitmdump with schoolgate, side by side.

    python bench/bench_load.py [--seconds 15] [--concurrency 16] [--requests-per-connection 20]
    python bench/bench_load.py --soak 10            # 10 minutes of load; gateway RSS sampled throughout

Everything stays on 127.0.0.1: the test harness's upstream servers (tests/support/upstream.py)
answer, and its Gateway (tests/support/gateway.py) starts each mitmdump with the loopback add-on.
The client is a small asyncio HTTP/1.1 client. Each connection sends --requests-per-connection
keep-alive requests: absolute-form for http://, and for https:// inside a CONNECT tunnel after
TLS with the gateway (interception; the client trusts the gateway's CA). Requests name the
upstream by address (127.0.0.1:PORT), which the loopback add-on leaves as it is, so mitmproxy
reuses its upstream connection as it would for a real site. Latency is per request,
including any connection set-up it waited for. Both gateways run with -q, the same options,
one process (one core) each; the schoolgate one records every request (SQLite).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from support.gateway import Gateway  # noqa: E402
from support.upstream import Upstream  # noqa: E402

POLICY = """\
[gateway]
default_group = "pupils"
metrics_port = {metrics_port}

[categories]
games = "block"

[groups.pupils]
networks = ["127.0.0.1/32"]
"""
WARMUP_SECONDS = 2.0
SOAK_SAMPLE_SECONDS = 10.0
READ_TIMEOUT = 10.0  # a response slower than this counts as an error


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)  # seconds, one per completed request
    errors: int = 0
    seconds: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.seconds if self.seconds else 0.0

    def percentile_ms(self, fraction: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1000


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one response (the upstream and the gateway both send Content-Length); return its status."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = next((int(line.split(":", 1)[1]) for line in lines[1:] if line.lower().startswith("content-length:")), 0)
    await reader.readexactly(length)
    return status


async def _client(scheme: str, proxy_port: int, upstream_port: int, deadline: float, result: Result, path: str,
                  per_connection: int, tls: ssl.SSLContext) -> None:
    """Open a connection through the proxy (a CONNECT tunnel with TLS for https), send
    `per_connection` requests on it, repeat until the deadline."""
    authority = f"127.0.0.1:{upstream_port}"
    target = f"http://{authority}{path}" if scheme == "http" else path  # absolute-form to a proxy; origin-form in a tunnel
    request = f"GET {target} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()
    while time.monotonic() < deadline:
        started = time.perf_counter()
        writer = None
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
            if scheme == "https":
                writer.write(f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
                await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), READ_TIMEOUT)
                await writer.start_tls(tls, server_hostname="127.0.0.1")
            for _ in range(per_connection):
                writer.write(request)
                if await _read_response(reader) != 200:
                    result.errors += 1
                    break
                result.latencies.append(time.perf_counter() - started)
                started = time.perf_counter()
                if time.monotonic() >= deadline:
                    break
        except (OSError, asyncio.IncompleteReadError, ValueError, TimeoutError, ssl.SSLError):
            result.errors += 1
        finally:
            if writer is not None:
                writer.close()


async def load(gateway: Gateway, upstream: Upstream, scheme: str, seconds: float, concurrency: int,
               per_connection: int) -> Result:
    tls = ssl.create_default_context(cafile=str(gateway.ca_cert))
    port = upstream.http_port if scheme == "http" else upstream.https_port
    result = Result()
    deadline = time.monotonic() + seconds
    started = time.monotonic()
    await asyncio.gather(*(
        _client(scheme, gateway.proxy_port, port, deadline, result, f"/load/{n}", per_connection, tls)
        for n in range(concurrency)
    ))
    result.seconds = time.monotonic() - started
    return result


def gateway_pid(gateway: Gateway) -> int:
    """The mitmdump process listening on the gateway's proxy port."""
    for conn in psutil.net_connections("tcp"):
        if conn.status == psutil.CONN_LISTEN and conn.laddr.port == gateway.proxy_port and conn.pid:
            return conn.pid
    raise RuntimeError(f"nothing listens on {gateway.proxy_port}")


def start_gateways(work: Path, upstream: Upstream, *, bare: bool) -> dict[str, Gateway]:
    common = dict(loopback_http_port=upstream.http_port, loopback_https_port=upstream.https_port, args=["-q"])
    gateways = {"with schoolgate": Gateway(work / "schoolgate", POLICY, **common)}  # type: ignore[arg-type]
    if bare:
        gateways["bare mitmdump"] = Gateway(work / "bare", with_schoolgate=False, **common)  # type: ignore[arg-type]
    for gateway in gateways.values():
        gateway.start()
    return gateways


def compare(args: argparse.Namespace, upstream: Upstream, gateways: dict[str, Gateway]) -> None:
    print(f"{args.concurrency} concurrent clients, {args.seconds:.0f} s each, "
          f"{args.requests_per_connection} keep-alive requests per connection (https: per CONNECT tunnel); "
          "one mitmdump process (one core) per gateway\n")
    print(f"{'scheme':7} {'gateway':16} {'req/s':>8} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for scheme in ("http", "https"):
        rates = {}
        for name in ("bare mitmdump", "with schoolgate"):
            gateway = gateways[name]
            asyncio.run(load(gateway, upstream, scheme, WARMUP_SECONDS, args.concurrency, args.requests_per_connection))
            result = asyncio.run(load(gateway, upstream, scheme, args.seconds, args.concurrency, args.requests_per_connection))
            rates[name] = result.rate
            print(f"{scheme:7} {name:16} {result.rate:8.0f} {result.percentile_ms(0.50):8.2f} "
                  f"{result.percentile_ms(0.95):8.2f} {result.percentile_ms(0.99):8.2f} {result.errors:7d}")
        ratio = rates["with schoolgate"] / rates["bare mitmdump"] if rates["bare mitmdump"] else float("nan")
        print(f"{scheme:7} {'ratio':16} {ratio:8.2f}  (schoolgate req/s / bare req/s)\n")


def soak(args: argparse.Namespace, upstream: Upstream, gateway: Gateway) -> None:
    process = psutil.Process(gateway_pid(gateway))
    end = time.monotonic() + args.soak * 60
    samples: list[tuple[float, float]] = []  # (minutes since start, RSS MiB)
    total = 0
    began = time.monotonic()
    print(f"soak: {args.soak:g} min of http and https load ({args.concurrency} clients) on mitmdump+schoolgate pid {process.pid}")
    while time.monotonic() < end:
        for scheme in ("http", "https"):
            chunk = min(SOAK_SAMPLE_SECONDS / 2, max(0.0, end - time.monotonic()))
            result = asyncio.run(load(gateway, upstream, scheme, chunk, args.concurrency, args.requests_per_connection))
            total += len(result.latencies)
        rss = process.memory_info().rss / 2**20
        samples.append(((time.monotonic() - began) / 60, rss))
        print(f"  {samples[-1][0]:6.2f} min  RSS {rss:7.1f} MiB  requests so far {total}", flush=True)
    first, last = samples[0][1], samples[-1][1]
    half = samples[len(samples) // 2:]
    slope = statistics.linear_regression([t for t, _ in half], [r for _, r in half]).slope if len(half) > 1 else 0.0
    print(f"soak: RSS start {first:.1f} MiB, end {last:.1f} MiB, max {max(r for _, r in samples):.1f} MiB; "
          f"second-half trend {slope:+.2f} MiB/min over {total} requests")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=15.0, help="measured seconds per scheme and gateway")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests-per-connection", type=int, default=20, help="keep-alive requests per connection / tunnel")
    parser.add_argument("--soak", type=float, metavar="MINUTES", help="run mitmdump+schoolgate under load this long")
    args = parser.parse_args()
    with Upstream() as upstream, tempfile.TemporaryDirectory(prefix="sg-bench-") as work:
        gateways = start_gateways(Path(work), upstream, bare=not args.soak)
        try:
            if args.soak:
                soak(args, upstream, gateways["with schoolgate"])
            else:
                compare(args, upstream, gateways)
        finally:
            for gateway in gateways.values():
                gateway.stop()


if __name__ == "__main__":
    main()
