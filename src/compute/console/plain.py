"""Text from the server, made safe to show on a terminal.

A job field, a worker name or an error's reason is the server's text, and the server may be
hostile: raw, an escape sequence in it would write the clipboard (OSC 52), set the window title,
clear the screen or move the cursor to forge lines, and a Rich markup tag would become a live
hyperlink, or crash the print with a stray `[/bold]`. So every such value goes through `plain()`:
control and format characters (C0, DEL, C1, bidirectional overrides, line separators, lone
surrogates) are shown as Python escapes (`\\x1b`, `\\u202e`), long values are cut with a marker,
and the result is a `rich.text.Text`, which Rich never reads as markup or emoji codes.
"""

from __future__ import annotations

import unicodedata

from rich.text import Text

#: Unicode categories shown escaped: controls, format characters (bidi overrides, zero-width
#: joiners), surrogates, and the line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
#: The most characters of one value shown: a table cell, an error reason.
MAX_SHOWN = 2000


def escaped(value: object, limit: int = MAX_SHOWN) -> str:
    """`value` as text with every unsafe character escaped, at most about `limit` characters."""
    text = value if isinstance(value, str) else str(value)
    shown = text[:limit]
    if not shown.isprintable():  # the quick check: False for every unsafe character (and a few safe)
        shown = "".join(_escape(char) for char in shown)
    return shown if len(text) <= limit else f"{shown}… (the first {limit:,} of {len(text):,} characters)"


def plain(value: object, limit: int = MAX_SHOWN, style: str = "") -> Text:
    """`value` as a Rich Text that prints as it reads: no markup, no escape sequences."""
    return Text(escaped(value, limit), style=style)


def _escape(char: str) -> str:
    if char == " " or unicodedata.category(char) not in _UNSAFE_CATEGORIES:
        return char
    return char.encode("unicode_escape").decode("ascii")
