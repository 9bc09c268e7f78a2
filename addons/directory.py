"""The school's directory (LDAP / Active Directory): passwords and group memberships.

Two ways to check a password, as directories are set up:

- *search then bind* (`bind_dn` set; the usual one for Active Directory): the gateway's
  service account finds the user's entry with `user_filter`, then binds as that entry
  with the password given;
- *bind as the user* (`user_dn` template set): binds straight to the DN built from the
  user name.

Either way the user's groups are read with `group_filter` (e.g. `(member={dn})`, or
Active Directory's nested `(member:1.2.840.113556.1.4.1941:={dn})`), and every OU
above the user's entry counts too, so `directory_groups` in a policy group can name a
group (`year7`), a group DN or an OU DN (`ou=Year7,ou=Pupils,dc=school,dc=uk`).

The user name is escaped for filters (RFC 4515) and for DN parts (RFC 4514); an empty
password is refused before any bind (an LDAP "unauthenticated bind" would succeed).
Every call blocks: run them in ProxyLogin's threads, never on the event loop.
"""

from __future__ import annotations

import re
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import urlsplit

from ldap3 import BASE, NONE, SUBTREE, Connection, Server, Tls
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn, parse_dn

from schoolgate.identities import Identity, Source
from schoolgate.policy import DirectorySettings

MAX_USER_LENGTH = 256


class DirectoryUnavailable(OSError):
    """The directory could not be reached or would not answer: nothing can be decided."""


@dataclass(frozen=True, slots=True)
class PupilDetails:
    """A pupil's year group and form as the directory gives them (`year_attribute`, `form_attribute`)."""

    year_group: str | None
    form: str | None


