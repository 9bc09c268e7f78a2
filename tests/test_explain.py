"""`schoolgate explain`: IT staff ask "why was this blocked?" before a pupil does."""

from pathlib import Path

import pytest

from schoolgate.cli import main

POLICY = """\
[gateway]
default_group = "secondary"

[tls]
no_intercept_categories = ["banking"]

[local]
allow = ["ok.adult.test", "news.test", "shop.test"]
block = ["shop.test/checkout"]

[categories]
pornography = "block"

[groups.secondary]
title = "Secondary"
networks = ["10.20.0.0/16"]

[groups.staff]
title = "Staff"
networks = ["10.30.0.0/16"]
users = ["mrs.khan"]
decrypt = "all"
[groups.staff.categories]
pornography = "warn"

[groups.library]
title = "Library"
networks = ["10.40.0.0/16"]
require_auth = true

[auth]
htpasswd = "users.htpasswd"

[portal]
host = "signin.news.test"
"""


@pytest.fixture
def policy(tmp_path: Path) -> str:
    path = tmp_path / "policy.toml"
    path.write_text(POLICY)
    (tmp_path / "users.htpasswd").write_text("")
    return str(path)


def explain(capsys, policy: str, *args: str) -> tuple[int, dict[str, str]]:
    code = main(["explain", "--policy", policy, *args])
    out = capsys.readouterr().out
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    return code, {k.strip(): v.strip() for k, v in fields.items()}


def test_explains_a_category_block_by_client_network(capsys, policy):
    code, out = explain(capsys, policy, "HTTPS://WWW.Adult.test./page", "--client", "10.20.1.5")
    assert code == 0
    assert out["url"] == "https://www.adult.test/page"
    assert out["group"] == "secondary (client 10.20.1.5 is in 10.20.0.0/16 (secondary))"
    assert out["verdict"] == "BLOCK"
    assert out["rule"] == "category pornography:adult.test"
    assert out["categories"] == "pornography"
    assert out["https"].startswith("decrypted")


def test_explains_a_local_allow_with_its_line(capsys, policy):
    code, out = explain(capsys, policy, "http://ok.adult.test/", "--group", "secondary")
    assert out["verdict"] == "ALLOW" and out["rule"] == "local-allow ok.adult.test"
    assert out["source"].endswith("policy.toml:8")


def test_user_and_passthrough(capsys, policy):
    code, out = explain(capsys, policy, "https://bank.test/", "--client", "10.20.1.5", "--user", "mrs.khan")
    assert out["group"].startswith("staff (user mrs.khan is listed in group staff)")
    assert out["https"].startswith("passed through undecrypted, decided by name")
    code, out = explain(capsys, policy, "http://adult.test/", "--user", "mrs.khan")
    assert out["verdict"] == "WARN"


@pytest.mark.parametrize("url, group, decrypted, why", [
    ("https://news.test/", "secondary", False, "allowed by name"),
    ("https://news.test/", "staff", True, 'decrypt = "all"'),
    ("https://www.bing.com/", "secondary", True, "bing: search terms"),
    ("https://translate.google.com/", "secondary", True, "carries other sites"),
    ("https://unlisted.test/", "secondary", True, "on no list"),
    ("https://shop.test/", "secondary", True, "policy.toml:9"),
    ("https://adult.test/", "secondary", True, "block page"),
    ("https://bank.test/", "staff", False, "never decrypted"),
    ("https://news.test/", "library", True, "not signed in"),  # else a pupil could skip signing in
    ("https://signin.news.test/", "secondary", True, "sign-in page"),  # on the allow list, but the gateway's own
])
def test_says_whether_https_is_decrypted_and_why(capsys, policy, url, group, decrypted, why):
    code, out = explain(capsys, policy, url, "--group", group)
    assert out["https"].startswith("decrypted" if decrypted else "passed through") and why in out["https"]


def test_bad_input_is_a_clear_error(capsys, policy):
    assert main(["explain", "--policy", policy, "http://bad..host/", "--group", "secondary"]) == 2
    assert "not a valid host name" in capsys.readouterr().err
    assert main(["explain", "--policy", policy, "http://x.test/", "--group", "teachers"]) == 2
    assert "no group 'teachers'; groups are: secondary, staff" in capsys.readouterr().err
