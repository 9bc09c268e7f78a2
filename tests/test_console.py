"""The review console over HTTP (Starlette's httpx-based TestClient against the real app and a
real SQLite file): roles, CSRF, login throttling, sessions, the audit trail, CSV exports,
reports, exceptions through the console, and the retention purge."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import re
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
import uvicorn
from test_records import make_record

from schoolgate.cli import main
from schoolgate.policy import Policy, load_policy
from schoolgate.records import RecordWriter
from schoolgate.reports.console.app import create_app, server_config
from schoolgate.reports.console.security import load_secret

from support.gateway import free_ports

POLICY = """\
[school]
name = "Test Academy"

[gateway]
database = "sqlite+aiosqlite:///{dir}/schoolgate.db"
metrics_port = 0
default_group = "pupils"

[groups.pupils]
networks = ["10.1.0.0/16"]

[groups.sixth-form]
networks = ["10.2.0.0/16"]

[groups.staff]
networks = ["10.3.0.0/16"]

[exceptions]
teacher_groups = ["pupils", "sixth-form"]

[retention]
records_days = 30
flagged_days = 365

[console]
secret_file = "{dir}/console.secret"
"""

PASSWORDS = {"dsl": "correct horse battery", "it": "it-admin password 1", "teacher": "teacher password 1"}
NOW = datetime.now(UTC).replace(microsecond=0)


def write_policy(directory: Path, extra: str = "") -> Policy:
    path = directory / "policy.toml"
    path.write_text(POLICY.replace("{dir}", str(directory)) + extra, encoding="utf-8")
    return load_policy(path)


def cli(policy: Policy, *args: str, stdin: str = "", monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main([*args, "--policy", str(policy.path)])


def create_accounts(policy: Policy, monkeypatch: pytest.MonkeyPatch) -> None:
    """The three roles, made the way an administrator would: through the CLI, password on stdin."""
    assert cli(policy, "accounts", "add", "dsl", "--role", "dsl", stdin=PASSWORDS["dsl"] + "\n",
               monkeypatch=monkeypatch) == 0
    assert cli(policy, "accounts", "add", "it", "--role", "it_admin", stdin=PASSWORDS["it"] + "\n",
               monkeypatch=monkeypatch) == 0
    assert cli(policy, "accounts", "add", "teacher", "--role", "teacher", "--groups", "pupils",
               stdin=PASSWORDS["teacher"] + "\n", monkeypatch=monkeypatch) == 0


def store(policy: Policy, *records) -> None:
    async def write() -> None:
        writer = RecordWriter(policy.gateway.database)
        await writer.start()
        for record in records:
            writer.submit(record)
        await writer.close()

    asyncio.run(write())


def flagged_search(ts: datetime, user: str = "alice", term: str = "how to kill myself", **changes):
    return make_record(ts=ts, user=user, host="www.bing.com", url=f"https://www.bing.com/search?q={term}",
                       search_engine="bing", search_term=term, flag="self-harm", flag_severity=4,
                       flag_detail=f"search matched {term!r} (en)", ref="SG-AAAA-BBBB", categories=(), **changes)


class ConsoleServer:
    """The console app served by uvicorn on a free 127.0.0.1 port, in a thread."""

    def __init__(self, policy: Policy) -> None:
        self.port = free_ports(1)[0]
        self.url = f"http://127.0.0.1:{self.port}"
        app = create_app(policy, load_secret(policy.console.secret_file), purge_in_background=False)
        self.server = uvicorn.Server(server_config(app, "127.0.0.1", self.port))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ConsoleServer:
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the console did not start"
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


@dataclass
class Env:
    policy: Policy
    client: httpx.Client

    def db(self) -> sqlite3.Connection:
        return sqlite3.connect(self.policy.gateway.database.split("///", 1)[1])

    def audit(self) -> list[tuple[str, str, str]]:
        with self.db() as db:
            return [tuple(row) for row in db.execute("SELECT actor, role, action FROM audit_log ORDER BY id")]

    def login(self, who: str, password: str | None = None) -> int:
        page = self.client.get("/login")
        response = self.client.post("/login", data={"username": who, "password": password or PASSWORDS[who],
                                                    "csrf": csrf_of(page.text)}, follow_redirects=False)
        return response.status_code

    def csrf(self, path: str) -> str:
        return csrf_of(self.client.get(path).text)


def csrf_of(html: str) -> str:
    match = re.search(r'name="csrf" value="([^"]+)"', html)
    assert match, "no CSRF field on the page"
    return match[1]


@pytest.fixture
def env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Env]:
    policy = write_policy(tmp_path)
    create_accounts(policy, monkeypatch)
    store(
        policy,
        make_record(ts=NOW - timedelta(minutes=3), user="alice", host="www.youtube.com", url="https://www.youtube.com/"),
        flagged_search(NOW - timedelta(minutes=2)),
        make_record(ts=NOW - timedelta(minutes=1), user="alice", host="www.childline.org.uk",
                    url="https://www.childline.org.uk/"),
        make_record(ts=NOW - timedelta(minutes=2), user="bob", client_ip="10.1.9.9", host="bob-only.example"),
        make_record(ts=NOW - timedelta(hours=2), user="alice", host="long-before.example"),
        make_record(ts=NOW - timedelta(minutes=5), user="carol", group="staff", verdict="block",
                    host="www.pornhub.com", categories=("pornography",), ref="SG-CCCC-DDDD"),
    )
    with ConsoleServer(policy) as server, httpx.Client(base_url=server.url, trust_env=False,
                                                        follow_redirects=True) as client:
        yield Env(policy, client)


# --- signing in, roles, sessions -------------------------------------------------------

def test_pages_need_a_signed_in_account(env: Env) -> None:
    for path in ("/incidents", "/incidents/1", "/incidents.csv", "/report", "/exceptions", "/requests", "/lists"):
        response = env.client.get(path, follow_redirects=False)
        assert response.status_code == 303 and response.headers["location"].startswith("/login?next=")


def test_each_role_sees_only_its_pages(env: Env) -> None:
    assert env.login("teacher") == 303
    for path in ("/incidents", "/incidents/1", "/incidents.csv", "/report", "/lists", "/settings"):
        response = env.client.get(path)
        assert response.status_code == 403, path
        assert "how to kill myself" not in response.text and "alice" not in response.text
    assert env.client.get("/exceptions").status_code == 200
    assert env.client.get("/requests").status_code == 200
    assert ("teacher", "teacher", "denied") in env.audit()

    env.client.cookies.clear()
    assert env.login("it") == 303
    assert env.client.get("/incidents").status_code == 403
    assert env.client.get("/lists").status_code == 200
    report = env.client.get("/report")
    assert report.status_code == 200 and "alice" not in report.text  # IT sees counts, not who

    env.client.cookies.clear()
    assert env.login("dsl") == 303
    assert env.client.get("/exceptions").status_code == 403
    assert env.client.get("/incidents").status_code == 200


def test_signing_in_returns_to_the_page_asked_for_and_only_on_this_console(env: Env) -> None:
    for asked, landed in (("/report", "/report"), ("//evil.example/", "/incidents"), ("https://evil.example/", "/incidents")):
        env.client.cookies.clear()
        page = env.client.get("/login", params={"next": asked})
        response = env.client.post("/login", params={"next": asked}, follow_redirects=False,
                                   data={"username": "dsl", "password": PASSWORDS["dsl"], "csrf": csrf_of(page.text)})
        assert response.headers["location"] == landed


def test_session_cookie_and_security_headers(env: Env) -> None:
    env.client.get("/login")
    response = env.client.post("/login", data={"username": "dsl", "password": PASSWORDS["dsl"],
                                               "csrf": csrf_of(env.client.get("/login").text)}, follow_redirects=False)
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "max-age=1800" in cookie
    page = env.client.get("/incidents")
    csp = page.headers["content-security-policy"]
    assert "script-src" not in csp and "default-src 'none'" in csp and "style-src 'self'" in csp
    assert "<script" not in page.text
    assert page.headers["cache-control"] == "no-store" and page.headers["x-frame-options"] == "DENY"


def test_signing_out_without_the_form_token_still_ends_the_session(env: Env) -> None:
    env.login("dsl")
    assert env.client.post("/logout", follow_redirects=False).status_code == 303
    assert env.client.get("/incidents", follow_redirects=False).status_code == 303  # signed out


def test_ids_too_large_for_the_database_are_not_found(env: Env) -> None:
    env.login("dsl")
    for path in ("/incidents/99999999999999999999999", "/incidents/9223372036854775808", "/incidents/\u00b2",
                 "/incidents/99999999999999999999999/export.csv"):
        assert env.client.get(path).status_code == 404, path
    env.client.post("/logout")
    env.login("it")
    token = env.csrf("/requests")
    for path in ("/requests/99999999999999999999999/approve", "/exceptions/99999999999999999999999/revoke"):
        assert env.client.post(path, data={"csrf": token}).status_code == 404, path


def test_signing_out_ends_the_session_even_for_a_copied_cookie(env: Env) -> None:
    env.login("dsl")
    copied = dict(env.client.cookies)
    env.client.post("/logout", data={"csrf": env.csrf("/incidents")}, follow_redirects=False)
    env.client.cookies.clear()
    env.client.cookies.update(copied)
    assert env.client.get("/incidents", follow_redirects=False).status_code == 303


def test_a_disabled_account_is_signed_out_and_refused(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    env.login("dsl")
    assert env.client.get("/incidents").status_code == 200
    assert cli(env.policy, "accounts", "disable", "dsl", monkeypatch=monkeypatch) == 0
    assert env.client.get("/incidents", follow_redirects=False).status_code == 303
    assert env.login("dsl") == 401


def test_wrong_passwords_are_refused_then_throttled_and_audited(env: Env) -> None:
    for _ in range(5):
        assert env.login("dsl", "not the password") == 401
    throttled = env.client.post("/login", data={"username": "dsl", "password": PASSWORDS["dsl"],
                                                "csrf": env.csrf("/login")})
    assert throttled.status_code == 429 and "Too many failed sign-ins" in throttled.text
    assert env.client.get("/incidents", follow_redirects=False).status_code == 303  # not signed in
    actions = [action for actor, _, action in env.audit() if actor == "dsl"]
    assert actions.count("login.failed") == 5 and "login.throttled" in actions and "login.ok" not in actions
    # Another account from the same address is not locked out by dsl's failures.
    assert env.login("it") == 303


def client_from(server_url: str, address: str) -> httpx.Client:
    """A browser on another machine: its connections come from `address` (a loopback alias)."""
    return httpx.Client(base_url=server_url, trust_env=False, follow_redirects=True,
                        transport=httpx.HTTPTransport(local_address=address))


def sign_in(client: httpx.Client, who: str, password: str | None = None, headers: dict[str, str] | None = None) -> int:
    page = client.get("/login", headers=headers)
    return client.post("/login", data={"username": who, "password": password or PASSWORDS[who],
                                       "csrf": csrf_of(page.text)}, headers=headers, follow_redirects=False).status_code


def test_a_pupil_guessing_cannot_lock_the_dsl_out(env: Env) -> None:
    """Wrong passwords for the DSL's name from a pupil's device throttle that device only."""
    with client_from(str(env.client.base_url), "127.0.0.2") as pupil:
        for _ in range(5):
            assert sign_in(pupil, "dsl", "not the password") == 401
        assert sign_in(pupil, "dsl") == 429  # that device, for that name: throttled, even with the right password
    assert env.login("dsl") == 303  # the DSL at her own desk signs in


def test_forwarded_for_is_believed_only_from_trusted_proxies(env: Env) -> None:
    spoofed = {"X-Forwarded-For": "10.66.0.1"}
    for _ in range(5):
        assert sign_in(env.client, "dsl", "wrong", headers=spoofed) == 401
    # Not a trusted proxy: the header changed nothing, the failures count against 127.0.0.1.
    assert sign_in(env.client, "dsl", headers={"X-Forwarded-For": "10.66.0.2"}) == 429
    with env.db() as db:
        assert {a for (a,) in db.execute("SELECT client_ip FROM login_attempts")} == {"127.0.0.1"}


def test_a_trusted_reverse_proxy_names_the_client(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    policy = write_policy(tmp_path, '\ntrusted_proxies = ["127.0.0.1"]\n')  # appended to [console]
    create_accounts(policy, monkeypatch)
    with ConsoleServer(policy) as server, httpx.Client(base_url=server.url, trust_env=False,
                                                        follow_redirects=True) as proxy:
        pupil = {"X-Forwarded-For": "203.0.113.9, 10.66.0.1"}  # what the client said, then what the proxy saw
        for _ in range(5):
            assert sign_in(proxy, "dsl", "wrong", headers=pupil) == 401
        assert sign_in(proxy, "dsl", headers=pupil) == 429
        assert sign_in(proxy, "dsl", headers={"X-Forwarded-For": "10.3.0.7"}) == 303  # the DSL, via the same proxy
        with client_from(server.url, "127.0.0.3") as direct:  # not the proxy: its header is ignored
            assert sign_in(direct, "it", "wrong", headers={"X-Forwarded-For": "10.66.0.1"}) == 401
    with sqlite3.connect(policy.gateway.database.split("///", 1)[1]) as db:
        seen = {a for (a,) in db.execute("SELECT client_ip FROM login_attempts")}
    assert seen == {"10.66.0.1", "10.3.0.7", "127.0.0.3"}  # the left-most, client-written hop is never believed


def test_throttling_by_address_covers_guessed_user_names(env: Env) -> None:
    for n in range(20):
        assert env.login(f"guess{n}", "password123") == 401
    assert env.login("it") == 429


# --- CSRF ------------------------------------------------------------------------------

def test_posts_without_the_csrf_token_are_refused(env: Env) -> None:
    assert env.client.post("/login", data={"username": "dsl", "password": PASSWORDS["dsl"]}).status_code == 403
    env.login("dsl")
    env.client.get("/incidents")  # the flagged record is incident #1, made when it was written
    for token in (None, "forged"):
        data = {"status": "closed", "note": "forged"} | ({"csrf": token} if token else {})
        assert env.client.post("/incidents/1", data=data).status_code == 403
    with env.db() as db:
        assert db.execute("SELECT status FROM incidents").fetchall() == [("new",)]
        assert db.execute("SELECT count(*) FROM incident_notes").fetchone() == (0,)


# --- the DSL's queue, incidents and exports ----------------------------------------------

def test_dsl_triages_a_flagged_search_with_its_context(env: Env) -> None:
    env.login("dsl")
    queue = env.client.get("/incidents")
    assert "how to kill myself" in queue.text and "alice" in queue.text
    assert "youtube" not in queue.text  # only flagged records are incidents

    incident = env.client.get("/incidents/1")
    assert incident.status_code == 200
    context = incident.text.split("Context:", 1)[1]
    assert "www.youtube.com" in context and "childline" in context  # the same pupil, minutes either side
    assert "bob-only.example" not in context and "long-before.example" not in context

    response = env.client.post("/incidents/1", data={"status": "closed", "note": "Spoke to <b>Alice</b>; parents called.",
                                                     "csrf": csrf_of(incident.text)}, follow_redirects=False)
    assert response.status_code == 303
    closed = env.client.get("/incidents/1").text
    assert "Spoke to &lt;b&gt;Alice&lt;/b&gt;; parents called." in closed  # escaped, never markup
    assert re.search(r"<strong>dsl</strong> · <time>[^<]+</time> · status new → <strong>closed</strong>", closed)
    assert "how to kill myself" not in env.client.get("/incidents").text  # closed: off the open queue
    assert "how to kill myself" in env.client.get("/incidents?status=closed").text

    env.client.post("/incidents/1", data={"assigned": "deputy.dsl", "csrf": csrf_of(closed)})
    assert "<dd>deputy.dsl</dd>" in env.client.get("/incidents/1").text

    actions = [a for actor, role, a in env.audit() if actor == "dsl" and role == "dsl"]
    assert actions == ["login.ok", "view.queue", "view.incident", "incident.closed", "view.incident",
                       "view.queue", "view.queue", "incident.assign", "view.incident", "view.incident"]
    with env.db() as db:
        after = json.loads(db.execute("SELECT after FROM audit_log WHERE action = 'incident.closed'").fetchone()[0])
    assert after == {"status": "closed", "note_added": True}  # the note itself stays with the incident


def test_alert_links_by_reference_open_the_incident(env: Env) -> None:
    env.login("dsl")
    page = env.client.get("/incidents/SG-AAAA-BBBB")
    assert page.status_code == 200 and "how to kill myself" in page.text
    assert env.client.get("/incidents/SG-0000-0000").status_code == 404


def test_queue_filters(env: Env) -> None:
    store(env.policy, flagged_search(NOW - timedelta(days=3), user="dave", term="i want to die", group="sixth-form"))
    env.login("dsl")
    assert "dave" in env.client.get("/incidents?group=sixth-form").text
    assert "dave" not in env.client.get("/incidents?user=alice").text
    today = NOW.astimezone().date()
    assert "dave" not in env.client.get(f"/incidents?from={today}").text
    assert "dave" in env.client.get(f"/incidents?to={today - timedelta(days=2)}").text
    assert "how to kill myself" not in env.client.get(f"/incidents?to={today - timedelta(days=2)}").text
    assert env.client.get("/incidents?severity=bogus").status_code == 400


def test_bulk_actions_are_checked_and_audited_once_per_incident_changed(env: Env, monkeypatch) -> None:
    store(env.policy, flagged_search(NOW - timedelta(minutes=20), user="erin"),
          flagged_search(NOW - timedelta(minutes=10), user="fred"))
    assert cli(env.policy, "accounts", "add", "deputy", "--role", "dsl", stdin="deputy password 1\n",
               monkeypatch=monkeypatch) == 0

    def assigned_and_status() -> list[tuple]:
        with env.db() as db:
            return db.execute("SELECT id, assigned, status FROM incidents ORDER BY id").fetchall()

    env.login("it")
    assert env.client.post("/incidents/bulk", data={"incident": ["1"], "action": "close",
                                                    "csrf": env.csrf("/settings")}).status_code == 403
    env.client.post("/logout", data={"csrf": env.csrf("/settings")})
    env.login("dsl")
    assert env.client.post("/incidents/bulk", data={"incident": ["1"], "action": "close"}).status_code == 403
    token = env.csrf("/incidents")
    refused = env.client.post("/incidents/bulk", data={"incident": ["1", "2"], "action": "assign", "assignee": "it",
                                                       "csrf": token})
    assert "Choose an action" in refused.text  # only a DSL account can be given incidents
    assert assigned_and_status() == [(1, None, "new"), (2, None, "new"), (3, None, "new")]

    assigned = env.client.post("/incidents/bulk?status=open", data={"incident": ["1", "2"], "action": "assign",
                                                                    "assignee": "deputy", "csrf": token})
    assert "Assigned to deputy: 2 incidents." in assigned.text and assigned.url.params["status"] == "open"
    closed = env.client.post("/incidents/bulk", data={"incident": ["1", "2", "3"], "action": "close", "csrf": token})
    assert "Closed 3 incidents." in closed.text and "No flagged records match." in closed.text
    again = env.client.post("/incidents/bulk", data={"incident": ["1"], "action": "close", "csrf": token})
    assert "Closed 0 incidents." in again.text  # nothing changed, nothing audited
    assert assigned_and_status() == [(1, "deputy", "closed"), (2, "deputy", "closed"), (3, None, "closed")]
    changes = [(a, object_id) for a, object_id in env.db().execute(
        "SELECT action, object_id FROM audit_log WHERE actor = 'dsl' AND action LIKE 'incident.%' ORDER BY id")]
    assert changes == [("incident.assign", 1), ("incident.assign", 2),
                       ("incident.closed", 1), ("incident.closed", 2), ("incident.closed", 3)]
    assert env.client.post("/incidents/bulk", data={"incident": ["1x"], "action": "close",
                                                    "csrf": token}).status_code == 400


def test_lost_records_are_shown_to_the_dsl_and_it(env: Env) -> None:
    store(env.policy, *[make_record(ts=NOW - timedelta(minutes=30 - n), instance="gw-hall", seq=n) for n in (1, 2, 5)])
    banner = re.compile(r"2 access records lost from gateway gw-hall between \d\d \w+ \d{4} [\d:]+ and ")
    env.login("dsl")
    assert banner.search(re.sub(r"\s+", " ", env.client.get("/incidents").text))
    env.client.post("/logout", data={"csrf": env.csrf("/incidents")})
    env.login("it")
    assert banner.search(re.sub(r"\s+", " ", env.client.get("/settings").text))


def test_csv_export_is_valid_audited_and_safe_for_spreadsheets(env: Env) -> None:
    store(env.policy, flagged_search(NOW - timedelta(minutes=30), user="erin", term="=HYPERLINK(\"x\") suicide"))
    env.login("dsl")
    response = env.client.get("/incidents.csv?status=all")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/csv")
    assert "attachment" in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert [r["user"] for r in rows] == ["alice", "erin"]
    assert rows[0]["search_term"] == "how to kill myself" and rows[0]["risk"] == "self-harm"
    assert rows[0]["severity"] == "critical" and rows[0]["reference"] == "SG-AAAA-BBBB"
    assert rows[1]["search_term"].startswith("'=")  # a formula a spreadsheet would otherwise run
    assert rows[0]["attempts"] == "1" and rows[0]["first_seen_utc"] == rows[0]["time_utc"]  # the episode's

    one = list(csv.DictReader(io.StringIO(env.client.get("/incidents/1/export.csv").content.decode("utf-8-sig"))))
    assert len(one) == 1 and one[0]["incident"] == "1"
    assert [a for _, _, a in env.audit()].count("export.csv") == 2


# --- reports -----------------------------------------------------------------------------

def test_report_page_and_cli_report(env: Env, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env.login("dsl")
    page = env.client.get("/report")
    assert page.status_code == 200 and "<svg" in page.text and "pornhub.com" in page.text  # sites by registrable domain
    assert "alice" in page.text  # the DSL's copy names who is behind open incidents
    report_csv = env.client.get("/report.csv")
    rows = list(csv.reader(io.StringIO(report_csv.content.decode("utf-8-sig"))))
    assert ["top blocked site", "pornhub.com", "", "1", ""] in rows
    assert ("dsl", "dsl", "view.report") in env.audit()

    today = NOW.astimezone().date()
    html_path, csv_path = tmp_path / "report.html", tmp_path / "report.csv"
    for output in (html_path, csv_path):
        assert cli(env.policy, "report", "--from", str(today - timedelta(days=6)), "--to", str(today),
                   "--output", str(output), monkeypatch=monkeypatch) == 0
    html = html_path.read_text()
    assert "<svg" in html and "<style>" in html and "<script" not in html and "/static/" not in html
    assert "Pornography" in html and "self-harm" in html and "alice" not in html  # no names unless asked
    rows = list(csv.reader(io.StringIO(csv_path.read_text())))
    assert rows[0] == ["section", "item", "requests", "blocked", "flagged"]
    assert rows[1][2:] == ["6", "1", "1"]
    assert len([r for r in rows if r[0] == "day"]) == 7


# --- teachers and IT ------------------------------------------------------------------------

def test_teacher_opens_sites_only_for_their_groups(env: Env) -> None:
    env.login("teacher")
    token = env.csrf("/exceptions")
    ok = env.client.post("/exceptions/grant", data={"target": "www.bbc.co.uk", "scope": "group:pupils", "length": "30",
                                                     "reason": "Year 9 news lesson", "csrf": token})
    assert "Opened www.bbc.co.uk for group pupils" in ok.text
    other = env.client.post("/exceptions/grant", data={"target": "www.bbc.co.uk", "scope": "group:sixth-form",
                                                        "length": "30", "reason": "x", "csrf": token})
    assert other.status_code == 400 and "you may open sites only for pupils" in other.text
    too_long = env.client.post("/exceptions/grant", data={"target": "example.org", "scope": "group:pupils",
                                                           "length": str(7 * 24 * 60), "reason": "x", "csrf": token})
    assert "a teacher may open a site for at most 3 h 0 min" in too_long.text  # LiveStore's rule
    with env.db() as db:
        assert db.execute("SELECT host, scope, granted_by, granted_role FROM exceptions").fetchall() == [
            ("www.bbc.co.uk", "pupils", "teacher", "teacher")]
    actions = [a for actor, _, a in env.audit() if actor == "teacher"]
    assert actions.count("exception.grant") == 1 and actions.count("exception.refused") == 1


def test_teacher_sees_and_decides_only_their_groups_requests(env: Env) -> None:
    from schoolgate.db import create_engine
    from schoolgate.live import LiveStore

    async def ask() -> None:
        engine = create_engine(env.policy.gateway.database)
        store_ = LiveStore(engine)
        for user, group in (("alice", "pupils"), ("frank", "staff")):
            await store_.create_request(ref=None, client_ip="10.1.2.3", username=user, group=group,
                                        url="https://www.bbc.co.uk/news", host="www.bbc.co.uk", categories=(),
                                        reason="for homework")
        await engine.dispose()

    asyncio.run(ask())
    env.login("teacher")
    page = env.client.get("/requests")
    assert "alice" in page.text and "frank" not in page.text
    token = csrf_of(page.text)
    assert "not pending for your groups" in env.client.post("/requests/2/approve", data={"csrf": token}).text
    assert "approved" in env.client.post("/requests/1/approve", data={"csrf": token, "note": "ok"}).text
    with env.db() as db:
        assert db.execute("SELECT id, status, decided_by FROM access_requests ORDER BY id").fetchall() == [
            (1, "approved", "teacher"), (2, "pending", None)]
        assert db.execute("SELECT scope_kind, scope FROM exceptions").fetchall() == [("user", "alice")]


def ask_for(env: Env, *asks: tuple[str, str, tuple[str, ...]]) -> None:
    """Pupils' requests (user, host, categories) as the gateway stores them."""
    from schoolgate.db import create_engine
    from schoolgate.live import LiveStore

    async def ask() -> None:
        engine = create_engine(env.policy.gateway.database)
        for user, host, categories in asks:
            await LiveStore(engine).create_request(ref=None, client_ip="10.1.2.3", username=user, group="pupils",
                                                   url=f"https://{host}/", host=host, categories=categories,
                                                   reason="for homework")
        await engine.dispose()

    asyncio.run(ask())


