"""The decide step shared by every hook: the strictest verdict over all the names one
flow carries (CONNECT name, TLS server name, Host header, request target...), with
the gateway's own back office refused first, timed and counted once.
"""

from __future__ import annotations

import ipaddress
import socket
import time
from dataclasses import replace
from pathlib import Path

from schoolgate import metrics
from schoolgate.addons.decision import Decision, Kind, Who
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.decide import BackOffice
from schoolgate.engine import Engine
from schoolgate.urls import Target


class Judge:
    def __init__(self, policy: PolicyWatch) -> None:
        self.policy = policy
        self._back_office: tuple[Engine, BackOffice] | None = None

    def back_office(self) -> BackOffice:
        engine = self.policy.engine
        assert engine is not None
        if self._back_office is None or self._back_office[0].policy is not engine.policy:
            allowed = engine.policy.gateway.internal_destinations
            self._back_office = (engine, BackOffice(_own_addresses(engine.policy.gateway.metrics_address), allowed))
        return self._back_office[1]

    def decide(self, who: Who, *targets: Target, method: str, kind: Kind = Kind.HTTP, web: bool = True,
               gateway_address: str | None = None, **context) -> Decision:
        """One Decision for a flow; `targets` are every name it carries (the first wins ties),
        `web=False` for a connection that carries neither HTTP nor TLS, `gateway_address`
        the address the client reached the gateway at (never a destination itself).
        `context` goes to the Decider (search_hit, seen_as) and the Decision (search, url)."""
        engine = self.policy.engine
        assert engine is not None
        started = time.perf_counter()
        search, url = context.pop("search", None), context.pop("url", None)
        back_office = self.back_office()
        decided = []
        for target in targets:
            if back_office.internal(target.host, target.port, gateway_address):
                verdict = back_office.verdict(target, who.group)
            else:
                verdict = engine.decider.decide_connection(
                    target, who.group, web=web, user=who.user, client_ip=who.client_ip, **context)
            decided.append((target, verdict))
        target, verdict = max(decided, key=lambda pair: pair[1].action.strictness)
        # The strictest name decides the action; the DSL still hears of the worst concern any name raised.
        worst = max((v.flag for _, v in decided if v.flag is not None), key=lambda flag: flag.severity, default=None)
        if worst is not None and (verdict.flag is None or worst.severity > verdict.flag.severity):
            verdict = replace(verdict, flag=worst)
        elapsed = time.perf_counter() - started
        metrics.DECISION_SECONDS.observe(elapsed)
        return Decision(who, target, verdict, method, kind, decision_us=int(elapsed * 1_000_000),
                        search=search, search_hit=context.get("search_hit"), url=url)


def _own_addresses(*configured: str) -> set[str]:
    """This machine's addresses as far as it knows them without asking the network: every
    interface's (Linux /proc), its host name's, and the configured ones."""
    addresses = {a for a in configured if a}
    try:
        addresses.update(str(info[4][0]) for info in socket.getaddrinfo(socket.gethostname(), None))
    except OSError:
        pass
    return addresses | _interface_addresses()


def _interface_addresses(proc: Path = Path("/proc/net")) -> set[str]:
    found: set[str] = set()
    try:
        lines = (proc / "fib_trie").read_text().splitlines()
        # "|-- 192.0.2.2" followed by "/32 host LOCAL": an address of one of this machine's interfaces.
        found.update(previous.split()[-1] for previous, line in zip(lines, lines[1:], strict=False)
                     if line.strip().endswith("host LOCAL") and line.strip().startswith("/32"))
    except OSError:
        pass
    try:
        for line in (proc / "if_inet6").read_text().splitlines():
            hex_address = line.split()[0]
            found.add(str(ipaddress.IPv6Address(int(hex_address, 16))))
    except (OSError, ValueError, IndexError):
        pass
    return found
