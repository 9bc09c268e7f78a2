"""`schoolgate run --workers 2` with RADIUS accounting: a Wi-Fi controller's Start, heard
by one worker, names the user in every worker (the kernel spreads a device's connections
over them), through the shared database."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from test_workers import _answers

from support.clients import CURL
from support.gateway import REPO, free_ports
from support.waiting import wait_for

RADCLIENT = shutil.which("radclient")
pytestmark = pytest.mark.skipif(RADCLIENT is None, reason="radclient is not installed (apt-get install freeradius-utils)")

POLICY = """\
[gateway]
database = "sqlite+aiosqlite:///DIR/sg.db"
metrics_port = METRICS

[accounting]
secret_file = "DIR/radius.secret"
clients = ["127.0.0.1"]
listen_address = "127.0.0.1"
port = RADIUS

[groups.wifi]
networks = ["127.0.0.0/8"]

[groups.year7]
users = ["amy.b"]
[groups.year7.categories]
games = "block"
"""


def fetch(proxy_port: int) -> int:
    # A new connection each time, so the kernel spreads them over the workers.
    done = subprocess.run([CURL, "-q", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10",
                           "--interface", "127.0.0.7", "--proxy", f"http://127.0.0.1:{proxy_port}", "http://games.test/"],
                          capture_output=True, text=True)
    return int(done.stdout or 0)


def test_an_accounting_start_reaches_every_worker(tmp_path: Path, upstream) -> None:
    proxy_port, metrics_port, radius_port = free_ports(3)
    (tmp_path / "radius.secret").write_text("controller-secret\n")
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY.replace("DIR", str(tmp_path)).replace("METRICS", str(metrics_port))
                      .replace("RADIUS", str(radius_port)))
    command = [sys.executable, "-m", "schoolgate", "run", "--policy", str(policy), "--listen-host", "127.0.0.1",
               "--listen-port", str(proxy_port), "--workers", "2", "--quiet", "--",
               "-s", str(REPO / "tests" / "support" / "loopback_addon.py"),
               "--set", f"loopback_http_port={upstream.http_port}", "--set", f"loopback_https_port={upstream.https_port}",
               "--set", f"schoolgate_spool_dir={tmp_path}"]
    # Migrate first: two workers starting on a fresh SQLite file would race to create it.
    subprocess.run([sys.executable, "-m", "schoolgate", "db", "upgrade", "--policy", str(policy)], check=True,
                   capture_output=True)
    runtime = tmp_path / "run"
    runtime.mkdir()
    with open(tmp_path / "supervisor.log", "wb") as log:
        process = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT,
                                   env={**os.environ, "RUNTIME_DIRECTORY": str(runtime)})
    try:
        for n in range(2):
            wait_for(lambda n=n: _answers(f"http://127.0.0.1:{metrics_port + n}/metrics"), timeout=60)
        assert [fetch(proxy_port) for _ in range(4)] == [200] * 4  # the Wi-Fi group: games allowed

        def account() -> bool:
            done = subprocess.run([RADCLIENT, "-r", "2", "-t", "2", f"127.0.0.1:{radius_port}", "acct", "controller-secret"],
                                  input="User-Name = amy.b, Framed-IP-Address = 127.0.0.7, Acct-Status-Type = Start",
                                  capture_output=True, text=True)
            return done.returncode == 0

        wait_for(account, timeout=20)
        # Every worker knows amy.b on 127.0.0.7 (each poll takes a second): twelve connections in a row blocked.
        wait_for(lambda: [fetch(proxy_port) for _ in range(12)] == [403] * 12, timeout=30)
    finally:
        process.terminate()
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            for child in psutil.Process(process.pid).children(recursive=True):
                child.kill()
            process.kill()
            process.wait()
    with sqlite3.connect(tmp_path / "sg.db") as db:
        named = db.execute("SELECT DISTINCT instance FROM access_log WHERE username = 'amy.b'").fetchall()
    assert len(named) == 2, "both workers recorded amy.b"
