"""Risk lexicon benchmark: phrase count, automaton build time and matching cost
per search term with the full shipped lexicon.

    python bench/bench_lexicon.py [--data ../shared/data] [--queries 20000]

Queries are the top-sites host names (../shared/data/top-sites/*.txt, read in
place) turned into searches ("bbc co uk", "bbc news"), plus synthetic queries:
everyday school searches and obfuscated risk phrases. If the shared data is
absent the run says so and uses the synthetic queries alone.
"""

from __future__ import annotations

import argparse
import itertools
import random
import statistics
import time
from pathlib import Path

from schoolgate.categories.lexicon import RiskLexicon

REPO = Path(__file__).resolve().parent.parent
EVERYDAY = [
    "year 9 maths revision",
    "photosynthesis equation",
    "how to draw a cat",
    "minecraft house ideas",
    "cutting board",
    "kill time on a bus",
    "bbc bitesize gcse chemistry",
    "what is the capital of peru",
    "shoot a photo in low light",
    "drug store opening hours",
    "isis the goddess",
    "french verbs être",
    "jak napisać list po angielsku",
    "cómo se dice hello",
    "how long is the river nile",
    "taylor swift lyrics",
]
RISKY = [
    "how to k1ll myself",
    "k i l l my self",
    "suiciiide methods",
    "sucide forum",
    "buy weed near me",
    "jak się zabić",
    "comment se suicider",
    "cómo suicidarme",
    "how to make a bomb",
    "am i being groomed",
]


def top_site_queries(data: Path, limit: int) -> list[str]:
    files = sorted((data / "top-sites").glob("*.txt"))
    hosts = (line.strip() for path in files for line in path.open(encoding="utf-8") if line.strip() and not line.startswith("#"))
    queries = []
    for host in itertools.islice(hosts, limit):
        name = host.rsplit(".", 1)[0]
        queries.append(name.replace(".", " ").replace("-", " "))
        queries.append(f"{name.split('.')[0]} login help")
    return queries


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(fraction * len(sorted_values)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--queries", type=int, default=20000, help="top-site hosts to turn into queries")
    args = parser.parse_args()

    started = time.perf_counter()
    lexicon = RiskLexicon.load()
    build_s = time.perf_counter() - started
    print(f"phrases (incl. listed misspellings): {len(lexicon)}")
    print(f"automaton keys (incl. generated typos and exclusions): {lexicon.pattern_count}")
    print(f"build time: {build_s * 1000:.0f} ms")

    if (args.data / "top-sites").is_dir():
        queries = top_site_queries(args.data, args.queries)
        print(f"queries: {len(queries)} from top-sites host names in {args.data / 'top-sites'}")
    else:
        queries = []
        print(f"shared data ABSENT ({args.data / 'top-sites'} not found): synthetic queries only")
    rng = random.Random(8484)
    synthetic = [rng.choice(EVERYDAY) for _ in range(5000)] + [rng.choice(RISKY) for _ in range(1000)]
    queries += synthetic
    rng.shuffle(queries)
    print(f"queries in total: {len(queries)} (of which synthetic {len(synthetic)})")

    for query in queries[:200]:  # warm up caches and the allocator
        lexicon.match(query)
    costs_us = []
    flagged = 0
    for query in queries:
        t0 = time.perf_counter_ns()
        hits = lexicon.match(query)
        costs_us.append((time.perf_counter_ns() - t0) / 1000)
        flagged += bool(hits)
    costs_us.sort()
    print(
        f"match cost per query: p50 {percentile(costs_us, 0.5):.1f} µs, p99 {percentile(costs_us, 0.99):.1f} µs, "
        f"mean {statistics.fmean(costs_us):.1f} µs, max {costs_us[-1]:.0f} µs"
    )
    print(f"queries flagged: {flagged} ({100 * flagged / len(queries):.1f}%)")


if __name__ == "__main__":
    main()
