"""Signed links and cookies: the warning's "I understand, continue" link, the
acknowledgement cookie it leaves, and the block page's ask-for-access form.

Each signature binds what it opens to this client (address and user) with the
gateway secret shared by every gateway process, so another page cannot forge one.
Signatures are compared as bytes: a forged value may hold any character.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from urllib.parse import parse_qs, urlencode

from schoolgate.addons.decision import Who

PROCEED_PATH = "/.well-known/schoolgate/proceed"
# Remembered in a cookie on the warned site, removed before requests go upstream.
ACK_COOKIE = "schoolgate_ack"
WARNING_ACKNOWLEDGED_SECONDS = 30 * 60
PROCEED_LINK_SECONDS = 15 * 60  # the warning page stays usable for a lesson-sized while
MY_REQUESTS_PATH = "/.well-known/schoolgate/my-requests"
MY_REQUESTS_LINK_SECONDS = 24 * 60 * 60
# Marks the self-check's own requests (reports/probes.py), so its visits to listed sites are
# recorded as probes, not as a pupil's flagged access that raises incidents and alerts.
PROBE_HEADER = "X-Schoolgate-Probe"
PROBE_SECONDS = 2 * 60


class Signer:
    def __init__(self, secret: bytes):
        self.secret = secret

    def sign(self, who: Who, *parts: object) -> str:
        return self._mac(who.client_ip, who.user, *parts)

    def _mac(self, *parts: object) -> str:
        message = "\0".join(map(str, parts)).encode("utf-8", "surrogatepass")
        return hmac.new(self.secret, message, hashlib.sha256).hexdigest()[:32]

    def valid(self, signature: str, who: Who, *parts: object) -> bool:
        given = signature.encode("utf-8", "surrogatepass")
        return hmac.compare_digest(given, self.sign(who, *parts).encode())

    # --- the warning page ---------------------------------------------------------

    def proceed_link(self, who: Who, host: str, url: str, now: float | None = None) -> str:
        """The link that lets this pupil continue to `url` on `host`; signs both, so
        it can neither open another site nor redirect anywhere else."""
        expires = int(now or time.time()) + PROCEED_LINK_SECONDS
        query = urlencode({"to": url, "exp": expires, "sig": self.sign(who, "proceed", host, url, expires)})
        return f"{PROCEED_PATH}?{query}"

    def proceed_destination(self, who: Who, host: str, query: str, now: float | None = None) -> str | None:
        """The URL a proceed link on `host` leads to, if its signature holds and it has not expired."""
        args = parse_qs(query)
        to, expires, sig = (args.get(k, [""])[0] for k in ("to", "exp", "sig"))
        if not (expires.isdigit() and int(expires) > (now or time.time())):
            return None
        return to if self.valid(sig, who, "proceed", host, to, int(expires)) else None

    def acknowledgement_cookie(self, who: Who, host: str, secure: bool, now: float | None = None) -> str:
        until = str(int(now or time.time()) + WARNING_ACKNOWLEDGED_SECONDS)
        return (f"{ACK_COOKIE}={until}.{self.sign(who, 'ack', host, until)}; Path=/; "
                f"Max-Age={WARNING_ACKNOWLEDGED_SECONDS}; HttpOnly; SameSite=Lax" + ("; Secure" if secure else ""))

    def acknowledged(self, who: Who, host: str, cookie: str | None, now: float | None = None) -> bool:
        """Whether this pupil chose to continue past this site's warning lately."""
        expires, _, sig = (cookie or "").partition(".")
        if not (expires.isdigit() and int(expires) > (now or time.time())):
            return False
        return self.valid(sig, who, "ack", host, expires)

    # --- the block page's ask-for-access form --------------------------------------

    def request_fields(self, who: Who, url: str, reference: str) -> dict[str, str]:
        return {"url": url, "ref": reference, "sig": self.sign(who, "request", url, reference)}

    def request_valid(self, who: Who, url: str, reference: str, sig: str) -> bool:
        return self.valid(sig, who, "request", url, reference)

    # --- "my requests" ----------------------------------------------------------------

    def my_requests_link(self, who: Who, now: float | None = None) -> str:
        """The link to this pupil's own requests: it opens only for the same client and user,
        so a link passed on (or fetched by another site's script) shows nobody's requests."""
        expires = int(now or time.time()) + MY_REQUESTS_LINK_SECONDS
        return f"{MY_REQUESTS_PATH}?{urlencode({'exp': expires, 'sig': self.sign(who, 'my-requests', expires)})}"

    def my_requests_allowed(self, who: Who, query: str, now: float | None = None) -> bool:
        args = parse_qs(query)
        expires, sig = (args.get(k, [""])[0] for k in ("exp", "sig"))
        if not (expires.isdigit() and int(expires) > (now or time.time())):
            return False
        return self.valid(sig, who, "my-requests", int(expires))

    # --- the self-check's probes --------------------------------------------------------

    def probe_token(self, host: str, now: float | None = None) -> str:
        """The `PROBE_HEADER` value for one probe to `host`. It binds no client: the probe's
        address is whatever the host running the self-check uses."""
        expires = int(now or time.time()) + PROBE_SECONDS
        return f"{expires}.{self._mac('probe', host, expires)}"

    def is_probe(self, host: str, token: str, now: float | None = None) -> bool:
        expires, _, sig = token.partition(".")
        if not (expires.isdigit() and int(expires) > (now or time.time())):
            return False
        return hmac.compare_digest(sig.encode("utf-8", "surrogatepass"), self._mac("probe", host, int(expires)).encode())
