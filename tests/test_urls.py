"""Host, path and list-entry normalisation: the spellings a pupil (or a malformed
client) might use to slip past a list must all reach the same canonical form."""

from urllib.parse import urlsplit

import pytest

from schoolgate.urls import (
    CANONICAL_HOST,
    InvalidHost,
    _split_url,
    canonical_query,
    disguised_ip,
    normalise_entry,
    normalise_host,
    normalise_path,
    parent_domains,
    parse_target,
    path_matches_prefix,
)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("Example.COM", "example.com"),
        ("example.com.", "example.com"),
        ("example.com..", "example.com"),
        ("example.com:8443", "example.com"),
        ("user:secret@Example.com:443", "example.com"),
        ("a@b@example.com", "example.com"),
        ("Bücher.de", "xn--bcher-kva.de"),
        ("xn--bcher-kva.de", "xn--bcher-kva.de"),
        ("BÜCHER.DE.", "xn--bcher-kva.de"),
        ("ｅｘａｍｐｌｅ。com", "example.com"),  # full-width letters and ideographic full stop
        ("ex%41mple.com", "example.com"),
        ("[::1]", "::1"),
        ("[::1]:8080", "::1"),
        ("[2001:DB8:0:0::1]", "2001:db8::1"),
        ("2001:db8::1", "2001:db8::1"),
        ("[fe80::1%eth0]", "fe80::1"),
        ("[::ffff:203.0.113.9]", "203.0.113.9"),
        ("203.0.113.9", "203.0.113.9"),
        ("203.0.113.9.", "203.0.113.9"),
        ("3405803785", "203.0.113.9"),  # the decimal form browsers accept
        ("0xcb.0x0.0x71.0x9", "203.0.113.9"),
        ("0313.0.0161.011", "203.0.113.9"),  # octal
        ("127.1", "127.0.0.1"),
        ("under_score.example.com", "under_score.example.com"),
    ],
)
def test_hosts_reach_one_canonical_form(raw, canonical):
    assert normalise_host(raw) == canonical


@pytest.mark.parametrize("raw", ["", ".", "a..b", "exa mple.com", "999.1.1.1", "foo.123", "[::1", "[::zz]",
                                 "x" * 300 + ".com", "<script>.com"])
def test_invalid_hosts_are_refused_clearly(raw):
    with pytest.raises(InvalidHost):
        normalise_host(raw)


@pytest.mark.parametrize(
    ("raw", "canonical"),
    [
        ("", "/"),
        ("/", "/"),
        ("/Shorts", "/shorts"),
        ("/%73horts", "/shorts"),  # escaped unreserved characters are decoded
        ("/a/./b/../shorts", "/a/shorts"),
        ("//a///b/", "/a/b/"),
        ("/../../etc", "/etc"),
        ("/%7Euser", "/~user"),
        ("/a%2Fb", "/a%2fb"),  # an escaped slash stays escaped: it is not a separator
    ],
)
def test_paths(raw, canonical):
    assert normalise_path(raw) == canonical


def test_parse_target_drops_userinfo_fragment_and_default_port():
    target = parse_target("HTTPS://User:pw@WWW.Example.com:443/A/%62?Q=1#frag")
    assert (target.scheme, target.host, target.port, target.path, target.query) == ("https", "www.example.com", 443, "/a/b", "Q=1")
    assert target.url() == "https://www.example.com/a/b?Q=1"
    assert target.match_path == "/a/b?q=1"


def test_parse_target_ip_literals():
    assert parse_target("http://[::1]:8080/x").is_ip
    assert parse_target("http://2130706433/").host == "127.0.0.1"
    assert not parse_target("http://example.com/").is_ip


def test_parent_domains_deepest_first():
    assert parent_domains("a.b.example.com") == ["a.b.example.com", "b.example.com", "example.com", "com"]
    assert parent_domains("192.0.2.1") == ["192.0.2.1"]


@pytest.mark.parametrize(
    ("path", "prefix", "matches"),
    [
        ("/watch", "/watch", True),
        ("/watch/x", "/watch", True),
        ("/watch?v=1", "/watch", True),
        ("/watchlist", "/watch", False),
        ("/watch?v=abc&t=1", "/watch?v=abc", True),
        ("/watch?v=abcd", "/watch?v=abc", False),
        ("/a/", "/a/", True),
        ("/b", "/a", False),
    ],
)
def test_url_prefix_matches_at_a_boundary(path, prefix, matches):
    assert path_matches_prefix(path, prefix) is matches


@pytest.mark.parametrize(
    ("raw", "entry"),
    [
        ("example.com", ("example.com", "")),
        ("*.Example.com", ("example.com", "")),
        (".example.com", ("example.com", "")),
        ("https://Example.com/", ("example.com", "")),
        ("example.com/Path", ("example.com", "/path")),
        ("http://example.com/a/./b", ("example.com", "/a/b")),
        ("youtube.com/watch?v=ABC", ("youtube.com", "/watch?v=abc")),
        ("bücher.de/x", ("xn--bcher-kva.de", "/x")),
    ],
)
def test_list_entries(raw, entry):
    assert normalise_entry(raw) == entry


