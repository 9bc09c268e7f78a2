"""The `schoolgate` command: run the gateway, check the policy, explain a verdict,
and (from categories/ and reports/) manage lists and read the records.

Every command imports what it needs when it runs: building the parser loads no
database, web or proxy library, so `--help`, `check` and `classify` start at once.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from datetime import UTC, datetime
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING

from schoolgate import manage
from schoolgate.categories import cli as categories_cli
from schoolgate.categories.taxonomy import CATEGORIES, HEADINGS
from schoolgate.commandline import add_policy_option, load_policy_or_exit
from schoolgate.jsonlog import LOG_FORMATS, JsonFormatter
from schoolgate.reports import cli as reports_cli
from schoolgate.urls import InvalidHost, parse_target

if TYPE_CHECKING:
    from schoolgate.policy import Group, Policy


def cmd_run(args: argparse.Namespace) -> int:
    """Start mitmdump with the schoolgate add-on; extra arguments go to mitmdump."""
    from schoolgate import workers

    policy = load_policy_or_exit(args.policy)
    if policy.gateway.database.startswith("sqlite"):
        # 0700: the database holds personal data, the CA directory the school CA's private key.
        Path(policy.gateway.database.split("///", 1)[1]).parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    state = os.environ.get("SCHOOLGATE_STATE_DIR")  # the units' and the image's state directory
    confdir = Path(args.confdir or (Path(state) / "ca" if state else policy.path.parent / "var" / "ca")).resolve()
    confdir.mkdir(mode=0o700, parents=True, exist_ok=True)
    script = files("schoolgate.addons").joinpath("script.py")
    mitmdump_args = [
        "--quiet" if args.quiet else "--flow-detail=0",
        "-s", str(script),
        "--listen-host", args.listen_host,
        "--listen-port", str(args.listen_port),
        "--set", f"confdir={confdir}",
        "--set", "connection_strategy=lazy",
        "--set", f"schoolgate_policy={policy.path.resolve()}",
        "--set", f"schoolgate_log_format={args.log_format}",
        *(["--mode", args.mode] if args.mode else []),
        *args.mitmdump_args,
    ]
    where = args.listen_host or "every address (IPv4 and IPv6)"
    print(f"schoolgate: proxy on {where} port {args.listen_port}, policy {policy.path}, "
          f"school CA in {confdir} (install mitmproxy-ca-cert.pem on pupils' devices)", file=sys.stderr)
    if policy.gateway.metrics_port and os.environ.get("RUNTIME_DIRECTORY"):  # set by systemd's RuntimeDirectory=
        workers.write_prometheus_targets(Path(os.environ["RUNTIME_DIRECTORY"].split(":")[0]),
                                         policy.gateway.metrics_address, policy.gateway.metrics_port, args.workers)
    if args.workers > 1:
        if policy.gateway.metrics_port:
            print(f"schoolgate: {args.workers} workers; metrics on http://{policy.gateway.metrics_address}:"
                  f"{policy.gateway.metrics_port}-{policy.gateway.metrics_port + args.workers - 1}/metrics", file=sys.stderr)
        workers.ensure_ca(confdir)
        return workers.Supervisor(workers.plan(mitmdump_args, args.workers, policy.gateway.metrics_port)).run()
    if policy.gateway.metrics_port:
        print(f"schoolgate: metrics on http://{policy.gateway.metrics_address}:{policy.gateway.metrics_port}/metrics", file=sys.stderr)
    argv = workers.gateway_argv(mitmdump_args)
    os.execv(argv[0], argv)


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text} is not a positive number")
    return value


def cmd_check(args: argparse.Namespace) -> int:
    from schoolgate.policy import PolicyInvalid, load_policy

    try:
        policy = load_policy(args.file or args.policy)
    except PolicyInvalid as e:
        for problem in e.problems:
            print(problem)
        print(f"{len(e.problems)} problem(s); a running gateway keeps its last good policy until they are fixed")
        return 1
    print(f"{policy.path}: ok — {len(policy.groups)} groups ({', '.join(policy.groups)}), "
          f"{len(policy.local)} local list entries, unknown devices get group {policy.gateway.unknown_group}")
    sources = [name for name, on in (("htpasswd", policy.auth.htpasswd), ("directory", policy.directory.enabled),
                                     ("kerberos", policy.kerberos.enabled), ("sign-in page", policy.portal.enabled),
                                     ("RADIUS accounting", policy.accounting.enabled)) if on]
    if sources:
        print(f"identity: {', '.join(sources)}")
    else:
        print("warning: no sign-in is set up ([directory], [kerberos], [portal], [accounting] or [auth] htpasswd): "
              "records name devices and networks, not pupils")
    if policy.trust is not None:
        print(f"baseline: {policy.trust.path} (this policy can tighten it, never loosen it)")
    _check_lists(policy.path)
    return 0


def _check_lists(policy_path: Path) -> None:
    """Warnings, not errors: the gateway starts (ExecStartPre runs `check`) and filters
    with what it has, but IT hears that a list is missing, empty, stale or broken."""
    from schoolgate.categories import status
    from schoolgate.engine import Engine

    logging.getLogger("schoolgate.engine").setLevel(logging.ERROR)  # said once, below, not twice
    for line in status.problems(Engine.load(policy_path)):
        print(f"warning: {line}")


def _directory_groups(user: str | None, policy: Policy) -> frozenset[str]:
    from schoolgate.explain import directory_groups

    try:
        return directory_groups(policy, user)
    except OSError as e:
        print(f"schoolgate: the directory could not be asked for {user}'s groups: {e}", file=sys.stderr)
        return frozenset()


def _group_for(args: argparse.Namespace, policy: Policy) -> tuple[Group, str] | None:
    """The group `explain` decides for (--group, or --client/--user), and how it was chosen."""
    from schoolgate.explain import UnknownGroup, choose_group

    try:
        return choose_group(policy, args.group, args.client, args.user,
                            frozenset() if args.group else _directory_groups(args.user, policy))
    except UnknownGroup as e:
        print(f"schoolgate: {e}", file=sys.stderr)
        return None


def _moment(text: str | None, policy: Policy) -> datetime:
    """`--at "2026-11-30 10:55"` in the school's timezone; now when not given."""
    if not text:
        return datetime.now(UTC)
    moment = datetime.fromisoformat(text)
    return moment if moment.tzinfo else moment.replace(tzinfo=policy.schedules.schedule.timezone)


