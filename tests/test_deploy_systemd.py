"""The systemd install, as deploy/systemd/README.md does it, short of systemd itself.

What is tested: the shipped units' hardening (`systemd-analyze security --offline`, exposure
<= 3) and syntax; the shipped sysusers.d file creating the service user; the package installed
as a wheel into a virtualenv on a Python outside /root; the gateway run as that user
(setpriv, umask 0077, no capabilities, no new privileges) with the policy in a root-owned,
read-only folder and its state under a state directory it owns, the environment the unit
gives it (SCHOOLGATE_POLICY, SCHOOLGATE_STATE_DIR, NOTIFY_SOCKET, RUNTIME_DIRECTORY).
It answers, tells READY=1 over a real notify socket, /readyz goes green, every file it makes
is private to it, nothing is written beside the policy, and SIGINT stops it cleanly.

What is not: systemd does not run as PID 1 here, so the unit's sandbox (ProtectSystem=,
SystemCallFilter=, PrivateUsers=...) is checked by `systemd-analyze` but not enforced on a
running gateway.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from support.clients import CURL
from support.gateway import REPO, free_ports

UNITS = REPO / "deploy" / "systemd"
SERVICE_USER = "schoolgate"


def _analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed (apt-get install systemd)")
    return tool


@pytest.mark.parametrize("unit", ["schoolgate.service", "schoolgate-console.service",
                                  "schoolgate-lists.service", "schoolgate-purge.service",
                                  "schoolgate-report.service", "schoolgate-classes.service"])
def test_units_are_hardened(unit: str) -> None:
    done = subprocess.run([_analyze(), "security", "--offline=true", "--no-pager", str(UNITS / unit)],
                          capture_output=True, text=True, timeout=60)
    found = re.search(r"Overall exposure level for \S+: ([\d.]+)", done.stdout + done.stderr)
    assert found, done.stdout + done.stderr
    assert float(found.group(1)) <= 3.0, f"{unit}: exposure {found.group(1)}\n{done.stdout}"
    text = (UNITS / unit).read_text()
    for setting in ("User=schoolgate", "StateDirectory=schoolgate", "ConfigurationDirectory=schoolgate",
                    "UMask=0077", "SCHOOLGATE_STATE_DIR=%S/schoolgate"):
        assert setting in text, f"{unit} lacks {setting}"


def test_gateway_unit_waits_for_readiness() -> None:
    text = (UNITS / "schoolgate.service").read_text()
    assert "Type=notify" in text and "WatchdogSec=" in text and "RuntimeDirectory=schoolgate" in text
    drop_in = (UNITS / "schoolgate.service.d" / "workers.conf").read_text()
    assert "NotifyAccess=all" in drop_in and "--workers" in drop_in


# --- the gateway installed and run as the service user ---------------------------------

def _copy_python(destination: Path) -> Path:
    """The running Python, copied where any user may run it (the tests' own lives under /root,
    as pyenv's do: exactly the trap the README warns about)."""
    prefix = Path(sys.base_prefix)
    version = f"python{sys.version_info.major}.{sys.version_info.minor}"
    skip = shutil.ignore_patterns("site-packages", "test", "tests", "__pycache__", "idlelib", "tkinter", "turtledemo")
    shutil.copytree(prefix / "lib" / version, destination / "lib" / version, ignore=skip, symlinks=True)
    for library in prefix.joinpath("lib").glob("libpython*.so*"):
        shutil.copy2(library, destination / "lib", follow_symlinks=False)
    (destination / "bin").mkdir(parents=True)
    shutil.copy2(Path(sys.base_prefix) / "bin" / version, destination / "bin" / version)
    return destination / "bin" / version


@pytest.fixture
def installed(tmp_path: Path) -> Iterator[dict[str, Path]]:
    if os.geteuid() != 0:
        pytest.skip("installing as a service user needs root (CI runs as root)")
    for tool in ("setpriv", "systemd-sysusers"):
        if shutil.which(tool) is None:
            pytest.skip(f"{tool} is not installed")
    subprocess.run(["systemd-sysusers", str(UNITS / "schoolgate.sysusers")], check=True, timeout=60)
    user = pwd.getpwnam(SERVICE_USER)
    assert user.pw_uid != 0 and user.pw_shell == "/usr/sbin/nologin"
    root = Path(tempfile.mkdtemp(prefix="sg-install-", dir="/var/tmp"))
    try:
        root.chmod(0o755)
        python = _copy_python(root / "opt" / "python")
        venv = root / "opt" / "venv"
        subprocess.run([python, "-m", "venv", "--without-pip", venv], check=True, timeout=120,
                       env={"LD_LIBRARY_PATH": str(python.parent.parent / "lib")})
        wheels = tmp_path / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", wheels, REPO], check=True, timeout=300)
        # schoolgate itself: the wheel just built, installed as a release would be (with its
        # `schoolgate` command), not this checkout.
        subprocess.run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "--no-deps",
                        "--no-index", "-q", *wheels.glob("schoolgate-*.whl")], check=True, timeout=300,
                       env={**os.environ, "LD_LIBRARY_PATH": str(python.parent.parent / "lib")})
        # Its dependencies: this test environment's, read-only (a real install takes them from
        # requirements.lock, which would download them here on every run).
        site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
        (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
        (venv / "bin" / "mitmdump").write_text(
            f"#!{venv}/bin/python\nimport sys\nfrom mitmproxy.tools.main import mitmdump\nsys.exit(mitmdump())\n")
        (venv / "bin" / "mitmdump").chmod(0o755)
        config = root / "etc" / "schoolgate"
        state = root / "var" / "lib" / "schoolgate"
        run = root / "run" / "schoolgate"
        for directory, owner, mode in ((config, 0, 0o755), (state, user.pw_uid, 0o700), (run, user.pw_uid, 0o755)):
            directory.mkdir(parents=True)
            os.chown(directory, owner, owner and user.pw_gid)
            directory.chmod(mode)
        yield {"root": root, "python_lib": python.parent.parent / "lib", "venv": venv, "config": config,
               "state": state, "run": run}
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _as_service_user(installed: dict[str, Path], *command: str, env: dict[str, str]) -> list[str]:
    base = {
        "PATH": f"{installed['venv']}/bin:/usr/bin:/bin",
        "LD_LIBRARY_PATH": str(installed["python_lib"]),
        "HOME": str(installed["state"]),
        "SCHOOLGATE_POLICY": str(installed["config"] / "policy.toml"),
        "SCHOOLGATE_STATE_DIR": str(installed["state"]),
        "RUNTIME_DIRECTORY": str(installed["run"]),
        "PYTHONUNBUFFERED": "1",
        **env,
    }
    return ["setpriv", f"--reuid={SERVICE_USER}", f"--regid={SERVICE_USER}", "--clear-groups", "--no-new-privs",
            "--inh-caps=-all", "--bounding-set=-all", "--", "env", "-i",
            *(f"{k}={v}" for k, v in base.items()),
            "sh", "-c", f"umask 0077 && cd {installed['state']} && exec \"$@\"", "sh", *command]


def _get(url: str) -> int:
    try:
        urllib.request.build_opener(urllib.request.ProxyHandler({})).open(url, timeout=2).close()
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 0
    return 200


def test_gateway_runs_as_the_service_user_with_a_read_only_policy(installed: dict[str, Path]) -> None:
    proxy_port, metrics_port = free_ports(2)
    policy = installed["config"] / "policy.toml"
    policy.write_text(f"""\
[gateway]
metrics_port = {metrics_port}
default_group = "pupils"

[local]
block = ["blocked.example"]

[groups.pupils]
networks = ["127.0.0.0/8"]
""")
    policy.chmod(0o644)
    before = sorted(p.name for p in installed["config"].iterdir())
    notify_path = installed["run"].parent / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(notify_path))
        notify_path.chmod(0o777)
        notify.settimeout(60)
        env = {"NOTIFY_SOCKET": str(notify_path)}
        check = subprocess.run(_as_service_user(installed, "schoolgate", "check", env=env),
                               capture_output=True, text=True, timeout=120)
        assert check.returncode == 0, check.stdout + check.stderr  # ExecStartPre
        log_path = installed["root"] / "gateway.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                _as_service_user(installed, "schoolgate", "run", "--quiet", "--listen-host", "127.0.0.1",
                                 "--listen-port", str(proxy_port), "--confdir", f"{installed['state']}/ca", env=env),
                stdout=log, stderr=subprocess.STDOUT)
        try:
            messages: list[str] = []
            deadline = time.monotonic() + 60
            while not any("READY=1" in m for m in messages):
                assert process.poll() is None, log_path.read_text()
                assert time.monotonic() < deadline, f"no READY=1; got {messages}\n{log_path.read_text()}"
                try:
                    messages.append(notify.recv(4096).decode())
                except TimeoutError:
                    pass
            assert _get(f"http://127.0.0.1:{metrics_port}/readyz") == 200
            blocked = subprocess.run([CURL, "-q", "-s", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "20",
                                      "--proxy", f"http://127.0.0.1:{proxy_port}", "http://blocked.example/"],
                                     capture_output=True, text=True, timeout=30)
            assert blocked.stdout == "403", log_path.read_text()
            targets = json.loads((installed["run"] / "prometheus-targets.json").read_text())
            assert targets == [{"targets": [f"127.0.0.1:{metrics_port}"]}]
            owner = pwd.getpwnam(SERVICE_USER).pw_uid
            assert _uid_of(process.pid) == owner  # setpriv, env and sh exec: this is the gateway
        finally:
            if process.poll() is None:
                # setpriv execs, so the signal reaches the gateway itself
                process.send_signal(signal.SIGINT)
                try:
                    process.wait(30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
        assert process.returncode == 0, log_path.read_text()
    # nothing written beside the policy; everything the gateway made is its own and private
    assert sorted(p.name for p in installed["config"].iterdir()) == before
    made = [p for p in installed["state"].rglob("*") if p.is_file()]
    names = {p.relative_to(installed["state"]).as_posix() for p in made}
    assert {"gateway.secret", "schoolgate.db", "ca/mitmproxy-ca.pem"} <= names, names
    for path in made:
        info = path.stat()
        assert info.st_uid == owner, f"{path} is not the service user's"
        assert stat.S_IMODE(info.st_mode) & 0o077 == 0, f"{path} is open to others: {oct(info.st_mode)}"


def _uid_of(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE).group(1))