def test_the_exceptions_form_refuses_a_block_page_reference_and_keeps_what_was_typed(env: Env) -> None:
    env.login("teacher")
    token = env.csrf("/exceptions")
    refused = env.client.post("/exceptions/grant", data={"target": "SG-7K3Q-P2XD", "scope": "group:pupils",
                                                          "length": "30", "reason": "Year 9 quiz", "csrf": token})
    assert refused.status_code == 400
    assert re.search(r'<div class="alert" role="alert">', refused.text)
    assert re.search(r'id="target-error">&#39;SG-7K3Q-P2XD&#39; is a block page&#39;s reference', refused.text)
    assert re.search(r'<input id="target" name="target" required value="SG-7K3Q-P2XD"[^>]*aria-invalid="true"', refused.text)
    assert 'value="Year 9 quiz"' in refused.text and '<option value="30" selected>' in refused.text
    no_reason = env.client.post("/exceptions/grant", data={"target": "www.bbc.co.uk", "scope": "group:pupils",
                                                            "length": "30", "reason": "", "csrf": token})
    assert re.search(r'<input id="reason" name="reason" required value=""[^>]*aria-invalid="true"', no_reason.text)
    with env.db() as db:
        assert db.execute("SELECT COUNT(*) FROM exceptions").fetchone() == (0,)


