"""The request hook: identify -> endpoint -> decide -> respond.

Each HTTP request (plain, or decrypted from a tunnel) is decided on every name it
carries: the address it is sent to, its Host header and the TLS server name of its
connection; the strictest verdict stands, so no name can front for another. The
decision itself is `schoolgate.decide` (plain Python, shared with `explain`); the
pages are addons/responses.py; the record is written by the Recorder when the flow
is over. The other add-ons of the request path are composed in addons/script.py.
"""

from __future__ import annotations

import inspect
import logging

from mitmproxy import ctx, http

from schoolgate.addons.circumvention import is_doh_request, is_doh_response
from schoolgate.addons.connections import _gateway_address
from schoolgate.addons.decision import Decision, Outcome, Who, attach, carried_names, decision_of
from schoolgate.addons.embedded import decided_targets
from schoolgate.addons.endpoints import Endpoints
from schoolgate.addons.identify import Identification
from schoolgate.addons.judge import Judge
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.recorder import Recorder
from schoolgate.addons.responses import block_response, fail_closed, text, warning_response
from schoolgate.addons.safesearch import apply_query, enforce
from schoolgate.addons.searchterms import SearchTerm, extract_search_from_request
from schoolgate.addons.signing import ACK_COOKIE, PROBE_HEADER
from schoolgate.categories.index import CategoryHit
from schoolgate.categories.lexicon import RiskLexicon
from schoolgate.policy import Action
from schoolgate.urls import InvalidHost, Target, target_from_parts

log = logging.getLogger("schoolgate")

# A DNS-over-HTTPS query is treated as category doh whatever server it goes to.
_DOH_BY_SHAPE = CategoryHit("doh", "a DNS-over-HTTPS request")


class SchoolGate:
    def __init__(self, policy: PolicyWatch, identification: Identification, judge: Judge,
                 recorder: Recorder | None = None) -> None:
        self.policy = policy
        self.identification = identification
        self.judge = judge
        self.endpoints = Endpoints(policy, judge, alerts=lambda: recorder.alerts if recorder else None)
        self.lexicon = RiskLexicon.default()

    def configure(self, updated: set[str]) -> None:
        # mitmdump prints every flow with its client address and URL: access data belongs in the
        # database under the retention policy, not in the service journal (addons/limits.py keeps
        # mitmproxy's connection log lines out; `schoolgate_log_connections` lets both in for debugging).
        if getattr(ctx.options, "schoolgate_log_connections", False):
            return
        if "flow_detail" in updated and ctx.options.flow_detail != 0:
            log.info("schoolgate sets flow_detail=0: who visited what is recorded in the database, not the journal")
            ctx.options.update(flow_detail=0)

    @fail_closed
    async def request(self, flow: http.HTTPFlow):
        if flow.response or not flow.live:
            return None
        probe = flow.request.headers.pop(PROBE_HEADER, None)  # ours: never sent on to the site
        who = await self.identification.identify(flow)
        if who is None:
            return None
        try:
            targets = self._names(flow.request, flow.client_conn.sni)
        except InvalidHost as e:
            flow.response = text(400, f"schoolgate: {e}\n")
            return None
        endpoint = self.endpoints.answers(flow, targets[0])
        if endpoint is not None:
            answered = endpoint(flow, who, targets[0])
            return await answered if inspect.isawaitable(answered) else None  # request_access is a coroutine
        decision = attach(flow, self._decide(flow, who, targets))
        if probe is not None:
            self._mark_probe(decision, probe)
        self._respond(flow, decision)
        return None

    def _mark_probe(self, decision: Decision, token: str) -> None:
        """The self-check's request is decided like any other (that is what it checks), but
        recorded as a probe: its visit to a listed site is no pupil's, so no incident or alert.
        A token that does not hold changes nothing."""
        assert self.policy.signer is not None
        if self.policy.signer.is_probe(decision.target.host, token):
            decision.probe, decision.note = True, "self-check probe"

    @staticmethod
    def _names(request: http.Request, sni: str | None) -> list[Target]:
        names = carried_names(request.pretty_host, request.host, sni, request.scheme)
        return [target_from_parts(request.scheme, name, request.port, request.path) for name in names]

    def _decide(self, flow: http.HTTPFlow, who: Who, targets: list[Target]) -> Decision:
        request = flow.request
        search = self._search(request, targets[0])
        search_hit = self.lexicon.worst(search.query) if search else None
        body = (request.raw_content or b"") if request.method == "POST" else b""
        seen_as = (_DOH_BY_SHAPE,) if is_doh_request(
            request.method, targets[0], request.headers.get("content-type"), request.headers.get("accept"), body) else ()
        # Sites carried inside this one (translators, archives, web proxies) are decided too.
        targets, shape = decided_targets(*targets)
        seen_as = (*seen_as, *shape)
        return self.judge.decide(who, *targets, method=request.method, search=search, search_hit=search_hit,
                                 seen_as=seen_as, url=request.pretty_url,
                                 gateway_address=_gateway_address(flow.client_conn))

    def _respond(self, flow: http.HTTPFlow, decision: Decision) -> None:
        engine, signer = self.policy.engine, self.policy.signer
        assert engine is not None and signer is not None
        request = flow.request
        acknowledgement = request.cookies.get(ACK_COOKIE)
        if acknowledgement is not None:
            del request.cookies[ACK_COOKIE]  # ours, not the site's
        action = decision.verdict.action
        if action is Action.BLOCK:
            flow.response = block_response(decision, request.pretty_url, engine.policy, signer, engine.live.requests)
        elif action is Action.WARN and not signer.acknowledged(decision.who, decision.target.host, acknowledgement):
            flow.response = warning_response(decision, request.pretty_url, engine.policy, signer)
        else:
            if action is Action.WARN:
                decision.outcome, decision.note = Outcome.ALLOW, "warning acknowledged"
            if decision.who.group.safe_search:
                _enforce_safe_search(request, decision.target)

    @fail_closed
    def response(self, flow: http.HTTPFlow) -> None:
        """DNS answers coming back give away a DNS-over-HTTPS server whose request did not."""
        decision = decision_of(flow)
        if (decision is None or decision.refused or flow.response is None
                or not is_doh_response(flow.response.headers.get("content-type"))):
            return
        again = self.judge.decide(decision.who, decision.target, method=decision.method, seen_as=(_DOH_BY_SHAPE,),
                                  search=decision.search, url=decision.url)
        if again.verdict.action is Action.BLOCK:
            engine, signer = self.policy.engine, self.policy.signer
            assert engine is not None and signer is not None
            decision.block(again.verdict, "DNS answers in the response")
            flow.response = block_response(decision, flow.request.pretty_url, engine.policy, signer)

    def _search(self, request: http.Request, target: Target) -> SearchTerm | None:
        """A search typed into the site (in its URL, or the body of a POST)."""
        assert self.policy.engine is not None
        if not self.policy.engine.policy.monitoring.search_terms:
            return None
        return extract_search_from_request(target, request.method, request.headers.get("content-type"),
                                           request.raw_content or b"")


def _enforce_safe_search(request: http.Request, target: Target) -> None:
    """Rewrite the request as each service documents for networks that enforce SafeSearch."""
    change = enforce(target)
    if change is None:
        return
    if change.set_query:
        path, _, query = request.path.partition("?")
        request.path = f"{path}?{apply_query(query, change.set_query)}"
    for name, value in change.set_headers.items():
        request.headers[name] = value