def _explain_content(args: argparse.Namespace) -> int:
    """`explain --content FILE`: score a saved page as the gateway would, phrase by phrase."""
    from schoolgate.categories.content import ContentScorer, explanation, judge, saved_page_text

    policy = load_policy_or_exit(args.policy)
    chosen = _group_for(args, policy)
    if chosen is None:
        return 2
    group, how = chosen
    settings = policy.content
    try:
        text = saved_page_text(Path(args.content), args.type or "", settings.max_kib * 1024)
    except OSError as e:
        print(f"schoolgate: cannot read {args.content}: {e}", file=sys.stderr)
        return 2
    score = ContentScorer.load(settings.phrase_files).score(text)
    block_at, flag_at = settings.thresholds(group)
    print(f"file:       {args.content} (first {settings.max_kib} KiB, as the gateway reads a response)")
    print(f"group:      {group.name} ({how})")
    for line in explanation(score, judge(score, block_at=block_at, flag_at=flag_at), block_at=block_at, flag_at=flag_at):
        print(line)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    if args.content:
        return _explain_content(args)
    if not args.url:
        print("schoolgate: explain needs a URL, or --content FILE", file=sys.stderr)
        return 2
    import asyncio

    from schoolgate.engine import Engine  # loads the category index; only this command needs it
    from schoolgate.live import read_live  # the database: exceptions and managed lists

    load_policy_or_exit(args.policy)  # its problems said the one way
    engine = Engine.load(args.policy)
    try:
        engine = engine.with_live(asyncio.run(read_live(engine.policy.gateway.database)))
    except Exception as e:  # no database yet, or unreachable: say so, decide without exceptions
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        print(f"schoolgate: exceptions and managed lists not consulted: {reason}", file=sys.stderr)
    try:
        target = parse_target(args.url)
    except InvalidHost as e:
        print(f"schoolgate: {e}", file=sys.stderr)
        return 2
    policy = engine.policy
    chosen = _group_for(args, policy)
    if chosen is None:
        return 2
    group, how = chosen
    try:
        when = _moment(args.at, policy)
    except ValueError as e:
        print(f"schoolgate: --at {args.at!r}: {e}", file=sys.stderr)
        return 2
    from schoolgate.explain import explain

    for label, text in explain(engine, target, group, how, when, user=args.user, client_ip=args.client).lines(policy):
        print(f"{label + ':':<12}{text}")
    return 0


def cmd_categories(args: argparse.Namespace) -> int:
    for cat in CATEGORIES.values():
        heading = HEADINGS.get(cat.heading, "-") if cat.heading else "-"
        print(f"{cat.id:20} {cat.severity.name.lower():9} {heading:35} {cat.title}")
    return 0


