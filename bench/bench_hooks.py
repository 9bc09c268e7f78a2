"""The request path's own cost, in process: how long the add-ons of addons/script.py
that decide (identify -> endpoint -> decide -> respond, then the Recorder) take per
request and per raw-tunnel connection, without sockets or mitmproxy's protocol layers.

    python bench/bench_hooks.py [--requests 20000]

Uses mitmproxy's test helpers (taddons, tflow), the built-in category list, a policy
with one pupil group, and a recorder whose writer only counts (the database cost is
bench_records.py's). Prints p50/p99 per request for allowed, blocked and warned URLs.
"""

from __future__ import annotations

import argparse
import inspect
import platform
import statistics
import tempfile
import time
from pathlib import Path

from mitmproxy import http
from mitmproxy.test import taddons, tflow

from schoolgate.addons.connections import Connections
from schoolgate.addons.gateway import SchoolGate
from schoolgate.addons.identify import Identification
from schoolgate.addons.judge import Judge
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.recorder import Recorder

POLICY = """\
[gateway]
database = "sqlite+aiosqlite:///{dir}/bench.db"
metrics_port = 0
secret_file = "{dir}/gateway.secret"

[categories]
pornography = "block"
games = "warn"

[groups.pupils]
title = "Pupils"
networks = ["10.0.0.0/8"]
"""

URLS = {
    "allowed": "http://allowed.test/lessons/fractions?page=2",
    "blocked": "http://adult.test/video/123",
    "warned": "http://games.test/play",
}


class CountingWriter:
    def __init__(self) -> None:
        self.count = 0

    def submit(self, record) -> None:
        self.count += 1


async def measure(gate: SchoolGate, recorder: Recorder, url: str, n: int) -> list[float]:
    client = tflow.tclient_conn()
    client.peername, client.sockname, client.sni = ("10.1.2.3", 50000), ("10.0.0.1", 8080), None
    times = []
    for _ in range(n):
        flow = tflow.tflow(client_conn=client, req=http.Request.make("GET", url))
        started = time.perf_counter()
        result = gate.request(flow)
        if inspect.isawaitable(result):
            await result
        if flow.response is None:
            flow.response = http.Response.make(200, b"ok")
        recorder.response(flow)
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=20000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "policy.toml"
        path.write_text(POLICY.replace("{dir}", tmp))
        policy = PolicyWatch()
        recorder = Recorder(policy)
        identification = Identification(policy, recorder)
        judge = Judge(policy)
        gate = SchoolGate(policy, identification, judge)
        connections = Connections(policy, identification, judge, recorder)
        with taddons.context(policy, connections, gate, recorder) as tctx:
            tctx.configure(policy, schoolgate_policy=str(path))
            tctx.configure(recorder)
            recorder.writer = CountingWriter()
            print(f"python {platform.python_version()}, {platform.machine()}, {args.requests} requests per kind, "
                  f"built-in list ({policy.engine.index.entry_count} entries), one pupil group, no sign-in")
            loop = tctx.master.event_loop
            for kind, url in URLS.items():
                loop.run_until_complete(measure(gate, recorder, url, 500))  # warm up
                times = sorted(loop.run_until_complete(measure(gate, recorder, url, args.requests)))
                p50, p99 = statistics.median(times), times[int(len(times) * 0.99)]
                print(f"{kind:8} {url:48} p50 {p50 * 1e6:7.1f} µs  p99 {p99 * 1e6:7.1f} µs  "
                      f"({1 / statistics.fmean(times):,.0f} requests/s on one core)")


if __name__ == "__main__":
    main()
