"""Chained behind an upstream proxy: 50 hosts over one kept-alive client connection.

    ./dev bench bench_chain.py [--rounds 3] [--hosts 50] [--stall-seconds 3]

Everything on 127.0.0.1: the loopback test servers and a small upstream HTTP proxy
(tests/support/chainproxy.py, threaded, keep-alive). One httpx client with a single
connection to the proxy under test sends `GET http://siteN.test/` in absolute form, as a
browser does, for N = 1..hosts, one after the other. A request not answered within
--stall-seconds is a stall: it is counted and the client goes on with a new connection.

Configurations, measured in interleaved rounds (A B C, A B C, ...) so a busy machine hits
them alike; each round starts a fresh process:
- mitmdump-upstream: bare `mitmdump --mode upstream:<proxy>` (all its default add-ons);
- schoolgate-chained: `mitmdump -s addons/script.py` with `[gateway] upstream_proxy`;
- schoolgate-direct: the same without upstream_proxy, for what chaining costs.
(The test support's loopback add-on is loaded in each, sending ports 80/443 to the test servers.)

schoolgate-direct looks each name up itself before connecting (the DNS-rebinding check); on
a machine whose resolver sometimes takes its 5 s timeout over a `.test` name, that shows
there as an occasional stall. Chained, the upstream proxy resolves names, so nothing waits here.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from support.chainproxy import ChainProxy  # noqa: E402
from support.gateway import Gateway  # noqa: E402
from support.upstream import Upstream  # noqa: E402

POLICY = """\
[gateway]
default_group = "pupils"
UPSTREAM

[groups.pupils]
networks = ["127.0.0.1/32"]
"""


def visit(gateway: Gateway, hosts: int, stall_seconds: float) -> tuple[float, int, list[float]]:
    """(seconds for all hosts, stalls, seconds per answered request)."""
    answered: list[float] = []
    stalls = 0
    started = time.perf_counter()
    client = httpx.Client(timeout=stall_seconds, trust_env=False, limits=httpx.Limits(max_connections=1))
    for n in range(hosts):
        host = f"site{n}.test"
        t = time.perf_counter()
        try:
            response = client.get(f"{gateway.proxy_url}/", headers={"Host": host},
                                  extensions={"target": f"http://{host}/".encode()})
            response.raise_for_status()
            answered.append(time.perf_counter() - t)
        except httpx.TimeoutException:
            stalls += 1
            print(f"  {gateway.directory.name}: stalled at host {n + 1} ({host})")
            client.close()  # a browser gives up on the connection too
            client = httpx.Client(timeout=stall_seconds, trust_env=False, limits=httpx.Limits(max_connections=1))
    client.close()
    return time.perf_counter() - started, stalls, answered


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--hosts", type=int, default=50)
    parser.add_argument("--stall-seconds", type=float, default=3.0)
    args = parser.parse_args()
    results: dict[str, list[tuple[float, int, list[float]]]] = {}
    with Upstream() as upstream, ChainProxy(upstream) as proxy, tempfile.TemporaryDirectory() as scratch:
        configurations = {
            "mitmdump-upstream": dict(with_schoolgate=False, args=["--mode", f"upstream:{proxy.url}"]),
            "schoolgate-chained": dict(policy_text=POLICY.replace("UPSTREAM", f'upstream_proxy = "{proxy.url}"')),
            "schoolgate-direct": dict(policy_text=POLICY.replace("UPSTREAM", "")),
        }
        print(f"{args.hosts} hosts over one kept-alive connection, stall = no answer in {args.stall_seconds:g} s, "
              f"{args.rounds} interleaved rounds, all on 127.0.0.1")
        for round_number in range(args.rounds):
            for name, settings in configurations.items():
                gateway = Gateway(Path(scratch) / f"{name}-{round_number}", loopback_http_port=upstream.http_port,
                                  loopback_https_port=upstream.https_port, **settings)  # type: ignore[arg-type]
                with gateway:
                    results.setdefault(name, []).append(visit(gateway, args.hosts, args.stall_seconds))
    print(f"{'configuration':20} {'total s (median)':>17} {'stalls/round':>13} {'answered':>9} {'ms/request p50':>15}")
    for name, rounds in results.items():
        total = statistics.median(r[0] for r in rounds)
        stalls = [r[1] for r in rounds]
        answered = [a for r in rounds for a in r[2]]
        per_request = statistics.median(answered) * 1000 if answered else float("nan")
        print(f"{name:20} {total:17.2f} {'/'.join(map(str, stalls)):>13} "
              f"{sum(len(r[2]) for r in rounds) // len(rounds):>9} {per_request:15.1f}")


if __name__ == "__main__":
    main()
