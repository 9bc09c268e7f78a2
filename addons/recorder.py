"""The Recorder: turns each flow's `Decision` into one `AccessRecord` (and an alert
when it is flagged) once the flow is over, for HTTP, raw TCP, UDP and DNS alike.

Last in addons/script.py, so an add-on before it (a content check on the response)
can still change the decision in its own `response` hook. It owns the RecordWriter
(queue, batches, spool) and the alert dispatcher for this process.
"""

from __future__ import annotations

import logging
import socket
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from mitmproxy import ctx, dns, http, tcp, udp

from schoolgate import flags, metrics
from schoolgate.addons.decision import REFUSED_UPSTREAM, Decision, decision_of
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.alerts import Alert, AlertDispatcher
from schoolgate.policy import Action
from schoolgate.records import AccessRecord, RecordWriter, default_spool_path, new_reference, url_for_log

log = logging.getLogger("schoolgate")

# URLs are stored as requested, up to this many characters (a longer one is cut and says so).
MAX_RECORDED_URL = 8192
CUT_MARK = "…[cut]"


class Recorder:
    def __init__(self, policy: PolicyWatch) -> None:
        self.policy = policy
        self.writer: RecordWriter | None = None
        self.alerts: AlertDispatcher | None = None

    def load(self, loader) -> None:
        loader.add_option("schoolgate_instance", str, socket.gethostname(), "Name of this gateway process in access records.")
        loader.add_option(
            "schoolgate_spool_dir", str, "",
            "Directory for access records kept while the database is unreachable "
            "(default: beside an SQLite database, else the working directory).",
        )
        loader.add_option(
            "schoolgate_spool_max_mb", int, 1024,
            "Most megabytes of access records kept on local disk while the database is unreachable.",
        )

    def configure(self, updated: set[str]) -> None:
        engine = self.policy.engine
        if self.writer is not None or engine is None:
            return
        spool_dir = Path(ctx.options.schoolgate_spool_dir) if ctx.options.schoolgate_spool_dir else None
        self.writer = RecordWriter(
            engine.policy.gateway.database,
            spool_path=default_spool_path(engine.policy.gateway.database, ctx.options.schoolgate_instance, spool_dir),
            max_spool_bytes=ctx.options.schoolgate_spool_max_mb << 20,
            instance=ctx.options.schoolgate_instance,
            episode_window=self._episode_window,
        )
        if engine.policy.alerts.enabled:
            self.alerts = AlertDispatcher(engine.policy.alerts)

    def _episode_window(self) -> timedelta:
        engine = self.policy.engine
        assert engine is not None
        return timedelta(minutes=engine.policy.monitoring.episode_minutes)

    async def running(self) -> None:
        assert self.writer is not None
        await self.writer.start()
        if self.alerts is not None:
            self.alerts.start()

    async def done(self) -> None:
        if self.writer:
            await self.writer.close()
        if self.alerts:
            await self.alerts.close()

    # --- the flow is over: record it ----------------------------------------------

    def response(self, flow: http.HTTPFlow) -> None:
        self._http(flow)

    def error(self, flow: http.HTTPFlow) -> None:
        self._http(flow)

    def tcp_end(self, flow: tcp.TCPFlow) -> None:
        self._stream(flow)

    def tcp_error(self, flow: tcp.TCPFlow) -> None:
        self._stream(flow)

    def udp_end(self, flow: udp.UDPFlow) -> None:
        self._stream(flow)

    def udp_error(self, flow: udp.UDPFlow) -> None:
        self._stream(flow)

    def dns_response(self, flow: dns.DNSFlow) -> None:
        self.record(decision_of(flow), status=flow.response.response_code if flow.response else None)

    def dns_error(self, flow: dns.DNSFlow) -> None:
        self.record(decision_of(flow))

    def _http(self, flow: http.HTTPFlow) -> None:
        response = flow.response
        decision = _refused_upstream(flow)
        self.record(
            decision,
            status=response.status_code if response else None,
            bytes_in=len(flow.request.raw_content or b""),
            bytes_out=len(response.raw_content) if response is not None and response.raw_content is not None else None,
        )

    def _stream(self, flow: tcp.TCPFlow | udp.UDPFlow) -> None:
        """Bytes each way, as relayed (a refused connection relays none)."""
        decision = _refused_upstream(flow)
        if decision is None:
            return
        relayed = not decision.refused
        sent = sum(len(m.content) for m in flow.messages if m.from_client) if relayed else 0
        received = sum(len(m.content) for m in flow.messages if not m.from_client) if relayed else 0
        self.record(decision, bytes_in=sent, bytes_out=received)

    # --- one record ---------------------------------------------------------------

    def record(self, decision: Decision | None, *, status: int | None = None,
               bytes_in: int | None = None, bytes_out: int | None = None) -> None:
        """Write the decision once (later calls for the same decision do nothing)."""
        if decision is None or decision.recorded:
            return
        engine = self.policy.engine
        assert engine is not None and self.writer is not None
        decision.recorded = True
        verdict, who, target = decision.verdict, decision.who, decision.target
        flag = None if decision.probe else verdict.flag
        if flag is not None and decision.reference is None:
            decision.reference = new_reference()  # every flagged record can be opened by reference from an alert
        ts = datetime.now(UTC)
        category = verdict.category or ("local" if verdict.rule.startswith("local") else "none")
        metrics.REQUESTS.labels(who.group.name, decision.outcome.value, category).inc()
        url = url_for_log(decision.url or target.url(), target.scheme, target.host, target.port, engine.policy.gateway.log_urls)
        url_cut = url is not None and len(url) > MAX_RECORDED_URL
        if url is not None and url_cut:
            url = url[:MAX_RECORDED_URL - len(CUT_MARK)] + CUT_MARK
        search = decision.search
        self.writer.submit(AccessRecord(
            ts=ts, instance=ctx.options.schoolgate_instance, seq=0,
            client_ip=who.client_ip, user=who.user, group=who.group.name,
            method=decision.method, scheme=target.scheme, host=target.host, port=target.port, url=url,
            categories=verdict.categories, verdict=decision.outcome.value, rule=decision.rule_text,
            reason=verdict.reason, status=status, bytes_in=bytes_in, bytes_out=bytes_out,
            ref=decision.reference, decision_us=decision.decision_us,
            search_engine=search.engine if search else None, search_term=search.query if search else None,
            flag=flag.risk if flag else None, flag_severity=int(flag.severity) if flag else None,
            flag_detail=flag.detail if flag else None,
            url_cut=url_cut, duration_ms=int((time.monotonic() - decision.started) * 1000),
            identity_source=who.source.value,
        ))
        if flag is not None and self.alerts is not None and decision.reference is not None:
            self.alerts.submit(Alert(
                record_ref=decision.reference, time=ts, risk=flag.risk, severity=flag.severity, group=who.group.name,
                user_key=who.user or who.client_ip,
                summary=f"{flags.risk_title(flag.risk)}: {'a search' if decision.search_hit else 'a site visit'} "
                        f"({decision.outcome.value}) in group {who.group.title}",
            ))


def _refused_upstream(flow: http.HTTPFlow | tcp.TCPFlow | udp.UDPFlow) -> Decision | None:
    """The flow's decision, turned into a block when the name was allowed but its connection
    was refused (it resolves to the back office): HTTP, TCP and UDP alike."""
    decision = decision_of(flow)
    if decision is not None and flow.error is not None and REFUSED_UPSTREAM in flow.error.msg:
        decision.block(replace(decision.verdict, action=Action.BLOCK), flow.error.msg.split(": ", 1)[-1])
    return decision

