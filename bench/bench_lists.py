"""Lists out of the box: what a new school's gateway blocks after its first start.

    python bench/bench_lists.py [--data ../shared/data]

Takes the shipped policy.toml unchanged except `[lists] sources` pointed at the
local UT1 copy (what an offline install does) and its index in a temporary
directory, compiles through `schoolgate lists update` (the first-start download
runs exactly that), then decides every URL of bench/urls_100k.txt for each pupil
group with the real Decider. Ground truth is UT1 read directly with squidGuard's
rules (domains match the host and its subdomains; URL entries are prefixes of
host-less-www + path), in the 11 harmful categories of the issue (adult, agressif,
doh, gambling, games, malware, phishing, redirector, sect, social_networks, vpn).

Prints, per group: recall (harmful URLs blocked / warned / let through) and false
blocks (URLs UT1 lists in no category at all that were blocked or warned). Also:
index open time (read + checksum, private memory) against a bare mmap open, the
resident memory an open index costs, and the illegal-content tier's lookup cost.
"""

from __future__ import annotations

import argparse
import mmap
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from schoolgate.categories.index import CategoryIndex
from schoolgate.engine import Engine
from schoolgate.policy import Action
from schoolgate.urls import InvalidHost, parse_target

REPO = Path(__file__).resolve().parents[1]
HARMFUL = ("adult", "agressif", "doh", "gambling", "games", "malware", "phishing", "redirector", "sect",
           "social_networks", "vpn")
_WWW = re.compile(r"(?:www|web|ftp)[0-9]*\.")


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Ut1Truth:
    """UT1 read directly, as squidGuard matches it: the independent side of the comparison."""

    def __init__(self, root: Path):
        self.domains: dict[str, set[str]] = {}
        self.urls: dict[str, list[tuple[str, str]]] = {}
        for directory in sorted(p for p in root.iterdir() if p.is_dir() and not p.is_symlink()):
            for line in _lines(directory / "domains"):
                self.domains.setdefault(line.lower(), set()).add(directory.name)
            for line in _lines(directory / "urls"):
                host, _, path = line.lower().partition("/")
                host = host[_url_start(host):]
                self.urls.setdefault(host, []).append(("/" + path, directory.name))

    def categories(self, host: str, path: str) -> set[str]:
        found: set[str] = set()
        labels = host.split(".")
        for i in range(len(labels)):
            found |= self.domains.get(".".join(labels[i:]), set())
        bare = host[_url_start(host):]
        for prefix, category in self.urls.get(bare, ()):
            if path.startswith(prefix):
                found.add(category)
        return found


def _url_start(host: str) -> int:
    m = _WWW.match(host)
    return m.end() if m and m.end() < len(host) else 0


def _lines(path: Path) -> list[str]:
    if not path.is_file():
        return []
    return [s for line in path.read_text(errors="replace").splitlines() if (s := line.strip()) and not s.startswith("#")]


def first_start(data: Path, work: Path) -> Path:
    policy = (REPO / "policy.toml").read_text()
    policy = re.sub(r'(?m)^index = .*$', f'index = "{work / "categories.idx"}"', policy, count=1)
    policy = re.sub(r'(?m)^sources = .*$', f'sources = ["{data / "ut1"}"]', policy, count=1)
    policy = policy.replace("sqlite+aiosqlite:///var/schoolgate.db", f"sqlite+aiosqlite:///{work / 'sg.db'}")
    path = work / "policy.toml"
    path.write_text(policy)
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "schoolgate", "lists", "update", "--policy", str(path)], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    print(f"first start:        `schoolgate lists update` on the default policy, sources = [{data / 'ut1'}]: "
          f"{time.monotonic() - started:.1f} s")
    return path


