"""A real OpenLDAP server (Debian's slapd) on loopback, in a temporary directory.

The directory of a small school: pupils in OUs by year, staff, groups (groupOfNames),
and the gateway's service account. LDAPS on a second port with a CA made for the
test. `Slapd.modify` changes entries while it runs (group membership refresh tests).
"""

from __future__ import annotations

import datetime
import ipaddress
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from .gateway import free_ports
from .waiting import end_process, wait_for

SLAPD = Path("/usr/sbin/slapd")
SLAPADD = Path("/usr/sbin/slapadd")
SCHEMAS = Path("/etc/ldap/schema")
BASE = "dc=school,dc=test"
ROOT_DN = f"cn=admin,{BASE}"
ROOT_PASSWORD = "root-secret"
SERVICE_DN = f"cn=gateway,ou=services,{BASE}"
SERVICE_PASSWORD = "service-secret"

# (uid, OU path under the base, password)
USERS = [
    ("amy.b", "ou=Year7,ou=Pupils", "amy-pw"),
    ("ben.c", "ou=Year11,ou=Pupils", "ben-pw"),
    ("mr.smith", "ou=Staff", "smith-pw"),
    ("o'brien,t", "ou=Staff", "obrien-pw"),  # DN-special characters in a real name
]
GROUPS = {"teachers": ["mr.smith", "o'brien,t"], "year7": ["amy.b"], "sixth-form": []}


def unavailable() -> str | None:
    """Why slapd tests cannot run here, or None."""
    for binary in (SLAPD, SLAPADD):
        if not binary.exists():
            return f"{binary} is not installed (apt-get install slapd)"
    return None if shutil.which("ldapmodify") else "ldap-utils is not installed"


def user_dn(uid: str) -> str:
    ou = dict((u, o) for u, o, _ in USERS)[uid]
    escaped = uid.replace("\\", "\\\\").replace(",", "\\,").replace("+", "\\+")
    return f"uid={escaped},{ou},{BASE}"


def _ldif() -> str:
    entries = [f"dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\no: Test School\ndc: school\n"]
    for ou in ["ou=Pupils", "ou=Year7,ou=Pupils", "ou=Year11,ou=Pupils", "ou=Staff", "ou=groups", "ou=services"]:
        entries.append(f"dn: {ou},{BASE}\nobjectClass: organizationalUnit\nou: {ou.split(',')[0][3:]}\n")
    entries.append(f"dn: {SERVICE_DN}\nobjectClass: simpleSecurityObject\nobjectClass: organizationalRole\n"
                   f"cn: gateway\nuserPassword: {SERVICE_PASSWORD}\n")
    for uid, _, password in USERS:
        entries.append(f"dn: {user_dn(uid)}\nobjectClass: inetOrgPerson\nuid: {uid}\ncn: {uid}\nsn: {uid}\n"
                       f"userPassword: {password}\n")
    for name, members in GROUPS.items():
        lines = [f"dn: cn={name},ou=groups,{BASE}", "objectClass: groupOfNames", f"cn: {name}"]
        # groupOfNames needs a member: an empty group holds the service account only.
        lines += [f"member: {user_dn(m)}" for m in members] or [f"member: {SERVICE_DN}"]
        entries.append("\n".join(lines) + "\n")
    return "\n".join(entries)


@dataclass
class Tls:
    ca_file: Path
    cert_file: Path
    key_file: Path


def make_tls(directory: Path) -> Tls:
    """A CA and a certificate for 127.0.0.1 / localhost signed by it."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "schoolgate test directory CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=2))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    tls = Tls(directory / "ca.pem", directory / "server.pem", directory / "server.key")
    tls.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    tls.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    tls.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                               serialization.NoEncryption()))
    return tls


class Slapd:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port, self.tls_port = free_ports(2)
        self.url = f"ldap://127.0.0.1:{self.port}"
        self.ldaps_url = f"ldaps://127.0.0.1:{self.tls_port}"
        self.tls = make_tls(directory)
        self.service_password_file = directory / "service.password"
        self.service_password_file.write_text(SERVICE_PASSWORD + "\n")
        self.service_password_file.chmod(0o600)
        self._process: subprocess.Popen | None = None

    def _config(self) -> Path:
        data = self.directory / "data"
        data.mkdir(exist_ok=True)
        conf = self.directory / "slapd.conf"
        schemas = "".join(f"include {SCHEMAS / name}.schema\n" for name in ("core", "cosine", "nis", "inetorgperson"))
        conf.write_text(
            f"{schemas}"
            f"pidfile {self.directory / 'slapd.pid'}\n"
            "modulepath /usr/lib/ldap\nmoduleload back_mdb\n"
            f"TLSCACertificateFile {self.tls.ca_file}\nTLSCertificateFile {self.tls.cert_file}\n"
            f"TLSCertificateKeyFile {self.tls.key_file}\n"
            "database mdb\nmaxsize 10485760\n"
            f'suffix "{BASE}"\nrootdn "{ROOT_DN}"\nrootpw {ROOT_PASSWORD}\n'
            f"directory {data}\n"
            # Passwords only for binding; everything else for signed-in clients, nothing for anonymous ones.
            "access to attrs=userPassword by anonymous auth by * none\n"
            "access to * by users read by anonymous auth\n"
        )
        return conf

    def start(self) -> Slapd:
        conf = self._config()
        (self.directory / "fixtures.ldif").write_text(_ldif())
        subprocess.run([str(SLAPADD), "-q", "-f", str(conf), "-l", str(self.directory / "fixtures.ldif")],
                       check=True, capture_output=True)
        self._log = (self.directory / "slapd.log").open("wb")
        self._process = subprocess.Popen(
            [str(SLAPD), "-f", str(conf), "-h", f"{self.url}/ {self.ldaps_url}/", "-d", "0"],
            stdout=self._log, stderr=subprocess.STDOUT)
        wait_for(self._answers, timeout=20)
        return self

    def _answers(self) -> bool:
        if self._process is not None and self._process.poll() is not None:
            raise RuntimeError("slapd exited: " + self.log_text())
        done = subprocess.run(["ldapwhoami", "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
                              capture_output=True)
        return done.returncode == 0

    def log_text(self) -> str:
        path = self.directory / "slapd.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def modify(self, ldif: str) -> None:
        """Apply an LDIF change (ldapmodify as the root DN)."""
        subprocess.run(["ldapmodify", "-x", "-H", self.url, "-D", ROOT_DN, "-w", ROOT_PASSWORD],
                       input=ldif.encode(), check=True, capture_output=True)

    def stop(self) -> None:
        if self._process is not None:
            end_process(self._process)
            self._process = None
            self._log.close()

