"""Proxy sign-in that cannot be brute-forced and cannot stall other clients (#10.8):
ProxyLogin and LoginGuard with a real bcrypt htpasswd file, fast and without a gateway.
The same behaviour through a real mitmdump is in test_identity_gateway.py."""

from __future__ import annotations

import asyncio
import base64
import os
import threading

import bcrypt
import pytest

from schoolgate.addons.identity import BadCredentials, HtpasswdBackend, ProxyLogin, TooManyAttempts, parse_basic
from schoolgate.identities import Identity, LoginGuard, Source


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def htpasswd(tmp_path):
    path = tmp_path / "users.htpasswd"
    path.write_text("".join(f"{u}:{bcrypt.hashpw(p.encode(), bcrypt.gensalt(rounds=4)).decode()}\n"
                            for u, p in [("alice", "correct horse"), ("bob", "battery staple")]))
    return path


def run(coro):
    return asyncio.run(coro)


def test_right_password_names_the_user_and_is_remembered(htpasswd):
    login = ProxyLogin()
    backends = [HtpasswdBackend(htpasswd)]

    async def go():
        first = await login.verify("10.0.0.1", basic("alice", "correct horse"), backends)
        again = await login.verify("10.0.0.1", basic("alice", "correct horse"), backends)
        return first, again

    first, again = run(go())
    assert first == again == Identity("alice", Source.PROXY_BASIC)
    assert login.checks == 1


def test_the_sixth_wrong_guess_from_a_client_is_refused_without_a_hash_check(htpasswd):
    clock = Clock()
    login = ProxyLogin(clock=clock)
    backends = [HtpasswdBackend(htpasswd)]

    async def guess(password: str, client: str = "10.0.0.9"):
        return await login.verify(client, basic("alice", password), backends)

    async def go():
        for n in range(5):
            with pytest.raises(BadCredentials) as wrong:
                await guess(f"guess {n}")
            assert not isinstance(wrong.value, TooManyAttempts)
        assert login.checks == 5
        with pytest.raises(TooManyAttempts) as refused:
            await guess("correct horse")  # even the right password: the client is locked out for now
        assert login.checks == 5 and refused.value.retry_after == pytest.approx(30)
        # Another device is not held up by this one's guesses, and alice's own sign-in works there.
        assert (await guess("correct horse", client="10.0.0.10")).user == "alice"
        clock.now += 31
        with pytest.raises(BadCredentials):
            await guess("guess 6")  # after the back-off, one more check; it fails and doubles the wait
        with pytest.raises(TooManyAttempts) as longer:
            await guess("guess 7")
        assert login.checks == 7 and longer.value.retry_after == pytest.approx(60)
        clock.now += 61
        assert (await guess("correct horse")).user == "alice"  # a right answer clears the count

    run(go())


def test_guessing_one_name_from_many_addresses_hits_the_per_user_limit_but_not_a_signed_in_user(htpasswd):
    clock = Clock()
    login = ProxyLogin(LoginGuard(client_limit=5, user_limit=20, clock=clock), clock=clock)
    backends = [HtpasswdBackend(htpasswd)]

    async def go():
        assert (await login.verify("10.0.1.1", basic("bob", "battery staple"), backends)).user == "bob"
        for n in range(20):
            with pytest.raises(BadCredentials):
                await login.verify(f"10.0.2.{n}", basic("bob", f"guess {n}"), backends)
        checks = login.checks
        with pytest.raises(TooManyAttempts):
            await login.verify("10.0.3.1", basic("bob", "guess x"), backends)
        assert login.checks == checks
        # bob's browser, already signed in, keeps working: a pupil cannot lock a teacher out.
        assert (await login.verify("10.0.1.1", basic("bob", "battery staple"), backends)).user == "bob"
        assert login.checks == checks

    run(go())


def test_a_repeated_wrong_header_is_checked_once_and_counted_once(htpasswd):
    login = ProxyLogin()
    backends = [HtpasswdBackend(htpasswd)]

    async def go():
        for _ in range(10):  # a browser retrying a mistyped password on every connection
            with pytest.raises(BadCredentials) as wrong:
                await login.verify("10.0.0.1", basic("alice", "typo"), backends)
            assert not isinstance(wrong.value, TooManyAttempts)

    run(go())
    assert login.checks == 1


class Gate:
    """A password backend that blocks until released: stands for a slow bcrypt or LDAP bind."""

    key = "gate"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.calls = 0

    def generation(self) -> object:
        return 0

    def check(self, user: str, password: str) -> Identity | None:
        self.calls += 1
        assert self.release.wait(10)
        return Identity(user, Source.PROXY_BASIC) if password == "right" else None


