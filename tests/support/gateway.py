"""A real mitmdump process running the schoolgate add-on, wired to loopback upstream servers."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

REPO = Path(__file__).resolve().parents[2]
SCHOOLGATE_SCRIPT = REPO / "addons" / "script.py"
LOOPBACK_SCRIPT = Path(__file__).resolve().parent / "loopback_addon.py"
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 15.0
LOG_TAIL_LINES = 60

OptionValue = str | int | float | bool


class GatewayError(RuntimeError):
    """mitmdump failed to start or to stop cleanly; the message carries the log tail."""


@dataclass(frozen=True)
class UpstreamConnection:
    """One upstream connection attempt, as recorded by the loopback addon."""

    time: float
    host: str  # the original destination host, before the loopback rewrite
    port: int
    loopback_port: int
    client: str  # the proxy client's IP address


def mitmdump_path() -> Path:
    # The venv running the tests also provides mitmdump (no reliance on PATH).
    return Path(sys.executable).parent / "mitmdump"


def proxy_command(lean: bool | None = None) -> list[str]:
    """What runs as the gateway: mitmdump, or with `lean` (default: SCHOOLGATE_TEST_PROCESS=lean)
    the process `schoolgate run` starts (schoolgate.proxy), which takes mitmdump's arguments."""
    if lean is None:
        lean = os.environ.get("SCHOOLGATE_TEST_PROCESS") == "lean"
    return [sys.executable, "-m", "schoolgate.workers"] if lean else [str(mitmdump_path())]


def free_ports(count: int) -> list[int]:
    """Distinct currently-free loopback ports (all held open until every one is chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _format_option(value: OptionValue) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


_GATEWAY_HEADER = re.compile(r"^\[gateway\][ \t]*(#.*)?(\n|$)", re.MULTILINE)


def _with_gateway_defaults(policy_text: str, defaults: Mapping[str, str]) -> str:
    """Add `key = value` lines (TOML-encoded values) for keys that [gateway] does not set."""
    try:
        data = tomllib.loads(policy_text)
    except tomllib.TOMLDecodeError:
        return policy_text  # broken on purpose, probably: the gateway must be the one to report it
    table = data.get("gateway", {})
    if not isinstance(table, dict):
        return policy_text
    missing = "".join(f"{key} = {value}\n" for key, value in defaults.items() if key not in table)
    if not missing:
        return policy_text
    if header := _GATEWAY_HEADER.search(policy_text):
        head = policy_text[: header.end()]
        return head + ("" if head.endswith("\n") else "\n") + missing + policy_text[header.end() :]
    if "gateway" in data:
        return policy_text  # [gateway] written as dotted keys or inline: leave it as its author wrote it
    return policy_text.rstrip("\n") + "\n\n[gateway]\n" + missing


class GatewayFactory(Protocol):
    """The `gateway_factory` fixture: starts a gateway wired to the session's upstream servers."""

    def __call__(
        self,
        policy_text: str = "",
        *,
        with_schoolgate: bool = True,
        options: Mapping[str, OptionValue] | None = None,
        args: Sequence[str] = (),
        lean: bool | None = None,
    ) -> Gateway: ...


