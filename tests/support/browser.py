"""What the console's browser tests share."""

from __future__ import annotations

from typing import Any


def axe_violations(page: Any) -> list[str]:
    """axe-core's WCAG 2 A/AA rules over the page as shown: each violation with the elements it found."""
    from axe_playwright_python.sync_playwright import Axe

    results = Axe().run(page, options={"runOnly": {"type": "tag", "values": ["wcag2a", "wcag2aa", "wcag21aa"]}})
    return [f"{v['id']}: {[n['target'] for n in v['nodes']]}" for v in results.response["violations"]]
