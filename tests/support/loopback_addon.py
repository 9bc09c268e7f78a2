"""Test-only mitmproxy addon: every upstream connection goes to 127.0.0.1, never to DNS.

Load it after the schoolgate addon (`-s addons/script.py -s tests/support/loopback_addon.py`)
so the gateway's own `server_connect` decisions run first and see the original address.
Port 80 goes to the HTTP test server, 443 to the HTTPS one, any other port keeps its number.
The Host header is untouched and TLS keeps the original server name, so upstream sees both.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from mitmproxy import ctx
from mitmproxy.addonmanager import Loader
from mitmproxy.proxy import server_hooks

LOOPBACK = "127.0.0.1"


class LoopbackUpstream:
    def load(self, loader: Loader) -> None:
        loader.add_option("loopback_http_port", int, 0, "Loopback port that upstream port 80 is sent to.")
        loader.add_option("loopback_https_port", int, 0, "Loopback port that upstream port 443 is sent to.")
        loader.add_option(
            "loopback_connection_log", str, "", "Append one JSON line per upstream connection attempt here."
        )
        loader.add_option("loopback_ready_file", str, "", "Created once mitmproxy is running with all scripts loaded.")

    def running(self) -> None:
        # Scripts load asynchronously and startup errors make mitmdump exit only after it listens,
        # so an accepting port is not proof of readiness; this hook runs after both.
        if ctx.options.loopback_ready_file:
            Path(ctx.options.loopback_ready_file).touch()

    def server_connect(self, data: server_hooks.ServerConnectionHookData) -> None:
        if data.server.error:
            return  # an earlier addon (the gateway) refused it: no connection is attempted
        assert data.server.address
        host, port = data.server.address[0], data.server.address[1]
        target_port = {80: ctx.options.loopback_http_port, 443: ctx.options.loopback_https_port}.get(port) or port
        if target_port == ctx.options.listen_port:
            # mitmproxy's own loop guard ran on the original address; repeat it for the rewritten one.
            data.server.error = f"loopback addon: {host}:{port} would connect the proxy to itself"
            return
        # mitmproxy derives the upstream SNI from the address when unset; pin it to the real name first.
        if data.server.tls and data.server.sni is None:
            data.server.sni = data.client.sni or host
        data.server.address = (LOOPBACK, target_port)
        self._record(host, port, target_port, data.client.peername[0])

    def _record(self, host: str, port: int, target_port: int, client_ip: str) -> None:
        path = ctx.options.loopback_connection_log
        if not path:
            return
        record = {"time": time.time(), "host": host, "port": port, "loopback_port": target_port, "client": client_ip}
        line = json.dumps(record)
        with open(path, "a", encoding="utf-8") as log:
            log.write(line + "\n")


addons = [LoopbackUpstream()]
