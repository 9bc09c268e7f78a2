"""Content scoring benchmark: precision and recall per category on the labelled
page corpus, and the cost of scoring a 100 KiB page.

    python bench/bench_content.py [--pages tests/fixtures/pages] [--rounds 200] [--kib 100]
    python bench/bench_content.py --load 10 [--concurrency 8]   # also: gateway throughput, scoring on vs off

Precision/recall: each corpus page's label (tests/fixtures/pages/labels.toml) against
the scorer's verdict with the default thresholds; "detected" means the page's top
category reached the threshold. A page labelled `flag` counts as a positive for its
category at the flag threshold only. The corpus was written alongside the phrase
lists, so these figures are an upper bound on what unseen pages would give; its
README records how a held-out batch fared before the lists learnt from it.

Cost: 100 KiB HTML pages built from the corpus pages (markup and all, each page a
different mix), timed as the gateway does it: decode bytes, extract the text a
reader sees, score. These pages are nearly all text (about 84,000 characters in
100 KiB), a worst case: real pages carry far more markup and script per word. A
second figure pads the same text with markup to a page of 25% text. Wall-clock on
this machine, single thread.

Throughput (--load): two mitmdump gateways with the schoolgate add-ons, same
policy except `[content] enabled = false` in one; the test site is on no list, so
the other scores every page it serves. A loopback site serves one harmless 40 KiB HTML page
(about 10 KiB of text) with Content-Length; keep-alive HTTP/1.1 clients fetch it
through each gateway, every request a new URL (no cache hit) or, in the
"cached" row, the same URL again; 4 requests per connection (see _fetch_loop).
Besides requests/s (noisy on a machine shared with other work), the mitmdump
process's CPU time per request is reported, which is what scoring costs.
Rounds alternate between the gateways.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import threading
import time
import tomllib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from schoolgate.categories.content import (
    CONTENT_CATEGORIES,
    ContentScorer,
    judge,
    page_text,
)

REPO = Path(__file__).resolve().parent.parent
BLOCK_AT, FLAG_AT = 100, 50


def precision_recall(scorer: ContentScorer, pages: Path) -> None:
    labels = tomllib.loads((pages / "labels.toml").read_text(encoding="utf-8"))
    print(f"corpus: {len(labels)} pages in {pages} "
          f"({sum('block' in v for v in labels.values())} harmful, {sum('flag' in v for v in labels.values())} borderline, "
          f"{sum('pass' in v for v in labels.values())} hard negatives); thresholds block {BLOCK_AT}, flag {FLAG_AT}")
    for threshold_name, threshold in (("block", BLOCK_AT), ("flag", FLAG_AT)):
        tp: Counter[str] = Counter()
        fp: Counter[str] = Counter()
        fn: Counter[str] = Counter()
        for name, label in labels.items():
            truth = label.get("block") or (label.get("flag") if threshold_name == "flag" else None)
            score = scorer.score(page_text((pages / name).read_text(encoding="utf-8"), "text/html"))
            verdict = judge(score, block_at=threshold, flag_at=threshold)
            said = verdict.category if verdict.action == "block" else None
            if said and said == truth:
                tp[said] += 1
            else:
                if said:
                    fp[said] += 1
                if truth:
                    fn[truth] += 1
        print(f"\nat the {threshold_name} threshold ({threshold}):")
        print(f"{'category':<12} {'tp':>3} {'fp':>3} {'fn':>3} {'precision':>9} {'recall':>7}")
        for category in CONTENT_CATEGORIES:
            t, f, n = tp[category], fp[category], fn[category]
            precision = t / (t + f) if t + f else float("nan")
            recall = t / (t + n) if t + n else float("nan")
            print(f"{category:<12} {t:>3} {f:>3} {n:>3} {precision:>9.2f} {recall:>7.2f}")
        t, f, n = sum(tp.values()), sum(fp.values()), sum(fn.values())
        print(f"{'all':<12} {t:>3} {f:>3} {n:>3} {t / (t + f):>9.2f} {t / (t + n):>7.2f}")


def page_cost(scorer: ContentScorer, pages: Path, rounds: int, kib: int) -> None:
    sources = [p.read_bytes() for p in sorted(pages.glob("*.html"))]
    rng = random.Random(1)
    dense = []
    for _ in range(20):
        body = bytearray()
        while len(body) < kib * 1024:
            body += rng.choice(sources)
        dense.append(bytes(body[: kib * 1024]))
    # The same words in pages of 25% text: the first quarter of each dense page, padded with markup.
    marked_up = [markup_heavy(b"<html><body>" + page[: kib * 256] + b"</body></html>")[: kib * 1024] for page in dense]
    print(f"\ncost per {kib} KiB HTML page ({rounds} rounds over 20 pages; {scorer.pattern_count} phrase patterns):")
    for name, built in (("text-dense", dense), ("25% text", marked_up)):
        chars = statistics.mean(len(page_text(b.decode("utf-8", "replace"), "text/html")) for b in built)
        timings: dict[str, list[float]] = {"extract": [], "score": [], "total": []}
        for i in range(rounds):
            body = built[i % len(built)]
            started = time.perf_counter()
            text = page_text(body.decode("utf-8", "replace"), "text/html")
            extracted = time.perf_counter()
            scorer.score(text)
            done = time.perf_counter()
            timings["extract"].append(extracted - started)
            timings["score"].append(done - extracted)
            timings["total"].append(done - started)
        print(f"  {name} pages, {chars:.0f} characters of text each on average:")
        for step, values in timings.items():
            values.sort()
            p50 = values[len(values) // 2] * 1000
            p99 = values[min(len(values) - 1, int(len(values) * 0.99))] * 1000
            print(f"    {step:<8} p50 {p50:7.2f} ms   p99 {p99:7.2f} ms")


def markup_heavy(text_page: bytes, share: float = 0.25) -> bytes:
    """A page of the same words with markup and script around them, `share` of it text."""
    filler = (b'<div class="nav-item col-md-3"><a href="/section/item" class="link link--primary" '
              b'data-track="nav">&#8203;</a></div>\n<script>window.dataLayer=window.dataLayer||[];'
              b'dataLayer.push({"event":"view","id":12345});</script>\n')
    padding = filler * int(len(text_page) * (1 - share) / share / len(filler))
    return text_page.replace(b"<body>", b"<body>" + padding, 1)


# --- throughput through real gateways ----------------------------------------------------

# A documentation address (RFC 5737): no name to resolve, not one of the loopback addresses the
# gateway refuses as destinations; the harness's loopback add-on sends it to the local site.
SITE = "192.0.2.10"
PER_CONNECTION = 4
PAGE_POLICY = """\
[gateway]
default_action = "allow"
metrics_port = 0
{extra}
[groups.pupils]
networks = ["127.0.0.0/8"]
"""


def _page_server(page: bytes) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        disable_nagle_algorithm = True

        def do_GET(self) -> None:
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


async def _fetch_loop(proxy_port: int, site_port: int, deadline: float, latencies: list[float], errors: list[int],
                      client: int, same_url: bool) -> None:
    """Keep-alive connections through the proxy, fetching until the deadline. A connection
    carries PER_CONNECTION requests: the harness's loopback add-on rewrites each upstream
    address, so mitmproxy opens a server connection per request and stalls at its sixth."""
    n = 0
    while time.monotonic() < deadline:
        reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
        try:
            for _ in range(PER_CONNECTION):
                n += 1
                query = "same" if same_url else f"c{client}r{n}t{time.monotonic_ns()}"
                url = f"http://{SITE}:{site_port}/page?{query}"
                started = time.perf_counter()
                writer.write(f"GET {url} HTTP/1.1\r\nHost: {SITE}:{site_port}\r\n\r\n".encode())
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 20)
                length = next(int(line.split(b":")[1]) for line in head.split(b"\r\n")
                              if line.lower().startswith(b"content-length:"))
                await reader.readexactly(length)
                if not head.startswith(b"HTTP/1.1 200"):
                    errors.append(1)
                latencies.append(time.perf_counter() - started)
                if time.monotonic() >= deadline:
                    break
        finally:
            writer.close()


def _measure(proxy_port: int, site_port: int, seconds: float, concurrency: int,
             same_url: bool) -> tuple[float, float, float, int, int]:
    latencies: list[float] = []
    errors: list[int] = []
    deadline = time.monotonic() + seconds

    async def run() -> None:
        await asyncio.gather(*(_fetch_loop(proxy_port, site_port, deadline, latencies, errors, c, same_url)
                               for c in range(concurrency)))

    started = time.monotonic()
    asyncio.run(run())
    elapsed = time.monotonic() - started
    latencies.sort()
    p50 = latencies[len(latencies) // 2] * 1000 if latencies else float("nan")
    p99 = latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000 if latencies else float("nan")
    return len(latencies) / elapsed, p50, p99, len(errors), len(latencies)


def throughput(pages: Path, seconds: float, concurrency: int, rounds: int) -> None:
    sys.path.insert(0, str(REPO / "tests"))
    import psutil
    from bench_load import gateway_pid

    from support.gateway import Gateway

    words = b"".join(p.read_bytes() for p in sorted(pages.glob("neg-*.html")))[:10_000]
    page = markup_heavy(b"<html><body>" + words + b"</body></html>")
    text = page_text(page.decode("utf-8", "replace"), "text/html")
    server = _page_server(page)
    site_port = server.server_address[1]
    work = Path(tempfile.mkdtemp(prefix="sg-bench-content-"))
    configs = {"scoring off": "[content]\nenabled = false", "scoring on": ""}
    gateways = {name: Gateway(work / name.replace(" ", "-"), PAGE_POLICY.format(extra=extra), loopback_http_port=site_port,
                              loopback_https_port=site_port, args=["-q"]).start()
                for name, extra in configs.items()}
    print(f"\nthroughput: one {len(page) / 1024:.0f} KiB HTML page ({len(text)} characters of text), "
          f"{concurrency} keep-alive clients, {seconds:g} s per run, {rounds} alternating rounds, "
          f"one mitmdump process per gateway (-q), records to SQLite")
    print(f"{'gateway':<22} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU ms/req':>11} {'errors':>7}")
    processes = {name: psutil.Process(gateway_pid(gateway)) for name, gateway in gateways.items()}
    try:
        results: dict[str, list[tuple[float, float]]] = {}
        for _ in range(rounds):
            for name, gateway in gateways.items():
                for same_url in ((False, True) if name == "scoring on" else (False,)):
                    label = name + (" (cached)" if same_url else "")
                    _measure(gateway.proxy_port, site_port, 1.0, concurrency, same_url)  # warm up
                    cpu = processes[name].cpu_times()
                    rate, p50, p99, errors, count = _measure(gateway.proxy_port, site_port, seconds, concurrency, same_url)
                    used = processes[name].cpu_times()
                    cpu_ms = ((used.user + used.system) - (cpu.user + cpu.system)) * 1000 / max(count, 1)
                    results.setdefault(label, []).append((rate, cpu_ms))
                    print(f"{label:<22} {rate:8.0f} {p50:8.2f} {p99:8.2f} {cpu_ms:11.2f} {errors:7d}", flush=True)
        print()
        base_rate = statistics.median(r for r, _ in results["scoring off"])
        base_cpu = statistics.median(c for _, c in results["scoring off"])
        for label, runs in results.items():
            rate, cpu_ms = statistics.median(r for r, _ in runs), statistics.median(c for _, c in runs)
            print(f"{label:<22} median {rate:6.0f} req/s ({rate / base_rate:.2f}x scoring off), "
                  f"{cpu_ms:5.2f} ms CPU per request ({cpu_ms / base_cpu:.2f}x)")
    finally:
        for gateway in gateways.values():
            gateway.stop()
        server.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pages", type=Path, default=REPO / "tests" / "fixtures" / "pages")
    parser.add_argument("--rounds", type=int, default=200)
    parser.add_argument("--kib", type=int, default=100)
    parser.add_argument("--load", type=float, metavar="SECONDS", help="also measure gateway throughput, scoring on vs off")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--load-rounds", type=int, default=3)
    args = parser.parse_args()
    started = time.perf_counter()
    scorer = ContentScorer.load()
    print(f"phrase lists compiled in {(time.perf_counter() - started) * 1000:.0f} ms: "
          f"{len(scorer.phrases)} phrases, {scorer.pattern_count} patterns")
    precision_recall(scorer, args.pages)
    page_cost(scorer, args.pages, args.rounds, args.kib)
    if args.load:
        throughput(args.pages, args.load, args.concurrency, args.load_rounds)


if __name__ == "__main__":
    main()
