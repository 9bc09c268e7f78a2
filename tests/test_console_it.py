"""IT tools in the console over HTTP (the real app served by uvicorn, a real SQLite file):
block-page reference lookup, URL tests answered by `schoolgate explain`'s code, the access-log
search, and the managed lists' history. IT sees groups and devices; only the DSL sees names."""

from __future__ import annotations

import re
from datetime import timedelta

from test_console import NOW, Env, csrf_of, env, store  # noqa: F401  (env is a fixture)
from test_records import make_record

from schoolgate.cli import main


def test_teachers_are_refused_the_it_tools_and_audited(env: Env) -> None:
    env.login("teacher")
    for path in ("/it", "/it?ref=SG-CCCC-DDDD", "/it/log", "/it?url=http://adult.test/"):
        response = env.client.get(path)
        assert response.status_code == 403, path
        assert "pornhub" not in response.text and "adult.test" not in response.text.split("<main", 1)[1]
    assert [a for actor, _, a in env.audit() if actor == "teacher"].count("denied") == 4


def test_a_reference_is_looked_up_with_names_for_the_dsl_only(env: Env) -> None:
    env.login("it")
    page = env.client.get("/it", params={"ref": "sg cccc dddd"})  # as a pupil reads it out
    assert page.status_code == 200
    found = page.text.split('id="reference"', 1)[1].split("</section>", 1)[0]
    assert "SG-CCCC-DDDD" in found and "pornography" in found
    assert "https://www.example.com/page<" in found and "q=1" not in found  # no query string for IT
    assert "<dd>staff</dd>" in found and "carol" not in found
    assert "how to kill myself" not in env.client.get("/it", params={"ref": "SG-AAAA-BBBB"}).text  # the search's query
    assert "No record carries SG-0000-0000" in env.client.get("/it", params={"ref": "SG-0000-0000"}).text

    env.client.cookies.clear()
    env.login("dsl")
    found = env.client.get("/it", params={"ref": "SG-AAAA-BBBB"}).text
    assert "alice" in found and 'href="/incidents/SG-AAAA-BBBB"' in found
    assert ("it", "it_admin", "view.reference") in env.audit() and ("dsl", "dsl", "view.reference") in env.audit()


def decision(html: str) -> dict[str, str]:
    block = html.split('aria-label="Decision"', 1)[1].split("</dl>", 1)[0]
    pairs = re.findall(r"<dt>([^<]+)</dt><dd[^>]*>(.*?)</dd>", block, re.S)
    return {k.lower(): re.sub(r"<[^>]+>", "", v).strip() for k, v in pairs}


def test_a_url_test_answers_as_schoolgate_explain_does(env: Env, capsys, monkeypatch) -> None:
    policy = str(env.policy.path)
    env.policy.path.write_text(env.policy.path.read_text() + '\n[categories]\npornography = "block"\n')
    env.login("it")
    shown = decision(env.client.get("/it", params={"url": "https://www.adult.test/page", "client": "10.1.4.4"}).text)
    assert main(["explain", "--policy", policy, "https://www.adult.test/page", "--client", "10.1.4.4"]) == 0
    printed = {k.strip(): v.strip() for k, v in (line.split(":", 1) for line in capsys.readouterr().out.splitlines())}
    assert shown == printed
    assert shown["verdict"] == "BLOCK" and shown["rule"] == "category pornography:adult.test"

    # A managed list entry made in the console applies to the next test at once, as at the gateway.
    token = env.csrf("/lists")
    env.client.post("/lists/allow", data={"entry": "www.adult.test", "reason": "test", "csrf": token})
    again = decision(env.client.get("/it", params={"url": "https://www.adult.test/page", "group": "staff"}).text)
    assert again["verdict"] == "ALLOW" and again["group"] == "staff (chosen on the form)"
    unknown = env.client.get("/it", params={"url": "http://x.example/", "group": "nobody"}).text
    assert "no group &#39;nobody&#39;" in unknown
    env.policy.path.write_text(env.policy.path.read_text() + "\n[gatway]\n")  # saved mid-edit, with a typo
    broken = env.client.get("/it", params={"url": "https://www.adult.test/page"})
    assert broken.status_code == 200 and "The policy on disk has 1 problem(s); run `schoolgate check`" in broken.text
    assert [a for actor, _, a in env.audit() if actor == "it"].count("view.test_url") == 4


