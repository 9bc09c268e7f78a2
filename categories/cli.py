"""`schoolgate lists update|show` and `schoolgate classify`: compile the
category lists and ask the compiled index about URLs in bulk."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from schoolgate.categories.index import CategoryHit, CategoryIndex, IndexInvalid, builtin_index
from schoolgate.categories.sources import parse_extra, plain_source
from schoolgate.categories.taxonomy import CATEGORIES
from schoolgate.categories.update import UpdateInProgress, UpdatePlan, update
from schoolgate.commandline import add_policy_option
from schoolgate.urls import InvalidHost, parse_target

if TYPE_CHECKING:
    from schoolgate.policy import ListsSettings, Policy
    from schoolgate.upstream import UpstreamProxy

UPDATE_IN_PROGRESS = 3  # exit status of `lists update` when another process holds the index's lock


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
    update.add_argument(
        "--allow-shrink", action="store_true",
        help="replace the index even if the new lists hold less than half its entries (refused otherwise)",
    )
    update.set_defaults(func=cmd_lists_update)

    show = lists_sub.add_parser("show", help="counts per category in the compiled index")
    _add_policy(show)
    show.add_argument("--index", type=Path, help="compiled index (default: the policy's, else the built-in list)")
    show.set_defaults(func=cmd_lists_show)

    status = lists_sub.add_parser(
        "status", help="sources, age and entries per category acted on, the illegal-content tier, and what is missing")
    _add_policy(status)
    status.set_defaults(func=cmd_lists_status)

    classify = subparsers.add_parser("classify", help="print the categories of each URL read from FILE or stdin")
    _add_policy(classify)
    classify.add_argument("file", nargs="?", type=Path, help="one URL a line (default: stdin)")
    classify.add_argument("--index", type=Path, help="compiled index (default: the policy's, else the built-in list)")
    classify.add_argument("--format", choices=("text", "tsv", "json"), default="text")
    classify.set_defaults(func=cmd_classify)


def _add_policy(parser: argparse.ArgumentParser) -> None:
    add_policy_option(parser, "policy file, read for lists settings when it exists")


def _policy(path: Path) -> Policy | None:
    """The policy, or None if there is no policy file."""
    from schoolgate.policy import PolicyInvalid, load_policy  # only when a policy is in play

    if not path.is_file():
        return None
    try:
        return load_policy(path)
    except PolicyInvalid as e:
        raise SystemExit(f"error: {path} is not a valid policy (see `schoolgate check`): {e}") from None


def _policy_lists(path: Path) -> ListsSettings:
    """The policy's [lists], or the defaults if there is no policy file."""
    from schoolgate.policy import ListsSettings

    policy = _policy(path)
    return policy.lists if policy is not None else ListsSettings()


def _fetch_through(upstream: UpstreamProxy) -> None:
    """Downloads go through the upstream proxy the gateway is chained to (a school behind one
    usually cannot reach the list publishers any other way), unless the environment names a proxy."""
    for variable in ("http_proxy", "https_proxy"):
        if not (os.environ.get(variable) or os.environ.get(variable.upper())):
            os.environ[variable] = upstream.url_with_credentials


def cmd_lists_update(args: argparse.Namespace) -> int:
    from schoolgate.policy import ListsSettings

    policy = _policy(args.policy)
    settings = policy.lists if policy is not None else ListsSettings()
    if policy is not None and policy.gateway.upstream_proxy is not None:
        _fetch_through(policy.gateway.upstream_proxy)
    policy_index, policy_sources, policy_extras = settings.index, list(settings.sources), list(settings.extra)
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
    if not sys.stderr.isatty():  # the timer's journal and the gateway's first-start log get progress lines
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
        logging.getLogger("schoolgate.lists").setLevel(logging.INFO)
    plan = UpdatePlan(locations=locations, extras=extras, output=output, allow_shrink=args.allow_shrink,
                      builtin=settings.builtin, builtin_skip=frozenset(settings.builtin_skip),
                      category_url=settings.category_url or None)
    try:
        report = update(plan)
    except UpdateInProgress as e:
        print(f"{e}; not starting a second one", file=sys.stderr)
        return UPDATE_IN_PROGRESS
    except (OSError, ValueError) as e:  # a missing list, a download cut short, a shrinking index, an unwritable output
        print(f"error: {e}; the index in place is unchanged", file=sys.stderr)
        return 1
    finally:
        for note in plan.notes:
            print(note, file=sys.stderr if note.startswith("warning:") else sys.stdout)
    print(report.summary())
    return 0


def _open_index(index: Path | None, policy: Path) -> CategoryIndex:
    if index is not None:  # asked for by name: the policy has no say, and no other list answers instead
        try:
            return CategoryIndex.open(index)
        except IndexInvalid as e:
            raise SystemExit(f"error: {e}") from None
    settings = _policy_lists(policy)
    # The built-in list as the gateway serves it: without the entries the policy leaves out.
    builtin = lambda: builtin_index(frozenset(settings.builtin_skip))  # noqa: E731
    if settings.index is None:
        print("no compiled index given or configured; using the built-in list", file=sys.stderr)
        return builtin()
    try:
        return CategoryIndex.open(settings.index)
    except IndexInvalid as e:
        print(f"warning: {e}; using the built-in list, as the gateway does until it is compiled", file=sys.stderr)
        return builtin()


def cmd_lists_status(args: argparse.Namespace) -> int:
    from schoolgate.categories.status import print_status  # loads the engine: only this command needs it

    return print_status(args.policy)


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
    if not hits:  # most URLs of a batch
        out.write(f"{url}\t\t\t{error or ''}\n")
        return
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
