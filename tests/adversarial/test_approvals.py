"""Exceptions that open more than was asked (owner: SCHEMA): a teacher opens one page
or a whole host for one pupil's device; pages on that host listed as pornography must
stay blocked, however the pupil spells them. Real `schoolgate exceptions grant`
against the gateway's database, real curl from the device the exception names."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from adversary import Attempt, Outcome, client_ip, get, judge, run_corpus
from support.clients import curl
from support.gateway import Gateway
from support.upstream import Upstream

SCHOOLGATE = Path(sys.executable).parent / "schoolgate"
POLICY = """\
[gateway]
default_group = "pupils"

[exceptions]
teacher_groups = ["pupils"]
teacher_max_severity = "low"

[categories]
pornography = "block"

[groups.pupils]
networks = ["127.0.0.0/8"]
"""
A = Attempt
# (what the teacher opened for this attempt's device, the attempt)
GRANTED = [
    ("mixed.test/homework", A("page exception, listed page on the host", "approvals", "SCHEMA",
                              get("http://mixed.test/adult-section"))),
    ("mixed.test", A("host exception, listed page on the host", "approvals", "SCHEMA", get("http://mixed.test/adult-section"))),
    ("mixed.test", A("host exception, listed page in capitals", "approvals", "SCHEMA", get("http://mixed.test/ADULT-Section/x"))),
    ("mixed.test", A("host exception, listed page over HTTPS", "approvals", "SCHEMA", get("https://mixed.test/adult-section"))),
    ("mixed.test/homework", A("page exception, dot segments to a listed page", "approvals", "SCHEMA",
                              get("http://mixed.test/homework/../adult-section", "--path-as-is"))),
    ("mixed.test/adult-section", A("exception naming the listed page itself", "approvals", "SCHEMA",
                                   get("http://mixed.test/adult-section"))),
    ("category:pornography", A("teacher opening pornography", "approvals", "SCHEMA", get("http://adult.test/"))),
]
ATTEMPTS = [attempt for _, attempt in GRANTED]
# What the CLI refuses a teacher outright: a category, or a page, listed as pornography.
REFUSED_AT_GRANT = {"category:pornography", "mixed.test/adult-section"}


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, upstream_servers: Upstream) -> dict[str, Outcome]:
    gateway = Gateway(tmp_path_factory.mktemp("approvals"), POLICY, loopback_http_port=upstream_servers.http_port,
                      loopback_https_port=upstream_servers.https_port, options={"schoolgate_live_ms": 200})
    with gateway:
        granted = []
        for n, (what, _) in enumerate(GRANTED):
            done = subprocess.run([str(SCHOOLGATE), "exceptions", "grant", what, "--for", f"network:{client_ip(n)}/32",
                                   "--until", "+30m", "--reason", "homework", "--by", "mr.teacher", "--role", "teacher",
                                   "--policy", str(gateway.policy_path)], capture_output=True, timeout=60)
            if done.returncode == 0:
                granted.append(what)
        # The attempts prove something only if the grants they get round were really made.
        assert granted == [what for what, _ in GRANTED if what not in REFUSED_AT_GRANT], granted
        wait_for_exceptions(gateway, len(granted))
        return run_corpus(gateway, upstream_servers, ATTEMPTS, {}, tag="sga")


def wait_for_exceptions(gateway: Gateway, count: int) -> None:
    """Until the gateway says it applies `count` exceptions (its live poll has read them)."""
    deadline = time.monotonic() + 30
    while f": {count} exceptions" not in gateway.log_text():
        if time.monotonic() > deadline:
            raise AssertionError(f"the gateway did not pick up {count} exceptions within 30 s")
        time.sleep(0.1)


def test_a_granted_page_itself_opens(tmp_path_factory: pytest.TempPathFactory, upstream_servers: Upstream) -> None:
    """The exceptions above are real: the page asked for does open (else the attempts prove nothing)."""
    gateway = Gateway(tmp_path_factory.mktemp("approvals-ok"), POLICY, loopback_http_port=upstream_servers.http_port,
                      loopback_https_port=upstream_servers.https_port, options={"schoolgate_live_ms": 200})
    with gateway:
        subprocess.run([str(SCHOOLGATE), "exceptions", "grant", "mixed.test/homework", "--for", "network:127.1.9.9/32",
                        "--until", "+30m", "--reason", "homework", "--by", "mr.teacher", "--role", "teacher",
                        "--policy", str(gateway.policy_path)], check=True, capture_output=True, timeout=60)
        wait_for_exceptions(gateway, 1)
        assert curl(gateway, "http://mixed.test/homework", source_ip="127.1.9.9").status == 200


@pytest.mark.parametrize("attempt", ATTEMPTS, ids=[a.name for a in ATTEMPTS])
def test_approval(attempt: Attempt, outcomes: dict[str, Outcome]) -> None:
    problems = judge(attempt, outcomes[attempt.name])
    assert not problems, f"[{attempt.owner}] {attempt.klass}: " + "; ".join(problems)
