"""Sign-in through a real mitmdump with real curl clients (#10.8): wrong guesses cannot
stall other clients, and the sixth wrong guess is refused without a password check.

Assertions are on order and counts, never on durations."""

from __future__ import annotations

import sqlite3
import threading
from concurrent.futures import ThreadPoolExecutor

import bcrypt
import pytest

from schoolgate.cli import main

from support.clients import curl
from support.waiting import wait_for

POLICY = """\
[gateway]
default_group = "pupils"

[auth]
htpasswd = "HTPASSWD"

[groups.pupils]
title = "Pupils"
networks = ["127.0.0.0/8"]
"""


@pytest.fixture
def slow_htpasswd(tmp_path):
    # A real cost factor: each check takes a noticeable share of a core, as in a school's file.
    path = tmp_path / "users.htpasswd"
    path.write_text(f"alice:{bcrypt.hashpw(b'correct horse', bcrypt.gensalt(rounds=12)).decode()}\n")
    return path


def test_a_flood_of_wrong_guesses_does_not_hold_up_another_clients_request(gateway_factory, upstream, slow_htpasswd):
    gateway = gateway_factory(POLICY.replace("HTPASSWD", str(slow_htpasswd)))
    finished: list[str] = []
    lock = threading.Lock()
    first_refusal = threading.Event()

    def guess(n: int) -> int:
        result = curl(gateway, "http://allowed.test/", source_ip=f"127.0.1.{n // 2 + 1}", user="alice",
                      password=f"guess {n}", max_time=120)
        with lock:
            finished.append("guess")
        first_refusal.set()
        return result.status

    guesses = 24  # 12 addresses x 2 guesses: within every per-client limit, so each one is a real bcrypt check
    with ThreadPoolExecutor(guesses) as pool:
        flood = [pool.submit(guess, n) for n in range(guesses)]
        assert first_refusal.wait(120)  # the gateway is busy checking the flood
        other = curl(gateway, "http://allowed.test/other", source_ip="127.0.0.3", max_time=120)
        with lock:
            guesses_done_before_the_other = len(finished)
        statuses = [f.result() for f in flood]
    assert other.status == 200
    assert statuses == [407] * guesses
    # With checks on the event loop the other request waited behind every queued guess (all 24 done first).
    assert guesses_done_before_the_other < guesses // 2


def test_the_sixth_wrong_guess_is_refused_without_a_check_and_the_journal_names_nobody(gateway_factory, upstream, tmp_path):
    path = tmp_path / "users.htpasswd"
    path.write_text(f"alice:{bcrypt.hashpw(b'correct horse', bcrypt.gensalt(rounds=4)).decode()}\n")
    # mitmdump's own flow listing (flow_detail) prints every client address: off, as in production.
    gateway = gateway_factory(POLICY.replace("HTPASSWD", str(path)), options={"flow_detail": 0})
    pupil = "127.0.2.7"
    for n in range(5):
        wrong = curl(gateway, "http://allowed.test/", source_ip=pupil, user="alice", password=f"guess {n}")
        assert wrong.status == 407 and "retry-after" not in wrong.headers
    locked = curl(gateway, "http://allowed.test/", source_ip=pupil, user="alice", password="correct horse")
    assert locked.status == 407 and int(locked.headers["retry-after"]) > 0
    assert "Too many wrong passwords" in locked.text
    # alice, on her own device, is not locked out by the pupil's guesses.
    assert curl(gateway, "http://allowed.test/", source_ip="127.0.2.8", user="alice", password="correct horse").status == 200
    gateway.stop()
    with sqlite3.connect(gateway.db_path) as db:
        rows = db.execute("SELECT client_ip, username, verdict, rule, reason, status, identity_source FROM access_log"
                          " ORDER BY seq").fetchall()
    refused = [r for r in rows if r[3] == "sign-in"]
    assert len(refused) == 6 and {(r[0], r[1], r[2], r[5]) for r in refused} == {(pupil, None, "block", 407)}
    assert "'alice'" in refused[0][4] and "too many" in refused[-1][4]
    assert rows[-1][1:3] == ("alice", "allow") and rows[-1][6] == "proxy-basic"
    log = gateway.log_text()
    assert "a proxy login was refused unchecked" in log
    assert "alice" not in log and pupil not in log and "guess 4" not in log


CASE_POLICY = """\
[gateway]
default_group = "pupils"

[categories]
games = "block"

[auth]
htpasswd = "HTPASSWD"

[groups.staff]
users = ["J.Smith"]
[groups.staff.categories]
games = "allow"

[groups.pupils]
networks = ["127.0.0.0/8"]

[exceptions]
teacher_groups = ["pupils"]
"""


def test_a_user_name_typed_in_another_case_keeps_its_group_and_its_exception(gateway_factory, upstream, tmp_path, capsys):
    path = tmp_path / "users.htpasswd"
    path.write_text("".join(f"{user}:{bcrypt.hashpw(password, bcrypt.gensalt(rounds=4)).decode()}\n"
                            for user, password in [("j.smith", b"smith-pw"), ("amy.b", b"amy-pw")]))
    gateway = gateway_factory(CASE_POLICY.replace("HTPASSWD", str(path)), options={"schoolgate_live_ms": 200})
    assert curl(gateway, "http://games.test/", user="j.SMITH", password="smith-pw").status == 200  # staff, as listed
    assert curl(gateway, "http://games.test/", user="amy.b", password="amy-pw").status == 403
    assert main(["exceptions", "grant", "games.test", "--for", "user:Amy.B", "--until", "+10m", "--reason", "maths",
                 "--policy", str(gateway.policy_path)]) == 0
    capsys.readouterr()
    # The exception covers amy however either side spelt her name.
    wait_for(lambda: curl(gateway, "http://games.test/", user="AMY.B", password="amy-pw").status == 200)
    gateway.stop()
    with sqlite3.connect(gateway.db_path) as db:
        rows = db.execute("SELECT username, group_name, verdict FROM access_log ORDER BY seq").fetchall()
    assert rows[0] == ("j.smith", "staff", "allow") and rows[-1] == ("amy.b", "pupils", "allow")
