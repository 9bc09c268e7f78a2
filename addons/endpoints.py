"""The gateway's own endpoints, answered on whatever site a page was shown for:
"I understand, continue" on a warning, and the block page's "ask for access" form.

Ask-for-access is limited per device (a pupil holding the button down must not
fill the teachers' queue) and de-duplicated (the same page asked for again while
the first request waits is answered "already sent", not stored twice).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from datetime import UTC, datetime

from mitmproxy import http

from schoolgate.addons.decision import Outcome, Who, attach
from schoolgate.addons.judge import Judge
from schoolgate.addons.pages import REQUEST_ACCESS_PATH, my_requests_page, request_sent_page
from schoolgate.addons.policywatch import PolicyWatch
from schoolgate.addons.responses import branding, text
from schoolgate.addons.signing import MY_REQUESTS_PATH, PROCEED_PATH
from schoolgate.alerts import ACCESS_REQUEST, Alert, AlertDispatcher
from schoolgate.categories.taxonomy import Severity
from schoolgate.grants import requests_of
from schoolgate.urls import InvalidHost, Target, parse_target

log = logging.getLogger("schoolgate")

GO_BACK = "Go back to the block page and try again.\n"


class AccessRequestLimit:
    """At most `per_window` requests from one device in `window` seconds, and one per page."""

    def __init__(self, per_window: int = 5, window: float = 600.0, max_devices: int = 50_000):
        self.per_window, self.window, self.max_devices = per_window, window, max_devices
        self._sent: dict[str, deque[tuple[float, str]]] = {}

    def refusal(self, device: str, url: str, now: float | None = None) -> str | None:
        """Why this device may not ask for `url` now ("already sent", "too many"), or None."""
        sent = self._recent(device, time.monotonic() if now is None else now)
        if any(seen == url for _, seen in sent):
            return "already sent"
        return "too many" if len(sent) >= self.per_window else None

    def sent(self, device: str, url: str, now: float | None = None) -> None:
        now = time.monotonic() if now is None else now
        if len(self._sent) > self.max_devices:
            self._sent = {d: q for d, q in self._sent.items() if q and q[-1][0] > now - self.window}
        self._recent(device, now).append((now, url))

    def _recent(self, device: str, now: float) -> deque[tuple[float, str]]:
        sent = self._sent.setdefault(device, deque())
        while sent and sent[0][0] <= now - self.window:
            sent.popleft()
        return sent


class Endpoints:
    def __init__(self, policy: PolicyWatch, judge: Judge, alerts: Callable[[], AlertDispatcher | None] = lambda: None) -> None:
        self.policy = policy
        self.judge = judge
        self.limit = AccessRequestLimit()
        self.alerts = alerts  # the alert channels, once the Recorder has set them up

    def answers(self, flow: http.HTTPFlow, target: Target):
        """The handler for one of our endpoints, or None for an ordinary request."""
        if target.path == PROCEED_PATH:
            return self.proceed
        if target.path == REQUEST_ACCESS_PATH and flow.request.method == "POST":
            return self.request_access
        if target.path == MY_REQUESTS_PATH:
            return self.my_requests
        return None

    def my_requests(self, flow: http.HTTPFlow, who: Who, here: Target) -> None:
        """The pupil's own recent requests, by a link signed for this client and user only."""
        assert self.policy.signer is not None and self.policy.engine is not None
        # Only a page opened by the pupil: a script on a site (even one holding the link,
        # read from a block page on its own origin) cannot fetch it, frame it or read it.
        fetched = flow.request.headers.get("sec-fetch-mode", "navigate") != "navigate" or \
            flow.request.headers.get("sec-fetch-dest", "document") != "document"
        if fetched or not self.policy.signer.my_requests_allowed(who, here.query):
            flow.response = text(403, "This link is for another device or has expired. "
                                      "Open it again from a block page.\n")
            return
        engine = self.policy.engine
        brand = branding(engine.policy)
        page = my_requests_page(brand=brand, asked=requests_of(engine.live.requests, who.client_ip, who.user),
                                now=datetime.now(UTC))
        headers = brand.headers()
        headers["Content-Security-Policy"] += "; frame-ancestors 'none'; sandbox"  # an opaque origin: unreadable to the site
        flow.response = http.Response.make(200, page, {**headers, "X-Frame-Options": "DENY"})

    def proceed(self, flow: http.HTTPFlow, who: Who, here: Target) -> None:
        """'I understand, continue': check the signed link, remember, record, and redirect."""
        assert self.policy.signer is not None
        to = self.policy.signer.proceed_destination(who, here.host, here.query) or ""
        try:
            destination = parse_target(to) if to else None
        except InvalidHost:
            destination = None
        if destination is None or destination.host != here.host:
            flow.response = text(400, "This link has expired. Go back and try again.\n")
            return
        decision = self.judge.decide(who, destination, method=flow.request.method, url=to)
        decision.outcome = Outcome.PROCEED
        attach(flow, decision)
        cookie = self.policy.signer.acknowledgement_cookie(who, here.host, secure=here.scheme == "https")
        flow.response = http.Response.make(303, b"", {"Location": to, "Cache-Control": "no-store", "Set-Cookie": cookie})

    def _notify(self, who: Who, request_id: int, categories: tuple[str, ...]) -> None:
        """Tell teachers and IT on the alert channels: the group and categories and a link
        to the console; the pupil's name and the address stay behind its login."""
        alerts = self.alerts()
        if alerts is None:
            return
        asked_for = f"a site listed as {', '.join(categories)}" if categories else "a blocked site"
        alerts.submit(Alert(record_ref=f"request-{request_id}", time=datetime.now(UTC), risk=ACCESS_REQUEST,
                            severity=Severity.NONE, group=who.group.name, user_key=who.user or who.client_ip,
                            summary=f"a pupil in group {who.group.title} asked for {asked_for}; decide in the console"))

    async def request_access(self, flow: http.HTTPFlow, who: Who, here: Target) -> None:
        """The block page's "ask for access" form: store the request for a teacher or IT."""
        assert self.policy.signer is not None and self.policy.engine is not None and self.policy.live_store is not None
        form = flow.request.urlencoded_form
        url, reference, sig = form.get("url", ""), form.get("ref", ""), form.get("sig", "")
        reason = form.get("reason", "").strip()
        if not reason or not self.policy.signer.request_valid(who, url, reference, sig):
            flow.response = text(400, GO_BACK)
            return
        try:
            target = parse_target(url)
        except InvalidHost:
            flow.response = text(400, GO_BACK)
            return
        engine = self.policy.engine
        categories = tuple(sorted(engine.listed_categories(target)))
        device, page_url = f"{who.client_ip}\0{who.user}", target.url()
        refused = self.limit.refusal(device, page_url)
        if refused == "too many":
            flow.response = text(429, "You have asked for several pages already. Please wait, or ask your teacher.\n")
            return
        if refused is None:
            try:
                request_id = await self.policy.live_store.create_request(
                    ref=reference, client_ip=who.client_ip, username=who.user, group=who.group.name,
                    url=url, host=target.host, categories=categories, reason=reason,
                )
            except Exception as e:  # the request must not vanish without the pupil knowing
                log.error("could not store an access request (%s)", type(e).__name__)
                flow.response = text(503, "Your request could not be sent. Please tell your teacher.\n")
                return
            self.limit.sent(device, page_url)
            self._notify(who, request_id, categories)
        page = request_sent_page(brand=branding(engine.policy), url=url, categories=categories,
                                 when=datetime.now(UTC), reference=reference,
                                 my_requests_href=self.policy.signer.my_requests_link(who))
        flow.response = http.Response.make(200, page, branding(engine.policy).headers())
