"""Sites carried inside other sites (translators, archives, readers, caches, web
proxies) are found, so the request path can decide them too."""

from __future__ import annotations

import base64

import pytest

from schoolgate.addons.embedded import carried, embedded_targets
from schoolgate.urls import parse_target

B64 = base64.b64encode(b"https://www.pornhub.com/").decode()


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        ("https://www-pornhub-com.translate.goog/view?_x_tr_sl=auto&_x_tr_tl=en&x=1", "https://www.pornhub.com/view?x=1"),
        ("https://my--site-co-uk.translate.goog/", "https://my-site.co.uk/"),
        ("https://translate.google.com/translate?sl=auto&tl=fr&u=https://www.pornhub.com/x", "https://www.pornhub.com/x"),
        ("https://translate.google.co.uk/translate?u=www.pornhub.com", "http://www.pornhub.com/"),
        ("https://translate.googleusercontent.com/translate_c?u=https://www.pornhub.com/", "https://www.pornhub.com/"),
        ("https://web.archive.org/web/2020/https://www.pornhub.com/", "https://www.pornhub.com/"),
        ("https://web.archive.org/web/2020id_/http://www.pornhub.com/a?b=1", "http://www.pornhub.com/a?b=1"),
        ("https://web.archive.org/web/*/pornhub.com", "http://pornhub.com/"),
        ("https://web.archive.org/web/https://www.pornhub.com", "https://www.pornhub.com/"),
        ("https://web.archive.org/save/https://www.pornhub.com", "https://www.pornhub.com/"),
        ("https://archive.org/wayback/available?url=pornhub.com", "http://pornhub.com/"),
        ("https://archive.ph/https://www.pornhub.com/", "https://www.pornhub.com/"),
        ("https://archive.today/newest/https://www.pornhub.com/", "https://www.pornhub.com/"),
        ("https://archive.is/2020.01.01/www.pornhub.com", "http://www.pornhub.com/"),
        ("https://archive.ph/submit/?url=https://www.pornhub.com/", "https://www.pornhub.com/"),
        ("https://12ft.io/https://www.pornhub.com/", "https://www.pornhub.com/"),
        ("https://12ft.io/proxy?q=https://www.pornhub.com/", "https://www.pornhub.com/"),
        ("https://r.jina.ai/https://www.pornhub.com/", "https://www.pornhub.com/"),
        ("https://r.jina.ai/https%3A%2F%2Fwww.pornhub.com%2F", "https://www.pornhub.com/"),
        ("https://removepaywall.com/search?url=https://www.pornhub.com/", "https://www.pornhub.com/"),
        ("https://www-pornhub-com.cdn.ampproject.org/c/s/www.pornhub.com/x", "https://www.pornhub.com/x"),
        ("https://www.google.com/amp/s/www.pornhub.com/x", "https://www.pornhub.com/x"),
        ("https://www.google.co.uk/url?q=https://www.pornhub.com/", "https://www.pornhub.com/"),
        ("https://webcache.googleusercontent.com/search?q=cache:www.pornhub.com/", "http://www.pornhub.com/"),
        ("https://translate.yandex.com/translate?url=https://www.pornhub.com/", "https://www.pornhub.com/"),
        ("https://translated.turbopages.org/proxy_u/en-ru.ru.abc/https/www.pornhub.com/x", "https://www.pornhub.com/x"),
        ("https://1-2-3-4.sslip.io/", "https://1.2.3.4/"),
    ],
)
def test_the_carried_site_is_found(url, inside):
    assert inside in [t.url() for t in embedded_targets(parse_target(url))]


def test_carriers_nest():
    targets = [t.url() for t in embedded_targets(parse_target("https://web-archive-org.translate.goog/web/2020/https://www.pornhub.com/"))]
    assert "https://www.pornhub.com/" in targets
    nested_ip = [t.url() for t in embedded_targets(parse_target("https://www-1-2-3-4-sslip-io.translate.goog/"))]
    assert "https://1.2.3.4/" in nested_ip


