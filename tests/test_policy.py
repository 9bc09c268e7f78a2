"""policy.toml: the default runs, and every kind of mistake is reported with
file, line and what is wrong."""

import dataclasses
import re
from pathlib import Path

import pytest

from schoolgate.cli import main
from schoolgate.policy import SECTIONS, Action, Group, PolicyInvalid, known_keys, load_policy, toml_key

REPO = Path(__file__).resolve().parents[1]

MINIMAL = """\
[gateway]
default_group = "pupils"

[groups.pupils]
networks = ["10.0.0.0/8"]
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.toml"
    path.write_text(text)
    return path


def problems(tmp_path: Path, text: str) -> list[tuple[int | None, str]]:
    with pytest.raises(PolicyInvalid) as caught:
        load_policy(write(tmp_path, text))
    for problem in caught.value.problems:
        assert problem.file.endswith("policy.toml")
    return [(p.line, p.message) for p in caught.value.problems]


def test_default_policy_is_valid_and_sensible():
    policy = load_policy(REPO / "policy.toml")
    assert {"pupils-primary", "pupils-secondary", "staff", "guests"} <= set(policy.groups)
    primary = policy.groups["pupils-primary"]
    assert primary.action_for("pornography") is Action.BLOCK  # from the global [categories]
    assert primary.action_for("social-media") is Action.BLOCK  # the group's own
    assert policy.groups["staff"].action_for("social-media") is Action.ALLOW  # default action
    assert policy.groups["pupils-secondary"].action_for("games") is Action.WARN
    assert policy.gateway.database.startswith("sqlite+aiosqlite:////")  # made absolute beside the policy
    assert policy.intercepts("example.com", set()) and not policy.intercepts("x.example", {"banking"})


def test_groups_by_network_longest_prefix_and_users(tmp_path):
    policy = load_policy(write(tmp_path, MINIMAL + """
[groups.room12]
networks = ["10.1.2.0/24"]
[groups.staff]
networks = ["fd00:30::/32"]
users = ["mrs.khan"]
"""))
    assert policy.group_for("10.9.9.9", None)[0].name == "pupils"
    assert policy.group_for("10.1.2.3", None)[0].name == "room12"
    assert policy.group_for("::ffff:10.1.2.3", None)[0].name == "room12"
    assert policy.group_for("fd00:30::5", None)[0].name == "staff"
    assert policy.group_for("10.1.2.3", "mrs.khan")[0].name == "staff"  # a known user beats the network
    assert policy.group_for("192.0.2.1", None)[0].name == "pupils"  # default group


def test_toml_syntax_error_has_line(tmp_path):
    found = problems(tmp_path, MINIMAL + '\n[local]\nallow = ["a.com",\n  "b.com"\nblock = []\n')
    assert len(found) == 1
    line, message = found[0]
    assert line is not None and line >= 8 and "not valid TOML" in message


def test_every_problem_is_listed_with_its_line(tmp_path):
    text = MINIMAL + """\
[categories]
pornografy = "block"
gambling = "blok"

[groups.staff]
networks = ["10.30.0.1/16", "not-a-network", "10.0.0.0/8"]

[local]
allow = ["good.example", "bad..example"]
block = ["good.example"]
"""
    found = problems(tmp_path, text)
    by_message = {message: line for line, message in found}

    def line_of(fragment: str) -> int | None:
        return next(line for message, line in by_message.items() if fragment in message)

    lines = text.splitlines()
    assert "pornografy" in lines[line_of("did you mean 'pornography'") - 1]
    assert "blok" in lines[line_of("'blok' is not an action") - 1]
    assert "10.30.0.1/16" in lines[line_of("did you mean 10.30.0.0/16") - 1]
    assert line_of("'not-a-network' is not a valid CIDR") is not None
    assert line_of("10.0.0.0/8 is in both pupils and staff") is not None
    assert "bad..example" in lines[line_of("bad..example") - 1]
    assert line_of("on both the allow list") is not None
    assert len(found) == 7


def test_unknown_keys_and_missing_references(tmp_path):
    found = problems(tmp_path, """\
