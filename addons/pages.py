"""The pages the gateway shows in place of a site: the block page, the warning and
"request sent", rendered through Jinja2 with autoescaping.

Everything a page echoes (URL, host, reason, school name) is escaped by the
template engine: the URL is attacker-controlled, and a block page must never
become an XSS vector on the blocked site's origin.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from urllib.parse import urlsplit

import jinja2

from schoolgate.categories.taxonomy import CATEGORIES
from schoolgate.grants import AskedFor

REQUEST_ACCESS_PATH = "/.well-known/schoolgate/request-access"

TEMPLATES = jinja2.Environment(  # every page the gateway shows: block, warning, sign-in, requests
    loader=jinja2.PackageLoader("schoolgate.addons", "templates"),
    autoescape=True,
    undefined=jinja2.StrictUndefined,  # a misspelt field is a bug, not an empty line on the page
)
# Long URLs are cut for display only; the record keeps what the policy says to keep.
_MAX_URL_SHOWN = 300

SECURITY_HEADERS = {
    "Content-Type": "text/html; charset=utf-8",
    "Cache-Control": "no-store",
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


# Shown on a page blocked for a safeguarding reason: a pupil searching for how to
# hurt themselves needs a way to reach help more than a refusal.
_SUPPORT = {
    "self-harm": "If you are struggling, you are not alone. Talk to someone you trust, "
    "call Childline free on 0800 1111, or Samaritans on 116 123, any time, day or night.",
    "sexual-exploitation": "If someone online is making you feel uncomfortable or asking for pictures, "
    "tell a trusted adult, call Childline free on 0800 1111, or report it to CEOP.",
    "bullying": "If someone is bullying you, tell a trusted adult or call Childline free on 0800 1111.",
}


@dataclass(frozen=True, slots=True)
class Branding:
    """The school's name, contact and, optionally, its logo and own words on every page."""

    school: str
    contact: str
    logo_url: str = ""
    block_message: str = "The school's internet filter has blocked this page."
    warning_message: str = "This page may not be suitable for school. You can continue, and your visit will be recorded."
    footer: str = ""

    def headers(self) -> dict[str, str]:
        """Security headers; the logo's origin is the only other source a page may load."""
        if not self.logo_url:
            return dict(SECURITY_HEADERS)
        parts = urlsplit(self.logo_url)
        source = "data:" if parts.scheme == "data" else f"{parts.scheme}://{parts.netloc}"
        return {**SECURITY_HEADERS,
                "Content-Security-Policy": SECURITY_HEADERS["Content-Security-Policy"] + f"; img-src {source}"}


def support_for(risk: str | None) -> str:
    """Help to show for a safeguarding risk (empty when there is none)."""
    return _SUPPORT.get(risk or "", "")


def _category_titles(categories: tuple[str, ...]) -> str:
    if not categories:
        return "—"
    return ", ".join(CATEGORIES[c].title if c in CATEGORIES else c for c in categories)


def _shown_url(url: str) -> str:
    return url if len(url) <= _MAX_URL_SHOWN else url[:_MAX_URL_SHOWN] + "…"


def _at(moment: datetime, now: datetime) -> str:
    local = moment.astimezone()
    return f"{local:%H:%M}" if local.date() == now.astimezone().date() else f"{local:%H:%M} on {local:%d %b}"


def outcome(asked: AskedFor, now: datetime) -> str:
    """What became of a pupil's request, in their words: waiting, open until when, or refused and why."""
    if asked.status == "pending":
        return f"Waiting for a teacher or IT (asked at {_at(asked.created_at, now)})."
    by = asked.decided_by or "a member of staff"
    note = f": “{asked.note}”" if asked.note else "."
    if asked.status == "approved":
        if asked.open_until is None or asked.open_until <= now:
            return f"Approved by {by}; it ended at {_at(asked.open_until or now, now)}{note}"
        return f"Approved by {by} until {_at(asked.open_until, now)}{note}"
    return f"Refused by {by}{note}"