def test_checks_run_off_the_event_loop_and_identical_ones_share_one_check():
    login = ProxyLogin()
    gate = Gate()

    async def go():
        logins = [asyncio.create_task(login.verify("10.0.0.1", basic("amy", "right"), [gate])) for _ in range(6)]
        ticks = 0
        while ticks < 50:  # the loop keeps serving while the check is stuck in its thread
            await asyncio.sleep(0)
            ticks += 1
        assert not any(t.done() for t in logins)
        gate.release.set()
        return await asyncio.gather(*logins)

    results = run(go())
    assert {r.user for r in results} == {"amy"} and gate.calls == 1


def test_editing_the_password_file_forgets_remembered_answers(htpasswd):
    login = ProxyLogin()
    backend = HtpasswdBackend(htpasswd)

    async def go():
        assert (await login.verify("10.0.0.1", basic("bob", "battery staple"), [backend])).user == "bob"
        htpasswd.write_text(htpasswd.read_text().split("\n", 1)[0] + "\n")  # bob removed
        st = htpasswd.stat()
        os.utime(htpasswd, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
        with pytest.raises(BadCredentials):
            await login.verify("10.0.0.1", basic("bob", "battery staple"), [backend])

    run(go())


def test_an_unknown_user_is_refused_after_a_full_hash_check(htpasswd):
    backend = HtpasswdBackend(htpasswd)
    assert backend.check("mallory", "anything") is None
    assert backend.check("alice", "correct horse") == Identity("alice", Source.PROXY_BASIC)


def test_guard_keeps_a_bounded_memory_under_a_flood_of_names():
    guard = LoginGuard(max_keys=100)
    for n in range(1000):
        guard.failed(f"10.1.{n // 256}.{n % 256}", f"user{n}")
    assert len(guard._strikes) <= 100


@pytest.mark.parametrize("header", ["Bearer abc", "Basic", "Basic !!!", "Basic " + base64.b64encode(b"nocolon").decode(),
                                    "Basic " + base64.b64encode(b":pw").decode(), "Basic " + base64.b64encode(b"\xff:x").decode()])
def test_malformed_headers_are_bad_credentials(header):
    with pytest.raises(BadCredentials):
        parse_basic(header)


def test_bad_kerberos_tickets_count_per_device_only():
    """A ticket that fails names no one, so it must not count against a shared 'user': bad
    tickets from many devices cannot stop everyone's single sign-on."""
    login = ProxyLogin()

    def refuse(header: str) -> Identity:
        raise ValueError("bad ticket")

    async def go():
        for n in range(30):
            with pytest.raises(BadCredentials) as bad:
                await login.negotiate(f"10.0.5.{n}", "Negotiate AAAA", refuse)
            assert not isinstance(bad.value, TooManyAttempts)
        for _ in range(5):
            with pytest.raises(BadCredentials):
                await login.negotiate("10.0.6.1", "Negotiate AAAA", refuse)
        with pytest.raises(TooManyAttempts):
            await login.negotiate("10.0.6.1", "Negotiate AAAA", refuse)

    run(go())


def test_a_name_in_another_case_is_the_same_user_and_rotating_case_does_not_reset_the_guess_limit(tmp_path):
    path = tmp_path / "users.htpasswd"
    # The file's own spelling does not matter either: names are read in one form.
    path.write_text(f"Bob:{bcrypt.hashpw(b'battery staple', bcrypt.gensalt(rounds=4)).decode()}\n")
    clock = Clock()
    login = ProxyLogin(LoginGuard(client_limit=5, user_limit=20, clock=clock), clock=clock)
    backends = [HtpasswdBackend(path)]

    async def go():
        assert await login.verify("10.0.1.1", basic("BOB", "battery staple"), backends) == Identity("bob", Source.PROXY_BASIC)
        assert (await login.verify("10.0.1.2", basic(" \uff42ob", "battery staple"), backends)).user == "bob"  # full-width b
        spellings = ["bob", "Bob", "bOb", "boB", "BOb", "bOB", "BoB", "BOB"]
        for n in range(20):  # a guesser rotating the case from many addresses
            with pytest.raises(BadCredentials):
                await login.verify(f"10.0.2.{n}", basic(spellings[n % len(spellings)], f"guess {n}"), backends)
        with pytest.raises(TooManyAttempts):
            await login.verify("10.0.3.1", basic("bOb", "guess x"), backends)

    run(go())
