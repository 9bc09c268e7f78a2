"""Safeguarding alerts to the school's Designated Safeguarding Lead (DSL) by
SMTP email and/or a generic JSON webhook.

An alert says only what the DSL needs to act: severity, risk, group, time and
a link to the record in the review console. The pupil's name, the URL and the
search term stay in the console, behind its login; `user_key` is used here
only to de-duplicate and is never sent.

`submit` never blocks the proxy: it filters (severity, de-duplication per user
and risk, a global hourly cap) and queues. A background task sends each alert
on every configured channel, retrying with exponential backoff.
"""

from __future__ import annotations

import asyncio
import logging
import smtplib
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import urlsplit

import httpx

from schoolgate.categories.taxonomy import Severity
from schoolgate.flags import risk_title

log = logging.getLogger(__name__)

_HOUR_S = 3600.0
# Past this many remembered (user, risk) pairs, expired ones are pruned.
_PRUNE_AT = 4096


@dataclass(frozen=True)
class Alert:
    record_ref: str  # an id the review console can open
    time: datetime
    risk: str
    severity: Severity
    group: str
    user_key: str  # user name or client IP: de-duplication only, never sent
    summary: str  # no URL, no search term, no name


@dataclass(kw_only=True)
class AlertSettings:
    console_url: str  # base link; the record_ref is appended
    smtp_host: str | None = None
    smtp_port: int = 25
    smtp_from: str = "schoolgate@localhost"
    smtp_to: list[str] = field(default_factory=list)
    smtp_starttls: bool = False
    smtp_user: str | None = None
    smtp_password: str | None = field(default=None, repr=False)
    webhook_url: str | None = field(default=None, repr=False)  # may carry a token
    min_severity: Severity = Severity.HIGH
    per_user_window_s: int = 900
    max_per_hour: int = 60
    max_attempts: int = 5
    retry_initial_s: float = 2.0  # doubles after each failed attempt
    send_timeout_s: float = 10.0


def redact_url(url: str) -> str:
    """A URL fit for logs: scheme, host and path; no credentials or query string."""
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}{parts.path}"


def alert_fields(alert: Alert, console_url: str) -> dict[str, str]:
    """Everything an alert message carries, by name."""
    return {
        "severity": alert.severity.name,
        "risk": alert.risk,
        "risk_title": risk_title(alert.risk),
        "group": alert.group,
        "time": alert.time.isoformat(timespec="seconds"),
        "summary": alert.summary,
        "link": console_url + alert.record_ref,
    }


def email_message(alert: Alert, settings: AlertSettings) -> EmailMessage:
    fields = alert_fields(alert, settings.console_url)
    message = EmailMessage()
    message["Subject"] = f"[schoolgate] {fields['severity']} safeguarding alert: {fields['risk_title']}"
    message["From"] = settings.smtp_from
    message["To"] = ", ".join(settings.smtp_to)
    message["Date"] = formatdate(localtime=False)
    message["Message-ID"] = make_msgid(domain=settings.smtp_from.rpartition("@")[2] or None)
    message.set_content(
        "A safeguarding alert was raised.\n\n"
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
        if self._closed or alert.severity < self.settings.min_severity:
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
            if self.settings.smtp_host and self.settings.smtp_to:
                message = email_message(alert, self.settings)
                channels.append(("email", lambda: asyncio.to_thread(self._send_email, message)))
            if self.settings.webhook_url:
                channels.append((f"webhook {redact_url(self.settings.webhook_url)}", lambda: self._post_webhook(alert)))
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
        s = self.settings
        assert s.smtp_host is not None
        with smtplib.SMTP(s.smtp_host, s.smtp_port, timeout=s.send_timeout_s) as smtp:
            if s.smtp_starttls:
                smtp.starttls(context=ssl.create_default_context())
            if s.smtp_user:
                smtp.login(s.smtp_user, s.smtp_password or "")
            smtp.send_message(message)

    async def _post_webhook(self, alert: Alert) -> None:
        assert self._client is not None and self.settings.webhook_url is not None
        response = await self._client.post(self.settings.webhook_url, json=alert_fields(alert, self.settings.console_url))
        response.raise_for_status()


def _describe(error: Exception) -> str:
    if isinstance(error, httpx.HTTPStatusError):
        return f"HTTP {error.response.status_code}"
    if isinstance(error, smtplib.SMTPResponseException):
        return f"SMTP {error.smtp_code}"
    return type(error).__name__
