"""Guessing proxy passwords (owner: IDENTITY): guesses are limited per address and per
user, do not stall anyone else, cannot lock out a user who is signed in, and are
recorded. Real mitmdump with a bcrypt htpasswd file, real curl from separate addresses."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import bcrypt
import pytest

from adversary import client_ip, records_for
from support.clients import curl
from support.gateway import Gateway
from support.upstream import Upstream
from support.waiting import wait_for

POLICY = """\
[gateway]
default_group = "pupils"

[auth]
htpasswd = "users.htpasswd"

[groups.pupils]
networks = ["127.0.0.0/8"]
require_auth = true
"""
USERS = {"teacher": "Correct-Horse-1", "amy": "amy-Pass-22", "sam": "sam-Pass-33"}


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory, upstream_servers: Upstream) -> Iterator[Gateway]:
    directory = tmp_path_factory.mktemp("proxy-auth")
    lines = [f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=10)).decode()}" for u, p in USERS.items()]
    (directory / "users.htpasswd").write_text("\n".join(lines) + "\n")
    gw = Gateway(directory, POLICY, loopback_http_port=upstream_servers.http_port,
                 loopback_https_port=upstream_servers.https_port)
    with gw:
        yield gw


def ask(gw: Gateway, ip: str, user: str, password: str) -> int:
    return curl(gw, "http://www.bbc.co.uk/", source_ip=ip, user=user, password=password, max_time=30).status


def test_guesses_from_one_address_stop_being_checked(gateway: Gateway) -> None:
    guesser = client_ip(1)
    statuses = [ask(gateway, guesser, "teacher", f"guess{n}") for n in range(30)]
    assert set(statuses) == {407}
    assert ask(gateway, guesser, "teacher", USERS["teacher"]) == 407, \
        "[IDENTITY] the 31st guess from one address was still checked (and right)"


def test_guessing_does_not_stop_other_pupils(gateway: Gateway) -> None:
    guesser, pupil = client_ip(2), client_ip(3)
    stop = threading.Event()

    def guess() -> None:
        n = 0
        while not stop.is_set() and n < 60:
            ask(gateway, guesser, "sam", f"wrong{n}")
            n += 1

    thread = threading.Thread(target=guess)
    thread.start()
    try:
        statuses = [ask(gateway, pupil, "amy", USERS["amy"]) for _ in range(10)]
    finally:
        stop.set()
        thread.join(120)
    assert statuses == [200] * 10, f"[IDENTITY] a signed-in pupil was refused while another guessed: {statuses}"


def test_a_signed_in_user_is_not_locked_out_by_guesses_from_elsewhere(gateway: Gateway) -> None:
    owner = client_ip(4)
    assert ask(gateway, owner, "amy", USERS["amy"]) == 200
    for n in range(25):
        ask(gateway, client_ip(10 + n), "amy", f"not-amy{n}")
    assert ask(gateway, owner, "amy", USERS["amy"]) == 200, "[IDENTITY] guesses from elsewhere locked amy out"


def test_failed_sign_ins_are_recorded(gateway: Gateway) -> None:
    guesser = client_ip(5)
    for n in range(3):
        ask(gateway, guesser, "teacher", f"nope{n}")
    try:
        wait_for(lambda: bool(records_for(gateway, guesser)), timeout=10)
    except AssertionError:
        raise AssertionError("[IDENTITY] failed sign-ins are not recorded") from None
