"""Cost of the evasion checks the request path runs on every request: finding sites
carried inside a request (`embedded.carried`, which also reads names that spell an IP),
DNS-over-HTTPS by shape, search-term extraction, and the risk lexicon on text with
characters of other scripts (the confusable fold only runs on non-ASCII text).

    python bench/bench_evasion.py [--data ../shared/data] [--limit 100000]

URLs: the 100k benchmark list (../shared/data/bench/urls_100k.txt, read in place),
plus carried-site URLs (translators, archives, web proxies). Prints p50/p99/mean
per URL for each check, and the configuration.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from pathlib import Path

from schoolgate.addons.circumvention import is_doh_request
from schoolgate.addons.embedded import carried
from schoolgate.addons.searchterms import extract_search
from schoolgate.categories.lexicon import RiskLexicon
from schoolgate.urls import InvalidHost, parse_target

REPO = Path(__file__).resolve().parent.parent
CARRIED = [
    "https://www-pornhub-com.translate.goog/view?_x_tr_sl=auto",
    "https://web.archive.org/web/2020/https://www.bbc.co.uk/news",
    "https://archive.ph/newest/https://www.bbc.co.uk/",
    "https://r.jina.ai/https://example.com/",
    "http://homework.example/browse.php?u=https%3A%2F%2Fexample.com%2F&b=4",
    "https://203-0-113-9.sslip.io/",
]
TEXTS = ["how to kіll myself", "ΗΟW ΤΟ ΚΙLL ΜΥSΕLF", "révision de français", "jak napisać list", "ｍｉｎｅｃｒａｆｔ", "例えば 日本語"]


def timed(function, items) -> list[float]:
    costs = []
    for item in items:
        started = time.perf_counter_ns()
        function(item)
        costs.append((time.perf_counter_ns() - started) / 1000)
    return costs


def report(name: str, costs: list[float]) -> None:
    costs.sort()
    p99 = costs[int(len(costs) * 0.99)]
    print(f"{name:38s} p50 {statistics.median(costs):6.2f} µs  p99 {p99:6.2f} µs  mean {statistics.fmean(costs):6.2f} µs")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--limit", type=int, default=100_000)
    args = parser.parse_args()
    source = args.data / "bench" / "urls_100k.txt"
    urls = source.read_text().split()[: args.limit] if source.exists() else []
    print(f"python {platform.python_version()} on {platform.machine()}; URLs: {len(urls)} from {source}"
          + ("" if urls else " (absent: carried-site URLs only)") + f", plus {len(CARRIED)} carried-site URLs x 1000")
    targets = []
    for url in urls + CARRIED * 1000:
        try:
            targets.append(parse_target(url))
        except (InvalidHost, ValueError):
            continue
    report("embedded.carried (per URL)", timed(carried, targets))
    report("is_doh_request GET (per URL)", timed(lambda t: is_doh_request("GET", t, None, "text/html"), targets))
    report("extract_search (per URL)", timed(extract_search, targets))
    report("canonical match_path (per URL)", timed(lambda t: t.match_path, targets))
    lexicon = RiskLexicon.default()
    lexicon.worst("warm up")
    report("lexicon, non-ASCII text", timed(lexicon.worst, TEXTS * 5000))


if __name__ == "__main__":
    main()