def open_figures(index_path: Path) -> None:
    size = index_path.stat().st_size
    private, mapped = [], []
    for _ in range(7):
        t = time.perf_counter()
        CategoryIndex.open(index_path).close()
        private.append(time.perf_counter() - t)
        t = time.perf_counter()
        with index_path.open("rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        mapped.append(time.perf_counter() - t)
        mm.close()
    grown = int(subprocess.run(  # a fresh process: this one's allocator has the earlier copies' pages
        [sys.executable, "-c", "import os,sys\nfrom schoolgate.categories.index import CategoryIndex\n"
         "def rss():\n    return int(open('/proc/self/statm').read().split()[1]) * os.sysconf('SC_PAGE_SIZE')\n"
         "b = rss(); i = CategoryIndex.open(sys.argv[1]); print(rss() - b)", str(index_path)],
        check=True, capture_output=True, text=True).stdout)
    index = CategoryIndex.open(index_path)
    print(f"index:              {index.entry_count:,} entries, {size / 1e6:.1f} MB file")
    print(f"open (read+verify): {statistics.median(private) * 1e3:.1f} ms median of 7 "
          f"(a bare mmap: {statistics.median(mapped) * 1e3:.2f} ms, but SIGBUS if the file is truncated)")
    print(f"memory:             +{grown / 1e6:.1f} MB resident per process holding it (private copy = file size)")
    index.close()


def decide_all(policy_path: Path, urls: list[str], truth: Ut1Truth) -> None:
    engine = Engine.load(policy_path)
    print(f"engine:             index serving = {engine.index_status.serving.value}, "
          f"{engine.index.entry_count:,} entries")
    targets = []
    for url in dict.fromkeys(urls):
        try:
            targets.append(parse_target(url))
        except (InvalidHost, ValueError):
            continue
    labels = [truth.categories(t.host, t.match_path) for t in targets]
    harmful = [bool(set(HARMFUL) & found) for found in labels]
    unlisted = [not found for found in labels]
    print(f"urls:               {len(targets):,} distinct; {sum(harmful):,} listed by UT1 in the 11 harmful categories; "
          f"{sum(unlisted):,} in no UT1 category")
    for name in ("pupils-primary", "pupils-secondary"):
        group = engine.policy.groups[name]
        counts: Counter[str] = Counter()
        false_blocks: Counter[str] = Counter()
        examples: Counter[str] = Counter()
        started = time.perf_counter()
        for target, bad, clean in zip(targets, harmful, unlisted, strict=True):
            action = engine.decide(target, group).action
            if bad:
                counts[action.value] += 1
            elif clean and action in (Action.BLOCK, Action.WARN):
                false_blocks[action.value] += 1
                verdict = engine.decide(target, group)
                examples[f"{verdict.rule.value}:{verdict.category or verdict.matched}"] += 1
        seconds = time.perf_counter() - started
        total = sum(harmful)
        print(f"{name + ':':20}recall {counts['block'] / total:.1%} blocked ({counts['block']:,}), "
              f"{counts['warn']:,} warned, {counts['allow'] + counts['monitor']:,} let through of {total:,}; "
              f"false blocks {false_blocks['block']:,} blocked + {false_blocks['warn']:,} warned of {sum(unlisted):,} "
              f"unlisted; {seconds / len(targets) * 1e6:.1f} µs a decision")
        print(f"{'':20}false blocks by rule: " + ", ".join(f"{k} {n}" for k, n in examples.most_common(8)))


def tier_figures(urls: list[str], work: Path) -> None:
    """The illegal-content tier's cost per decision, with fixture lists of a realistic size
    (the IWF list holds some thousands of URLs): 10,000 plain URLs and 10,000 sha256 digests."""
    import hashlib
    import random

    from schoolgate.categories import illegal

    rng = random.Random(7)
    (work / "iwf").mkdir(parents=True)
    (work / "ctiru").mkdir()
    (work / "iwf" / "urls.txt").write_text("".join(f"site{i}.example/p/{rng.randrange(10**9)}.jpg\n" for i in range(10_000)))
    (work / "ctiru" / "list.sha256").write_text(
        "".join(hashlib.sha256(f"t{i}.example/v/{i}".encode()).hexdigest() + "\n" for i in range(10_000)))
    started = time.perf_counter()
    tier = illegal.load(work)
    load = time.perf_counter() - started
    targets = []
    for url in urls[:20_000]:
        try:
            targets.append(parse_target(url))
        except (InvalidHost, ValueError):
            continue
    times = []
    for target in targets:
        started = time.perf_counter()
        tier.lookup(target.host, target.match_path)
        times.append(time.perf_counter() - started)
    times.sort()
    print(f"illegal tier:       10,000 URLs + 10,000 sha256 digests, loaded in {load * 1e3:.0f} ms; lookup p50 "
          f"{times[len(times) // 2] * 1e6:.1f} µs, p99 {times[int(len(times) * 0.99)] * 1e6:.1f} µs a URL "
          f"({len(targets):,} benchmark URLs)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args()
    urls = (args.data / "bench" / "urls_100k.txt").read_text().split()
    print(f"configuration:      Python {sys.version.split()[0]}, {os.cpu_count()} cores, data {args.data}")
    with tempfile.TemporaryDirectory(prefix="schoolgate-bench-lists-") as tmp:
        policy_path = first_start(args.data, Path(tmp))
        open_figures(Path(tmp) / "categories.idx")
        decide_all(policy_path, urls, Ut1Truth(args.data / "ut1"))
        tier_figures(urls, Path(tmp) / "illegal-content")


if __name__ == "__main__":
    main()
