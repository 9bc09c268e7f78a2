"""The filtering and monitoring self-check: the judgement over given facts (plain Python),
and `schoolgate selfcheck` probing a real mitmdump running the shipped policy.toml, with
the loopback upstream standing in for the sites and a webhook receiver for the DSL."""

from __future__ import annotations

import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from test_gateway import records

from schoolgate.addons.signing import Signer
from schoolgate.categories.health import Health, IndexStatus, Serving
from schoolgate.keys import load_or_create_secret
from schoolgate.policy import load_policy
from schoolgate.reports.probes import parse_metrics
from schoolgate.reports.selfcheck import ADULT, ALERT, DOH, SAFESEARCH, VPN, Facts, Probe, Status, assess

from support.clients import curl
from support.waiting import wait_for

REPO = Path(__file__).resolve().parents[1]
SCHOOLGATE = Path(sys.executable).with_name("schoolgate")


def shipped_policy(webhook_url: str = "", safe_search: bool = True) -> str:
    """The repository's policy.toml as shipped, on this gateway's database and metrics port."""
    text = (REPO / "policy.toml").read_text(encoding="utf-8")
    text = re.sub(r'^database = .*$', 'database = "{database}"', text, count=1, flags=re.M)
    text = re.sub(r'^metrics_port = .*$', "metrics_port = {metrics_port}", text, count=1, flags=re.M)
    text = text.replace('index = "var/categories.idx"', 'index = "{dir}/categories.idx"')
    if webhook_url:
        text = re.sub(r'^url = ""(.*)$', f'url = "{webhook_url}"', text, count=1, flags=re.M)
    if not safe_search:
        text = text.replace("[groups.pupils-secondary]\n", "[groups.pupils-secondary]\nsafe_search = false\n", 1)
        text = text.replace("networks = [\"10.20.0.0/16\", \"127.0.0.0/8\", \"::1/128\"]\nsafe_search = true\n",
                            "networks = [\"10.20.0.0/16\", \"127.0.0.0/8\", \"::1/128\"]\n")
    return text


def written(policy_text: str, tmp_path: Path) -> Path:
    """The policy outside a gateway: its placeholders filled in, metrics off."""
    path = tmp_path / "policy.toml"
    path.write_text(policy_text.replace("{database}", f"sqlite+aiosqlite:///{tmp_path}/sg.db")
                    .replace("{metrics_port}", "0").replace("{dir}", str(tmp_path)), encoding="utf-8")
    return path


def facts(policy_text: str, tmp_path: Path, probes: dict[str, Probe], roles: dict[str, int] | None = None) -> Facts:
    path = written(policy_text, tmp_path)
    policy = load_policy(path)
    health = Health(IndexStatus(Serving.INDEX), entries={c: 100 for c in ("pornography", "vpn-proxy", "doh", "hate", "gambling")},
                    actions={"pornography": "block"}, created=0.0, max_age_days=7, now=3600.0)
    return Facts(policy=policy, health=health, illegal_entries={"iwf": 10, "ctiru": 5}, illegal_problems=(),
                 accounts_by_role={"dsl": 1, "it_admin": 1} if roles is None else roles, probes=probes)


def by_title(items: list, title: str, source: str = "UKSIC") -> object:
    return next(i for i in items if i.title == title and i.source.startswith(source))


def test_a_failed_probe_is_not_met_whatever_the_policy_says(tmp_path):
    text = shipped_policy("https://hooks.school.test/x")
    passed = {name: Probe(name, True, "fine") for name in (ADULT, SAFESEARCH, DOH, VPN, ALERT)}
    items = assess(facts(text, tmp_path, passed))
    assert by_title(items, "Safe search").status is Status.MET
    assert by_title(items, "Pornography").status is Status.MET
    assert by_title(items, "Alert management").status is Status.MET

    failed = {**passed, SAFESEARCH: Probe(SAFESEARCH, False, "came back without safe=active"),
              ALERT: Probe(ALERT, False, "webhook: HTTP 500")}
    items = assess(facts(text, tmp_path, failed))
    safe = by_title(items, "Safe search")
    assert safe.status is Status.NOT_MET and "without safe=active" in safe.evidence and safe.action
    assert by_title(items, "Alert management").status is Status.NOT_MET
    # A probe that could not run leaves a configuration "met" as "cannot tell".
    unreached = {**passed, ADULT: Probe(ADULT, None, "no answer from the gateway")}
    assert by_title(assess(facts(text, tmp_path, unreached)), "Pornography").status is Status.CANNOT_TELL


