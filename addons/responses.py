"""What the gateway answers in place of a site, and how any flow is refused.

Page choice (block page, warning, the refused CONNECT), the small text answers
(login required, bad request, could not check) and `refuse`, which stops an HTTP,
TCP, UDP or DNS flow before anything reaches its destination. `fail_closed`
wraps every deciding hook, sync or async: a bug refuses the flow, never passes it.
"""

from __future__ import annotations

import functools
import inspect
import logging
from dataclasses import replace
from datetime import UTC, datetime

from mitmproxy import dns, http, tcp, udp
from mitmproxy import flow as mflow
from mitmproxy.net.dns import response_codes
from mitmproxy.proxy import server_hooks

from schoolgate import metrics
from schoolgate.addons.decision import REFUSED_UPSTREAM, Decision, Kind, attach, decision_of
from schoolgate.addons.pages import Branding, block_page, support_for, warning_page
from schoolgate.addons.signing import Signer
from schoolgate.decide import Rule, Verdict
from schoolgate.grants import AskedFor, latest_request_for
from schoolgate.policy import Action, Policy
from schoolgate.records import new_reference
from schoolgate.urls import Target

log = logging.getLogger("schoolgate")

TEXT = {"Content-Type": "text/plain; charset=utf-8"}
COULD_NOT_CHECK = "The school's web filter could not check this page, so it is not shown. Please tell IT.\n"


def branding(policy: Policy) -> Branding:
    """The school's name, contact, logo and own words (an empty setting keeps the built-in sentence)."""
    school = policy.school
    own_words = {key: value for key, value in (("block_message", school.block_message),
                                               ("warning_message", school.warning_message)) if value}
    return Branding(school=school.name, contact=school.contact, logo_url=school.logo_url,
                    footer=school.page_footer, **own_words)


def text(status: int, message: str, headers: dict[str, str] | None = None) -> http.Response:
    return http.Response.make(status, message, {**TEXT, **(headers or {})})


def login_required(retry_after: float | None = None, negotiate: bool = False) -> http.Response:
    """407. With `negotiate`, Kerberos single sign-on is offered first; Basic stays for the rest."""
    if retry_after is None:
        response = text(407, "Please log in to use the school's internet.\n")
    else:
        minutes = max(1, round(retry_after / 60))
        response = text(407, f"Too many wrong passwords. Try again in {minutes} minute{'s' if minutes > 1 else ''}.\n",
                        {"Retry-After": str(max(1, round(retry_after)))})
    challenges = ["Negotiate", 'Basic realm="schoolgate"'] if negotiate else ['Basic realm="schoolgate"']
    response.headers.set_all("Proxy-Authenticate", challenges)
    return response


def page_response(status: int, page: str, brand: Branding, outcome: str, reference: str) -> http.Response:
    return http.Response.make(status, page, {**brand.headers(), "X-Schoolgate-Verdict": outcome,
                                             "X-Schoolgate-Reference": reference})


def block_response(decision: Decision, url: str, policy: Policy, signer: Signer,
                   requests: tuple[AskedFor, ...] = ()) -> http.Response:
    """The block page; it offers "ask for access", except for a blocked worrying search,
    which calls for help rather than a form asking to see the results, and for the
    illegal-content tier, which nobody may open. With the recent `requests`, it shows
    what became of this pupil's request for the site."""
    decision.reference = reference = decision.reference or new_reference()
    verdict = decision.verdict
    brand = branding(policy)
    illegal = verdict.rule is Rule.ILLEGAL  # nobody may open it: no form, its own wording
    asking = not illegal and verdict.rule is not Rule.SEARCH_TERM
    fields = signer.request_fields(decision.who, url, reference) if asking else None
    who = decision.who
    asked = latest_request_for(requests, who.client_ip, who.user, decision.target.host) if asking else None
    page = block_page(brand=brand, url=url, categories=verdict.categories, reason=verdict.reason,
                      when=datetime.now(UTC), reference=reference, request_fields=fields,
                      support=support_for(verdict.flag.risk if verdict.flag else None), illegal=illegal,
                      asked=asked, my_requests_href=signer.my_requests_link(who) if asked else "")
    return page_response(403, page, brand, "block", reference)


