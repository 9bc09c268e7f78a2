"""A real MIT Kerberos KDC (Debian's krb5-kdc) on loopback, in a temporary directory.

Realm SCHOOL.TEST with a pupil's principal and the gateway's service principal
HTTP/localhost (a proxy's Negotiate service name is HTTP/<the proxy's host name>),
its key written to a keytab. `env` is what a client or the gateway needs to use this
realm (KRB5_CONFIG); `kinit` gets a real ticket into a credential cache.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from .gateway import free_ports
from .waiting import end_process, wait_for

REALM = "SCHOOL.TEST"
SERVICE = "HTTP/localhost"
PRINCIPALS = {"amy.b": "amy-pw", "mr.smith": "smith-pw", "Ann.Lee": "ann-pw"}  # Ann.Lee: a name with capitals
BINARIES = ["/usr/sbin/krb5kdc", "/usr/sbin/kdb5_util", "/usr/sbin/kadmin.local", "/usr/bin/kinit"]


def unavailable() -> str | None:
    for binary in BINARIES:
        if not Path(binary).exists():
            return f"{binary} is not installed (apt-get install krb5-kdc krb5-admin-server krb5-user)"
    return None


class Kdc:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        (self.port,) = free_ports(1)
        self.keytab = directory / "http.keytab"
        self.krb5_conf = directory / "krb5.conf"
        self.kdc_conf = directory / "kdc.conf"
        self.env = {"KRB5_CONFIG": str(self.krb5_conf), "KRB5_KDC_PROFILE": str(self.kdc_conf),
                    "KRB5RCACHEDIR": str(directory)}
        self._process: subprocess.Popen | None = None

    def _run(self, *cmd: str, input: str | None = None, env: dict[str, str] | None = None) -> None:
        subprocess.run(cmd, input=input, text=True, check=True, capture_output=True,
                       env={**os.environ, **self.env, **(env or {})})

    def start(self) -> Kdc:
        d = self.directory
        self.krb5_conf.write_text(
            f"[libdefaults]\n default_realm = {REALM}\n dns_lookup_kdc = false\n dns_lookup_realm = false\n"
            " rdns = false\n dns_canonicalize_hostname = false\n udp_preference_limit = 1\n"
            f"[realms]\n {REALM} = {{\n  kdc = 127.0.0.1:{self.port}\n }}\n"
            f"[domain_realm]\n localhost = {REALM}\n")
        self.kdc_conf.write_text(
            f"[kdcdefaults]\n kdc_ports = {self.port}\n kdc_tcp_ports = {self.port}\n"
            f"[realms]\n {REALM} = {{\n  database_name = {d / 'principal'}\n  key_stash_file = {d / 'stash'}\n"
            f"  acl_file = {d / 'kadm5.acl'}\n  kdc_ports = {self.port}\n  kdc_tcp_ports = {self.port}\n }}\n"
            f"[logging]\n kdc = FILE:{d / 'kdc.log'}\n")
        (d / "kadm5.acl").write_text("")
        self._run("/usr/sbin/kdb5_util", "create", "-s", "-r", REALM, "-P", "master-secret")
        for principal, password in PRINCIPALS.items():
            self._run("/usr/sbin/kadmin.local", "-r", REALM, "-q", f"addprinc -pw {password} {principal}")
        self._run("/usr/sbin/kadmin.local", "-r", REALM, "-q", f"addprinc -randkey {SERVICE}")
        self._run("/usr/sbin/kadmin.local", "-r", REALM, "-q", f"ktadd -k {self.keytab} {SERVICE}")
        self._process = subprocess.Popen(["/usr/sbin/krb5kdc", "-n", "-r", REALM], env={**os.environ, **self.env},
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        cache = d / "probe.ccache"
        wait_for(lambda: self._try_kinit("amy.b", cache), timeout=20)
        return self

    def _try_kinit(self, principal: str, cache: Path) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError("krb5kdc exited: " + self.log_text())
        done = subprocess.run(["/usr/bin/kinit", principal], input=PRINCIPALS[principal] + "\n", text=True,
                              capture_output=True, env={**os.environ, **self.env, "KRB5CCNAME": f"FILE:{cache}"})
        return done.returncode == 0

    def kinit(self, principal: str) -> dict[str, str]:
        """A real ticket for `principal`; returns the environment that uses it."""
        cache = self.directory / f"{principal}.ccache"
        if not self._try_kinit(principal, cache):
            raise RuntimeError(f"kinit {principal} failed: " + self.log_text())
        return {**self.env, "KRB5CCNAME": f"FILE:{cache}"}

    def log_text(self) -> str:
        path = self.directory / "kdc.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def stop(self) -> None:
        if self._process is not None:
            end_process(self._process)
            self._process = None


def curl_negotiate(proxy_port: int, url: str, env: dict[str, str], ca_cert: Path) -> tuple[int, str]:
    """curl through the proxy by its name `localhost`, answering Negotiate with the ticket in `env`."""
    done = subprocess.run(
        [shutil.which("curl") or "/usr/bin/curl", "-q", "-sS", "--proxy", f"http://localhost:{proxy_port}",
         "--proxy-negotiate", "--proxy-user", ":", "--cacert", str(ca_cert), "-o", "/dev/null", "-w", "%{http_code}",
         "--max-time", "20", url],
        capture_output=True, text=True, env={**{k: v for k, v in os.environ.items() if "proxy" not in k.lower()}, **env})
    return int(done.stdout or 0), done.stderr
