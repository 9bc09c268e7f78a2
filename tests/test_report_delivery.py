"""The period report by email on the policy's schedule: a real SMTP server on loopback
receives IT's copy (no names) and the DSL's copy (naming who is behind open incidents),
each with the report attached as HTML and CSV."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta

from test_console import flagged_search, store, write_policy
from test_records import make_record

from schoolgate.cli import main
from schoolgate.policy import ReportSettings

WEEKDAYS = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")


def schedule(port: int, day: str) -> str:
    return f"""
[reports]
schedule = "weekly"
day = "{day}"
dsl_to = ["dsl@school.test"]
[reports.email]
host = "127.0.0.1"
port = {port}
from = "schoolgate@school.test"
to = ["it@school.test", "governors@school.test"]
"""


def attachments(message) -> dict[str, str]:
    return {part.get_filename(): part.get_content() for part in message.iter_attachments()}


def test_the_weekly_report_reaches_it_and_the_dsl_by_smtp(tmp_path, smtp_sink, capsys):
    today = date.today()
    policy = write_policy(tmp_path, schedule(smtp_sink.port, WEEKDAYS[today.weekday()]))
    yesterday = datetime.now(UTC) - timedelta(days=1)
    store(policy, flagged_search(yesterday, user="alice"), make_record(ts=yesterday, seq=2, user="bob", bytes_in=10))

    assert main(["send-report", "--policy", str(policy.path)]) == 0
    assert "sent to 3 recipient(s)" in capsys.readouterr().out
    it, dsl = sorted(smtp_sink.messages, key=lambda m: m["To"] != "it@school.test, governors@school.test")
    assert it["To"] == "it@school.test, governors@school.test" and dsl["To"] == "dsl@school.test"
    first, last = today - timedelta(days=7), today - timedelta(days=1)
    name = f"report-{first.isoformat()}-to-{last.isoformat()}"
    for message in (it, dsl):
        assert " ".join(message["Subject"].split()).startswith("[schoolgate] Filtering and monitoring report")
        files = attachments(message)
        assert set(files) == {f"{name}.html", f"{name}.csv"}
        assert "Requests: 2" in message.get_body(("plain",)).get_content()
        assert "self-harm" in files[f"{name}.html"] and "<style>" in files[f"{name}.html"]
        assert "alice" not in message.get_body(("plain",)).get_content()
    assert "alice" not in attachments(it)[f"{name}.html"] and "bob" not in attachments(it)[f"{name}.html"]
    assert "alice" in attachments(dsl)[f"{name}.html"]  # the DSL's copy names who is behind the open incident


def test_nothing_is_sent_on_another_day(tmp_path, smtp_sink, capsys):
    other_day = WEEKDAYS[(date.today().weekday() + 1) % 7]
    policy = write_policy(tmp_path, schedule(smtp_sink.port, other_day))
    assert main(["send-report", "--policy", str(policy.path)]) == 0
    assert "no report due today" in capsys.readouterr().out
    assert smtp_sink.messages == []


def test_periods_due_by_the_schedule():
    weekly = ReportSettings(schedule="weekly", day="Monday")
    monday = date(2026, 11, 30)
    assert weekly.period_due(monday) == (date(2026, 11, 23), date(2026, 11, 29))
    assert weekly.period_due(monday + timedelta(days=1)) is None
    monthly = ReportSettings(schedule="monthly", day="1")
    assert monthly.period_due(date(2026, 12, 1)) == (date(2026, 11, 1), date(2026, 11, 30))
    assert monthly.period_due(date(2026, 3, 1)) == (date(2026, 2, 1), date(2026, 2, 28))
    assert monthly.period_due(date(2026, 12, 2)) is None
    assert monthly.period_due(date(2026, 12, 2), now=True) == (date(2026, 11, 1), date(2026, 11, 30))
    assert ReportSettings().period_due(monday) is None  # off


def test_schedule_mistakes_are_policy_problems(tmp_path):
    from schoolgate.policy import PolicyInvalid, load_policy

    path = tmp_path / "policy.toml"
    path.write_text('[reports]\nschedule = "monthly"\nday = "31"\n[groups.pupils]\nnetworks = ["10.0.0.0/8"]\n')
    try:
        load_policy(path)
    except PolicyInvalid as e:
        text = str(e)
    else:
        raise AssertionError("a monthly schedule on the 31st was accepted")
    assert '"1" to "28"' in text and "needs [reports.email] host" in text and "needs recipients" in text