def test_the_configuration_alone_decides_when_nothing_is_probed(tmp_path):
    text = shipped_policy()  # no alert channel
    items = assess(facts(text, tmp_path, {}, roles={}))
    assert by_title(items, "Alert management").status is Status.NOT_MET
    roles = next(i for i in items if i.title.startswith("1. Roles"))
    assert roles.status is Status.NOT_MET and "--role dsl" in roles.action
    # Pupils allowed a category UKSIC lists: not met, naming the group.
    lax = text.replace('[groups.pupils-secondary.categories]\n', '[groups.pupils-secondary.categories]\ngambling = "allow"\n')
    gambling = by_title(assess(facts(lax, tmp_path, {})), "Gambling")
    assert gambling.status is Status.NOT_MET and "pupils-secondary" in gambling.action
    # Staff may be allowed it: only pupils' groups (raw tunnels blocked) count.
    staff = text.replace('[groups.staff.categories]\n', '[groups.staff.categories]\ngambling = "allow"\n')
    assert by_title(assess(facts(staff, tmp_path, {})), "Gambling").status is Status.MET
    # Only monitored for pupils: partly.
    watched = text.replace("[groups.pupils-secondary.categories]\n", "[groups.pupils-secondary.categories]\ngambling = \"monitor\"\n")
    assert by_title(assess(facts(watched, tmp_path, {})), "Gambling").status is Status.PARTLY


def test_metrics_are_read_from_the_prometheus_text():
    text = ('# HELP x\nschoolgate_illegal_tier_ok 1.0\nschoolgate_illegal_tier_entries{provider="iwf"} 12.0\n'
            'schoolgate_category_lists_age_seconds 86.5\nschoolgate_other 3\n')
    assert parse_metrics(text) == {"illegal_tier_ok": 1.0, "illegal_entries:iwf": 12.0, "lists_age_seconds": 86.5}


def write_tier(root: Path) -> Path:
    (root / "iwf").mkdir(parents=True)
    (root / "ctiru").mkdir()
    (root / "iwf" / "iwf.txt").write_text("iwf-listed.example/gallery/\n")
    (root / "ctiru" / "ctiru.txt").write_text("ctiru.example/video/42\n")
    return root


def selfcheck(gw, tier: Path, *args: str) -> tuple[int, dict]:
    env = {**os.environ, "SCHOOLGATE_ILLEGAL_DIR": str(tier)}
    done = subprocess.run([str(SCHOOLGATE), "selfcheck", "--policy", str(gw.policy_path), "--proxy", gw.proxy_url,
                           "--format", "json", *args], capture_output=True, text=True, env=env, timeout=120)
    assert done.stdout, done.stderr
    return done.returncode, json.loads(done.stdout)


def item(report: dict, title: str, source: str = "UKSIC") -> dict:
    return next(i for i in report["items"] if i["item"] == title and i["source"].startswith(source))


