"""Requests mitmproxy refuses before any add-on sees them, recorded all the same.

A request line whose host mitmproxy cannot parse (`GET http://www.porn%68ub.com/`,
full-width letters, an ideographic full stop, `CONNECT host..:443`) is answered 400
by mitmproxy's HTTP layer, which only logs it: no hook is called, so nothing would
be recorded. The attempt is still evidence. This add-on watches that one log line
(a logging filter that never drops anything), reads the request line back out of
it, decides the name as the gateway would have (so the record carries its
categories and flag) and records a block with status 400.
"""

from __future__ import annotations

import ast
import logging
import re
from dataclasses import replace

from schoolgate.addons.decision import Decision
from schoolgate.addons.identify import Identification
from schoolgate.addons.identity import client_address
from schoolgate.addons.judge import Judge
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.recorder import Recorder
from schoolgate.decide import Rule, Verdict
from schoolgate.policy import Action
from schoolgate.urls import InvalidHost, Target, parse_target

log = logging.getLogger("schoolgate")

# mitmproxy's proxy/server.py logs "<client>: Bad HTTP request line: b'...'" with extra `client`.
PROXY_LOGGER = "mitmproxy.proxy.server"
_BAD_LINE = re.compile(r"Bad HTTP request line: (b'.*'|b\".*\")\s*$", re.DOTALL)
NOTE = "malformed request, refused by the proxy"


class _Watch(logging.Filter):
    def __init__(self, owner: MalformedRequests) -> None:
        super().__init__()
        self.owner = owner

    def filter(self, record: logging.LogRecord) -> bool:
        client = getattr(record, "client", None)
        if client and "Bad HTTP request line" in str(record.msg):
            try:
                self.owner.refused(client, record.getMessage())
            except Exception:  # recording must never break mitmproxy's logging
                log.exception("could not record a malformed request")
        return True


class MalformedRequests:
    def __init__(self, policy: PolicyWatch, identification: Identification, judge: Judge, recorder: Recorder) -> None:
        self.policy = policy
        self.identification = identification
        self.judge = judge
        self.recorder = recorder
        self._watch = _Watch(self)

    def load(self, loader) -> None:
        # Added at load, before addons/limits.py's filter (added at configure) can drop the line;
        # the line is INFO, so the logger must pass INFO on (handlers keep their own levels).
        logger = logging.getLogger(PROXY_LOGGER)
        logger.addFilter(self._watch)
        if logger.getEffectiveLevel() > logging.INFO:
            logger.setLevel(logging.INFO)

    def done(self) -> None:
        logging.getLogger(PROXY_LOGGER).removeFilter(self._watch)

    def refused(self, peername: tuple, message: str) -> None:
        found = _BAD_LINE.search(message)
        engine = self.policy.engine
        if found is None or engine is None or self.recorder.writer is None:
            return
        line = ast.literal_eval(found.group(1)).decode("utf-8", "replace")
        parts = line.split()
        if len(parts) != 3:
            return  # no target to speak of: nothing was asked for
        method, target_text = parts[0].upper(), parts[1]
        url = f"https://{target_text}" if method == "CONNECT" else target_text
        if "://" not in url:
            return  # origin-form ("GET /x"): the Host header was never read
        who = self.identification.who_at(client_address(peername))
        try:
            decision = self.judge.decide(who, parse_target(url), method=method, url=url)
        except InvalidHost:
            scheme, _, rest = url.partition("://")
            host = rest.split("/", 1)[0].lower()
            verdict = Verdict(Action.BLOCK, Rule.MALFORMED, "the request was malformed and was refused", who.group.name,
                              matched=host)
            decision = Decision(who, Target(host, None, "/", "", scheme.lower()), verdict, method, url=url)
        if decision.verdict.action is not Action.BLOCK:
            decision.block(replace(decision.verdict, action=Action.BLOCK, rule=Rule.MALFORMED,
                                   reason="the request was malformed and was refused"))
        decision.note = NOTE
        self.recorder.record(decision, status=400)
