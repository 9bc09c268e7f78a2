"""Reminders about high-severity incidents nobody has reviewed: the console sends them to a real
webhook receiver on 127.0.0.1, after `after_minutes`, every `every_minutes`, at most
`max_reminders` times, never for a reviewed incident, and never twice from two consoles."""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from datetime import timedelta
from pathlib import Path

import pytest
from test_console import NOW, ConsoleServer, flagged_search, store, write_policy
from test_monitoring import Receivers

from schoolgate.alerts import AlertDispatcher
from schoolgate.db import create_engine
from schoolgate.reports import incidents
from schoolgate.reports.reminders import send_due

from support.alerts import WebhookReceiver, free_port

ALERTS = """
[monitoring]
console_url = "https://console.school.example/incidents/"

[alerts.{channel}]
url = "{url}"

[alerts.reminders]
min_severity = "high"
after_minutes = 30
every_minutes = 60
max_reminders = 2
"""


@pytest.fixture
def receivers():
    r = Receivers()
    yield r
    r.close()


def policy_with_alerts(tmp_path: Path, url: str, channel: str = "teams"):
    policy = write_policy(tmp_path, ALERTS.replace("{url}", url).replace("{channel}", channel))
    store(policy,
          flagged_search(NOW - timedelta(minutes=45)),  # SG-AAAA-BBBB, critical: due
          replace(flagged_search(NOW - timedelta(minutes=5), user="ben"), ref="SG-BBBB-CCCC"),  # too recent
          replace(flagged_search(NOW - timedelta(hours=3), user="cat"), ref="SG-CCCC-DDDD", flag_severity=2))  # medium
    return policy


def test_the_console_reminds_about_an_unreviewed_incident(tmp_path: Path, receivers: Receivers) -> None:
    policy = policy_with_alerts(tmp_path, receivers.webhook.url)
    with ConsoleServer(policy):
        deadline = time.monotonic() + 15
        while not receivers.webhook.requests:
            assert time.monotonic() < deadline, "no reminder reached the Teams webhook"
            time.sleep(0.05)
        time.sleep(0.3)  # nothing else is on its way
    [(path, card)] = receivers.webhook.requests
    assert path == "/hook?token=s3cret"
    content = card["attachments"][0]["content"]
    assert content["body"][0]["text"] == "CRITICAL safeguarding alert still unreviewed: Self-harm and suicide"
    assert content["actions"][0]["url"] == "https://console.school.example/incidents/SG-AAAA-BBBB"
    summary = {f["title"]: f["value"] for f in content["body"][1]["facts"]}["Summary"]
    assert "reminder 1 of 2" in summary and "nobody has reviewed it" in summary
    assert "alice" not in str(card) and "kill" not in str(card) and "bing" not in str(card)


def test_reminders_repeat_stop_at_the_limit_and_when_reviewed(tmp_path: Path) -> None:
    port = free_port()
    policy = policy_with_alerts(tmp_path, f"http://127.0.0.1:{port}/hook", "webhook")
    store(policy, replace(flagged_search(NOW - timedelta(minutes=50), user="dan"), ref="SG-DDDD-EEEE"))

    async def scenario() -> list[int]:
        hook = await WebhookReceiver().start(port)
        engine = create_engine(policy.gateway.database)
        first, second = AlertDispatcher(policy.alerts), AlertDispatcher(policy.alerts)  # two consoles
        first.start()
        second.start()
        counts = [await send_due(engine, policy, first, NOW), await send_due(engine, policy, second, NOW)]
        counts.append(await send_due(engine, policy, second, NOW + timedelta(minutes=59)))  # ben's first
        [dan] = [i for i in await incidents.queue(engine, incidents.IncidentFilter()) if i.record.user == "dan"]
        await incidents.update_incident(engine, dan.id, actor="dsl", role="dsl", status=incidents.Status.REVIEWING,
                                        note="")
        counts.append(await send_due(engine, policy, first, NOW + timedelta(minutes=60)))  # alice's second, not dan's
        counts.append(await send_due(engine, policy, first, NOW + timedelta(hours=5)))  # ben's second
        counts.append(await send_due(engine, policy, first, NOW + timedelta(hours=20)))  # all at the limit
        for dispatcher in (first, second):
            await dispatcher.close(timeout=5)
        await hook.stop()
        await engine.dispose()
        refs = [body["link"].rsplit("/", 1)[1] for _, body in hook.requests]
        assert sorted(refs) == ["SG-AAAA-BBBB", "SG-AAAA-BBBB", "SG-BBBB-CCCC", "SG-BBBB-CCCC", "SG-DDDD-EEEE"]
        return counts

    # alice and dan are due at once (claimed by the first console only); dan's is then reviewed;
    # ben's (5 minutes old at first) comes 30 minutes after his search; cat's is only medium.
    assert asyncio.run(scenario()) == [2, 0, 1, 1, 1, 0]


def test_reminders_are_claimed_once_and_the_log_is_searched_on_postgres(tmp_path: Path, database_url: str) -> None:
    from test_console import POLICY

    from schoolgate.policy import load_policy
    from schoolgate.reports.queries import LogSearch, search

    port = free_port()
    path = tmp_path / "policy.toml"
    path.write_text(POLICY.replace("sqlite+aiosqlite:///{dir}/schoolgate.db", database_url).replace("{dir}", str(tmp_path))
                    + ALERTS.replace("{url}", f"http://127.0.0.1:{port}/hook").replace("{channel}", "webhook"))
    policy = load_policy(path)
    store(policy, flagged_search(NOW - timedelta(minutes=45)),
          *(replace(flagged_search(NOW - timedelta(minutes=i)), flag=None, flag_severity=None, ref=None,
                    host=f"h{i}.example", group="sixth-form") for i in range(1, 8)))

    async def scenario() -> tuple[list[int], list[str], list[str], bool]:
        hook = await WebhookReceiver().start(port)
        engine = create_engine(policy.gateway.database)
        first, second = AlertDispatcher(policy.alerts), AlertDispatcher(policy.alerts)
        first.start()
        second.start()
        counts = list(await asyncio.gather(send_due(engine, policy, first, NOW), send_due(engine, policy, second, NOW)))
        wanted = LogSearch(start=NOW - timedelta(hours=1), end=NOW + timedelta(hours=1), text="example",
                           group="sixth-form")
        page, more = await search(engine, wanted, limit=5)
        rest, _ = await search(engine, wanted, before_id=page[-1][0], limit=5)
        for dispatcher in (first, second):
            await dispatcher.close(timeout=5)
        await hook.stop()
        await engine.dispose()
        return counts, [r.host for _, r in page], [r.host for _, r in rest], more

    counts, page, rest, more = asyncio.run(scenario())
    assert sorted(counts) == [0, 1]  # racing consoles: one claims it
    assert page == [f"h{i}.example" for i in range(1, 6)] and more and rest == ["h6.example", "h7.example"]