@pytest.mark.parametrize(
    ("url", "inside"),
    [
        (f"http://proxy.example/browse.php?u={B64}&b=4", "https://www.pornhub.com/"),
        ("http://proxy.example/browse.php?u=https%3A%2F%2Fwww.pornhub.com%2F&b=4", "https://www.pornhub.com/"),
        (f"http://proxy.example/?__cpo={B64}", "https://www.pornhub.com/"),
        ("http://proxy.example/cgi-bin/nph-proxy.cgi/010110A/https/www.pornhub.com/", "https://www.pornhub.com/"),
        ("http://proxy.example/proxy/https://www.pornhub.com/", "https://www.pornhub.com/"),
        ("http://proxy.example/index.php?q=https%3A%2F%2Fwww.pornhub.com%2F&hl=3ed", "https://www.pornhub.com/"),
    ],
)
def test_unknown_web_proxies_are_known_by_their_shape(url, inside):
    found = carried(parse_target(url))
    assert found is not None and found.is_proxy
    assert inside in [t.url() for t in found.targets]


@pytest.mark.parametrize("url", ["https://archive.ph/AbCdE", "https://webcache.googleusercontent.com/search?q=cache:"])
def test_a_known_carrier_whose_site_cannot_be_read_counts_as_a_proxy(url):
    found = carried(parse_target(url))
    assert found is not None and found.is_proxy and not found.targets


@pytest.mark.parametrize(
    "url",
    [
        "https://www.bbc.co.uk/news?hl=en&q=x",
        "https://www.google.com/search?q=pornhub.com&hl=en",  # a search for a site is not a visit
        "https://example.com/?q=pornhub.com&hl=en",
        "https://web.archive.org/web/",
        "https://archive.ph/",
        "https://translate.google.com/",
        "https://www.example.com/login?next=/account",
        "https://www.example.com/products/browse",
    ],
)
def test_ordinary_requests_carry_nothing(url):
    assert carried(parse_target(url)) is None


def test_explain_decides_the_carried_site_as_the_gateway_does(tmp_path, capsys):
    from schoolgate.cli import main

    policy = tmp_path / "policy.toml"
    policy.write_text('[categories]\npornography = "block"\nvpn-proxy = "block"\n\n[groups.pupils]\nnetworks = ["10.0.0.0/8"]\n')
    assert main(["explain", "https://www-pornhub-com.translate.goog/", "--group", "pupils", "--policy", str(policy)]) == 0
    out = capsys.readouterr().out
    assert "carries:    https://www.pornhub.com/" in out and "verdict:    BLOCK" in out
    assert main(["explain", "http://proxy.example/browse.php?u=https%3A%2F%2Fwww.bbc.co.uk%2F", "--group", "pupils",
                 "--policy", str(policy)]) == 0
    out = capsys.readouterr().out
    assert "verdict:    BLOCK" in out and "vpn-proxy" in out


@pytest.mark.data
def test_no_top_site_home_page_is_taken_for_a_web_proxy(shared_data):
    hosts = (shared_data / "top-sites" / "tranco_top100k.txt").read_text().split()
    proxies, carried_names = [], 0
    for host in hosts:
        try:
            found = carried(parse_target(f"https://{host}/"))
        except ValueError:
            continue
        if found is not None:
            carried_names += 1
            if found.is_proxy:
                proxies.append(host)
    assert proxies == []
    # Only names that spell another site (AMP cache, translate.goog) or an IP address carry one.
    assert carried_names < 200


def test_generic_proxy_script_names_count_only_when_they_carry_a_site():
    assert carried(parse_target("https://news.example/widgets/proxy.php?feed=latest")) is None
    found = carried(parse_target("https://news.example/proxy.php?url=https://www.pornhub.com/"))
    assert found is not None and found.is_proxy and found.targets[0].host == "www.pornhub.com"
    assert carried(parse_target("https://stayincognito.example/nph-proxy.cgi/free")).is_proxy  # CGIProxy's own name
