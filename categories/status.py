"""What `schoolgate check` and `schoolgate lists status` say about the lists: the
same Health the gateway logs and exports, plus the illegal-content tier.

Takes a loaded engine (policy, index, index status, tier) rather than loading one,
so categories/ does not import the engine that imports it.
"""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

from schoolgate.categories.health import Health, assess
from schoolgate.categories.taxonomy import CATEGORIES


def health_of(engine: Any, now: float | None = None) -> Health:
    return assess(engine.policy.groups.values(), engine.index, engine.index_status,
                  engine.policy.lists.max_age_days, now)


def problems(engine: Any, now: float | None = None) -> list[str]:
    """Everything IT must fix for the filter to be whole, one line each."""
    lines = health_of(engine, now).problems()
    tier = engine.illegal
    if tier is not None:
        lines += [f"illegal-content tier: {problem}" for problem in tier.problems]
    return lines


def status_lines(engine: Any, now: float | None = None) -> list[str]:
    """`schoolgate lists status`: where the lists come from, how old they are, what they hold."""
    now = time.time() if now is None else now
    health = health_of(engine, now)
    policy = engine.policy
    index = engine.index
    out = [f"index:     {policy.lists.index or '(none configured)'}"]
    out.append(f"serving:   {health.status.serving.value}" + (f" ({health.status.detail})" if health.status.detail else ""))
    if index.path is not None:
        age = health.age_days
        out.append(f"compiled:  {index.header['created']}" + (f" ({age:.1f} days ago)" if age is not None else ""))
    out.append(f"entries:   {index.entry_count:,}")
    for source in policy.lists.sources or ["(no [lists] sources: `lists update` and the first-start download have nothing to fetch)"]:
        out.append(f"source:    {source}")
    for path, category in policy.lists.extra:
        out.append(f"extra:     {path} -> {category}")
    if index.path is not None:
        origins = Counter(name.split(":", 1)[0] if ":" in name and "/" not in name.split(":", 1)[0] else name
                          for name in index.header.get("sources", []))
        out.append("compiled from: " + ", ".join(f"{origin} ({n} list{'s' if n > 1 else ''})" for origin, n in origins.items()))
    out.append("")
    out.append(f"{'entries':>12}  {'category':20} {'strictest action':16} title")
    for category, count in sorted(health.entries.items(), key=lambda kv: (kv[1] > 0, kv[0])):
        title = CATEGORIES[category].title if category in CATEGORIES else "(not a schoolgate category)"
        marker = "  <- EMPTY" if not count and health.actions[category] == "block" else ""
        out.append(f"{count:>12,}  {category:20} {health.actions[category]:16} {title}{marker}")
    tier = engine.illegal
    out.append("")
    if tier is None:
        out.append("illegal-content tier: not loaded")
    else:
        out.append(f"illegal-content tier: {tier.directory}")
        for t in tier.lists:
            out.append(f"  {t.provider:6} {t.format:7} {t.entries:>10,} entries  {(now - t.modified) / 3600:6.1f} h old  {t.path.name}")
    found = problems(engine, now)
    out.append("")
    out += [f"problem: {line}" for line in found] or ["no problems"]
    return out


def print_status(policy_path: Any) -> int:
    """`schoolgate lists status`: exit 0 when nothing is missing, 1 when something is
    (so a monitoring script can run it), 2 for a policy that does not load."""
    import logging

    from schoolgate.engine import Engine  # the engine imports categories/, not the other way round at import
    from schoolgate.policy import PolicyInvalid

    logging.getLogger("schoolgate.engine").setLevel(logging.ERROR)  # its warnings are in the report below
    try:
        engine = Engine.load(policy_path)
    except PolicyInvalid as e:
        print(f"error: {policy_path} is not a valid policy (see `schoolgate check`):\n{e}")
        return 2
    print("\n".join(status_lines(engine)))
    return 1 if problems(engine) else 0
