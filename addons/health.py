"""Health of this gateway process, for systemd, Docker, load balancers and Prometheus,
and the proxy auto-config file for devices.

- `/healthz` (liveness): the event loop is turning. A gateway whose loop is stuck
  answers no one; restarting it is the cure.
- `/readyz` (readiness): policy and category index loaded, and access records have
  somewhere to go (the database answers, or the local spool is writable), and none
  were lost lately. JSON with each check, 200 when ready, else 503.
  Both are served on the metrics endpoint ([gateway] metrics_address:metrics_port).
- systemd: `READY=1` once ready (Type=notify), `STATUS=` as it changes, and
  `WATCHDOG=1` while the loop turns when the unit sets WatchdogSec=.
- `/proxy.pac` and `/wpad.dat` on the proxy port itself, for a device that asks the
  gateway directly (http://GATEWAY:8080/proxy.pac): the PAC file names the gateway
  by the address the device used to reach it (schoolgate/pac.py).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass

from mitmproxy import http
from mitmproxy.proxy.mode_specs import RegularMode, UpstreamMode

from schoolgate import metrics, sdnotify
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.recorder import Recorder
from schoolgate.pac import pac_script

log = logging.getLogger("schoolgate")

CHECK_SECONDS = 2.0  # how often readiness is re-checked (and the database probed)
STUCK_SECONDS = 10.0  # a loop that has not turned for this long is not alive
DROP_WINDOW_SECONDS = 60.0  # records lost within this long make the gateway not ready
PAC_PATHS = ("/proxy.pac", "/wpad.dat")
PAC_TYPE = "application/x-ns-proxy-autoconfig"


@dataclass(frozen=True)
class Check:
    ok: bool
    detail: str


@dataclass(frozen=True)
class Readiness:
    checks: dict[str, Check]

    @property
    def ready(self) -> bool:
        return all(c.ok for c in self.checks.values())

    def summary(self) -> str:
        failing = [f"{name}: {c.detail}" for name, c in self.checks.items() if not c.ok]
        return "ready" if not failing else "not ready (" + "; ".join(failing) + ")"

    def as_json(self) -> bytes:
        body = {"ready": self.ready, "checks": {n: {"ok": c.ok, "detail": c.detail} for n, c in self.checks.items()}}
        return json.dumps(body, indent=1).encode() + b"\n"


def records_check(database_ok: bool, database_detail: str, spool_dir_writable: bool, dropped_lately: float) -> Check:
    """Records must have somewhere to go, and none may have been lost lately."""
    if dropped_lately:
        return Check(False, f"{dropped_lately:.0f} access records lost in the last {DROP_WINDOW_SECONDS:.0f} s")
    if database_ok:
        return Check(True, "the database takes records")
    if spool_dir_writable:
        return Check(True, f"the database does not answer ({database_detail}); records go to the local spool")
    return Check(False, f"the database does not answer ({database_detail}) and the spool directory is not writable")


class Health:
    def __init__(self, policy: PolicyWatch, recorder: Recorder) -> None:
        self.policy = policy
        self.recorder = recorder
        self.readiness = Readiness({"started": Check(False, "starting")})
        self._beat = time.monotonic()
        self._told_ready = False
        self._drops: list[tuple[float, float]] = []  # (when, records dropped so far), for the window
        self._task: asyncio.Task | None = None

    def load(self, loader) -> None:
        metrics.ROUTES["/healthz"] = self._healthz
        metrics.ROUTES["/readyz"] = self._readyz

    async def running(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="schoolgate-health")

    async def done(self) -> None:
        sdnotify.notify("STOPPING=1", "STATUS=stopping: writing the last access records")
        if self._task:
            self._task.cancel()

    # --- the loop: heartbeat, readiness, systemd ---------------------------------

    async def _watch(self) -> None:
        watchdog = sdnotify.watchdog_interval()
        next_check = 0.0
        while True:
            self._beat = time.monotonic()
            if watchdog:
                sdnotify.notify("WATCHDOG=1")
            if self._beat >= next_check:
                next_check = self._beat + CHECK_SECONDS
                await self._check()
            await asyncio.sleep(min(1.0, watchdog or 1.0))

    async def _check(self) -> None:
        previous = self.readiness
        self.readiness = await self.assess()
        metrics.READY.set(1 if self.readiness.ready else 0)
        if self.readiness.summary() != previous.summary():
            level = logging.INFO if self.readiness.ready else logging.WARNING
            log.log(level, "gateway %s", self.readiness.summary())
            sdnotify.notify(f"STATUS={self.readiness.summary()}")
        if self.readiness.ready and not self._told_ready:
            sdnotify.notify("READY=1")
            self._told_ready = True

    async def assess(self) -> Readiness:
        engine = self.policy.engine
        checks: dict[str, Check] = {}
        if engine is None:
            checks["policy"] = Check(False, "no policy loaded")
            return Readiness(checks)
        in_force = metrics.REGISTRY.get_sample_value("schoolgate_policy_last_load_ok") == 1
        checks["policy"] = Check(True, f"{engine.policy.path}" + ("" if in_force else
                                 " (the last edit was refused; the earlier policy still serves)"))
        entries = engine.index.entry_count
        checks["index"] = Check(entries > 0, f"{entries} category entries" if entries else "the category index is empty")
        database_ok, database_detail = await self._probe_database()
        writer = self.recorder.writer
        spool_dir = writer.spool_path.parent if writer else None
        checks["records"] = records_check(
            database_ok, database_detail,
            spool_dir is not None and os.access(spool_dir, os.W_OK), self._dropped_lately(),
        )
        return Readiness(checks)

    async def _probe_database(self) -> tuple[bool, str]:
        store = self.policy.live_store
        if store is None:
            return False, "not connected yet"
        try:
            await asyncio.wait_for(store.version(), timeout=CHECK_SECONDS)
        except TimeoutError:
            return False, f"no answer within {CHECK_SECONDS:.0f} s"
        except Exception as e:  # any failure to answer is "not reachable"; the detail says which
            return False, type(e).__name__
        return True, "ok"

    def _dropped_lately(self) -> float:
        now = time.monotonic()
        dropped = metrics.REGISTRY.get_sample_value("schoolgate_records_dropped_total") or 0.0
        self._drops = [(t, n) for t, n in self._drops if t > now - DROP_WINDOW_SECONDS] + [(now, dropped)]
        return dropped - self._drops[0][1]

    # --- answers on the metrics endpoint (its own thread) ------------------------

    def _healthz(self) -> tuple[int, str, bytes]:
        stalled = time.monotonic() - self._beat
        if stalled > STUCK_SECONDS:
            return 503, "text/plain", f"stuck: the event loop has not turned for {stalled:.0f} s\n".encode()
        return 200, "text/plain", b"ok\n"

    def _readyz(self) -> tuple[int, str, bytes]:
        readiness = self.readiness
        return (200 if readiness.ready else 503), "application/json", readiness.as_json()

    # --- the PAC file on the proxy port -------------------------------------------

    def request(self, flow: http.HTTPFlow) -> None:
        if flow.response or not flow.live or flow.request.path.split("?")[0] not in PAC_PATHS:
            return
        if not isinstance(flow.client_conn.proxy_mode, (RegularMode, UpstreamMode)) or flow.request.method not in ("GET", "HEAD"):
            return
        # Asked of the gateway itself (not through it): the request came to the port it was
        # sent to. A proxied request for some site's /proxy.pac on the same port number gets
        # the gateway's PAC instead of that site's, which gives nothing away.
        sockname = flow.client_conn.sockname
        if not sockname or flow.request.port != sockname[1]:
            return
        engine = self.policy.engine
        if engine is None:
            flow.response = http.Response.make(503, b"the gateway is starting\n", {"Content-Type": "text/plain"})
            return
        proxy = f"{flow.request.host}:{flow.request.port}" if ":" not in flow.request.host \
            else f"[{flow.request.host}]:{flow.request.port}"
        settings = engine.policy.gateway
        try:
            script = pac_script(proxy, settings.pac_direct_domains,
                                [str(n) for n in settings.pac_direct_networks if n.version == 4])
        except ValueError:
            flow.response = http.Response.make(400, b"no usable Host header\n", {"Content-Type": "text/plain"})
            return
        flow.response = http.Response.make(200, script.encode(), {"Content-Type": PAC_TYPE, "Cache-Control": "max-age=300"})