[gatway]
x = 1
[gateway]
default_group = "nobody"
log_urls = "some"
[groups.pupils]
networks = []
require_auth = true
colour = "red"
""")
    messages = " | ".join(m for _, m in found)
    assert "unknown section [gatway]" in messages
    assert "default_group 'nobody' is not a defined group" in messages
    assert "log_urls = 'some'" in messages
    assert "require_auth = true but [auth] htpasswd is not set" in messages
    assert "unknown setting 'colour'" in messages
    assert all(line is not None for line, _ in found)


def test_list_files_are_read_and_checked(tmp_path):
    (tmp_path / "allow.txt").write_text("# teachers' sites\nscratch.mit.edu\n\nexample.org/maths  # a comment\nbad host\n")
    with pytest.raises(PolicyInvalid) as caught:
        load_policy(write(tmp_path, MINIMAL + '[local]\nallow_files = ["allow.txt"]\n'))
    (problem,) = caught.value.problems
    assert problem.file.endswith("allow.txt") and problem.line == 5 and "bad host" in problem.message

    (tmp_path / "allow.txt").write_text("scratch.mit.edu\nexample.org/maths\n")
    policy = load_policy(tmp_path / "policy.toml")
    assert [(e.host, e.path, e.source.rsplit("/", 1)[-1]) for e in policy.local] == [
        ("scratch.mit.edu", "", "allow.txt:1"),
        ("example.org", "/maths", "allow.txt:2"),
    ]
    assert tmp_path / "allow.txt" in policy.watched_files


def test_check_command(tmp_path, capsys):
    good = write(tmp_path, MINIMAL)
    assert main(["check", str(good)]) == 0
    assert "ok" in capsys.readouterr().out
    good.write_text(MINIMAL + '[categories]\ngames = "sometimes"\n')
    assert main(["check", str(good)]) == 1
    out = capsys.readouterr().out
    assert f"{good}:7: categories.games = 'sometimes' is not an action" in out


# ---- the declared schema -------------------------------------------------------------------

def declared_tables() -> dict[str, type]:
    """Every TOML table the schema declares, by the name README uses for it."""
    tables = dict(SECTIONS)
    tables["groups.NAME"] = Group
    for name, cls in SECTIONS.items():
        for f in dataclasses.fields(cls):
            if dataclasses.is_dataclass(f.default) and not f.metadata.get("hidden"):
                tables[f"{name}.{toml_key(f)}"] = type(f.default)
    return tables


def readme_reference() -> dict[str, set[str]]:
    """README's policy reference table: the keys each row names, by section."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    reference = text.split("## Policy reference", 1)[1].split("\n## ", 1)[0]
    keys: dict[str, set[str]] = {}
    for row in re.findall(r"^\| `\[([^\]]+)\]([^|]*)\|", reference, flags=re.M):
        section, rest = row
        keys.setdefault(section, set()).update(re.findall(r"`?([a-z_]+)`?", rest.strip().strip("`")))
    return keys


def test_every_setting_is_in_the_readme_policy_reference():
    reference = readme_reference()
    missing = [f"[{table}] {key}" for table, cls in declared_tables().items() for key in known_keys(cls)
               if key not in reference.get(table, set()) and f"{table}.{key}" not in reference]  # [lists.extra] rows
    assert not missing, "README's policy reference lacks: " + ", ".join(missing)


def test_every_default_is_a_valid_policy(tmp_path):
    """A policy naming every setting at its declared default reads back to those defaults."""
    policy = load_policy(write(tmp_path, MINIMAL))
    for name in SECTIONS:
        if name == "local":
            continue
        section = getattr(policy, name)
        for f in dataclasses.fields(section):
            if f.metadata.get("hidden") or dataclasses.is_dataclass(f.default) or f.default is dataclasses.MISSING:
                continue
            value = getattr(section, f.name)
            if isinstance(f.default, Path):  # default paths live beside the policy
                assert value == tmp_path / f.default, (name, f.name)
            elif not (name == "gateway" and f.name in ("database", "default_group", "unknown_group")):  # resolved by the loader
                assert value == f.default, (name, f.name)