class Gateway:
    """mitmdump with the schoolgate add-on (or bare, with `with_schoolgate=False`); with
    `lean=True` the process `schoolgate run` starts instead (schoolgate.proxy: only the
    mitmproxy add-ons the gateway needs, its own hook dispatch and event loop), the default
    when SCHOOLGATE_TEST_PROCESS=lean, so any test file can be run through it.

    Policy text may use the fields `{database}` (SQLAlchemy URL of `db_path`), `{metrics_port}`
    and `{dir}` (this gateway's directory); they are replaced literally, not with str.format, so
    TOML inline tables need no escaping. When `[gateway]` sets no `database` or `metrics_port`,
    those two are filled in, so every gateway has its own database and a free metrics port.
    """

    def __init__(
        self,
        directory: Path,
        policy_text: str = "",
        *,
        loopback_http_port: int,
        loopback_https_port: int,
        with_schoolgate: bool = True,
        options: Mapping[str, OptionValue] | None = None,
        args: Sequence[str] = (),
        lean: bool | None = None,
    ) -> None:
        self.directory = directory
        self.lean = lean
        self.directory.mkdir(parents=True, exist_ok=True)
        self.with_schoolgate = with_schoolgate
        self.policy_path = directory / "policy.toml"
        self.db_path = directory / "schoolgate.db"
        self.log_path = directory / "mitmdump.log"
        self.connection_log_path = directory / "upstream-connections.jsonl"
        self._ready_path = directory / "ready"
        self.confdir = directory / "mitm"
        self.ca_cert = self.confdir / "mitmproxy-ca-cert.pem"
        self.proxy_port, self.metrics_port = free_ports(2)
        self.proxy_url = f"http://127.0.0.1:{self.proxy_port}"
        self._loopback_ports = (loopback_http_port, loopback_https_port)
        self._options = dict(options or {})
        self._args = list(args)
        self._process: subprocess.Popen[bytes] | None = None
        self._exit_reported = False  # each abnormal exit raises GatewayError once, not at every stop()
        # Startup waits for metrics only when the policy serves them on our port (not 0, not invalid).
        self._serves_metrics = False
        if with_schoolgate:
            self._serves_metrics = self._policy_metrics_port(self.write_policy(policy_text)) == self.metrics_port

    @property
    def metrics_url(self) -> str:
        if not self._serves_metrics:
            raise GatewayError("this gateway's policy does not serve metrics on its metrics_port")
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    @property
    def database_url(self) -> str:
        return f"sqlite+aiosqlite:///{self.db_path}"

    def expand(self, policy_text: str) -> str:
        """The policy as it will be written: placeholders replaced, database and metrics_port ensured."""
        fields = {"{database}": self.database_url, "{metrics_port}": str(self.metrics_port), "{dir}": str(self.directory)}
        for field, value in fields.items():
            policy_text = policy_text.replace(field, value)
        defaults = {"database": json.dumps(self.database_url), "metrics_port": str(self.metrics_port)}
        return _with_gateway_defaults(policy_text, defaults)

    @staticmethod
    def _policy_metrics_port(policy_text: str) -> int | None:
        try:
            port = tomllib.loads(policy_text).get("gateway", {}).get("metrics_port")
        except (tomllib.TOMLDecodeError, AttributeError):
            return None
        return port if isinstance(port, int) else None

    def write_policy(self, policy_text: str) -> str:
        """Atomically replace policy.toml, making sure its mtime moves so reloads notice.

        Returns the text written (see `expand`).
        """
        previous_ns = self.policy_path.stat().st_mtime_ns if self.policy_path.exists() else 0
        text = self.expand(policy_text)
        staging = self.policy_path.with_suffix(".toml.new")
        staging.write_text(text, encoding="utf-8")
        mtime_ns = max(time.time_ns(), previous_ns + 1_000_000_000)  # beat 1 s mtime granularity
        os.utime(staging, ns=(mtime_ns, mtime_ns))
        os.replace(staging, self.policy_path)
        return text

    def command(self) -> list[str]:
        http_port, https_port = self._loopback_ports
        scripts = [SCHOOLGATE_SCRIPT, LOOPBACK_SCRIPT] if self.with_schoolgate else [LOOPBACK_SCRIPT]
        options: dict[str, OptionValue] = {
            "confdir": str(self.confdir),
            "ssl_insecure": True,  # the upstream test servers use a self-signed certificate
            "connection_strategy": "lazy",  # connect upstream only once the request is known
            "loopback_http_port": http_port,
            "loopback_https_port": https_port,
            "loopback_connection_log": str(self.connection_log_path),
            "loopback_ready_file": str(self._ready_path),
        }
        if self.with_schoolgate:
            options["schoolgate_policy"] = str(self.policy_path)
        options.update(self._options)
        cmd = proxy_command(self.lean)
        for script in scripts:
            cmd += ["-s", str(script)]
        cmd += ["--listen-host", "127.0.0.1", "--listen-port", str(self.proxy_port)]
        for name, value in options.items():
            cmd += ["--set", f"{name}={_format_option(value)}"]
        return cmd + self._args

    def start(self) -> Gateway:
        if self._process is not None:
            raise GatewayError("gateway already started")
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # so log_text() sees output as it happens
        with open(self.log_path, "wb") as log:
            self._process = subprocess.Popen(
                self.command(), cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            self._wait_ready()
        except BaseException:
            self._kill()
            self._exit_reported = True
            raise
        return self

    def _wait_ready(self) -> None:
        assert self._process is not None
        deadline = time.monotonic() + STARTUP_TIMEOUT
        waiting_for = [("running state", self._ready_path.exists), ("proxy port", self._proxy_accepts)]
        if self._serves_metrics:
            waiting_for.append(("metrics endpoint", self._metrics_answers))
        for what, ready in waiting_for:
            while not ready():
                if self._process.poll() is not None:
                    code = self._process.returncode
                    raise GatewayError(self._report(f"mitmdump exited with {code} before its {what} was ready"))
                if time.monotonic() > deadline:
                    raise GatewayError(self._report(f"mitmdump's {what} not ready after {STARTUP_TIMEOUT:.0f} s"))
                time.sleep(0.05)

    def _proxy_accepts(self) -> bool:
        try:
            socket.create_connection(("127.0.0.1", self.proxy_port), timeout=0.5).close()
        except OSError:
            return False
        return True

    def metric(self, name: str, **labels: str) -> float | None:
        """A sample from the metrics endpoint (the first with these labels), or None when it is not there."""
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        body = no_proxy.open(self.metrics_url, timeout=5).read().decode()
        for line in body.splitlines():
            if line.startswith(name + ("{" if labels else " ")) and all(f'{k}="{v}"' in line for k, v in labels.items()):
                return float(line.rsplit(" ", 1)[1])
        return None

    def _metrics_answers(self) -> bool:
        no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
        try:
            no_proxy.open(self.metrics_url, timeout=0.5).close()
        except urllib.error.HTTPError:
            return True  # it answered; what it said is for the tests to judge
        except OSError:
            return False
        return True

    def stop(self) -> int:
        """SIGINT (so the add-on flushes), wait, and insist on exit code 0. Safe to call again.

        Raises GatewayError with the log tail if mitmdump hangs or exits non-zero, including
        when it had already died by itself.
        """
        process = self._process
        if process is None:
            return 0
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self._kill()
                self._exit_reported = True
                raise GatewayError(self._report(f"mitmdump did not exit within {STOP_TIMEOUT:.0f} s of SIGINT")) from None
        code = process.returncode
        if code != 0 and not self._exit_reported:
            self._exit_reported = True
            raise GatewayError(self._report(f"mitmdump exited with {code}"))
        return code

    def _kill(self) -> None:
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
            self._process.wait()

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    def log_text(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path.exists() else ""

    def _report(self, problem: str) -> str:
        tail = "\n".join(self.log_text().splitlines()[-LOG_TAIL_LINES:])
        return f"{problem}\ncommand: {' '.join(self.command())}\n--- {self.log_path} (tail) ---\n{tail}"

    def upstream_connections(self, host: str | None = None) -> list[UpstreamConnection]:
        """Upstream connection attempts so far, optionally only those to `host`."""
        if not self.connection_log_path.exists():
            return []
        # Drop the text after the last newline: a line the gateway may be writing right now.
        lines = self.connection_log_path.read_text(encoding="utf-8").split("\n")[:-1]
        connections = [UpstreamConnection(**json.loads(line)) for line in lines]
        return [c for c in connections if host is None or c.host.lower() == host.lower()]

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
