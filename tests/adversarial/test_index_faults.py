"""Faults in the category index must never open the filter (owner: LISTS): after each
fault below, done to the compiled index under a running gateway, a site that only
the index lists is still blocked, recorded, and the gateway still runs. The faults
run in order on one gateway; each attempt applies its fault, waits for the reload
check, then asks for the site from its own client address."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from adversary import Attempt, Context, Outcome, Result, get, judge, run_corpus
from support.gateway import Gateway
from support.upstream import Upstream

SITE = "indexonly-adult.example"
POLICY = """\
[gateway]
default_group = "pupils"

[lists]
index = "index.sgidx"

[lists.extra]
pornography = ["extra.txt"]

[categories]
pornography = "block"

[groups.pupils]
networks = ["127.0.0.0/8"]
"""
RELOAD_MS = 200


def fault(change, *, settle: float = 1.0):
    """Apply `change(index_path, good_copy)` to the index, wait for the reload check, then try the site."""
    def send(ctx: Context) -> Result:
        index = ctx.gateway.directory / "index.sgidx"
        change(index, ctx.gateway.directory / "good.sgidx")
        time.sleep(settle)
        result = get(f"http://{SITE}/")(ctx)
        if not ctx.gateway.running:
            result.detail += " | the gateway has died"
            result.status = None
        return result
    return send


def restore(index: Path, good: Path) -> None:
    tmp = index.with_suffix(".restore")
    shutil.copyfile(good, tmp)
    os.replace(tmp, index)


def corrupt_in_place(index: Path, good: Path) -> None:
    restore(index, good)
    time.sleep(RELOAD_MS / 1000 * 3)
    data = bytearray(index.read_bytes())
    for i in range(len(data) // 3, len(data) // 3 + 64):
        data[i] ^= 0xFF
    with open(index, "r+b") as f:  # same file, same size: only the bytes change
        f.write(data)


def truncate_in_place(index: Path, good: Path) -> None:
    restore(index, good)
    time.sleep(RELOAD_MS / 1000 * 3)
    os.truncate(index, index.stat().st_size // 2)


def rename_away(index: Path, good: Path) -> None:
    restore(index, good)
    time.sleep(RELOAD_MS / 1000 * 3)
    index.rename(index.with_suffix(".moved"))


def empty(index: Path, good: Path) -> None:
    index.write_bytes(b"")


def garbage(index: Path, good: Path) -> None:
    index.write_bytes(os.urandom(good.stat().st_size * 3))


def header_only(index: Path, good: Path) -> None:
    index.write_bytes(good.read_bytes()[:64])


def unchanged(index: Path, good: Path) -> None:
    pass


A = Attempt
FAULTS = [
    A("index as compiled", "index", "LISTS", fault(unchanged, settle=0)),
    A("index corrupted in place, same size", "index", "LISTS", fault(corrupt_in_place)),
    A("index truncated in place", "index", "LISTS", fault(truncate_in_place)),
    A("index renamed away", "index", "LISTS", fault(rename_away)),
    A("index replaced by an empty file", "index", "LISTS", fault(empty)),
    A("index replaced by random bytes", "index", "LISTS", fault(garbage)),
    A("index cut to its header", "index", "LISTS", fault(header_only)),
]


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory: pytest.TempPathFactory, upstream_servers: Upstream) -> dict[str, Outcome]:
    directory = tmp_path_factory.mktemp("index-faults")
    gateway = Gateway(directory, POLICY, loopback_http_port=upstream_servers.http_port,
                      loopback_https_port=upstream_servers.https_port,
                      options={"schoolgate_reload_ms": RELOAD_MS, "schoolgate_lists_fetch": False})
    (directory / "extra.txt").write_text(SITE + "\n")
    subprocess.run([str(Path(sys.executable).parent / "schoolgate"), "lists", "update", "--policy", str(gateway.policy_path)],
                   check=True, capture_output=True, timeout=120)
    shutil.copyfile(directory / "index.sgidx", directory / "good.sgidx")
    gateway.start()
    try:
        yield run_corpus(gateway, upstream_servers, FAULTS, {}, tag="sgi", workers=1)
    finally:
        gateway.stop()


@pytest.mark.parametrize("attempt", FAULTS, ids=[a.name for a in FAULTS])
def test_index_fault(attempt: Attempt, outcomes: dict[str, Outcome]) -> None:
    problems = judge(attempt, outcomes[attempt.name])
    assert not problems, f"[{attempt.owner}] {attempt.klass}: " + "; ".join(problems)
