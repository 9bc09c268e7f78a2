"""Exceptions and access requests, live, on real gateways sharing one database:
granted through the real CLI, honoured on the next poll by every gateway,
ended on time, audited."""

from __future__ import annotations

import json
import re
import sqlite3
import time

import pytest

from schoolgate.cli import main

from support.clients import curl, httpx_client
from support.waiting import wait_for

POLICY = """\
[gateway]
database = "DATABASE"
metrics_port = {metrics_port}
default_group = "secondary"

[categories]
games = "block"
pornography = "block"

[groups.primary]
networks = ["127.0.0.2/32"]

[groups.secondary]
networks = ["127.0.0.1/32", "127.0.0.3/32"]

[exceptions]
teacher_groups = ["primary", "secondary"]
"""


@pytest.fixture
def shared_db(tmp_path):
    return tmp_path / "shared.db"


@pytest.fixture
def start(gateway_factory, shared_db):
    def start_gateway():
        return gateway_factory(POLICY.replace("DATABASE", f"sqlite+aiosqlite:///{shared_db}"),
                               options={"schoolgate_live_ms": 200})
    return start_gateway


def cli(capsys, gateway, *args: str) -> tuple[int, str, str]:
    code = main([*args, "--policy", str(gateway.policy_path)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def audit(gateway) -> list[str]:
    with sqlite3.connect(_db(gateway)) as db:
        return [row[0] for row in db.execute("SELECT action FROM audit_log ORDER BY id")]


def _db(gateway) -> str:
    return re.search(r'database = "sqlite\+aiosqlite:///(.+)"', gateway.policy_path.read_text()).group(1)


def test_grant_opens_for_one_group_only_and_closes_on_time(start, capsys):
    gw = start()
    assert curl(gw, "http://games.test/", source_ip="127.0.0.2").status == 403

    code, out, err = cli(capsys, gw, "exceptions", "grant", "games.test", "--for", "group:primary", "--until", "+4s",
                         "--reason", "game design lesson", "--by", "mr.smith", "--role", "teacher")
    assert code == 0, err
    assert re.match(r"exception #1: games.test open for group primary until", out)

    wait_for(lambda: curl(gw, "http://games.test/", source_ip="127.0.0.2").status == 200)
    assert curl(gw, "http://games.test/", source_ip="127.0.0.3").status == 403  # another group: still blocked
    wait_for(lambda: curl(gw, "http://games.test/", source_ip="127.0.0.2").status == 403, timeout=8)

    gw.stop()
    with sqlite3.connect(_db(gw)) as db:
        rules = [r[0] for r in db.execute("SELECT rule FROM access_log WHERE host = 'games.test' AND verdict = 'allow'")]
    assert rules and all(rule == "exception #1 games.test" for rule in rules)


def test_teacher_cannot_open_a_high_severity_category(start, capsys):
    gw = start()
    code, out, err = cli(capsys, gw, "exceptions", "grant", "category:pornography", "--for", "group:secondary",
                         "--until", "+30m", "--reason", "research", "--by", "mr.smith", "--role", "teacher")
    assert code == 1 and "refused: teachers may not open pornography" in err
    code, out, err = cli(capsys, gw, "exceptions", "grant", "adult.test", "--for", "group:secondary",
                         "--until", "+30m", "--reason", "research", "--by", "mr.smith", "--role", "teacher")
    assert code == 1 and "teachers may not open pornography" in err  # naming the domain does not help
    time.sleep(0.5)
    assert curl(gw, "http://adult.test/").status == 403
    assert audit(gw) == ["exception.refused", "exception.refused"]


def test_bad_cli_input_is_explained(start, capsys):
    gw = start()
    code, _, err = cli(capsys, gw, "exceptions", "grant", "games.test", "--for", "group:year9", "--until", "+5m", "--reason", "x")
    assert code == 1 and "unknown group 'year9'; groups are: primary, secondary" in err
    code, _, err = cli(capsys, gw, "exceptions", "grant", "games.test", "--for", "group:primary",
                       "--until", "2020-01-01T09:00", "--reason", "x")
    assert code == 1 and "the end time 2020-01-01 09:00 is in the past" in err
    code, _, err = cli(capsys, gw, "exceptions", "grant", "games..test", "--for", "group:primary", "--until", "+5m", "--reason", "x")
    assert code == 1 and "'games..test' is not a domain or URL" in err
    code, _, err = cli(capsys, gw, "exceptions", "grant", "games.test", "--for", "room12", "--until", "+5m", "--reason", "x")
    assert code == 1 and "use group:NAME, class:NAME, room:NAME, users:a,b,c, network:10.20.3.0/24 or user:NAME" in err
    code, _, err = cli(capsys, gw, "exceptions", "grant", "games.test", "--for", "group:primary", "--until", "soon", "--reason", "x")
    assert code == 1 and "cannot read the time 'soon'" in err
    code, _, err = cli(capsys, gw, "allow", "add", "bad host", "--reason", "x")
    assert code == 1 and "is not a domain or URL" in err


def test_request_from_the_block_page_approved_through_the_cli_opens_the_site(start, capsys, upstream):
    gw = start()
    with httpx_client(gw, source_ip="127.0.0.3") as client:
        blocked = client.get("https://games.test/maths-game")
        assert blocked.status_code == 403
        fields = dict(re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', blocked.text))
        fields = {k: v.replace("&amp;", "&") for k, v in fields.items()}
        forged = client.post("https://games.test/.well-known/schoolgate/request-access",
                             data={**fields, "sig": "0" * 32, "reason": "x"})
        assert forged.status_code == 400
        sent = client.post("https://games.test/.well-known/schoolgate/request-access",
                           data={**fields, "reason": "We use it in maths <today>"})
        assert sent.status_code == 200 and "Request sent" in sent.text
        assert "&lt;today&gt;" not in sent.text and "<today>" not in sent.text  # the reason is not echoed at all

    code, out, _ = cli(capsys, gw, "requests", "list")
    (line,) = out.splitlines()
    assert "#1" in line and "127.0.0.3 (secondary)" in line and "https://games.test/maths-game" in line
    assert "We use it in maths <today>" in line and fields["ref"] in line

    code, out, err = cli(capsys, gw, "requests", "approve", "1", "--until", "+10m", "--by", "mr.smith", "--role", "teacher")
    assert code == 0, err
    assert "request #1 approved: exception #1 opens games.test for network 127.0.0.3" in out
    # The exception opens the whole site for that device, so a new connection passes through
    # undecrypted: the client sees the site's own certificate (a keep-alive connection opened
    # before the gateway saw the exception would still be decrypted, so each try is a new one).
    wait_for(lambda: curl(gw, "https://games.test/maths-game", "--cacert", str(upstream.cert_path),
                          source_ip="127.0.0.3").status == 200)
    assert curl(gw, "http://games.test/", source_ip="127.0.0.1").status == 403  # only that pupil's device

    code, _, err = cli(capsys, gw, "requests", "approve", "1", "--until", "+10m")
    assert code == 1 and "no pending access request #1" in err
    assert audit(gw) == ["request.create", "exception.grant", "request.approve"]


def test_two_gateways_sharing_a_database_both_honour_a_new_exception(start, capsys):
    first, second = start(), start()
    for gw in (first, second):
        assert curl(gw, "http://games.test/").status == 403
    code, _, err = cli(capsys, first, "exceptions", "grant", "games.test/lesson", "--for", "network:127.0.0.0/30",
                       "--until", "+10m", "--reason", "cover lesson")
    assert code == 0, err
    for gw in (first, second):
        wait_for(lambda gw=gw: curl(gw, "http://games.test/lesson/3").status == 200)
        assert curl(gw, "http://games.test/other").status == 403  # only the URL prefix
    code, _, _ = cli(capsys, second, "exceptions", "revoke", "1")
    assert code == 0
    for gw in (first, second):
        wait_for(lambda gw=gw: curl(gw, "http://games.test/lesson/3").status == 403)


def test_managed_lists_apply_live_and_the_audit_trail_is_append_only(start, capsys):
    gw = start()
    assert curl(gw, "http://adult.test/").status == 403
    assert cli(capsys, gw, "allow", "add", "adult.test/sex-education", "--reason", "PSHE unit", "--by", "ms.it")[0] == 0
    assert cli(capsys, gw, "block", "add", "news.test", "--reason", "fake news site", "--by", "ms.it")[0] == 0
    wait_for(lambda: curl(gw, "http://adult.test/sex-education/1").status == 200)
    # The gateway may have picked up the first change before the second was made.
    wait_for(lambda: curl(gw, "http://news.test/").status == 403)
    code, out, _ = cli(capsys, gw, "allow", "list")
    assert "adult.test/sex-education" in out and "added by ms.it" in out
    assert cli(capsys, gw, "block", "remove", "news.test", "--by", "ms.it")[0] == 0
    wait_for(lambda: curl(gw, "http://news.test/").status == 200)
    code, _, err = cli(capsys, gw, "block", "add", "news.test", "--reason", "x", "--role", "teacher")
    assert code == 1 and "only IT admins change the allow and block lists" in err

    code, out, _ = cli(capsys, gw, "audit", "--format", "json")
    trail = [json.loads(line) for line in out.splitlines()]
    assert [(e["actor"], e["action"]) for e in trail] == [
        ("ms.it", "list.allow.add"), ("ms.it", "list.block.add"), ("ms.it", "list.block.remove"),
    ]
    assert trail[2]["before"] == {"entry": "news.test", "reason": "fake news site"}
    with sqlite3.connect(_db(gw)) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("UPDATE audit_log SET actor = 'someone else'")
    with sqlite3.connect(_db(gw)) as db, pytest.raises(sqlite3.DatabaseError, match="append-only"):
        db.execute("DELETE FROM audit_log")


SCOPED_POLICY = POLICY + """rooms = { "lab-2" = ["127.0.0.3/32"] }

[auth]
htpasswd = "HTPASSWD"
"""
PUPILS = ("alice", "bob", "carol")


@pytest.fixture
def scoped(gateway_factory, shared_db, tmp_path):
    import bcrypt

    htpasswd = tmp_path / "users.htpasswd"
    htpasswd.write_text("".join(f"{u}:{bcrypt.hashpw(f'{u}-pw'.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                                for u in PUPILS))
    return gateway_factory(SCOPED_POLICY.replace("DATABASE", f"sqlite+aiosqlite:///{shared_db}")
                           .replace("HTPASSWD", str(htpasswd)), options={"schoolgate_live_ms": 200})


def as_pupil(gw, url: str, user: str, source_ip: str = "127.0.0.1"):
    return curl(gw, url, source_ip=source_ip, user=user, password=f"{user}-pw")


def test_a_class_exception_opens_for_its_members_at_grant_time_and_a_room_for_its_devices(scoped, capsys, tmp_path):
    gw = scoped
    roster = tmp_path / "classes.csv"
    roster.write_text("class,username\n9X,alice\n9X,bob\n10Y,carol\n")
    code, out, err = cli(capsys, gw, "classes", "import", str(roster))
    assert code == 0 and out.splitlines() == ["class 10Y: 1 members", "class 9X: 2 members"], err
    code, out, err = cli(capsys, gw, "exceptions", "grant", "games.test/maths", "--for", "class:9X", "--until", "+10m",
                         "--reason", "maths games", "--by", "mr.smith", "--role", "teacher")
    assert code == 0 and "games.test/maths open for class 9X" in out, err
    wait_for(lambda: as_pupil(gw, "http://games.test/maths", "alice").status == 200)
    assert as_pupil(gw, "http://games.test/maths", "bob").status == 200
    assert as_pupil(gw, "http://games.test/maths", "carol").status == 403  # another class
    assert curl(gw, "http://games.test/maths").status == 403  # not signed in: nobody's class

    # carol joins 9X afterwards: the exception covers the class as it was when it was granted.
    roster.write_text("class,username\n9X,alice\n9X,bob\n9X,carol\n")
    assert cli(capsys, gw, "classes", "import", str(roster))[0] == 0
    assert as_pupil(gw, "http://games.test/maths", "carol").status == 403

    code, out, err = cli(capsys, gw, "exceptions", "grant", "games.test/lab", "--for", "room:lab-2", "--until", "+10m",
                         "--reason", "lab session", "--by", "mr.smith", "--role", "teacher")
    assert code == 0 and "games.test/lab open for room lab-2" in out, err
    wait_for(lambda: curl(gw, "http://games.test/lab", source_ip="127.0.0.3").status == 200)
    assert curl(gw, "http://games.test/lab", source_ip="127.0.0.1").status == 403  # another room
    code, _, err = cli(capsys, gw, "exceptions", "grant", "games.test", "--for", "room:lab-9", "--until", "+10m",
                       "--reason", "x")
    assert code == 1 and "unknown room 'lab-9'; rooms are: lab-2" in err


def test_the_block_page_and_my_requests_show_what_became_of_a_request(scoped, capsys):
    gw = scoped
    with httpx_client(gw, source_ip="127.0.0.1", auth=("alice", "alice-pw")) as client:
        blocked = client.get("https://games.test/")
        fields = {k: v.replace("&amp;", "&")
                  for k, v in re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', blocked.text)}
        sent = client.post("https://games.test/.well-known/schoolgate/request-access",
                           data={**fields, "reason": "coding club"})
        my_requests = re.search(r'href="(/.well-known/schoolgate/my-requests\?[^"]+)"', sent.text)[1].replace("&amp;", "&")
        wait_for(lambda: "Waiting for a teacher or IT" in client.get("https://games.test/").text)
        assert "Ask for access" not in client.get("https://games.test/").text  # no second request while one waits

        code, _, err = cli(capsys, gw, "requests", "refuse", "1", "--note", "not in lessons", "--by", "mr.smith")
        assert code == 0, err
        wait_for(lambda: "Refused by mr.smith: “not in lessons”" in client.get("https://games.test/").text)
        page = client.get("https://games.test" + my_requests)
        assert page.status_code == 200 and page.headers["x-frame-options"] == "DENY"
        assert "sandbox" in page.headers["content-security-policy"]
        fetched = client.get("https://games.test" + my_requests, headers={"Sec-Fetch-Mode": "cors", "Sec-Fetch-Dest": "empty"})
        assert fetched.status_code == 403  # a script's fetch, not the pupil opening it
        assert "games.test" in page.text and "Refused by mr.smith" in page.text
        # Another site's page can fetch the path, but the signature is needed: not guessable.
        assert client.get("https://news.test/.well-known/schoolgate/my-requests").status_code == 403
    with httpx_client(gw, source_ip="127.0.0.1", auth=("bob", "bob-pw")) as other:
        refused = other.get("https://games.test" + my_requests)  # alice's link, bob's identity
        assert refused.status_code == 403 and "Refused by" not in refused.text
        assert "Your request for this site" not in other.get("https://games.test/").text


def test_a_new_request_is_announced_to_teachers_and_it_without_the_pupils_name(gateway_factory, shared_db):
    from support.alerts import WebhookReceiver, served_from_a_thread

    with served_from_a_thread(WebhookReceiver()) as webhook:
        policy = POLICY.replace("DATABASE", f"sqlite+aiosqlite:///{shared_db}") + f"""
[monitoring]
console_url = "https://console.school.example/incidents/"

[alerts.webhook]
url = "{webhook.url}"
"""
        gw = gateway_factory(policy, options={"schoolgate_live_ms": 200})
        with httpx_client(gw, source_ip="127.0.0.3") as client:
            blocked = client.get("https://games.test/secret-level?pupil=amy.b")
            fields = {k: v.replace("&amp;", "&")
                      for k, v in re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)">', blocked.text)}
            assert client.post("https://games.test/.well-known/schoolgate/request-access",
                               data={**fields, "reason": "homework"}).status_code == 200
        wait_for(lambda: len(webhook.requests) == 1)
    [(_, payload)] = webhook.requests
    assert payload["risk_title"] == "New access request" and payload["group"] == "secondary"
    assert payload["link"] == "https://console.school.example/requests"
    assert "games" in payload["summary"]  # the category, to judge how urgent it is
    assert "127.0.0.3" not in str(payload) and "games.test" not in str(payload) and "amy.b" not in str(payload)
