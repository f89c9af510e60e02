"""Names in tables: a class folder's name (which may hold a newline, a tab or ``|``) as one table cell.

Plain-text tables (``scan``, ``filter``, ``judge``, ``augment``) show a name on one line, its control characters
as Python escapes (``new\\nline``); CSV files quote through the ``csv`` module; HTML autoescapes.
"""

from __future__ import annotations


def text_cell(name: str) -> str:
    """``name`` on one line: each non-printable character (newline, tab, escape) as its Python escape."""
    if name.isprintable():
        return name
    return "".join(ch if ch.isprintable() else repr(ch)[1:-1] for ch in name)
