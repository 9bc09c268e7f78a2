"""Policy typos that would quietly weaken the filter: each must make `schoolgate
check` fail, naming the file:line of the unknown key and the key that was meant
(owner: SCHEMA). The base policy is valid; each attempt adds one typo to it."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

SCHOOLGATE = Path(sys.executable).parent / "schoolgate"
BASE = """\
[gateway]
database = "sqlite+aiosqlite:///schoolgate.db"
{gateway}
[retention]
{retention}
[monitoring]
{monitoring}
[categories]
pornography = "block"
{categories}
[groups.pupils]
networks = ["10.0.0.0/8"]
safe_search = true
{group}
"""


@dataclass(frozen=True)
class Typo:
    name: str
    section: str  # which placeholder of BASE the line goes to
    line: str
    meant: str  # the known key check should suggest


TYPOS = [
    Typo("log_url instead of log_urls", "gateway", 'log_url = "none"', "log_urls"),
    Typo("records_day instead of records_days", "retention", "records_day = 30", "records_days"),
    Typo("record_days", "retention", "record_days = 30", "records_days"),
    Typo("flaged_days", "retention", "flaged_days = 30", "flagged_days"),
    Typo("safe_serach", "group", "safe_serach = true", "safe_search"),
    Typo("block_ip_literal", "group", "block_ip_literals_ = true", "block_ip_literals"),
    Typo("requre_auth", "group", "requre_auth = true", "require_auth"),
    Typo("netwrks", "group", 'netwrks = ["10.1.0.0/16"]', "networks"),
    Typo("default_acton", "group", 'default_acton = "block"', "default_action"),
    Typo("block_search_at", "monitoring", 'block_search_at = "high"', "block_searches_at"),
    Typo("flag_min_severty", "monitoring", 'flag_min_severty = "low"', "flag_min_severity"),
    Typo("defualt_group", "gateway", 'defualt_group = "pupils"', "default_group"),
]


def policy_with(typo: Typo) -> str:
    fields = {"gateway": "", "retention": "", "monitoring": "", "categories": "", "group": ""}
    fields[typo.section] = typo.line
    return BASE.format(**fields)


def check(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(SCHOOLGATE), "check", str(path)], capture_output=True, text=True, timeout=60)


def test_the_base_policy_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    path.write_text(BASE.format(gateway="", retention="", monitoring="", categories="", group=""))
    done = check(path)
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.parametrize("typo", TYPOS, ids=[t.name for t in TYPOS])
def test_policy_typo_is_refused(typo: Typo, tmp_path: Path) -> None:
    path = tmp_path / "policy.toml"
    text = policy_with(typo)
    path.write_text(text)
    line = text.splitlines().index(typo.line) + 1
    done = check(path)
    said = done.stdout + done.stderr
    assert done.returncode != 0, f"[SCHEMA] typo passed `schoolgate check`: {said.strip()}"
    assert f"{path.name}:{line}" in said or f"{path}:{line}" in said, f"[SCHEMA] no file:line in: {said.strip()}"
    assert typo.meant in said, f"[SCHEMA] the meant key {typo.meant!r} is not suggested: {said.strip()}"
