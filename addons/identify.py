"""The identification step of the request path: who is asking, how that is known, and
which group they are in.

One call, `Identification.identify(flow)`, made by the CONNECT and request hooks; it
answers 407 (or sends the device to the sign-in page) itself and returns None when a
sign-in is needed. The sources, strongest first:

1. a proxy sign-in on this request or its tunnel: Kerberos (`Negotiate`) or Basic,
   checked against the htpasswd file and/or the directory (addons/identity.py);
2. the device's address, signed in on the sign-in page (addons/portal.py) or named by
   a Wi-Fi controller's RADIUS accounting (addons/accounting.py);
3. the network the address is on;
4. nothing: the unknown-users group (`[gateway] unknown_group`, the strictest one).

A user's directory groups pick their policy group (`[groups.NAME] directory_groups`).
Password and ticket checks and directory look-ups run in ProxyLogin's threads.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import replace
from datetime import UTC, datetime

from mitmproxy import connection, http

from schoolgate.addons.decision import Decision, Kind, Who, carried_names
from schoolgate.addons.directory import Directory
from schoolgate.addons.identity import (
    BadCredentials,
    HtpasswdBackend,
    PasswordBackend,
    ProxyLogin,
    TooManyAttempts,
    client_address,
    parse_basic,
)
from schoolgate.addons.kerberos import Negotiate
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.portal import portal_url
from schoolgate.addons.recorder import Recorder
from schoolgate.addons.responses import login_required
from schoolgate.decide import Rule, Verdict
from schoolgate.identities import AddressSessions, Identity, Source
from schoolgate.layers import Layered
from schoolgate.policy import Action, Group, Policy
from schoolgate.urls import InvalidHost, target_from_parts

log = logging.getLogger("schoolgate")

# Sources that name a user without saying which directory groups they are in.
_GROUPS_LOOKED_UP = (Source.KERBEROS, Source.ACCOUNTING)


class Identification:
    def __init__(self, policy: PolicyWatch, recorder: Recorder) -> None:
        self.policy = policy
        self.recorder = recorder  # refused sign-ins are access attempts too, and recorded
        self.login = ProxyLogin()  # password checks off the event loop, with failure limits
        self.sessions = AddressSessions()  # device addresses named by the sign-in page or RADIUS accounting
        self._htpasswd: HtpasswdBackend | None = None
        self._directory: Directory | None = None
        self._negotiate: Negotiate | None = None
        # Who signed in on a CONNECT; requests inside the tunnel carry no credentials.
        self.tunnel_users: weakref.WeakKeyDictionary[connection.Client, Identity] = weakref.WeakKeyDictionary()

    async def identify(self, flow: http.HTTPFlow) -> Who | None:
        assert self.policy.engine is not None
        policy = self.policy.engine.policy
        client_ip = client_address(flow.client_conn.peername)
        identity = self.tunnel_users.get(flow.client_conn)
        header = flow.request.headers.get("Proxy-Authorization")
        if header is not None:
            del flow.request.headers["Proxy-Authorization"]  # never forwarded upstream
            refused, checked = await self._sign_in(flow, policy, client_ip, header)
            if refused:
                return None
            identity = checked or identity
        identity = await self._with_groups(policy, identity or self.sessions.get(client_ip))
        who = self.who_at(client_ip, identity)
        if who.group.require_auth and identity is None:
            portal = policy.portal if policy.portal.enabled else None
            if portal is None:
                flow.response = login_required(negotiate=self.negotiator(policy) is not None)
                return None
            # A tunnel goes on, so the request inside can be sent to sign in; the provider's pages stay
            # open, but only when every name the request carries is one of them (a Host header alone
            # naming the provider must not carry a request to another site).
            request = flow.request
            names = carried_names(request.pretty_host, request.host, flow.client_conn.sni, request.scheme)
            if request.method != "CONNECT" and not all(portal.opens(name) for name in names):
                flow.response = http.Response.make(302, b"", {"Location": portal_url(portal, flow.request.pretty_url),
                                                              "Cache-Control": "no-store"})
                return None
        if identity and identity.source in (Source.PROXY_BASIC, Source.KERBEROS) and flow.request.method == "CONNECT":
            self.tunnel_users[flow.client_conn] = identity
        return who

    def by_address(self, client: connection.Client) -> Who:
        """A connection with no HTTP request to carry a login (transparent TLS, TCP, UDP, DNS),
        or one whose request was never decided (refused by mitmproxy, or a fault)."""
        return self.who_at(client_address(client.peername), self.tunnel_users.get(client))

    def who_at(self, client_ip: str, identity: Identity | None = None) -> Who:
        """Who is at this address: `identity`, else whoever the sign-in page or the Wi-Fi
        says is on it; in their group as it is now. The one answer every path records."""
        assert self.policy.engine is not None
        identity = identity or self.sessions.get(client_ip)
        group, source = self.group_of(self.policy.engine.policy, client_ip, identity)
        return Who(client_ip, identity.user if identity else None, group, source)

    def group_of(self, policy: Policy, client_ip: str, identity: Identity | None) -> tuple[Group, Source]:
        """The policy group as it is now (its time window, the trust's baseline) and the
        identity source to record."""
        group, _ = policy.group_for(client_ip, identity.user if identity else None,
                                    identity.directory_groups if identity else frozenset())
        group, _ = policy.group_during(group, datetime.now(UTC))
        decider = self.policy.engine.decider if self.policy.engine is not None else None
        if isinstance(decider, Layered):
            group = decider.tightened(group)
        if identity is not None:
            return group, identity.source
        return group, Source.NETWORK if policy.network_of(client_ip) is not None else Source.UNKNOWN

    def backends(self, policy: Policy) -> list[PasswordBackend]:
        """What checks a password, in order: the htpasswd file (for the users it lists), the directory."""
        found: list[PasswordBackend] = []
        if policy.auth.htpasswd is not None:
            if self._htpasswd is None or self._htpasswd.path != policy.auth.htpasswd:
                self._htpasswd = HtpasswdBackend(policy.auth.htpasswd)
            found.append(self._htpasswd)
        if (directory := self.directory(policy)) is not None:
            found.append(directory)
        return found

    def directory(self, policy: Policy) -> Directory | None:
        settings = policy.directory
        if not settings.enabled:
            return None
        if self._directory is None or self._directory.settings != settings:
            self._directory = Directory(settings)
        return self._directory

    def negotiator(self, policy: Policy) -> Negotiate | None:
        settings = policy.kerberos
        if not settings.enabled:
            return None
        if self._negotiate is None or self._negotiate.settings != settings:
            self._negotiate = Negotiate(settings)
        return self._negotiate

    async def _sign_in(self, flow: http.HTTPFlow, policy: Policy, client_ip: str,
                       header: str) -> tuple[bool, Identity | None]:
        """(refused, the identity a Proxy-Authorization header proves); no identity when
        nothing here checks that kind of header; refused: the 407 is set and recorded."""
        negotiate = self.negotiator(policy)
        try:
            if header.lstrip().lower().startswith("negotiate"):
                if negotiate is None:
                    return False, None
                return False, await self.login.negotiate(client_ip, header, negotiate.accept)
            backends = self.backends(policy)
            if not backends:
                return False, None
            return False, await self.login.verify(client_ip, header, backends)
        except TooManyAttempts as e:
            log.info("a proxy login was refused unchecked: too many wrong attempts")
            flow.response = login_required(retry_after=e.retry_after, negotiate=negotiate is not None)
            self._record_refusal(flow, client_ip, header, "refused unchecked after too many wrong attempts")
        except (BadCredentials, OSError, ValueError) as e:
            # Who and from where is access data: not for the journal.
            log.info("a proxy login was refused%s", "" if isinstance(e, BadCredentials) else f" ({e})")
            flow.response = login_required(negotiate=negotiate is not None)
            self._record_refusal(flow, client_ip, header, "wrong user name or password"
                                 if isinstance(e, BadCredentials) else f"could not be checked ({e})")
        return True, None

    async def _with_groups(self, policy: Policy, identity: Identity | None) -> Identity | None:
        """Kerberos and accounting name a user but not their groups: ask the directory (cached)."""
        if identity is None or identity.user is None or identity.source not in _GROUPS_LOOKED_UP \
                or identity.directory_groups:
            return identity
        directory = self.directory(policy)
        if directory is None:
            return identity
        try:
            groups = directory.cached_groups(identity.user)
            if groups is None:
                groups = await self.login.run(directory.groups_of, identity.user)
        except OSError as e:
            log.warning("the directory could not say which groups a user is in (%s); their network group applies", e)
            return identity
        return replace(identity, directory_groups=groups) if groups else identity

    def _record_refusal(self, flow: http.HTTPFlow, client_ip: str, header: str, why: str) -> None:
        """A refused sign-in is recorded like any refused request, with the name tried
        (in the database only), so IT can see someone guessing a teacher's password."""
        assert self.policy.engine is not None
        request = flow.request
        connect = request.method == "CONNECT"
        try:
            target = target_from_parts("https" if connect else request.scheme, request.host, request.port,
                                       "/" if connect else request.path)
        except InvalidHost:
            return  # nothing to name; the request is refused all the same
        try:
            tried = f" as {parse_basic(header)[0]!r}"
        except BadCredentials:
            tried = ""
        policy = self.policy.engine.policy
        group, source = self.group_of(policy, client_ip, None)
        verdict = Verdict(Action.BLOCK, Rule.SIGN_IN, f"a proxy sign-in{tried} was {why}", group.name)
        self.recorder.record(Decision(Who(client_ip, None, group, source), target, verdict, request.method,
                                      Kind.TUNNEL if connect else Kind.HTTP), status=407)