def cmd_init(args: argparse.Namespace) -> int:
    """A starting policy and the state folder beside it; nothing is overwritten."""
    directory = args.directory.resolve()
    policy_path = directory / "policy.toml"
    if policy_path.exists():
        print(f"schoolgate: {policy_path} exists already; nothing changed", file=sys.stderr)
        return 1
    directory.mkdir(parents=True, exist_ok=True)
    # 0700: var/ holds the database (personal data), the school CA's private key and the signing keys.
    for state in (directory / "var", directory / "var" / "ca"):
        state.mkdir(mode=0o700, exist_ok=True)
        state.chmod(0o700)
    text = files("schoolgate").joinpath("default_policy.toml").read_text(encoding="utf-8")
    fd = os.open(policy_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    print(f"""wrote {policy_path} (0600) and {directory / 'var'} (0700). Before pupils use it:
  1. edit the policy: [school], your networks under [groups.*], [monitoring] console_url, [alerts]
     (`schoolgate check --policy {policy_path}` lists every problem);
  2. compile the category lists: `schoolgate lists update --policy {policy_path}`
     (until then only the small built-in list filters);
  3. put the IWF / CTIRU lists in place (see categories/README.md, "The illegal-content tier");
  4. create the DSL's console account: `schoolgate accounts add NAME --role dsl --policy {policy_path}`;
  5. start it (`schoolgate run --policy {policy_path}`) and install var/ca/mitmproxy-ca-cert.pem on devices.""")
    return 0


class _VersionAction(argparse.Action):
    """--version, reading the installed package's metadata only when asked (it costs every other command time)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="show the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            installed = version("schoolgate")
        except PackageNotFoundError:  # run from a source tree that was never installed
            installed = "unknown (not installed)"
        print(f"schoolgate {installed}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="schoolgate", description=__doc__)
    parser.add_argument("--version", action=_VersionAction)
    parser.add_argument("--log-format", choices=LOG_FORMATS, default="text", dest="cli_log_format",
                        help="this command's own log lines as text or JSON objects")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = sub.add_parser("init", help="write a starting policy.toml and the state folder (var/) into DIR")
    init.add_argument("directory", nargs="?", type=Path, default=Path("."), metavar="DIR", help="default: here")
    init.set_defaults(func=cmd_init)

    run = sub.add_parser("run", help="start the gateway (mitmdump with the schoolgate add-on)")
    add_policy_option(run)
    run.add_argument("--listen-host", default="", help="address to listen on (default: every IPv4 and IPv6 address)")
    run.add_argument("--listen-port", type=int, default=8080)
    run.add_argument("--mode", help="mitmproxy mode, e.g. transparent (default: explicit proxy)")
    run.add_argument("--confdir", help="where the school CA lives (default: var/ca beside the policy)")
    run.add_argument("--quiet", action="store_true", help="no per-request output")
    run.add_argument("--workers", type=_positive, default=1,
                     help="gateway processes sharing the listening address (one core each; default 1)")
    run.add_argument("--log-format", choices=LOG_FORMATS, default="text",
                     help="the gateway's log lines as text, or JSON objects one a line (journald, Loki)")
    run.add_argument("mitmdump_args", nargs=argparse.REMAINDER, help="further mitmdump options after --")
    run.set_defaults(func=cmd_run)

    check = sub.add_parser("check", help="validate a policy file and list every problem with its line")
    add_policy_option(check)
    check.add_argument("file", nargs="?", help="policy file to check (default: --policy)")
    check.set_defaults(func=cmd_check)

    explain = sub.add_parser("explain", help="show the verdict for a URL and the rule that decided it, "
                                             "or (--content FILE) how a saved page's words score")
    add_policy_option(explain)
    explain.add_argument("url", nargs="?")
    explain.add_argument("--content", metavar="FILE", help="score a saved page (HTML, JSON, event stream, text)")
    explain.add_argument("--type", help="with --content: the page's Content-Type (default: by file name)")
    who = explain.add_mutually_exclusive_group()
    who.add_argument("--group", help="decide as this group")
    who.add_argument("--client", help="decide for this client IP (its group by network)")
    explain.add_argument("--user", help="authenticated user name (its group, if listed)")
    explain.add_argument("--at", help="decide as at this time (\"2026-11-30 10:55\", the school's timezone): "
                                      "for groups whose actions change with [schedules] windows")
    explain.set_defaults(func=cmd_explain)

    cats = sub.add_parser("categories", help="list schoolgate's categories, severities and UK safeguarding headings")
    cats.set_defaults(func=cmd_categories)

    categories_cli.register(sub)
    manage.register(sub)
    reports_cli.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if args.cli_log_format == "json" else logging.Formatter("schoolgate: %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    if getattr(args, "mitmdump_args", None) and args.mitmdump_args[0] == "--":
        args.mitmdump_args = args.mitmdump_args[1:]
    try:
        return args.func(args)
    except BrokenPipeError:
        # `schoolgate log | head`: the reader left; say nothing more, and let Python's
        # final flush of stdout go nowhere instead of raising again at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE, as a shell reports a command its pipe ended
