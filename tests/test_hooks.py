"""The request path's hooks, pinned in milliseconds with mitmproxy's own test helpers
(taddons, tflow): the same add-ons as addons/script.py, a real policy file, and a
recorder whose writer keeps records in a list (the end-to-end tests use the database)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from mitmproxy import connection, http, tls
from mitmproxy.flow import Error
from mitmproxy.net.dns import response_codes
from mitmproxy.proxy.server_hooks import ServerConnectionHookData
from mitmproxy.tcp import TCPMessage
from mitmproxy.test import tflow

from schoolgate.addons.decision import REFUSED_UPSTREAM, Decision, Kind, Outcome, Who, attach, decision_of
from schoolgate.addons.recorder import MAX_RECORDED_URL
from schoolgate.addons.signing import Signer
from schoolgate.decide import Rule, Verdict
from schoolgate.policy import Action
from schoolgate.urls import parse_target

from support.hooks import client, hook_stack, request_flow, run

REPO = Path(__file__).resolve().parents[1]

POLICY = """\
[school]
name = "Hook School"

[gateway]
database = "sqlite+aiosqlite:///{dir}/hooks.db"
metrics_port = 0
default_group = "pupils"
secret_file = "{dir}/gateway.secret"

[tls]
no_intercept_domains = ["bank.test", "private-bank.test"]

[local]
block = ["blocked-local.test", "private-bank.test"]

[categories]
pornography = "block"
games = "warn"

