"""`schoolgate lists update|show` and `schoolgate classify`: compile the
category lists and ask the compiled index about URLs in bulk."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Iterable
from contextlib import ExitStack
from pathlib import Path
from typing import IO, Any

from schoolgate.categories.index import CategoryHit, CategoryIndex, CompileReport, builtin_index, compile_index
from schoolgate.categories.sources import ListSource, builtin_tree, open_ut1, parse_extra, plain_source
from schoolgate.categories.taxonomy import CATEGORIES
from schoolgate.urls import InvalidHost, parse_target


def register(subparsers: Any) -> None:
    lists = subparsers.add_parser("lists", help="compile and inspect the category lists")
    lists_sub = lists.add_subparsers(dest="lists_command", required=True, metavar="COMMAND")

    update = lists_sub.add_parser("update", help="read UT1 and the school's own lists into a compiled index")
    _add_policy(update)
    update.add_argument(
        "--source", action="append", default=[], metavar="PATH_OR_URL",
        help="UT1 lists: a directory, a .tar.gz or an http(s) URL of one (repeatable; default: the policy's)",
    )
    update.add_argument(
        "--extra", action="append", default=[], metavar="FILE:CATEGORY",
        help="a list of domains, URLs or hosts-file lines filed under CATEGORY (repeatable)",
    )
    update.add_argument("--output", type=Path, help="where to write the index (default: the policy's lists index)")
    update.set_defaults(func=cmd_lists_update)

    show = lists_sub.add_parser("show", help="counts per category in the compiled index")
    _add_policy(show)
    show.add_argument("--index", type=Path, help="compiled index (default: the policy's, else the built-in list)")
    show.set_defaults(func=cmd_lists_show)

    classify = subparsers.add_parser("classify", help="print the categories of each URL read from FILE or stdin")
    _add_policy(classify)
    classify.add_argument("file", nargs="?", type=Path, help="one URL a line (default: stdin)")
    classify.add_argument("--index", type=Path, help="compiled index (default: the policy's, else the built-in list)")
    classify.add_argument("--format", choices=("text", "tsv", "json"), default="text")
    classify.set_defaults(func=cmd_classify)


def _add_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--policy", type=Path, default=Path(os.environ.get("SCHOOLGATE_POLICY", "policy.toml")),
        help="policy file, read for lists settings when it exists (default: ./policy.toml or $SCHOOLGATE_POLICY)",
    )


def _policy_lists(path: Path) -> tuple[Path | None, list[str], list[tuple[Path, str]]]:
    """(index, sources, extras) from the policy, or nothing if there is no policy file."""
    if not path.is_file():
        return None, [], []
    from schoolgate.policy import PolicyInvalid, load_policy  # only when a policy is in play

    try:
        policy = load_policy(path)
    except PolicyInvalid as e:
        raise SystemExit(f"error: {path} is not a valid policy (see `schoolgate check`): {e}") from None
    return policy.lists_index, list(policy.lists_sources), list(policy.lists_extra)


def cmd_lists_update(args: argparse.Namespace) -> int:
    policy_index, policy_sources, policy_extras = _policy_lists(args.policy)
    output = args.output or policy_index
    locations = args.source or policy_sources
    if output is None:
        print("error: no --output and no lists index in the policy", file=sys.stderr)
        return 2
    try:
        extras = [parse_extra(spec) for spec in args.extra] or [plain_source(p, c) for p, c in policy_extras]
    except (ValueError, KeyError) as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    if not locations and not extras:
        print("error: nothing to compile: give --source or --extra, or set lists sources in the policy", file=sys.stderr)
        return 2
    try:
        report = _compile(locations, extras, output)
    except OSError as e:  # a missing list, an unreachable URL, an unwritable output
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(report.summary())
    return 0


def _compile(locations: list[str], extras: list[ListSource], output: Path) -> CompileReport:
    with ExitStack() as stack:
        # schoolgate's own curated list (DoH resolvers, VPN sites, ...) is always part of the index.
        sources: list[ListSource] = list(builtin_tree().sources)
        for location in locations:
            tree = stack.enter_context(open_ut1(location))
            sources += tree.sources
            if tree.unknown:
                print(f"warning: {location}: unknown categories not imported: {', '.join(tree.unknown)}", file=sys.stderr)
            if tree.ignored:
                print(f"{location}: not imported by design: {', '.join(tree.ignored)}")
        return compile_index(sources + extras, output, show_progress=True)


def _open_index(index: Path | None, policy: Path) -> CategoryIndex:
    path = index or _policy_lists(policy)[0]
    if path is None:
        print("no compiled index given or configured; using the built-in list", file=sys.stderr)
        return builtin_index()
    return CategoryIndex.open(path)


def cmd_lists_show(args: argparse.Namespace) -> int:
    index = _open_index(args.index, args.policy)
    header = index.header
    print(f"index:    {index.path or 'built-in list'}")
    print(f"created:  {header['created']}")
    print(f"entries:  {index.entry_count:,}")
    for source in header["sources"]:
        print(f"source:   {source}")
    for category_id, count in sorted(index.sizes().items(), key=lambda kv: -kv[1]):
        title = CATEGORIES[category_id].title if category_id in CATEGORIES else "(not a schoolgate category)"
        print(f"{count:>12,}  {category_id:20} {title}")
    return 0


def cmd_classify(args: argparse.Namespace) -> int:
    index = _open_index(args.index, args.policy)
    write = _WRITERS[args.format]
    out = sys.stdout
    with (args.file.open(encoding="utf-8", errors="replace") if args.file else sys.stdin) as lines:
        for url, hits, error in classify(index, lines):
            write(out, url, hits, error)
    return 0


def classify(index: CategoryIndex, lines: Iterable[str]) -> Iterable[tuple[str, list[CategoryHit], str | None]]:
    """(url, hits, error) for each non-blank line; error is why a URL could not be read."""
    lookup = index.lookup
    for line in lines:
        url = line.strip()
        if not url:
            continue
        try:
            target = parse_target(url)
        except (InvalidHost, ValueError) as e:
            yield url, [], str(e)
            continue
        hits = lookup(target.host, target.match_path)
        if len(hits) > 1:  # most severe first, so the first category printed is the one that matters
            hits.sort(key=lambda hit: (-CATEGORIES[hit.category].severity, hit.category))
        yield url, hits, None


def _write_text(out: IO[str], url: str, hits: list[CategoryHit], error: str | None) -> None:
    if error:
        out.write(f"{url}\tinvalid: {error}\n")
    else:
        out.write(f"{url}\t{', '.join(f'{h.category} ({h.entry})' for h in hits) or '-'}\n")


def _write_tsv(out: IO[str], url: str, hits: list[CategoryHit], error: str | None) -> None:
    categories = ",".join(h.category for h in hits)
    entries = ",".join(h.entry for h in hits)
    out.write(f"{url}\t{categories}\t{entries}\t{error or ''}\n")


def _write_json(out: IO[str], url: str, hits: list[CategoryHit], error: str | None) -> None:
    record: dict[str, object] = {"url": url, "categories": [h.category for h in hits], "entries": [h.entry for h in hits]}
    if error:
        record["error"] = error
    out.write(json.dumps(record) + "\n")


_WRITERS: dict[str, Callable[[IO[str], str, list[CategoryHit], str | None], None]] = {
    "text": _write_text,
    "tsv": _write_tsv,
    "json": _write_json,
}
