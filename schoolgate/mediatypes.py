"""Reading a Content-Type (or Accept) header: the one parser the request path uses.
Plain Python."""

from __future__ import annotations


def media_type(header: str | None) -> str:
    """`Text/HTML; charset=UTF-8` -> `text/html` ("" for none)."""
    return (header or "").split(";", 1)[0].strip().lower()


def charset_of(header: str | None) -> str:
    """The `charset` parameter, lower-cased and unquoted; UTF-8 when there is none."""
    for part in (header or "").split(";")[1:]:
        name, _, value = part.strip().partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"').lower()
    return "utf-8"