class Directory:
    """Checks passwords and reads groups; implements identity.PasswordBackend."""

    def __init__(self, settings: DirectorySettings, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.key = f"directory:{settings.url}:{settings.user_base or settings.user_dn}"
        self.clock = clock
        self._groups: dict[str, tuple[frozenset[str], float]] = {}
        # Year groups and forms read since the gateway last stored them (addons/pupildirectory.py).
        self._details: dict[str, PupilDetails] = {}
        parts = urlsplit(settings.url)
        if parts.scheme not in ("ldap", "ldaps") or not parts.hostname:
            raise ValueError(f"directory url must be ldap://host[:port] or ldaps://host[:port], not {settings.url!r}")
        tls = Tls(validate=ssl.CERT_REQUIRED, ca_certs_file=str(settings.ca_file) if settings.ca_file else None)
        self._server = Server(parts.hostname, port=parts.port, use_ssl=parts.scheme == "ldaps", tls=tls,
                              get_info=NONE, connect_timeout=settings.timeout_seconds)

    def generation(self) -> object:
        return self.settings

    def check(self, user: str, password: str) -> Identity | None:
        """The user's identity (with their groups) for a right password, None for a wrong one."""
        if not password or not _plausible(user):
            return None
        try:
            return self._check(user, password)
        except LDAPException as e:
            raise DirectoryUnavailable(f"the directory failed: {type(e).__name__}") from e

    def _check(self, user: str, password: str) -> Identity | None:
        s = self.settings
        if s.user_dn:
            dn = s.user_dn.replace("{user}", escape_rdn(user))
            with self._connection(dn, password) as conn:
                if conn is None:
                    return None
                groups = self._read_groups(conn, dn)
                self._read_details(conn, user, dn)
        else:
            with self._service() as service:
                found = self._find(service, user)
                if found is None:
                    return None
                dn = found
                with self._connection(dn, password) as conn:
                    if conn is None:
                        return None
                groups = self._read_groups(service, dn)
                self._read_details(service, user, dn)
        self._groups[user] = (groups, self.clock() + s.cache_seconds)
        return Identity(user, Source.PROXY_BASIC, groups)

    def cached_groups(self, user: str) -> frozenset[str] | None:
        """The user's groups if read within the cache time (no I/O: safe on the event loop)."""
        cached = self._groups.get(user)
        return cached[0] if cached and cached[1] > self.clock() else None

    def groups_of(self, user: str) -> frozenset[str] | None:
        """The groups of a user named by another source (Kerberos, portal, accounting),
        read with the service account and cached; None when the directory has no such user."""
        if (cached := self.cached_groups(user)) is not None:
            return cached
        if not _plausible(user) or not self.settings.bind_dn:
            return None
        try:
            return self._lookup_groups(user)
        except LDAPException as e:
            raise DirectoryUnavailable(f"the directory failed: {type(e).__name__}") from e

    def _lookup_groups(self, user: str) -> frozenset[str] | None:
        with self._service() as service:
            dn = self._find(service, user)
            if dn is None:
                return None
            groups = self._read_groups(service, dn)
            self._read_details(service, user, dn)
        self._groups[user] = (groups, self.clock() + self.settings.cache_seconds)
        return groups

    def members_of(self, group: str) -> tuple[str, ...] | None:
        """The user names in a directory group (a class list for `schoolgate classes sync`),
        read with the service account; None when there is no such group. Groups inside it
        (a class made of sets, AD's nested groups) are followed, each once."""
        s = self.settings
        if not s.bind_dn or not s.group_base:
            raise DirectoryUnavailable("reading classes from the directory needs bind_dn and group_base")
        name = _user_name_attribute(s.user_filter)
        try:
            with self._service() as service:
                assert service is not None  # the service account: a refused bind raises
                service.search(s.group_base, f"({s.group_name_attribute}={escape_filter_chars(group)})", SUBTREE,
                               attributes=["member", "uniqueMember"], size_limit=2)
                found = [e for e in service.response or [] if e.get("type") == "searchResEntry"]
                if len(found) != 1:
                    return None
                names: set[str] = set()
                to_read = [*_members(found[0]["attributes"])]
                seen = {found[0]["dn"].lower()}
                while to_read:
                    dn = str(to_read.pop())
                    if dn.lower() in seen:
                        continue
                    seen.add(dn.lower())
                    service.search(dn, "(objectClass=*)", BASE, attributes=[name, "member", "uniqueMember"])
                    for entry in service.response or []:
                        if entry.get("type") != "searchResEntry":
                            continue
                        if inner := _members(entry["attributes"]):
                            to_read.extend(inner)  # a group: its members count, not its own name
                            continue
                        value = entry["attributes"].get(name)
                        names.update(map(str, value if isinstance(value, list) else [value] if value else []))
        except LDAPException as e:
            raise DirectoryUnavailable(f"the directory failed: {type(e).__name__}") from e
        return tuple(sorted(names))

    def take_details(self) -> dict[str, PupilDetails]:
        """The year groups and forms read since the last call (handed over once, to be stored)."""
        taken, self._details = self._details, {}
        return taken

    # --- LDAP ------------------------------------------------------------------------

    def _service(self) -> _Bound:
        s = self.settings
        password = s.bind_password_file.read_text().strip() if s.bind_password_file else ""
        return _Bound(self, s.bind_dn, password, required=True)

    def _connection(self, dn: str, password: str) -> _Bound:
        return _Bound(self, dn, password, required=False)

    def _find(self, service: Connection, user: str) -> str | None:
        s = self.settings
        search = s.user_filter.replace("{user}", escape_filter_chars(user))
        service.search(s.user_base, search, SUBTREE, attributes=[], size_limit=2)
        if (code := (service.result or {}).get("result")) not in (0, 4):  # 4: more than one: ambiguous
            raise DirectoryUnavailable(f"the directory refused the user search (result {code})")
        found = [e["dn"] for e in service.response or [] if e.get("type") == "searchResEntry"]
        return found[0] if len(found) == 1 else None  # none, or ambiguous: not this user

    def _read_groups(self, conn: Connection, dn: str) -> frozenset[str]:
        s = self.settings
        names: set[str] = set()
        # Every OU (and container) the entry sits in.
        parts = parse_dn(dn)
        for i in range(1, len(parts)):
            if parts[i][0].lower() in ("ou", "cn"):
                names.add(_dn_text(parts[i:]))
        if s.group_base:
            search = s.group_filter.replace("{dn}", escape_filter_chars(dn))
            ok = conn.search(s.group_base, search, SUBTREE, attributes=[s.group_name_attribute])
            entries = conn.response or []
            if not ok and (conn.result or {}).get("result") != 0:
                raise DirectoryUnavailable("the directory refused the group search")
            for entry in entries:
                if entry.get("type") != "searchResEntry":
                    continue
                names.add(_dn_text(parse_dn(entry["dn"])))
                for name in entry["attributes"].get(s.group_name_attribute) or []:
                    names.add(str(name).lower())
        return frozenset(names)


    def _read_details(self, conn: Connection, user: str, dn: str) -> None:
        """The entry's year group and form, when the policy names their attributes."""
        s = self.settings
        wanted = [a for a in (s.year_attribute, s.form_attribute) if a]
        if not wanted:
            return
        if not conn.search(dn, "(objectClass=*)", BASE, attributes=wanted):
            return  # not readable with this binding: the pupil's page just lacks them
        entries = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
        attributes = entries[0]["attributes"] if entries else {}

        def first(attribute: str) -> str | None:
            values = attributes.get(attribute) if attribute else None
            value = values[0] if isinstance(values, list) and values else values
            return (str(value).strip()[:64] or None) if value else None

        self._details[user] = PupilDetails(first(s.year_attribute), first(s.form_attribute))


class _Bound:
    """A connection bound as `dn` for the length of a `with` block; None when a user's
    password is wrong. Failing to reach the directory raises DirectoryUnavailable."""

    def __init__(self, directory: Directory, dn: str, password: str, *, required: bool) -> None:
        self.directory, self.dn, self.password, self.required = directory, dn, password, required
        self.conn: Connection | None = None

    def __enter__(self) -> Connection | None:
        s = self.directory.settings
        conn = Connection(self.directory._server, user=self.dn, password=self.password, auto_bind="NONE",
                          receive_timeout=s.timeout_seconds, raise_exceptions=False, read_only=True)
        try:
            conn.open()
            if s.start_tls and not conn.start_tls():
                raise DirectoryUnavailable("StartTLS with the directory failed")
            bound = conn.bind()
        except LDAPException as e:
            _close(conn)
            raise DirectoryUnavailable(f"the directory cannot be reached: {type(e).__name__}") from e
        result = conn.result or {}
        if not bound:
            _close(conn)
            if result.get("result") == 49 and not self.required:  # invalidCredentials
                return None
            what = "the gateway's service account" if self.required else "a user"
            raise DirectoryUnavailable(f"the directory refused to bind {what}: {result.get('description')}")
        self.conn = conn
        return conn

    def __exit__(self, *exc) -> None:
        if self.conn is not None:
            _close(self.conn)


def _close(conn: Connection) -> None:
    try:
        conn.unbind()
    except LDAPException:
        pass  # already broken: nothing more to release


def _dn_text(parts: list[tuple[str, str, str]]) -> str:
    return ",".join(f"{attr}={value}" for attr, value, _ in parts).lower()


def _user_name_attribute(user_filter: str) -> str:
    """The attribute holding a user name, from the filter that finds users: uid, sAMAccountName..."""
    found = re.search(r"\((\w+)=\{user\}\)", user_filter)
    return found[1] if found else "uid"


def _plausible(user: str) -> bool:
    return 0 < len(user) <= MAX_USER_LENGTH and user.isprintable()


def _members(attributes: dict) -> list[str]:
    """A group entry's member DNs (groupOfNames and AD `member`, groupOfUniqueNames `uniqueMember`)."""
    return [str(dn) for dn in (*(attributes.get("member") or []), *(attributes.get("uniqueMember") or []))]
