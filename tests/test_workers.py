"""`schoolgate run --workers 2`: two gateway processes on one address (SO_REUSEPORT),
sharing a PostgreSQL database, each recording its own instance; a killed worker is
restarted, and SIGTERM makes every worker flush and exit."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from support.clients import CURL
from support.gateway import REPO, free_ports
from support.postgres import PostgresServer
from support.waiting import wait_for

POLICY = """\
[gateway]
database = "{database}"
metrics_port = {metrics_port}
default_group = "pupils"

[categories]
games = "block"

[groups.pupils]
networks = ["127.0.0.1/32"]
"""


def _answers(url: str) -> bool:
    try:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=1).close()
    except (urllib.error.URLError, OSError):
        return False
    return True


def _fetch(proxy_port: int, url: str) -> int:
    # A new connection each time, so the kernel spreads them over the workers.
    done = subprocess.run([CURL, "-q", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "30",
                           "--proxy", f"http://127.0.0.1:{proxy_port}", url], capture_output=True, text=True)
    return int(done.stdout or 0)


@pytest.fixture
def supervisor(tmp_path: Path, database_url: str, upstream) -> Iterator[tuple[subprocess.Popen[bytes], int, int]]:
    proxy_port, metrics_port = free_ports(2)
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.format(database=database_url, metrics_port=metrics_port))
    command = [
        sys.executable, "-m", "schoolgate", "run", "--policy", str(policy), "--listen-host", "127.0.0.1",
        "--listen-port", str(proxy_port), "--workers", "2", "--quiet", "--",
        "-s", str(REPO / "tests" / "support" / "loopback_addon.py"),
        "--set", f"loopback_http_port={upstream.http_port}", "--set", f"loopback_https_port={upstream.https_port}",
        "--set", f"schoolgate_spool_dir={tmp_path}",
    ]
    runtime = tmp_path / "run"  # as systemd's RuntimeDirectory= gives it
    runtime.mkdir()
    env = {**os.environ, "RUNTIME_DIRECTORY": str(runtime)}
    with open(tmp_path / "supervisor.log", "wb") as log:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        for n in range(2):
            wait_for(lambda n=n: _answers(f"http://127.0.0.1:{metrics_port + n}/readyz"), timeout=60)
        yield process, proxy_port, metrics_port
    finally:
        if process.poll() is None:
            process.kill()
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.wait()


def _rows(postgres: PostgresServer, database_url: str) -> list[tuple[str, int]]:
    out = postgres.psql("SELECT instance, seq FROM access_log ORDER BY id", database_url.rsplit("/", 1)[1])
    return [(line.split("|")[0], int(line.split("|")[1])) for line in out.splitlines()]


def test_workers_share_one_address_restart_after_a_crash_and_flush_on_sigterm(
    supervisor, postgres: PostgresServer, database_url: str
) -> None:
    process, proxy_port, metrics_port = supervisor
    host = socket.gethostname()
    # Prometheus' targets: exactly the workers' metrics endpoints, each answering
    targets = json.loads(Path(process.args[process.args.index("--policy") + 1]).with_name("run")
                         .joinpath("prometheus-targets.json").read_text())
    assert targets == [{"targets": [f"127.0.0.1:{metrics_port}", f"127.0.0.1:{metrics_port + 1}"]}]
    assert all(_answers(f"http://{target}/metrics") for target in targets[0]["targets"])
    for n in range(30):
        assert _fetch(proxy_port, f"http://school.test/a/{n}") == 200
        assert _fetch(proxy_port, f"http://games.test/a/{n}") == 403
    wait_for(lambda: len(_rows(postgres, database_url)) == 60)
    assert {instance for instance, _ in _rows(postgres, database_url)} == {f"{host}-0", f"{host}-1"}

    workers = psutil.Process(process.pid).children()
    assert len(workers) == 2
    [first] = [w for w in workers if f"schoolgate_instance={host}-0" in w.cmdline()]
    first.kill()
    wait_for(lambda: not _answers(f"http://127.0.0.1:{metrics_port}/metrics"))
    # Restarted under the same name: ready (listening, policy and database in hand) on its own port.
    wait_for(lambda: _answers(f"http://127.0.0.1:{metrics_port}/readyz"), timeout=60)
    assert len(psutil.Process(process.pid).children()) == 2

    for n in range(20):
        assert _fetch(proxy_port, f"http://school.test/c/{n}") == 200
    process.send_signal(signal.SIGTERM)
    assert process.wait(30) == 0

    rows = _rows(postgres, database_url)
    assert len(rows) == 60 + 20
    for instance in {instance for instance, _ in rows}:
        seqs = [seq for name, seq in rows if name == instance]
        assert seqs == list(range(1, len(seqs) + 1)), f"{instance}: {seqs}"


def test_the_gateway_process_runs_only_the_mitmproxy_addons_it_needs():
    import asyncio

    from mitmproxy import options
    from mitmproxy.addons import anticache, dumper, modifyheaders, next_layer, proxyserver, script, tlsconfig

    from schoolgate.proxy import GatewayMaster

    async def chain() -> list[type]:
        return [type(addon) for addon in GatewayMaster(options.Options()).addons.chain]

    loaded = asyncio.run(chain())
    assert {proxyserver.Proxyserver, script.ScriptLoader, next_layer.NextLayer, tlsconfig.TlsConfig} <= set(loaded)
    assert not {dumper.Dumper, anticache.AntiCache, modifyheaders.ModifyHeaders} & set(loaded)
    assert len(loaded) <= 14  # mitmdump: 36


def test_an_option_of_a_left_out_addon_is_refused_not_ignored(tmp_path):
    done = subprocess.run([sys.executable, "-m", "schoolgate.workers", "--listen-host", "127.0.0.1", "--listen-port", "0",
                           "--set", f"confdir={tmp_path}", "--set", "modify_headers=/~q/X-Test/1"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 1
    assert "modify_headers belongs to mitmproxy's ModifyHeaders add-on" in done.stdout + done.stderr


def test_the_update_event_goes_only_to_a_gateway_with_an_addon_that_listens():
    import asyncio

    from mitmproxy import master, options
    from mitmproxy.proxy.layers.http import HttpRequestHook
    from mitmproxy.test import tflow

    from schoolgate.proxy import _Addons

    class Counts:
        def __init__(self) -> None:
            self.requests = self.updates = 0

        def request(self, _flow) -> None:
            self.requests += 1

    class Listens(Counts):
        def update(self, _flows) -> None:
            self.updates += 1

    async def sent(addon: Counts) -> list[str]:
        gateway = master.Master(options.Options())
        gateway.addons = _Addons(gateway)
        gateway.addons.add(addon)
        events: list[str] = []
        trigger = gateway.addons.trigger_event

        async def counted(event):
            events.append(event.name)
            await trigger(event)

        gateway.addons.trigger_event = counted  # type: ignore[method-assign]
        await gateway.addons.handle_lifecycle(HttpRequestHook(tflow.tflow()))
        assert addon.requests == 1
        return events

    listens = Listens()
    assert asyncio.run(sent(listens)) == ["request", "update"] and listens.updates == 1
    assert asyncio.run(sent(Counts())) == ["request"]  # mitmproxy's own AddonManager sends both