[groups.pupils]
title = "Pupils"
networks = ["127.0.0.0/8", "10.0.0.0/8"]
block_ip_literals = true
"""


@pytest.fixture
def hooks(tmp_path):
    with hook_stack(tmp_path, POLICY) as stack:
        yield stack


def finish(h, flow: http.HTTPFlow) -> None:
    """What mitmproxy does after the request hook: the response (ours or the site's) is recorded."""
    if flow.response is None:
        flow.response = http.Response.make(200, b"site")
    h.recorder.response(flow)


def test_allowed_request_passes_and_is_recorded_once(hooks):
    flow = request_flow("http://allowed.test/Some/Path?Q=1")
    run(hooks.gate.request(flow))
    assert flow.response is None
    finish(hooks, flow)
    hooks.recorder.response(flow)  # a second response hook (e.g. a replay) writes nothing more
    (record,) = hooks.records
    assert (record.verdict, record.rule, record.status) == ("allow", "default", 200)
    assert record.url == "http://allowed.test/Some/Path?Q=1"  # as requested, case kept


def test_blocked_category_gets_the_block_page_and_the_flag_agrees(hooks):
    flow = request_flow("http://adult.test/")
    run(hooks.gate.request(flow))
    assert flow.response.status_code == 403 and b"This page is blocked" in flow.response.content
    decision = decision_of(flow)
    assert decision.verdict.rule is Rule.CATEGORY and decision.verdict.category == "pornography"
    finish(hooks, flow)
    (record,) = hooks.records
    assert record.verdict == "block" and record.ref == flow.response.headers["X-Schoolgate-Reference"]
    assert record.flag == decision.verdict.flag.risk


def test_warning_then_signed_proceed_then_allowed(hooks):
    flow = request_flow("http://games.test/play?level=2")
    run(hooks.gate.request(flow))
    assert flow.response.status_code == 403 and flow.response.headers["X-Schoolgate-Verdict"] == "warn"
    link = flow.response.text.split('href="', 1)[1].split('"', 1)[0].replace("&amp;", "&")
    proceed = request_flow("http://games.test" + link)
    run(hooks.gate.request(proceed))
    assert proceed.response.status_code == 303
    assert proceed.response.headers["Location"] == "http://games.test/play?level=2"
    assert decision_of(proceed).outcome is Outcome.PROCEED
    cookie = proceed.response.headers["Set-Cookie"].split(";", 1)[0]
    again = request_flow("http://games.test/play?level=2", Cookie=cookie)
    run(hooks.gate.request(again))
    assert again.response is None and "schoolgate_ack" not in again.request.headers.get("Cookie", "")
    assert decision_of(again).outcome is Outcome.ALLOW and decision_of(again).note == "warning acknowledged"


def test_proceed_link_signs_its_destination_so_it_cannot_redirect_elsewhere(hooks):
    signer: Signer = hooks.policy.signer
    who = hooks.connections.identification.by_address(client())
    link = signer.proceed_link(who, "games.test", "http://games.test/play")
    tampered = link.replace("to=http%3A%2F%2Fgames.test%2Fplay", "to=http%3A%2F%2Fgames.test%5C%40evil.test%2F")
    assert tampered != link
    flow = request_flow("http://games.test" + tampered)
    run(hooks.gate.request(flow))
    assert flow.response.status_code == 400


def test_non_ascii_signature_fails_closed_and_never_reaches_the_site(hooks):
    # The old gateway compared str signatures: hmac.compare_digest raised on 'é',
    # mitmproxy logged it, and the POST went on to the blocked host.
    flow = request_flow("http://adult.test/.well-known/schoolgate/request-access", "POST",
                        **{"Content-Type": "application/x-www-form-urlencoded"})
    flow.request.urlencoded_form = {"url": "http://adult.test/", "ref": "SG-X", "sig": "é" * 32, "reason": "homework"}
    run(hooks.gate.request(flow))
    assert flow.response is not None and flow.response.status_code == 400


def test_an_exception_inside_the_async_endpoint_refuses_the_request(hooks, monkeypatch):
    async def broken(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(hooks.gate.endpoints, "request_access", broken)
    flow = request_flow("http://adult.test/.well-known/schoolgate/request-access", "POST")
    run(hooks.gate.request(flow))
    assert flow.response.status_code == 503


def test_a_bug_in_deciding_refuses_the_request(hooks, monkeypatch):
    monkeypatch.setattr(hooks.gate, "_decide", lambda *a: 1 / 0)
    flow = request_flow("http://allowed.test/")
    run(hooks.gate.request(flow))
    assert flow.response.status_code == 503
    hooks.recorder.response(flow)
    (record,) = hooks.records
    assert (record.host, record.verdict, record.status) == ("allowed.test", "block", 503)
    assert record.rule.startswith("decision-failed")


def test_a_bug_in_a_raw_connection_hook_refuses_and_records_it(hooks, monkeypatch):
    monkeypatch.setattr(hooks.connections.judge, "decide", lambda *a, **k: 1 / 0)
    flow = tflow.ttcpflow(client_conn=client(), messages=[])
    flow.server_conn.address = ("allowed.test", 22)
    hooks.connections.tcp_start(flow)
    assert flow.server_conn.error
    hooks.recorder.tcp_error(flow)
    assert hooks.records[0].verdict == "block" and hooks.records[0].method == "TCP"


def test_a_bug_on_a_tls_clienthello_leaves_it_to_the_request_hook(hooks, monkeypatch):
    monkeypatch.setattr(hooks.connections.judge, "decide", lambda *a, **k: 1 / 0)
    data = clienthello(client(), "adult.test")
    hooks.connections.tls_clienthello(data)
    assert not data.ignore_connection  # decrypted: each request inside is still decided


def test_loopback_and_the_gateways_own_address_are_not_destinations(hooks):
    for url in ("http://127.0.0.1:8600/", "http://localhost:9464/metrics", "http://[::1]/",
                "http://169.254.169.254/latest/meta-data/", "http://10.0.0.1:8080/", "http://127-0-0-1.sslip.io/"):
        flow = request_flow(url)
        run(hooks.gate.request(flow))
        assert flow.response is not None and flow.response.status_code == 403, url
        assert decision_of(flow).verdict.rule is Rule.INTERNAL, url


def test_sni_is_decided_with_the_host_header(hooks):
    # A CONNECT to an allowed name whose TLS asks for a blocked one: the decrypted request carries both.
    flow = request_flow("https://allowed.test/")
    flow.client_conn.sni = "adult.test"
    run(hooks.gate.request(flow))
    assert flow.response.status_code == 403 and decision_of(flow).target.host == "adult.test"


def test_long_urls_are_recorded_cut_and_marked(hooks):
    flow = request_flow("http://allowed.test/" + "A" * 20_000)
    run(hooks.gate.request(flow))
    finish(hooks, flow)
    (record,) = hooks.records
    assert len(record.url) == MAX_RECORDED_URL and record.url.endswith("…[cut]") and "AAAA" in record.url


def connect_flow(host: str, port: int = 443, ip: str = "10.1.2.3") -> http.HTTPFlow:
    request = http.Request(host=host, port=port, method=b"CONNECT", scheme=b"", authority=f"{host}:{port}".encode(),
                           path=b"", http_version=b"HTTP/1.1", headers=http.Headers(), content=b"", trailers=None,
                           timestamp_start=0, timestamp_end=0)
    return tflow.tflow(client_conn=client(ip), req=request)


def raw_tcp(after: http.HTTPFlow, data: bytes = b"SSH-2.0-OpenSSH_9.6\r\n"):
    flow = tflow.ttcpflow(client_conn=after.client_conn, messages=[])
    flow.server_conn.address = (after.request.host, after.request.port)
    flow.server_conn.timestamp_start = None
    flow.messages.append(TCPMessage(True, data))
    return flow


@pytest.mark.parametrize("host, port, rule", [
    ("adult.test", 443, Rule.CATEGORY),  # a blocked name
    ("allowed.test", 443, Rule.RAW_TUNNEL),  # an allowed name, but pupils may not tunnel
    ("allowed.test", 22, Rule.RAW_TUNNEL),  # port 22
    ("198.51.100.7", 443, Rule.IP_LITERAL),  # a bare IP
])
def test_raw_bytes_in_a_tunnel_are_refused_and_recorded(hooks, host, port, rule):
    connect = connect_flow(host, port)
    run(hooks.connections.http_connect(connect))
    assert connect.response is None  # answered 200 for interception
    flow = raw_tcp(connect)
    hooks.connections.tcp_start(flow)
    assert flow.server_conn.error and "refused by schoolgate" in flow.server_conn.error
    hooks.connections.tcp_message(flow)
    assert flow.messages[-1].content == b""
    hooks.recorder.tcp_error(flow)
    (record,) = hooks.records
    assert (record.method, record.verdict, record.bytes_in, record.bytes_out) == ("TCP", "block", 0, 0)
    assert record.rule.startswith(rule.value)


def test_blocked_connect_to_a_name_that_is_not_decrypted_is_refused_and_recorded(hooks):
    connect = connect_flow("private-bank.test")
    run(hooks.connections.http_connect(connect))
    assert connect.response.status_code == 403
    (record,) = hooks.records
    assert (record.method, record.verdict, record.status) == ("CONNECT", "block", 403)
    assert record.ref == connect.response.headers["X-Schoolgate-Reference"]


def clienthello(conn: connection.Client, sni: str, address=("allowed.test", 443)) -> tls.ClientHelloData:
    context = SimpleNamespace(client=conn, server=SimpleNamespace(address=address))
    return tls.ClientHelloData(context=context, client_hello=SimpleNamespace(sni=sni))


def test_tls_name_blocked_inside_an_allowed_connect_is_decrypted_and_recorded_when_it_fails(hooks):
    connect = connect_flow("allowed.test")
    run(hooks.connections.http_connect(connect))
    data = clienthello(connect.client_conn, "adult.test")
    hooks.connections.tls_clienthello(data)
    assert not data.ignore_connection  # decrypted, so the block page can be shown
    hooks.connections.tls_failed_client(SimpleNamespace(context=SimpleNamespace(client=connect.client_conn)))
    (record,) = hooks.records
    assert (record.host, record.verdict) == ("adult.test", "block") and "school certificate" in record.rule


def test_passthrough_tls_is_recorded_by_name(hooks):
    connect = connect_flow("bank.test")
    run(hooks.connections.http_connect(connect))
    data = clienthello(connect.client_conn, "bank.test", ("bank.test", 443))
    hooks.connections.tls_clienthello(data)
    assert data.ignore_connection
    (record,) = hooks.records
    assert (record.method, record.host, record.verdict) == ("CONNECT", "bank.test", "allow")


def test_an_open_passthrough_connection_that_cannot_be_decided_again_is_cut(hooks, monkeypatch):
    conn = client()
    assert hooks.connections._still_passes(conn, ("bank.test", 443), "bank.test", "CONNECT") is None  # allowed

    def broken(*args, **kwargs):
        raise RuntimeError("the engine broke")

    monkeypatch.setattr(hooks.connections.judge, "decide", broken)
    # Raised inside the relay, it would drop one chunk and let the next through unchecked.
    assert hooks.connections._still_passes(conn, ("bank.test", 443), "bank.test", "CONNECT") == "it could not be decided again"


def test_dns_query_for_a_blocked_name_is_refused_and_recorded(hooks):
    flow = tflow.tdnsflow()
    flow.client_conn = client()
    flow.request.questions[0].name = "adult.test"
    hooks.connections.dns_request(flow)
    assert flow.response.response_code == response_codes.NXDOMAIN
    assert decision_of(flow).kind is Kind.DNS
    hooks.recorder.dns_response(flow)
    assert hooks.records[0].method == "DNS" and hooks.records[0].verdict == "block"


def test_udp_is_a_raw_tunnel_too(hooks):
    flow = tflow.tudpflow()
    flow.client_conn = client()
    flow.server_conn.address = ("198.51.100.9", 51820)
    hooks.connections.udp_start(flow)
    assert flow.server_conn.error
    hooks.recorder.udp_end(flow)
    assert hooks.records[0].verdict == "block" and hooks.records[0].method == "UDP"


def test_ask_for_access_is_rate_limited_and_deduplicated(hooks, monkeypatch):
    stored = []

    async def create_request(**fields):
        stored.append(fields)
        return len(stored)

    monkeypatch.setattr(hooks.policy.live_store, "create_request", create_request)
    signer: Signer = hooks.policy.signer
    who = hooks.connections.identification.by_address(client())

    def ask(url: str):
        flow = request_flow("http://adult.test/.well-known/schoolgate/request-access", "POST")
        flow.request.urlencoded_form = {**signer.request_fields(who, url, "SG-1"), "reason": "homework"}
        run(hooks.gate.request(flow))
        return flow.response.status_code

    assert [ask("http://adult.test/a") for _ in range(300)] == [200] * 300
    assert len(stored) == 1  # the same page asked for again is not stored again
    statuses = [ask(f"http://adult.test/{n}") for n in range(10)]
    assert statuses.count(200) == 4 and statuses[4:] == [429] * 6  # 5 pages per device in 10 minutes
    assert len(stored) == 5


def test_gateway_module_stays_thin():
    lines = (REPO / "addons" / "gateway.py").read_text().count("\n")
    assert lines <= 250, f"addons/gateway.py has {lines} lines; move a concern into its own module"


def test_block_page_carries_the_schools_logo_and_words_escaped(hooks, tmp_path):
    branded = tmp_path / "branded.toml"
    branded.write_text(POLICY.replace("{dir}", str(tmp_path)).replace('name = "Hook School"', (
        'name = "Hook School"\nlogo_url = "https://cdn.school.test/logo.png"\n'
        'block_message = "Ask Mr <b>Patel</b> in room 4."\npage_footer = "See the AUP & e-safety page."')))
    hooks.tctx.configure(hooks.policy, schoolgate_policy=str(branded))
    flow = request_flow('http://adult.test/"><script>alert(1)</script>')
    run(hooks.gate.request(flow))
    page = flow.response.text
    assert '<img class="logo" src="https://cdn.school.test/logo.png"' in page
    assert "Ask Mr &lt;b&gt;Patel&lt;/b&gt; in room 4." in page and "AUP &amp; e-safety" in page
    assert "<script>" not in page
    assert "img-src https://cdn.school.test" in flow.response.headers["Content-Security-Policy"]


def test_logo_must_be_https_or_inline(tmp_path):
    from schoolgate.policy import PolicyInvalid, load_policy

    bad = tmp_path / "policy.toml"
    bad.write_text('[school]\nlogo_url = "http://cdn.school.test/logo.png"\n')
    with pytest.raises(PolicyInvalid, match="logo_url"):
        load_policy(bad)


def test_a_request_line_mitmproxy_refuses_is_still_recorded(hooks):
    import logging

    from schoolgate.addons.malformed import PROXY_LOGGER, MalformedRequests

    malformed = MalformedRequests(hooks.policy, hooks.connections.identification, hooks.connections.judge,
                                  hooks.recorder)
    malformed.load(None)
    try:
        # What mitmproxy's proxy server logs after answering 400 (no hook is called).
        line = "GET http://\uff41dult.test/ HTTP/1.1".encode()
        logging.getLogger(PROXY_LOGGER).info(f"10.1.2.3:5000: Bad HTTP request line: {line!r}",
                                             extra={"client": ("10.1.2.3", 5000)})
        malformed.refused(("10.1.2.3", 5001), "Bad HTTP request line: b'CONNECT www.pornhub.com..:443 HTTP/1.1'")
    finally:
        malformed.done()
    first, second = hooks.records
    assert (first.host, first.verdict, first.status, first.categories) == ("adult.test", "block", 400, ("pornography",))
    assert first.flag is not None and "malformed" in first.rule
    assert (second.method, second.verdict, second.status) == ("CONNECT", "block", 400)


def test_a_name_that_resolves_to_the_back_office_is_refused_before_connecting(hooks, monkeypatch):
    async def resolves_to_loopback(host, port):
        return ["127.0.0.1"]

    monkeypatch.setattr("schoolgate.addons.connections._resolve", resolves_to_loopback)
    flow = request_flow("http://rebind.example/admin")
    run(hooks.gate.request(flow))
    assert flow.response is None  # allowed by name
    server = tflow.tserver_conn()
    server.address, server.error = ("rebind.example", 80), None
    data = SimpleNamespace(client=flow.client_conn, server=server)
    run(hooks.connections.server_connect(data))
    assert server.error and server.error.startswith("refused by schoolgate")
    flow.error = Error(f"Connection killed: {server.error}")
    hooks.recorder.error(flow)
    refused, request = hooks.records
    assert (refused.host, refused.verdict, refused.rule.split()[0]) == ("rebind.example", "block", "internal-destination")
    assert (request.host, request.verdict) == ("rebind.example", "block")  # not "allow": it never got through


def test_an_allowed_name_is_connected_to_the_address_checked_not_a_second_lookup(hooks, monkeypatch):
    """DNS rebinding: a name answering a public address to our check and loopback to
    mitmproxy's own lookup would reach the back office, so the checked address is used."""
    answers = iter((["203.0.113.7", "198.51.100.9"], ["127.0.0.1"]))

    async def rebinding(host, port):
        return next(answers)

    monkeypatch.setattr("schoolgate.addons.connections._resolve", rebinding)
    flow = request_flow("http://rebind.example/")
    server = tflow.tserver_conn()
    server.address, server.error = ("rebind.example", 80), None
    run(hooks.connections.server_connect(ServerConnectionHookData(client=flow.client_conn, server=server)))
    assert server.error is None
    assert server.address == ("203.0.113.7", 80)  # mitmproxy connects there without asking DNS again


def test_a_fault_while_checking_a_connection_refuses_it(hooks, monkeypatch):
    def broken(*args):
        raise RuntimeError("bug")

    monkeypatch.setattr(hooks.connections.judge, "back_office", broken)
    flow = request_flow("http://example.org/")
    server = tflow.tserver_conn()
    server.address, server.error = ("example.org", 80), None
    run(hooks.connections.server_connect(ServerConnectionHookData(client=flow.client_conn, server=server)))
    assert server.error == "the filter failed while deciding"


def test_every_address_of_the_gateways_own_interfaces_is_refused(hooks):
    import ipaddress

    from schoolgate.addons.judge import _interface_addresses

    own = [a for a in _interface_addresses() if not ipaddress.ip_address(a).is_loopback
           and not ipaddress.ip_address(a).is_link_local]
    if not own:
        pytest.skip("this machine has no interface address besides loopback and link-local")
    for address in own:
        host = f"[{address}]" if ":" in address else address
        flow = request_flow(f"http://{host}:9464/metrics")
        run(hooks.gate.request(flow))
        assert decision_of(flow).verdict.rule is Rule.INTERNAL, address


PORTAL_POLICY = POLICY.replace('block_ip_literals = true', 'block_ip_literals = true\nrequire_auth = true') + """
[auth]
htpasswd = "{dir}/htpasswd"

[portal]
host = "signin.test"
open_hosts = ["login.provider.test"]
"""


def test_an_unsigned_device_reaches_only_the_open_hosts_themselves(tmp_path):
    """A Host header naming the sign-in provider must not carry a request to another site
    past the sign-in page."""
    (tmp_path / "htpasswd").write_text("")
    with hook_stack(tmp_path, PORTAL_POLICY) as h:
        open_page = request_flow("http://login.provider.test/authorize")
        run(h.gate.request(open_page))
        assert open_page.response is None
        fronted = request_flow("http://adult.test/")
        fronted.request.headers["Host"] = "login.provider.test"
        run(h.gate.request(fronted))
        assert fronted.response is not None and fronted.response.status_code == 302
        assert fronted.response.headers["Location"].startswith("https://signin.test/")



def test_an_allowed_raw_tunnel_whose_connection_was_refused_is_recorded_as_blocked(hooks):
    """As for HTTP: a name allowed by the policy that resolves to the back office is refused
    before connecting, and its flow's record says block, not allow."""
    connect = connect_flow("allowed.test", 443)
    run(hooks.connections.http_connect(connect))
    flow = raw_tcp(connect)
    who = Who("10.1.2.3", None, hooks.policy.engine.policy.groups["pupils"])
    attach(flow, Decision(who, parse_target("https://allowed.test/"),
                          Verdict(Action.ALLOW, Rule.DEFAULT, "not on any list", "pupils"), "TCP", Kind.TCP))
    flow.error = Error(f"{REFUSED_UPSTREAM}: the gateway's own machine is not a destination")
    hooks.recorder.tcp_error(flow)
    (record,) = [r for r in hooks.records if r.method == "TCP"]
    assert (record.verdict, record.bytes_in, record.bytes_out) == ("block", 0, 0)


def test_a_flag_raised_by_any_name_is_kept_when_another_name_decides(hooks):
    """A translator page (allowed, decided first) carrying a flagged site that is allowed too:
    the action is the strictest name's, and the DSL still hears of the flagged one."""
    who = Who("10.1.2.3", None, hooks.policy.engine.policy.groups["pupils"])
    alone = hooks.connections.judge.decide(who, parse_target("http://casino.test/"), method="GET")
    assert alone.verdict.action is Action.ALLOW and alone.verdict.flag is not None
    both = hooks.connections.judge.decide(who, parse_target("http://allowed.test/"), parse_target("http://casino.test/"),
                                          method="GET")
    assert both.verdict.action is Action.ALLOW and both.verdict.flag == alone.verdict.flag


def test_a_fault_is_recorded_against_whoever_is_signed_in_on_the_device(hooks, monkeypatch):
    from schoolgate.identities import Identity, Source

    hooks.gate.identification.sessions.start("10.1.2.3", Identity("amy.b", Source.PORTAL), 3600, "portal")
    monkeypatch.setattr(hooks.gate, "_decide", lambda *a: 1 / 0)
    flow = request_flow("http://allowed.test/")
    run(hooks.gate.request(flow))
    assert flow.response.status_code == 503
    hooks.recorder.response(flow)
    (record,) = hooks.records
    # Whoever the device is, as every other path names it (identify, by_address, malformed requests).
    assert (record.user, record.identity_source, record.verdict) == ("amy.b", "portal", "block")


def test_tls_that_needs_no_decrypting_is_handed_to_a_relay_once_its_clienthello_is_whole(hooks):
    import ssl

    from mitmproxy import options
    from mitmproxy.proxy import context, events, layers
    from mitmproxy.proxy.layer import NextLayer

    from schoolgate.addons.connections import Passthrough

    outgoing = ssl.MemoryBIO()
    tls_client = ssl.create_default_context().wrap_bio(ssl.MemoryBIO(), outgoing, server_hostname="bank.test")
    with pytest.raises(ssl.SSLWantReadError):
        tls_client.do_handshake()
    hello = outgoing.read()

    def asked(sni_host: str, data: bytes) -> NextLayer:
        ctx = context.Context(client("10.1.2.3"), options.Options())
        ctx.server.address = (sni_host, 443)
        nextlayer = NextLayer(ctx)
        nextlayer.events = [events.DataReceived(ctx.client, data)]
        nextlayer.layer = layers.ServerTLSLayer(ctx)  # as mitmproxy's NextLayer picks for TLS
        nextlayer.layer.child_layer = layers.ClientTLSLayer(ctx)
        hooks.connections.relay_undecrypted(nextlayer)
        return nextlayer

    assert asked("bank.test", hello[:60]).layer is None  # the rest of the ClientHello is awaited
    assert isinstance(asked("bank.test", hello).layer, Passthrough)  # no-intercept: relayed, counted
    assert isinstance(asked("adult.test", hello).layer, layers.ServerTLSLayer)  # the CONNECT name is blocked: decrypted
