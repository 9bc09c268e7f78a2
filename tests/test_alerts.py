"""Alerts reach a real SMTP server and webhook on loopback, carry the console
link but nothing personal, and are de-duplicated, capped and retried."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime

import pytest

from schoolgate.alerts import Alert, AlertDispatcher, redact_url
from schoolgate.categories.taxonomy import Severity
from schoolgate.policy import AlertSettings, EmailSettings, WebhookSettings

from support.alerts import SmtpSink, WebhookReceiver, free_port

CONSOLE = "https://console.school.example/incidents/"
PUPIL = "jsmith.year9"
SEARCH = "how to kill myself"


def alert(ref: str = "rec-42", *, user: str = PUPIL, risk: str = "self-harm", severity: Severity = Severity.CRITICAL) -> Alert:
    return Alert(
        record_ref=ref,
        time=datetime(2026, 11, 23, 10, 15, tzinfo=UTC),
        risk=risk,
        severity=severity,
        group="Year 9",
        user_key=user,
        summary="Search matched a high-risk self-harm phrase",
    )


def settings(**overrides: object) -> AlertSettings:
    values: dict[str, object] = {"console_url": CONSOLE, "retry_initial_s": 0.05, "send_timeout_s": 2.0}
    values.update(overrides)
    return AlertSettings(**values)  # type: ignore[arg-type]



class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_email_and_webhook_carry_the_link_and_nothing_personal() -> None:
    async def scenario() -> tuple[SmtpSink, WebhookReceiver]:
        smtp, hook = await SmtpSink().start(), await WebhookReceiver().start()
        dispatcher = AlertDispatcher(
            settings(email=EmailSettings(host="127.0.0.1", port=smtp.port, to=("dsl@school.example",)),
                     webhook=WebhookSettings(url=hook.url))
        )
        dispatcher.start()
        assert dispatcher.submit(alert())
        await asyncio.wait_for(asyncio.gather(smtp.received.wait(), hook.received.wait()), 10)
        await dispatcher.close(timeout=5)
        await smtp.stop()
        await hook.stop()
        return smtp, hook

    smtp, hook = asyncio.run(scenario())
    [message] = smtp.messages
    text = message.as_string()
    assert message["To"] == "dsl@school.example"
    assert "CRITICAL" in message["Subject"] and "Self-harm and suicide" in message["Subject"]
    body = message.get_content()
    assert CONSOLE + "rec-42" in body
    assert "Year 9" in body and "2026-11-23T10:15:00+00:00" in body
    [(path, payload)] = hook.requests
    assert path == "/hook?token=s3cret"
    assert payload["link"] == CONSOLE + "rec-42"
    assert payload["severity"] == "CRITICAL" and payload["risk"] == "self-harm" and payload["group"] == "Year 9"
    for sent in (text, str(payload)):
        assert PUPIL not in sent
        assert SEARCH not in sent and "kill" not in sent


def test_dedupe_per_user_and_risk_within_window() -> None:
    clock = FakeClock()
    dispatcher = AlertDispatcher(settings(per_user_minutes=15), clock=clock)
    assert dispatcher.submit(alert("a"))
    assert not dispatcher.submit(alert("b"))  # same pupil, same risk
    assert dispatcher.submit(alert("c", risk="extremism"))
    assert dispatcher.submit(alert("d", user="10.0.0.7"))
    clock.now += 899
    assert not dispatcher.submit(alert("e"))
    clock.now += 2
    assert dispatcher.submit(alert("f"))


def test_below_min_severity_is_not_alerted() -> None:
    dispatcher = AlertDispatcher(settings(min_severity=Severity.HIGH))
    assert not dispatcher.submit(alert(severity=Severity.MEDIUM))
    assert dispatcher.submit(alert(severity=Severity.HIGH))


def test_global_hourly_cap() -> None:
    clock = FakeClock()
    dispatcher = AlertDispatcher(settings(max_per_hour=3), clock=clock)
    assert [dispatcher.submit(alert(str(i), user=f"u{i}")) for i in range(5)] == [True, True, True, False, False]
    clock.now += 3600
    assert dispatcher.submit(alert("later", user="u9"))


def test_retries_until_the_receiver_comes_up(caplog: pytest.LogCaptureFixture) -> None:
    port = free_port()

    async def scenario() -> WebhookReceiver:
        dispatcher = AlertDispatcher(settings(webhook=WebhookSettings(url=f"http://127.0.0.1:{port}/hook?token=s3cret"), max_attempts=8))
        dispatcher.start()
        dispatcher.submit(alert())
        await asyncio.sleep(0.3)  # a few attempts fail: nothing is listening
        hook = await WebhookReceiver().start(port)
        await asyncio.wait_for(hook.received.wait(), 10)
        await dispatcher.close(timeout=5)
        await hook.stop()
        return hook

    with caplog.at_level(logging.WARNING, logger="schoolgate.alerts"):
        hook = asyncio.run(scenario())
    assert len(hook.requests) == 1
    failures = [r.getMessage() for r in caplog.records if "failed" in r.getMessage()]
    assert failures, "the refused attempts should be logged"
    assert all("s3cret" not in m and "token" not in m for m in caplog.messages)


def test_http_error_status_is_retried_and_smtp_password_never_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def scenario() -> None:
        hook = await WebhookReceiver(status=503).start()
        dispatcher = AlertDispatcher(
            settings(
                webhook=WebhookSettings(url=hook.url),
                email=EmailSettings(host="127.0.0.1", port=free_port(), to=("dsl@school.example",), user="gateway",
                                    password="hunter2-password"),
                max_attempts=2,
            )
        )
        dispatcher.start()
        dispatcher.submit(alert())
        await dispatcher.close(timeout=5)
        await hook.stop()

    with caplog.at_level(logging.WARNING, logger="schoolgate.alerts"):
        asyncio.run(scenario())
    assert any("HTTP 503" in m for m in caplog.messages)
    assert any("abandoned" in m and "email" in m for m in caplog.messages)
    assert all("hunter2" not in m and "s3cret" not in m for m in caplog.messages)
    assert "hunter2" not in repr(settings(email=EmailSettings(password="hunter2")))


def test_close_is_bounded_when_delivery_cannot_finish() -> None:
    async def scenario() -> float:
        unreachable = WebhookSettings(url=f"http://127.0.0.1:{free_port()}/")
        dispatcher = AlertDispatcher(settings(webhook=unreachable, retry_initial_s=10, max_attempts=5))
        dispatcher.start()
        dispatcher.submit(alert())
        loop = asyncio.get_running_loop()
        started = loop.time()
        await dispatcher.close(timeout=0.5)
        return loop.time() - started

    assert asyncio.run(scenario()) < 3


def test_closed_dispatcher_refuses_alerts() -> None:
    async def scenario() -> bool:
        dispatcher = AlertDispatcher(settings())
        dispatcher.start()
        await dispatcher.close(timeout=1)
        return dispatcher.submit(alert())

    assert asyncio.run(scenario()) is False


def test_redact_url_drops_query_and_credentials() -> None:
    assert redact_url("https://user:pw@hooks.example:8443/a/b?token=xyz") == "https://hooks.example:8443/a/b"


def test_a_new_access_request_is_announced_with_a_link_and_no_name() -> None:
    from schoolgate.alerts import ACCESS_REQUEST

    async def scenario() -> WebhookReceiver:
        hook = await WebhookReceiver().start()
        dispatcher = AlertDispatcher(settings(min_severity=Severity.HIGH, webhook=WebhookSettings(url=hook.url)))
        dispatcher.start()
        assert dispatcher.submit(Alert(record_ref="request-7", time=datetime(2026, 11, 23, 10, 15, tzinfo=UTC),
                                       risk=ACCESS_REQUEST, severity=Severity.NONE, group="Year 9", user_key=PUPIL,
                                       summary="a pupil in group Year 9 asked for a blocked site"))
        await asyncio.wait_for(hook.received.wait(), 10)
        await dispatcher.close(timeout=5)
        await hook.stop()
        return hook

    [(_, payload)] = asyncio.run(scenario()).requests
    assert payload["link"] == "https://console.school.example/requests"  # beside /incidents/, not an incident
    assert payload["risk_title"] == "New access request" and payload["group"] == "Year 9"
    assert PUPIL not in str(payload)


def test_teams_google_chat_and_json_channels_get_the_shapes_each_service_documents() -> None:
    async def scenario() -> dict[str, WebhookReceiver]:
        hooks = {name: await WebhookReceiver().start() for name in ("webhook", "teams", "google_chat")}
        dispatcher = AlertDispatcher(settings(**{name: WebhookSettings(url=hook.url) for name, hook in hooks.items()}))
        dispatcher.start()
        assert dispatcher.submit(alert("SG-7K3F-9QX2"))
        await asyncio.wait_for(asyncio.gather(*(hook.received.wait() for hook in hooks.values())), 10)
        await dispatcher.close(timeout=5)
        for hook in hooks.values():
            await hook.stop()
        return hooks

    hooks = asyncio.run(scenario())
    link = CONSOLE + "SG-7K3F-9QX2"
    [(_, generic)] = hooks["webhook"].requests
    assert generic == {"severity": "CRITICAL", "risk": "self-harm", "risk_title": "Self-harm and suicide",
                       "group": "Year 9", "time": "2026-11-23T10:15:00+00:00",
                       "summary": "Search matched a high-risk self-harm phrase", "link": link, "reminder": 0}

    # Teams: a "message" with one Adaptive Card attachment (incoming webhooks and Workflows alike).
    [(_, teams)] = hooks["teams"].requests
    assert teams["type"] == "message" and len(teams["attachments"]) == 1
    attachment = teams["attachments"][0]
    assert attachment["contentType"] == "application/vnd.microsoft.card.adaptive" and attachment["contentUrl"] is None
    card = attachment["content"]
    assert card["type"] == "AdaptiveCard" and card["version"] == "1.4"
    assert card["$schema"] == "http://adaptivecards.io/schemas/adaptive-card.json"
    heading, facts = card["body"]
    assert heading == {"type": "TextBlock", "text": "CRITICAL safeguarding alert: Self-harm and suicide",
                       "weight": "Bolder", "size": "Medium", "wrap": True}
    assert facts["type"] == "FactSet"
    assert {f["title"]: f["value"] for f in facts["facts"]} == {
        "Severity": "CRITICAL", "Risk": "Self-harm and suicide", "Group": "Year 9",
        "Time": "2026-11-23T10:15:00+00:00", "Summary": "Search matched a high-risk self-harm phrase"}
    assert card["actions"] == [{"type": "Action.OpenUrl", "title": "Review in the console", "url": link}]

    # Google Chat: `text` for notifications and a cardsV2 card with a button to the console.
    [(_, chat)] = hooks["google_chat"].requests
    assert set(chat) == {"text", "cardsV2"} and link in chat["text"]
    [entry] = chat["cardsV2"]
    assert entry["cardId"] == "schoolgate-alert"
    assert entry["card"]["header"] == {"title": "CRITICAL safeguarding alert: Self-harm and suicide",
                                       "subtitle": "Year 9, 2026-11-23T10:15:00+00:00"}
    [section] = entry["card"]["sections"]
    *texts, buttons = section["widgets"]
    assert [w["decoratedText"]["topLabel"] for w in texts] == ["Severity", "Risk", "Group", "Time", "Summary"]
    assert buttons == {"buttonList": {"buttons": [
        {"text": "Review in the console", "onClick": {"openLink": {"url": link}}}]}}

    for sent in (generic, teams, chat):
        assert PUPIL not in str(sent) and "kill" not in str(sent) and "bing" not in str(sent)
    assert all(path == "/hook?token=s3cret" for hook in hooks.values() for path, _ in hook.requests)


def test_the_policy_chooses_each_channel_by_its_section(tmp_path) -> None:
    from schoolgate.policy import load_policy

    path = tmp_path / "policy.toml"
    path.write_text('[monitoring]\nconsole_url = "https://c.example/incidents/"\n'
                    '[alerts.teams]\nurl = "https://school.webhook.office.com/x"\n'
                    '[alerts.google_chat]\nurl = "https://chat.googleapis.com/v1/spaces/A/messages?key=k"\n'
                    '[alerts.reminders]\nafter_minutes = 20\nevery_minutes = 45\nmax_reminders = 2\n'
                    '[groups.pupils]\nnetworks = ["10.0.0.0/8"]\n')
    alerts = load_policy(path).alerts
    assert alerts.enabled and not alerts.webhook.url and alerts.teams.url.startswith("https://school.webhook")
    assert (alerts.reminders.after_minutes, alerts.reminders.every_minutes, alerts.reminders.max_reminders) == (20, 45, 2)
    assert "key=k" not in repr(alerts)