def warning_response(decision: Decision, url: str, policy: Policy, signer: Signer) -> http.Response:
    decision.reference = reference = decision.reference or new_reference()
    brand = branding(policy)
    page = warning_page(brand=brand, url=url, categories=decision.verdict.categories, reason=decision.verdict.reason,
                        when=datetime.now(UTC), reference=reference,
                        proceed_href=signer.proceed_link(decision.who, decision.target.host, url))
    return page_response(403, page, brand, "warn", reference)


def connect_refused(decision: Decision) -> http.Response:
    """Without interception there is no page to show: the CONNECT itself is refused."""
    decision.reference = reference = decision.reference or new_reference()
    return text(403, f"Blocked by the school's web filter: {decision.verdict.reason}. Reference {reference}\n",
                {"X-Schoolgate-Reference": reference})


def refuse(flow: mflow.Flow, reason: str) -> None:
    """Stop a flow before anything more reaches its destination (or the client)."""
    if isinstance(flow, http.HTTPFlow):
        flow.response = flow.response or text(503, COULD_NOT_CHECK)
    elif isinstance(flow, (tcp.TCPFlow, udp.UDPFlow)):
        # Not connected yet (the connection strategy is lazy): the connection is never opened.
        flow.server_conn.error = f"{REFUSED_UPSTREAM}: {reason}"
        for message in flow.messages:
            message.content = b""
    elif isinstance(flow, dns.DNSFlow):
        flow.response = flow.request.fail(response_codes.REFUSED)


def fail_closed(hook):
    """A bug in a hook must not let a flow through undecided (mitmproxy would log the
    error and carry on): refuse it, record it (the decision made so far, or one that says
    deciding failed), and log the traceback (no addresses or names: those are access
    data). Async hooks, and sync hooks that hand back a coroutine, are guarded the same
    way. On a TLS ClientHello the connection is left to be decrypted, so the request
    hook still decides what is inside it."""

    def failed(owner, flow) -> None:
        log.exception("schoolgate could not decide a %s; refused", type(flow).__name__)
        metrics.DECISION_ERRORS.inc()
        if isinstance(flow, server_hooks.ServerConnectionHookData):
            flow.server.error = "the filter failed while deciding"  # never connect undecided
            return
        if not isinstance(flow, mflow.Flow):
            return
        if isinstance(flow, http.HTTPFlow) and flow.websocket is not None and flow.websocket.messages:
            # The page was answered long ago: the message is what is undecided.
            flow.websocket.messages[-1].drop()
            flow.kill()
        elif isinstance(flow, http.HTTPFlow):
            flow.response = text(503, COULD_NOT_CHECK)
        else:
            refuse(flow, "the filter failed while deciding")
        decision = decision_of(flow) or _undecided(owner, flow)
        if decision is not None and not decision.recorded:
            decision.block(replace(decision.verdict, action=Action.BLOCK), "the filter failed while deciding")

    async def awaited(owner, result, flow):
        try:
            return await result
        except Exception:
            failed(owner, flow)

    @functools.wraps(hook)
    def guarded(self, flow):
        try:
            result = hook(self, flow)
        except Exception:
            failed(self, flow)
            return None
        return awaited(self, result, flow) if inspect.isawaitable(result) else result

    return guarded


def _undecided(owner, flow: mflow.Flow) -> Decision | None:
    """A decision for a flow that failed before one was made, so the refusal is recorded.
    Only the add-ons that decide flows (and so hold the identification step) meet one."""
    identification = getattr(owner, "identification", None)
    if identification is None:
        return None
    try:
        who = identification.by_address(flow.client_conn)
        if isinstance(flow, http.HTTPFlow):
            scheme, host, method = flow.request.scheme, flow.request.pretty_host, flow.request.method
            port: int | None = flow.request.port
        else:
            address = flow.server_conn.address or ("", None)
            scheme, host, port, method = type(flow).__name__[:3].lower(), address[0], address[1], type(flow).__name__[:3]
        verdict = Verdict(Action.BLOCK, Rule.FAULT, "the filter failed while deciding, so this was refused", who.group.name)
        return attach(flow, Decision(who, Target(host.lower(), port, "/", "", scheme), verdict,
                                     method, Kind.HTTP if isinstance(flow, http.HTTPFlow) else Kind.TUNNEL))
    except Exception:
        log.exception("could not record a flow that failed while being decided")
        return None