def test_a_teacher_leaves_to_it_what_their_role_may_not_open(env: Env) -> None:
    ask_for(env, ("alice", "www.pornhub.com", ("pornography",)), ("bob", "games.example", ("games",)))
    env.login("teacher")
    page = env.client.get("/requests")
    assert re.search(r'Access requests <span class="badge">1<', page.text)  # only the one they may decide
    assert "Handled by the IT team (it): teachers may not open pornography." in page.text
    assert 'action="/requests/1/approve"' not in page.text and 'action="/requests/2/approve"' in page.text
    token = csrf_of(page.text)
    refused = env.client.post("/requests/1/approve", data={"csrf": token, "scope": "asker", "length": "lesson"})
    assert "Request #1 is for the IT team (it) to decide" in refused.text
    assert "Request #1 is for the IT team" in env.client.post("/requests/1/refuse", data={"csrf": token}).text
    env.client.post("/logout", data={"csrf": token})
    env.login("it")
    assert re.search(r'Access requests <span class="badge">2<', env.client.get("/requests").text)
    with env.db() as db:
        assert db.execute("SELECT status FROM access_requests ORDER BY id").fetchall() == [("pending",), ("pending",)]
        assert db.execute("SELECT COUNT(*) FROM exceptions").fetchone() == (0,)