def test_the_log_search_filters_pages_and_hides_names_from_it(env: Env) -> None:
    store(env.policy, *(make_record(ts=NOW - timedelta(minutes=30, seconds=i), user="zoe", host=f"s{i}.video.example",
                                    url=f"https://s{i}.video.example/watch?v=secret{i}", group="sixth-form",
                                    client_ip="10.2.0.9") for i in range(60)))
    env.login("it")
    first = env.client.get("/it/log", params={"q": "video", "group": "sixth-form"})
    assert first.status_code == 200
    assert first.text.count("video.example") == 50 and "zoe" not in first.text and "secret" not in first.text
    assert "s0.video.example" in first.text and "s49.video.example" in first.text
    older = re.search(r'href="/it/log\?([^"]+)">Older records', first.text)
    assert older and "before=" in older[1]
    second = env.client.get("/it/log?" + older[1].replace("&amp;", "&"))
    assert second.text.count("video.example") == 10 and "s59.video.example" in second.text
    assert "s49.video.example" not in second.text and "Older records" not in second.text
    assert "www.youtube.com" not in first.text  # alice's record: another group
    blocked = env.client.get("/it/log", params={"verdict": "block"}).text
    assert "SG-CCCC-DDDD" in blocked and "video.example" not in blocked
    assert "zoe" not in env.client.get("/it/log", params={"user": "zoe"}).text  # IT cannot search by person
    assert env.client.get("/it/log", params={"from": "2026-12-01", "to": "2026-11-01"}).status_code == 400
    today = NOW.astimezone().date()
    assert "video.example" not in env.client.get("/it/log", params={"to": str(today - timedelta(days=2))}).text

    env.client.cookies.clear()
    env.login("dsl")
    mine = env.client.get("/it/log", params={"user": "alice"}).text
    assert "how to kill myself" in mine and "zoe" not in mine
    assert sum(1 for _, role, a in env.audit() if a == "view.log") == 6  # the refused range is not a view


def test_list_changes_show_who_when_what_and_why(env: Env) -> None:
    env.login("it")
    token = env.csrf("/lists")
    env.client.post("/lists/block", data={"entry": "games.example", "reason": "distracting in lessons", "csrf": token})
    env.client.post("/lists/block", data={"entry": "games.example", "change": "remove", "reason": "used in maths",
                                          "csrf": token})
    assert main(["block", "add", "quiz.example", "--reason", "from the CLI", "--by", "root",
                 "--policy", str(env.policy.path)]) == 0
    history = env.client.get("/lists").text.split('id="history"', 1)[1]
    rows = [re.sub(r"<[^>]+>", " ", r) for r in re.findall(r"<tr><td>.*?</tr>", history, re.S)]
    assert len(rows) == 3
    assert re.search(r"root .* added to the block list: quiz\.example .* from the CLI", rows[0])
    assert re.search(r"it .* removed from the block list: games\.example .* used in maths", rows[1])
    assert re.search(r"it .* added to the block list: games\.example .* distracting in lessons", rows[2])


def badge(html: str) -> str | None:
    found = re.search(r'<span class="badge">(\d+)<', html)
    return found[1] if found else None


def test_the_nav_counts_unread_high_severity_incidents_for_the_dsl(env: Env) -> None:
    env.login("dsl")
    assert badge(env.client.get("/report").text) == "1"  # alice's critical search, not yet opened
    env.client.get("/incidents")
    assert badge(env.client.get("/report").text) == "1"  # seen in the queue is not opened
    env.client.get("/incidents/1")
    assert badge(env.client.get("/report").text) is None
    store(env.policy, make_record(ts=NOW, user="ben", flag="self-harm", flag_severity=3, ref="SG-EEEE-FFFF"),
          make_record(ts=NOW, user="cy", flag="gambling", flag_severity=2))  # medium: below the alert threshold
    assert badge(env.client.get("/it").text) == "1"
    env.client.cookies.clear()
    env.login("it")
    assert badge(env.client.get("/it").text) is None  # IT has no queue