def test_selfcheck_probes_a_real_gateway_on_the_shipped_policy(gateway_factory, upstream, tmp_path, webhook):
    from schoolgate.cli import main

    tier = write_tier(tmp_path / "illegal-content")
    gw = gateway_factory(shipped_policy(webhook.url), options={"schoolgate_illegal_dir": str(tier),
                                                              "schoolgate_lists_fetch": False,
                                                              "schoolgate_reload_ms": 200})
    assert main(["lists", "update", "--policy", str(gw.policy_path), "--source", str(REPO / "tests" / "fixtures" / "ut1"),
                 "--output", str(gw.directory / "categories.idx")]) == 0

    code, report = selfcheck(gw, tier)
    probes = {p["probe"]: p for p in report["probes"]}
    for name in (ADULT, SAFESEARCH, DOH, VPN, ALERT):
        assert probes[name]["passed"] is True, probes[name]
    assert "as group pupils-secondary" in probes[ADULT]["evidence"]
    assert item(report, "Safe search")["status"] == "met"
    assert item(report, "Pornography")["status"] == "met"
    assert item(report, "Circumvention")["status"] in ("met", "partly")  # guests may use bare IPs in the shipped policy
    assert item(report, "IWF: block child sexual abuse material using the IWF URL list")["status"] == "met"
    assert "in the running gateway" in item(report, "IWF: block child sexual abuse material using the IWF URL list")["evidence"]
    assert webhook.requests and webhook.requests[-1][1]["risk"] == "self-check"
    # The shipped policy has no DSL account and network-only identity: those are not met, so exit 1.
    assert code == 1 and report["counts"]["not met"] >= 1
    # The blocked probes never reached the sites, and the probe's mark did not either.
    assert not [r for r in upstream.requests if r.hostname in ("www.pornhub.com", "nordvpn.com", "dns.google")]
    (search,) = [r for r in upstream.requests if r.hostname == "www.google.com" and "safe=active" in r.query]
    assert "x-schoolgate-probe" not in search.headers
    # Recorded as probes, decided as any pupil's request: no incident, no alert for the DSL.
    wait_for(lambda: {r["host"] for r in records(gw)} >= {"www.pornhub.com", "nordvpn.com", "dns.google"})
    probed = [r for r in records(gw) if r["host"] in ("www.pornhub.com", "nordvpn.com", "dns.google")]
    assert all(r["verdict"] == "block" and r["rule"].endswith("(self-check probe)") and r["flag"] is None
               for r in probed), probed
    with sqlite3.connect(gw.db_path) as db:
        assert db.execute("SELECT count(*) FROM incidents").fetchone() == (0,)
    assert {body["risk"] for _, body in webhook.requests} == {"self-check"}

    # A pupil's copy of the mark (expired, or for another site) changes nothing: flagged as ever.
    token = Signer(load_or_create_secret(load_policy(gw.policy_path).gateway.secret_file)).probe_token("nordvpn.com")
    assert curl(gw, "http://www.pornhub.com/", "-H", f"X-Schoolgate-Probe: {token}").status == 403
    wait_for(lambda: any(r["host"] == "www.pornhub.com" and r["flag"] == "pornography" for r in records(gw)))

    # SafeSearch switched off for the probe's group: the probe sees it and the item is not met.
    gw.write_policy(shipped_policy(webhook.url, safe_search=False))

    def safe_search_item() -> dict:
        return item(selfcheck(gw, tier, "--no-alert")[1], "Safe search")

    wait_for(lambda: safe_search_item()["status"] == "not met", timeout=30)
    assert "without safe=active" in safe_search_item()["evidence"]


@pytest.mark.parametrize("fmt", ["text", "html"])
def test_selfcheck_without_probes_prints_text_and_a_printable_page(tmp_path, fmt):
    policy = written(shipped_policy(), tmp_path)
    done = subprocess.run([str(SCHOOLGATE), "selfcheck", "--policy", str(policy), "--no-probes", "--format", fmt],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1  # no illegal-content lists, no alert channel
    if fmt == "text":
        assert "[NOT MET    ] IWF: block child sexual abuse material" in done.stdout
    else:
        assert done.stdout.startswith("<!doctype html>") and "<style>" in done.stdout
        assert "Integrate the police assessed list of unlawful terrorist content" in done.stdout


def test_a_probe_mark_holds_for_its_own_site_and_only_briefly():
    signer = Signer(b"k" * 32)
    token = signer.probe_token("nordvpn.com", now=1000)
    assert signer.is_probe("nordvpn.com", token, now=1119)
    assert not signer.is_probe("nordvpn.com", token, now=1121)  # a copied mark soon expires
    assert not signer.is_probe("www.pornhub.com", token, now=1000)
    assert not Signer(b"j" * 32).is_probe("nordvpn.com", token, now=1000)
    assert not signer.is_probe("nordvpn.com", "9999999999.forged", now=1000)


def test_the_self_check_never_makes_the_gateways_key(tmp_path, monkeypatch):
    # Run as another user (root, say), a key made here could lock the gateway out of its own.
    import asyncio

    from schoolgate.engine import Engine
    from schoolgate.reports.probes import run_probes

    monkeypatch.setenv("SCHOOLGATE_STATE_DIR", str(tmp_path / "state"))
    engine = Engine.load(written(shipped_policy(), tmp_path))
    key = engine.policy.gateway.secret_file
    assert key is not None and not key.exists()
    probes = asyncio.run(run_probes(engine, "http://127.0.0.1:9", "", send_alert=False))  # nothing listens there
    assert probes[ADULT].passed is None and "no answer" in probes[ADULT].evidence
    assert not key.exists()
