"""Safeguarding alerts to the school's Designated Safeguarding Lead (DSL) by
SMTP email and webhooks: generic JSON, Microsoft Teams (an Adaptive Card) and
Google Chat (text and a card), each its own channel.

An alert says only what the DSL needs to act: severity, risk, group, time and
a link to the record in the review console. The pupil's name, the URL and the
search term stay in the console, behind its login; `user_key` is used here
only to de-duplicate and is never sent.

`submit` never blocks the proxy: it filters (severity, de-duplication per user
and risk, a global hourly cap) and queues. A background task sends each alert
on every configured channel, retrying with exponential backoff. `remind` queues
a reminder about an incident still unreviewed (schoolgate.reports.reminders)
without those filters: it was alerted once already and nobody has looked.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import smtplib
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from typing import Any
from urllib.parse import urljoin, urlsplit

import httpx

from schoolgate.categories.taxonomy import Severity
from schoolgate.flags import risk_title
from schoolgate.policy import AlertSettings, EmailSettings

log = logging.getLogger(__name__)

_HOUR_S = 3600.0
# Past this many remembered (user, risk) pairs, expired ones are pruned.
_PRUNE_AT = 4096
# The "risk" of a pupil's new access request: a notice for teachers and IT, not a
# safeguarding flag, so sent whatever min_severity says; it links to the requests page.
ACCESS_REQUEST = "access-request"


@dataclass(frozen=True)
class Alert:
    record_ref: str  # an id the review console can open
    time: datetime
    risk: str
    severity: Severity
    group: str
    user_key: str  # user name or client IP: de-duplication only, never sent
    summary: str  # no URL, no search term, no name
    reminder: int = 0  # 0: the first alert; n: the nth reminder that it is still unreviewed


def redact_url(url: str) -> str:
    """A URL fit for logs: scheme, host and path; no credentials or query string."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def alert_fields(alert: Alert, console_url: str) -> dict[str, str]:
    """Everything an alert message carries, by name."""
    request = alert.risk == ACCESS_REQUEST
    return {
        "severity": alert.severity.name,
        "risk": alert.risk,
        "risk_title": "New access request" if request else risk_title(alert.risk),
        "group": alert.group,
        "time": alert.time.isoformat(timespec="seconds"),
        "summary": alert.summary,
        # console_url is the incidents page (…/incidents/); requests are beside it
        "link": urljoin(console_url, "../requests") if request else console_url + alert.record_ref,
        "reminder": str(alert.reminder),
    }


def headline(fields: dict[str, str]) -> str:
    """One line naming the alert: its severity and risk, and whether it is a reminder."""
    if fields["risk"] == ACCESS_REQUEST:
        return f"{fields['risk_title']} waiting"
    still = " still unreviewed" if fields["reminder"] != "0" else ""
    return f"{fields['severity']} safeguarding alert{still}: {fields['risk_title']}"


def _facts(fields: dict[str, str]) -> list[tuple[str, str]]:
    return [("Severity", fields["severity"]), ("Risk", fields["risk_title"]), ("Group", fields["group"]),
            ("Time", fields["time"]), ("Summary", fields["summary"])]


def json_payload(fields: dict[str, str]) -> dict[str, Any]:
    """The generic webhook's body: the fields by name, the reminder number as a number."""
    return {**fields, "reminder": int(fields["reminder"])}


