"""`schoolgate run --workers N`: N gateway processes behind one listening address.

mitmproxy runs one event loop on one core, so a busy site runs several
mitmdump processes. They all bind the same address with SO_REUSEPORT and the
kernel spreads incoming connections across them. Unlike a TCP load balancer in
front, that keeps each client's own address on the connection, which the
gateway needs to tell a pupil's network from a staff one, and in transparent
mode the original destination stays readable the same way. mitmproxy 12 binds
with `asyncio.start_server` and has no option for SO_REUSEPORT, so each worker
is started through `python -m schoolgate.workers`, which turns it on for that
process and then runs the gateway's mitmproxy (schoolgate.proxy: mitmdump's
command line with only the add-ons the gateway needs). A lone gateway process
(`--workers 1`) runs the same way, without the shared port.

The supervisor names each worker `<host>-<n>` (its instance in every access
record), gives it its own metrics port (the policy's port + n), forwards
SIGINT/SIGTERM so every worker flushes its records, and restarts a worker that
dies on its own.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("schoolgate.workers")

STOP_TIMEOUT = 20.0  # after this a worker that has not flushed and exited is killed
_RESTART_DELAYS = (0.5, 1, 2, 5, 10, 30)  # a worker that keeps crashing is restarted less and less often
_STABLE_SECONDS = 60.0  # a worker up this long is healthy again: its next crash restarts quickly
_PR_SET_PDEATHSIG = 1
_WORKER = "--schoolgate-worker"  # first argument of a worker under the supervisor (not of a lone gateway)


@dataclass
class Worker:
    name: str
    argv: list[str]
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    crashes: int = 0
    restart_at: float | None = None


def gateway_argv(mitmdump_args: Sequence[str]) -> list[str]:
    """The command of one gateway process on its own: mitmdump's arguments, run by schoolgate.proxy."""
    return [sys.executable, "-m", "schoolgate.workers", *mitmdump_args]


def worker_argv(mitmdump_args: Sequence[str], instance: str, metrics_port: int | None) -> list[str]:
    """A worker's command: mitmdump's arguments, run through this module, with its own name and metrics port."""
    options = ["--set", f"schoolgate_instance={instance}"]
    if metrics_port is not None:
        options += ["--set", f"schoolgate_metrics_port={metrics_port}"]
    return [sys.executable, "-m", "schoolgate.workers", _WORKER, *mitmdump_args, *options]


def plan(mitmdump_args: Sequence[str], count: int, metrics_port: int, host: str | None = None) -> list[Worker]:
    host = host or socket.gethostname()
    return [
        Worker(f"{host}-{n}", worker_argv(mitmdump_args, f"{host}-{n}", metrics_port + n if metrics_port else None))
        for n in range(count)
    ]


class Supervisor:
    def __init__(self, workers: list[Worker]):
        self.workers = workers
        self._stopping: int | None = None  # the signal being forwarded

    def run(self) -> int:
        """Run until SIGINT/SIGTERM; 0 if every worker then exited cleanly."""
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, self._on_signal)
        for worker in self.workers:
            self._start(worker)
        while self._stopping is None:
            self._check()
            time.sleep(0.2)
        return self._stop_all()

    def _on_signal(self, signum: int, _frame: Any) -> None:
        self._stopping = signum

    def _start(self, worker: Worker) -> None:
        # Its own session: a Ctrl-C at the terminal reaches only the supervisor, which
        # forwards it once, rather than every worker getting it twice.
        worker.process = subprocess.Popen(worker.argv, stdin=subprocess.DEVNULL, start_new_session=True)
        worker.started_at = time.monotonic()
        worker.restart_at = None
        log.info("worker %s started (pid %d)", worker.name, worker.process.pid)

    def _check(self) -> None:
        now = time.monotonic()
        for worker in self.workers:
            if worker.restart_at is not None:
                if now >= worker.restart_at:
                    self._start(worker)
                continue
            assert worker.process is not None
            code = worker.process.poll()
            if code is None:
                continue
            if now - worker.started_at >= _STABLE_SECONDS:
                worker.crashes = 0
            delay = _RESTART_DELAYS[min(worker.crashes, len(_RESTART_DELAYS) - 1)]
            worker.crashes += 1
            worker.restart_at = now + delay
            log.error("worker %s (pid %d) exited with %d; restarting it in %.1f s",
                      worker.name, worker.process.pid, code, delay)

    def _stop_all(self) -> int:
        assert self._stopping is not None
        running = {w.name: w.process for w in self.workers if w.restart_at is None and w.process is not None}
        for process in running.values():
            process.send_signal(self._stopping)
        deadline = time.monotonic() + STOP_TIMEOUT
        failed = False
        for name, process in running.items():
            try:
                code = process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                log.error("worker %s did not exit within %.0f s; killed", name, STOP_TIMEOUT)
                process.kill()
                code = process.wait()
            if code != 0:
                log.error("worker %s exited with %d while stopping", name, code)
                failed = True
        return 1 if failed else 0


def prometheus_targets(address: str, first_port: int, count: int, host: str | None = None) -> list[dict[str, Any]]:
    """Prometheus file_sd targets: one per gateway process, as another machine reaches it."""
    if address in ("", "0.0.0.0", "::"):
        address = host or socket.gethostname()  # listening everywhere: scrape it by its name
    elif ":" in address:
        address = f"[{address}]"
    return [{"targets": [f"{address}:{first_port + n}" for n in range(count)]}]


def write_prometheus_targets(directory: Path, address: str, first_port: int, count: int) -> Path:
    """Write `prometheus-targets.json` for Prometheus' file_sd_configs, so its targets always
    match the running workers (deploy/prometheus/prometheus.yml reads it). Atomic: Prometheus
    may read it at any moment."""
    path = directory / "prometheus-targets.json"
    staging = path.with_name(path.name + ".new")
    staging.write_text(json.dumps(prometheus_targets(address, first_port, count), indent=1) + "\n")
    staging.chmod(0o644)  # no personal data: addresses of the gateway's own metrics endpoints
    os.replace(staging, path)
    return path


def ensure_ca(confdir: Path) -> None:
    """Create the school CA once, before the workers start; racing to create it, each
    could sign with a CA of its own and devices would trust only one of them."""
    from mitmproxy.certs import CertStore
    from mitmproxy.options import CONF_BASENAME, KEY_SIZE

    CertStore.from_store(confdir, CONF_BASENAME, KEY_SIZE)


def _listen_with_reuseport() -> None:
    """Make mitmproxy's listeners in this process share their port with the other workers."""
    original = asyncio.start_server

    @functools.wraps(original)
    async def start_server(*args: Any, **kwargs: Any) -> asyncio.Server:
        kwargs.setdefault("reuse_port", True)
        return await original(*args, **kwargs)

    asyncio.start_server = start_server  # type: ignore[assignment]


def _die_with_parent() -> None:
    """A worker must not outlive a supervisor that was killed outright (SIGKILL, OOM)."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def main() -> None:
    """Entry point of a gateway process (schoolgate.proxy: mitmdump's command line, only the
    add-ons the gateway needs); a worker's listeners share their port (SO_REUSEPORT)."""
    from schoolgate import proxy

    args = sys.argv[1:]
    if args[:1] == [_WORKER]:
        args = args[1:]
        _die_with_parent()
        _listen_with_reuseport()
    proxy.main(args)


if __name__ == "__main__":
    main()
