"""`schoolgate_log_format`: the gateway's log lines as text (mitmproxy's) or JSON (journald, Loki)."""

from __future__ import annotations

import logging

from mitmproxy import ctx
from mitmproxy.addons.termlog import TermLogHandler

from schoolgate.jsonlog import LOG_FORMATS, JsonFormatter


class LogFormat:
    def __init__(self) -> None:
        self._text_formatters: dict[TermLogHandler, logging.Formatter | None] = {}

    def load(self, loader) -> None:
        loader.add_option("schoolgate_log_format", str, "text", "Log lines as text or JSON objects (one a line).",
                          choices=LOG_FORMATS)

    def configure(self, updated: set[str]) -> None:
        if "schoolgate_log_format" not in updated:
            return
        for handler in logging.getLogger().handlers:
            if isinstance(handler, TermLogHandler):
                original = self._text_formatters.setdefault(handler, handler.formatter)
                handler.setFormatter(JsonFormatter() if ctx.options.schoolgate_log_format == "json" else original)