@pytest.mark.parametrize(("section", "line", "meant"), [
    ("gateway", 'log_url = "none"', "log_urls"),
    ("retention", "record_days = 30", "records_days"),
    ("console", 'trusted_proxy = ["10.0.0.1"]', "trusted_proxies"),
    ("alerts.email", 'hots = "smtp.example"', "host"),
    ("tls", "intercpt = false", "intercept"),
    ("groups.pupils", 'raw_tunnel = "allow"', "raw_tunnels"),
    ("monitoring", 'block_search_at = "high"', "block_searches_at"),
])
def test_unknown_keys_name_their_line_and_the_key_meant(tmp_path, section, line, meant):
    header = f"[{section}]\n"
    text = MINIMAL.replace(header, header + line + "\n") if header in MINIMAL else MINIMAL + "\n" + header + line + "\n"
    found = problems(tmp_path, text)
    assert len(found) == 1, found
    (number, message), = found
    assert text.splitlines()[number - 1] == line
    assert f"did you mean {meant!r}?" in message


def test_unknown_section_suggests_the_nearest(tmp_path):
    (found,) = problems(tmp_path, MINIMAL + "[retenion]\nrecords_days = 30\n")
    assert found == (6, "unknown section [retenion]; did you mean [retention]?")


def test_wrong_types_are_refused_with_the_type_wanted(tmp_path):
    found = dict((m, n) for n, m in problems(tmp_path, MINIMAL + '[retention]\nrecords_days = "30"\n'
                                                        '[tls]\nintercept = 1\n'))
    assert found == {"retention.records_days must be a whole number, not str": 7,
                     "tls.intercept must be a boolean (true or false), not int": 9}


def test_new_gateway_console_and_group_settings(tmp_path):
    policy = load_policy(write(tmp_path, MINIMAL.replace(
        'default_group = "pupils"', 'default_group = "pupils"\ninternal_destinations = ["127.0.0.1:8443", "Printer.lan"]')
        + 'raw_tunnels = "allow"\n[console]\ntrusted_proxies = ["10.0.0.5", "::ffff:10.0.0.6", "192.168.0.0/24"]\n'))
    assert policy.gateway.internal_destinations == ("127.0.0.1:8443", "printer.lan")
    assert policy.groups["pupils"].raw_tunnels is Action.ALLOW
    assert [str(n) for n in policy.console.trusted_proxies] == ["10.0.0.5/32", "10.0.0.6/32", "192.168.0.0/24"]
    assert load_policy(write(tmp_path, MINIMAL)).groups["pupils"].raw_tunnels is Action.BLOCK  # the default
    found = problems(tmp_path, MINIMAL.replace('default_group = "pupils"',
                                               'default_group = "pupils"\ninternal_destinations = ["bad host:99999"]')
                     + 'raw_tunnels = "warn"\n[console]\ntrusted_proxies = ["proxy.example"]\n')
    messages = " | ".join(m for _, m in found)
    assert "'bad host:99999' is not a host, host:port or network" in messages
    assert "raw_tunnels = 'warn' is not an action; use one of: allow, block" in messages
    assert "'proxy.example' is not an IP address or network" in messages


def test_the_shipped_policy_gives_staff_raw_tunnels_and_pupils_none():
    policy = load_policy(REPO / "policy.toml")
    assert policy.groups["staff"].raw_tunnels is Action.ALLOW
    assert all(g.raw_tunnels is Action.BLOCK for name, g in policy.groups.items() if name.startswith("pupils"))


def test_openid_connect_needs_the_schools_account_domains(tmp_path):
    text = MINIMAL + '[portal]\nhost = "signin.test"\npasswords = false\n[portal.oidc]\nissuer = "https://login.test"\nclient_id = "c"\n'
    assert [m for _, m in problems(tmp_path, text) if "allowed_domains" in m]
    assert load_policy(write(tmp_path, text + 'allowed_domains = ["school.test"]\n')).portal.oidc.enabled


def test_group_users_are_matched_in_one_form(tmp_path):
    policy = load_policy(write(tmp_path, MINIMAL + '[groups.staff]\nusers = ["Mrs.Khan"]\n'))
    assert policy.groups["staff"].users == frozenset({"mrs.khan"})
    assert policy.group_for("10.1.2.3", "MRS.KHAN")[0].name == "staff"