def render(*, title: str, message: str, colour: str, brand: Branding, url: str, categories: tuple[str, ...],
           reason: str, when: datetime, reference: str, support: str = "", proceed_href: str = "",
           request_fields: dict[str, str] | None = None, askable: bool = True, asked: str = "",
           my_requests_href: str = "") -> str:
    return TEMPLATES.get_template("page.html").render(
        askable=askable, asked=asked, my_requests_href=my_requests_href,
        title=title, message=message, colour=colour, school=brand.school, contact=brand.contact,
        logo_url=brand.logo_url, footer=brand.footer, url=_shown_url(url),
        categories=_category_titles(categories), reason=reason,
        time=when.astimezone().strftime("%d %b %Y, %H:%M:%S %Z"), reference=reference,
        support=support, proceed_href=proceed_href, request_fields=request_fields or {},
        request_action=REQUEST_ACCESS_PATH,
    )


# The illegal-content tier (IWF, CTIRU): nobody at school can open it, so nothing suggests asking.
ILLEGAL_TITLE = "This page is blocked by law"
ILLEGAL_MESSAGE = ("This address is on a list of illegal content that every school in the UK must block. "
                   "Nobody at school can unblock it. If something online has worried or upset you, "
                   "talk to a teacher you trust or call Childline on 0800 1111.")


def block_page(*, brand: Branding, url: str, categories: tuple[str, ...], reason: str, when: datetime,
               reference: str, request_fields: dict[str, str] | None = None, support: str = "",
               illegal: bool = False, asked: AskedFor | None = None, my_requests_href: str = "") -> str:
    """The block page; with `request_fields` (signed hidden fields) it offers "ask for access";
    `support` is help for a pupil who may be at risk, shown first; `illegal` is the
    illegal-content tier's wording (never with a request form). `asked` is the pupil's
    latest request for this site: its outcome is shown, and while it waits no second form."""
    if illegal:
        return render(title=ILLEGAL_TITLE, message=ILLEGAL_MESSAGE, colour="#b42318", brand=brand, url=url,
                      categories=categories, reason=reason, when=when, reference=reference, support="",
                      request_fields=None, askable=False)
    waiting = asked is not None and asked.status == "pending"
    return render(title="This page is blocked", message=brand.block_message, colour="#b42318", brand=brand,
                  url=url, categories=categories, reason=reason, when=when, reference=reference,
                  support=support, request_fields=None if waiting else request_fields,
                  asked=outcome(asked, when) if asked else "", my_requests_href=my_requests_href)


def request_sent_page(*, brand: Branding, url: str, categories: tuple[str, ...], when: datetime, reference: str,
                      my_requests_href: str = "") -> str:
    return render(title="Request sent",
                  message="Your request has been sent to your teacher and the IT team. "
                  "If it is approved, the page will open for you; try again later.",
                  colour="#175cd3", brand=brand, url=url, categories=categories,
                  reason="waiting for a teacher or IT to decide", when=when, reference=reference,
                  my_requests_href=my_requests_href)


def my_requests_page(*, brand: Branding, asked: list[AskedFor], now: datetime) -> str:
    """The pupil's own recent requests and what became of each."""
    return TEMPLATES.get_template("my_requests.html").render(
        school=brand.school, logo_url=brand.logo_url, footer=brand.footer, contact=brand.contact,
        rows=[(a.host, _at(a.created_at, now), outcome(a, now)) for a in asked])


def warning_page(*, brand: Branding, url: str, categories: tuple[str, ...], reason: str, when: datetime,
                 reference: str, proceed_href: str) -> str:
    return render(title="Think before you continue", message=brand.warning_message, colour="#b54708", brand=brand,
                  url=url, categories=categories, reason=reason, when=when, reference=reference,
                  proceed_href=proceed_href)