def test_the_dsl_sees_every_request_marked_by_its_risk_and_decides_none(env: Env) -> None:
    ask_for(env, ("alice", "www.pornhub.com", ("pornography",)), ("bob", "games.example", ("games",)))
    env.login("dsl")
    page = env.client.get("/requests")
    assert page.status_code == 200
    assert re.search(r'Access requests <span class="badge">1<', page.text)  # the one about a risk
    assert "alice" in page.text and "bob" in page.text
    assert page.text.count("Concern: ") == 1 and "Concern: Pornography: displays sexual acts or explicit images (critical)" in page.text
    assert "/approve" not in page.text and "For IT or a teacher to decide." in page.text
    refused = env.client.post("/requests/2/approve", data={"csrf": csrf_of(page.text), "scope": "asker", "length": "lesson"})
    assert refused.status_code == 403
    with env.db() as db:
        assert db.execute("SELECT status FROM access_requests ORDER BY id").fetchall() == [("pending",), ("pending",)]
    assert ("dsl", "dsl", "view.requests") in env.audit()


def test_a_teacher_cannot_approve_by_any_route_a_site_listed_as_pornography_when_asked(
        env: Env, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Listed when the pupil asked, not in today's lists: the category at asking time still counts.
    ask_for(env, ("alice", "unlisted.example", ("pornography",)))
    assert cli(env.policy, "requests", "approve", "1", "--by", "teacher", "--role", "teacher", monkeypatch=monkeypatch) == 1
    assert "teachers may not open pornography" in capsys.readouterr().err
    with env.db() as db:
        assert db.execute("SELECT status FROM access_requests").fetchall() == [("pending",)]


def test_a_teacher_approves_a_request_for_the_pupils_class_for_the_day(env: Env, tmp_path: Path,
                                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    roster = tmp_path / "classes.csv"
    roster.write_text("class,username\n9X,alice\n9X,bob\n10Y,carol\n")
    assert cli(env.policy, "classes", "import", str(roster), monkeypatch=monkeypatch) == 0
    ask_for(env, ("alice", "games.example", ("games",)))
    env.login("teacher")
    page = env.client.get("/requests")
    assert '<option value="class:9X">Class 9X</option>' in page.text and "class:10Y" not in page.text
    approved = env.client.post("/requests/1/approve", data={"csrf": csrf_of(page.text), "scope": "class:9X",
                                                             "length": "60", "note": "for the lesson"})
    assert "Request #1 approved: games.example is open for class 9X until" in approved.text
    with env.db() as db:
        assert db.execute("SELECT scope_kind, scope, scope_label FROM exceptions").fetchall() == [
            ("users", ",alice,bob,", "class 9X")]
    exceptions = env.client.get("/exceptions").text
    assert "class 9X" in exceptions and '<option value="class:9X">9X (2 pupils)</option>' in exceptions
    assert "Access requests <span" not in exceptions  # nothing left waiting: no badge


def test_it_manages_the_lists(env: Env) -> None:
    env.login("it")
    token = env.csrf("/lists")
    added = env.client.post("/lists/block", data={"entry": "games.example", "reason": "distracting", "csrf": token})
    assert "Added games.example to the block list" in added.text and "games.example" in added.text
    removed = env.client.post("/lists/block", data={"entry": "games.example", "change": "remove", "csrf": token})
    assert "Removed games.example" in removed.text
    assert [a for actor, _, a in env.audit() if actor == "it"][-2:] == ["list.block.add", "list.block.remove"]


def test_the_settings_page_shows_the_policy_in_force(env: Env) -> None:
    env.login("it")
    text = re.sub(r"\s+", " ", env.client.get("/settings").text)
    assert "Access records</dt><dd>30 days" in text and "Flagged records and incidents</dt><dd>365 days" in text
    assert "Teachers may open for</dt><dd>pupils, sixth-form" in text and "up to severity</dt><dd>low" in text


# --- accounts ----------------------------------------------------------------------------------

def test_accounts_cli_hashes_with_argon2id_and_refuses_weak_passwords(env: Env, monkeypatch, capsys) -> None:
    assert cli(env.policy, "accounts", "add", "short", "--role", "dsl", stdin="short\n", monkeypatch=monkeypatch) == 1
    assert "at least 12 characters" in capsys.readouterr().err
    assert cli(env.policy, "accounts", "add", "t2", "--role", "teacher", stdin="x" * 12 + "\n",
               monkeypatch=monkeypatch) == 1  # a teacher needs groups
    with env.db() as db:
        hashes = [h for (h,) in db.execute("SELECT password_hash FROM console_accounts")]
    assert len(hashes) == 3 and all(h.startswith("$argon2id$") for h in hashes)
    assert not any(p in h for h in hashes for p in PASSWORDS.values())
    for common in ("password1234", "P@ssw0rd2026!", "qwertyuiop12", "monkeymonkey"):
        assert cli(env.policy, "accounts", "passwd", "it", stdin=common + "\n", monkeypatch=monkeypatch) == 1
        assert "too easy to guess" in capsys.readouterr().err
    assert cli(env.policy, "accounts", "passwd", "it", stdin="a brand new password\n", monkeypatch=monkeypatch) == 0
    assert env.login("it") == 401 and env.login("it", "a brand new password") == 303
    capsys.readouterr()
    assert cli(env.policy, "accounts", "list", monkeypatch=monkeypatch) == 0
    assert re.search(r"teacher\s+teacher\s+active\s+pupils", capsys.readouterr().out)


# --- retention ------------------------------------------------------------------------------------

def test_purge_keeps_flagged_records_longer_and_is_logged(env: Env, monkeypatch, caplog) -> None:
    old, older = NOW - timedelta(days=40), NOW - timedelta(days=400)
    store(env.policy, make_record(ts=old, host="old.example"), flagged_search(old, user="gina"),
          flagged_search(older, user="hana"), make_record(ts=older, host="older.example"))
    env.login("dsl")
    page = env.client.get("/incidents?status=all")
    hana = next(i for i in re.findall(r'href="/incidents/(\d+)[?"]', page.text)
                if "hana" in env.client.get(f"/incidents/{i}").text)
    env.client.post(f"/incidents/{hana}", data={"note": "old case", "csrf": env.csrf(f"/incidents/{hana}")})

    caplog.set_level("INFO", logger="schoolgate.retention")
    assert cli(env.policy, "purge", "--dry-run", monkeypatch=monkeypatch) == 0
    assert "would delete: 2 records, 1 flagged records, 1 incidents, 1 incident notes" in caplog.text
    with env.db() as db:
        assert db.execute("SELECT count(*) FROM access_log").fetchone() == (10,)

    caplog.clear()
    assert cli(env.policy, "purge", monkeypatch=monkeypatch) == 0
    assert ("purge deleted: 2 records, 1 flagged records, 1 incidents, 1 incident notes, 0 incident outcomes, "
            "1 incident records") in caplog.text
    assert "alice" not in caplog.text and "10.1.2.3" not in caplog.text  # counts only, never who
    with env.db() as db:
        hosts = {h for (h,) in db.execute("SELECT coalesce(username, '') || '@' || host FROM access_log")}
        assert "alice@old.example" not in hosts and "alice@older.example" not in hosts
        assert "gina@www.bing.com" in hosts and "hana@www.bing.com" not in hosts  # flagged: kept 365 days
        assert db.execute("SELECT count(*) FROM incidents WHERE id = ?", (hana,)).fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM incident_notes").fetchone() == (0,)
        assert db.execute("SELECT count(*) FROM incident_records WHERE incident_id = ?", (hana,)).fetchone() == (0,)
        purge_row = db.execute("SELECT actor, after FROM audit_log WHERE action = 'retention.purge'").fetchone()
    assert purge_row[0] == "schoolgate" and json.loads(purge_row[1])["records"] == 2
    caplog.clear()
    assert cli(env.policy, "purge", monkeypatch=monkeypatch) == 0
    assert "deleted: 0 records, 0 flagged records" in caplog.text


# --- deploy -----------------------------------------------------------------------------------------

def test_the_grafana_dashboard_queries_only_metrics_the_gateway_exports() -> None:
    from schoolgate.metrics import REGISTRY

    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count"), "gauge": ("",)}
    exported = {family.name + suffix for family in REGISTRY.collect() for suffix in suffixes[family.type]}
    dashboard = json.loads((Path(__file__).parents[1] / "deploy/grafana/schoolgate-dashboard.json").read_text())
    queried = {name for panel in dashboard["panels"] for target in panel.get("targets", [])
               for name in re.findall(r"schoolgate_[a-z_]+", target["expr"])}
    assert queried and queried <= exported, queried - exported
    assert {"schoolgate_requests_total", "schoolgate_decision_seconds_bucket", "schoolgate_record_queue_depth",
            "schoolgate_record_write_seconds_bucket", "schoolgate_records_dropped_total",
            "schoolgate_records_spooled_total", "schoolgate_policy_last_load_ok", "schoolgate_list_entries"} <= queried
