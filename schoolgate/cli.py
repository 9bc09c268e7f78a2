"""The `schoolgate` command: run the gateway, check the policy, explain a verdict,
and (from categories/ and reports/) manage lists and read the records."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from importlib.resources import files
from pathlib import Path

from schoolgate.categories import cli as categories_cli
from schoolgate import manage, workers
from schoolgate.categories.taxonomy import CATEGORIES, HEADINGS
from schoolgate.live import read_live
from schoolgate.policy import PolicyInvalid, load_policy
from schoolgate.reports import cli as reports_cli
from schoolgate.urls import InvalidHost, parse_target


def _add_policy(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policy", default=os.environ.get("SCHOOLGATE_POLICY", "policy.toml"),
                        help="policy file (default: ./policy.toml or $SCHOOLGATE_POLICY)")


def cmd_run(args: argparse.Namespace) -> int:
    """Start mitmdump with the schoolgate add-on; extra arguments go to mitmdump."""
    try:
        policy = load_policy(args.policy)
    except PolicyInvalid as e:
        print(f"schoolgate: the policy has problems, not starting:\n{e}", file=sys.stderr)
        return 1
    if policy.database_url.startswith("sqlite"):
        Path(policy.database_url.split("///", 1)[1]).parent.mkdir(parents=True, exist_ok=True)
    confdir = Path(args.confdir or policy.path.parent / "var" / "ca").resolve()
    confdir.mkdir(parents=True, exist_ok=True)
    script = files("schoolgate.addons").joinpath("script.py")
    mitmdump = Path(sys.executable).with_name("mitmdump")
    argv = [
        str(mitmdump),
        "--quiet" if args.quiet else "--flow-detail=0",
        "-s", str(script),
        "--listen-host", args.listen_host,
        "--listen-port", str(args.listen_port),
        "--set", f"confdir={confdir}",
        "--set", "connection_strategy=lazy",
        "--set", f"schoolgate_policy={policy.path.resolve()}",
        *(["--mode", args.mode] if args.mode else []),
        *args.mitmdump_args,
    ]
    print(f"schoolgate: proxy on {args.listen_host}:{args.listen_port}, policy {policy.path}, "
          f"school CA in {confdir} (install mitmproxy-ca-cert.pem on pupils' devices)", file=sys.stderr)
    if args.workers > 1:
        if policy.metrics_port:
            print(f"schoolgate: {args.workers} workers; metrics on http://{policy.metrics_address}:"
                  f"{policy.metrics_port}-{policy.metrics_port + args.workers - 1}/metrics", file=sys.stderr)
        workers.ensure_ca(confdir)
        return workers.Supervisor(workers.plan(argv, args.workers, policy.metrics_port)).run()
    if policy.metrics_port:
        print(f"schoolgate: metrics on http://{policy.metrics_address}:{policy.metrics_port}/metrics", file=sys.stderr)
    os.execv(argv[0], argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def cmd_check(args: argparse.Namespace) -> int:
    try:
        policy = load_policy(args.file or args.policy)
    except PolicyInvalid as e:
        for problem in e.problems:
            print(problem)
        print(f"{len(e.problems)} problem(s); a running gateway keeps its last good policy until they are fixed")
        return 1
    print(f"{policy.path}: ok — {len(policy.groups)} groups ({', '.join(policy.groups)}), "
          f"{len(policy.local)} local list entries, default group {policy.default_group}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from schoolgate.engine import Engine  # loads the category index; only this command needs it

    try:
        engine = Engine.load(args.policy)
    except PolicyInvalid as e:
        print(f"schoolgate: the policy has problems:\n{e}", file=sys.stderr)
        return 1
    try:
        engine = engine.with_live(asyncio.run(read_live(engine.policy.database_url)))
    except Exception as e:  # no database yet, or unreachable: say so, decide without exceptions
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"schoolgate: exceptions and managed lists not consulted: {reason}", file=sys.stderr)
    try:
        target = parse_target(args.url)
    except InvalidHost as e:
        print(f"schoolgate: {e}", file=sys.stderr)
        return 2
    policy = engine.policy
    if args.group:
        if args.group not in policy.groups:
            print(f"schoolgate: no group {args.group!r}; groups are: {', '.join(policy.groups)}", file=sys.stderr)
            return 2
        group, how = policy.groups[args.group], "given with --group"
    else:
        group, how = policy.group_for(args.client or "", args.user)
    verdict = engine.decide(target, group, user=args.user, client_ip=args.client)
    print(f"url:        {target.url()}")
    print(f"group:      {group.name} ({how})")
    print(f"verdict:    {verdict.action.value.upper()}")
    print(f"rule:       {verdict.rule_text}")
    print(f"reason:     {verdict.reason}")
    if verdict.source:
        print(f"source:     {verdict.source}")
    print(f"categories: {', '.join(verdict.categories) or '(none)'}")
    if target.scheme == "https":
        intercepted = policy.intercepts(target.host, set(verdict.categories))
        print(f"https:      {'decrypted (block page can be shown)' if intercepted else 'passed through undecrypted, decided by name'}")
    return 0


def cmd_categories(args: argparse.Namespace) -> int:
    for cat in CATEGORIES.values():
        heading = HEADINGS.get(cat.heading, "-") if cat.heading else "-"
        print(f"{cat.id:20} {cat.severity.name.lower():9} {heading:35} {cat.title}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="schoolgate", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="start the gateway (mitmdump with the schoolgate add-on)")
    _add_policy(run)
    run.add_argument("--listen-host", default="0.0.0.0")
    run.add_argument("--listen-port", type=int, default=8080)
    run.add_argument("--mode", help="mitmproxy mode, e.g. transparent (default: explicit proxy)")
    run.add_argument("--confdir", help="where the school CA lives (default: var/ca beside the policy)")
    run.add_argument("--quiet", action="store_true", help="no per-request output")
    run.add_argument("--workers", type=_positive, default=1,
                     help="gateway processes sharing the listening address (one core each; default 1)")
    run.add_argument("mitmdump_args", nargs=argparse.REMAINDER, help="further mitmdump options after --")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a policy file and list every problem with its line")
    _add_policy(check)
    check.add_argument("file", nargs="?", help="policy file to check (default: --policy)")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="show the verdict for a URL and the rule that decided it")
    _add_policy(explain)
    explain.add_argument("url")
    who = explain.add_mutually_exclusive_group()
    who.add_argument("--group", help="decide as this group")
    who.add_argument("--client", help="decide for this client IP (its group by network)")
    explain.add_argument("--user", help="authenticated user name (its group, if listed)")
    explain.set_defaults(func=cmd_explain)

    cats = sub.add_parser("categories", help="list schoolgate's categories, severities and UK safeguarding headings")
    cats.set_defaults(func=cmd_categories)

    categories_cli.register(sub)
    manage.register(sub)
    reports_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="schoolgate: %(message)s")
    if getattr(args, "mitmdump_args", None) and args.mitmdump_args[0] == "--":
        args.mitmdump_args = args.mitmdump_args[1:]
    return args.func(args)
