"""Fetch the category lists a policy names and compile them into its index: what
`schoolgate lists update` (and the nightly timer) and the gateway's first-start
download both run.

Every source is verified before it can replace anything: a download must be as
long as the server said and a readable tar.gz holding UT1 category lists; when
a published archive cannot be had, each category is fetched on its own from
`[lists] category_url`; and the compiled index must not be much smaller than the
one in place (index.compile_index).
"""

from __future__ import annotations

import fcntl
import logging
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from schoolgate.categories.index import CompileReport, compile_index
from schoolgate.categories.sources import (
    ListSource,
    SourceUnusable,
    Ut1Tree,
    builtin_tree,
    download,
    open_ut1,
)
from schoolgate.categories.taxonomy import UT1_CATEGORY_URL, UT1_MAPPING

log = logging.getLogger("schoolgate.lists")

# Upstream names that are aliases of another directory (symlinks in the archive).
_UT1_ALIASES = frozenset({"porn", "aggressive", "violence", "drugs", "mail", "proxy", "ads"})


@dataclass
class UpdatePlan:
    locations: Sequence[str]  # UT1 directories, archives or URLs
    extras: Sequence[ListSource]  # the school's own lists
    output: Path
    builtin: bool = True  # compile schoolgate's built-in list in too
    builtin_skip: frozenset[str] = frozenset()  # its entries the school leaves out
    category_url: str | None = UT1_CATEGORY_URL  # per-category fallback for a URL source; None: no fallback
    allow_shrink: bool = False
    notes: list[str] = field(default_factory=list)  # what was left out and why ("warning: " first when it matters)


class UpdateInProgress(OSError):
    """Another process (the nightly timer, another gateway worker) is compiling this index."""


def update(plan: UpdatePlan) -> CompileReport:
    """Fetch, verify and compile; raises OSError or ValueError (SourceUnusable,
    MalformedSource, IndexShrank, UpdateInProgress) with the index in place untouched."""
    with ExitStack() as stack:
        stack.enter_context(_update_lock(plan.output))
        sources: list[ListSource] = []
        if plan.builtin:
            sources += [_skipping(s, plan.builtin_skip) for s in builtin_tree().sources]
        for location in plan.locations:
            tree = stack.enter_context(_open_with_fallback(location, plan))
            sources += tree.sources
            if tree.unknown:
                plan.notes.append(f"warning: {location}: unknown categories not imported: {', '.join(tree.unknown)}")
            if tree.ignored:
                plan.notes.append(f"{location}: not imported by design: {', '.join(tree.ignored)}")
        sources += plan.extras
        if not sources:
            raise ValueError("nothing to compile: no sources, no extra lists and the built-in list is off")
        return compile_index(sources, plan.output, show_progress=True, allow_shrink=plan.allow_shrink)


@contextmanager
def _update_lock(output: Path) -> Iterator[None]:
    """One update of an index at a time, across processes (released if the process dies)."""
    output.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(output.parent / f".{output.name}.lock", os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UpdateInProgress(f"another process is updating {output}") from None
        yield
    finally:
        os.close(fd)


def _skipping(source: ListSource, skip: frozenset[str]) -> ListSource:
    return ListSource(source.category, source.kind, source.path, source.name, skip=skip) if skip else source


@contextmanager
def _open_with_fallback(location: str, plan: UpdatePlan) -> Iterator[Ut1Tree]:
    """A UT1 source; a URL archive that cannot be fetched or read whole falls
    back to the per-category files (when `category_url` is set)."""
    is_url = location.startswith(("http://", "https://"))
    with ExitStack() as stack:
        try:
            tree = stack.enter_context(open_ut1(location))
        except (OSError, SourceUnusable) as e:
            if not is_url or not plan.category_url:
                raise
            log.warning("%s could not be used (%s); fetching each category from %s", location, e, plan.category_url)
            plan.notes.append(f"warning: {location}: {e}; fetched category by category instead")
            tree = stack.enter_context(_per_category(plan.category_url, plan))
        yield tree


@contextmanager
def _per_category(template: str, plan: UpdatePlan) -> Iterator[Ut1Tree]:
    """Every imported UT1 category fetched from `template` ({name} = UT1's name) and
    unpacked side by side, as the whole archive would have been."""
    names = sorted(name for name, target in UT1_MAPPING.items() if target and name not in _UT1_ALIASES)
    with tempfile.TemporaryDirectory(prefix="schoolgate-ut1-") as tmp:
        root = Path(tmp) / "blacklists"
        root.mkdir()
        failed = []
        for name in names:
            archive = Path(tmp) / f"{name}.tar.gz"
            try:
                download(template.format(name=name), archive)
                with open_ut1(str(archive)) as one:
                    for source in one.sources:
                        target = root / source.path.parent.name
                        target.mkdir(exist_ok=True)
                        source.path.rename(target / source.path.name)
            except (OSError, SourceUnusable) as e:
                failed.append(name)
                log.warning("UT1 category %s could not be fetched: %s", name, e)
            finally:
                archive.unlink(missing_ok=True)
        if len(failed) == len(names):
            raise SourceUnusable(f"no UT1 category could be fetched from {template}")
        if failed:
            plan.notes.append(f"warning: UT1 categories not fetched (their entries are missing): {', '.join(failed)}")
        with open_ut1(str(root)) as tree:
            yield tree
