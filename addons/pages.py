"""The pages the gateway shows in place of a site: the block page and the warning.

Everything a page echoes (URL, host, reason, school name) is HTML-escaped: the
URL is attacker-controlled, and a block page must never become an XSS vector on
the blocked site's origin.
"""

from __future__ import annotations

import html
from datetime import datetime
from importlib.resources import files
from string import Template

from schoolgate.categories.taxonomy import CATEGORIES

REQUEST_ACCESS_PATH = "/.well-known/schoolgate/request-access"

_TEMPLATE = Template(files("schoolgate.addons").joinpath("templates/page.html").read_text(encoding="utf-8"))
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


def support_for(risk: str | None) -> str:
    """Help to show for a safeguarding risk (empty when there is none)."""
    return _SUPPORT.get(risk or "", "")


def _category_titles(categories: tuple[str, ...]) -> str:
    if not categories:
        return "—"
    return ", ".join(CATEGORIES[c].title if c in CATEGORIES else c for c in categories)


def _shown_url(url: str) -> str:
    return url if len(url) <= _MAX_URL_SHOWN else url[:_MAX_URL_SHOWN] + "…"


def render(
    *,
    title: str,
    message: str,
    colour: str,
    school: str,
    contact: str,
    url: str,
    categories: tuple[str, ...],
    reason: str,
    when: datetime,
    reference: str,
    actions_html: str = "",
) -> str:
    """Fill the page template; every value is escaped except `actions_html`,
    which callers build from escaped parts."""
    e = html.escape
    return _TEMPLATE.substitute(
        title=e(title),
        message=e(message),
        colour=colour,
        school=e(school),
        contact=e(contact),
        url=e(_shown_url(url)),
        categories=e(_category_titles(categories)),
        reason=e(reason),
        time=e(when.astimezone().strftime("%d %b %Y, %H:%M:%S %Z")),
        reference=e(reference),
        actions=actions_html,
    )


def block_page(*, school: str, contact: str, url: str, categories: tuple[str, ...], reason: str, when: datetime,
               reference: str, request_fields: dict[str, str] | None = None, support: str = "") -> str:
    """The block page; with `request_fields` (signed hidden fields) it offers "ask for access";
    `support` is help for a pupil who may be at risk, shown first."""
    actions = f'<p class="support">{html.escape(support)}</p>' if support else ""
    if request_fields is not None:
        hidden = "".join(
            f'<input type="hidden" name="{html.escape(k, quote=True)}" value="{html.escape(v, quote=True)}">'
            for k, v in request_fields.items()
        )
        actions += (
            f'<form class="request" method="post" action="{REQUEST_ACCESS_PATH}">{hidden}'
            '<label for="reason">Need this page for your work? Tell your teacher why:</label>'
            '<textarea id="reason" name="reason" maxlength="500" rows="3" required></textarea>'
            '<button type="submit">Ask for access</button></form>'
        )
    return render(
        title="This page is blocked",
        message="The school's internet filter has blocked this page.",
        colour="#b42318",
        school=school,
        contact=contact,
        url=url,
        categories=categories,
        reason=reason,
        when=when,
        reference=reference,
        actions_html=actions,
    )


def request_sent_page(*, school: str, contact: str, url: str, categories: tuple[str, ...], when: datetime, reference: str) -> str:
    return render(
        title="Request sent",
        message="Your request has been sent to your teacher and the IT team. "
        "If it is approved, the page will open for you; try again later.",
        colour="#175cd3",
        school=school,
        contact=contact,
        url=url,
        categories=categories,
        reason="waiting for a teacher or IT to decide",
        when=when,
        reference=reference,
    )


def warning_page(*, school: str, contact: str, url: str, categories: tuple[str, ...], reason: str, when: datetime, reference: str, proceed_href: str) -> str:
    actions = f'<p class="actions"><a href="{html.escape(proceed_href, quote=True)}">I understand, continue</a></p>'
    return render(
        title="Think before you continue",
        message="This page may not be suitable for school. You can continue, and your visit will be recorded.",
        colour="#b54708",
        school=school,
        contact=contact,
        url=url,
        categories=categories,
        reason=reason,
        when=when,
        reference=reference,
        actions_html=actions,
    )