def teams_payload(fields: dict[str, str]) -> dict[str, Any]:
    """A message with one Adaptive Card, as Teams incoming webhooks and Workflows'
    "when a Teams webhook request is received" take it."""
    card = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": [
            {"type": "TextBlock", "text": headline(fields), "weight": "Bolder", "size": "Medium", "wrap": True},
            {"type": "FactSet", "facts": [{"title": title, "value": value} for title, value in _facts(fields)]},
        ],
        "actions": [{"type": "Action.OpenUrl", "title": "Review in the console", "url": fields["link"]}],
    }
    return {"type": "message", "attachments": [
        {"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None, "content": card}]}


def google_chat_payload(fields: dict[str, str]) -> dict[str, Any]:
    """A Google Chat incoming-webhook message: `text` (shown in notifications) and a cardsV2 card."""
    widgets: list[dict[str, Any]] = [{"decoratedText": {"topLabel": title, "text": value, "wrapText": True}}
                                     for title, value in _facts(fields)]
    widgets.append({"buttonList": {"buttons": [
        {"text": "Review in the console", "onClick": {"openLink": {"url": fields["link"]}}}]}})
    return {
        "text": f"{headline(fields)} ({fields['group']}). Review it in the console: {fields['link']}",
        "cardsV2": [{"cardId": "schoolgate-alert", "card": {
            "header": {"title": headline(fields), "subtitle": f"{fields['group']}, {fields['time']}"},
            "sections": [{"widgets": widgets}],
        }}],
    }


# Each webhook channel: its [alerts.NAME] section and the body it is sent.
WEBHOOK_FORMATS: dict[str, Callable[[dict[str, str]], dict[str, Any]]] = {
    "webhook": json_payload, "teams": teams_payload, "google_chat": google_chat_payload}


def email_message(alert: Alert, settings: AlertSettings) -> EmailMessage:
    fields = alert_fields(alert, settings.console_url)
    message = EmailMessage()
    message["Subject"] = f"[schoolgate] {headline(fields)}"
    message["From"] = settings.email.sender
    message["To"] = ", ".join(settings.email.to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=settings.email.sender.rpartition("@")[2] or None)
    opening = ("A pupil asked for a blocked site." if alert.risk == ACCESS_REQUEST
               else f"A safeguarding alert was raised{' and is still unreviewed' if alert.reminder else ''}.")
    message.set_content(
        f"{opening}\n\n"
        f"Severity: {fields['severity']}\n"
        f"Risk: {fields['risk_title']}\n"
        f"Group: {fields['group']}\n"
        f"Time: {fields['time']}\n"
        f"Summary: {fields['summary']}\n\n"
        f"Review it in the console: {fields['link']}\n"
    )
    return message


class AlertDispatcher:
    """Filters, queues and delivers alerts; run `start()` inside the event loop."""

    def __init__(self, settings: AlertSettings, *, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self._clock = clock
        self._queue: asyncio.Queue[Alert] = asyncio.Queue()
        self._last_alert: dict[tuple[str, str], float] = {}
        self._sent_times: deque[float] = deque()
        self._deliveries: set[asyncio.Task[None]] = set()
        self._worker: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._closed = False

    def submit(self, alert: Alert) -> bool:
        """Queue an alert unless it is below the threshold, a repeat for this user
        and risk within the window, or over the hourly cap. Never blocks."""
        if self._closed or (alert.severity < self.settings.min_severity and alert.risk != ACCESS_REQUEST):
            return False
        now = self._clock()
        key = (alert.user_key, alert.risk)
        last = self._last_alert.get(key)
        if last is not None and now - last < self.settings.per_user_window_s:
            return False
        while self._sent_times and now - self._sent_times[0] >= _HOUR_S:
            self._sent_times.popleft()
        if len(self._sent_times) >= self.settings.max_per_hour:
            log.warning("alert %s dropped: %d alerts in the last hour", alert.record_ref, len(self._sent_times))
            return False
        self._sent_times.append(now)
        self._last_alert[key] = now
        if len(self._last_alert) > _PRUNE_AT:
            window = self.settings.per_user_window_s
            self._last_alert = {k: t for k, t in self._last_alert.items() if now - t < window}
        self._queue.put_nowait(alert)
        return True

    def remind(self, alert: Alert) -> bool:
        """Queue a reminder: no threshold, de-duplication or cap (the caller decides when one is due)."""
        if self._closed:
            return False
        self._queue.put_nowait(alert)
        return True

    def start(self) -> asyncio.Task[None]:
        if self._worker is None:
            self._worker = asyncio.create_task(self.run(), name="schoolgate-alerts")
        return self._worker

    async def run(self) -> None:
        """Send queued alerts until cancelled; each alert is delivered in its own task
        so one failing channel's backoff does not hold up the next alert."""
        self._client = httpx.AsyncClient(timeout=self.settings.send_timeout_s)
        while True:
            alert = await self._queue.get()
            task = asyncio.create_task(self._deliver(alert))
            self._deliveries.add(task)
            task.add_done_callback(self._deliveries.discard)

    async def close(self, timeout: float = 30.0) -> None:
        """Stop accepting alerts, wait up to `timeout` seconds for queued ones to be
        sent, then give up on the rest."""
        self._closed = True
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            log.error("%d alerts not delivered before shutdown", self._queue.qsize() + len(self._deliveries))
        tasks = [t for t in (self._worker, *self._deliveries) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._client is not None:
            await self._client.aclose()

    async def _deliver(self, alert: Alert) -> None:
        try:
            channels: list[tuple[str, Callable[[], Awaitable[object]]]] = []
            if self.settings.email.host and self.settings.email.to:
                message = email_message(alert, self.settings)
                channels.append(("email", lambda: asyncio.to_thread(self._send_email, message)))
            for name, build in WEBHOOK_FORMATS.items():
                url = getattr(self.settings, name).url
                if url:
                    body = build(alert_fields(alert, self.settings.console_url))
                    channels.append((f"{name} {redact_url(url)}", functools.partial(self._post_webhook, url, body)))
            await asyncio.gather(*(self._with_retry(alert, name, send) for name, send in channels))
        finally:
            self._queue.task_done()

    async def _with_retry(self, alert: Alert, channel: str, send: Callable[[], Awaitable[object]]) -> None:
        delay = self.settings.retry_initial_s
        for attempt in range(1, self.settings.max_attempts + 1):
            try:
                await send()
                return
            except (OSError, smtplib.SMTPException, httpx.HTTPError) as error:
                # Only the error type and status: exception text can hold the webhook URL.
                log.warning(
                    "alert %s by %s failed (attempt %d of %d): %s",
                    alert.record_ref,
                    channel,
                    attempt,
                    self.settings.max_attempts,
                    _describe(error),
                )
            if attempt < self.settings.max_attempts:
                await asyncio.sleep(delay)
                delay *= 2
        log.error("alert %s by %s abandoned after %d attempts", alert.record_ref, channel, self.settings.max_attempts)

    def _send_email(self, message: EmailMessage) -> None:
        send_email(self.settings.email, message, self.settings.send_timeout_s)

    async def _post_webhook(self, url: str, body: dict[str, Any]) -> None:
        assert self._client is not None
        response = await self._client.post(url, json=body)
        response.raise_for_status()


def send_email(email: EmailSettings, message: EmailMessage, timeout_s: float) -> None:
    """One message through the SMTP server `email` names (STARTTLS and sign-in as it says)."""
    with smtplib.SMTP(email.host, email.port, timeout=timeout_s) as smtp:
        if email.starttls:
            smtp.starttls(context=ssl.create_default_context())
        if email.user:
            smtp.login(email.user, email.password)
        smtp.send_message(message)


async def send_once(alert: Alert, settings: AlertSettings) -> list[tuple[str, str]]:
    """Send one alert on every configured channel, once, without retrying (the self-check's
    test alert): each channel with "" when it was accepted, else why not (no secrets)."""
    results: list[tuple[str, str]] = []
    if settings.email.host and settings.email.to:
        try:
            await asyncio.to_thread(send_email, settings.email, email_message(alert, settings), settings.send_timeout_s)
            results.append((f"email to {', '.join(settings.email.to)}", ""))
        except (OSError, smtplib.SMTPException) as error:
            results.append((f"email to {', '.join(settings.email.to)}", _describe(error)))
    if settings.webhook.url:
        channel = f"webhook {redact_url(settings.webhook.url)}"
        try:
            async with httpx.AsyncClient(timeout=settings.send_timeout_s) as client:
                response = await client.post(settings.webhook.url, json=alert_fields(alert, settings.console_url))
                response.raise_for_status()
            results.append((channel, ""))
        except httpx.HTTPError as error:
            results.append((channel, _describe(error)))
    return results


def _describe(error: Exception) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    if isinstance(error, smtplib.SMTPResponseException):
        return f"SMTP {error.smtp_code}"
    return type(error).__name__
