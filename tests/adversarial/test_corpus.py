"""The adversarial corpus: bypass attempts a determined pupil would try, each
driven through a real mitmdump with a real client from its own address.

Each attempt must be stopped (its destination's loopback server never sees it;
for SafeSearch, only the rewritten request does) and be in the database with a
block verdict (and the flag it deserves). The table reads as a checklist; one
runner drives it; `owner` names the lane whose code must stop an attempt that
gets through. Classes follow issue #10.
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs, quote

import pytest

from adversary import (
    Attempt,
    Outcome,
    dns_message,
    dns_param,
    get,
    httpx_send,
    judge,
    multipart,
    post,
    post_json,
    raw,
    raw_get,
    run_corpus,
    tls,
    tunnel,
)
from support.gateway import free_ports
from support.upstream import UpstreamRequest

CONSOLE_PORT = free_ports(1)[0]
POLICY = f"""\
[gateway]
default_group = "pupils"

[monitoring]
block_searches_at = "critical"

[local]
block = ["xn--bcher-kva.example", "videos.example.net/watch?v=bad1", "videos.example.net/page.php?id=7&mode=full"]

[categories]
pornography = "block"
vpn-proxy = "block"
doh = "block"

[console]
port = {CONSOLE_PORT}

[groups.pupils]
networks = ["127.0.0.0/8"]
safe_search = true
block_ip_literals = true
"""

PORN = "www.pornhub.com"
SSH = b"SSH-2.0-OpenSSH_9.6\r\n"
OPENVPN = bytes.fromhex("00 0e 38 a1 b2 c3 d4 e5 f6 07 18 00 00 00 00 00")
RANDOM = bytes(range(7, 250, 3)) * 4
SUICIDE = "how to kill myself"


def param(name: str, value: str):
    """SafeSearch check: the request upstream carries name=value (and only that value)."""
    def check(request: UpstreamRequest) -> bool:
        return parse_qs(request.query).get(name) == [value]
    check.__name__ = f"{name}={value}"
    return check


def header(name: str, value: str):
    def check(request: UpstreamRequest) -> bool:
        return request.headers.get(name.lower()) == value
    return check


def search(engine_url: str, term: str) -> str:
    return engine_url + quote(term)


A = Attempt
CORPUS: list[Attempt] = [
    # --- encodings of a blocked name -------------------------------------------------------
    A("plain blocked site", "encoding", "FRONT", get(f"http://{PORN}/")),
    A("upper case host", "encoding", "FRONT", get("http://WWW.PORNHUB.COM/")),
    A("trailing dot", "encoding", "FRONT", get(f"http://{PORN}./")),
    A("two trailing dots", "encoding", "FRONT", raw_get(f"http://{PORN}../", f"Host: {PORN}..")),
    A("userinfo before host", "encoding", "FRONT", get(f"http://pupil:pw@{PORN}/")),
    A("explicit port 80", "encoding", "FRONT", get(f"http://{PORN}:80/")),
    A("percent-encoded letter in host", "encoding", "FRONT", raw_get("http://www.porn%68ub.com/", "Host: www.porn%68ub.com")),
    A("percent-encoded label", "encoding", "FRONT", raw_get("http://%77%77%77.pornhub.com/", "Host: %77%77%77.pornhub.com")),
    A("full-width host", "encoding", "FRONT", raw_get("http://ｗｗｗ.ｐｏｒｎｈｕｂ.ｃｏｍ/", "Host: ｗｗｗ.ｐｏｒｎｈｕｂ.ｃｏｍ")),
    A("ideographic full stop", "encoding", "FRONT", raw_get("http://www.pornhub。com/", "Host: www.pornhub。com")),
    A("bare registrable domain", "encoding", "FRONT", get("http://pornhub.com/")),
    A("deep subdomain", "encoding", "FRONT", get(f"http://a.b.{PORN}/")),
    A("origin-form with Host only", "encoding", "FRONT", raw(f"GET / HTTP/1.1\r\nHost: {PORN}\r\nConnection: close\r\n\r\n")),
    A("HTTP/1.0 without Host", "encoding", "FRONT", raw(f"GET http://{PORN}/ HTTP/1.0\r\n\r\n")),
    A("IDN listed by punycode, asked in Unicode", "encoding", "FRONT", get("http://bücher.example/")),
    A("IDN in capitals, raw UTF-8", "encoding", "FRONT", raw_get("http://BÜCHER.example/", "Host: BÜCHER.example")),
    A("IDN asked as punycode", "encoding", "FRONT", get("http://xn--bcher-kva.example/")),
    A("HTTPS blocked site", "encoding", "FRONT", get(f"https://{PORN}/")),
    A("HTTPS mixed case and trailing dot", "encoding", "FRONT", get("https://WWW.PornHub.com./")),
    A("HTTPS explicit port", "encoding", "FRONT", get(f"https://{PORN}:443/")),
    A("CONNECT with percent-encoded host", "encoding", "FRONT", tunnel("www.porn%68ub.com:443", b"\x16\x03\x01")),
    A("HTTP/2 to blocked site", "encoding", "FRONT", get(f"https://{PORN}/", "--http2")),
    # --- URL-prefix entries with a query --------------------------------------------------
    A("URL entry as listed", "url-entry", "EVASION", get("http://videos.example.net/watch?v=bad1")),
    A("URL entry, parameters reordered", "url-entry", "EVASION", get("http://videos.example.net/watch?feature=share&v=bad1")),
    A("URL entry, value percent-encoded", "url-entry", "EVASION", get("http://videos.example.net/watch?v=%62ad1")),
    A("URL entry, name percent-encoded", "url-entry", "EVASION", get("http://videos.example.net/watch?%76=bad1")),
    A("URL entry, upper case", "url-entry", "EVASION", get("http://videos.example.net/WATCH?V=BAD1")),
    A("URL entry, dot segment", "url-entry", "EVASION", get("http://videos.example.net/./watch?v=bad1", "--path-as-is")),
    A("URL entry, double slash", "url-entry", "EVASION", get("http://videos.example.net//watch?v=bad1", "--path-as-is")),
    A("URL entry, escaped path letter", "url-entry", "EVASION", get("http://videos.example.net/%77atch?v=bad1")),
    A("URL entry, matrix parameter", "url-entry", "EVASION", get("http://videos.example.net/watch;x=1?v=bad1")),
    A("URL entry, repeated parameter first", "url-entry", "EVASION", get("http://videos.example.net/watch?v=bad1&v=good")),
    A("URL entry, repeated parameter last", "url-entry", "EVASION", get("http://videos.example.net/watch?v=good&v=bad1")),
    A("URL entry, empty pairs", "url-entry", "EVASION", get("http://videos.example.net/watch?&&v=bad1&")),
    A("URL entry with two parameters, reordered", "url-entry", "EVASION",
      get("http://videos.example.net/page.php?mode=full&x=1&id=7")),
    A("URL entry over HTTPS, reordered", "url-entry", "EVASION", get("https://videos.example.net/watch?t=1&v=bad1")),
    # --- IP literals --------------------------------------------------------------------------
    A("dotted IPv4", "ip-literal", "FRONT", get("http://203.0.113.9/"), flag="circumvention"),
    A("decimal IPv4", "ip-literal", "FRONT", get("http://3405803785/")),
    A("hex dotted IPv4", "ip-literal", "FRONT", get("http://0xcb.0x0.0x71.0x9/")),
    A("octal IPv4", "ip-literal", "FRONT", get("http://0313.0.0161.011/")),
    A("single hex IPv4", "ip-literal", "FRONT", get("http://0xcb007109/")),
    A("IPv4 with trailing dot", "ip-literal", "FRONT", raw_get("http://203.0.113.9./", "Host: 203.0.113.9.")),
    A("IPv4-mapped IPv6", "ip-literal", "FRONT", get("http://[::ffff:203.0.113.9]/")),
    A("IPv6", "ip-literal", "FRONT", get("http://[2001:db8::1]/")),
    A("three-part IPv4", "ip-literal", "FRONT", get("http://203.0.28937/")),
    A("HTTPS to an IP", "ip-literal", "FRONT", get("https://203.0.113.9/")),
    A("CONNECT to IPv6", "ip-literal", "FRONT", tunnel("[2001:db8::1]:443", b"\x16\x03\x01")),
    A("IP with another port", "ip-literal", "FRONT", get("http://203.0.113.9:8080/")),
    # --- names that are IP addresses in disguise ---------------------------------------------------
    A("sslip.io dashed", "disguised-ip", "EVASION", get("http://203-0-113-9.sslip.io/"), flag="circumvention"),
    A("sslip.io dotted", "disguised-ip", "EVASION", get("http://203.0.113.9.sslip.io/")),
    A("nip.io dotted", "disguised-ip", "EVASION", get("http://203.0.113.9.nip.io/")),
    A("nip.io hex", "disguised-ip", "EVASION", get("http://cb007109.nip.io/")),
    A("nip.io with a prefix", "disguised-ip", "EVASION", get("http://app-203-0-113-9.nip.io/")),
    A("nip.io subdomain", "disguised-ip", "EVASION", get("http://www.203.0.113.9.nip.io/")),
    A("traefik.me dotted", "disguised-ip", "EVASION", get("http://203.0.113.9.traefik.me/")),
    A("traefik.me dashed", "disguised-ip", "EVASION", get("http://203-0-113-9.traefik.me/")),
    A("sslip.io IPv6", "disguised-ip", "EVASION", get("http://2001-db8--1.sslip.io/")),
    A("sslip.io over HTTPS", "disguised-ip", "EVASION", get("https://203-0-113-9.sslip.io/")),
    # --- fronting: one name outside, another inside -------------------------------------------------
    A("Host header inside TLS to allowed site", "fronting", "FRONT", get("https://www.bbc.co.uk/", "-H", f"Host: {PORN}")),
    A("Host header on plain HTTP", "fronting", "FRONT", get("http://www.bbc.co.uk/", "-H", f"Host: {PORN}")),
    A("absolute URL allowed, Host blocked", "fronting", "FRONT", raw_get("http://www.bbc.co.uk/", f"Host: {PORN}")),
    A("absolute URL blocked, Host allowed", "fronting", "FRONT", raw_get(f"http://{PORN}/", "Host: www.bbc.co.uk")),
    A("CONNECT allowed, SNI blocked", "fronting", "FRONT", tls("www.bbc.co.uk:443", PORN, PORN)),
    A("CONNECT blocked, SNI allowed", "fronting", "FRONT", tls(f"{PORN}:443", "www.bbc.co.uk", "www.bbc.co.uk")),
    A("CONNECT allowed, no SNI, Host blocked", "fronting", "FRONT", tls("www.bbc.co.uk:443", None, PORN)),
    A("CONNECT allowed, SNI allowed, Host blocked", "fronting", "FRONT", tls("www.bbc.co.uk:443", "www.bbc.co.uk", PORN)),
    A("curl --connect-to an allowed name", "fronting", "FRONT",
      get(f"https://{PORN}/", "--connect-to", f"{PORN}:443:www.bbc.co.uk:443")),
    A("CONNECT with a blocked Host header", "fronting", "FRONT",
      tls("www.bbc.co.uk:443", "www.bbc.co.uk", PORN, connect_headers=f"Host: {PORN}:443\r\n")),
    A("absolute https URL on a plain proxy connection", "fronting", "FRONT", raw_get(f"https://{PORN}/", f"Host: {PORN}")),
    A("Host header with port inside TLS", "fronting", "FRONT", get("https://www.bbc.co.uk/", "-H", f"Host: {PORN}:443")),
    # --- raw tunnels (CONNECT, then bytes that are not TLS) ----------------------------------------
    A("SSH through CONNECT to a blocked site", "tunnel", "FRONT", tunnel(f"{PORN}:443", SSH)),
    A("random bytes to a VPN site", "tunnel", "FRONT", tunnel("nordvpn.com:443", RANDOM)),
    A("SSH to a bare IP on port 22", "tunnel", "FRONT", tunnel("203.0.113.9:22", SSH)),
    A("SSH to an allowed name on port 22", "tunnel", "FRONT", tunnel("www.bbc.co.uk:22", SSH)),
    A("raw bytes to an allowed name on 443", "tunnel", "FRONT", tunnel("www.bbc.co.uk:443", RANDOM)),
    A("OpenVPN handshake to an allowed name", "tunnel", "FRONT", tunnel("www.bbc.co.uk:443", OPENVPN)),
    A("plain HTTP inside CONNECT to a blocked site", "tunnel", "FRONT",
      tunnel(f"{PORN}:80", f"GET / HTTP/1.1\r\nHost: {PORN}\r\n\r\n".encode())),
    A("plain HTTP inside CONNECT, blocked Host", "tunnel", "FRONT",
      tunnel("www.bbc.co.uk:80", f"GET / HTTP/1.1\r\nHost: {PORN}\r\n\r\n".encode())),
    A("TLS to a blocked site on another port", "tunnel", "FRONT", get(f"https://{PORN}:8443/")),
    A("XMPP to a blocked site", "tunnel", "FRONT", tunnel(f"{PORN}:5222", b"<stream:stream to='x'>")),
    # --- sites carried inside other sites ----------------------------------------------------------
    A("Google Translate site proxy", "embedded", "EVASION", get("https://www-pornhub-com.translate.goog/")),
    A("Google Translate proxy with its parameters", "embedded", "EVASION",
      get("https://www-pornhub-com.translate.goog/view?_x_tr_sl=auto&_x_tr_tl=en")),
    A("Google Translate proxy over HTTP", "embedded", "EVASION", get("http://pornhub-com.translate.goog/")),
    A("translate.google.com ?u=", "embedded", "EVASION", get(f"https://translate.google.com/translate?sl=auto&tl=fr&u=https://{PORN}/")),
    A("translate.google.co.uk ?u= bare host", "embedded", "EVASION", get(f"https://translate.google.co.uk/translate?u={PORN}")),
    A("translate.googleusercontent.com", "embedded", "EVASION",
      get(f"https://translate.googleusercontent.com/translate_c?u=https://{PORN}/")),
    A("Wayback Machine", "embedded", "EVASION", get(f"https://web.archive.org/web/2020/https://{PORN}/")),
    A("Wayback Machine id_ raw copy", "embedded", "EVASION", get(f"https://web.archive.org/web/2020id_/http://{PORN}/")),
    A("Wayback Machine wildcard", "embedded", "EVASION", get("https://web.archive.org/web/*/pornhub.com")),
    A("Wayback Machine without timestamp", "embedded", "EVASION", get(f"https://web.archive.org/web/https://{PORN}/")),
    A("Wayback Machine, URL percent-encoded", "embedded", "EVASION",
      get(f"https://web.archive.org/web/2020/https%3A%2F%2F{PORN}%2F")),
    A("archive.ph with URL", "embedded", "EVASION", get(f"https://archive.ph/https://{PORN}/")),
    A("archive.is newest", "embedded", "EVASION", get(f"https://archive.is/newest/https://{PORN}/")),
    A("archive.today dated", "embedded", "EVASION", get(f"https://archive.today/2020.01.01/{PORN}")),
    A("archive.ph snapshot id", "embedded", "EVASION", get("https://archive.ph/AbCdE")),
    A("12ft.io", "embedded", "EVASION", get(f"https://12ft.io/https://{PORN}/")),
    A("12ft.io proxy parameter", "embedded", "EVASION", get(f"https://12ft.io/proxy?q=https://{PORN}/")),
    A("r.jina.ai reader", "embedded", "EVASION", get(f"https://r.jina.ai/https://{PORN}/")),
    A("r.jina.ai, URL percent-encoded", "embedded", "EVASION", get(f"https://r.jina.ai/https%3A%2F%2F{PORN}%2F")),
    A("removepaywall", "embedded", "EVASION", get(f"https://removepaywall.com/search?url=https://{PORN}/")),
    A("AMP cache", "embedded", "EVASION", get(f"https://www-pornhub-com.cdn.ampproject.org/c/s/{PORN}/")),
    A("Google AMP viewer", "embedded", "EVASION", get(f"https://www.google.com/amp/s/{PORN}/")),
    A("Google redirect", "embedded", "EVASION", get(f"https://www.google.co.uk/url?q=https://{PORN}/")),
    A("Google cache", "embedded", "EVASION", get(f"https://webcache.googleusercontent.com/search?q=cache:{PORN}/")),
    A("Yandex Translate", "embedded", "EVASION", get(f"https://translate.yandex.com/translate?url=https://{PORN}/")),
    A("Yandex turbo pages", "embedded", "EVASION", get(f"https://translated.turbopages.org/proxy_u/en-ru.ru.a/https/{PORN}/")),
    A("Glype proxy script", "embedded", "EVASION", get(f"http://schoolwork-helper.example/browse.php?u=https%3A%2F%2F{PORN}%2F&b=4")),
    A("Glype proxy, base64", "embedded", "EVASION",
      get("http://schoolwork-helper.example/browse.php?u=aHR0cHM6Ly93d3cucG9ybmh1Yi5jb20v&b=4")),
    A("CroxyProxy-style __cpo", "embedded", "EVASION", get("http://schoolwork-helper.example/?__cpo=aHR0cHM6Ly93d3cucG9ybmh1Yi5jb20")),
    A("CGIProxy", "embedded", "EVASION", get(f"http://schoolwork-helper.example/cgi-bin/nph-proxy.cgi/010110A/https/{PORN}/")),
    A("generic /proxy/URL", "embedded", "EVASION", get(f"http://schoolwork-helper.example/proxy/https://{PORN}/")),
    A("listed web proxy", "embedded", "EVASION", get("https://www.croxyproxy.com/"), flag="circumvention"),
    A("nested: translate of an archive", "embedded", "EVASION",
      get(f"https://web-archive-org.translate.goog/web/2020/https://{PORN}/")),
    A("nested: translate of sslip", "embedded", "EVASION", get("https://203-0-113-9-sslip-io.translate.goog/")),
    A("translator in the address, allowed Host", "embedded", "EVASION",
      raw_get("http://www-pornhub-com.translate.goog/", "Host: www.bbc.co.uk")),
    A("translate.goog of an IP address", "embedded", "EVASION", get("https://203-0-113-9.translate.goog/")),
    A("Wayback Machine image copy", "embedded", "EVASION", get(f"https://web.archive.org/web/2020im_/https://{PORN}/x.jpg")),
    A("archive.today without a scheme", "embedded", "EVASION", get(f"https://archive.ph/{PORN}/")),
    A("12ft.io over plain HTTP", "embedded", "EVASION", get(f"http://12ft.io/http://{PORN}/")),
    # --- DNS over HTTPS by shape -----------------------------------------------------------------
    A("DoH GET dns= on /dns-query", "doh", "EVASION", get(f"https://resolver.example/dns-query?dns={dns_param('pornhub.com')}"),
      flag="circumvention"),
    A("DoH GET dns= on any path", "doh", "EVASION", get(f"https://resolver.example/q/x?dns={dns_param('pornhub.com')}")),
    A("DoH GET dns= padded", "doh", "EVASION", get(f"https://resolver.example/dns-query?dns={dns_param('pornhub.com', padded=True)}")),
    A("DoH POST dns-message", "doh", "EVASION", post("https://resolver.example/dns-query", dns_message("pornhub.com"),
                                                     "application/dns-message")),
    A("DoH POST with a false content type", "doh", "EVASION", post("https://resolver.example/upload", dns_message("pornhub.com"),
                                                                   "application/octet-stream")),
    A("DoH POST, content type in capitals", "doh", "EVASION", post("https://resolver.example/dns-query", dns_message("a.com"),
                                                                   "Application/DNS-Message")),
    A("DoH JSON /resolve", "doh", "EVASION", get("https://resolver.example/resolve?name=pornhub.com&type=A")),
    A("DoH JSON any path with type", "doh", "EVASION", get("https://resolver.example/api/v1?name=pornhub.com&type=AAAA")),
    A("DoH JSON with ct=", "doh", "EVASION", get("https://resolver.example/x?name=pornhub.com&ct=application/dns-json")),
    A("DoH JSON by Accept", "doh", "EVASION", get("https://resolver.example/x?q=1", "-H", "Accept: application/dns-json")),
    A("DoH wire by Accept", "doh", "EVASION", get("https://resolver.example/x", "-H", "Accept: application/dns-message")),
    A("Oblivious DoH", "doh", "EVASION", post("https://relay.example/proxy?targethost=t&targetpath=/dns-query", b"\x00\x01odoh",
                                              "application/oblivious-dns-message")),
    A("listed DoH server", "doh", "EVASION", get("https://dns.google/resolve?name=pornhub.com")),
    A("listed DoH server by CONNECT", "doh", "EVASION", tunnel("cloudflare-dns.com:443", b"\x16\x03\x01")),
    A("NextDNS-style path id", "doh", "EVASION", get(f"https://dns.nextdns.example/abc123?dns={dns_param('pornhub.com')}")),
    A("DoH JSON /dns-query without type", "doh", "EVASION", get("https://resolver.example/dns-query?name=pornhub.com")),
    A("DoH over plain HTTP", "doh", "EVASION", get(f"http://resolver.example/dns-query?dns={dns_param('pornhub.com')}")),
    A("DoH JSON HTTPS record type", "doh", "EVASION", get("https://resolver.example/api?name=pornhub.com&type=65")),
    # --- SafeSearch --------------------------------------------------------------------------------
    A("Google safe=off", "safesearch", "EVASION", get("https://www.google.com/search?q={mark}&safe=off"),
      rewritten=param("safe", "active")),
    A("Google SAFE=off and safe=off", "safesearch", "EVASION", get("https://www.google.com/search?q={mark}&SAFE=off&safe=off"),
      rewritten=param("safe", "active")),
    A("Google s%61fe=off", "safesearch", "EVASION", get("https://www.google.co.uk/search?q={mark}&s%61fe=off"),
      rewritten=param("safe", "active")),
    A("Google Images safe=off", "safesearch", "EVASION", get("https://images.google.com/search?q={mark}&tbm=isch&safe=off"),
      rewritten=param("safe", "active")),
    A("Google Images /images", "safesearch", "EVASION", get("https://images.google.co.uk/images?q={mark}"),
      rewritten=param("safe", "active")),
    A("Google advanced search as_q", "safesearch", "EVASION", get("https://www.google.com/search?as_q={mark}&safe=off"),
      rewritten=param("safe", "active")),
    A("Google over plain HTTP", "safesearch", "EVASION", get("http://www.google.com/search?q={mark}&safe=off"),
      rewritten=param("safe", "active")),
    A("Bing adlt=off", "safesearch", "EVASION", get("https://www.bing.com/search?q={mark}&adlt=off"),
      rewritten=param("adlt", "strict")),
    A("global.bing.com adlt=off", "safesearch", "EVASION", get("https://global.bing.com/search?q={mark}&adlt=off"),
      rewritten=param("adlt", "strict")),
    A("Bing images ADLT=off", "safesearch", "EVASION", get("https://www.bing.com/images/search?q={mark}&ADLT=off"),
      rewritten=param("adlt", "strict")),
    A("DuckDuckGo kp=-2", "safesearch", "EVASION", get("https://duckduckgo.com/?q={mark}&kp=-2"), rewritten=param("kp", "1")),
    A("DuckDuckGo HTML", "safesearch", "EVASION", get("https://html.duckduckgo.com/html/?q={mark}"), rewritten=param("kp", "1")),
    A("Yahoo vm=p", "safesearch", "EVASION", get("https://search.yahoo.com/search?p={mark}&vm=p"), rewritten=param("vm", "r")),
    A("Brave safesearch=off", "safesearch", "EVASION", get("https://search.brave.com/search?q={mark}&safesearch=off"),
      rewritten=param("safesearch", "strict")),
    A("Startpage qadf=none", "safesearch", "EVASION", get("https://www.startpage.com/sp/search?query={mark}&qadf=none"),
      rewritten=param("qadf", "heavy")),
    A("Yandex family=no", "safesearch", "EVASION", get("https://yandex.com/search/?text={mark}&family=no"),
      rewritten=param("family", "yes")),
    A("YouTube with its restrict header removed", "safesearch", "EVASION",
      get("https://www.youtube.com/results?search_query={mark}", "-H", "YouTube-Restrict: Off"),
      rewritten=header("YouTube-Restrict", "Strict")),
    A("YouTube mobile", "safesearch", "EVASION", get("https://m.youtube.com/results?search_query={mark}"),
      rewritten=header("YouTube-Restrict", "Strict")),
    A("YouTube API host", "safesearch", "EVASION", get("https://youtubei.googleapis.com/youtubei/v1/{mark}"),
      rewritten=header("YouTube-Restrict", "Strict")),
    A("Invidious front-end", "safesearch", "EVASION", get("https://yewtu.be/watch?v=x"), flag="circumvention"),
    A("Invidious instance", "safesearch", "EVASION", get("https://inv.nadeko.net/search?q=x")),
    A("Piped front-end", "safesearch", "EVASION", get("https://piped.video/results?search_query=x")),
    # --- searches that try to escape monitoring ---------------------------------------------------------
    A("Google search, plain", "search", "EVASION", get(search("https://www.google.com/search?q=", SUICIDE)), flag="self-harm"),
    A("Google, one Cyrillic letter", "search", "EVASION", get(search("https://www.google.com/search?q=", "how to kіll myself")),
      flag="self-harm"),
    A("Bing, Cyrillic o and e", "search", "EVASION", get(search("https://www.bing.com/search?q=", "hоw tо kill mysеlf")),
      flag="self-harm"),
    A("DuckDuckGo, leetspeak", "search", "EVASION", get(search("https://duckduckgo.com/?q=", "h0w t0 k1ll mys3lf")),
      flag="self-harm"),
    A("Google, spaced letters", "search", "EVASION", get(search("https://www.google.com/search?q=", "how to k i l l my self")),
      flag="self-harm"),
    A("Google, zero-width space", "search", "EVASION", get(search("https://www.google.com/search?q=", "how to kill my\u200bself")),
      flag="self-harm"),
    A("Google, soft hyphen", "search", "EVASION", get(search("https://www.google.com/search?q=", "how to k\u00adill myself")),
      flag="self-harm"),
    A("Google, full-width", "search", "EVASION", get(search("https://www.google.com/search?q=", "ｈｏｗ ｔｏ ｋｉｌｌ ｍｙｓｅｌｆ")),
      flag="self-harm"),
    A("Google, Greek capitals", "search", "EVASION",
      get(search("https://www.google.com/search?q=", "ΗΟW ΤΟ ΚΙLL ΜΥSΕLF")), flag="self-harm"),
    A("Google advanced search fields", "search", "EVASION",
      get("https://www.google.com/search?as_q=how+to&as_epq=kill+myself"), flag="self-harm"),
    A("Google Images", "search", "EVASION", get(search("https://images.google.com/search?tbm=isch&q=", SUICIDE)), flag="self-harm"),
    A("Google News", "search", "EVASION", get(search("https://news.google.com/search?q=", SUICIDE)), flag="self-harm"),
    A("global.bing.com", "search", "EVASION", get(search("https://global.bing.com/search?q=", SUICIDE)), flag="self-harm"),
    A("Brave Search", "search", "EVASION", get(search("https://search.brave.com/search?q=", SUICIDE)), flag="self-harm"),
    A("Startpage GET", "search", "EVASION", get(search("https://www.startpage.com/sp/search?query=", SUICIDE)), flag="self-harm"),
    A("Startpage form POST", "search", "EVASION",
      post("https://www.startpage.com/sp/search", "query=how+to+kill+myself&cat=web", "application/x-www-form-urlencoded"),
      flag="self-harm"),
    A("Yandex", "search", "EVASION", get(search("https://yandex.com/search/?text=", SUICIDE)), flag="self-harm"),
    A("Ask", "search", "EVASION", get(search("https://www.ask.com/web?q=", SUICIDE)), flag="self-harm"),
    A("Pinterest", "search", "EVASION", get(search("https://www.pinterest.co.uk/search/pins/?q=", SUICIDE)), flag="self-harm"),
    A("DuckDuckGo multipart POST", "search", "EVASION",
      post("https://html.duckduckgo.com/html/", *multipart({"q": SUICIDE, "kl": "uk-en"})), flag="self-harm"),
    A("DuckDuckGo form POST", "search", "EVASION",
      post("https://lite.duckduckgo.com/lite/", "q=how+to+kill+myself", "application/x-www-form-urlencoded"), flag="self-harm"),
    A("ChatGPT prompt", "search", "EVASION", post_json("https://chatgpt.com/backend-api/conversation", {
        "action": "next", "messages": [{"author": {"role": "user"}, "content": {"content_type": "text", "parts": [SUICIDE]}}],
        "model": "auto"}), flag="self-harm"),
    A("ChatGPT address-bar prompt", "search", "EVASION", get(search("https://chatgpt.com/?q=", SUICIDE)), flag="self-harm"),
    A("Claude prompt", "search", "EVASION",
      post_json("https://claude.ai/api/organizations/o/chat_conversations/c/completion", {"prompt": SUICIDE}), flag="self-harm"),
    A("Gemini prompt", "search", "EVASION", post(
        "https://gemini.google.com/_/BardChatUi/data/assistant.lamda.BardFrontendService/StreamGenerate",
        "f.req=" + quote(json.dumps([None, json.dumps([[SUICIDE, 0, None], ["en"]])])), "application/x-www-form-urlencoded"),
      flag="self-harm"),
    A("character.ai prompt", "search", "EVASION", post_json("https://plus.character.ai/chat/streaming/", {"text": SUICIDE}),
      flag="self-harm"),
    A("Perplexity prompt", "search", "EVASION",
      post_json("https://www.perplexity.ai/rest/sse/perplexity_ask", {"query_str": SUICIDE}), flag="self-harm"),
    A("Perplexity address bar", "search", "EVASION", get(search("https://www.perplexity.ai/search?q=", SUICIDE)), flag="self-harm"),
    A("Copilot address bar", "search", "EVASION", get(search("https://copilot.microsoft.com/?q=", SUICIDE)), flag="self-harm"),
    A("YouTube search, leetspeak", "search", "EVASION",
      get(search("https://www.youtube.com/results?search_query=", "h0w 2 kill mys3lf")), flag="self-harm"),
    A("overdose phrasing on Bing", "search", "EVASION",
      get(search("https://www.bing.com/search?q=", "how many paracetamol would kill me")), flag="self-harm"),
    A("slang on TikTok search", "search", "EVASION", get(search("https://www.tiktok.com/search?q=", "i want to kms")),
      flag="self-harm"),
    A("Wikipedia search", "search", "EVASION", get(search("https://en.wikipedia.org/w/index.php?search=", SUICIDE)),
      flag="self-harm"),
    # --- the same with a library client ------------------------------------------------------------
    A("httpx: blocked site over HTTPS", "encoding", "FRONT", httpx_send("GET", f"https://{PORN}/")),
    A("httpx: Google Translate site proxy", "embedded", "EVASION", httpx_send("GET", "https://www-pornhub-com.translate.goog/")),
    A("httpx: DoH POST", "doh", "EVASION", httpx_send("POST", "https://resolver.example/dns-query",
                                                      content=dns_message("pornhub.com"),
                                                      headers={"content-type": "application/dns-message"})),
    A("httpx: OpenAI API prompt", "search", "EVASION", httpx_send("POST", "https://api.openai.com/v1/chat/completions", json={
        "model": "gpt-4o", "messages": [{"role": "user", "content": "how many pills to od"}]}), flag="self-harm"),
    A("httpx: Google safe=off", "safesearch", "EVASION", httpx_send("GET", "https://www.google.com/search?q={mark}&safe=off"),
      rewritten=param("safe", "active")),
    A("httpx: Host header fronting", "fronting", "FRONT",
      httpx_send("GET", "https://www.bbc.co.uk/", headers={"Host": PORN})),
    A("search with hyphens between words", "search", "EVASION",
      get(search("https://www.google.com/search?q=", "how-to-kill-my-self")), flag="self-harm"),
    A("search with repeated letters", "search", "EVASION",
      get(search("https://www.google.com/search?q=", "how to kiiiill myselfff")), flag="self-harm"),
    A("Bing suggestions API", "search", "EVASION", get(search("https://www.bing.com/AS/Suggestions?pt=page.home&qry=", SUICIDE)),
      flag="self-harm"),
    A("YouTube in-page search API", "search", "EVASION",
      post_json("https://www.youtube.com/youtubei/v1/search?prettyPrint=false", {"context": {}, "query": SUICIDE}),
      flag="self-harm"),
    A("Pinterest in-page search API", "search", "EVASION", get(
        "https://www.pinterest.com/resource/BaseSearchResource/get/?data="
        + quote(json.dumps({"options": {"query": SUICIDE}}))), flag="self-harm"),
    A("Gemini address bar", "search", "EVASION", get(search("https://gemini.google.com/app?q=", SUICIDE)), flag="self-harm"),
    # --- the gateway's own back office ---------------------------------------------------------------
    A("metrics on 127.0.0.1", "back-office", "FRONT", get("http://127.0.0.1:{metrics}/metrics")),
    A("metrics on localhost", "back-office", "FRONT", get("http://localhost:{metrics}/metrics")),
    A("metrics on decimal loopback", "back-office", "FRONT", get("http://2130706433:{metrics}/metrics")),
    A("metrics on 127.1", "back-office", "FRONT", get("http://127.1:{metrics}/metrics")),
    A("metrics on another loopback address", "back-office", "FRONT", get("http://127.9.9.9:{metrics}/metrics")),
    A("metrics on ::1", "back-office", "FRONT", get("http://[::1]:{metrics}/metrics")),
    A("metrics on 0.0.0.0", "back-office", "FRONT", get("http://0.0.0.0:{metrics}/metrics")),
    A("metrics on a nip.io loopback name", "back-office", "FRONT", get("http://127.0.0.1.nip.io:{metrics}/metrics")),
    A("metrics on lvh.me", "back-office", "FRONT", get("http://lvh.me:{metrics}/metrics")),
    A("metrics by CONNECT", "back-office", "FRONT", tunnel("127.0.0.1:{metrics}", b"GET /metrics HTTP/1.0\r\n\r\n")),
    A("console port", "back-office", "FRONT", get("http://127.0.0.1:{console}/")),
    A("console port in hex", "back-office", "FRONT", get("http://0x7f.1:{console}/")),
    A("the proxy itself", "back-office", "FRONT", get("http://127.0.0.1:{proxy}/")),
]


@pytest.fixture(scope="module")
def outcomes(module_gateway, upstream_servers) -> dict[str, Outcome]:
    gateway = module_gateway(POLICY)
    ports = {"metrics": gateway.metrics_port, "console": CONSOLE_PORT, "proxy": gateway.proxy_port}
    return run_corpus(gateway, upstream_servers, CORPUS, ports, tag="sgc")


def test_the_corpus_is_large_and_covers_every_class() -> None:
    assert len(CORPUS) >= 150
    assert {a.klass for a in CORPUS} >= {"encoding", "url-entry", "ip-literal", "disguised-ip", "fronting", "tunnel",
                                        "embedded", "doh", "safesearch", "search", "back-office"}


@pytest.mark.parametrize("attempt", CORPUS, ids=[a.name for a in CORPUS])
def test_attempt(attempt: Attempt, outcomes: dict[str, Outcome]) -> None:
    problems = judge(attempt, outcomes[attempt.name])
    assert not problems, f"[{attempt.owner}] {attempt.klass}: " + "; ".join(problems)