@pytest.mark.parametrize(
    ("host", "address"),
    [
        ("1-2-3-4.sslip.io", "1.2.3.4"),
        ("1.2.3.4.sslip.io", "1.2.3.4"),
        ("www-1-2-3-4.sslip.io", "1.2.3.4"),
        ("app.10.0.0.1.nip.io", "10.0.0.1"),
        ("customer1-app-10-0-0-1.nip.io", "10.0.0.1"),
        ("7f000001.nip.io", "127.0.0.1"),
        ("magic-7f000001.nip.io", "127.0.0.1"),
        ("1.2.3.4.traefik.me", "1.2.3.4"),
        ("1-2-3-4.traefik.me", "1.2.3.4"),
        ("0--1.sslip.io", "::1"),
        ("2a01-4f8-c17-b8f--2.sslip.io", "2a01:4f8:c17:b8f::2"),
        ("anything.localtest.me", "127.0.0.1"),
        ("lvh.me", "127.0.0.1"),
        ("app.localhost", "127.0.0.1"),
    ],
)
def test_names_that_spell_an_ip_address_are_ip_literals(host, address):
    assert disguised_ip(host) == address
    assert parse_target(f"http://{host}/").is_ip


@pytest.mark.parametrize("host", ["sslip.io", "www.sslip.io", "nip.io", "example.com", "1-2-3.sslip.io", "sslip.io.example.com"])
def test_ordinary_names_are_not_disguised_ips(host):
    assert disguised_ip(host) is None
    assert not parse_target(f"http://{host}/").is_ip


@pytest.mark.parametrize(
    ("query", "canonical"),
    [
        ("v=abc", "v=abc"),
        ("list=X&v=abc", "list=x&v=abc"),
        ("v=abc&list=x", "list=x&v=abc"),
        ("%76=%61bc", "v=abc"),
        ("q=a%20b", "q=a+b"),
        ("&&v=abc&", "v=abc"),
        ("q=%2f", "q=%2f"),  # a reserved character stays escaped: it means something else decoded
    ],
)
def test_queries_are_compared_in_one_canonical_form(query, canonical):
    assert canonical_query(query) == canonical


@pytest.mark.parametrize(
    "url",
    [
        "http://youtube.com/watch?v=abc",
        "http://youtube.com/watch?feature=share&v=abc",  # another parameter first
        "http://youtube.com/watch?v=%61bc",  # percent-encoded value
        "http://youtube.com/watch?%76=abc",  # percent-encoded name
        "http://youtube.com/watch?V=ABC&t=10",
    ],
)
def test_url_entries_with_a_query_are_not_beaten_by_reordering_or_encoding(url):
    host, prefix = normalise_entry("youtube.com/watch?v=abc")
    target = parse_target(url)
    assert target.host == host
    assert path_matches_prefix(target.match_path, prefix)


@pytest.mark.parametrize("url", ["http://youtube.com/watch?v=abcd", "http://youtube.com/watch?w=abc", "http://youtube.com/watchlist?v=abc"])
def test_url_entries_with_a_query_still_need_their_parameters(url):
    _, prefix = normalise_entry("youtube.com/watch?v=abc")
    assert not path_matches_prefix(parse_target(url).match_path, prefix)


def test_a_url_entry_with_several_parameters_needs_them_all_in_any_order():
    _, prefix = normalise_entry("example.com/page.php?id=7&mode=full")
    assert prefix == "/page.php?id=7&mode=full"
    assert path_matches_prefix(parse_target("http://example.com/page.php?mode=full&x=1&id=7").match_path, prefix)
    assert not path_matches_prefix(parse_target("http://example.com/page.php?id=7").match_path, prefix)


def test_a_name_with_a_leading_hyphen_is_refused_rather_than_guessed():
    with pytest.raises(InvalidHost):
        parse_target("http://--1.sslip.io/")


def test_a_matrix_parameter_does_not_hide_a_url_entry():
    _, prefix = normalise_entry("youtube.com/watch?v=abc")
    assert path_matches_prefix(parse_target("http://youtube.com/watch;x=1?v=abc").match_path, prefix)


@pytest.mark.parametrize("host", ["example.com", "a-b.example.co.uk", "x_y.example", "xn--bcher-kva.de", "a1.b2.io",
                                  "x" * 249 + ".com"])
def test_a_canonical_host_is_returned_as_it_is(host):
    """The fast path (CANONICAL_HOST) returns these unchanged; upper case sends the same
    host through the general path, which must reach the same form."""
    assert CANONICAL_HOST.fullmatch(host)
    assert normalise_host(host) == host == normalise_host(host.upper())


@pytest.mark.parametrize("host", ["a.0x7f", "1.2.3.4", "com", "-a.example", "a..b", "a.com.", "A.com", "a.com:80",
                                  "x" * 250 + ".com"])
def test_hosts_the_fast_path_leaves_to_the_general_one(host):
    assert not CANONICAL_HOST.fullmatch(host)


@pytest.mark.parametrize(
    "url",
    ["http://a.com", "https://a.com/", "https://a.com?x=1#y", "https://a.com#f?x", "http://a.com/p?q#f",
     "http://[::1]/x", "http://[::1/x", "http://a]b/", "http://a.com:80/", "https://u:p@a.com/p", "http://a.com/ x",
     "http://a.com\t/p", "HTTP://A.com/", "https://", "http://?", "http://#", "http:///path", "https://a.com/ü",
     " http://a.com/", "ftp://a.com/x", "http://a.com/p;x=1?y"],
)
def test_urls_split_as_urlsplit_splits_them(url):
    def split(function):
        try:
            return function(url)
        except ValueError as e:
            return f"refused: {e}"

    assert split(_split_url) == split(urlsplit)
