"""RADIUS accounting (RFC 2866): Wi-Fi controllers tell the gateway who is on which address.

A school's wireless controller (or its RADIUS server, as a proxy) sends an
Accounting-Request when a pupil's device joins (Start), while it stays
(Interim-Update) and when it leaves (Stop), carrying the user's name (User-Name) and
the address the device was given (Framed-IP-Address / Framed-IPv6-Address). The
gateway then names that user on that address (identity source "accounting"), for
iPads, Chromebooks and phones that never sign in to a proxy.

Only controllers on `[accounting] clients` networks are heard, and only packets whose
Request Authenticator proves the shared secret; anything else is dropped unanswered,
as RFC 2866 says. An answer (Accounting-Response) is sent once the session is noted.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import ipaddress
import logging
import struct
from dataclasses import dataclass
from enum import IntEnum

from schoolgate.identities import AddressSessions, Identity, Source, canonical_user, plain_user_name
from schoolgate.policy import AccountingSettings
from schoolgate.urls import canonical_ip

log = logging.getLogger("schoolgate")

ACCOUNTING_REQUEST, ACCOUNTING_RESPONSE = 4, 5
USER_NAME, NAS_IP_ADDRESS, FRAMED_IP_ADDRESS, ACCT_STATUS_TYPE, FRAMED_IPV6_ADDRESS = 1, 4, 8, 40, 168
HEADER = struct.Struct("!BBH16s")


class Status(IntEnum):
    START = 1
    STOP = 2
    INTERIM_UPDATE = 3
    ACCOUNTING_ON = 7
    ACCOUNTING_OFF = 8


class BadPacket(ValueError):
    """Not a well-formed Accounting-Request signed with our secret."""


@dataclass(frozen=True, slots=True)
class AccountingRequest:
    identifier: int
    authenticator: bytes
    status: int
    user: str | None
    address: str | None  # the device's address (IPv4 or IPv6)


def parse(packet: bytes, secret: bytes) -> AccountingRequest:
    if len(packet) < HEADER.size:
        raise BadPacket("too short")
    code, identifier, length, authenticator = HEADER.unpack_from(packet)
    if code != ACCOUNTING_REQUEST or not HEADER.size <= length <= len(packet) or length > 4096:
        raise BadPacket("not an Accounting-Request")
    packet = packet[:length]
    # Request Authenticator = MD5(Code + Identifier + Length + 16 zero octets + Attributes + Secret)
    expected = hashlib.md5(packet[:4] + bytes(16) + packet[HEADER.size:] + secret).digest()
    if not hmac.compare_digest(expected, authenticator):
        raise BadPacket("wrong shared secret")
    attributes: dict[int, bytes] = {}
    at = HEADER.size
    while at < length:
        if at + 2 > length:
            raise BadPacket("truncated attribute")
        kind, size = packet[at], packet[at + 1]
        if size < 2 or at + size > length:
            raise BadPacket("bad attribute length")
        attributes.setdefault(kind, packet[at + 2: at + size])
        at += size
    if len(status := attributes.get(ACCT_STATUS_TYPE, b"")) != 4:
        raise BadPacket("no Acct-Status-Type")
    user = attributes.get(USER_NAME)
    address = None
    if len(v4 := attributes.get(FRAMED_IP_ADDRESS, b"")) == 4:
        address = str(ipaddress.IPv4Address(v4))
    elif len(v6 := attributes.get(FRAMED_IPV6_ADDRESS, b"")) == 16:
        address = str(ipaddress.IPv6Address(v6))
    return AccountingRequest(identifier, authenticator, struct.unpack("!I", status)[0],
                             user.decode("utf-8", "replace") if user else None, address)


def response(request: AccountingRequest, secret: bytes) -> bytes:
    """An Accounting-Response with no attributes:
    Response Authenticator = MD5(Code + Identifier + Length + Request Authenticator + Secret)."""
    head = struct.pack("!BBH", ACCOUNTING_RESPONSE, request.identifier, HEADER.size)
    return head + hashlib.md5(head + request.authenticator + secret).digest()


class AccountingListener(asyncio.DatagramProtocol):
    """The UDP listener; notes sessions in `sessions` (shared with the identification step)."""

    def __init__(self, settings: AccountingSettings, sessions: AddressSessions) -> None:
        self.settings = settings
        self.sessions = sessions
        if settings.secret_file is None:
            raise ValueError("[accounting] has no secret_file")
        self.secret = settings.secret_file.read_bytes().strip()
        if not self.secret:
            raise ValueError(f"the RADIUS shared secret file {settings.secret_file} is empty")
        self.transport: asyncio.DatagramTransport | None = None
        self.dropped = 0  # packets refused (unknown sender, wrong secret, malformed): counted, not logged by sender

    @classmethod
    async def start(cls, settings: AccountingSettings, sessions: AddressSessions) -> AccountingListener:
        listener = cls(settings, sessions)
        loop = asyncio.get_running_loop()
        # reuse_port: every worker process listens; the kernel hands each packet to one, and
        # the session reaches the others through the database (addons/sessions.py).
        await loop.create_datagram_endpoint(lambda: listener, local_addr=(settings.listen_address, settings.port),
                                            reuse_port=True)
        return listener

    @property
    def port(self) -> int:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[1]

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        sender = ipaddress.ip_address(canonical_ip(addr[0]) or "::")  # a datagram's sender is always an address
        if not any(sender.version == net.version and sender in net for net in self.settings.clients):
            self.dropped += 1
            return
        try:
            request = parse(data, self.secret)
        except BadPacket as e:
            self.dropped += 1
            log.info("a RADIUS accounting packet was dropped: %s", e)
            return
        self.note(request, str(sender))
        assert self.transport is not None
        self.transport.sendto(response(request, self.secret), addr)

    def note(self, request: AccountingRequest, controller: str) -> None:
        status = request.status
        if status in (Status.ACCOUNTING_ON, Status.ACCOUNTING_OFF):
            self.sessions.end_from(controller)
            return
        if request.address is None or not request.user:
            return  # nothing to tie a user to
        user = canonical_user(plain_user_name(request.user) if self.settings.strip_domain else request.user)
        if status in (Status.START, Status.INTERIM_UPDATE):
            self.sessions.start(request.address, Identity(user, Source.ACCOUNTING),
                                self.settings.session_hours * 3600, controller)
        elif status == Status.STOP:
            self.sessions.end(request.address, user)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class Accounting:
    """The add-on: runs the listener while `[accounting]` is set, restarting it when the
    settings change (the policy is re-read while the gateway runs)."""

    CHECK_SECONDS = 2.0

    def __init__(self, policy, sessions: AddressSessions) -> None:
        self.policy = policy  # PolicyWatch
        self.sessions = sessions
        self.listener: AccountingListener | None = None
        self._failed: AccountingSettings | None = None  # said once, retried when the settings change
        self._task: asyncio.Task | None = None

    async def running(self) -> None:
        await self._follow()
        self._task = asyncio.create_task(self._watch())

    async def done(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self.listener is not None:
            self.listener.close()

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.CHECK_SECONDS)
            await self._follow()

    async def _follow(self) -> None:
        engine = self.policy.engine
        settings = engine.policy.accounting if engine is not None and engine.policy.accounting.enabled else None
        current = self.listener.settings if self.listener is not None else None
        if settings == current or settings is not None and settings == self._failed:
            return
        if self.listener is not None:
            self.listener.close()
            self.listener = None
        if settings is None:
            return
        try:
            self.listener = await AccountingListener.start(settings, self.sessions)
            self._failed = None
            log.info("RADIUS accounting listening on %s:%d", settings.listen_address, self.listener.port)
        except (OSError, ValueError) as e:
            # Loud: devices named only by accounting fall to their network's or the unknown-users group.
            self._failed = settings
            log.error("RADIUS accounting could not start: %s", e)
